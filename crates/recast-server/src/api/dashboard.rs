//! The dashboard on the API's listener: a login form that takes the API token, browser sessions
//! (an `HttpOnly`, `SameSite=Strict` cookie naming a random id the server keeps in memory with
//! an expiry — never the token), and the page itself, a static bundle (HTML, vanilla JS, CSS,
//! embedded) that reads the JSON API with the session cookie.

use super::{Resp, constant_time_eq};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use ring::digest;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// The session cookie's name.
const COOKIE: &str = "recast_session";

/// How long a session lasts after its login.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The most sessions kept at once; the oldest go first beyond it.
const MAX_SESSIONS: usize = 1024;

/// The largest login form read.
const MAX_FORM: usize = 4096;

/// One logged-in browser.
struct Session {
    expires: Instant,
    /// SHA-256 of the token it logged in with: a session is good only on a server with that
    /// token (several servers may share a process, as in tests).
    token: [u8; 32],
}

/// The live sessions, by SHA-256 of their id (a lookup's timing says nothing of an id).
static SESSIONS: LazyLock<Mutex<HashMap<[u8; 32], Session>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, b).as_ref());
    out
}

/// Answer a dashboard request (`GET /`, the bundle's files, `POST /login`, `POST /logout`);
/// any other request comes back for the API.
pub(super) async fn handle(req: Request<Incoming>, token: &str) -> Result<Resp, Request<Incoming>> {
    let logged_in = session(&req, token);
    Ok(match (req.method().clone(), req.uri().path()) {
        (Method::GET | Method::HEAD, "/") if logged_in => page(PAGE, "text/html; charset=utf-8"),
        (Method::GET | Method::HEAD, "/") => login_form(StatusCode::OK, None),
        (Method::GET | Method::HEAD, "/dashboard/app.js") => {
            page(SCRIPT, "text/javascript; charset=utf-8")
        }
        (Method::GET | Method::HEAD, "/dashboard/app.css") => {
            page(STYLE, "text/css; charset=utf-8")
        }
        (Method::POST, "/login") => login(req, token).await,
        (Method::POST, "/logout") => logout(&req),
        _ => return Err(req),
    })
}

/// Whether the request comes from a logged-in browser: a live session cookie from this
/// server's token and, on a POST, no `Origin` but the listener's own (a belt on top of
/// `SameSite=Strict` against cross-site requests).
pub(super) fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    session(req, token) && (req.method() != Method::POST || same_origin(req))
}

/// The request's session cookie names a live session made with `token`.
fn session(req: &Request<Incoming>, token: &str) -> bool {
    let Some(id) = cookie(req) else {
        return false;
    };
    let now = Instant::now();
    let mut sessions = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
    let key = sha256(id.as_bytes());
    match sessions.get(&key) {
        Some(s) if s.expires <= now => {
            sessions.remove(&key);
            false
        }
        Some(s) => constant_time_eq(&s.token, &sha256(token.as_bytes())),
        None => false,
    }
}

/// The value of the `recast_session` cookie.
fn cookie(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// No `Origin` header (not a browser's cross-site request), or the listener's own: the scheme
/// and the `Host` the request was sent to.
fn same_origin(req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin = origin.to_str().unwrap_or("");
    !host.is_empty() && (origin == format!("http://{host}") || origin == format!("https://{host}"))
}

/// `POST /login` with the form's `token`: the right one starts a session (cookie) and goes to
/// the dashboard; a wrong one shows the form again.
async fn login(req: Request<Incoming>, token: &str) -> Resp {
    if !same_origin(&req) {
        return login_form(
            StatusCode::FORBIDDEN,
            Some("The login came from another site."),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return login_form(
                StatusCode::BAD_REQUEST,
                Some("The login form was too large."),
            );
        }
    };
    let given = form_value(&body, "token").unwrap_or_default();
    if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
        return login_form(StatusCode::UNAUTHORIZED, Some("Wrong token."));
    }
    let Some(id) = new_session(token) else {
        return login_form(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("The server could not start a session."),
        );
    };
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        LIFETIME.as_secs()
    );
    redirect(&cookie)
}

/// Start a session for `token`; its id (64 hex digits from 32 random bytes).
fn new_session(token: &str) -> Option<String> {
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).ok()?;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let now = Instant::now();
    let mut sessions = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
    sessions.retain(|_, s| s.expires > now);
    while sessions.len() >= MAX_SESSIONS {
        let Some(oldest) = sessions
            .iter()
            .min_by_key(|(_, s)| s.expires)
            .map(|(k, _)| *k)
        else {
            break;
        };
        sessions.remove(&oldest);
    }
    sessions.insert(
        sha256(id.as_bytes()),
        Session {
            expires: now + LIFETIME,
            token: sha256(token.as_bytes()),
        },
    );
    Some(id)
}

