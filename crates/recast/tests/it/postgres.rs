//! Issue 12, point 3: stateful services. Stock PostgreSQL 15 (Debian's, from the loopback apt
//! repository) on an exclusive volume: data written in release 1 is there in release 2 (a
//! `recreate` rollout), never two postmasters run on the volume (polled from the host through
//! every instance's cgroup while rollouts, rollbacks and restores run), and a rollback with
//! `--restore-volumes` puts back the snapshot taken before release 2. A busybox service checks
//! the recreate order itself: no old instance runs once a new one exists, and the route answers
//! a 503 that says why.

use crate::debian::{AptRepo, base_image_archive};
use crate::deploy::{Server, free_port, get, ok, wait_for};
use crate::{stderr, stdout};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const APT: &str = r#"ARG DEBIAN_FRONTEND=noninteractive
ARG APT_REPO
RUN echo "deb [trusted=yes] ${APT_REPO} ./" > /etc/apt/sources.list"#;

/// No cluster is made or started while the package installs; the entrypoint makes it in the
/// volume on first start, as the postgres user.
pub(crate) fn postgres_dockerfile() -> String {
    format!(
        r#"FROM debian:12
{APT} \
 && mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/recast.conf \
 && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
CMD ["/usr/local/bin/entrypoint.sh"]
"#
    )
}

/// initdb on an empty volume, then the postmaster in the foreground (trust on loopback inside
/// the instance's own network namespace).
pub(crate) const POSTGRES_ENTRYPOINT: &str = r#"#!/bin/sh
set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  /usr/lib/postgresql/15/bin/initdb -D "$PGDATA" --auth=trust --username=postgres
fi
exec /usr/lib/postgresql/15/bin/postgres -D "$PGDATA" \
  -c listen_addresses=127.0.0.1 -c unix_socket_directories=/run/postgresql
"#;

fn busybox_dockerfile() -> String {
    format!(
        r#"FROM debian:12
{APT} \
 && apt-get update \
 && apt-get install -y --no-install-recommends busybox \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /srv/www
EXPOSE 8080
CMD ["sh", "-c", "echo \"$MESSAGE\" > /tmp/index.html && exec busybox httpd -f -p 8080 -h /tmp"]
"#
    )
}

fn base(archive: &Path, name: &str, repo: &str) -> String {
    format!(
        r#"base "debian:12" {{
  source = "oci-archive:{}"
}}

image "{name}" {{
  dockerfile = "{name}/Dockerfile"
  args       = {{ APT_REPO = "{repo}" }}
}}
"#,
        archive.display()
    )
}

pub(crate) fn postgres_spec(archive: &Path, repo: &str, release: &str) -> String {
    format!(
        r#"{}
service "postgres" {{
  image = image.postgres
  port  = 5432
  env   = {{ RELEASE = "{release}" }}
  tmpfs = ["/run/postgresql"]
  volume "data" {{
    mount     = "/var/lib/postgresql/data"
    exclusive = true
  }}
  health {{
    tcp          = true
    interval     = "300ms"
    start_period = "60s"
  }}
}}
"#,
        base(archive, "postgres", repo)
    )
}

/// The cgroup directory of each of a data directory's instances:
/// `/sys/fs/cgroup/[pids/]recast-*/<id>` (v2, or the v1 `pids` hierarchy runc always uses).
fn cgroups(data: &Path) -> Vec<(String, PathBuf)> {
    let ids: Vec<String> = fs::read_dir(data.join("instances"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut parents: Vec<PathBuf> = Vec::new();
    for h in ["", "pids", "unified"] {
        if let Ok(d) = fs::read_dir(Path::new("/sys/fs/cgroup").join(h)) {
            parents.extend(d.flatten().map(|e| e.path()).filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("recast-"))
            }));
        }
    }
    let mut out = Vec::new();
    for id in ids {
        if let Some(c) = parents
            .iter()
            .map(|p| p.join(&id))
            .find(|c| c.join("cgroup.procs").exists())
        {
            out.push((id, c));
        }
    }
    out
}

