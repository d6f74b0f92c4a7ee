//! The state store's tests, each run against both backends (`on_both!`): SQLite in a temporary
//! file, PostgreSQL in a throwaway cluster of its own (`cluster.rs`; about a second to start).

mod cluster;

use super::*;
use cluster::Cluster;

/// One backend's database for one test; `open` opens it again as a new `State`.
enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres(Cluster),
}

impl TestDb {
    fn sqlite() -> TestDb {
        TestDb::Sqlite(tempfile::tempdir().expect("tmp"))
    }

    fn postgres() -> TestDb {
        TestDb::Postgres(Cluster::start())
    }

    fn url(&self) -> String {
        match self {
            TestDb::Sqlite(d) => format!("sqlite:{}", d.path().join("state.db").display()),
            TestDb::Postgres(c) => c.url(),
        }
    }

    fn open(&self) -> State {
        match self {
            // The path API every caller uses today.
            TestDb::Sqlite(d) => State::open(&d.path().join("state.db")).expect("open"),
            TestDb::Postgres(c) => State::open_url(&c.url()).expect("open"),
        }
    }

    /// The store as a recast whose last migration was number `n` left it.
    fn open_upto(&self, n: usize) -> State {
        State::open_url_upto(&self.url(), n).expect("open at an older schema")
    }
}

/// Each named test function `fn(&TestDb)` as a test on SQLite and one on PostgreSQL.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(&super::TestDb::sqlite()) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(&super::TestDb::postgres()) } )*
        }
    };
}

mod copy;
mod lease;

on_both!(
    releases_number_up_and_survive_reopening,
    routes_keep_their_protocol_and_older_routes_are_http,
    an_unknown_outcome_or_state_is_an_error_naming_table_row_and_value,
    snapshots_are_recorded_per_service_and_survive_reopening,
    events_instances_and_numbers_read_back,
    route_replacement_is_one_transaction,
);

fn release<'a>(service: &'a str, hash: &'a str) -> NewRelease<'a> {
    NewRelease {
        project: "p",
        service,
        digest: "sha256:a",
        image: service,
        spec: "{}",
        spec_hash: hash,
        by: "test",
    }
}

fn releases_number_up_and_survive_reopening(db: &TestDb) {
    {
        let s = db.open();
        let r1 = s.new_release(&release("web", "h1")).expect("r1");
        let r2 = s.new_release(&release("web", "h2")).expect("r2");
        assert_eq!((r1.number, r2.number), (1, 2));
        assert_eq!(
            (r2.spec_hash.as_str(), r2.outcome),
            ("h2", ReleaseOutcome::Pending)
        );
        s.set_outcome("p", "web", 1, ReleaseOutcome::Succeeded, None)
            .expect("outcome");
        s.set_current("p", "web", Some(1)).expect("current");
        let id = s
            .start_rollout("p", "web", Some(1), 2, "rolling")
            .expect("rollout");
        s.rollout_step(id, 1, "one new instance healthy")
            .expect("step");
    }
    let s = db.open();
    assert_eq!(
        s.current("p", "web").expect("current").map(|r| r.number),
        Some(1)
    );
    assert_eq!(s.releases("p", "web").expect("history").len(), 2);
    assert_eq!(s.project_owner("p").expect("owner"), None);
    s.set_project_owner("p", "/srv/a/svc").expect("own");
    let first = s.project_owner("p").expect("owner").expect("recorded");
    s.set_project_owner("p", "/srv/a/svc").expect("own again");
    assert_eq!(s.project_owner("p").expect("owner"), Some(first));
    s.set_project_owner("p", "/srv/b/svc").expect("move");
    assert_eq!(
        s.project_owner("p").expect("owner").map(|o| o.dir),
        Some("/srv/b/svc".into())
    );
    let open = s.unfinished_rollouts().expect("rollouts");
    assert_eq!(
        (open.len(), open[0].step, open[0].detail.as_str()),
        (1, 1, "one new instance healthy")
    );
}

fn routes_keep_their_protocol_and_older_routes_are_http(db: &TestDb) {
    // A store as recast wrote it before migration 6, with a route in it.
    {
        let s = db.open_upto(5);
        s.with(|c| {
            c.execute(
                "INSERT INTO routes (project, name, listen, service, timeout_ms) VALUES ('p', 'www', '127.0.0.1:8080', 'web', 5000)",
                &[],
            )
        })
        .expect("route");
    }
    let s = db.open();
    let old = s.routes().expect("routes");
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].protocol, RouteProtocol::Http);
    let db_route = RouteRow {
        project: "p".into(),
        name: "db".into(),
        listen: "127.0.0.1:15432".into(),
        service: "db".into(),
        timeout_ms: 30_000,
        protocol: RouteProtocol::Tcp,
    };
    s.set_routes("p", &[old[0].clone(), db_route.clone()])
        .expect("set routes");
    drop(s);
    let s = db.open();
    assert_eq!(s.routes().expect("routes"), vec![db_route, old[0].clone()]);
    s.with(|c| c.execute("UPDATE routes SET protocol = 'udp' WHERE name = 'db'", &[]))
        .expect("tamper");
    let text = s.routes().expect_err("an unknown protocol").to_string();
    assert!(
        text.contains("table routes, row p/db") && text.contains("unknown route protocol \"udp\""),
        "{text}"
    );
}

