//! Operating services (issue 12): graceful stops, logs an operator can use, commands that
//! never step on each other, destructive commands that are safe by default, and starting
//! instances that are not failing ones.

use crate::deploy::{Server, free_port, ok, wait_for};
use crate::{stderr, stdout};
use std::fs;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A project directory with Debian's static busybox, for specs written by the test.
struct Box {
    dir: tempfile::TempDir,
}

impl Box {
    fn new() -> Box {
        let dir = tempfile::Builder::new()
            .prefix("ops")
            .tempdir()
            .expect("tmp");
        fs::copy("/bin/busybox", dir.path().join("busybox"))
            .expect("busybox-static is not installed");
        Box { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The project's name: its directory's.
    fn name(&self) -> String {
        self.path()
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned()
    }

    fn write(&self, spec: &str) {
        fs::write(self.path().join("recast.hcl"), spec).expect("spec");
    }
}

/// An image `name` of busybox whose command is `sh -c SCRIPT`.
fn image(name: &str, script: &str) -> String {
    format!(
        r#"
image "{name}" {{
  from = "scratch"
  copy {{
    src  = "busybox"
    dest = "/bin/busybox"
    mode = "0755"
  }}
  cmd = ["/bin/busybox", "sh", "-c", {script:?}]
}}
"#
    )
}

/// A service `name` of image `name`, with `extra` settings inside the block.
fn service(name: &str, instances: u32, extra: &str) -> String {
    format!(
        r#"
service "{name}" {{
  image     = image.{name}
  instances = {instances}
  port      = 8080
  {extra}
}}
"#
    )
}

/// Serve HTTP in the background (busybox httpd forks), then run `rest` as PID 1's script.
fn serving(rest: &str) -> String {
    format!("/bin/busybox httpd -p 8080 -h /; {rest}")
}

fn instance_dirs(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(data.join("instances"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The instances whose id starts with `prefix` ("web-r", "web-r2-").
fn instances_of(data: &Path, prefix: &str) -> Vec<String> {
    instance_dirs(data)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn fails(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a failure:\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

fn timed(f: impl FnOnce() -> Output) -> (Output, Duration) {
    let t = Instant::now();
    let o = f();
    (o, t.elapsed())
}

/// `stop_signal` (spec, or the image's `StopSignal`) reaches the process, which exits on it
/// long before `stop_timeout`; a process that ignores its signal is killed at `stop_timeout`.
#[test]
fn instances_stop_on_their_stop_signal_and_are_killed_at_their_stop_timeout() {
    let server = Server::start();
    let p = Box::new();
    // PID 1 ignores signals it has no handler for: only the trapped one ends these.
    let trap = |sig: &str| {
        serving(&format!(
            "trap 'echo $V >> /data/stopped-by-{sig}; exit 0' {sig}; while :; do sleep 0.1; done"
        ))
    };
    fs::write(
        p.path().join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nSTOPSIGNAL SIGUSR2\nCMD [\"/bin/busybox\", \"sh\", \"-c\", {:?}]\n",
            trap("USR2")
        ),
    )
    .expect("Dockerfile");
    let spec = |v: u32, w: u32| {
        let health = r#"health {
    interval = "200ms"
  }"#;
        format!(
            "{}{}\nimage \"fromimage\" {{\n  dockerfile = \"Dockerfile\"\n}}\n{}{}{}",
            image("signalled", &trap("USR1")),
            image("stubborn", &serving("while :; do sleep 0.1; done")),
            service(
                "signalled",
                1,
                &format!(
                    "env = {{ V = \"{v}\" }}\n  stop_signal = \"SIGUSR1\"\n  stop_timeout = \"30s\"\n  volume \"data\" {{ mount = \"/data\" }}\n  {health}"
                )
            ),
            service(
                "fromimage",
                1,
                &format!(
                    "env = {{ V = \"{v}\" }}\n  stop_timeout = \"30s\"\n  volume \"data\" {{ mount = \"/data\" }}\n  {health}"
                )
            ),
            service(
                "stubborn",
                1,
                &format!("env = {{ V = \"{w}\" }}\n  stop_timeout = \"3s\"\n  {health}")
            ),
        )
    };
    p.write(&spec(1, 1));
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let old = [
        instances_of(&server.data, "signalled-r"),
        instances_of(&server.data, "fromimage-r"),
    ];
    // Replacing the trapping instances: each old one gets its signal and exits at once.
    p.write(&spec(2, 1));
    let (out, took) = timed(|| server.rc(p.path(), &["apply", "--yes"]));
    ok(&out);
    assert!(
        took < Duration::from_secs(20),
        "the replacement took {took:?}: the old instances waited for their 30 s stop_timeout"
    );
    for ids in &old {
        for id in ids {
            assert!(
                !server.data.join("instances").join(id).exists(),
                "{id} is still there"
            );
        }
    }
    // The project's volumes (its name is the directory's, normalised).
    let volumes = fs::read_dir(server.data.join("volumes"))
        .expect("volumes")
        .flatten()
        .map(|e| e.path())
        .find(|d| d.join("signalled").exists())
        .expect("the project's volumes");
    for (svc, sig) in [("signalled", "USR1"), ("fromimage", "USR2")] {
        let f = volumes
            .join(svc)
            .join("data")
            .join(format!("stopped-by-{sig}"));
        let said = fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("{svc} did not record its {sig}: {}: {e}", f.display()));
        assert_eq!(
            said, "1\n",
            "{svc}: the release 1 instance stopped on {sig}"
        );
    }
    // A process that ignores its stop signal (SIGTERM) is killed at its stop_timeout (3 s).
    let stubborn = instances_of(&server.data, "stubborn-r");
    assert_eq!(stubborn.len(), 1, "{stubborn:?}");
    p.write(&spec(2, 2));
    let (out, took) = timed(|| server.rc(p.path(), &["apply", "--yes"]));
    ok(&out);
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(20),
        "replacing the stubborn instance took {took:?}, expected its stop_timeout of 3 s and a little"
    );
    assert!(!server.data.join("instances").join(&stubborn[0]).exists());
}

/// Stop signals are checked where they are written.
#[test]
fn an_invalid_stop_signal_is_a_located_error() {
    let p = Box::new();
    p.write(&format!(
        "{}{}",
        image("web", "true"),
        service(
            "web",
            1,
            "stop_signal = \"SIGBOGUS\"\n  stop_timeout = \"2h\""
        )
    ));
    let text = fs::read_to_string(p.path().join("recast.hcl")).expect("spec");
    let (line, col) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("\"SIGBOGUS").map(|c| (i + 1, c + 1)))
        .expect("the line");
    let out = Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(["validate"])
        .current_dir(p.path())
        .output()
        .expect("recast");
    let err = stderr(&out) + &stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("recast.hcl:{line}:{col}"))
            && err.contains("invalid signal \"SIGBOGUS\""),
        "{err}"
    );
    assert!(err.contains("`stop_timeout` must be at most 1h"), "{err}");
    for good in ["\"SIGTERM\"", "\"TERM\"", "15", "\"quit\""] {
        p.write(&format!(
            "{}{}",
            image("web", "true"),
            service("web", 1, &format!("stop_signal = {good}"))
        ));
        let out = Command::new(env!("CARGO_BIN_EXE_recast"))
            .args(["validate"])
            .current_dir(p.path())
            .output()
            .expect("recast");
        ok(&out);
    }
}

/// `recast logs` through the API: every instance of the current release, each line prefixed
/// with its instance; --tail, --since, --timestamps, --json and --follow.
#[test]
fn logs_show_every_instance_with_tail_since_timestamps_json_and_follow() {
    let server = Server::start();
    let p = Box::new();
    p.write(&format!(
        "{}{}",
        image(
            "talk",
            &serving(
                "for i in 1 2 3 4 5; do echo early-$i; done; sleep 8; while :; do echo late; sleep 0.3; done"
            )
        ),
        service("talk", 2, "")
    ));
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let ids = instances_of(&server.data, "talk-r");
    assert_eq!(ids.len(), 2, "{ids:?}");
    let logs = |args: &[&str]| {
        let mut a = vec!["logs", "talk"];
        a.extend_from_slice(args);
        let o = server.rc(Path::new("/"), &a);
        ok(&o);
        stdout(&o)
    };
    wait_for("both instances' early lines", 10, || {
        let all = logs(&[]);
        ids.iter()
            .all(|id| all.contains(&format!("[{id}] early-5")))
    });
    // The last three lines of each instance (the late lines start 8 s after the instance).
    let tail = logs(&["--tail", "3"]);
    for id in &ids {
        let mine: Vec<&str> = tail
            .lines()
            .filter(|l| l.starts_with(&format!("[{id}] ")))
            .collect();
        let want: Vec<String> = (3..=5).map(|i| format!("[{id}] early-{i}")).collect();
        assert_eq!(mine, want, "{tail}");
    }
    assert_eq!(tail.lines().count(), 6, "{tail}");
    // --timestamps: RFC 3339, UTC, near now.
    let stamped = logs(&["--tail", "1", "--timestamps"]);
    assert_eq!(stamped.lines().count(), 2, "{stamped}");
    let year = 1970 + SystemTimeYears::now();
    for l in stamped.lines() {
        let (_, rest) = l.split_once("] ").expect("instance prefix");
        let (ts, text) = rest.split_once(' ').expect("timestamp");
        assert_eq!(text, "early-5", "{l}");
        let b = ts.as_bytes();
        assert!(
            ts.len() == 24
                && ts.ends_with('Z')
                && b[4] == b'-'
                && b[7] == b'-'
                && b[10] == b'T'
                && b[13] == b':'
                && b[16] == b':'
                && b[19] == b'.'
                && ts[..4]
                    .parse::<u64>()
                    .is_ok_and(|y| y + 1 >= year && y <= year + 1),
            "not an RFC 3339 time: {ts} in {l}"
        );
    }
    // --json: one object per line, the time as --timestamps writes it.
    let json = logs(&["--tail", "1", "--json"]);
    assert_eq!(json.lines().count(), 2, "{json}");
    for l in json.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(ids.iter().any(|id| v["instance"] == id.as_str()), "{v}");
        assert_eq!(v["line"], "early-5", "{v}");
        assert_eq!(v["stream"], "stdout", "{v}");
        assert!(
            v["time"]
                .as_str()
                .is_some_and(|t| t.len() == 24 && t.ends_with('Z')),
            "{v}"
        );
    }
    // --since: only what came lately (the late lines, every 0.3 s, from 8 s on).
    wait_for("late lines", 20, || {
        logs(&["--tail", "1"]).contains("] late")
    });
    // Until the last second holds at least two late lines (one comes every 0.3 s).
    let mut since = String::new();
    wait_for("two late lines within the last second", 20, || {
        since = logs(&["--since", "1s"]);
        since.lines().filter(|l| l.ends_with("] late")).count() >= 2
    });
    assert!(
        since.lines().count() >= 2 && since.lines().all(|l| l.ends_with("] late")),
        "{since}"
    );
    assert!(!since.contains("early"), "{since}");
    // --since with a bad duration is an error that names it.
    let bad = server.rc(Path::new("/"), &["logs", "talk", "--since", "yesterday"]);
    assert!(fails(&bad).contains("--since: invalid duration \"yesterday\""));
    // --follow streams new lines as they come.
    let mut child = Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(["logs", "talk", "--follow", "--tail", "0"])
        .env("RECAST_DATA_DIR", &server.data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("recast logs -f");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(5));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("no line followed within 5 s");
    assert!(
        ids.iter().any(|id| line == format!("[{id}] late")),
        "{line}"
    );
    // An unknown service is an error.
    let none = server.rc(Path::new("/"), &["logs", "nosuch"]);
    assert!(
        fails(&none).contains("no service \"nosuch\" is deployed"),
        "{}",
        stderr(&none)
    );
}

