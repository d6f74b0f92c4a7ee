//! The server's log (issue 17): one line per thing that matters, as JSON lines with
//! `--log-format json`, as plain text when stderr is not a terminal, in colour on one.

use crate::deploy::{Project, Server, ok, wait_for};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Everything the server said on stderr (the harness sends it to `server-test.log`).
fn said(server: &Server) -> String {
    std::fs::read_to_string(server.data.join("server-test.log")).unwrap_or_default()
}

/// Every line the server said, each parsed as a JSON object with a timestamp, a level and a
/// message; a line that is not one fails the test, naming it.
fn json_lines(server: &Server) -> Vec<Value> {
    let text = said(server);
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l:?}\n{text}"));
            assert!(
                v["timestamp"].as_str().is_some_and(|t| t.starts_with("20")),
                "a log line without a timestamp: {l}"
            );
            assert!(
                matches!(v["level"].as_str(), Some("INFO" | "WARN" | "ERROR")),
                "a log line without a level: {l}"
            );
            assert!(
                v["message"].is_string(),
                "a log line without a message: {l}"
            );
            v
        })
        .collect()
}

/// The index of the first line from `from` on with `message` for which `also` holds.
fn find(lines: &[Value], from: usize, message: &str, also: impl Fn(&Value) -> bool) -> usize {
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, v)| v["message"] == message && also(v))
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            let shown: Vec<String> = lines.iter().map(Value::to_string).collect();
            panic!(
                "no log line {message:?} (with its fields) after line {from}:\n{}",
                shown.join("\n")
            )
        })
}

/// Whether the server logged event `kind` of `web` whose message contains `text`.
fn has_event(server: &Server, kind: &str, text: &str) -> bool {
    json_lines(server)
        .iter()
        .any(|v| v["event"] == kind && v["message"].as_str().is_some_and(|m| m.contains(text)))
}

const CANARY: &str = r#"strategy = "canary"
    step {
      weight = 20
      pause  = "60s"
    }
    analysis {
      interval           = "300ms"
      min_requests       = 50
      max_error_rate     = 0.05
      inconclusive_limit = 1000
    }"#;

