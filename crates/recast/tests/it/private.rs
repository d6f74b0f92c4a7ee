//! The data directory holds service environments, the state and the API token: it is 0700 and
//! every file recast writes in it is private (issue 10, finding 3).

use crate::deploy::{Project, ok, wait_for};
use crate::stderr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn rc(cwd: &Path, data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(args)
        .current_dir(cwd)
        .env("RECAST_DATA_DIR", data)
        .stdin(Stdio::null())
        .output()
        .expect("run recast")
}

/// Files (not directories) under `dir` readable or writable by anyone but the owner, skipping
/// image contents (`rootfs/*/fs`, instance root mounts), an instance root's own upper directory
/// (only the empty mount points runc makes there, with the modes the instance's users need) and
/// volumes, which keep the app's modes, and mounts of other file systems (network namespace pins).
fn loose_files(dir: &Path, dev: u64, out: &mut Vec<(PathBuf, u32)>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        let name = e.file_name();
        let parent = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Volumes hold the app's data; `rootfs/<image>/fs` and `layers/<layer>` the image's
        // files, with the image's modes. (Instance roots are overlay mounts: other devices.)
        let grandparent = dir.parent().and_then(|p| p.file_name());
        if name == "volumes"
            || (name == "fs" && grandparent == Some("rootfs".as_ref()))
            || (name == "upper" && grandparent == Some("instances".as_ref()))
            || parent == "layers"
        {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).expect("lstat");
        if m.dev() != dev {
            continue;
        }
        if m.is_dir() {
            loose_files(&p, dev, out);
        } else if m.mode() & 0o077 != 0 && !m.file_type().is_symlink() {
            out.push((p, m.mode() & 0o7777));
        }
    }
}

#[test]
fn the_data_directory_and_its_files_are_private() {
    let t = tempfile::tempdir().expect("tmp");
    let data = t.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, PermissionsExt::from_mode(0o755)).expect("chmod");
    let p = Project::new();
    p.write(
        "MESSAGE = \"v1\", DB_PASSWORD = \"hunter2\"",
        "strategy = \"rolling\"",
        "volume \"data\" { mount = \"/data\" }",
    );
    let mut server = Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(["server", "--listen", "127.0.0.1:0"])
        .env("RECAST_DATA_DIR", &data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server");
    wait_for("the server", 30, || data.join("server.json").exists());
    let applied = rc(p.path(), &data, &["apply", "--yes"]);
    let destroy = || rc(p.path(), &data, &["destroy", "--yes", "--volumes"]);
    if !applied.status.success() {
        destroy();
        let _ = server.kill();
        panic!("apply: {}", stderr(&applied));
    }
    let mode = std::fs::metadata(&data).expect("stat").mode() & 0o777;
    let mut loose = Vec::new();
    let dev = std::fs::metadata(&data).expect("stat").dev();
    loose_files(&data, dev, &mut loose);
    ok(&destroy());
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(mode, 0o700, "the data directory is tightened to 0700");
    assert!(loose.is_empty(), "files others can read: {loose:?}");

    // A shared directory is never taken over as a data directory.
    let shared = t.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, PermissionsExt::from_mode(0o1777)).expect("chmod");
    let o = rc(p.path(), &shared, &["build"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is shared") && stderr(&o).contains("hint:"),
        "{}",
        stderr(&o)
    );
}
