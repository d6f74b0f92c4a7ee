//! The HTTP API (JSON, bearer token) that the CLI speaks to.

use crate::engine::Ctl;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

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

fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    reply(status, json!({ "error": msg.into() }))
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
    let str_field = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| q.get(name).cloned())
    };
    match (method, path.as_str()) {
        (Method::GET, "/v1/health") => reply(
            StatusCode::OK,
            json!({ "ok": true, "pid": std::process::id() }),
        ),
        (Method::POST, "/v1/apply") => {
            let Some(p) = str_field("path") else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "missing \"path\": the spec file or directory to apply",
                );
            };
            // Only spec files: never make the server read (and echo) some other file.
            let p = match crate::project::api_spec_path(std::path::Path::new(&p)) {
                Ok(p) => p,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            match ctl.start_apply(&p) {
                Ok(id) => reply(StatusCode::ACCEPTED, json!({ "apply": id })),
                Err((code, msg)) => error(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
                    msg,
                ),
            }
        }
        (Method::GET, p) if p.starts_with("/v1/applies/") => {
            let id: Option<u64> = p.trim_start_matches("/v1/applies/").parse().ok();
            match id.and_then(|id| ctl.apply_status(id)) {
                Some(s) => reply(StatusCode::OK, serde_json::to_value(s).unwrap_or_default()),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("no apply {}", p.trim_start_matches("/v1/applies/")),
                ),
            }
        }
        (Method::GET, "/v1/status") => reply(
            StatusCode::OK,
            status(&ctl, q.get("service").map(String::as_str)).await,
        ),
        (Method::GET, "/v1/history") => {
            let Some(service) = q.get("service") else {
                return error(StatusCode::BAD_REQUEST, "missing ?service=NAME");
            };
            match ctl.find_svc(q.get("project").map(String::as_str), service) {
                Ok(svc) => match ctl.state.releases(&svc.project, &svc.name) {
                    Ok(r) => reply(
                        StatusCode::OK,
                        json!({ "project": svc.project, "service": svc.name, "releases": r, "rollouts": ctl.state.rollouts(&svc.project, &svc.name).unwrap_or_default(), "verdicts": verdicts(&ctl, &svc.project, &svc.name) }),
                    ),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                },
                Err(e) => history_from_state(&ctl, service)
                    .unwrap_or_else(|| error(StatusCode::NOT_FOUND, e)),
            }
        }
        (Method::POST, "/v1/rollback") => {
            let Some(service) = str_field("service") else {
                return error(StatusCode::BAD_REQUEST, "missing \"service\"");
            };
            let to = body.get("to").and_then(Value::as_i64);
            let flag = |name: &str| body.get(name).and_then(Value::as_bool).unwrap_or(false);
            match ctl.find_svc(str_field("project").as_deref(), &service) {
                // What a rollback would restore, without acting (the CLI asks before).
                Ok(svc) if flag("dry_run") => match ctl.restore_plan(&svc, to) {
                    Ok(p) => reply(StatusCode::OK, serde_json::to_value(p).unwrap_or_default()),
                    Err(e) => error(StatusCode::CONFLICT, e),
                },
                Ok(svc) => match ctl.rollback(&svc, to, flag("restore_volumes")).await {
                    Ok(r) => reply(StatusCode::OK, serde_json::to_value(r).unwrap_or_default()),
                    Err(e) => error(StatusCode::CONFLICT, e),
                },
                Err(e) => error(StatusCode::NOT_FOUND, e),
            }
        }
        (Method::GET, "/v1/volumes") => {
            let svc = match q.get("service") {
                Some(s) => match ctl.find_svc(q.get("project").map(String::as_str), s) {
                    Ok(svc) => Some(svc),
                    Err(e) => return error(StatusCode::NOT_FOUND, e),
                },
                None => None,
            };
            reply(
                StatusCode::OK,
                json!({ "volumes": ctl.volumes(svc.as_deref()) }),
            )
        }
        (Method::GET, "/v1/volumes/snapshots") => {
            let Some(service) = q.get("service") else {
                return error(StatusCode::BAD_REQUEST, "missing ?service=NAME");
            };
            match ctl.find_svc(q.get("project").map(String::as_str), service) {
                Ok(svc) => match ctl.state.snapshots(&svc.project, &svc.name) {
                    Ok(s) => reply(
                        StatusCode::OK,
                        json!({ "project": svc.project, "service": svc.name, "keep": crate::engine::KEEP_SNAPSHOTS, "snapshots": s }),
                    ),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                },
                Err(e) => error(StatusCode::NOT_FOUND, e),
            }
        }
        (Method::POST, "/v1/volumes/restore") => {
            let (Some(service), Some(volume), Some(snapshot)) = (
                str_field("service"),
                str_field("volume"),
                body.get("snapshot").and_then(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .or_else(|| v.as_i64().map(|n| n.to_string()))
                }),
            ) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "missing \"service\", \"volume\" or \"snapshot\"",
                );
            };
            match ctl.find_svc(str_field("project").as_deref(), &service) {
                Ok(svc) => match ctl.restore_volume(&svc, &volume, &snapshot).await {
                    Ok(v) => reply(StatusCode::OK, v),
                    Err(e) => error(StatusCode::CONFLICT, e),
                },
                Err(e) => error(StatusCode::NOT_FOUND, e),
            }
        }
        (Method::POST, action @ ("/v1/promote" | "/v1/abort" | "/v1/pause" | "/v1/resume")) => {
            let Some(service) = str_field("service") else {
                return error(StatusCode::BAD_REQUEST, "missing \"service\"");
            };
            let svc = match ctl.find_svc(str_field("project").as_deref(), &service) {
                Ok(s) => s,
                Err(e) => return error(StatusCode::NOT_FOUND, e),
            };
            let verb = action.trim_start_matches("/v1/");
            let r = match verb {
                "promote" => ctl.promote(&svc),
                "abort" => ctl.abort(&svc),
                "pause" => ctl.pause(&svc, true),
                _ => ctl.pause(&svc, false),
            };
            match r {
                Ok(()) => reply(
                    StatusCode::OK,
                    json!({ "service": svc.name, "action": verb }),
                ),
                Err(e) => error(StatusCode::CONFLICT, e),
            }
        }
        (Method::POST, "/v1/drift") => {
            let fix = body.get("fix").and_then(Value::as_bool).unwrap_or(false);
            let mode = if body.get("full").and_then(Value::as_bool).unwrap_or(false) {
                recast_guard::Mode::Full
            } else {
                recast_guard::Mode::Metadata
            };
            let service = str_field("service");
            if let Some(s) = &service
                && let Err(e) = ctl.find_svc(str_field("project").as_deref(), s)
            {
                return error(StatusCode::NOT_FOUND, e);
            }
            match ctl.drift(service.as_deref(), mode, fix).await {
                Ok((instances, replaced)) => {
                    let drifted = instances.iter().filter(|d| !d.findings.is_empty()).count();
                    reply(
                        StatusCode::OK,
                        json!({ "instances": instances, "drifted": drifted, "replaced": replaced }),
                    )
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
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
            let services: Vec<String> = body
                .get("services")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let volumes = body
                .get("volumes")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let removed = ctl
                .destroy(str_field("project").as_deref(), &services, volumes)
                .await;
            reply(StatusCode::OK, json!({ "removed": removed }))
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such API endpoint: {path}"),
        ),
    }
}

