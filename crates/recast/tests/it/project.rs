//! Project identity, credentials in webhook URLs, the spec paths the API reads, and the API
//! token file (issue 10).

use crate::deploy::{Server, body_now, free_port, ok, read_message, test_state, wait_for};
use crate::pg_cluster::SharedDb;
use crate::{example, stderr, stdout};
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A spec directory `<parent>/<name>` with the example binary and a one-instance service.
struct Dir {
    _parent: tempfile::TempDir,
    path: PathBuf,
    port: u16,
}

impl Dir {
    fn new(name: &str) -> Dir {
        let parent = tempfile::Builder::new()
            .prefix("parent")
            .tempdir()
            .expect("tmp");
        let path = parent.path().join(name);
        std::fs::create_dir_all(path.join("dist")).expect("mkdir");
        std::fs::copy(example().join("dist/hello"), path.join("dist/hello")).expect("copy hello");
        Dir {
            _parent: parent,
            path: std::fs::canonicalize(&path).expect("canonical"),
            port: free_port(),
        }
    }

    /// Service `service` (answering `message`) routed on this directory's port; `top` goes at
    /// the top of the spec (`project = "…"`, webhooks).
    fn write(&self, top: &str, service: &str, message: &str, rollout: &str) {
        std::fs::write(
            self.path.join("recast.hcl"),
            format!(
                r#"{top}
image "web" {{
  from = "scratch"
  copy {{
    src  = "dist/hello"
    dest = "/bin/hello"
    mode = "0555"
  }}
  user = "65534:65534"
  cmd  = ["/bin/hello"]
}}

service "{service}" {{
  image     = image.web
  instances = 1
  port      = 8080
  env       = {{ MESSAGE = "{message}" }}
  health {{
    http     = "/healthz"
    interval = "200ms"
  }}
  rollout {{
    {rollout}
  }}
}}

route "{service}" {{
  listen  = "127.0.0.1:{}"
  service = service.{service}
}}
"#,
                self.port
            ),
        )
        .expect("write spec");
    }
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

fn deployed_services(server: &Server) -> Vec<(String, String)> {
    let out = server.rc(Path::new("/"), &["status", "--json"]);
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    v["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["project"].as_str().unwrap_or("").to_string(),
                s["service"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn two_directories_named_alike_are_two_projects_only_when_named_apart() {
    let server = Server::start();
    let a = Dir::new("svc");
    let b = Dir::new("svc");
    a.write("", "alpha", "a", r#"strategy = "rolling""#);
    b.write("", "beta", "b", r#"strategy = "rolling""#);
    ok(&server.rc(&a.path, &["apply", "--yes"]));
    assert_eq!(body_now(a.port), "a from hello 0.1.0\n");

    // The second `svc/` may neither plan nor apply under the first one's name.
    for cmd in [&["plan"][..], &["apply", "--yes"], &["destroy", "--yes"]] {
        let err = fails(&server.rc(&b.path, cmd));
        assert!(
            err.contains(&format!(
                "project \"svc\" belongs to the spec directory {}, not to {}",
                a.path.display(),
                b.path.display()
            )) && err.contains("hint: a project name belongs to one spec directory: give this one its own name with project = \"…\""),
            "{cmd:?}: {err}"
        );
    }
    assert_eq!(
        deployed_services(&server),
        [("svc".to_string(), "alpha".to_string())]
    );
    assert_eq!(body_now(a.port), "a from hello 0.1.0\n", "a is untouched");

    // Named apart, both deploy, and neither plan proposes removing the other's services.
    b.write(
        r#"project = "shop-b""#,
        "beta",
        "b",
        r#"strategy = "rolling""#,
    );
    let plan = server.rc(&b.path, &["plan"]);
    ok(&plan);
    let text = stdout(&plan);
    assert!(
        text.starts_with("project shop-b: 2 change(s)") && !text.contains("remove"),
        "{text}"
    );
    ok(&server.rc(&b.path, &["apply", "--yes"]));
    assert_eq!(body_now(b.port), "b from hello 0.1.0\n");
    for (d, name) in [(&a, "svc"), (&b, "shop-b")] {
        let plan = server.rc(&d.path, &["plan"]);
        ok(&plan);
        assert!(
            stdout(&plan).starts_with(&format!("project {name}: no changes")),
            "{}",
            stdout(&plan)
        );
    }
    let mut services = deployed_services(&server);
    services.sort();
    assert_eq!(
        services,
        [
            ("shop-b".to_string(), "beta".to_string()),
            ("svc".to_string(), "alpha".to_string())
        ]
    );
    assert_eq!(body_now(a.port), "a from hello 0.1.0\n");
}

#[test]
fn an_explicitly_named_project_follows_its_directory_and_a_directory_name_does_not() {
    let server = Server::start();
    let a = Dir::new("shop");
    a.write(
        r#"project = "shop""#,
        "web",
        "v1",
        r#"strategy = "rolling""#,
    );
    ok(&server.rc(&a.path, &["apply", "--yes"]));

    // The same spec, moved: the directory that owned "shop" is gone, the name is explicit.
    let moved = Dir::new("elsewhere");
    std::fs::copy(a.path.join("recast.hcl"), moved.path.join("recast.hcl")).expect("copy spec");
    std::fs::remove_dir_all(&a.path).expect("remove the old directory");
    let plan = server.rc(&moved.path, &["plan"]);
    ok(&plan);
    assert!(
        stderr(&plan).contains(&format!(
            "note: project shop moves from {} to {} on apply",
            a.path.display(),
            moved.path.display()
        )) && stdout(&plan).starts_with("project shop: no changes"),
        "{}{}",
        stdout(&plan),
        stderr(&plan)
    );
    ok(&server.rc(&moved.path, &["apply", "--yes"]));
    assert_eq!(body_now(a.port), "v1 from hello 0.1.0\n");

    // A directory called "shop" elsewhere does not take it back by its name alone…
    let c = Dir::new("shop");
    c.write("", "web", "v2", r#"strategy = "rolling""#);
    let err = fails(&server.rc(&c.path, &["plan"]));
    assert!(
        err.contains(&format!(
            "project \"shop\" belongs to the spec directory {}, not to {}",
            moved.path.display(),
            c.path.display()
        )),
        "{err}"
    );
    // …nor by naming it while the owner still declares it.
    c.write(
        r#"project = "shop""#,
        "web",
        "v2",
        r#"strategy = "rolling""#,
    );
    fails(&server.rc(&c.path, &["apply", "--yes"]));
    assert_eq!(body_now(a.port), "v1 from hello 0.1.0\n");
}

/// `recast server` on `data`, its stderr kept in `log`; on the PostgreSQL pass, its state in
/// `db`.
struct LoggedServer {
    child: std::process::Child,
    data: PathBuf,
    log: PathBuf,
    db: Option<SharedDb>,
}

impl LoggedServer {
    fn start(data: &Path) -> LoggedServer {
        let log = data.with_extension("log");
        let db = test_state();
        let child = Command::new(env!("CARGO_BIN_EXE_recast"))
            .args(["server", "--listen", "127.0.0.1:0"])
            .args(db.iter().flat_map(|db| ["--state".to_string(), db.url()]))
            .env("RECAST_DATA_DIR", data)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("recast server");
        let s = LoggedServer {
            child,
            data: data.to_path_buf(),
            log,
            db,
        };
        wait_for("the server", 30, || data.join("server.json").exists());
        s
    }

    fn rc(&self, cwd: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_recast"))
            .args(args)
            .current_dir(cwd)
            .env("RECAST_DATA_DIR", &self.data)
            .stdin(Stdio::null())
            .output()
            .expect("run recast")
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.rc(
            Path::new("/"),
            &["destroy", "--yes", "--all-projects", "--volumes"],
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    free_port()
}

/// A webhook receiver on loopback answering `status`: records every body it is sent.
fn receiver(status: u16) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            if let Ok((_, body)) = read_message(&mut c) {
                s2.lock().expect("lock").push(body);
            }
            let _ = write!(
                c,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (port, seen)
}

#[test]
fn webhook_credentials_are_never_shown_or_stored() {
    const PASS: &str = "pass-Wq9x";
    const SECRET: &str = "SECRET-7f3";
    let data = tempfile::tempdir().expect("tmp");
    let server = LoggedServer::start(&data.path().join("data"));
    let d = Dir::new("hooked");
    let (port, seen) = receiver(200);
    let (refusing, _) = receiver(500);
    let hooks = |gate_port: u16| {
        let url =
            format!("http://alice:{PASS}@127.0.0.1:{gate_port}/hook?api_key={SECRET}&channel=ops");
        format!(
            r#"
webhook "gate" {{
  url     = "{url}"
  events  = ["rollout.pre_promote"]
  timeout = "2s"
}}
webhook "chat" {{
  url    = "http://127.0.0.1:{port}/chat"
  events = ["rollout.rolled_back", "rollout.finished"]
}}
"#
        )
    };
    let canary =
        "strategy = \"canary\"\n    step {\n      weight = 50\n      pause  = \"100ms\"\n    }";
    d.write(&hooks(closed_port()), "web", "v1", canary);
    let mut outputs = Vec::new();
    let first = server.rc(&d.path, &["apply", "--yes"]);
    ok(&first);
    outputs.push(first);
    // The gate fails twice: nobody listens, then it answers 500.
    for (gate, release, why) in [
        (closed_port(), "v2", "Connection refused"),
        (refusing, "v3", "answered 500"),
    ] {
        d.write(&hooks(gate), "web", release, canary);
        let out = server.rc(&d.path, &["apply", "--yes"]);
        let shown = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(
            shown.contains(&format!(
                "pre_promote webhook gate blocked the promotion: http://***@127.0.0.1:{gate}/hook?api_key=***&channel=ops"
            )) && shown.contains(why),
            "the failing hook is named, redacted: {shown}"
        );
        outputs.push(out);
    }
    assert_eq!(body_now(d.port), "v1 from hello 0.1.0\n");
    wait_for("both rolled_back webhooks", 10, || {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|b| b.contains("rollout.rolled_back"))
            .count()
            == 2
    });
    for args in [
        &["history", "web", "--json"][..],
        &["history", "web"],
        &["status", "--json"],
        &["plan"],
        &["validate"],
    ] {
        outputs.push(server.rc(&d.path, args));
    }
    // The event stream, as far as it goes now.
    let token = std::fs::read_to_string(server.data.join("token")).expect("token");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(server.data.join("server.json")).expect("info"))
            .expect("server.json");
    let mut events = String::new();
    if let Ok(mut s) = TcpStream::connect(info["addr"].as_str().expect("addr")) {
        let _ = s.set_read_timeout(Some(Duration::from_millis(1500)));
        let _ = write!(
            s,
            "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            token.trim()
        );
        let mut buf = [0u8; 65536];
        while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
            if n == 0 {
                break;
            }
            events.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(
        events.contains("rollout.rolled_back") || events.contains("rolled back"),
        "the event stream was read: {events}"
    );
    let mut places: Vec<(String, String)> = outputs
        .iter()
        .map(|o| {
            (
                "command output".to_string(),
                format!("{}{}", stdout(o), stderr(o)),
            )
        })
        .collect();
    places.push(("the event stream".into(), events));
    places.push((
        "webhook payloads".into(),
        seen.lock().expect("lock").join("\n"),
    ));
    places.push((
        "the server log".into(),
        std::fs::read_to_string(&server.log).unwrap_or_default(),
    ));
    // Every record the server keeps: state.db (read as bytes), or on the PostgreSQL pass the
    // whole database as pg_dump writes it — never an empty stand-in.
    let mut state = Vec::new();
    if let Some(db) = &server.db {
        state.push(("the state database".to_string(), db.dump()));
    } else {
        for f in ["state.db", "state.db-wal"] {
            let bytes = std::fs::read(server.data.join(f)).unwrap_or_default();
            state.push((f.into(), String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    assert!(
        state.iter().any(|(_, text)| text.contains("hooked")),
        "the state read holds the project's records: {state:?}"
    );
    places.extend(state);
    for (what, text) in &places {
        for secret in [PASS, SECRET, "alice"] {
            assert!(
                !text.contains(secret),
                "{what} contains {secret:?}:\n{text}"
            );
        }
    }
}

/// POST `body` to the API of the server on `data`; returns status and body.
fn api_post(data: &Path, path: &str, body: &str) -> (u16, String) {
    let token = std::fs::read_to_string(data.join("token")).expect("token");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("server.json")).expect("info"))
            .expect("server.json");
    let mut s = TcpStream::connect(info["addr"].as_str().expect("addr")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token.trim(),
        body.len()
    )
    .expect("send");
    let (head, body) = read_message(&mut s).expect("answer");
    (
        head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0),
        body,
    )
}

#[test]
fn the_api_applies_spec_files_only_and_never_echoes_a_file() {
    let server = Server::start();
    let d = tempfile::tempdir().expect("tmp");
    let d = std::fs::canonicalize(d.path()).expect("canonical");
    let text = d.join("notes.txt");
    std::fs::write(&text, "SECRET-CONTENT = 1\n").expect("write");
    let fake = d.join("shadow.hcl");
    std::fs::write(&fake, "root:$6$SALTSALT$HASHHASH:19000:0:99999:7:::\n").expect("write");
    let link = d.join("link.hcl");
    std::os::unix::fs::symlink(&text, &link).expect("symlink");

    let cases = [
        (
            "/etc/shadow".to_string(),
            "cannot apply /etc/shadow: not a spec file (*.hcl)",
        ),
        (text.display().to_string(), "not a spec file (*.hcl)"),
        (
            link.display().to_string(),
            "not a spec file (*.hcl) (it resolves to",
        ),
        ("/dev/zero".to_string(), "not a regular file or a directory"),
        (
            "relative/recast.hcl".to_string(),
            "the path is not absolute",
        ),
    ];
    for (path, why) in &cases {
        let (status, body) = api_post(
            &server.data,
            "/v1/apply",
            &serde_json::json!({ "path": path }).to_string(),
        );
        assert_eq!(status, 400, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json error");
        let e = v["error"].as_str().expect("error");
        assert!(e.contains(path.as_str()) && e.contains(why), "{path}: {e}");
        assert!(!e.contains("SECRET-CONTENT") && !e.contains("root:"), "{e}");
    }

    // A *.hcl file that is not HCL: its location, never its content.
    let (status, body) = api_post(
        &server.data,
        "/v1/apply",
        &serde_json::json!({ "path": fake }).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json error");
    let e = v["error"].as_str().expect("error");
    assert!(e.contains(&format!("{}:1:", fake.display())), "{e}");
    for content in ["SALTSALT", "HASHHASH", "19000", "root"] {
        assert!(!e.contains(content), "content echoed: {e}");
    }

    // The CLI still shows the user their own spec's lines.
    let out = server.rc(&d, &["apply", "--yes", "-f", "shadow.hcl"]);
    assert!(stderr(&out).contains("1 | root:"), "{}", stderr(&out));
}

#[test]
fn a_token_file_that_is_not_private_empty_or_short_is_refused() {
    let start = |data: &Path| {
        Command::new(env!("CARGO_BIN_EXE_recast"))
            .args(["server", "--listen", "127.0.0.1:0"])
            .env("RECAST_DATA_DIR", data)
            .stdin(Stdio::null())
            .output()
            .expect("recast server")
    };
    let d = tempfile::tempdir().expect("tmp");
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let token = data.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef").expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = start(&data);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "the API token {} is readable or writable by other users (mode 0644)\n  hint: run `chmod 600 {}`",
            token.display(),
            token.display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(
        !data.join("server.json").exists(),
        "the server did not start"
    );

    std::fs::write(&token, "\n").expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = start(&data);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "the API token {} is empty\n  hint: delete it; the server generates a new one",
            token.display()
        )),
        "{}",
        stderr(&out)
    );

    // A short token could be guessed (the API does not throttle wrong ones): refused.
    std::fs::write(&token, "hunter2\n").expect("write");
    let out = start(&data);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "the API token {} has 7 characters; one shorter than 32 could be guessed\n  hint: delete it; the server generates a new one",
            token.display()
        )),
        "{}",
        stderr(&out)
    );

    // A client refuses a token file others can read, too.
    std::fs::remove_file(&token).expect("rm");
    let server = LoggedServer::start(&data);
    ok(&server.rc(Path::new("/"), &["status"]));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = server.rc(Path::new("/"), &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "the API token {} is readable or writable by other users (mode 0640)",
            token.display()
        )) && stderr(&out).contains("chmod 600"),
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
fn the_longest_service_name_runs_and_a_longer_one_is_a_spec_error() {
    let server = Server::start();
    let d = Dir::new("names");
    let longest = "s".repeat(42);
    d.write("", &longest, "long", r#"strategy = "rolling""#);
    ok(&server.rc(&d.path, &["apply", "--yes"]));
    assert_eq!(body_now(d.port), "long from hello 0.1.0\n");

    let too_long = "s".repeat(43);
    d.write("", &too_long, "long", r#"strategy = "rolling""#);
    let err = fails(&server.rc(&d.path, &["plan"]));
    assert!(
        err.contains(&format!(
            "recast.hcl:13:9: error: service name \"{too_long}\" is 43 characters long, at most 42 are allowed"
        )) && err.contains("hint: instance ids and hostnames are NAME-rRELEASE-XXXXXXXX"),
        "{err}"
    );
}
