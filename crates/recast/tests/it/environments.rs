//! Variables, secrets, environments and promotion, driven through the `recast` binary against a
//! real server (issue 16): a secret's value reaches its instance and nothing else; staging then
//! production by promotion of the same digest, refused before the soak and accepted after.

use crate::deploy::{Server, body_now, free_port, ok, read_message, wait_for};
use crate::{example, stderr, stdout};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A spec directory with the example binary in `dist/hello`.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::Builder::new()
            .prefix("envproj")
            .tempdir()
            .expect("tmp");
        std::fs::create_dir_all(dir.path().join("dist")).expect("mkdir dist");
        std::fs::copy(example().join("dist/hello"), dir.path().join("dist/hello"))
            .expect("copy hello");
        Dir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path().join(name), text)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.path().join(name).display()));
    }
}

/// The example's image, as every spec here builds it.
const IMAGE: &str = r#"
image "web" {
  from = "scratch"
  copy {
    src  = "dist/hello"
    dest = "/bin/hello"
    mode = "0555"
  }
  user = "65534:65534"
  cmd  = ["/bin/hello"]
}
"#;

/// `recast ARGS` in `cwd` against `server`, with `env` added to the CLI's environment only
/// (the server never sees it).
fn rc_env(server: &Server, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(args)
        .current_dir(cwd)
        .env("RECAST_DATA_DIR", &server.data)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run recast")
}

/// Both streams of a command, labelled, for assertions and failure messages.
fn shown(o: &Output) -> String {
    format!(
        "exit: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// A unique marker: a prefix and 32 random hex digits.
fn marker(prefix: &str) -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}{hex}")
}

fn hex(s: &[u8]) -> String {
    s.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64(s: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// What a value may look like when something keeps it: as is, as hex (the API's wire form) and
/// as base64 — each a leak.
fn forms(value: &str) -> Vec<(String, String)> {
    vec![
        ("plain".into(), value.to_string()),
        ("hex".into(), hex(value.as_bytes())),
        ("HEX".into(), hex(value.as_bytes()).to_uppercase()),
        ("base64".into(), base64(value.as_bytes())),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    // memchr's search: a naive one in this unoptimised test build took minutes over a data
    // directory holding a Debian base.
    !needle.is_empty() && memchr::memmem::find(hay, needle).is_some()
}

/// Every file under `root` (no symlink followed; sockets, fifos and devices skipped) holding any
/// form of any of `values`: ("path: which form of which value").
fn files_holding(root: &Path, values: &[&str]) -> (Vec<String>, usize) {
    use std::os::unix::fs::FileTypeExt;
    let needles: Vec<(String, Vec<u8>)> = values
        .iter()
        .flat_map(|v| {
            forms(v)
                .into_iter()
                .map(move |(form, n)| (format!("{form} {v}"), n.into_bytes()))
        })
        .collect();
    let mut found = Vec::new();
    let mut read = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        // Files come and go while the server runs: one gone is skipped.
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let t = meta.file_type();
        if t.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if t.is_file() {
            // (A namespace file bound here reads as an error: it holds no bytes.)
            if let Ok(mut bytes) = std::fs::read(&p) {
                read += 1;
                if is_instance_log(root, &p) {
                    bytes = without_app_banner(&bytes);
                }
                for (what, n) in &needles {
                    if contains(&bytes, n) {
                        found.push(format!("{}: {what}", p.display()));
                    }
                }
            }
        } else if t.is_symlink() {
            if let Ok(target) = std::fs::read_link(&p) {
                let target = target.to_string_lossy().into_owned();
                for (what, n) in &needles {
                    if contains(target.as_bytes(), n) {
                        found.push(format!("{} (symlink target): {what}", p.display()));
                    }
                }
            }
        } else {
            debug_assert!(
                t.is_socket() || t.is_fifo() || t.is_char_device() || t.is_block_device()
            );
        }
    }
    (found, read)
}

/// `instances/<id>/{stdout,stderr}.log`: what an instance printed itself.
fn is_instance_log(root: &Path, p: &Path) -> bool {
    let Ok(rel) = p.strip_prefix(root) else {
        return false;
    };
    let parts: Vec<_> = rel.iter().collect();
    parts.len() == 3
        && parts[0] == "instances"
        && (parts[2] == "stdout.log" || parts[2] == "stderr.log")
}

/// An instance log without the example app's own start line (`hello VERSION listening on :PORT,
/// message "$MESSAGE"`): an app printing its secret is the app's business, not a leak by recast.
/// Only that line: anything else recast or the app wrote there is searched.
fn without_app_banner(bytes: &[u8]) -> Vec<u8> {
    bytes
        .split_inclusive(|b| *b == b'\n')
        .filter(|l| !contains(l, b" listening on :8080, message \""))
        .flatten()
        .copied()
        .collect()
}

/// Assert that no file under the server's data directory holds any form of `values`.
pub(crate) fn data_dir_clean(server: &Server, values: &[&str], when: &str) {
    let (found, read) = files_holding(&server.data, values);
    assert!(
        read > 10,
        "only {read} files were read under {}",
        server.data.display()
    );
    assert!(
        found.is_empty(),
        "{when}: secret values found under the data directory {}:\n{}",
        server.data.display(),
        found.join("\n")
    );
    // The records: state.db was among the files read; on the PostgreSQL pass, the database as
    // pg_dump writes it.
    match &server.db {
        None => assert!(
            server.data.join("state.db").is_file(),
            "the state is in {}",
            server.data.join("state.db").display()
        ),
        Some(db) => {
            let dump = db.dump();
            for v in values {
                for (form, f) in forms(v) {
                    assert!(
                        !dump.contains(&f),
                        "{when}: the state database holds the {form} form of {v}"
                    );
                }
            }
        }
    }
}

/// A loopback webhook receiver answering 200: every body it is sent.
fn receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
    let port = l.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            if let Ok((head, body)) = read_message(&mut c) {
                s2.lock()
                    .expect("lock")
                    .push(format!("{head}\r\n\r\n{body}"));
            }
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (port, seen)
}

/// What the server's event stream (`GET /v1/events`) holds now (read for `secs`).
fn event_stream(server: &Server, secs: f64) -> String {
    let token = std::fs::read_to_string(server.data.join("token")).expect("the API token");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(server.data.join("server.json")).expect("info"))
            .expect("server.json");
    let addr = info["addr"].as_str().expect("server.json: addr");
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs_f64(secs)))
        .expect("timeout");
    write!(
        s,
        "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    )
    .expect("ask for events");
    let mut events = String::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => events.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    events
}