fn procs(cgroup: &Path) -> Vec<i32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `(comm, ppid)` of a process.
fn stat(pid: i32) -> Option<(String, i32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (l, r) = (s.find('(')?, s.rfind(')')?);
    let comm = s[l + 1..r].to_string();
    let ppid = s[r + 2..].split(' ').nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

/// Instances with a live process, and the postmasters among their processes (a `postgres`
/// process whose parent is not `postgres`).
fn census(data: &Path) -> (BTreeSet<String>, Vec<(String, i32)>) {
    let mut alive = BTreeSet::new();
    let mut postmasters = Vec::new();
    for (id, cg) in cgroups(data) {
        let pids = procs(&cg);
        if !pids.is_empty() {
            alive.insert(id.clone());
        }
        for pid in pids {
            if let Some((comm, ppid)) = stat(pid)
                && comm == "postgres"
                && stat(ppid).is_none_or(|(c, _)| c != "postgres")
            {
                postmasters.push((id.clone(), pid));
            }
        }
    }
    (alive, postmasters)
}

/// Polls [`census`] every 10 ms on a thread until dropped: the most postmasters and the most
/// live instances seen at one moment, and every instance seen alive.
struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<WatchSeen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default, Clone, Debug)]
struct WatchSeen {
    polls: u64,
    max_postmasters: usize,
    max_alive: usize,
    /// The most releases with a live instance at one moment (ids are `NAME-rN-XXXXXXXX`).
    max_releases: usize,
    /// What was running when the maxima were seen.
    worst: Vec<String>,
    instances: BTreeSet<String>,
}

