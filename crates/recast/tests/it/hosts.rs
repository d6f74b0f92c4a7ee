//! Issue 15, point 5: hosts sharing one PostgreSQL state, each project acted for by the holder of
//! its lease. Each "host" is a `recast server` with a data directory of its own (its own
//! instances, data plane and project networks); they share only the state. A project moves on
//! request; a standby takes a project over when its host dies (`kill -9` of the server, its data
//! plane and its instances) or is cut off from PostgreSQL — and a cut-off host stops its
//! instances before the standby may start its own.

use crate::deploy::{Project, Server, body_now, ok, wait_for};
use crate::images::Registry;
use crate::pg_cluster::Cluster;
use crate::registry_deploy::with_registry;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The lease time the tests run with: the default (10 s). Shorter leases leave a host less
/// slack before it must stop acting (0.6 × the lease), and a loaded test machine stalls renewals.
const LEASE: u64 = 10;

fn host(name: &str, state: &str) -> Server {
    let d = tempfile::tempdir().expect("tmp");
    Server::start_with(
        d,
        [
            "--state",
            state,
            "--host-name",
            name,
            "--standby-for",
            "all",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--lease-time".into(), LEASE.to_string()])
        .collect(),
    )
}

fn json(o: &Output) -> serde_json::Value {
    ok(o);
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

/// The host holding `project` and its token, as `recast hosts --json` says.
fn holder(s: &Server, project: &str) -> (Option<String>, i64, bool) {
    let v = json(&s.rc(Path::new("/"), &["hosts", "--json"]));
    let l = v["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .find(|l| l["project"] == project)
        .cloned()
        .unwrap_or_default();
    (
        l["host"].as_str().map(str::to_string),
        l["token"].as_i64().unwrap_or(0),
        l["serving"].as_bool().unwrap_or(false),
    )
}

/// How long `project`'s lease has left, in milliseconds, as `recast hosts --json` says.
fn expires_in(s: &Server, project: &str) -> i64 {
    let v = json(&s.rc(Path::new("/"), &["hosts", "--json"]));
    v["leases"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["project"] == project))
        .and_then(|l| l["expires_in_ms"].as_i64())
        .unwrap_or(0)
}

/// The body the route answers now, or `None` when nothing answers.
fn answer(port: u16) -> Option<String> {
    Some(body_now(port)).filter(|b| !b.is_empty())
}

/// A machine dying: its server, its data plane, its instances and its egress processes, all
/// with SIGKILL, nothing cleaned up.
fn kill_host(s: &mut Server) {
    let plane = s.data_plane_pid();
    s.kill9();
    if let Some(pid) = plane {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
    }
    for id in s.instance_ids() {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(s.data.join("runc"))
            .args(["kill", &id, "KILL"])
            .output();
    }
    for pid in std::fs::read_dir(s.data.join("networks"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("egress.pid")).ok())
    {
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
    }
}

/// What a dead machine's disk would not hold either: the mounts under its data directory
/// (instance root filesystems, pinned network namespaces), so its directory can go.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
}

/// How many of a host's instances run (their process alive).
fn running(s: &Server) -> usize {
    s.instance_ids()
        .iter()
        .filter(|id| {
            let o = Command::new("runc")
                .arg("--root")
                .arg(s.data.join("runc"))
                .args(["state", id])
                .output();
            o.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"running\""))
        })
        .count()
}

/// The project's name: its directory's, lower-cased.
fn project_name(p: &Project) -> String {
    p.path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_lowercase()
}