/// Whole years since 1970 (for a loose check of a timestamp's year).
struct SystemTimeYears;

impl SystemTimeYears {
    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            / 31_556_952
    }
}

/// A pid that no process has (one that just exited).
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().expect("true");
    let pid = c.id();
    c.wait().expect("wait");
    pid
}

fn fake_instance(
    data: &Path,
    id: &str,
    owner: &str,
    owner_pid: u32,
    phase: &str,
    pid: Option<u32>,
) {
    let dir = data.join("instances").join(id);
    fs::create_dir_all(&dir).expect("mkdir");
    let pid = pid.map_or("null".to_string(), |p| p.to_string());
    fs::write(
        dir.join("instance.json"),
        format!(
            r#"{{"id":"{id}","image":"sha256:{}","image_name":"x","owner":"{owner}","owner_pid":{owner_pid},"network":"private","port":8080,"pid":{pid},"phase":"{phase}","created_ms":0}}"#,
            "0".repeat(64)
        ),
    )
    .expect("record");
}

/// `recast test` (and `run`) clean up only throwaway instances whose command is gone: never a
/// server's, half-created or exited, nor one a rollout is starting.
#[test]
fn recast_test_never_touches_the_servers_instances() {
    let server = Server::start();
    let p = Box::new();
    let slow = "sleep 2; exec /bin/busybox httpd -f -p 8080 -h /";
    let spec = |script: &str| {
        format!(
            "{}{}",
            image("web", script).replace(
                "cmd =",
                "test {\n    command = [\"/bin/busybox\", \"true\"]\n  }\n  cmd ="
            ),
            service(
                "web",
                2,
                // busybox httpd as PID 1 ignores SIGTERM: killed after 1 s.
                "stop_timeout = \"1s\"\n  health {\n    interval = \"200ms\"\n  }",
            )
        )
    };
    p.write(&spec(&serving("while :; do sleep 1; done")));
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let server_pid: u32 = {
        let v: serde_json::Value = serde_json::from_slice(
            &fs::read(server.data.join("server.json")).expect("server.json"),
        )
        .expect("json");
        v["pid"].as_u64().expect("pid") as u32
    };
    // What a server leaves while it works: a half-created instance and one whose process is
    // gone (exited, not yet replaced); and what a dead `recast test` left.
    let project = p.name();
    fake_instance(
        &server.data,
        "web-r9-halfmade",
        &format!("service:{project}/web/9"),
        server_pid,
        "creating",
        None,
    );
    fake_instance(
        &server.data,
        "web-r9-exited",
        &format!("service:{project}/web/9"),
        server_pid,
        "running",
        Some(dead_pid()),
    );
    fake_instance(
        &server.data,
        "test-orphan",
        "test",
        dead_pid(),
        "creating",
        None,
    );
    fake_instance(
        &server.data,
        "test-ownerless",
        "nobody",
        dead_pid(),
        "creating",
        None,
    );
    // A rollout whose new instances take 2 s to start, with `recast test` running meanwhile.
    p.write(&spec(slow));
    ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
    let started = Instant::now();
    let mut tests = 0;
    while started.elapsed() < Duration::from_secs(4) {
        ok(&server.rc(p.path(), &["test"]));
        tests += 1;
    }
    assert!(tests >= 1);
    for id in ["web-r9-halfmade", "web-r9-exited", "test-ownerless"] {
        assert!(
            server
                .data
                .join("instances")
                .join(id)
                .join("instance.json")
                .exists(),
            "recast test deleted {id}"
        );
    }
    assert!(
        !server.data.join("instances").join("test-orphan").exists(),
        "a dead recast test's instance stays"
    );
    // The rollout finished as if nothing had happened.
    wait_for("release 2 to be current", 60, || {
        let h = server.rc(p.path(), &["history", "web", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&h.stdout).unwrap_or_default();
        v["releases"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["number"] == 2 && r["outcome"] == "succeeded")
        })
    });
    assert_eq!(instances_of(&server.data, "web-r2-").len(), 2);
    for id in ["web-r9-halfmade", "web-r9-exited", "test-ownerless"] {
        let _ = fs::remove_dir_all(server.data.join("instances").join(id));
    }
}

