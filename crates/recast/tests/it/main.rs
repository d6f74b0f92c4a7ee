//! End-to-end tests of the `recast` binary, driven the way a user drives it.

mod attacks;
mod canary;
mod cli;
mod dashboard;
mod dataplane;
mod dataplane_stock;
mod debian;
mod deploy;
mod environments;
mod guard;
mod guard_real;
mod handoff;
mod hostile_images;
mod hostile_registry;
mod hosts;
mod images;
mod instances;
mod limits;
mod lock;
mod network;
mod network_db;
mod nginx;
mod operate;
#[path = "../../../recast-state/src/tests/cluster.rs"]
mod pg_cluster;
mod pgstate;
mod postgres;
mod private;
mod project;
mod registry_deploy;
mod runsteps;
mod server_logs;
mod state_cmd;
mod tcp_routes;
mod upgrade;
mod validate;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Run the recast binary with `args` in `cwd`.
pub fn recast(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RECAST_DATA_DIR")
        .output()
        .expect("run recast")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The repository's `examples/hello`.
pub fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello")
}
