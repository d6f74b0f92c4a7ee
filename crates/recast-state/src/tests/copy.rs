//! Copying a state between backends (`copy_to`) and backing one up (`backup`).

use super::*;
use crate::copy::{TABLES, schema_tables};

on_both!(
    the_copy_list_names_every_table_the_migrations_create,
    a_copy_into_a_state_with_rows_is_refused_naming_the_table,
    a_backup_opens_as_a_sqlite_state_with_the_same_rows,
);

#[test]
fn sqlite_to_postgres_row_for_row() {
    copies_row_for_row(&TestDb::sqlite(), &TestDb::postgres());
}

#[test]
fn postgres_to_sqlite_row_for_row() {
    copies_row_for_row(&TestDb::postgres(), &TestDb::sqlite());
}

#[test]
fn sqlite_to_sqlite_row_for_row() {
    copies_row_for_row(&TestDb::sqlite(), &TestDb::sqlite());
}

fn the_copy_list_names_every_table_the_migrations_create(db: &TestDb) {
    let s = db.open();
    let present = s.with(schema_tables).expect("the schema's tables");
    let mut listed: Vec<&str> = TABLES.to_vec();
    listed.sort_unstable();
    assert_eq!(
        present, listed,
        "copy::TABLES must name every table of the schema (a new migration's table too)"
    );
}

/// A state with rows in every table, ids with gaps (a removed snapshot, a removed instance).
fn populate(s: &State) {
    s.set_project_owner("p", "/srv/p").expect("owner");
    for (svc, hash) in [("web", "h1"), ("web", "h2"), ("db", "h3")] {
        s.new_release(&release(svc, hash)).expect("release");
    }
    s.set_outcome("p", "web", 1, ReleaseOutcome::Succeeded, None)
        .expect("outcome");
    s.set_outcome("p", "web", 2, ReleaseOutcome::RolledBack, Some("unhealthy"))
        .expect("outcome");
    s.set_current("p", "web", Some(1)).expect("current");
    s.set_current("p", "db", None).expect("no current");
    s.add_instance("i1", "p", "web", 1).expect("instance");
    s.add_instance("i2", "p", "web", 2).expect("instance");
    s.remove_instance("i2").expect("remove");
    let r = s
        .start_rollout("p", "web", Some(1), 2, "canary")
        .expect("rollout");
    s.rollout_step(r, 2, "20%").expect("step");
    s.finish_rollout(r, RolloutState::RolledBack, "unhealthy")
        .expect("finish");
    s.start_rollout("p", "db", None, 1, "recreate")
        .expect("rollout");
    for i in 0..5 {
        s.event("p", "web", "deploy", &format!("event {i} 'quoted' ünïcode"))
            .expect("event");
    }
    let route = RouteRow {
        project: "p".into(),
        name: "db".into(),
        listen: "127.0.0.1:5432".into(),
        service: "db".into(),
        timeout_ms: 5000,
        protocol: RouteProtocol::Tcp,
    };
    s.set_routes("p", &[route]).expect("routes");
    let gone = s
        .add_snapshot("p", "db", "data", 1, None, "/d/1")
        .expect("snapshot");
    s.add_snapshot("p", "db", "data", 2, Some(1), "/d/2")
        .expect("snapshot");
    s.remove_snapshot(gone.id).expect("remove snapshot");
    let h = Host {
        name: "a".into(),
        instance: "i".into(),
        api: "127.0.0.1:1".into(),
        standby_for: vec!["p".into(), "q".into()],
        started_ms: 0,
        seen_ms: 0,
        lease_ms: 10_000,
    };
    s.register_host(&h).expect("host").expect("new");
    s.take_lease("p", "a", 10_000, Take::IfFree)
        .expect("lease")
        .expect("free");
}

/// Every table's rows, as the copy reads them.
fn dump(s: &State) -> Vec<(String, Vec<String>)> {
    let tables = s.tx(crate::copy::read_all).expect("read every table");
    tables
        .iter()
        .map(|t| {
            let rows = t.rows.iter().map(|r| format!("{r:?}")).collect();
            (t.name.to_string(), rows)
        })
        .collect()
}