#[test]
fn a_project_moves_on_request_and_a_standby_takes_it_when_its_host_dies() {
    let mut cluster = Cluster::start();
    let registry = Registry::start();
    let images = format!("{}/hosts", registry.addr);
    let mut a = host("host-a", &cluster.url());
    let mut b = host("host-b", &cluster.url());
    let p = Project::new();
    let name = project_name(&p);
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    with_registry(&p, &images);
    ok(&a.rc(p.path(), &["apply", "--yes"]));
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
    let (h, first, serving) = holder(&a, &name);
    assert_eq!(
        (h.as_deref(), serving),
        (Some("host-a"), true),
        "{}",
        a.logs()
    );

    // Another host refuses to act for it, naming the holder.
    let o = b.rc(p.path(), &["apply", "--yes"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("project {name} is held by host host-a"))
            && err.contains("recast project move"),
        "{err}"
    );

    // Moves that cannot be: to no such host, of no such project.
    for (args, says) in [
        (
            vec!["project", "move", &name, "--to", "host-z"],
            "no host is named \"host-z\" (hosts: host-a, host-b)",
        ),
        (
            vec!["project", "move", "nosuch", "--to", "host-b"],
            "project nosuch is not held by any host",
        ),
    ] {
        let o = a.rc(Path::new("/"), &args);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }

    // A deliberate move: drained and stopped on a, started on b from the records.
    let moved = json(&a.rc(
        Path::new("/"),
        &["project", "move", &name, "--to", "host-b", "--json"],
    ));
    assert_eq!(
        (moved["from"].as_str(), moved["to"].as_str()),
        (Some("host-a"), Some("host-b"))
    );
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n", "{}", b.logs());
    wait_for("a's instances to go", 15, || a.instances() == 0);
    assert_eq!(running(&b), 3, "{}", b.logs());
    let (h, moved_token, _) = holder(&a, &name);
    assert_eq!(h.as_deref(), Some("host-b"));
    assert!(
        moved_token > first,
        "tokens grow: {first} then {moved_token}"
    );
    // b applies now; a refuses.
    p.write(r#"MESSAGE = "v2""#, r#"strategy = "rolling""#, "");
    with_registry(&p, &images);
    ok(&b.rc(p.path(), &["apply", "--yes"]));
    assert_eq!(body_now(p.port), "v2 from hello 0.1.0\n");
    assert!(
        !a.rc(p.path(), &["rollback", "web", "--yes"])
            .status
            .success()
    );

    // A blue/green rollout of v3 on b waits for its promotion when b dies with everything it
    // ran: a takes the lease once it expires, serves the live release (v2) again and records the
    // interrupted rollout as rolled back.
    p.write(r#"MESSAGE = "v3""#, r#"strategy = "blue_green""#, "");
    with_registry(&p, &images);
    ok(&b.rc(p.path(), &["apply", "--yes", "--detach"]));
    wait_for("v3's instances on b", 30, || running(&b) == 6);
    kill_host(&mut b);
    let died = Instant::now();
    let deadline = died + Duration::from_secs(LEASE + 20);
    let mut gap_seen = false;
    loop {
        match answer(p.port) {
            Some(body) if body == "v2 from hello 0.1.0\n" && gap_seen => break,
            Some(_) => {}
            None => gap_seen = true,
        }
        assert!(
            Instant::now() < deadline,
            "a did not take over: {}",
            a.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = died.elapsed();
    // The lease was renewed at most a fifth of it before the kill.
    assert!(
        took >= Duration::from_secs(LEASE * 4 / 5) - Duration::from_millis(500),
        "taken over after {took:?}, before the lease ({LEASE} s) expired"
    );
    let (h, token, serving) = holder(&a, &name);
    assert_eq!((h.as_deref(), serving), (Some("host-a"), true));
    assert!(token > moved_token);
    assert_eq!(running(&a), 3);
    // History is intact: three releases, v2 live, the interrupted v3 rolled back.
    let hist = json(&a.rc(p.path(), &["history", "web", "--json"]));
    let outcomes: Vec<&str> = hist["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        outcomes,
        ["succeeded", "succeeded", "rolled_back"],
        "{hist}"
    );

    // b comes back: it acts for nothing and removes what it left behind.
    b.spawn();
    wait_for("b to remove its leftover instances", 20, || {
        b.instances() == 0
    });
    assert_eq!(holder(&a, &name).0.as_deref(), Some("host-a"));
    assert_eq!(body_now(p.port), "v2 from hello 0.1.0\n");
    eprintln!("failover after kill -9: serving again {took:?} after the kill (lease {LEASE} s)");

    // a's server (only the process) is killed and started again at once: it follows itself
    // (same data directory), takes its lease back with a new token, keeps its instances, and
    // b — standing by — never gets the project.
    let (_, token_before, _) = holder(&a, &name);
    let ids = a.instance_ids();
    a.kill9();
    a.spawn();
    let (h, token_after, serving) = holder(&a, &name);
    assert_eq!((h.as_deref(), serving), (Some("host-a"), true));
    assert!(token_after > token_before);
    assert_eq!(
        a.instance_ids(),
        ids,
        "the instances were taken over as they are"
    );
    std::thread::sleep(Duration::from_secs(LEASE));
    assert_eq!(holder(&a, &name).1, token_after, "{}", a.logs());
    assert!(!a.logs().contains("acting for no project"), "{}", a.logs());

    // PostgreSQL restarts under both hosts: they reconnect and go on, and nothing changes hands.
    let before = holder(&a, &name);
    cluster.stop();
    std::thread::sleep(Duration::from_secs(1));
    cluster.spawn();
    std::thread::sleep(Duration::from_secs(LEASE));
    assert_eq!(holder(&a, &name), before, "{}", a.logs());
    assert_eq!(running(&a), 3);
    p.write(r#"MESSAGE = "v4""#, r#"strategy = "rolling""#, "");
    with_registry(&p, &images);
    ok(&a.rc(p.path(), &["apply", "--yes"]));
    assert_eq!(body_now(p.port), "v4 from hello 0.1.0\n");
}

/// A relay between a host and PostgreSQL's Unix socket that the test can cut: the host's
/// network partition.
struct Relay {
    dir: tempfile::TempDir,
    cut: Arc<AtomicBool>,
}

impl Relay {
    fn start(socket: PathBuf) -> Relay {
        let dir = tempfile::tempdir().expect("tmp");
        let listener = UnixListener::bind(dir.path().join(".s.PGSQL.5432")).expect("bind");
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(up) = UnixStream::connect(&socket) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        conn.try_clone().expect("clone"),
                        up.try_clone().expect("clone"),
                    ),
                    (up, conn),
                ] {
                    let c = c.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        from.set_read_timeout(Some(Duration::from_millis(100))).ok();
                        loop {
                            if c.load(Ordering::SeqCst) {
                                break;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        // Cut: the connection hangs (no close is seen), as across a partition.
                        if c.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_secs(3600));
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { dir, cut }
    }

    fn url(&self) -> String {
        format!(
            "postgres://recast@localhost/recast?host={}",
            self.dir.path().display()
        )
    }
}

#[test]
fn a_host_cut_off_from_postgres_stops_before_a_standby_starts_the_project() {
    let cluster = Cluster::start();
    let url = cluster.url();
    let socket = PathBuf::from(url.rsplit_once("host=").expect("host").1).join(".s.PGSQL.5432");
    let relay = Relay::start(socket);
    let registry = Registry::start();
    let a = host("host-a", &relay.url());
    let b = host("host-b", &url);
    let p = Project::new();
    let name = project_name(&p);
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    with_registry(&p, &format!("{}/hosts", registry.addr));
    ok(&a.rc(p.path(), &["apply", "--yes"]));
    assert_eq!(running(&a), 3);
    // a has renewed since b registered, so it has read b as a running standby (a stops its
    // instances only when a standby may take over): its lease's expiry moved on.
    let before = expires_in(&a, &name);
    let asked = Instant::now();
    wait_for("a to renew after b registered", LEASE, || {
        // The absolute expiry (time left + time since `before`) moves on by about the renewal
        // period (2 s) with each renewal; the reads' latency is well under 500 ms.
        expires_in(&a, &name) + asked.elapsed().as_millis() as i64 > before + 500
    });

    relay.cut.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    // a stops its instances within 0.6 × the lease time, before b may take the lease.
    while running(&a) > 0 {
        assert!(
            cut.elapsed() < Duration::from_secs(LEASE + 5),
            "a did not stop its instances: {}",
            a.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let a_stopped = cut.elapsed();
    assert_eq!(running(&b), 0, "b started before a stopped: {}", b.logs());
    assert!(
        a_stopped < Duration::from_secs(LEASE),
        "a stopped {a_stopped:?} after the cut, not before its lease ({LEASE} s) expired"
    );
    // b takes over after the lease and serves.
    wait_for("b to serve", LEASE + 20, || {
        body_now(p.port) == "v1 from hello 0.1.0\n"
    });
    assert_eq!(running(&b), 3, "{}", b.logs());
    let (h, _, _) = holder(&b, &name);
    assert_eq!(h.as_deref(), Some("host-b"));

    // The partition heals: a learns it lost the project and acts for nothing.
    relay.cut.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(LEASE / 2 + 1));
    assert_eq!(running(&a), 0, "{}", a.logs());
    assert!(
        a.logs().contains(&format!("project {name}")),
        "a says what happened: {}",
        a.logs()
    );
    assert_eq!(holder(&b, &name).0.as_deref(), Some("host-b"));
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
}

/// A project of three services × two instances (each its own route), with a registry.
fn three_services(p: &Project, ports: [u16; 3], registry: &str) {
    let mut spec = String::from(
        r#"
image "hello" {
  from = "scratch"
  copy {
    src  = "dist/hello"
    dest = "/bin/hello"
    mode = "0555"
  }
  user = "65534:65534"
  cmd  = ["/bin/hello"]
}
"#,
    );
    for (name, port) in ["web", "api", "admin"].iter().zip(ports) {
        spec.push_str(&format!(
            r#"
service "{name}" {{
  image     = image.hello
  instances = 2
  port      = 8080
  env       = {{ MESSAGE = "{name}" }}
  health {{
    http     = "/healthz"
    interval = "200ms"
  }}
}}

route "{name}" {{
  listen  = "127.0.0.1:{port}"
  service = service.{name}
}}
"#
        ));
    }
    std::fs::write(p.path().join("recast.hcl"), spec).expect("spec");
    with_registry(p, registry);
}

#[test]
fn a_host_rebuilt_on_an_empty_data_directory_serves_its_projects_from_the_records() {
    let cluster = Cluster::start();
    let registry = Registry::start();
    let mut a = host("host-a", &cluster.url());
    let p = Project::new();
    let ports = [
        p.port,
        crate::deploy::free_port(),
        crate::deploy::free_port(),
    ];
    three_services(&p, ports, &format!("{}/rebuild", registry.addr));
    ok(&a.rc(p.path(), &["apply", "--yes"]));
    for (name, port) in ["web", "api", "admin"].iter().zip(ports) {
        assert_eq!(body_now(port), format!("{name} from hello 0.1.0\n"));
    }
    // The machine dies; a new one (an empty data directory, no spec, no images) starts under
    // the same host name once the old registration lapsed.
    kill_host(&mut a);
    unmount_under(&a.data);
    drop(a);
    let elsewhere = tempfile::tempdir().expect("tmp");
    wait_for("the dead host's registration to lapse", LEASE + 10, || {
        let o = Command::new(env!("CARGO_BIN_EXE_recast"))
            .args(["hosts", "--json", "--state", &cluster.url()])
            .env("RECAST_DATA_DIR", elsewhere.path())
            .output()
            .expect("recast hosts");
        json(&o)["hosts"][0]["running"] == false
    });
    let started = Instant::now();
    let fresh = host("host-a", &cluster.url());
    let deadline = started + Duration::from_secs(60);
    loop {
        let served = ["web", "api", "admin"]
            .iter()
            .zip(ports)
            .all(|(name, port)| body_now(port) == format!("{name} from hello 0.1.0\n"));
        if served {
            break;
        }
        assert!(Instant::now() < deadline, "not serving: {}", fresh.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    assert_eq!(running(&fresh), 6, "{}", fresh.logs());
    let hist = json(&fresh.rc(p.path(), &["history", "web", "--json"]));
    assert_eq!(hist["releases"].as_array().map(Vec::len), Some(1), "{hist}");
    eprintln!(
        "rebuilt from an empty data directory: 3 services × 2 instances serving {took:?} after the server started"
    );
}

#[test]
fn a_second_server_under_a_host_name_in_use_is_refused_naming_it() {
    let cluster = Cluster::start();
    let _a = host("host-a", &cluster.url());
    let other = tempfile::tempdir().expect("tmp");
    let started = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(["server", "--listen", "127.0.0.1:0", "--host-name", "host-a"])
        .args(["--state", &cluster.url(), "--lease-time", "2"])
        .env("RECAST_DATA_DIR", other.path())
        .output()
        .expect("recast server");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("host name host-a is in use by another running server")
            && err.contains("--host-name"),
        "{err}"
    );
    // It waited for the name to lapse (a server killed a moment ago would have).
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Bad names and standby lists are refused before anything starts.
    for (flag, value, says) in [
        ("--host-name", "a b", "host name \"a b\" is not"),
        ("--standby-for", "shop,x/y", "--standby-for \"x/y\""),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_recast"))
            .args(["server", flag, value, "--state", &cluster.url()])
            .env("RECAST_DATA_DIR", other.path())
            .output()
            .expect("recast server");
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}

#[test]
fn a_server_renamed_on_its_data_directory_keeps_its_projects_and_instances() {
    // The default host name is the machine's hostname, which changes (a container re-created,
    // a machine renamed): the data directory, not the name, says whose instances these are.
    let d = tempfile::tempdir().expect("tmp");
    let mut s = Server::start_with(d, vec!["--host-name".into(), "before".into()]);
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    ok(&s.rc(p.path(), &["apply", "--yes"]));
    let ids = s.instance_ids();
    s.kill9();
    s.args = vec!["--host-name".into(), "after".into()];
    s.spawn();
    assert_eq!(s.instance_ids(), ids, "{}", s.logs());
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
    let (h, _, serving) = holder(&s, &project_name(&p));
    assert_eq!((h.as_deref(), serving), (Some("after"), true));
    assert!(
        s.logs().contains("host before is now named after"),
        "{}",
        s.logs()
    );
    p.write(r#"MESSAGE = "v2""#, r#"strategy = "rolling""#, "");
    ok(&s.rc(p.path(), &["apply", "--yes"]));
    assert_eq!(body_now(p.port), "v2 from hello 0.1.0\n");
}
