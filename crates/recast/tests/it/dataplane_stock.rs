//! Issue 14's acceptance with a third-party daemon as the backend: stock Debian nginx (built
//! from the Dockerfile nginx.rs builds, apt from a loopback repository) as a service of two
//! instances behind a route, under continuous keep-alive load, through a `kill -9` of the
//! server and a new server taking over, an upgrade of recast (a server started from another
//! executable hands the data plane's sockets to a data plane of its own), and then a rolling
//! update of nginx's page driven by the upgraded server. No request fails at any point.

use crate::debian::{AptRepo, base_image_archive};
use crate::deploy::{Load, Server, body_now, free_port, ok, wait_for};
use crate::nginx::{DOCKERFILE, NGINX_TMPFS, site, spec};
use crate::stdout;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// The server answers `recast status` and shows service `site` taken over: no rollout under way,
/// two instances of the current release, both in rotation and healthy. Returns their ids.
fn taken_over(server: &Server, dir: &Path) -> Option<Vec<String>> {
    let o = server.rc(dir, &["status", "site", "--json"]);
    if !o.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&o.stdout).ok()?;
    let svc = &v["services"][0];
    let current = svc["current_release"].as_i64()?;
    let insts = svc["instances"].as_array()?;
    let serving = insts.len() == 2
        && insts.iter().all(|i| {
            i["release"].as_i64() == Some(current) && i["active"] == true && i["healthy"] == true
        });
    if !(serving && svc["rollout"].is_null()) {
        return None;
    }
    let mut ids: Vec<String> = insts
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    Some(ids)
}

/// Wait (with a deadline) until the server has taken service `site` over; its instance ids.
fn wait_taken_over(server: &Server, dir: &Path, what: &str) -> Vec<String> {
    let mut ids = None;
    wait_for(what, 60, || {
        ids = taken_over(server, dir);
        ids.is_some()
    });
    ids.expect("taken over")
}

/// No request has failed so far; `what` names the phase.
fn none_failed(load: &Load, what: &str) {
    assert_eq!(
        load.failed(),
        0,
        "{what}: requests failed through the route"
    );
}

#[test]
fn stock_nginx_serves_through_a_server_kill_an_upgrade_and_a_rolling_update() {
    let repo = AptRepo::serve();
    let archive = base_image_archive();
    let mut server = Server::start();
    let port = free_port();
    let p = tempfile::Builder::new()
        .prefix("nginxdp")
        .tempdir()
        .expect("tmp");
    let dir = p.path();
    fs::write(dir.join("Dockerfile"), DOCKERFILE).expect("Dockerfile");
    let write_spec = |body: &str| {
        fs::write(
            dir.join("recast.hcl"),
            spec(&archive, &repo.url, port, body, NGINX_TMPFS),
        )
        .expect("spec")
    };
    let v1 = site(dir, "v1");
    write_spec(&v1);
    ok(&server.rc(dir, &["apply", "--yes"]));
    wait_for("nginx's v1 page at / through the route", 30, || {
        body_now(port) == v1
    });
    let ids = wait_taken_over(&server, dir, "release 1 healthy");
    assert_eq!(ids, server.instance_ids(), "status and the data directory");
    let dp = server
        .data_plane_pid()
        .expect("a data plane serves the route");

    let load = Load::start(port);
    load.flowing(200);

    // (1) kill -9 of the server: the route keeps serving nginx for a second with no control
    // plane; a new server takes the same instances over, on the same data plane.
    server.kill9();
    let down = Instant::now();
    load.flowing(50);
    std::thread::sleep(Duration::from_secs(1).saturating_sub(down.elapsed()));
    load.flowing(50);
    none_failed(&load, "with no server");
    server.spawn();
    let t = Instant::now();
    let now = wait_taken_over(&server, dir, "the restarted server to take nginx over");
    let takeover = t.elapsed();
    assert_eq!(
        now, ids,
        "nginx's instances were replaced after the restart"
    );
    assert_eq!(
        server.instance_ids(),
        ids,
        "instances in the data directory"
    );
    assert_eq!(
        server.data_plane_pid(),
        Some(dp),
        "a server of the same executable re-attaches to the running data plane"
    );
    load.flowing(200);
    none_failed(&load, "across the kill and the restart");

    // (2) Upgrade: kill -9, then a server from another executable (a copy of this build). Its
    // data plane takes the listening sockets over; the old one drains and exits.
    let bin = tempfile::tempdir().expect("tmp");
    let newer = bin.path().join("recast");
    fs::copy(env!("CARGO_BIN_EXE_recast"), &newer)
        .unwrap_or_else(|e| panic!("copy recast to {}: {e}", newer.display()));
    server.kill9();
    load.flowing(50);
    server.spawn_from(&newer);
    let t = Instant::now();
    let mut upgraded = None;
    wait_for("the newer data plane", 30, || {
        upgraded = server.data_plane_pid().filter(|pid| *pid != dp);
        upgraded.is_some()
    });
    wait_for("the old data plane to drain and exit", 40, || {
        !Path::new(&format!("/proc/{dp}")).exists()
    });
    let handoff = t.elapsed();
    let now = wait_taken_over(&server, dir, "the upgraded server to take nginx over");
    assert_eq!(now, ids, "nginx's instances were replaced by the upgrade");
    load.flowing(200);
    none_failed(&load, "across the upgrade");

    // (3) A rolling update of nginx's page, driven by the upgraded server, under the same load.
    let v2 = site(dir, "v2");
    write_spec(&v2);
    let t = Instant::now();
    let o = server.rc(dir, &["apply", "--yes", "--json"]);
    let rollout = t.elapsed();
    ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("apply --json is not JSON ({e}): {}", stdout(&o)));
    assert_eq!(v["state"], "succeeded", "the rolling update: {v}");
    wait_for("nginx's v2 page at / through the route", 30, || {
        body_now(port) == v2
    });
    load.flowing(200);
    let after = wait_taken_over(&server, dir, "release 2 healthy");
    assert!(
        after.iter().all(|id| !ids.contains(id)),
        "the rolling update replaced every instance: before {ids:?}, after {after:?}"
    );
    assert_eq!(
        server.data_plane_pid(),
        upgraded,
        "the upgraded data plane still serves"
    );
    let (served, failures, bodies) = load.finish();
    eprintln!(
        "stock nginx: {served} requests served, {} failed; takeover {:.2}s, handoff {:.2}s, \
         rolling update {:.1}s; bodies {bodies:?}",
        failures.len(),
        takeover.as_secs_f64(),
        handoff.as_secs_f64(),
        rollout.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        served as usize + failures.len(),
        &failures[..failures.len().min(5)]
    );
    for b in bodies.keys() {
        assert!(*b == v1 || *b == v2, "an answer from neither page: {b:?}");
    }
    assert!(bodies.contains_key(&v2), "no answer from v2: {bodies:?}");
    assert_eq!(body_now(port), v2, "the page served at the end");
}
