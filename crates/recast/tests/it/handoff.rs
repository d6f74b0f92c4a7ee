//! Upgrading recast under load (issue 14): a server started from a newer executable hands the
//! data plane's listening sockets to a data plane of its own, which serves them while the old
//! one drains and exits — no request fails.

use crate::deploy::{Load, Project, Server, ok, wait_for};

#[test]
fn a_newer_recast_takes_the_routes_over_without_dropping_a_request() {
    let mut server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let old = server
        .data_plane_pid()
        .expect("a data plane serves the route");
    let load = Load::start(p.port);
    load.flowing(200);

    // "Upgrade": the same build under another path is another executable to recast.
    let bin = tempfile::tempdir().expect("tmp");
    let newer = bin.path().join("recast");
    std::fs::copy(env!("CARGO_BIN_EXE_recast"), &newer).expect("copy recast");
    server.kill9();
    load.flowing(200);
    server.spawn_from(&newer);
    wait_for("the newer data plane", 30, || {
        server.data_plane_pid().is_some_and(|pid| pid != old)
    });
    wait_for("the old data plane to drain and exit", 40, || {
        !std::path::Path::new(&format!("/proc/{old}")).exists()
    });
    load.flowing(500);
    let (served, failures, bodies) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed of {served}: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(bodies.keys().collect::<Vec<_>>(), ["v1 from hello 0.1.0\n"]);
    // Inside the project network, the service's name and its address were handed over too.
    let (name, call) = in_project_network(
        &server,
        "busybox nslookup web 10.89.0.1; curl -sS -m 5 http://10.89.1.1:8080/",
    );
    assert!(
        name.contains("10.89.1.1") && call.contains("v1 from hello"),
        "{name}\n{call}"
    );
    // The newer control plane drives the newer data plane: a rollout still works.
    p.write(r#"MESSAGE = "v2""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    wait_for("release 2 served", 20, || {
        crate::deploy::body_now(p.port) == "v2 from hello 0.1.0\n"
    });
}

#[test]
fn a_data_plane_that_dies_is_started_again_and_told_everything() {
    let server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let first = server
        .data_plane_pid()
        .expect("a data plane serves the route");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // The server notices within its heartbeat, starts another and gives it the routes and the
    // routing tables again.
    let t = std::time::Instant::now();
    wait_for("the route to serve again", 20, || {
        crate::deploy::body_now(p.port) == "v1 from hello 0.1.0\n"
    });
    let again = server.data_plane_pid().expect("a data plane again");
    assert_ne!(again, first);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "the route was down {:?}",
        t.elapsed()
    );
    // And it is the whole configuration: a rollout through it works.
    p.write(r#"MESSAGE = "v2""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    assert_eq!(crate::deploy::body_now(p.port), "v2 from hello 0.1.0\n");
}

/// Run shell `cmds` (`;`-separated) in the network namespace of the server's one project network:
/// (all output, the last command's output).
fn in_project_network(server: &Server, cmds: &str) -> (String, String) {
    let nets: Vec<_> = std::fs::read_dir(server.data.join("networks"))
        .expect("networks")
        .flatten()
        .collect();
    assert_eq!(nets.len(), 1, "one project network");
    let run = |c: &str| {
        let o = std::process::Command::new("nsenter")
            .arg(format!("--net={}", nets[0].path().join("netns").display()))
            .args(["sh", "-c", c])
            .output()
            .expect("nsenter");
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let (first, last) = cmds.rsplit_once("; ").unwrap_or((cmds, ""));
    (run(first), run(last))
}