/// The instances of service `web` under the data directory, as (id, instance.json).
fn web_instances(server: &Server) -> Vec<(String, serde_json::Value)> {
    server
        .instance_ids()
        .into_iter()
        .filter(|id| id.starts_with("web"))
        .filter_map(|id| {
            let bytes = std::fs::read(
                server
                    .data
                    .join("instances")
                    .join(&id)
                    .join("instance.json"),
            )
            .ok()?;
            Some((id, serde_json::from_slice(&bytes).ok()?))
        })
        .collect()
}

/// The releases of `service` (oldest first) as `history SERVICE [--env ENV] --json` shows them.
fn releases(
    server: &Server,
    cwd: &Path,
    service: &str,
    env: Option<&str>,
) -> Vec<serde_json::Value> {
    let mut args = vec!["history", service, "--json"];
    if let Some(e) = env {
        args.extend(["--env", e]);
    }
    let out = server.rc(cwd, &args);
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("history --json is JSON ({e}):\n{}", shown(&out)));
    v["releases"]
        .as_array()
        .unwrap_or_else(|| panic!("history --json has releases:\n{v}"))
        .clone()
}

fn secret_spec(hook: u16, port: u16) -> String {
    format!(
        r#"
webhook "all" {{
  url    = "http://127.0.0.1:{hook}/hook"
  events = ["rollout.started", "rollout.step", "rollout.promoted", "rollout.rolled_back", "rollout.finished"]
}}

secret "msg" {{
  from_env = "RECAST_TEST_MSG"
}}

secret "token" {{
  from_file = "token.txt"
}}
{IMAGE}
service "web" {{
  image     = image.web
  instances = 2
  port      = 8080
  env       = {{ MESSAGE = secret.msg, PLAIN = "visible" }}
  secret_file {{
    secret = secret.token
    path   = "/run/secrets/token"
  }}
  health {{
    http     = "/healthz"
    interval = "200ms"
  }}
  rollout {{
    strategy = "rolling"
  }}
}}

route "web" {{
  listen  = "127.0.0.1:{port}"
  service = service.web
}}
"#
    )
}

