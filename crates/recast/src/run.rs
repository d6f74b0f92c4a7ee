//! `recast run`: one instance of an image in the foreground, for debugging.

use crate::output;
use recast_image::ImageRef;
use recast_runtime::{InstanceSpec, Network, Runtime, State, new_id};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

pub fn run(data_dir: &Path, reference: &str, port: u16) -> anyhow::Result<ExitCode> {
    // Before any thread starts: Ctrl-C and SIGTERM arrive on this channel.
    let signals = recast_runtime::signals::forward();
    let store = output::store(data_dir)?;
    let (desc, name) = store.resolve(&ImageRef::parse(reference)?)?;
    let rt = runtime(data_dir, store)?;
    let spec = InstanceSpec {
        id: new_id(name.split([':', '@', '/']).next().unwrap_or("run")),
        image: desc.digest.clone(),
        image_name: name.clone(),
        env: BTreeMap::new(),
        port,
        network: Network::Host,
        volumes: Vec::new(),
        volume_scope: String::new(),
        memory: None,
        cpus: None,
        user_namespace: false,
        tmpfs: Vec::new(),
        owner: "run".into(),
        stop_signal: None,
        stop_timeout: Duration::from_secs(10),
        attach: None,
        secret_env: BTreeMap::new(),
        secret_files: Vec::new(),
    };
    let inst = rt.start(&spec)?;
    eprintln!(
        "instance {} of {name} ({}) listening on 127.0.0.1:{}; Ctrl-C stops and removes it",
        inst.id,
        desc.digest.short(),
        inst.port
    );
    let mut out = LogFollower::new(&inst.stdout_log());
    let mut err = LogFollower::new(&inst.stderr_log());
    let code = loop {
        out.pump(&mut std::io::stdout());
        err.pump(&mut std::io::stderr());
        match signals.recv_timeout(Duration::from_millis(50)) {
            Ok(_) | Err(RecvTimeoutError::Disconnected) => {
                eprintln!("stopping instance {}", inst.id);
                rt.stop_gracefully(&inst);
                out.pump(&mut std::io::stdout());
                err.pump(&mut std::io::stderr());
                break ExitCode::SUCCESS;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let State::Exited { status } = rt.state(&inst) {
            out.pump(&mut std::io::stdout());
            err.pump(&mut std::io::stderr());
            let s = status.map_or_else(|| "unknown".into(), |s| s.to_string());
            eprintln!("instance {} exited with status {s}", inst.id);
            break ExitCode::FAILURE;
        }
        rt.rotate_logs(&inst);
    };
    rt.delete(&inst)?;
    Ok(code)
}

/// The runtime, when some image of `project` has `run` steps or a Dockerfile (steps run in
/// build containers); builds of `copy` steps alone need no container runtime.
pub fn step_runner(
    data_dir: &Path,
    project: &recast_spec::Project,
    store: &recast_image::Store,
) -> anyhow::Result<Option<Runtime>> {
    let runs = project.images.values().any(|i| {
        i.dockerfile.is_some()
            || i.steps
                .iter()
                .any(|s| matches!(s, recast_spec::BuildStep::Run(_)))
    });
    if !runs {
        return Ok(None);
    }
    Ok(Some(runtime(data_dir, store.clone())?))
}

/// A runtime for this data directory, with what dead `run`/`test` processes left cleaned up.
pub fn runtime(data_dir: &Path, store: recast_image::Store) -> anyhow::Result<Runtime> {
    let rt = Runtime::new(data_dir, store)?;
    // Only throwaway instances whose `recast run`/`recast test` process is gone: never a
    // server's (owner "service:…"), whatever its phase, nor another live command's.
    let recovered = rt.recover(recast_runtime::Instance::abandoned)?;
    for inst in recovered.running {
        rt.delete(&inst)?;
    }
    Ok(rt)
}

/// Copies what an instance appends to its log file.
struct LogFollower {
    file: Option<File>,
    pos: u64,
}

impl LogFollower {
    fn new(path: &Path) -> LogFollower {
        LogFollower {
            file: File::open(path).ok(),
            pos: 0,
        }
    }

    fn pump(&mut self, to: &mut impl Write) {
        let Some(f) = &mut self.file else { return };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.pos {
            self.pos = 0; // rotated
        }
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return;
        }
        // At most 16 MiB at a time: the instance decides how much it writes.
        let mut buf = Vec::new();
        if let Ok(n) = f.take((len - self.pos).min(16 << 20)).read_to_end(&mut buf) {
            self.pos += n as u64;
            let _ = to.write_all(&buf);
            let _ = to.flush();
        }
    }
}
