//! Issue 15, point 1: `recast server --state postgres://…` keeps every record in PostgreSQL
//! (started by the test: a throwaway cluster on a Unix socket). The whole loop works on it —
//! apply, the route serving, history, a second release — and nothing goes to `state.db`; a server
//! killed with `kill -9` and started again on the same database takes its instances over, and
//! one whose PostgreSQL restarts under it reconnects and goes on.

use crate::deploy::{Project, Server, body_now, ok, wait_for};
use crate::pg_cluster::Cluster;
use std::process::Command;

/// `psql -Atc SQL` against the cluster's `recast` database.
fn psql(cluster: &Cluster, sql: &str) -> String {
    let url = cluster.url();
    let host = url.rsplit_once("host=").map(|(_, h)| h).expect("host");
    let o = Command::new("psql")
        .args(["-h", host, "-U", "recast", "-d", "recast", "-Atc", sql])
        .output()
        .expect("psql");
    assert!(
        o.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn a_server_keeps_its_state_in_postgres_and_takes_over_after_a_kill() {
    let mut cluster = Cluster::start();
    let d = tempfile::tempdir().expect("tmp");
    let mut server = Server::start_with(d, vec!["--state".into(), cluster.url()]);
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
    assert!(
        !server.data.join("state.db").exists(),
        "with --state postgres://…, no state.db is written"
    );
    assert_eq!(psql(&cluster, "select count(*) from releases"), "1");
    // The CLI finds the state where the server says it is (plan reads it locally).
    ok(&server.rc(p.path(), &["plan"]));

    server.kill9();
    server.spawn();
    p.write(r#"MESSAGE = "v2""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    wait_for("release 2 served", 20, || {
        body_now(p.port) == "v2 from hello 0.1.0\n"
    });
    let history = server.rc(p.path(), &["history", "web", "--json"]);
    ok(&history);
    let v: serde_json::Value = serde_json::from_slice(&history.stdout).expect("history JSON");
    let releases = v["releases"].as_array().map_or(0, Vec::len);
    assert_eq!(releases, 2, "{v}");
    assert_eq!(psql(&cluster, "select count(*) from releases"), "2");

    // PostgreSQL restarted under the running server: it reconnects and goes on.
    cluster.stop();
    cluster.spawn();
    p.write(r#"MESSAGE = "v3""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    wait_for("release 3 served", 20, || {
        body_now(p.port) == "v3 from hello 0.1.0\n"
    });
    assert_eq!(psql(&cluster, "select count(*) from releases"), "3");
}