#[test]
fn a_secret_reaches_its_instance_and_nothing_else() {
    let server = Server::start();
    let d = Dir::new();
    let port = free_port();
    let (hook, payloads) = receiver();
    let msg = marker("msg");
    let token = marker("tok");
    d.write("token.txt", &token);
    d.write("recast.hcl", &secret_spec(hook, port));
    let env = [("RECAST_TEST_MSG", msg.as_str())];
    let run = |args: &[&str]| rc_env(&server, d.path(), args, &env);

    let mut outputs: Vec<(String, Output)> = Vec::new();
    let plan = run(&["plan"]);
    ok(&plan);
    outputs.push(("plan".into(), plan));
    let plan_json = run(&["plan", "--json"]);
    ok(&plan_json);
    outputs.push(("plan --json".into(), plan_json));
    let apply = run(&["apply", "--yes"]);
    ok(&apply);
    outputs.push(("apply --yes".into(), apply));
    // Inside the instance: the secret variable…
    wait_for("GET / to answer the secret message", 20, || {
        body_now(port) == format!("{msg} from hello 0.1.0\n")
    });
    let again = run(&["apply", "--yes", "--json"]);
    ok(&again);
    outputs.push(("second apply --yes --json".into(), again));
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["history", "web"],
        &["history", "web", "--json"],
        &["validate", "--json"],
        &["drift", "--json"],
        &["plan"],
    ] {
        let out = run(args);
        assert!(
            out.status.success(),
            "recast {} failed:\n{}",
            args.join(" "),
            shown(&out)
        );
        outputs.push((args.join(" "), out));
    }
    // The second apply changed nothing: the same secret is the same release.
    let rel = releases(&server, d.path(), "web", None);
    assert_eq!(rel.len(), 1, "one release after two applies: {rel:?}");
    let last_plan = stdout(&outputs.last().expect("plan").1);
    assert!(
        last_plan.contains("no changes"),
        "an unchanged secret is no change:\n{last_plan}"
    );

    // …and the secret file, on a tmpfs, in every instance.
    let instances = web_instances(&server);
    assert_eq!(instances.len(), 2, "two instances of web: {instances:?}");
    for (id, info) in &instances {
        let pid = info["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("instance {id} has a pid: {info}"));
        let file = PathBuf::from(format!("/proc/{pid}/root/run/secrets/token"));
        let inside = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("instance {id}: read {}: {e}", file.display()));
        assert_eq!(inside, token, "the token file inside instance {id}");
        let mountinfo =
            std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
        let mount = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some("/run/secrets/token"))
            .unwrap_or_else(|| {
                panic!("instance {id}: no mount at /run/secrets/token:\n{mountinfo}")
            });
        let fstype = mount.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        assert_eq!(
            fstype,
            Some("tmpfs"),
            "instance {id}: /run/secrets/token is on a tmpfs: {mount}"
        );
        assert!(
            mount
                .split(' ')
                .nth(5)
                .is_some_and(|o| o.split(',').any(|o| o == "ro")),
            "instance {id}: /run/secrets/token is mounted read-only: {mount}"
        );
    }

    // Nowhere else: not in what recast printed, the webhooks, the event stream, the server's
    // log or any file under the data directory.
    wait_for("a rollout.finished webhook", 20, || {
        payloads
            .lock()
            .expect("lock")
            .iter()
            .any(|p| p.contains("rollout.finished"))
    });
    let events = event_stream(&server, 1.5);
    assert!(
        events.contains("rollout"),
        "the event stream was read: {events}"
    );
    let mut places: Vec<(String, String)> = outputs
        .iter()
        .map(|(what, o)| (format!("the output of recast {what}"), shown(o)))
        .collect();
    places.push(("the event stream".into(), events));
    places.push((
        "the webhook payloads".into(),
        payloads.lock().expect("lock").join("\n"),
    ));
    places.push(("the server's logs".into(), server.logs()));
    for (what, text) in &places {
        for v in [&msg, &token] {
            for (form, f) in forms(v) {
                assert!(
                    !text.contains(&f),
                    "{what} holds the {form} form of {v}:\n{text}"
                );
            }
        }
    }
    data_dir_clean(&server, &[&msg, &token], "after the first apply");

    // A changed secret is a change: the plan names it (not its value) and apply rolls out.
    let msg2 = marker("msg");
    let env2 = [("RECAST_TEST_MSG", msg2.as_str())];
    let plan = rc_env(&server, d.path(), &["plan"], &env2);
    ok(&plan);
    assert!(
        stdout(&plan).contains("secret msg changed"),
        "the plan shows the secret changed:\n{}",
        shown(&plan)
    );
    let apply = rc_env(&server, d.path(), &["apply", "--yes"], &env2);
    ok(&apply);
    wait_for("GET / to answer the new secret message", 20, || {
        body_now(port) == format!("{msg2} from hello 0.1.0\n")
    });
    let rel = releases(&server, d.path(), "web", None);
    assert_eq!(
        rel.last().and_then(|r| r["number"].as_i64()),
        Some(2),
        "a changed secret makes release 2: {rel:?}"
    );
    for (what, o) in [("plan", &plan), ("apply", &apply)] {
        let text = shown(o);
        for v in [&msg, &msg2, &token] {
            assert!(
                !text.contains(v.as_str()),
                "recast {what} printed {v}:\n{text}"
            );
        }
    }
    data_dir_clean(&server, &[&msg, &msg2, &token], "after the secret changed");
}