fn an_unknown_outcome_or_state_is_an_error_naming_table_row_and_value(db: &TestDb) {
    let s = db.open();
    let r = s.new_release(&release("web", "h1")).expect("release");
    assert_eq!(r.outcome, ReleaseOutcome::Pending);
    assert_eq!(r.finished_ms, None);
    s.set_outcome("p", "web", 1, ReleaseOutcome::RolledBack, Some("unhealthy"))
        .expect("outcome");
    let r = s.release("p", "web", 1).expect("read").expect("there");
    assert_eq!(r.outcome, ReleaseOutcome::RolledBack);
    assert_eq!(r.reason.as_deref(), Some("unhealthy"));
    assert!(
        r.finished_ms.is_some(),
        "a final outcome records when: {r:?}"
    );
    let id = s
        .start_rollout("p", "web", None, 1, "rolling")
        .expect("rollout");
    assert_eq!(
        s.unfinished_rollouts().expect("open")[0].state,
        RolloutState::Running
    );
    s.finish_rollout(id, RolloutState::Failed, "stopped")
        .expect("finish");
    assert_eq!(
        s.rollouts("p", "web").expect("rollouts")[0].state,
        RolloutState::Failed
    );

    s.tx(|c| {
        c.execute("UPDATE releases SET outcome = 'sideways'", &[])?;
        c.execute("UPDATE rollouts SET state = 'upside_down'", &[])
    })
    .expect("tamper");
    let e = s.release("p", "web", 1).expect_err("an unknown outcome");
    assert!(
        matches!(
            e,
            Error::Invalid {
                table: "releases",
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("table releases, row p/web release 1")
            && text.contains("unknown release outcome \"sideways\""),
        "{text}"
    );
    let text = s
        .rollouts("p", "web")
        .expect_err("an unknown state")
        .to_string();
    assert!(
        text.contains(&format!("table rollouts, row id {id}"))
            && text.contains("unknown rollout state \"upside_down\""),
        "{text}"
    );
}

fn snapshots_are_recorded_per_service_and_survive_reopening(db: &TestDb) {
    {
        let s = db.open();
        s.add_snapshot("p", "db", "data", 2, Some(1), "/d/snapshots/p/db/data/2-x")
            .expect("add");
        s.add_snapshot("p", "other", "data", 5, None, "/y")
            .expect("add");
        let b = s
            .add_snapshot("p", "db", "data", 3, Some(2), "/d/snapshots/p/db/data/3-x")
            .expect("add");
        assert_eq!((b.before_release, b.of_release), (3, Some(2)));
        s.remove_snapshot(b.id).expect("remove");
    }
    let s = db.open();
    let all = s.snapshots("p", "db").expect("list");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        (
            all[0].volume.as_str(),
            all[0].before_release,
            all[0].of_release
        ),
        ("data", 2, Some(1))
    );
    assert_eq!(all[0].path, "/d/snapshots/p/db/data/2-x");
}

fn events_instances_and_numbers_read_back(db: &TestDb) {
    let s = db.open();
    let e1 = s.event("p", "web", "deploy", "one").expect("event");
    let e2 = s.event("p", "web", "verdict", "two").expect("event");
    s.event("p", "api", "verdict", "three").expect("event");
    assert!(e2.id > e1.id, "{e1:?} {e2:?}");
    let after: Vec<String> = s
        .events(e1.id, 10)
        .expect("events")
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(after, ["two", "three"]);
    assert_eq!(s.events(0, 1).expect("events"), vec![e1]);
    assert_eq!(s.events_of("p", "web", "verdict").expect("of"), vec![e2]);

    for svc in ["web", "web", "api"] {
        s.new_release(&release(svc, "h")).expect("release");
    }
    s.set_current("p", "web", Some(2)).expect("current");
    s.set_current("p", "api", Some(1)).expect("current");
    s.set_current("p", "api", None).expect("no current");
    let numbers = s.last_release_numbers("p").expect("numbers");
    assert_eq!(
        numbers.into_iter().collect::<Vec<_>>(),
        [("api".to_string(), 1), ("web".to_string(), 2)]
    );
    let live = s.current_releases("p").expect("live");
    assert_eq!(live.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(live["web"].number, 2);
    assert_eq!(
        s.all_services().expect("services"),
        [("p".to_string(), "web".to_string())]
    );
    assert_eq!(s.current("p", "api").expect("api"), None);

    s.add_instance("i1", "p", "web", 1).expect("instance");
    s.add_instance("i1", "p", "web", 2)
        .expect("replace instance");
    let release_of_i1 = |s: &State| {
        s.with(|c| {
            c.opt(
                "SELECT release FROM instances WHERE id = ?1",
                &[&"i1"],
                |r| r.get::<i64>(0),
            )
        })
        .expect("read instance")
    };
    assert_eq!(release_of_i1(&s), Some(2));
    s.remove_instance("i1").expect("remove");
    assert_eq!(release_of_i1(&s), None);
}

fn route_replacement_is_one_transaction(db: &TestDb) {
    let s = db.open();
    let route = |name: &str| RouteRow {
        project: "p".into(),
        name: name.into(),
        listen: "127.0.0.1:8080".into(),
        service: "web".into(),
        timeout_ms: 1000,
        protocol: RouteProtocol::Http,
    };
    s.set_routes("p", &[route("a")]).expect("routes");
    // The second row breaks the primary key: the delete and the first insert are undone too.
    let e = s
        .set_routes("p", &[route("b"), route("b")])
        .expect_err("a duplicate route name");
    assert!(e.to_string().contains(s.location()), "{e}");
    assert_eq!(s.routes().expect("routes"), vec![route("a")]);
}

#[test]
fn state_urls_name_their_backend_and_never_show_a_password() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("a.db");
    let s = State::open_url(&path.display().to_string()).expect("a plain path is SQLite");
    assert_eq!(s.location(), path.display().to_string());
    drop(s);
    let s = State::open_url(&format!("sqlite://{}", path.display())).expect("sqlite://PATH");
    assert_eq!(s.location(), path.display().to_string());

    assert_eq!(
        redact_url("postgres://u:s3cret@h:5432/db?host=/run/pg&password=s3cret"),
        "postgres://u:***@h:5432/db?host=/run/pg&password=***"
    );
    let Err(e) = State::open_url("mysql://u:s3cret@h/db") else {
        panic!("an unknown scheme opened")
    };
    let text = e.to_string();
    assert!(
        text.contains("unknown scheme \"mysql\"") && !text.contains("s3cret"),
        "{text}"
    );
    let Err(e) = State::open_url("postgres://u:s3cret@/db") else {
        panic!("a URL without a host opened")
    };
    let text = e.to_string();
    assert!(
        text.contains("no host") && !text.contains("s3cret"),
        "{text}"
    );
}

#[test]
fn postgres_unreachable_is_an_error_naming_the_url_within_the_retry_time() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("postgres://u:s3cret@/db?host={}", dir.path().display());
    let started = Instant::now();
    let Err(e) = State::open_url(&url) else {
        panic!("opened a database nobody serves")
    };
    let took = started.elapsed();
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "postgres://u:***@/db?host={}",
            dir.path().display()
        )) && text.contains("connecting (")
            && !text.contains("s3cret"),
        "{text}"
    );
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(15),
        "gave up after {took:?}"
    );
}