/// `destroy` with a broken spec, or without a terminal and `--yes`, does nothing; `apply`
/// without a terminal needs `--yes`; everything is destroyed only with `--all-projects`.
#[test]
fn destructive_commands_are_safe_by_default() {
    let server = Server::start();
    let p = Box::new();
    let port = free_port();
    p.write(&format!(
        "{}{}\nroute \"web\" {{\n  listen  = \"127.0.0.1:{port}\"\n  service = service.web\n}}\n",
        image("web", &serving("while :; do sleep 1; done")),
        service("web", 1, "")
    ));
    // No terminal (stdin is /dev/null, stdout a pipe): apply asks for --yes.
    let e = fails(&server.rc(p.path(), &["apply"]));
    assert!(
        e.contains("refusing to apply") && e.contains("--yes"),
        "{e}"
    );
    assert_eq!(instance_dirs(&server.data).len(), 0);
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    assert_eq!(instance_dirs(&server.data).len(), 1);
    // destroy </dev/null does nothing without --yes.
    let e = fails(&server.rc(p.path(), &["destroy"]));
    assert!(
        e.contains("refusing to destroy every service of project") && e.contains("--yes"),
        "{e}"
    );
    // A spec that does not load is an error, not "every project".
    fs::write(
        p.path().join("broken.hcl"),
        "service \"web\" {\n  image = \n}\n",
    )
    .expect("write");
    let e = fails(&server.rc(p.path(), &["destroy", "--yes", "-f", "broken.hcl"]));
    assert!(
        e.contains("cannot tell which project to destroy") && e.contains("broken.hcl:"),
        "{e}"
    );
    let e = fails(&server.rc(p.path(), &["destroy", "--yes", "-f", "missing.hcl"]));
    assert!(
        e.contains("cannot tell which project to destroy") && e.contains("--all-projects"),
        "{e}"
    );
    let nowhere = tempfile::tempdir().expect("tmp");
    fails(&server.rc(nowhere.path(), &["destroy", "--yes"]));
    assert_eq!(
        instance_dirs(&server.data).len(),
        1,
        "an instance was destroyed"
    );
    let status = server.rc(p.path(), &["status", "web"]);
    assert!(
        stdout(&status).contains("healthy in rotation"),
        "{}",
        stdout(&status)
    );
    // --all-projects still asks (or needs --yes) and then takes everything.
    fails(&server.rc(nowhere.path(), &["destroy", "--all-projects"]));
    assert_eq!(instance_dirs(&server.data).len(), 1);
    ok(&server.rc(nowhere.path(), &["destroy", "--all-projects", "--yes"]));
    wait_for("every instance to go", 20, || {
        instance_dirs(&server.data).is_empty()
    });
}