#[test]
fn json_logs_follow_an_apply_a_canary_its_abort_and_a_rollback() {
    let d = tempfile::tempdir().expect("tmp");
    let server = Server::start_with(d, vec!["--log-format".into(), "json".into()]);
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, CANARY, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    p.write(r#"MESSAGE = "v2""#, CANARY, "");
    ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
    wait_for("an analysis verdict of release 2 in the log", 60, || {
        json_lines(&server)
            .iter()
            .any(|v| v["message"] == "analysis verdict" && v["release"] == 2)
    });
    ok(&server.rc(p.path(), &["abort", "web"]));
    wait_for("the rollback of release 2 in the log", 30, || {
        has_event(&server, "rollout.rolled_back", "release 2: aborted")
    });
    // A third release, then `recast rollback`: back to release 1 (2 was rolled back).
    p.write(r#"MESSAGE = "v3""#, "", "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    ok(&server.rc(p.path(), &["rollback", "web"]));
    wait_for("the rollback command in the log", 30, || {
        has_event(
            &server,
            "rollout.rolled_back",
            "rollback from release 3 to 1",
        )
    });

    let lines = json_lines(&server);
    let started = find(&lines, 0, "server started", |v| v["api"].is_string());
    // The second apply, step by step, in order, each line with its fields.
    let first = find(&lines, started, "apply received", |v| v["apply"].is_u64());
    let received = find(&lines, first + 1, "apply received", |v| v["apply"].is_u64());
    let project = lines[received]["project"].clone();
    let apply = lines[received]["apply"].clone();
    assert!(
        project.as_str().is_some_and(|p| !p.is_empty()),
        "{}",
        lines[received]
    );
    let of_release_2 =
        |v: &Value| v["project"] == project && v["service"] == "web" && v["release"] == 2;
    let built = find(&lines, received, "image built", |v| {
        v["apply"] == apply && v["image"] == "web" && v["digest"].is_string()
    });
    let rollout = find(&lines, built, "rollout started", |v| {
        of_release_2(v) && v["from"] == 1 && v["strategy"] == "canary" && v["apply"] == apply
    });
    let step = find(&lines, rollout, "rollout step started", |v| {
        of_release_2(v) && v["step"] == 1 && v["detail"].as_str().is_some_and(|d| d.contains("20%"))
    });
    let verdict = find(&lines, step, "analysis verdict", |v| {
        of_release_2(v)
            && v["result"] == "inconclusive"
            && v["canary_requests"].is_u64()
            && v["canary_error_rate"].is_number()
            && v["reason"].is_string()
    });
    let abort = find(&lines, verdict, "abort requested", |v| {
        v["project"] == project && v["service"] == "web"
    });
    let back = find(&lines, abort, "rollback step", |v| {
        of_release_2(v)
            && v["level"] == "WARN"
            && v["detail"]
                .as_str()
                .is_some_and(|d| d.contains("rolling back: aborted by `recast abort`"))
    });
    let finished = find(&lines, step, "rollout step finished", |v| {
        of_release_2(v) && v["step"] == 1 && v["ms"].is_u64()
    });
    assert!(
        finished < back,
        "the running step ends before the rollback starts"
    );
    let ended = find(&lines, back, "release 2: aborted by `recast abort`", |v| {
        v["event"] == "rollout.rolled_back"
            && v["level"] == "WARN"
            && v["project"] == project
            && v["service"] == "web"
    });
    find(&lines, ended, "apply failed", |v| {
        v["apply"] == apply && v["project"] == project && v["state"] == "failed"
    });
    // `recast rollback`: asked for, then done.
    let asked = find(&lines, ended, "rollback requested", |v| {
        v["project"] == project && v["service"] == "web"
    });
    find(&lines, asked, "rollback from release 3 to 1", |v| {
        v["event"] == "rollout.rolled_back" && v["project"] == project
    });
}

#[test]
fn human_logs_are_plain_lines_when_stderr_is_not_a_terminal() {
    let server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, "", "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    p.write(r#"MESSAGE = "v2""#, "", "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let text = said(&server);
    assert!(
        !text.contains('\x1b'),
        "escape sequences in a file:\n{text}"
    );
    for l in text.lines() {
        let mut words = l.split_whitespace();
        let (at, level) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        assert!(
            at.starts_with("20") && at.ends_with('Z') && ["INFO", "WARN", "ERROR"].contains(&level),
            "not a log line (time, level, message): {l:?}\n{text}"
        );
    }
    let has = |words: &[&str]| text.lines().any(|l| words.iter().all(|w| l.contains(w)));
    assert!(
        has(&["INFO", "apply received", "project=", "apply=2"]),
        "{text}"
    );
    assert!(
        has(&[
            "INFO",
            "rollout started",
            "service=",
            "release=2",
            "from=1",
            "strategy="
        ]),
        "{text}"
    );
    assert!(has(&["rollout step started", "step=1"]), "{text}");
    assert!(
        has(&["event=\"rollout.finished\"", "release 2 is live"]),
        "{text}"
    );
    assert!(
        has(&["INFO", "apply finished", "state=\"succeeded\""]),
        "{text}"
    );
}

/// `recast server` on a terminal (a pseudo-terminal from `script`) with `NO_COLOR` as given:
/// what the terminal showed until the server said it started.
fn on_a_terminal(no_color: Option<&str>) -> String {
    let data = tempfile::tempdir().expect("tmp");
    let shown = data.path().join("terminal.txt");
    let exe = env!("CARGO_BIN_EXE_recast");
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", &format!("'{exe}' server --listen 127.0.0.1:0")])
        .arg("/dev/null")
        .env("RECAST_DATA_DIR", data.path())
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&shown).expect("terminal.txt"))
        .stderr(Stdio::null());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let mut script = cmd.spawn().expect("run script (util-linux)");
    let info = data.path().join("server.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&shown).unwrap_or_default();
        if info.exists() && text.contains("server started") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not start on a terminal:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let info: Value =
        serde_json::from_slice(&std::fs::read(&info).expect("server.json")).expect("server.json");
    let pid = info["pid"].as_u64().expect("the server's pid");
    let stopped = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success(), "stopping the server (pid {pid})");
    let status = script.wait().expect("wait for script");
    assert!(
        status.success(),
        "the server on a terminal: {status}\n{text}"
    );
    // Nothing was deployed: no data plane was started that would outlive the test.
    text
}

#[test]
fn human_logs_are_coloured_on_a_terminal_unless_no_color() {
    let coloured = on_a_terminal(None);
    assert!(
        coloured.contains("\x1b["),
        "no colour on a terminal:\n{coloured}"
    );
    for no_color in ["1", "yes"] {
        let plain = on_a_terminal(Some(no_color));
        assert!(
            !plain.contains('\x1b'),
            "colour with NO_COLOR={no_color}:\n{plain}"
        );
        assert!(plain.contains(" INFO server started"), "{plain}");
    }
}
