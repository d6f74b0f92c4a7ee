//! The command line's habits (issue 17): the version names its commit, `--help` (a snapshot),
//! completions and a man page, `plan --detailed-exitcode`, JSON errors under `--json`, and the
//! unauthenticated liveness endpoint.

use crate::deploy::{Project, Server, ok, read_message};
use crate::{example, recast, stderr, stdout};
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;

#[test]
fn the_version_names_the_commit() {
    let out = recast(&example(), &["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git");
    let commit = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert_eq!(
        stdout(&out),
        format!("recast {} ({commit})\n", env!("CARGO_PKG_VERSION"))
    );
}

/// `recast --help` as a user sees it; `RECAST_UPDATE_SNAPSHOTS=1` writes the new one.
#[test]
fn help_matches_its_snapshot() {
    let out = recast(&example(), &["--help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/snapshots/help.txt");
    if std::env::var_os("RECAST_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, stdout(&out)).expect("write snapshot");
    }
    let want = std::fs::read_to_string(&path).expect("snapshot");
    assert_eq!(
        stdout(&out),
        want,
        "`recast --help` changed; if on purpose: RECAST_UPDATE_SNAPSHOTS=1 cargo nextest run -p recast -E 'test(help_matches)'"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_cli() {
    for shell in ["bash", "zsh", "fish"] {
        let out = recast(&example(), &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = stdout(&out);
        for cmd in ["promote-release", "apply", "history"] {
            assert!(text.contains(cmd), "{shell} completes {cmd}");
        }
    }
    let bad = recast(&example(), &["completions", "cmd.exe"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    let man = recast(&example(), &["man"]);
    assert!(man.status.success(), "{}", stderr(&man));
    let text = stdout(&man);
    assert!(
        text.starts_with(".ie") && text.contains(".TH recast 1"),
        "{text}"
    );
    assert!(text.contains("promote\\-release"), "{text}");
}

/// Under `--json`, a failure is `{"error": {"message", "hint"}}` on stdout (and the human text
/// on stderr), for bad usage as well as a failed command.
#[test]
fn errors_are_json_under_json() {
    let data = tempfile::tempdir().expect("tmp");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_recast"))
            .args(args)
            .current_dir(example())
            .env("RECAST_DATA_DIR", data.path())
            .output()
            .expect("run")
    };
    let error_of = |o: &std::process::Output| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)));
        v["error"].clone()
    };
    // No server: a failed command.
    let o = run(&["rollback", "web", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let e = error_of(&o);
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("server")),
        "{e}"
    );
    assert!(e["hint"].as_str().is_some_and(|h| !h.is_empty()), "{e}");
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
    // A spec that is not there.
    let o = run(&["plan", "--json", "-f", "/nonexistent/recast.hcl"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        error_of(&o)["message"]
            .as_str()
            .is_some_and(|m| m.contains("/nonexistent/recast.hcl")),
        "{}",
        stdout(&o)
    );
    // The count of spec errors stays in the message (a hint is only a hint).
    let e = error_of(&o);
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("1 error")),
        "{e}"
    );
    // Bad usage: exit 2, still JSON, naming what is missing.
    let o = run(&["history", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let e = error_of(&o);
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("<SERVICE>")),
        "{e}"
    );
    assert!(
        e["hint"]
            .as_str()
            .is_some_and(|h| h.starts_with("usage: recast history")),
        "{e}"
    );
}

/// `plan --detailed-exitcode`: 2 with changes, 0 without, 1 on error.
#[test]
fn plan_exit_codes_say_whether_anything_changes() {
    let server = Server::start();
    let p = Project::new();
    p.write("MESSAGE = \"v1\"", "", "");
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "--detailed-exitcode"];
        args.extend_from_slice(extra);
        server.rc(p.path(), &args)
    };
    let o = plan(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stdout(&o).contains("2 change(s)"), "{}", stdout(&o));
    // Without the flag, changes are a success.
    ok(&server.rc(p.path(), &["plan"]));
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let o = plan(&["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["services"][0]["action"], "unchanged");
    let o = plan(&["-f", "nothing-here.hcl"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

/// `GET /healthz` answers without the token and says nothing else; everything else still
/// wants it.
#[test]
fn liveness_needs_no_token_and_reveals_nothing() {
    let server = Server::start();
    let info: serde_json::Value = serde_json::from_slice(
        &std::fs::read(server.data.join("server.json")).expect("server.json"),
    )
    .expect("json");
    let addr = info["addr"].as_str().expect("addr").to_string();
    let get = |path: &str| {
        let mut s = TcpStream::connect(&addr).expect("api");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        read_message(&mut s).expect("answer")
    };
    let (head, body) = get("/healthz");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok\n");
    for path in ["/v1/status", "/metrics", "/healthz/../v1/status"] {
        let (head, body) = get(path);
        assert!(head.starts_with("HTTP/1.1 401"), "{path}: {head}");
        assert!(body.contains("token"), "{path}: {body}");
    }
}

/// `history` and `status` read the recorded state when no server runs.
#[test]
fn history_and_status_work_without_a_server() {
    let mut server = Server::start();
    let p = Project::new();
    p.write("MESSAGE = \"v1\"", "", "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let live: serde_json::Value =
        serde_json::from_slice(&server.rc(p.path(), &["history", "web", "--json"]).stdout)
            .expect("history");
    server.kill9();
    let o = server.rc(p.path(), &["history", "web", "--json"]);
    ok(&o);
    let offline: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(offline, live, "the same history from the records");
    let o = server.rc(p.path(), &["status", "--json"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["services"][0]["service"], "web");
    assert_eq!(v["services"][0]["current_release"], 1);
    assert!(
        stderr(&o).contains("no server is running"),
        "{}",
        stderr(&o)
    );
    let o = server.rc(p.path(), &["history", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no service \"nosuch\" is recorded"),
        "{}",
        stderr(&o)
    );
}

/// `plan -out FILE` then `apply FILE` applies exactly that plan, from anywhere; once the state
/// moved, the saved plan is refused and nothing is applied.
#[test]
fn a_saved_plan_applies_as_planned_or_not_at_all() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start();
    let p = Project::new();
    p.write("MESSAGE = \"v1\"", "", "");
    let first = p.path().join("first.plan");
    let first = first.to_str().expect("utf-8");
    ok(&server.rc(p.path(), &["plan", "-out", first]));
    let mode = std::fs::metadata(first)
        .expect("saved")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "a saved plan is private");
    ok(&server.rc(Path::new("/"), &["apply", first]));
    assert_eq!(crate::deploy::body_now(p.port), "v1 from hello 0.1.0\n");

    p.write("MESSAGE = \"v2\"", "", "");
    let second = p.path().join("second.plan");
    let second = second.to_str().expect("utf-8");
    ok(&server.rc(p.path(), &["plan", "-out", second]));
    // The state moves: another change is applied before the saved plan.
    p.write("MESSAGE = \"v3\"", "", "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let o = server.rc(p.path(), &["apply", second]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("no longer holds"), "{}", stderr(&o));
    assert_eq!(crate::deploy::body_now(p.port), "v3 from hello 0.1.0\n");
    let h: serde_json::Value =
        serde_json::from_slice(&server.rc(p.path(), &["history", "web", "--json"]).stdout)
            .expect("history");
    assert_eq!(h["releases"].as_array().map(Vec::len), Some(2), "{h}");
    // Not a plan at all.
    let o = server.rc(p.path(), &["apply", "recast.hcl"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not a plan saved by"),
        "{}",
        stderr(&o)
    );
}

/// Colour only when asked for or on a terminal (never in a pipe, never with NO_COLOR), and
/// `-q` keeps notes off stderr.
#[test]
fn colour_and_quiet_follow_the_user() {
    let data = tempfile::tempdir().expect("tmp");
    let p = Project::new();
    p.write("MESSAGE = \"v1\"", "", "");
    let run = |args: &[&str], no_color: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_recast"));
        c.args(args)
            .current_dir(p.path())
            .env("RECAST_DATA_DIR", data.path());
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        c.output().expect("run")
    };
    let green_plus = "\x1b[32m+\x1b[0m service web";
    let o = run(&["plan", "--color", "always"], false);
    ok(&o);
    assert!(stdout(&o).contains(green_plus), "{:?}", stdout(&o));
    for (args, no_color) in [
        (&["plan"][..], false),
        (&["plan", "--color", "never"], false),
        (&["plan", "--color", "auto"], true),
    ] {
        let o = run(args, no_color);
        ok(&o);
        assert!(
            !stdout(&o).contains('\x1b') && stdout(&o).contains("+ service web"),
            "{args:?} NO_COLOR={no_color}: {:?}",
            stdout(&o)
        );
    }
    let o = run(&["rollback", "web", "--color", "always"], false);
    assert!(
        stderr(&o).starts_with("\x1b[31merror:\x1b[0m no recast server is running")
            && stderr(&o).contains("\x1b[36mhint:\x1b[0m"),
        "{:?}",
        stderr(&o)
    );
    let o = run(&["rollback", "web"], false);
    assert!(
        stderr(&o).starts_with("error: no recast server"),
        "{:?}",
        stderr(&o)
    );
    // A note (no server: the recorded state) is said, unless -q.
    let o = run(&["status"], false);
    ok(&o);
    assert!(
        stderr(&o).contains("note: no server is running"),
        "{}",
        stderr(&o)
    );
    let o = run(&["status", "-q"], false);
    ok(&o);
    assert_eq!(stderr(&o), "", "-q says nothing");
    let o = run(&["status", "-q", "-v"], false);
    assert_eq!(o.status.code(), Some(2), "-q and -v conflict");
}

/// Every command that takes `--json` answers a failure with exactly one JSON document on stdout,
/// `{"error": {"message", "hint"}}`, and exit 1.
#[test]
fn every_command_fails_in_json_under_json() {
    let data = tempfile::tempdir().expect("tmp");
    let out = data.path().join("out");
    let out = out.to_str().expect("utf-8");
    let cases: &[&[&str]] = &[
        &["build", "-f", "/nonexistent.hcl"],
        &["test", "-f", "/nonexistent.hcl"],
        &["lock", "-f", "/nonexistent.hcl"],
        &["plan", "-f", "/nonexistent.hcl"],
        &["apply", "-f", "/nonexistent.hcl", "--yes"],
        &["apply", "/nonexistent.plan"],
        &["destroy", "-f", "/nonexistent.hcl", "--yes"],
        &["status", "nosuch"],
        &["history", "nosuch"],
        &["rollback", "web"],
        &["promote", "web"],
        &["abort", "web"],
        &["pause", "web"],
        &["resume", "web"],
        &["drift"],
        &[
            "promote-release",
            "web",
            "--from",
            "a",
            "--to",
            "b",
            "--yes",
        ],
        &["image", "inspect", "nosuch:1"],
        &["image", "export", "nosuch:1", "-o", out],
        &["image", "import", "/nonexistent.tar"],
        &["image", "push", "nosuch:1", "127.0.0.1:1/x:1"],
        &["image", "rm", "nosuch:1"],
        &["volume", "ls"],
        &["volume", "snapshots", "web"],
        &["state", "backup", "/nonexistent/dir/x.db"],
        &["project", "move", "p", "--to", "h"],
    ];
    for args in cases {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_recast"))
            .args(*args)
            .arg("--json")
            .current_dir(data.path())
            .env("RECAST_DATA_DIR", data.path())
            .env_remove("RECAST_STATE")
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(1), "recast {args:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "recast {args:?} --json: stdout is not one JSON document ({e}): {:?}",
                stdout(&o)
            )
        });
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "recast {args:?} --json: {v}"
        );
    }
}
