//! Guard: drift detection, self-healing by replacement, max-age recycling (issue 7).

use crate::deploy::{Load, Project, Server, body_now, ok, wait_for};
use crate::{stderr, stdout};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn status(server: &Server, p: &Project) -> serde_json::Value {
    let out = server.rc(p.path(), &["status", "web", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn instance_ids(server: &Server, p: &Project) -> Vec<String> {
    status(server, p)["services"][0]["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["id"].as_str().unwrap_or("").to_string())
        .collect()
}

fn healthy_in_rotation(server: &Server, p: &Project) -> usize {
    status(server, p)["services"][0]["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["healthy"] == true && i["active"] == true)
        .count()
}

fn rootfs(server: &Server, id: &str) -> PathBuf {
    server.data.join("instances").join(id).join("rootfs")
}

fn with_guard(p: &Project, guard: &str) {
    let path = p.path().join("recast.hcl");
    let mut spec = std::fs::read_to_string(&path).expect("spec");
    spec.push_str(&format!("\nguard {{\n  {guard}\n}}\n"));
    std::fs::write(path, spec).expect("write");
}

#[test]
fn drift_is_found_with_its_path_and_kind_and_volumes_are_not_drift() {
    let server = Server::start();
    let p = Project::new();
    p.write(
        r#"MESSAGE = "v1""#,
        r#"strategy = "rolling""#,
        r#"volume "data" { mount = "/data" }"#,
    );
    with_guard(&p, "scan_interval = \"1h\"\n  on_drift = \"report\"");
    ok(&server.rc(p.path(), &["apply", "--yes"]));

    // A clean fleet reports nothing.
    let out = server.rc(p.path(), &["drift", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (
            v["drifted"].as_u64(),
            v["instances"].as_array().map(Vec::len)
        ),
        (Some(0), Some(3))
    );

    // Writes to a volume and to /tmp are not drift.
    let project = p
        .path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_ascii_lowercase();
    let volume = server.data.join("volumes").join(&project).join("web/data");
    std::fs::write(volume.join("state"), "x").expect("write into the volume");
    let ids = instance_ids(&server, &p);
    std::fs::write(rootfs(&server, &ids[1]).join("tmp/scratch"), "x").expect("tmp");
    assert_eq!(server.rc(p.path(), &["drift"]).status.code(), Some(0));

    // Change, add and delete files in one instance's image files.
    let root = rootfs(&server, &ids[0]);
    let mut bin = std::fs::read(root.join("bin/hello")).expect("read");
    let at = bin.len() / 2;
    bin[at] ^= 1;
    std::fs::write(root.join("bin/hello.tmp"), &bin).expect("write");
    // The running binary cannot be written in place ("text file busy"): replace it.
    std::fs::rename(root.join("bin/hello.tmp"), root.join("bin/hello")).expect("replace");
    std::fs::write(root.join("bin/backdoor"), "#!").expect("add");
    let out = server.rc(p.path(), &["drift", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["drifted"], 1);
    let d = v["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|d| d["instance"] == ids[0].as_str())
        .expect("the tampered instance");
    let got: Vec<(String, String)> = d["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or("").to_string(),
                f["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("/bin/backdoor".to_string(), "added".to_string()),
            ("/bin/hello".to_string(), "changed".to_string()),
            // The running program's file was replaced: it now runs a deleted file.
            ("/bin/hello (deleted)".to_string(), "process".to_string())
        ]
    );
    std::fs::remove_file(root.join("bin/backdoor")).expect("rm");
    // Deleting from the image's files: remove a directory the image has.
    let human = server.rc(p.path(), &["drift"]);
    assert!(
        stdout(&human).contains(&format!(
            "web {}: changed /bin/hello (content, mode 0555 -> 0644)",
            ids[0]
        )),
        "{}",
        stdout(&human)
    );

    // --fix replaces it; the fleet is clean again.
    let out = server.rc(p.path(), &["drift", "--fix", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["replaced"].as_array().map(Vec::len), Some(1));
    assert!(!instance_ids(&server, &p).contains(&ids[0]));
    assert_eq!(server.rc(p.path(), &["drift"]).status.code(), Some(0));
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
}

#[test]
fn a_removed_file_is_drift() {
    let server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    with_guard(&p, "scan_interval = \"1h\"\n  on_drift = \"report\"");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let ids = instance_ids(&server, &p);
    // Deleting in the overlay leaves a whiteout: the instance no longer sees the file.
    std::fs::remove_file(rootfs(&server, &ids[2]).join("bin/hello")).expect("rm");
    let out = server.rc(p.path(), &["drift", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!("web {}: removed /bin/hello (file)", ids[2])),
        "{}",
        stdout(&out)
    );
}

#[test]
fn drift_is_replaced_under_load_without_failed_requests() {
    let server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    with_guard(&p, "scan_interval = \"300ms\"\n  on_drift = \"replace\"");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let load = Load::start(p.port);
    let ids = instance_ids(&server, &p);
    std::fs::write(rootfs(&server, &ids[0]).join("bin/implant"), "x").expect("tamper");
    wait_for("the drifted instance to be replaced", 20, || {
        let now = instance_ids(&server, &p);
        !now.contains(&ids[0]) && now.len() == 3
    });
    load.flowing(50);
    let (n, failures, _) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(n > 100);
    let h = server.rc(p.path(), &["drift"]);
    assert_eq!(h.status.code(), Some(0), "{}", stdout(&h));
}

#[test]
fn an_instance_killed_from_outside_is_replaced() {
    let server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let ids = instance_ids(&server, &p);
    let pid = std::fs::read_to_string(server.data.join("instances").join(&ids[1]).join("pid"))
        .expect("pid");
    assert!(
        std::process::Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill")
            .success()
    );
    wait_for("a replacement", 20, || {
        let now = instance_ids(&server, &p);
        !now.contains(&ids[1]) && healthy_in_rotation(&server, &p) == 3
    });
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
}

#[test]
fn max_age_recycles_the_fleet_under_load_without_failures() {
    let server = Server::start();
    let p = Project::new();
    p.write(
        r#"MESSAGE = "v1""#,
        r#"strategy = "rolling""#,
        r#"max_age = "3s""#,
    );
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let first = instance_ids(&server, &p);
    let load = Load::start(p.port);
    let t = Instant::now();
    let mut seen: std::collections::BTreeSet<String> = first.iter().cloned().collect();
    let mut least = usize::MAX;
    while t.elapsed() < Duration::from_secs(30) {
        least = least.min(healthy_in_rotation(&server, &p));
        seen.extend(instance_ids(&server, &p));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (n, failures, _) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(n > 1000, "{n}");
    assert!(
        least >= 3,
        "fewer than 3 healthy instances at some point: {least}"
    );
    assert!(
        first
            .iter()
            .all(|id| !instance_ids(&server, &p).contains(id)),
        "an instance outlived max_age"
    );
    assert!(
        seen.len() >= 3 + 6,
        "only {} instances over 30 s with max_age 3s",
        seen.len()
    );
}

#[test]
fn an_unexpected_writable_mount_is_drift() {
    let server = Server::start();
    let p = Project::new();
    // A volume carries a static busybox into the instance, to mount something with.
    p.write(
        r#"MESSAGE = "v1""#,
        r#"strategy = "rolling""#,
        r#"volume "tools" { mount = "/tools" }"#,
    );
    with_guard(&p, "scan_interval = \"1h\"\n  on_drift = \"report\"");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let project = p
        .path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_ascii_lowercase();
    let tools = server.data.join("volumes").join(&project).join("web/tools");
    std::fs::copy("/bin/busybox", tools.join("busybox")).expect("busybox-static is not installed");
    let ids = instance_ids(&server, &p);
    let pid = std::fs::read_to_string(server.data.join("instances").join(&ids[0]).join("pid"))
        .expect("pid");
    // Someone mounts a writable filesystem over /bin inside the instance.
    let st = std::process::Command::new("nsenter")
        .args([
            "-t",
            pid.trim(),
            "-m",
            "--",
            "/tools/busybox",
            "mount",
            "-t",
            "tmpfs",
            "tmpfs",
            "/bin",
        ])
        .status()
        .expect("nsenter");
    assert!(st.success());
    let out = server.rc(p.path(), &["drift", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!(
            "web {}: unexpected_mount /bin (mounted read-write)",
            ids[0]
        )),
        "{}",
        stdout(&out)
    );
}