/// History of a service that has no live instances any more (destroyed), from the state store.
fn history_from_state(ctl: &Ctl, service: &str) -> Option<Resp> {
    let all = ctl.state.routes().ok()?;
    let project = all
        .iter()
        .find(|r| r.service == service)
        .map(|r| r.project.clone())?;
    let releases = ctl.state.releases(&project, service).ok()?;
    (!releases.is_empty()).then(|| {
        reply(
            StatusCode::OK,
            json!({ "project": project, "service": service, "releases": releases }),
        )
    })
}

async fn status(ctl: &Ctl, only: Option<&str>) -> Value {
    let mut services = Vec::new();
    for svc in ctl.all_svcs() {
        if only.is_some_and(|s| s != svc.name) {
            continue;
        }
        let current = ctl.state.current(&svc.project, &svc.name).ok().flatten();
        if current.is_none() && svc.live.lock().map(|l| l.is_empty()).unwrap_or(true) {
            continue;
        }
        let instances: Vec<Value> = svc
            .live
            .lock()
            .map(|live| {
                live.iter()
                    .map(|l| {
                        json!({
                            "id": l.inst.id, "release": l.release, "active": l.active, "healthy": l.healthy,
                            "state": if l.exited.is_some() { "exited" } else { "running" },
                            "exit_status": l.exited.flatten(), "port": l.inst.port,
                            "age_ms": l.inst.age().as_millis() as u64,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let table = svc.proxy.table();
        let total: u32 = table.groups.iter().map(|g| g.weight).sum();
        let traffic: Vec<Value> = table
            .groups
            .iter()
            .map(|g| {
                let m = svc.proxy.metrics(g.release).snapshot();
                json!({
                    "release": g.release,
                    "percent": if total == 0 { 0.0 } else { f64::from(g.weight) * 100.0 / f64::from(total) },
                    "instances": g.backends.len(),
                    "requests": m.requests, "errors_5xx": m.errors_5xx, "connect_failures": m.connect_failures,
                    "p99_ms": m.quantile(0.99).as_secs_f64() * 1000.0,
                })
            })
            .collect();
        services.push(json!({
            "project": svc.project,
            "service": svc.name,
            "current_release": current.as_ref().map(|r| r.number),
            "image": current.as_ref().map(|r| r.image.clone()),
            "digest": current.as_ref().map(|r| r.digest.clone()),
            "rollout": svc.rollout.lock().ok().and_then(|r| r.clone()),
            "paused": svc.paused.load(std::sync::atomic::Ordering::SeqCst) && svc.rollout.lock().map(|r| r.is_some()).unwrap_or(false),
            "verdicts": svc.verdicts.lock().map(|v| v.clone()).unwrap_or_default(),
            "drift": svc.guard.lock().map(|g| g.drift.iter().filter(|d| !d.findings.is_empty()).cloned().collect::<Vec<_>>()).unwrap_or_default(),
            "instances": instances,
            "traffic": traffic,
        }));
    }
    let routes: Vec<Value> = ctl.route_rows().await.into_iter().map(|r| json!({ "project": r.project, "route": r.name, "listen": r.listen, "service": r.service })).collect();
    json!({ "services": services, "routes": routes, "at": Instant::now().elapsed().as_millis() as u64 })
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
                let data = serde_json::to_string(&e).unwrap_or_default();
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
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let svc = match ctl.find_svc(project, name) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::NOT_FOUND, e),
    };
    if let Err(e) = crate::logs::check(&ctl, &svc) {
        return error(StatusCode::NOT_FOUND, e);
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
fn verdicts(ctl: &Ctl, project: &str, service: &str) -> Vec<Value> {
    ctl.state
        .events_of(project, service, "analysis.verdict")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| serde_json::from_str(&e.message).ok())
        .collect()
}