impl Watch {
    fn start(data: &Path) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<WatchSeen>> = Arc::default();
        let (d, s, st) = (data.to_path_buf(), seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let (alive, pms) = census(&d);
                let mut w = s.lock().expect("watch");
                w.polls += 1;
                if pms.len() > w.max_postmasters || alive.len() > w.max_alive {
                    w.worst = alive.iter().cloned().collect();
                    w.worst
                        .extend(pms.iter().map(|(i, p)| format!("postmaster {p} in {i}")));
                }
                w.max_postmasters = w.max_postmasters.max(pms.len());
                w.max_alive = w.max_alive.max(alive.len());
                let releases: BTreeSet<&str> =
                    alive.iter().filter_map(|i| i.rsplit('-').nth(1)).collect();
                w.max_releases = w.max_releases.max(releases.len());
                w.instances.extend(alive);
                drop(w);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Watch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> WatchSeen {
        self.seen.lock().expect("watch").clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The single instance of `service` (from `recast status --json`).
pub(crate) fn instance(server: &Server, dir: &Path, service: &str) -> String {
    let o = server.rc(dir, &["status", service, "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", stderr(&o)));
    let ids: Vec<String> = v["services"][0]["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{service} should run one instance: {v}");
    ids[0].clone()
}

/// `psql -Atc SQL` inside the instance (through `runc exec`), as the postgres superuser.
pub(crate) fn psql(server: &Server, id: &str, sql: &str) -> String {
    let o = Command::new("runc")
        .arg("--root")
        .arg(server.data.join("runc"))
        .args([
            "exec",
            id,
            "/usr/lib/postgresql/15/bin/psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
        ])
        .output()
        .expect("runc exec psql");
    assert!(
        o.status.success(),
        "psql {sql:?} in {id}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o).trim().to_string()
}

fn json(o: &std::process::Output) -> Value {
    ok(o);
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", stdout(o), stderr(o)))
}

fn rows(server: &Server, dir: &Path) -> String {
    let id = instance(server, dir, "postgres");
    psql(
        server,
        &id,
        "select string_agg(v, ',' order by v) from notes",
    )
}

/// The build context of the stock PostgreSQL image (`postgres_dockerfile`, its entrypoint) in
/// `dir/postgres`.
pub(crate) fn postgres_context(dir: &Path) {
    project(dir, "postgres", &postgres_dockerfile());
    let ep = dir.join("postgres/entrypoint.sh");
    fs::write(&ep, POSTGRES_ENTRYPOINT).expect("entrypoint");
    fs::set_permissions(&ep, fs::Permissions::from_mode(0o755)).expect("chmod");
}

pub(crate) fn project(dir: &Path, name: &str, dockerfile: &str) {
    fs::create_dir_all(dir.join(name)).expect("mkdir context");
    fs::write(dir.join(name).join("Dockerfile"), dockerfile).expect("Dockerfile");
}

#[test]
fn postgres_keeps_its_data_across_recreate_and_a_rollback_restores_the_snapshot() {
    let repo = AptRepo::serve();
    let archive = base_image_archive();
    let server = Server::start();
    let p = tempfile::Builder::new()
        .prefix("pg")
        .tempdir()
        .expect("tmp");
    let dir = p.path();
    postgres_context(dir);
    let spec = |release: &str| {
        fs::write(
            dir.join("recast.hcl"),
            postgres_spec(&archive, &repo.url, release),
        )
        .expect("spec")
    };
    let watch = Watch::start(&server.data);

    // Release 1: initdb in the empty volume, then data.
    spec("1");
    let t = Instant::now();
    ok(&server.rc(dir, &["apply", "--yes"]));
    eprintln!(
        "release 1 (build, initdb) in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let r1 = instance(&server, dir, "postgres");
    psql(
        &server,
        &r1,
        "create table notes (v text); insert into notes values ('written by r1')",
    );

    // The plan says what a recreate does.
    spec("2");
    let o = server.rc(dir, &["plan"]);
    ok(&o);
    let plan = stdout(&o) + &stderr(&o);
    for want in [
        "recreate",
        "drain and stop every old instance",
        "503",
        "snapshot exclusive volume(s) data",
    ] {
        assert!(plan.contains(want), "the plan lacks {want:?}:\n{plan}");
    }

    // Release 2 by recreate: the old postmaster stops before the new one starts.
    let t = Instant::now();
    ok(&server.rc(dir, &["apply", "--yes"]));
    eprintln!("release 2 (recreate) in {:.1}s", t.elapsed().as_secs_f64());
    let r2 = instance(&server, dir, "postgres");
    assert_ne!(r1, r2);
    assert!(r2.starts_with("postgres-r2-"), "{r2}");
    assert_eq!(
        rows(&server, dir),
        "written by r1",
        "release 2 lost the data"
    );
    psql(&server, &r2, "insert into notes values ('written by r2')");

    // One snapshot, of release 1's data, taken before release 2.
    let snaps = json(&server.rc(dir, &["volume", "snapshots", "postgres", "--json"]));
    let list = snaps["snapshots"].as_array().expect("snapshots").clone();
    assert_eq!(list.len(), 1, "{snaps}");
    assert_eq!(
        (
            &list[0]["volume"],
            &list[0]["before_release"],
            &list[0]["of_release"]
        ),
        (&Value::from("data"), &Value::from(2), &Value::from(1)),
        "{snaps}"
    );
    let snap_dir = PathBuf::from(list[0]["path"].as_str().expect("path"));
    // The project is named by its directory (lowercased).
    let project_name = dir
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_lowercase();
    let snap_parent = server
        .data
        .join("snapshots")
        .join(&project_name)
        .join("postgres/data");
    assert_eq!(
        snap_dir.parent(),
        Some(snap_parent.as_path()),
        "{}",
        snap_dir.display()
    );
    assert!(
        snap_dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("2-")),
        "{}",
        snap_dir.display()
    );
    assert!(
        snap_dir.join("PG_VERSION").is_file(),
        "{}",
        snap_dir.display()
    );
    let vols = json(&server.rc(dir, &["volume", "ls", "--json"]));
    assert_eq!(vols["volumes"][0]["exclusive"], true, "{vols}");
    assert_eq!(vols["volumes"][0]["snapshots"], 1, "{vols}");
    let o = server.rc(dir, &["volume", "ls"]);
    ok(&o);
    assert!(
        stdout(&o).contains("/var/lib/postgresql/data"),
        "{}",
        stdout(&o)
    );

    // Back to release 1 with --restore-volumes: the data as it was before release 2 started.
    let o = server.rc(
        dir,
        &["rollback", "postgres", "--restore-volumes", "--json"],
    );
    let v = json(&o);
    assert_eq!(
        (v["from"].as_i64(), v["to"].as_i64()),
        (Some(2), Some(1)),
        "{v}"
    );
    assert_eq!(v["restored"][0]["path"], list[0]["path"], "{v}");
    assert_eq!(
        rows(&server, dir),
        "written by r1",
        "the restored volume is not the snapshot taken before release 2"
    );

    // Forward to release 2 again without the flag and without a terminal: the volume stays as
    // it is (release 2's data was snapshotted when it stopped), and we are told how to restore.
    let o = server.rc(dir, &["rollback", "postgres", "--to", "2"]);
    ok(&o);
    assert!(
        stderr(&o).contains("--restore-volumes") && stderr(&o).contains("volume restore"),
        "no hint about restoring: {}",
        stderr(&o)
    );
    assert_eq!(
        rows(&server, dir),
        "written by r1",
        "a rollback without --restore-volumes changed the data"
    );

    // Every data change made a snapshot, so release 2's data can be brought back too.
    let snaps = json(&server.rc(dir, &["volume", "snapshots", "postgres", "--json"]));
    let list = snaps["snapshots"].as_array().expect("snapshots").clone();
    let of_r2 = list
        .iter()
        .rev()
        .find(|s| s["of_release"] == 2)
        .unwrap_or_else(|| panic!("no snapshot of release 2's data: {snaps}"));
    let id = of_r2["id"].to_string();
    let o = server.rc(dir, &["volume", "restore", "postgres", "data", &id]);
    assert!(
        !o.status.success(),
        "restore without --yes and no terminal acted"
    );
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
    let o = server.rc(
        dir,
        &[
            "volume", "restore", "postgres", "data", &id, "--yes", "--json",
        ],
    );
    let v = json(&o);
    assert_eq!(v["started"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(rows(&server, dir), "written by r1,written by r2");
    let o = server.rc(
        dir,
        &["volume", "restore", "postgres", "data", "999", "--yes"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no snapshot 999"), "{}", stderr(&o));

    // On a terminal, a rollback without the flag asks; "y" restores release 1's newest data.
    let o = Command::new("script")
        .args([
            "-qec",
            &format!("{} rollback postgres --to 1", env!("CARGO_BIN_EXE_recast")),
            "/dev/null",
        ])
        .current_dir(dir)
        .env("RECAST_DATA_DIR", &server.data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(b"y\n")?;
            c.wait_with_output()
        })
        .expect("script");
    let said = stdout(&o) + &stderr(&o);
    assert!(o.status.success(), "rollback on a terminal: {said}");
    assert!(
        said.contains("Restore volume(s) data"),
        "no question asked: {said}"
    );
    assert!(said.contains("restored from"), "{said}");
    assert_eq!(rows(&server, dir), "written by r1");

    for (at, kind, msg) in events(&server) {
        eprintln!("event {at} {kind}: {msg}");
    }
    // Never two postmasters (nor two instances) on the volume at any moment.
    let seen = watch.seen();
    drop(watch);
    eprintln!(
        "watched {} polls: at most {} postmaster(s), {} live instance(s); instances seen: {:?}",
        seen.polls, seen.max_postmasters, seen.max_alive, seen.instances
    );
    assert!(
        seen.instances.len() >= 5,
        "the watch missed instances: {seen:?}"
    );
    assert_eq!(seen.max_postmasters, 1, "{seen:?}");
    assert_eq!(seen.max_alive, 1, "{seen:?}");
}

/// `GET /` through the route: (status, body).
fn get_now(port: u16) -> Option<(u16, String)> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    get(s).ok().map(|(st, b, _)| (st, b))
}

/// The recorded events so far: (at_ms, kind, message).
pub(crate) fn events(server: &Server) -> Vec<(i64, String, String)> {
    let info: Value =
        serde_json::from_slice(&fs::read(server.data.join("server.json")).expect("server.json"))
            .expect("server.json is JSON");
    let addr = info["addr"].as_str().expect("addr").to_string();
    let token = fs::read_to_string(server.data.join("token")).expect("token");
    let mut s = TcpStream::connect(&addr).expect("connect to the API");
    write!(
        s,
        "GET /v1/events?since=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    let mut l = String::new();
    loop {
        l.clear();
        match r.read_line(&mut l) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(data) = l.strip_prefix("data: ") {
            let e: Value = serde_json::from_str(data.trim()).unwrap_or_default();
            out.push((
                e["at_ms"].as_i64().unwrap_or(0),
                e["kind"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

#[test]
fn recreate_stops_every_old_instance_before_a_new_one_starts() {
    let repo = AptRepo::serve();
    let archive = base_image_archive();
    let server = Server::start();
    let port = free_port();
    let p = tempfile::Builder::new()
        .prefix("recreate")
        .tempdir()
        .expect("tmp");
    let dir = p.path();
    project(dir, "busybox", &busybox_dockerfile());
    let spec = |message: &str| {
        fs::write(
            dir.join("recast.hcl"),
            format!(
                r#"{}
service "busybox" {{
  image     = image.busybox
  port      = 8080
  instances = 2
  env       = {{ MESSAGE = "{message}" }}
  health {{
    http     = "/"
    interval = "200ms"
  }}
  rollout {{
    strategy = "recreate"
  }}
}}

route "busybox" {{
  listen  = "127.0.0.1:{port}"
  service = service.busybox
}}
"#,
                base(&archive, "busybox", &repo.url)
            ),
        )
        .expect("spec")
    };
    spec("v1");
    ok(&server.rc(dir, &["apply", "--yes"]));
    wait_for("v1 through the route", 20, || {
        get_now(port).is_some_and(|(s, b)| s == 200 && b.trim() == "v1")
    });

    // While release 2 replaces release 1: never an instance of each at once; clients get
    // either an answer of one release or a 503 that says a recreate is under way.
    let watch = Watch::start(&server.data);
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let client = {
        let (stop, answers) = (stop.clone(), answers.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(a) = get_now(port) {
                    answers.lock().expect("answers").push(a);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    spec("v2");
    ok(&server.rc(dir, &["apply", "--yes"]));
    wait_for("v2 through the route", 20, || {
        get_now(port).is_some_and(|(s, b)| s == 200 && b.trim() == "v2")
    });
    stop.store(true, Ordering::SeqCst);
    client.join().expect("client");
    // The watch polls on its own thread: on a busy machine its view of the last start lags.
    wait_for("the watch to see every instance", 10, || {
        watch.seen().instances.len() >= 4
    });
    let seen = watch.seen();
    drop(watch);
    eprintln!("watch: {seen:?}");
    assert!(
        seen.max_alive <= 2,
        "more than 2 instances at once: {seen:?}"
    );
    assert_eq!(
        seen.max_releases, 1,
        "instances of two releases at once: {seen:?}"
    );
    assert!(
        seen.instances.len() >= 4,
        "the watch missed instances: {seen:?}"
    );
    let answers = answers.lock().expect("answers").clone();
    let mut kinds: BTreeSet<String> = BTreeSet::new();
    for (status, body) in &answers {
        match (status, body.trim()) {
            (200, "v1") | (200, "v2") => {
                kinds.insert(format!("{status} {}", body.trim()));
            }
            (503, b) if b.contains("recreate") && b.contains("release 2") => {
                kinds.insert("503".into());
            }
            other => panic!("unexpected answer during a recreate: {other:?}"),
        }
    }
    eprintln!("{} answers: {kinds:?}", answers.len());
    assert!(kinds.contains("503"), "no downtime seen: {kinds:?}");

    // The event log: the old instances stopped before the new ones started.
    let ev = events(&server);
    let stopped = ev
        .iter()
        .find(|(_, k, m)| k == "instance.stopped" && m.contains("-r1-"))
        .unwrap_or_else(|| panic!("no instance.stopped event for release 1: {ev:?}"));
    let started = ev
        .iter()
        .find(|(_, k, m)| k == "instance.started" && m.contains("-r2-"))
        .unwrap_or_else(|| panic!("no instance.started event for release 2: {ev:?}"));
    assert!(stopped.0 <= started.0, "{stopped:?} after {started:?}");
    // …and each new instance was created after that stop (its instance.json says when).
    let o = server.rc(dir, &["status", "busybox", "--json"]);
    let v = json(&o);
    for i in v["services"][0]["instances"].as_array().expect("instances") {
        let id = i["id"].as_str().expect("id");
        let rec: Value = serde_json::from_slice(
            &fs::read(server.data.join("instances").join(id).join("instance.json"))
                .expect("instance.json"),
        )
        .expect("instance.json is JSON");
        let created = rec["created_ms"].as_i64().expect("created_ms");
        assert!(
            created >= stopped.0,
            "instance {id} was created at {created}, before release 1 stopped at {}",
            stopped.0
        );
    }
}

/// A project running the example service (`examples/hello`, static) with `service_body`.
fn hello_project(service_body: &str) -> (tempfile::TempDir, u16) {
    let dir = tempfile::Builder::new()
        .prefix("stateful")
        .tempdir()
        .expect("tmp");
    fs::create_dir_all(dir.path().join("dist")).expect("mkdir");
    fs::copy(
        crate::example().join("dist/hello"),
        dir.path().join("dist/hello"),
    )
    .expect("copy hello");
    let port = free_port();
    write_hello(dir.path(), port, service_body);
    (dir, port)
}

fn write_hello(dir: &Path, port: u16, service_body: &str) {
    fs::write(
        dir.join("recast.hcl"),
        format!(
            r#"
image "web" {{
  from = "scratch"
  copy {{
    src  = "dist/hello"
    dest = "/bin/hello"
    mode = "0555"
  }}
  cmd  = ["/bin/hello"]
}}

service "web" {{
  image = image.web
  port  = 8080
  health {{
    http     = "/healthz"
    interval = "200ms"
    timeout  = "500ms"
    unhealthy_threshold = 2
  }}
  {service_body}
}}

route "web" {{
  listen  = "127.0.0.1:{port}"
  service = service.web
}}
"#
        ),
    )
    .expect("spec");
}

#[test]
fn a_failed_recreate_stops_the_new_release_before_the_old_one_starts_again() {
    let server = Server::start();
    let body = |msg: &str, healthy: &str| {
        format!(
            "instances = 2\n  env = {{ MESSAGE = \"{msg}\", HEALTHY = \"{healthy}\" }}\n  rollout {{\n    strategy = \"recreate\"\n    progress_deadline = \"5s\"\n  }}"
        )
    };
    let (p, port) = hello_project(&body("v1", "true"));
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    wait_for("v1", 10, || {
        get_now(port).is_some_and(|(s, b)| s == 200 && b.starts_with("v1"))
    });
    let watch = Watch::start(&server.data);
    write_hello(p.path(), port, &body("v2", "false"));
    let o = server.rc(p.path(), &["apply", "--yes"]);
    assert!(!o.status.success(), "an unhealthy release 2 went live");
    assert!(
        stdout(&o).contains("rolled_back"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    wait_for("v1 again", 20, || {
        get_now(port).is_some_and(|(s, b)| s == 200 && b.starts_with("v1"))
    });
    let seen = watch.seen();
    drop(watch);
    eprintln!("watch: {seen:?}");
    assert!(
        seen.instances.iter().any(|i| i.contains("-r2-")),
        "the watch never saw release 2: {seen:?}"
    );
    assert_eq!(seen.max_releases, 1, "two releases at once: {seen:?}");
    let h = json(&server.rc(p.path(), &["history", "web", "--json"]));
    assert_eq!(h["releases"][1]["outcome"], "rolled_back", "{h}");
}

#[test]
fn the_guard_replaces_an_exclusive_volume_instance_by_stopping_it_first() {
    let server = Server::start();
    let (p, port) = hello_project(
        "max_age = \"2s\"\n  volume \"data\" {\n    mount     = \"/data\"\n    exclusive = true\n  }",
    );
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let first = instance(&server, p.path(), "web");
    let watch = Watch::start(&server.data);
    // max_age recycles it (at least twice); each time the old one stops before the new starts.
    wait_for("two max_age replacements", 40, || {
        watch.seen().instances.len() >= 3
    });
    let seen = watch.seen();
    drop(watch);
    eprintln!("watch: {seen:?}");
    assert!(seen.instances.contains(&first), "{seen:?}");
    assert_eq!(
        seen.max_alive, 1,
        "two instances on the exclusive volume: {seen:?}"
    );
    let ev = events(&server);
    let replaced: Vec<&(i64, String, String)> = ev
        .iter()
        .filter(|(_, k, m)| k == "instance.replaced" && m.contains("stopped first"))
        .collect();
    assert!(replaced.len() >= 2, "{ev:?}");
    // Downtime is said plainly: the route answers 200 or a 503 naming the replacement.
    if let Some((s, b)) = get_now(port) {
        assert!(
            s == 200 || (s == 503 && b.contains("one instance at a time")),
            "{s} {b}"
        );
    }
}
