//! The dashboard (issue 17) in a real browser: Debian's headless Chromium, driven through
//! chromedriver's WebDriver HTTP API on loopback, watches a canary under load, shows what the
//! API says, and aborts it with a click. Screenshots go to `target/test-artifacts/dashboard/`.

use crate::deploy::{Load, Project, Server, body_now, free_port, ok, wait_for};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`): (status, head, body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port} for {method} {path}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("sending {method} {path} to port {port}: {e}"));
    // Read to the end of the body its Content-Length gives (chromedriver keeps connections
    // open), or to the close; a stream (the event stream) up to its head only.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading the answer to {method} {path} on port {port}: {e}"),
        }
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            if path.starts_with("/v1/events") || len.is_some_and(|n| raw.len() >= end + 4 + n) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Reply {
        status: head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    }
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.head, self.body))
    }
}

/// A running chromedriver with one headless Chromium session; both go on drop.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// The key of a WebDriver element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/deps --test installs it)");
        let profile = tempfile::tempdir().expect("tmp");
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        wait_for("chromedriver to answer", 30, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http(port, "GET", "/status", &[], "").json()["value"]["ready"] == true
        });
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1400,1800",
                    format!("--user-data-dir={}", b._profile.path().display())],
            },
        }}});
        let v = b
            .call("POST", "/session", caps)
            .expect("a new Chromium session");
        b.session = v["sessionId"]
            .as_str()
            .expect("the session's id")
            .to_string();
        b
    }

    /// One WebDriver command; its `value`, or the error WebDriver gave.
    fn call(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let body = if method == "GET" || method == "DELETE" {
            String::new()
        } else {
            body.to_string()
        };
        let r = http(
            self.port,
            method,
            path,
            &[("Content-Type", "application/json")],
            &body,
        );
        let v = r.json();
        if r.status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(format!("{method} {path}: {} {}", r.status, v["value"]))
        }
    }

    /// A command of this session (`/session/ID` + `path`).
    fn cmd(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }))
            .expect("navigate");
    }

    /// The elements matching a CSS selector (within `under`, an element, when given).
    fn find(&self, css: &str, under: Option<&str>) -> Result<Vec<String>, String> {
        let path = under.map_or("/elements".to_string(), |e| {
            format!("/element/{e}/elements")
        });
        let v = self.cmd(
            "POST",
            &path,
            json!({ "using": "css selector", "value": css }),
        )?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The one element matching `css`, waiting up to `secs` for it.
    fn wait_one(&self, css: &str, secs: u64) -> String {
        let mut found = None;
        wait_for(&format!("an element {css} on the page"), secs, || {
            found = self.find(css, None).ok().and_then(|v| v.into_iter().next());
            found.is_some()
        });
        found.expect("found")
    }

    fn text(&self, element: &str) -> Result<String, String> {
        let v = self.cmd("GET", &format!("/element/{element}/text"), Value::Null)?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    fn attr(&self, element: &str, name: &str) -> Result<String, String> {
        let v = self.cmd(
            "GET",
            &format!("/element/{element}/attribute/{name}"),
            Value::Null,
        )?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    fn click(&self, element: &str) {
        self.cmd("POST", &format!("/element/{element}/click"), json!({}))
            .unwrap_or_else(|e| panic!("clicking: {e}"));
    }

    fn type_in(&self, element: &str, text: &str) {
        self.cmd(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .unwrap_or_else(|e| panic!("typing: {e}"));
    }

    /// Wait for a `confirm()` dialog, return its text and accept it.
    fn accept_dialog(&self) -> String {
        self.answer_dialog("accept")
    }

    /// Wait for a `confirm()` dialog, return its text and answer it (`accept` or `dismiss`).
    fn answer_dialog(&self, answer: &str) -> String {
        let mut text = String::new();
        wait_for("the confirmation dialog", 10, || {
            match self.cmd("GET", "/alert/text", Value::Null) {
                Ok(v) => {
                    text = v.as_str().unwrap_or_default().to_string();
                    true
                }
                Err(_) => false,
            }
        });
        self.cmd("POST", &format!("/alert/{answer}"), json!({}))
            .unwrap_or_else(|e| panic!("answering the dialog ({answer}): {e}"));
        text
    }

    /// The visible page's text (for messages).
    fn page_text(&self) -> String {
        self.find("body", None)
            .ok()
            .and_then(|b| b.into_iter().next())
            .and_then(|b| self.text(&b).ok())
            .unwrap_or_default()
    }

    /// Save a PNG screenshot as `target/test-artifacts/dashboard/NAME.png`; its path.
    fn screenshot(&self, name: &str) -> PathBuf {
        let v = self
            .cmd("GET", "/screenshot", Value::Null)
            .expect("screenshot");
        let png = base64(v.as_str().expect("base64 PNG"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        let dir = artifacts();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), Value::Null);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `target/test-artifacts/dashboard` (`$CARGO_TARGET_DIR` when set, else the target directory
/// this test binary was built in).
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            // target/debug/deps/it-HASH
            exe.ancestors().nth(3).map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("test-artifacts/dashboard")
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for q in clean.chunks(4) {
        let data: Vec<u8> = q.iter().copied().filter(|&c| c != b'=').collect();
        let n = data
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (val(c) << (18 - 6 * i)));
        out.extend(n.to_be_bytes()[1..data.len()].iter());
    }
    out
}

/// The server's API port (`server.json`) and token (`token`).
fn api(server: &Server) -> (u16, String) {
    let info = std::fs::read(server.data.join("server.json")).expect("server.json");
    let info: Value = serde_json::from_slice(&info).expect("server.json");
    let addr = info["addr"].as_str().expect("addr");
    let port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
    let token = std::fs::read_to_string(server.data.join("token")).expect("token");
    (port.expect("API port"), token.trim().to_string())
}

fn status(port: u16, token: &str) -> Value {
    let r = http(
        port,
        "GET",
        "/v1/status?service=web",
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["services"][0].clone()
}

/// The split the API gives: (release, percent), by release.
fn api_split(svc: &Value) -> Vec<(i64, f64)> {
    let mut v: Vec<(i64, f64)> = svc["traffic"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["release"].as_i64().unwrap_or(-1),
                        t["percent"].as_f64().unwrap_or(-1.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|(r, _)| *r);
    v
}

/// The split the page shows: (release, percent shown), by release; `None` while it changes
/// under the reading (a row replaced by the next poll).
fn page_split(b: &Browser) -> Option<Vec<(i64, f64)>> {
    let rows = b
        .find("article[data-service=\"web\"] tr.split", None)
        .ok()?;
    let mut v = Vec::new();
    for row in rows {
        let release = b.attr(&row, "data-release").ok()?.parse().ok()?;
        let cell = b.find("td.percent", Some(&row)).ok()?.into_iter().next()?;
        let shown = b.text(&cell).ok()?;
        v.push((release, shown.trim_end_matches('%').parse().ok()?));
    }
    v.sort_by_key(|(r, _)| *r);
    Some(v)
}

fn same_split(page: &[(i64, f64)], api: &[(i64, f64)]) -> bool {
    page.len() == api.len()
        && page
            .iter()
            .zip(api)
            .all(|(a, b)| a.0 == b.0 && (a.1 - b.1).abs() <= 0.1)
}

/// The verdicts the page shows: (at_ms, release, result, text).
fn page_verdicts(b: &Browser) -> Option<Vec<(u64, i64, String, String)>> {
    let items = b
        .find("article[data-service=\"web\"] li.verdict", None)
        .ok()?;
    let mut v = Vec::new();
    for li in items {
        v.push((
            b.attr(&li, "data-at").ok()?.parse().ok()?,
            b.attr(&li, "data-release").ok()?.parse().ok()?,
            b.attr(&li, "data-result").ok()?,
            b.text(&li).ok()?,
        ));
    }
    Some(v)
}

/// Every verdict the page shows is one of the API's, with its result, reason and numbers.
fn verdicts_match(page: &[(u64, i64, String, String)], api: &Value) -> bool {
    let api = api.as_array().cloned().unwrap_or_default();
    !page.is_empty()
        && page.iter().all(|(at, release, result, text)| {
            api.iter().any(|v| {
                v["at_ms"].as_u64() == Some(*at)
                    && v["release"].as_i64() == Some(*release)
                    && v["result"].as_str() == Some(result.as_str())
                    && text.contains(v["reason"].as_str().unwrap_or("?"))
                    && text.contains(&format!("canary: {} req", v["canary"]["requests"]))
                    && text.contains(&format!("stable: {} req", v["stable"]["requests"]))
            })
        })
}

/// The login form, sessions and their cookie, and the CSRF belt, over plain HTTP.
fn check_login(port: u16, token: &str) -> String {
    let anon = http(port, "GET", "/", &[], "");
    assert_eq!(anon.status, 200, "{}", anon.head);
    assert!(
        anon.body
            .contains("<form id=\"login\" method=\"post\" action=\"/login\">")
            && anon.body.contains("name=\"token\""),
        "GET / without a session is not the login form: {}",
        anon.body
    );
    for data in ["data-service", "app.js", "sha256:", "v1 from"] {
        assert!(!anon.body.contains(data), "the login page shows {data}");
    }
    let unauth = http(port, "GET", "/v1/status", &[], "");
    assert_eq!(unauth.status, 401, "{}", unauth.body);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let wrong = http(port, "POST", "/login", &form, "token=not-the-token");
    assert_eq!(wrong.status, 401, "{}", wrong.head);
    assert!(wrong.header("set-cookie").is_none(), "{}", wrong.head);
    assert!(wrong.body.contains("Wrong token.") && wrong.body.contains("name=\"token\""));
    let right = http(port, "POST", "/login", &form, &format!("token={token}"));
    assert_eq!(right.status, 303, "{}", right.head);
    assert_eq!(right.header("location").as_deref(), Some("/"));
    let cookie = right.header("set-cookie").expect("a session cookie");
    let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    for a in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(&a), "the cookie lacks {a}: {cookie}");
    }
    let pair = attrs[0].to_string();
    let id = pair
        .strip_prefix("recast_session=")
        .expect("recast_session");
    assert!(
        id.len() == 64 && id.bytes().all(|c| c.is_ascii_hexdigit()) && !id.contains(token),
        "the session id: {id}"
    );
    let page = http(port, "GET", "/", &[("Cookie", &pair)], "");
    assert!(page.body.contains("/dashboard/app.js"), "{}", page.body);
    let st = http(port, "GET", "/v1/status", &[("Cookie", &pair)], "");
    assert_eq!(st.status, 200, "{}", st.body);
    assert_eq!(st.json()["services"][0]["service"], "web");
    let events = http(port, "GET", "/v1/events", &[("Cookie", &pair)], "");
    assert_eq!(events.status, 200, "{}", events.head);
    assert!(events.head.contains("text/event-stream"), "{}", events.head);
    pair
}

/// A browser POST from another origin is refused, even with the session cookie; from the
/// listener's own origin it is not.
fn check_origin(port: u16, cookie: &str) {
    let body = r#"{"service":"web"}"#;
    let foreign = [("Cookie", cookie), ("Origin", "http://evil.example")];
    let r = http(port, "POST", "/v1/pause", &foreign, body);
    assert_eq!(
        r.status, 401,
        "a cross-site POST was let through: {}",
        r.body
    );
    let own = format!("http://127.0.0.1:{port}");
    let wrong_port = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    let r = http(
        port,
        "POST",
        "/v1/resume",
        &[("Cookie", cookie), ("Origin", &wrong_port)],
        body,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = http(
        port,
        "POST",
        "/v1/resume",
        &[("Cookie", cookie), ("Origin", &own)],
        body,
    );
    assert_eq!(r.status, 200, "a same-origin POST was refused: {}", r.body);
}

/// The canary's spec: 20% for a minute (long enough to look at), analysis every 500 ms.
fn canary() -> &'static str {
    r#"strategy = "canary"
    step {
      weight = 20
      pause  = "60s"
    }
    analysis {
      interval        = "500ms"
      min_requests    = 5
      max_error_rate  = 0.5
    }"#
}

#[test]
fn the_dashboard_shows_a_canary_as_the_api_does_and_aborts_it() {
    let server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, canary(), "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let load = Load::start(p.port);
    load.flowing(50);
    p.write(r#"MESSAGE = "v2""#, canary(), "");
    ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
    let (port, token) = api(&server);
    wait_for("the canary at 20%", 60, || {
        api_split(&status(port, &token)) == [(1, 80.0), (2, 20.0)]
    });
    let cookie = check_login(port, &token);
    check_origin(port, &cookie);
    assert_eq!(status(port, &token)["paused"], false);

    let b = Browser::start();
    let base = format!("http://127.0.0.1:{port}");
    b.go(&format!("{base}/"));
    let field = b.wait_one("#token", 20);
    b.type_in(&field, "wrong");
    b.click(&b.wait_one("#login-submit", 5));
    let err = b.wait_one("#login-error", 20);
    assert_eq!(b.text(&err).as_deref(), Ok("Wrong token."));
    let field = b.wait_one("#token", 5);
    b.type_in(&field, &token);
    b.click(&b.wait_one("#login-submit", 5));
    b.wait_one("article[data-service=\"web\"]", 30);

    // The split and the verdicts shown are the API's.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let svc = status(port, &token);
        let (page, api) = (page_split(&b), api_split(&svc));
        let verdicts = page_verdicts(&b);
        let ok = page.as_deref().is_some_and(|p| same_split(p, &api))
            && verdicts
                .as_deref()
                .is_some_and(|v| verdicts_match(v, &status(port, &token)["verdicts"]));
        if ok && api == [(1, 80.0), (2, 20.0)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page's split {page:?} and verdicts {verdicts:?} are not the API's {api:?} {}\n{}",
            svc["verdicts"],
            b.page_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Sparklines drawn from successive samples, the releases, instances and live events.
    wait_for("a request-rate sparkline of 5 samples", 30, || {
        b.find(
            "article[data-service=\"web\"] tr.split[data-release=\"2\"] svg.rate polyline",
            None,
        )
        .ok()
        .and_then(|l| l.into_iter().next())
        .and_then(|l| b.attr(&l, "points").ok())
        .is_some_and(|p| p.split(' ').count() >= 5)
    });
    b.wait_one(
        "article[data-service=\"web\"] tr.release-row[data-release=\"2\"]",
        20,
    );
    b.wait_one(
        "article[data-service=\"web\"] tr.instance[data-healthy=\"true\"]",
        20,
    );
    b.wait_one("#events li.event[data-service=\"web\"]", 20);
    let shot = b.screenshot("canary");
    assert!(shot.exists());

    // Pause and resume from the page; an abort not confirmed does nothing.
    let button = |action: &str| {
        b.wait_one(
            &format!("article[data-service=\"web\"] button[data-action=\"{action}\"]"),
            5,
        )
    };
    b.click(&button("pause"));
    assert!(b.accept_dialog().starts_with("Pause"));
    b.wait_one("article[data-service=\"web\"] .badge.paused", 20);
    assert_eq!(status(port, &token)["paused"], true);
    b.click(&button("resume"));
    b.accept_dialog();
    wait_for("the page to show the rollout resumed", 20, || {
        b.find("article[data-service=\"web\"] .badge.paused", None)
            .is_ok_and(|v| v.is_empty())
    });
    assert_eq!(status(port, &token)["paused"], false);
    b.click(&button("abort"));
    b.answer_dialog("dismiss");
    let svc = status(port, &token);
    assert!(svc["rollout"].is_string(), "a dismissed abort acted: {svc}");

    // Abort, confirmed in the dialog: the page and the API show the rollback.
    let abort = b.wait_one(
        "article[data-service=\"web\"] button[data-action=\"abort\"]",
        5,
    );
    b.click(&abort);
    let asked = b.accept_dialog();
    assert!(asked.contains("web"), "the dialog: {asked}");
    wait_for("the page to show all traffic on v1", 30, || {
        page_split(&b).is_some_and(|s| s == [(1, 100.0)])
    });
    wait_for(
        "the API to show the rollout over, all traffic on v1",
        30,
        || {
            let svc = status(port, &token);
            svc["rollout"].is_null() && api_split(&svc) == [(1, 100.0)]
        },
    );
    b.wait_one(
        "article[data-service=\"web\"] p.rollout[data-running=\"false\"]",
        20,
    );
    b.wait_one(
        "article[data-service=\"web\"] li.rollout-item[data-state=\"rolled_back\"][data-to=\"2\"]",
        20,
    );
    b.wait_one("article[data-service=\"web\"] tr.release-row[data-release=\"2\"][data-outcome=\"rolled_back\"]", 20);
    b.screenshot("rolled-back");
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
    let (_, failures, _) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");

    // Logging out ends the session.
    let out = http(port, "POST", "/logout", &[("Cookie", &cookie)], "");
    assert_eq!(out.status, 303, "{}", out.head);
    assert!(
        out.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0"))
    );
    let after = http(port, "GET", "/v1/status", &[("Cookie", &cookie)], "");
    assert_eq!(after.status, 401, "a logged-out session still works");
}
