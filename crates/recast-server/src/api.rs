//! The HTTP API (JSON, bearer token) that the CLI speaks to.

use crate::engine::Ctl;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use recast_api::v1::{self, InstancePhase};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

mod wire;

type Resp = Response<BoxBody<Bytes, Infallible>>;

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

/// A control plane error as the API's answer: the only place a `ServerError` becomes a status.
fn fail(e: crate::ServerError) -> Resp {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, e.to_string())
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
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
    if !authorized {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API token (Authorization: Bearer …)\n  hint: the token is in the server's data directory (file `token`), or set RECAST_TOKEN",
        );
    }
    let q = query(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body: Value = if method == Method::POST {
        let too_large = || {
            error(
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
            return too_large();
        }
        // Counted while it is read: a body without a length is cut at the limit too.
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => {
                let bytes = b.to_bytes();
                if bytes.is_empty() {
                    json!({})
                } else {
                    match serde_json::from_slice(&bytes) {
                        Ok(v) => v,
                        Err(e) => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                format!("the request body is not valid JSON: {e}"),
                            );
                        }
                    }
                }
            }
            Err(e) if e.is::<LengthLimitError>() => return too_large(),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                );
            }
        }
    } else {
        Value::Null
    };
    // The request body as its endpoint's type: text fields may also come from the query string.
    macro_rules! request {
        ($t:ty) => {
            match parse::<$t>(&body, &q, &method, &path) {
                Ok(r) => r,
                Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
            }
        };
    }
    match (method.clone(), path.as_str()) {
        (Method::GET, "/v1/health") => answer(
            StatusCode::OK,
            &v1::Health {
                ok: true,
                pid: std::process::id(),
            },
        ),
        (Method::POST, "/v1/apply") => {
            let r = request!(v1::ApplyRequest);
            // Only spec files: never make the server read (and echo) some other file.
            let p = match crate::project::api_spec_path(std::path::Path::new(&r.path)) {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            match ctl.start_apply(&p) {
                Ok(id) => answer(StatusCode::ACCEPTED, &v1::ApplyStarted { apply: id }),
                Err(e) => fail(e),
            }
        }
        (Method::GET, p) if p.starts_with("/v1/applies/") => {
            let id: Option<u64> = p.trim_start_matches("/v1/applies/").parse().ok();
            match id.and_then(|id| ctl.apply_status(id)) {
                Some(s) => answer(StatusCode::OK, &s),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("no apply {}", p.trim_start_matches("/v1/applies/")),
                ),
            }
        }
        (Method::GET, "/v1/status") => answer(
            StatusCode::OK,
            &status(&ctl, q.get("service").map(String::as_str)).await,
        ),
        (Method::GET, "/v1/history") => {
            let Some(service) = q.get("service") else {
                return error(StatusCode::BAD_REQUEST, "missing ?service=NAME");
            };
            let (project, service) =
                match ctl.find_svc(q.get("project").map(String::as_str), service) {
                    Ok(svc) => (svc.project.clone(), svc.name.clone()),
                    // A destroyed service keeps its history in the state store.
                    Err(e) => match project_of(&ctl, service) {
                        Some(project) => (project, service.clone()),
                        None => return fail(e),
                    },
                };
            match history(&ctl, &project, &service) {
                Ok(h) => answer(StatusCode::OK, &h),
                Err(e) => fail(e.into()),
            }
        }
        (Method::POST, "/v1/rollback") => {
            let r = request!(v1::RollbackRequest);
            match ctl.find_svc(r.project.as_deref(), &r.service) {
                // What a rollback would restore, without acting (the CLI asks before).
                Ok(svc) if r.dry_run => match ctl.restore_plan(&svc, r.to) {
                    Ok(p) => answer(StatusCode::OK, &p),
                    Err(e) => e.reply(StatusCode::CONFLICT),
                },
                Ok(svc) => match ctl.rollback(&svc, r.to, r.restore_volumes).await {
                    Ok(r) => answer(StatusCode::OK, &r),
                    Err(e) => e.reply(StatusCode::CONFLICT),
                },
                Err(e) => fail(e),
            }
        }
        (Method::GET, "/v1/volumes") => {
            let svc = match q.get("service") {
                Some(s) => match ctl.find_svc(q.get("project").map(String::as_str), s) {
                    Ok(svc) => Some(svc),
                    Err(e) => return fail(e),
                },
                None => None,
            };
            match ctl.volumes(svc.as_deref()) {
                Ok(volumes) => answer(StatusCode::OK, &v1::Volumes { volumes }),
                Err(e) => fail(e),
            }
        }
        (Method::GET, "/v1/volumes/snapshots") => {
            let Some(service) = q.get("service") else {
                return error(StatusCode::BAD_REQUEST, "missing ?service=NAME");
            };
            match ctl.find_svc(q.get("project").map(String::as_str), service) {
                Ok(svc) => match ctl.state.snapshots(&svc.project, &svc.name) {
                    Ok(snapshots) => answer(
                        StatusCode::OK,
                        &v1::Snapshots {
                            project: svc.project.clone(),
                            service: svc.name.clone(),
                            keep: crate::engine::KEEP_SNAPSHOTS,
                            snapshots,
                        },
                    ),
                    Err(e) => fail(e.into()),
                },
                Err(e) => fail(e),
            }
        }
        (Method::POST, "/v1/volumes/restore") => {
            let r = request!(v1::RestoreRequest);
            match ctl.find_svc(r.project.as_deref(), &r.service) {
                Ok(svc) => match ctl
                    .restore_volume(&svc, &r.volume, &r.snapshot.to_string())
                    .await
                {
                    Ok(v) => answer(StatusCode::OK, &v),
                    Err(e) => e.reply(StatusCode::CONFLICT),
                },
                Err(e) => fail(e),
            }
        }
        (Method::POST, action @ ("/v1/promote" | "/v1/abort" | "/v1/pause" | "/v1/resume")) => {
            let Ok(action) = action
                .trim_start_matches("/v1/")
                .parse::<v1::ControlAction>()
            else {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no such API endpoint: {path}"),
                );
            };
            let r = request!(v1::ControlRequest);
            let svc = match ctl.find_svc(r.project.as_deref(), &r.service) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let done = match action {
                v1::ControlAction::Promote => ctl.promote(&svc),
                v1::ControlAction::Abort => ctl.abort(&svc),
                v1::ControlAction::Pause => ctl.pause(&svc, true),
                v1::ControlAction::Resume => ctl.pause(&svc, false),
            };
            match done {
                Ok(()) => answer(
                    StatusCode::OK,
                    &v1::ControlReply {
                        service: svc.name.clone(),
                        action,
                    },
                ),
                Err(e) => e.reply(StatusCode::CONFLICT),
            }
        }
        (Method::POST, "/v1/drift") => {
            let r = request!(v1::DriftRequest);
            let mode = if r.full {
                recast_guard::Mode::Full
            } else {
                recast_guard::Mode::Metadata
            };
            if let Some(s) = &r.service
                && let Err(e) = ctl.find_svc(r.project.as_deref(), s)
            {
                return fail(e);
            }
            match ctl.drift(r.service.as_deref(), mode, r.fix).await {
                Ok((instances, replaced)) => {
                    let instances: Vec<v1::InstanceDrift> =
                        instances.iter().map(wire::drift).collect();
                    let drifted = instances.iter().filter(|d| !d.findings.is_empty()).count();
                    answer(
                        StatusCode::OK,
                        &v1::DriftReply {
                            instances,
                            drifted,
                            replaced,
                        },
                    )
                }
                Err(e) => e.reply(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
        (Method::GET, p) if p.starts_with("/v1/services/") && p.ends_with("/logs") => {
            let name = &p["/v1/services/".len()..p.len() - "/logs".len()];
            logs(ctl, q.get("project").map(String::as_str), name, &q)
        }
        (Method::GET, "/metrics") => metrics(&ctl).await,
        (Method::GET, "/v1/events") => {
            let since: i64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
            events(ctl, since)
        }
        (Method::POST, "/v1/destroy") => {
            let r = request!(v1::DestroyRequest);
            match ctl
                .destroy(r.project.as_deref(), &r.services, r.volumes)
                .await
            {
                Ok(removed) => answer(StatusCode::OK, &v1::Destroyed { removed }),
                Err(e) => e.reply(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such API endpoint: {path}"),
        ),
    }
}

/// The fields of a request body that may come from the query string instead (as text).
const TEXT_FIELDS: [&str; 4] = ["path", "service", "project", "volume"];

/// The request body read as `T`, the query string's [`TEXT_FIELDS`] filling in what it lacks.
/// A malformed body is an error (a 400) that names the field.
fn parse<T: DeserializeOwned>(
    body: &Value,
    q: &HashMap<String, String>,
    method: &Method,
    path: &str,
) -> Result<T, String> {
    let mut body = body.clone();
    if let Value::Object(o) = &mut body {
        for name in TEXT_FIELDS {
            if let Some(v) = q.get(name)
                && o.get(name).is_none_or(Value::is_null)
            {
                o.insert(name.to_string(), Value::String(v.clone()));
            }
        }
    }
    serde_json::from_value::<T>(body.clone()).map_err(|e| {
        let field = culprit::<T>(&body).map_or_else(String::new, |f| format!("field \"{f}\": "));
        format!("the request body of {method} {path} is invalid: {field}{e}")
    })
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
    fn reply(self, status: StatusCode) -> Resp;
}

impl Failure for crate::ServerError {
    fn reply(self, _: StatusCode) -> Resp {
        fail(self)
    }
}

impl Failure for String {
    fn reply(self, status: StatusCode) -> Resp {
        error(status, self)
    }
}

/// The project of a service that has no live instances any more (destroyed), from its routes.
fn project_of(ctl: &Ctl, service: &str) -> Option<String> {
    let routes = ctl.state.routes().ok()?;
    let project = routes
        .iter()
        .find(|r| r.service == service)?
        .project
        .clone();
    let any = ctl.state.releases(&project, service).ok()?;
    (!any.is_empty()).then_some(project)
}

/// Every release, rollout and analysis verdict of a service, from the state store.
fn history(ctl: &Ctl, project: &str, service: &str) -> Result<v1::History, recast_state::Error> {
    Ok(v1::History {
        project: project.to_string(),
        service: service.to_string(),
        releases: ctl
            .state
            .releases(project, service)?
            .iter()
            .map(wire::release)
            .collect(),
        rollouts: ctl
            .state
            .rollouts(project, service)?
            .iter()
            .map(wire::rollout)
            .collect(),
        verdicts: verdicts(ctl, project, service),
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

async fn status(ctl: &Ctl, only: Option<&str>) -> v1::Status {
    let mut services = Vec::new();
    for svc in ctl.all_svcs() {
        if only.is_some_and(|s| s != svc.name) {
            continue;
        }
        let current = ctl.state.current(&svc.project, &svc.name).ok().flatten();
        if current.is_none() && svc.live.lock().map(|l| l.is_empty()).unwrap_or(true) {
            continue;
        }
        let instances: Vec<v1::InstanceStatus> = svc
            .live
            .lock()
            .map(|live| {
                live.iter()
                    .map(|l| v1::InstanceStatus {
                        id: l.inst.id.clone(),
                        release: l.release,
                        active: l.active,
                        healthy: l.healthy,
                        state: if l.exited.is_some() {
                            InstancePhase::Exited
                        } else {
                            InstancePhase::Running
                        },
                        exit_status: l.exited.flatten(),
                        port: l.inst.port,
                        age_ms: l.inst.age().as_millis() as u64,
                        created_ms: l.inst.created_ms,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let table = svc.proxy.table();
        let total: u32 = table.groups.iter().map(|g| g.weight).sum();
        let traffic: Vec<v1::Traffic> = table
            .groups
            .iter()
            .map(|g| {
                let m = svc.proxy.metrics(g.release).snapshot();
                v1::Traffic {
                    release: g.release,
                    percent: if total == 0 {
                        0.0
                    } else {
                        f64::from(g.weight) * 100.0 / f64::from(total)
                    },
                    instances: g.backends.len(),
                    requests: m.requests,
                    errors_5xx: m.errors_5xx,
                    connect_failures: m.connect_failures,
                    p99_ms: m.quantile(0.99).as_secs_f64() * 1000.0,
                }
            })
            .collect();
        let rollout = svc.rollout.lock().ok().and_then(|r| r.clone());
        services.push(v1::ServiceStatus {
            project: svc.project.clone(),
            service: svc.name.clone(),
            current_release: current.as_ref().map(|r| r.number),
            image: current.as_ref().map(|r| r.image.clone()),
            digest: current.as_ref().map(|r| r.digest.clone()),
            paused: svc.controls.paused() && rollout.is_some(),
            rollout,
            verdicts: svc
                .verdicts
                .lock()
                .map(|v| v.iter().map(wire::verdict).collect())
                .unwrap_or_default(),
            drift: svc
                .guard
                .lock()
                .map(|g| {
                    g.drift
                        .iter()
                        .filter(|d| !d.findings.is_empty())
                        .map(wire::drift)
                        .collect()
                })
                .unwrap_or_default(),
            instances,
            traffic,
        });
    }
    let routes = ctl
        .route_rows()
        .await
        .into_iter()
        .map(|r| v1::RouteStatus {
            project: r.project,
            route: r.name,
            listen: r.listen,
            service: r.service,
        })
        .collect();
    v1::Status {
        services,
        routes,
        at: now_ms(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Prometheus text exposition: per route and release request counts, errors and latency
/// histograms; rollout state; instance health.
async fn metrics(ctl: &Ctl) -> Resp {
    use std::fmt::Write as _;
    let mut out = String::new();
    let routes = ctl.route_rows().await;
    let _ = writeln!(
        out,
        "# HELP recast_requests_total Requests proxied, per route and release.\n# TYPE recast_requests_total counter"
    );
    let mut lines = Vec::new();
    for svc in ctl.all_svcs() {
        let route = routes
            .iter()
            .find(|r| r.project == svc.project && r.service == svc.name)
            .map_or(String::new(), |r| r.name.clone());
        let mut releases: Vec<i64> = svc
            .live
            .lock()
            .map(|l| l.iter().map(|x| x.release).collect())
            .unwrap_or_default();
        if let Ok(Some(cur)) = ctl.state.current(&svc.project, &svc.name) {
            releases.push(cur.number);
        }
        releases.sort_unstable();
        releases.dedup();
        for r in releases {
            let m = svc.proxy.metrics(r).snapshot();
            let l = format!(
                "route=\"{route}\",service=\"{}\",project=\"{}\",release=\"{r}\"",
                svc.name, svc.project
            );
            lines.push((l, m));
        }
    }
    for (l, m) in &lines {
        let _ = writeln!(out, "recast_requests_total{{{l}}} {}", m.requests);
    }
    let _ = writeln!(
        out,
        "# HELP recast_errors_total Responses with status 5xx.\n# TYPE recast_errors_total counter"
    );
    for (l, m) in &lines {
        let _ = writeln!(out, "recast_errors_total{{{l}}} {}", m.errors_5xx);
    }
    let _ = writeln!(
        out,
        "# HELP recast_connect_failures_total Failed connections to instances.\n# TYPE recast_connect_failures_total counter"
    );
    for (l, m) in &lines {
        let _ = writeln!(
            out,
            "recast_connect_failures_total{{{l}}} {}",
            m.connect_failures
        );
    }
    let _ = writeln!(
        out,
        "# HELP recast_request_duration_seconds Time to response headers.\n# TYPE recast_request_duration_seconds histogram"
    );
    for (l, m) in &lines {
        let mut acc = 0;
        for (i, n) in m.latency.iter().enumerate() {
            acc += n;
            let le = (50u64 << i) as f64 / 1e6;
            let _ = writeln!(
                out,
                "recast_request_duration_seconds_bucket{{{l},le=\"{le}\"}} {acc}"
            );
        }
        let _ = writeln!(
            out,
            "recast_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {acc}"
        );
        let _ = writeln!(out, "recast_request_duration_seconds_count{{{l}}} {acc}");
    }
    let _ = writeln!(
        out,
        "# HELP recast_rollout_in_progress 1 while a rollout runs.\n# TYPE recast_rollout_in_progress gauge"
    );
    let _ = writeln!(
        out,
        "# HELP recast_instance_healthy 1 when an instance passes its health checks.\n# TYPE recast_instance_healthy gauge"
    );
    for svc in ctl.all_svcs() {
        let running = svc.rollout.lock().map(|r| r.is_some()).unwrap_or(false);
        let _ = writeln!(
            out,
            "recast_rollout_in_progress{{service=\"{}\",project=\"{}\"}} {}",
            svc.name,
            svc.project,
            u8::from(running)
        );
        if let Ok(live) = svc.live.lock() {
            for l in live.iter() {
                let _ = writeln!(
                    out,
                    "recast_instance_healthy{{service=\"{}\",instance=\"{}\",release=\"{}\"}} {}",
                    svc.name,
                    l.inst.id,
                    l.release,
                    u8::from(l.healthy)
                );
            }
        }
    }
    crate::guard::metrics(ctl, &mut out);
    let mut r = Response::new(Full::new(Bytes::from(out)).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Server-sent events: every recorded event after `since`, then new ones as they happen.
fn events(ctl: Arc<Ctl>, since: i64) -> Resp {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut since = since;
        loop {
            let batch = ctl.state.events(since, 200).unwrap_or_default();
            for e in batch {
                since = e.id;
                let data = serde_json::to_string(&wire::event(&e)).unwrap_or_default();
                let frame = format!("id: {}\nevent: {}\ndata: {data}\n\n", e.id, e.kind);
                if tx.send(Bytes::from(frame)).await.is_err() {
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    r
}

/// `GET /v1/services/NAME/logs?tail=N&since=DURATION&timestamps=true&follow=true`: plain
/// text, one `[INSTANCE] [TIME ]LINE` per line, streamed (see `crate::logs`).
fn logs(ctl: Arc<Ctl>, project: Option<&str>, name: &str, q: &HashMap<String, String>) -> Resp {
    let query = match crate::logs::Query::parse(q) {
        Ok(query) => query,
        Err(e) => return fail(e),
    };
    let svc = match ctl.find_svc(project, name) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if let Err(e) = crate::logs::check(&ctl, &svc) {
        return fail(e);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::task::spawn_blocking(move || crate::logs::stream(ctl, svc, query, tx));
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    r
}

/// A response body fed by a channel (for the event stream and logs).
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// Every analysis verdict recorded for a service, with its numbers.
fn verdicts(ctl: &Ctl, project: &str, service: &str) -> Vec<v1::Verdict> {
    ctl.state
        .events_of(project, service, "analysis.verdict")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| serde_json::from_str(&e.message).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollback(body: Value, q: &[(&str, &str)]) -> Result<v1::RollbackRequest, String> {
        let q = q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&body, &q, &Method::POST, "/v1/rollback")
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
