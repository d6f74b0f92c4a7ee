//! The HTTP API (JSON, bearer token) that the CLI speaks to: the token check, the bounded body
//! read and the route table; each endpoint's work is in [`endpoints`] (and [`observe`] for
//! status and metrics).

use crate::engine::Ctl;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use recast_api::v1;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

mod dashboard;
mod endpoints;
mod observe;
pub(crate) mod wire;

type Resp = Response<BoxBody<Bytes, Infallible>>;

/// An endpoint's answer; `Err` is an error answer, so endpoints can use `?`.
type Answer = Result<Resp, Refusal>;

/// The largest request body the API reads.
const MAX_BODY: usize = 1 << 20;

fn reply(status: StatusCode, v: Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A typed answer (one of [`v1`]'s).
fn answer<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    match serde_json::to_value(body) {
        Ok(v) => reply(status, v),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("writing the answer: {e}"),
        ),
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    reply(status, json!(v1::ErrorReply { error: msg.into() }))
}

/// An error answer: its status, and its message as `{"error": MESSAGE}`.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn answer(self) -> Resp {
        error(self.status, self.message)
    }

    fn not_found(path: &str) -> Refusal {
        Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no such API endpoint: {path}"),
        )
    }
}

/// A control plane error as the API's answer: the only place a `ServerError` becomes a status.
impl From<crate::ServerError> for Refusal {
    fn from(e: crate::ServerError) -> Refusal {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Refusal::new(status, e.to_string())
    }
}

impl From<recast_state::Error> for Refusal {
    fn from(e: recast_state::Error) -> Refusal {
        crate::ServerError::from(e).into()
    }
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%2F", "/").replace("%20", " ")))
        .collect()
}

/// Handle one API request.
pub async fn handle(ctl: Arc<Ctl>, token: Arc<String>, req: Request<Incoming>) -> Resp {
    // Liveness for load balancers and supervisors: no token, and it says nothing but "ok".
    if req.uri().path() == "/healthz" && matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")).boxed());
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain"),
        );
        return r;
    }
    // The dashboard's pages, login and logout (its own answers, not JSON).
    let req = match dashboard::handle(req, &token).await {
        Ok(page) => return page,
        Err(req) => req,
    };
    if !authorized(&req, &token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API token (Authorization: Bearer …)\n  hint: the token is in the server's data directory (file `token`), or set RECAST_TOKEN",
        );
    }
    let mut r = Req {
        query: query(&req),
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        body: Value::Null,
    };
    if r.method == Method::POST {
        r.body = match read_body(req).await {
            Ok(body) => body,
            Err(e) => return e.answer(),
        };
    }
    let answer = match (r.method.clone(), r.path.as_str()) {
        (Method::GET, "/v1/health") => endpoints::health(),
        (Method::POST, "/v1/apply") => endpoints::apply(&ctl, &r),
        (Method::GET, p) if p.starts_with("/v1/applies/") => endpoints::apply_status(&ctl, &r),
        (Method::GET, "/v1/status") => observe::status(&ctl, &r).await,
        (Method::GET, "/v1/history") => endpoints::history(&ctl, &r),
        (Method::POST, "/v1/rollback") => endpoints::rollback(&ctl, &r).await,
        (Method::GET, "/v1/volumes") => endpoints::volumes(&ctl, &r),
        (Method::GET, "/v1/volumes/snapshots") => endpoints::snapshots(&ctl, &r),
        (Method::POST, "/v1/volumes/restore") => endpoints::restore(&ctl, &r).await,
        (Method::POST, "/v1/promote" | "/v1/abort" | "/v1/pause" | "/v1/resume") => {
            endpoints::control(&ctl, &r)
        }
        (Method::POST, "/v1/drift") => endpoints::drift(&ctl, &r).await,
        (Method::GET, p) if p.starts_with("/v1/services/") && p.ends_with("/logs") => {
            endpoints::logs(ctl, &r)
        }
        (Method::GET, "/metrics") => observe::metrics(&ctl).await,
        (Method::GET, "/v1/events") => endpoints::events(ctl, &r),
        (Method::POST, "/v1/destroy") => endpoints::destroy(&ctl, &r).await,
        _ => Err(Refusal::not_found(&r.path)),
    };
    answer.unwrap_or_else(Refusal::answer)
}

/// The request carries this server's token (`Authorization: Bearer TOKEN`), or comes from a
/// browser logged in to the dashboard ([`dashboard::authorized`]).
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
        || dashboard::authorized(req, token)
}