#[test]
fn a_postgres_restart_under_an_open_state_is_survived() {
    let mut cluster = Cluster::start();
    let s = State::open_url(&cluster.url()).expect("open");
    s.new_release(&release("web", "h1")).expect("before");
    // Every pooled connection is in use at once, so each of them must reconnect later.
    std::thread::scope(|t| {
        for i in 0..4 {
            let s = &s;
            t.spawn(move || s.event("p", "web", "load", &i.to_string()).expect("event"));
        }
    });

    cluster.stop();
    cluster.spawn();
    let r = s
        .new_release(&release("web", "h2"))
        .expect("after a restart");
    assert_eq!(r.number, 2);
    assert_eq!(s.events(0, 100).expect("events").len(), 4);

    // Down for a moment: the call waits for the server to come back (within the retry time).
    cluster.stop();
    let started = Instant::now();
    std::thread::scope(|t| {
        let s = &s;
        let reader = t.spawn(move || {
            let got = s
                .releases("p", "web")
                .expect("while the server starts again");
            (got.len(), started.elapsed())
        });
        // Started from this thread: the server gets SIGINT when the thread that started it ends.
        std::thread::sleep(Duration::from_millis(700));
        cluster.spawn();
        let (n, took) = reader.join().expect("the reader");
        assert_eq!(n, 2);
        assert!(
            took >= Duration::from_millis(700),
            "answered after {took:?}"
        );
    });

    // Down for good: a bounded wait, then an error naming the database and the step.
    cluster.stop();
    let mut s = s;
    s.set_retry_for(Duration::from_secs(2));
    let started = Instant::now();
    let e = s.releases("p", "web").expect_err("no server");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let text = e.to_string();
    assert!(
        text.contains(&cluster.url()) && text.contains("connecting"),
        "{text}"
    );
}

#[test]
fn concurrent_callers_share_the_postgres_pool() {
    let cluster = Cluster::start();
    let s = State::open_url(&cluster.url()).expect("open");
    std::thread::scope(|t| {
        for i in 0..8 {
            let s = &s;
            t.spawn(move || {
                for j in 0..20 {
                    s.event("p", "web", "load", &format!("{i}/{j}"))
                        .expect("event");
                }
            });
        }
    });
    assert_eq!(s.events(0, 1000).expect("events").len(), 160);
}

use std::time::{Duration, Instant};