fn copies_row_for_row(src: &TestDb, dst: &TestDb) {
    let from = src.open();
    populate(&from);
    let report = from.copy_to(&dst.open()).expect("copy");
    let counts: Vec<(&str, u64)> = report
        .tables
        .iter()
        .map(|t| (t.table.as_str(), t.rows))
        .collect();
    assert_eq!(
        counts,
        [
            ("projects", 1),
            ("releases", 3),
            ("services", 2),
            ("instances", 1),
            ("rollouts", 2),
            ("events", 5),
            ("routes", 1),
            ("snapshots", 1),
            ("hosts", 1),
            ("leases", 1),
        ]
    );
    // Opened again: the same rows, through the copy's reader and the public API.
    let to = dst.open();
    assert_eq!(dump(&to), dump(&from));
    assert_eq!(to.releases("p", "web").ok(), from.releases("p", "web").ok());
    assert_eq!(to.rollouts("p", "web").ok(), from.rollouts("p", "web").ok());
    assert_eq!(to.events(0, 100).ok(), from.events(0, 100).ok());
    assert_eq!(to.routes().ok(), from.routes().ok());
    assert_eq!(to.snapshots("p", "db").ok(), from.snapshots("p", "db").ok());
    assert_eq!(to.project_owner("p").ok(), from.project_owner("p").ok());
    assert_eq!(
        to.unfinished_rollouts().ok(),
        from.unfinished_rollouts().ok()
    );

    // New rows continue after the copied ones.
    let last = |v: Vec<i64>| v.into_iter().max().unwrap_or(0);
    let events = last(
        from.events(0, 100)
            .expect("events")
            .iter()
            .map(|e| e.id)
            .collect(),
    );
    assert_eq!(
        to.event("p", "web", "deploy", "new").expect("event").id,
        events + 1
    );
    let rollouts = [from.rollouts("p", "web"), from.rollouts("p", "db")]
        .into_iter()
        .flat_map(|r| r.expect("rollouts"))
        .map(|r| r.id)
        .collect();
    let next = to
        .start_rollout("p", "web", Some(1), 3, "rolling")
        .expect("rollout");
    assert_eq!(next, last(rollouts) + 1);
    let snaps = last(
        from.snapshots("p", "db")
            .expect("snapshots")
            .iter()
            .map(|s| s.id)
            .collect(),
    );
    let snap = to
        .add_snapshot("p", "db", "data", 3, Some(2), "/d/3")
        .expect("snapshot");
    assert_eq!(snap.id, snaps + 1);
    assert_eq!(
        to.new_release(&release("web", "h4"))
            .expect("release")
            .number,
        3
    );
}

fn a_copy_into_a_state_with_rows_is_refused_naming_the_table(db: &TestDb) {
    let src = TestDb::sqlite();
    let from = src.open();
    populate(&from);
    let to = db.open();
    to.event("q", "api", "deploy", "already here")
        .expect("event");
    let e = from.copy_to(&to).expect_err("a destination with rows");
    let text = e.to_string();
    assert!(
        text.contains("table events already holds 1 rows") && text.contains(to.location()),
        "{text}"
    );
    // Nothing was written.
    assert!(to.releases("p", "web").expect("releases").is_empty());
    assert_eq!(to.events(0, 100).expect("events").len(), 1);
}

fn a_backup_opens_as_a_sqlite_state_with_the_same_rows(db: &TestDb) {
    let s = db.open();
    populate(&s);
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("backup.db");
    let report = s.backup(&file).expect("backup");
    assert_eq!(report.tables.len(), TABLES.len());
    assert_eq!(report.tables[1].table, "releases");
    assert_eq!(report.tables[1].rows, 3);
    let copy = State::open(&file).expect("the backup opens");
    assert_eq!(dump(&copy), dump(&s));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the backup is private: {mode:o}");
    }
    let e = s.backup(&file).expect_err("an existing file");
    assert!(e.to_string().contains("backup.db"), "{e}");
    assert_eq!(dump(&State::open(&file).expect("still there")), dump(&s));
}