/// A POST body as JSON (`{}` when empty), read up to [`MAX_BODY`] bytes: a larger one is a
/// 413, whether its length is declared or not.
async fn read_body(req: Request<Incoming>) -> Result<Value, Refusal> {
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the API's limit of {MAX_BODY} bytes (1 MiB)"),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    // Counted while it is read: a body without a length is cut at the limit too.
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            ));
        }
    };
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One API request as an endpoint sees it.
struct Req {
    method: Method,
    path: String,
    /// The query string, `%2F` and `%20` decoded.
    query: HashMap<String, String>,
    /// The JSON body of a POST (`{}` when empty); `null` for other methods.
    body: Value,
}

/// The fields of a request body that may come from the query string instead (as text).
const TEXT_FIELDS: [&str; 4] = ["path", "service", "project", "volume"];

impl Req {
    /// A query string parameter.
    fn get(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// The `?service=NAME` an endpoint needs, or a 400.
    fn service(&self) -> Result<&str, Refusal> {
        self.get("service")
            .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "missing ?service=NAME"))
    }

    /// The request body as its endpoint's type, or a 400 that says why (see [`Req::read`]).
    fn parse<T: DeserializeOwned>(&self) -> Result<T, Refusal> {
        self.read()
            .map_err(|msg| Refusal::new(StatusCode::BAD_REQUEST, msg))
    }

    /// The request body read as `T`, the query string's [`TEXT_FIELDS`] filling in what it
    /// lacks. A malformed body is an error that names the field.
    fn read<T: DeserializeOwned>(&self) -> Result<T, String> {
        let mut body = self.body.clone();
        if let Value::Object(o) = &mut body {
            for name in TEXT_FIELDS {
                if let Some(v) = self.query.get(name)
                    && o.get(name).is_none_or(Value::is_null)
                {
                    o.insert(name.to_string(), Value::String(v.clone()));
                }
            }
        }
        serde_json::from_value::<T>(body.clone()).map_err(|e| {
            let field =
                culprit::<T>(&body).map_or_else(String::new, |f| format!("field \"{f}\": "));
            format!(
                "the request body of {} {} is invalid: {field}{e}",
                self.method, self.path
            )
        })
    }
}

/// The field of `body` that keeps it from reading as `T`: the one whose removal lets it read,
/// or makes it only miss that field.
fn culprit<T: DeserializeOwned>(body: &Value) -> Option<String> {
    let Value::Object(o) = body else {
        return None;
    };
    o.keys().find_map(|k| {
        let mut without = o.clone();
        without.remove(k);
        match serde_json::from_value::<T>(Value::Object(without)) {
            Ok(_) => Some(k.clone()),
            Err(e) if e.to_string().contains(&format!("missing field `{k}`")) => Some(k.clone()),
            Err(_) => None,
        }
    })
}

/// An error from below the API: a `ServerError` carries its own status; text gets the
/// endpoint's.
trait Failure {
    fn refusal(self, status: StatusCode) -> Refusal;
}

impl Failure for crate::ServerError {
    fn refusal(self, _: StatusCode) -> Refusal {
        self.into()
    }
}

impl Failure for String {
    fn refusal(self, status: StatusCode) -> Refusal {
        Refusal::new(status, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollback(body: Value, q: &[(&str, &str)]) -> Result<v1::RollbackRequest, String> {
        let req = Req {
            method: Method::POST,
            path: "/v1/rollback".to_string(),
            query: q
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
        };
        req.read()
    }

    #[test]
    fn a_malformed_body_is_an_error_that_names_the_field() {
        let e = rollback(json!({ "service": "web", "to": "three" }), &[]).expect_err("bad to");
        assert!(
            e.starts_with("the request body of POST /v1/rollback is invalid: field \"to\": "),
            "{e}"
        );
        let e = rollback(json!({ "service": "web", "dry_run": 1 }), &[]).expect_err("bad flag");
        assert!(e.contains("field \"dry_run\""), "{e}");
        let e = rollback(json!({ "to": 2 }), &[]).expect_err("no service");
        assert!(e.contains("missing field `service`"), "{e}");
        let e = rollback(json!("web"), &[]).expect_err("not an object");
        assert!(e.contains("POST /v1/rollback"), "{e}");
    }

    #[test]
    fn text_fields_may_come_from_the_query_string() {
        let r = rollback(
            json!({ "to": 2 }),
            &[("service", "web"), ("project", "shop")],
        )
        .expect("service from the query");
        assert_eq!(
            (r.service.as_str(), r.project.as_deref(), r.to),
            ("web", Some("shop"), Some(2))
        );
        // The body wins; flags never come from the query string.
        let r = rollback(
            json!({ "service": "api" }),
            &[("service", "web"), ("dry_run", "true")],
        )
        .expect("body first");
        assert_eq!((r.service.as_str(), r.dry_run), ("api", false));
    }
}
