//! Benchmark helper: index a tree, then time recast's drift scan of it (full content and
//! metadata only). `scan DIR [RUNS]`; prints `full_ms metadata_ms entries`.

use recast_guard::{Mode, index_of, scan};
use std::time::{Instant, SystemTime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or("usage: scan DIR [RUNS]")?);
    let runs: usize = args.next().map_or(Ok(3), |r| r.parse())?;
    let index = index_of(&dir)?;
    let trusted = SystemTime::now();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut full = Vec::new();
    let mut meta = Vec::new();
    let mut entries = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let (f, s) = scan(&dir, &index, &[], Mode::Full, None)?;
        full.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(f.is_empty(), "a clean tree reported drift: {f:?}");
        entries = s.entries;
        let t = Instant::now();
        let (f, _) = scan(&dir, &index, &[], Mode::Metadata, Some(trusted))?;
        meta.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(f.is_empty());
    }
    println!("{:.1} {:.1} {entries}", median(full), median(meta));
    Ok(())
}