fn environments_spec(staging: u16, production: u16) -> String {
    format!(
        r#"
variable "port" {{
  type = number
}}

environment "staging" {{
  variables = {{ port = {staging} }}
}}

environment "production" {{
  variables = {{ port = {production} }}
  require {{
    promoted_from = "staging"
    soak          = "3s"
  }}
}}
{IMAGE}
service "web" {{
  image     = image.web
  instances = 1
  port      = 8080
  env       = {{ MESSAGE = "promoted" }}
  health {{
    http     = "/healthz"
    interval = "200ms"
  }}
  rollout {{
    strategy = "rolling"
  }}
}}

route "web" {{
  listen  = "127.0.0.1:${{var.port}}"
  service = service.web
}}
"#
    )
}

#[test]
fn staging_then_production_by_promotion_with_soak() {
    let server = Server::start();
    let d = Dir::new();
    let (staging, production) = (free_port(), free_port());
    d.write("recast.hcl", &environments_spec(staging, production));
    let hello = "promoted from hello 0.1.0\n";

    // A spec with environments is applied to one of them.
    let out = server.rc(d.path(), &["apply", "--yes"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "apply without --env:\n{}",
        shown(&out)
    );
    assert!(
        stderr(&out).contains("--env"),
        "apply without --env names --env:\n{}",
        shown(&out)
    );

    let out = server.rc(d.path(), &["apply", "--env", "staging", "--yes"]);
    ok(&out);
    wait_for("staging to serve", 20, || body_now(staging) == hello);

    // Promoted at once, the release has not soaked in staging: refused, production untouched.
    let out = server.rc(
        d.path(),
        &[
            "promote-release",
            "web",
            "--from",
            "staging",
            "--to",
            "production",
            "--yes",
        ],
    );
    assert_ne!(
        out.status.code(),
        Some(0),
        "an early promotion:\n{}",
        shown(&out)
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("refused by the require block of environment production")
            && text.contains("staging"),
        "the early promotion says it was refused by the soak:\n{}",
        shown(&out)
    );
    assert_eq!(
        body_now(production),
        "",
        "production serves after a refused promotion"
    );
    let out = server.rc(d.path(), &["plan", "--env", "production"]);
    ok(&out);
    assert!(
        stdout(&out).contains("refused:"),
        "the production plan shows the refusal:\n{}",
        shown(&out)
    );

    // After the soak: accepted, and production serves the same digest.
    let mut out = server.rc(d.path(), &["plan", "--env", "production"]);
    wait_for("the 3 s soak to pass", 20, || {
        out = server.rc(d.path(), &["plan", "--env", "production"]);
        !stdout(&out).contains("refused:")
    });
    ok(&out);
    assert!(
        stdout(&out).contains("verified in staging for"),
        "after the soak the production plan shows the verified digest:\n{}",
        shown(&out)
    );
    let out = server.rc(
        d.path(),
        &[
            "promote-release",
            "web",
            "--from",
            "staging",
            "--to",
            "production",
            "--yes",
        ],
    );
    assert!(
        out.status.success(),
        "the promotion after the soak:\n{}\n{}",
        shown(&out),
        server.logs()
    );
    wait_for("production to serve", 20, || body_now(production) == hello);
    assert_eq!(body_now(staging), hello, "staging still serves");

    let prod = releases(&server, d.path(), "web", Some("production"));
    let stag = releases(&server, d.path(), "web", Some("staging"));
    let digest = |r: &[serde_json::Value], which: &str| {
        r.last()
            .and_then(|x| x["digest"].as_str())
            .unwrap_or_else(|| panic!("{which} has a release with a digest: {r:?}"))
            .to_string()
    };
    let (pd, sd) = (digest(&prod, "production"), digest(&stag, "staging"));
    assert!(sd.starts_with("sha256:"), "a digest: {sd}");
    assert_eq!(pd, sd, "production runs staging's digest");
    assert_eq!(prod.len(), 1, "production has one release: {prod:?}");
    for r in prod.iter().chain(&stag) {
        assert!(
            r["project"]
                .as_str()
                .is_some_and(|p| p.ends_with("@production") || p.ends_with("@staging")),
            "a release of an environment's project: {r}"
        );
    }

    let out = server.rc(d.path(), &["plan", "--env", "production"]);
    ok(&out);
    assert!(
        stdout(&out).contains("no changes"),
        "production is as its spec says after the promotion:\n{}",
        shown(&out)
    );

    let out = server.rc(d.path(), &["status", "--env", "staging", "--json"]);
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is JSON ({e}):\n{}", shown(&out)));
    let projects: Vec<&str> = v["services"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json lists services: {v}"))
        .iter()
        .map(|s| s["project"].as_str().unwrap_or(""))
        .collect();
    assert!(
        !projects.is_empty() && projects.iter().all(|p| p.ends_with("@staging")),
        "status --env staging lists staging's project only: {projects:?}"
    );

    // -var on the command line wins over the environment block: staging's route moves.
    let moved = free_port();
    let out = server.rc(
        d.path(),
        &[
            "apply",
            "--env",
            "staging",
            "-var",
            &format!("port={moved}"),
            "--yes",
        ],
    );
    ok(&out);
    wait_for("staging to serve on the -var port", 20, || {
        body_now(moved) == hello
    });
    wait_for("staging's old port to close", 20, || {
        body_now(staging).is_empty()
    });
    assert_eq!(body_now(production), hello, "production is untouched");
}

#[test]
fn a_command_secret_and_a_failed_validation() {
    let server = Server::start();
    let d = Dir::new();
    let port = free_port();
    let value = marker("cmd");
    // The command reads the value from outside the spec (the spec is no secret).
    let source_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(source_file.path(), format!("{value}\n")).expect("write the command's source");
    let source = source_file.path().display().to_string();
    d.write(
        "recast.hcl",
        &format!(
            r#"variable "replicas" {{
  type    = number
  default = 1
  validation {{
    condition = var.replicas >= 1 && var.replicas <= 3
    message   = "replicas must be 1 to 3"
  }}
}}

secret "x" {{
  from_command = ["sh", "-c", "cat '{source}'"]
}}
{IMAGE}
service "web" {{
  image     = image.web
  instances = var.replicas
  port      = 8080
  env       = {{ MESSAGE = secret.x }}
  health {{
    http     = "/healthz"
    interval = "200ms"
  }}
  rollout {{
    strategy = "rolling"
  }}
}}

route "web" {{
  listen  = "127.0.0.1:{port}"
  service = service.web
}}
"#
        ),
    );
    // A value the validation refuses: a located error naming the variable, nothing deployed.
    let out = server.rc(d.path(), &["apply", "--yes", "-var", "replicas=7"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an invalid variable:\n{}",
        shown(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("recast.hcl:5:")
            && err.contains("variable \"replicas\"")
            && err.contains("replicas must be 1 to 3"),
        "the error names the variable, its line and message:\n{}",
        shown(&out)
    );
    assert!(server.instance_ids().is_empty(), "nothing was deployed");

    // The command's output (its newline removed) is the secret.
    let out = server.rc(d.path(), &["apply", "--yes", "-var", "replicas=2"]);
    ok(&out);
    wait_for("GET / to answer the command's secret", 20, || {
        body_now(port) == format!("{value} from hello 0.1.0\n")
    });
    assert_eq!(web_instances(&server).len(), 2, "-var replicas=2");
    assert!(
        !shown(&out).contains(&value),
        "apply printed the secret:\n{}",
        shown(&out)
    );
    data_dir_clean(
        &server,
        &[&value],
        "after a from_command secret was deployed",
    );
}
