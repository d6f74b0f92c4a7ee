//! Issue 15, point 6: `recast state migrate` moves an installation's records from the SQLite
//! default into PostgreSQL (a server started on it then shows the same history and takes the
//! instances over), refuses a destination with rows, never prints a password; `recast state
//! backup FILE` writes a copy that is a state of its own and refuses an existing file.

use crate::deploy::{Project, Server, body_now, ok, wait_for};
use crate::pg_cluster::Cluster;
use crate::{stderr, stdout};

fn json(o: &std::process::Output) -> serde_json::Value {
    ok(o);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("JSON: {e}: {}", stdout(o)))
}

#[test]
fn migrate_to_postgres_keeps_the_history_and_backup_writes_a_copy() {
    let cluster = Cluster::start();
    // Trust authentication ignores it; it must never be printed.
    let url = cluster.url().replace("recast@", "recast:s3cret-pw@");
    let mut server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    p.write(r#"MESSAGE = "v2""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    wait_for("release 2 served", 20, || {
        body_now(p.port) == "v2 from hello 0.1.0\n"
    });
    let before = json(&server.rc(p.path(), &["history", "web", "--json"]));

    // Stopped (its instances keep serving), moved, started on PostgreSQL.
    server.kill9();
    let db = format!("sqlite:{}", server.data.join("state.db").display());
    let moved = server.rc(
        p.path(),
        &["state", "migrate", "--from", &db, "--to", &url, "--json"],
    );
    let report = json(&moved);
    assert_eq!(report["tables"]["releases"], 2, "{report}");
    assert!(report["tables"]["events"].as_u64() > Some(0), "{report}");
    assert!(!stdout(&moved).contains("s3cret"), "{report}");

    server.args = vec!["--state".into(), url.clone()];
    server.spawn();
    let after = json(&server.rc(p.path(), &["history", "web", "--json"]));
    assert_eq!(after, before, "history after the move");
    assert_eq!(body_now(p.port), "v2 from hello 0.1.0\n");
    // New records continue after the copied ones.
    p.write(r#"MESSAGE = "v3""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    wait_for("release 3 served", 20, || {
        body_now(p.port) == "v3 from hello 0.1.0\n"
    });

    // A second move into the same database is refused, naming the table, without the password.
    let again = server.rc(p.path(), &["state", "migrate", "--from", &db, "--to", &url]);
    assert!(!again.status.success(), "a destination with rows");
    let err = stderr(&again);
    assert!(
        err.contains("already holds") && err.contains("table"),
        "{err}"
    );
    assert!(!err.contains("s3cret") && err.contains("***"), "{err}");

    // A backup of the running server's state (PostgreSQL), then of that backup.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("backup.db");
    let f = file.display().to_string();
    let backup = json(&server.rc(p.path(), &["state", "backup", &f, "--json"]));
    assert_eq!(backup["tables"]["releases"], 3, "{backup}");
    let twice = server.rc(p.path(), &["state", "backup", &f]);
    assert!(!twice.status.success(), "an existing backup file");
    assert!(stderr(&twice).contains(&f), "{}", stderr(&twice));
    let copy = dir.path().join("copy.db").display().to_string();
    let text = server.rc(p.path(), &["state", "migrate", "--from", &f, "--to", &copy]);
    ok(&text);
    assert!(
        stdout(&text).contains("releases: 3 rows"),
        "{}",
        stdout(&text)
    );
    let counts = |v: &serde_json::Value| v["tables"].clone();
    let from_copy = json(&server.rc(
        p.path(),
        &[
            "state",
            "backup",
            &format!("{f}.2"),
            "--state",
            &copy,
            "--json",
        ],
    ));
    assert_eq!(counts(&from_copy), counts(&backup));
}
