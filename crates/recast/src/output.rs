//! Shared plumbing of commands: the data directory, JSON on stdout, progress on a terminal.

use anyhow::Context as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// `--data-dir`, `RECAST_DATA_DIR`, `$XDG_DATA_HOME/recast`, or `~/.local/share/recast`.
pub fn data_dir(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = flag {
        return Ok(d.to_path_buf());
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("recast"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("no data directory: set --data-dir, RECAST_DATA_DIR or HOME")?;
    Ok(PathBuf::from(home).join(".local/share/recast"))
}

/// The image store of a data directory.
pub fn store(data_dir: &Path) -> anyhow::Result<recast_image::Store> {
    Ok(recast_image::Store::open(&data_dir.join("store"))?)
}

/// Print `value` as one line of JSON on stdout. A closed pipe is not an error.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let text = serde_json::to_string(value)?;
    match writeln!(out, "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Print a line of data on stdout. A closed pipe is not an error.
pub fn line(text: &str) -> anyhow::Result<()> {
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Progress messages for people: shown on a terminal, silent in pipes.
pub fn progress() -> impl FnMut(&str) {
    let tty = std::io::stderr().is_terminal();
    move |msg: &str| {
        if tty {
            eprintln!("  {msg}");
        }
    }
}

/// "1.2 MiB".
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