/// A new instance is *starting* until healthy: failed probes while it starts do not roll it
/// back, only its exit or its start period passing.
#[test]
fn a_slow_starter_deploys_and_a_never_healthy_one_is_rolled_back_at_its_start_period() {
    let server = Server::start();
    let p = Box::new();
    let spec = |v: u32, script: &str, start_period: &str| {
        format!(
            "{}{}",
            image("web", script),
            service(
                "web",
                1,
                &format!(
                    "env = {{ V = \"{v}\" }}\n  health {{\n    interval = \"200ms\"\n    unhealthy_threshold = 2\n    {start_period}\n  }}"
                )
            )
        )
    };
    let httpd = "exec /bin/busybox httpd -f -p 8080 -h /";
    p.write(&spec(1, httpd, ""));
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    // Healthy only after 3 s: 15 failed probes at 200 ms, but it is starting, not failing.
    p.write(&spec(2, &format!("sleep 3; {httpd}"), ""));
    let plan = server.rc(p.path(), &["plan"]);
    ok(&plan);
    assert!(
        stdout(&plan).contains("start period 1m"),
        "{}",
        stdout(&plan)
    );
    let (out, took) = timed(|| server.rc(p.path(), &["apply", "--yes"]));
    ok(&out);
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(
        stdout(&out).contains("web: release 2 succeeded"),
        "{}",
        stdout(&out)
    );
    // Never healthy, start_period 2 s: rolled back at 2 s, not after 2 probes (400 ms).
    p.write(&spec(
        3,
        "while :; do sleep 1; done",
        "start_period = \"2s\"",
    ));
    let plan = server.rc(p.path(), &["plan"]);
    assert!(
        stdout(&plan).contains("start period 2s"),
        "{}",
        stdout(&plan)
    );
    let (out, took) = timed(|| server.rc(p.path(), &["apply", "--yes"]));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("web: release 3 rolled_back")
            && stdout(&out).contains("not healthy within its start period of 2s"),
        "{}",
        stdout(&out)
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "rolled back after {took:?}"
    );
    // Release 2 still serves.
    assert_eq!(instances_of(&server.data, "web-r2-").len(), 1);
    assert!(instances_of(&server.data, "web-r3-").is_empty());
}
