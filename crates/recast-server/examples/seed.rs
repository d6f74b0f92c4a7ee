//! Benchmark helper: record every service of a spec as deployed (a current release per service,
//! as `recast apply` would leave it) without starting instances, so `recast plan` can be timed
//! as a no-change plan on a large spec. `seed SPEC DATA_DIR`.

use recast_image::build::{self, Options};
use recast_server::plan::project_name;
use recast_server::record::{ReleaseRecord, canonical_hash};
use recast_state::{NewRelease, State};
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [spec, data] = args.as_slice() else {
        return Err("usage: seed SPEC DATA_DIR".into());
    };
    let project = recast_spec::load(Path::new(spec)).map_err(|d| d.to_string())?;
    let data = recast_api::DataDir::new(data);
    let store = recast_image::Store::open(&data.store())?;
    let built = build::build(
        &store,
        Some(data.cache().root()),
        &project,
        &[],
        &Options::from_env()?,
        None,
        &mut |_| {},
    )?;
    let state = State::open(&data.state_db())?;
    let name = project_name(&project);
    for (s, svc) in &project.services {
        let digest = built
            .iter()
            .find(|b| b.image == svc.image)
            .map(|b| b.digest.to_string())
            .unwrap_or_default();
        let json = ReleaseRecord::from_spec(svc, &digest, &svc.image).to_json();
        let r = state.new_release(&NewRelease {
            project: &name,
            service: s,
            digest: &digest,
            image: &svc.image,
            spec: &json,
            spec_hash: &canonical_hash(svc, &digest, &svc.image, &Default::default()),
            by: "seed",
        })?;
        state.set_outcome(
            &name,
            s,
            r.number,
            recast_state::ReleaseOutcome::Succeeded,
            None,
        )?;
        state.set_current(&name, s, Some(r.number))?;
    }
    Ok(())
}