/// `POST /logout`: forget the session and clear the cookie.
fn logout(req: &Request<Incoming>) -> Resp {
    if same_origin(req)
        && let Some(id) = cookie(req)
    {
        let mut sessions = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(&sha256(id.as_bytes()));
    }
    redirect(&format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
    ))
}

/// A `303 See Other` to `/` that sets `cookie`.
fn redirect(cookie: &str) -> Resp {
    let mut r = page("", "text/plain");
    *r.status_mut() = StatusCode::SEE_OTHER;
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(v) = HeaderValue::from_str(cookie) {
        h.insert(header::SET_COOKIE, v);
    }
    r
}

/// The value of `name` in an `application/x-www-form-urlencoded` body.
fn form_value(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The login form, with an error when a login failed (it says no more than that).
fn login_form(status: StatusCode, error: Option<&str>) -> Resp {
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"login-error\" role=\"alert\">{e}</p>"))
        .unwrap_or_default();
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>recast · log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/dashboard/app.css"></head>
<body class="login"><main>
<h1>recast</h1>
<form id="login" method="post" action="/login">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<p class="hint">The token is in the server's data directory, file <code>token</code>.</p>
{error}<button id="login-submit" type="submit">Log in</button>
</form></main></body></html>
"#
    );
    let mut r = page(&html, "text/html; charset=utf-8");
    *r.status_mut() = status;
    r
}

/// A page or file of the dashboard, never cached, with headers that keep it to its own origin.
/// (`Referrer-Policy: same-origin`, not `no-referrer`: with that, Chromium sends `Origin: null`
/// on the page's own POSTs, which [`same_origin`] refuses.)
fn page(body: &str, content_type: &'static str) -> Resp {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_value_is_percent_decoded() {
        assert_eq!(
            form_value(b"a=1&token=ab%2Bc+d%zz", "token").as_deref(),
            Some("ab+c d%zz")
        );
        assert_eq!(form_value(b"token=", "token").as_deref(), Some(""));
        assert_eq!(form_value(b"x=1", "token"), None);
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn a_session_is_good_only_for_its_token_until_it_expires() {
        let id = new_session("t1").expect("session");
        assert_eq!(id.len(), 64);
        let key = sha256(id.as_bytes());
        let good = |token: &str| {
            let sessions = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
            sessions
                .get(&key)
                .is_some_and(|s| s.expires > Instant::now() && s.token == sha256(token.as_bytes()))
        };
        assert!(good("t1"));
        assert!(!good("t2"));
        SESSIONS
            .lock()
            .expect("lock")
            .get_mut(&key)
            .expect("kept")
            .expires = Instant::now();
        assert!(!good("t1"));
    }

    /// The page hears only the event kinds it lists (EventSource hands a named event only to
    /// listeners of that name): every kind named in the server's code must be in its list.
    #[test]
    fn the_page_listens_to_every_event_kind_the_server_emits() {
        const GROUPS: [&str; 8] = [
            "analysis", "drift", "guard", "instance", "rollout", "service", "state", "volume",
        ];
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).expect("read the sources").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(std::fs::read_to_string(&p).expect("read a source"));
                }
            }
        }
        let mut sources = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut sources,
        );
        // The kinds given to the engine's `event` and `failed` (and a strategy's `event`): the
        // first string literal of each call.
        let mut kinds = std::collections::BTreeSet::new();
        for text in &sources {
            for call in ["event(", "failed("] {
                for (at, _) in text.match_indices(call) {
                    let args: String = text[at + call.len()..]
                        .chars()
                        .take_while(|c| *c != ')')
                        .take(200)
                        .collect();
                    if let Some(kind) = args.split('"').nth(1)
                        && let Some((group, name)) = kind.split_once('.')
                        && GROUPS.contains(&group)
                        && !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    {
                        kinds.insert(kind.to_string());
                    }
                }
            }
        }
        assert!(kinds.len() > 15, "too few kinds found: {kinds:?}");
        let missing: Vec<_> = kinds
            .iter()
            .filter(|k| !SCRIPT.contains(&format!("\"{k}\"")))
            .collect();
        assert!(missing.is_empty(), "app.js's EVENT_KINDS lacks {missing:?}");
    }
}
