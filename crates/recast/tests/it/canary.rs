//! Canary releases with automated analysis (issue 6), under load from real clients.

use crate::deploy::{Load, Project, Server, body_now, get, ok, read_message, wait_for};
use crate::stdout;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn canary(steps: &str, analysis: &str) -> String {
    format!("strategy = \"canary\"\n    {steps}\n    {analysis}")
}

const ANALYSIS: &str = r#"analysis {
      interval        = "300ms"
      min_requests    = 10
      max_error_rate  = 0.05
      max_p99_latency = "200ms"
    }"#;

fn status(server: &Server, p: &Project) -> serde_json::Value {
    let out = server.rc(p.path(), &["status", "web", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn at_step(server: &Server, p: &Project, text: &str) -> bool {
    status(server, p)["services"][0]["rollout"]
        .as_str()
        .is_some_and(|r| r.contains(text))
}

#[test]
fn a_healthy_canary_walks_its_steps_and_completes() {
    let server = Server::start();
    let p = Project::new();
    let rollout = canary(
        "step {\n      weight = 20\n      pause  = \"1s\"\n    }\n    step {\n      weight = 50\n      pause  = \"1s\"\n    }",
        ANALYSIS,
    );
    p.write(r#"MESSAGE = "v1""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let load = Load::start(p.port);
    p.write(r#"MESSAGE = "v2""#, &rollout, "");
    let t = Instant::now();
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "the pauses were skipped"
    );
    let (n, failures, bodies) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(n > 100 && bodies.len() == 2, "{n} {bodies:?}");
    assert_eq!(body_now(p.port), "v2 from hello 0.1.0\n");
    let h = server.rc(p.path(), &["history", "web", "--json"]);
    let hv: serde_json::Value = serde_json::from_slice(&h.stdout).expect("json");
    let verdicts = hv["verdicts"].as_array().expect("verdicts");
    assert!(
        verdicts
            .iter()
            .any(|v| v["result"] == "pass" && v["canary"]["requests"].as_u64() >= Some(10)),
        "{verdicts:?}"
    );
    wait_for("the old release to go", 20, || server.instances() == 3);
}

#[test]
fn a_failing_canary_is_rolled_back_at_the_first_step() {
    let server = Server::start();
    let p = Project::new();
    let rollout = canary(
        "step {\n      weight = 10\n      pause  = \"20s\"\n    }",
        ANALYSIS,
    );
    p.write(r#"MESSAGE = "v1""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let load = Load::start(p.port);
    load.flowing(50);
    p.write(r#"MESSAGE = "v2", FAIL_RATE = "0.3""#, &rollout, "");
    let t = Instant::now();
    let out = server.rc(p.path(), &["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "waited for the pause instead of the verdict"
    );
    assert!(
        stdout(&out).contains("analysis failed: error rate"),
        "{}",
        stdout(&out)
    );
    load.flowing(50);
    let (n, failures, _) = load.finish();
    // Clients only ever saw the canary's share of its failures: 30% of at most 10% of requests.
    let share = failures.len() as f64 / (n as f64 + failures.len() as f64);
    assert!(!failures.is_empty(), "the canary got no traffic");
    assert!(
        share < 0.10 * 0.30 * 1.5,
        "{} of {} requests failed ({share:.3})",
        failures.len(),
        n
    );
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
}

#[test]
fn a_slow_canary_is_rolled_back() {
    let server = Server::start();
    let p = Project::new();
    // Slow answers mean few of them: a longer window and a lower floor.
    let analysis = r#"analysis {
      interval           = "1s"
      min_requests       = 3
      max_p99_latency    = "200ms"
      inconclusive_limit = 10
    }"#;
    let rollout = canary(
        "step {\n      weight = 50\n      pause  = \"20s\"\n    }",
        analysis,
    );
    p.write(r#"MESSAGE = "v1""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let load = Load::start(p.port);
    p.write(r#"MESSAGE = "v2", LATENCY_MS = "400""#, &rollout, "");
    let out = server.rc(p.path(), &["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("above max_p99_latency 200 ms"),
        "{}",
        stdout(&out)
    );
    let (_, failures, _) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn without_traffic_the_verdict_is_inconclusive_never_a_pass() {
    let server = Server::start();
    let p = Project::new();
    let analysis = r#"analysis {
      interval           = "300ms"
      min_requests       = 50
      max_error_rate     = 0.05
      inconclusive_limit = 2
    }"#;
    let rollout = canary(
        "step {\n      weight = 50\n      pause  = \"20s\"\n    }",
        analysis,
    );
    p.write(r#"MESSAGE = "v1""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    p.write(r#"MESSAGE = "v2""#, &rollout, "");
    let out = server.rc(p.path(), &["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("analysis inconclusive 3 times in a row"),
        "{}",
        stdout(&out)
    );
    let h = server.rc(p.path(), &["history", "web", "--json"]);
    let hv: serde_json::Value = serde_json::from_slice(&h.stdout).expect("json");
    let results: Vec<&str> = hv["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .map(|v| v["result"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(results, ["inconclusive"; 3]);
}

#[test]
fn abort_during_a_pause_rolls_back_at_once_without_failures() {
    let server = Server::start();
    let p = Project::new();
    let rollout = canary("step {\n      weight = 20\n    }", "");
    p.write(r#"MESSAGE = "v1""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let load = Load::start(p.port);
    p.write(r#"MESSAGE = "v2""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
    wait_for("the canary step", 30, || {
        at_step(&server, &p, "step 1/1: 20%")
    });
    ok(&server.rc(p.path(), &["abort", "web"]));
    wait_for("the rollback", 10, || {
        status(&server, &p)["services"][0]["rollout"].is_null()
    });
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
    load.flowing(50);
    let (n, failures, bodies) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(n > 50 && bodies.len() == 2, "{n} {bodies:?}");
    let h = server.rc(p.path(), &["history", "web", "--json"]);
    let hv: serde_json::Value = serde_json::from_slice(&h.stdout).expect("json");
    assert_eq!(hv["releases"][1]["reason"], "aborted by `recast abort`");
}

#[test]
fn pause_holds_and_resume_continues() {
    let server = Server::start();
    let p = Project::new();
    let rollout = canary(
        "step {\n      weight = 50\n      pause  = \"1s\"\n    }",
        "",
    );
    p.write(r#"MESSAGE = "v1""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    p.write(r#"MESSAGE = "v2""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
    wait_for("the canary step", 30, || {
        at_step(&server, &p, "step 1/1: 50%")
    });
    ok(&server.rc(p.path(), &["pause", "web"]));
    // Deliberately time, not a condition: the test proves nothing moves while paused (the step
    // pause is 1 s, so 2.5 s is well past it).
    std::thread::sleep(Duration::from_millis(2500));
    let st = status(&server, &p);
    assert!(
        st["services"][0]["rollout"]
            .as_str()
            .is_some_and(|r| r.contains("step 1/1")),
        "{st}"
    );
    assert_eq!(st["services"][0]["paused"], true);
    ok(&server.rc(p.path(), &["resume", "web"]));
    wait_for("release 2 to go live", 20, || {
        status(&server, &p)["services"][0]["current_release"] == 2
    });
}

#[test]
fn the_measured_split_matches_the_weight() {
    let server = Server::start();
    let p = Project::new();
    let rollout = canary("step {\n      weight = 30\n    }", "");
    p.write(r#"MESSAGE = "v1""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    p.write(r#"MESSAGE = "v2""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
    wait_for("the canary step", 30, || {
        at_step(&server, &p, "step 1/1: 30%")
    });
    let mut conn = TcpStream::connect(("127.0.0.1", p.port)).expect("connect");
    let mut v2 = 0;
    for _ in 0..2000 {
        let (status, body, c) = get(conn).expect("get");
        assert_eq!(status, 200);
        v2 += usize::from(body.starts_with("v2 "));
        conn = c.expect("the route keeps the connection alive");
    }
    let pct = v2 as f64 / 20.0;
    assert!(
        (27.0..=33.0).contains(&pct),
        "{pct}% of 2,000 requests went to the canary, weight 30"
    );
    ok(&server.rc(p.path(), &["abort", "web"]));
}

/// A webhook receiver on loopback: records every JSON body; answers `status`.
fn hook_server(
    status: u16,
) -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            if let Ok((_, body)) = read_message(&mut c)
                && let Ok(v) = serde_json::from_str(&body)
            {
                s2.lock().expect("lock").push(v);
            }
            let _ = write!(
                c,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (port, seen)
}

fn with_hook(p: &Project, port: u16, events: &str) {
    let path = p.path().join("recast.hcl");
    let mut spec = std::fs::read_to_string(&path).expect("spec");
    spec.push_str(&format!("\nwebhook \"chat\" {{\n  url    = \"http://127.0.0.1:{port}/hook\"\n  events = [{events}]\n  timeout = \"2s\"\n}}\n"));
    std::fs::write(path, spec).expect("write");
}

#[test]
fn webhooks_hear_rollout_events_and_a_failing_pre_promote_hook_blocks_promotion() {
    let server = Server::start();
    let p = Project::new();
    let (port, seen) = hook_server(200);
    let rollout = canary(
        "step {\n      weight = 50\n      pause  = \"200ms\"\n    }",
        "",
    );
    p.write(r#"MESSAGE = "v1""#, &rollout, "");
    with_hook(
        &p,
        port,
        r#""rollout.started", "rollout.step", "rollout.finished""#,
    );
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    p.write(r#"MESSAGE = "v2""#, &rollout, "");
    with_hook(
        &p,
        port,
        r#""rollout.started", "rollout.step", "rollout.finished""#,
    );
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    wait_for("the webhook calls", 10, || {
        seen.lock()
            .expect("lock")
            .iter()
            .any(|v| v["event"] == "rollout.finished" && v["release"] == 2)
    });
    let events: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| v["release"] == 2)
        .map(|v| v["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        events.contains(&"rollout.started".to_string())
            && events.contains(&"rollout.step".to_string()),
        "{events:?}"
    );

    // A pre_promote hook answering 500 blocks the promotion: the rollout goes back.
    let (bad, _) = hook_server(500);
    p.write(r#"MESSAGE = "v3""#, &rollout, "");
    with_hook(&p, bad, r#""rollout.pre_promote""#);
    let out = server.rc(p.path(), &["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("pre_promote webhook chat blocked the promotion"),
        "{}",
        stdout(&out)
    );
    assert_eq!(body_now(p.port), "v2 from hello 0.1.0\n");
}

#[test]
fn blue_green_is_judged_after_the_switch_and_switched_back_on_failure() {
    let server = Server::start();
    let p = Project::new();
    let rollout = format!(
        "strategy = \"blue_green\"\n    auto_promote_after = \"0s\"\n    scale_down_delay = \"1m\"\n    {ANALYSIS}"
    );
    p.write(r#"MESSAGE = "v1""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let load = Load::start(p.port);
    p.write(r#"MESSAGE = "v2", FAIL_RATE = "0.5""#, &rollout, "");
    let out = server.rc(p.path(), &["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("analysis failed: error rate"),
        "{}",
        stdout(&out)
    );
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
    let (_, failures, _) = load.finish();
    assert!(!failures.is_empty(), "v2 never served");
}

#[test]
fn metrics_and_the_event_stream() {
    use std::io::{BufRead, BufReader, Write};
    let server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    for _ in 0..5 {
        assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
    }
    let data = server.data.clone();
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("server.json")).expect("server.json"))
            .expect("json");
    let addr = info["addr"].as_str().expect("addr").to_string();
    let token = std::fs::read_to_string(data.join("token")).expect("token");
    let request = |path: &str| {
        let mut s = TcpStream::connect(&addr).expect("api");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").expect("send");
        s
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut request("/metrics"), &mut text).expect("read");
    assert!(
        text.contains(r#"recast_requests_total{route="web",service="web",project="proj"#),
        "{text}"
    );
    assert!(
        text.contains("recast_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(
        text.contains("recast_instance_healthy{service=\"web\""),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("recast_requests_total{"))
        .expect("a requests line");
    assert!(line.ends_with(" 5"), "{line}");

    let mut r = BufReader::new(request("/v1/events?since=0"));
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut l = String::new();
    while Instant::now() < deadline && !got.iter().any(|e: &String| e.contains("rollout.finished"))
    {
        l.clear();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        if l.starts_with("event: ") {
            got.push(l.trim().to_string());
        }
    }
    assert!(
        got.contains(&"event: rollout.started".to_string())
            && got.contains(&"event: rollout.finished".to_string()),
        "{got:?}"
    );
    // Without the token, nothing.
    let mut s = TcpStream::connect(&addr).expect("api");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).expect("read");
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
}

#[test]
fn sticky_keeps_a_client_on_one_release() {
    use std::io::{Read, Write};
    let server = Server::start();
    let p = Project::new();
    let rollout = canary("sticky = true\n    step {\n      weight = 50\n    }", "");
    p.write(r#"MESSAGE = "v1""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    p.write(r#"MESSAGE = "v2""#, &rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
    wait_for("the canary step", 30, || {
        at_step(&server, &p, "step 1/1: 50%")
    });
    let ask = |cookie: Option<&str>| -> (String, Option<String>) {
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).expect("connect");
        let c = cookie
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: x\r\n{c}Connection: close\r\n\r\n"
        )
        .expect("send");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read");
        let set = resp.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie:")
                .then(|| l[11..].trim().split(';').next().unwrap_or("").to_string())
        });
        (
            resp.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
            set,
        )
    };
    let (first, cookie) = ask(None);
    let cookie = cookie.expect("a sticky answer sets the recast-release cookie");
    for _ in 0..20 {
        assert_eq!(
            ask(Some(&cookie)).0,
            first,
            "the client moved to another release"
        );
    }
    // Without the cookie, requests still split.
    let bodies: std::collections::BTreeSet<String> = (0..20).map(|_| ask(None).0).collect();
    assert_eq!(bodies.len(), 2);
    ok(&server.rc(p.path(), &["abort", "web"]));
}
