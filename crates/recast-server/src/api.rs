//! The HTTP API (JSON, bearer token) that the CLI speaks to.

use crate::engine::Ctl;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, v: Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
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
        match req.into_body().collect().await {
            Ok(b) => {
                let bytes = b.to_bytes();
                if bytes.len() > 1 << 20 {
                    return error(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB");
                }
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
            match ctl.start_apply(std::path::Path::new(&p)) {
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
                        json!({ "project": svc.project, "service": svc.name, "releases": r, "rollouts": ctl.state.rollouts(&svc.project, &svc.name).unwrap_or_default() }),
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
            match ctl.find_svc(str_field("project").as_deref(), &service) {
                Ok(svc) => match ctl.rollback(&svc, to).await {
                    Ok(r) => reply(StatusCode::OK, serde_json::to_value(r).unwrap_or_default()),
                    Err(e) => error(StatusCode::CONFLICT, e),
                },
                Err(e) => error(StatusCode::NOT_FOUND, e),
            }
        }
        (Method::POST, "/v1/promote") => {
            let Some(service) = str_field("service") else {
                return error(StatusCode::BAD_REQUEST, "missing \"service\"");
            };
            match ctl.find_svc(str_field("project").as_deref(), &service) {
                Ok(svc) => {
                    ctl.promote(&svc);
                    reply(
                        StatusCode::OK,
                        json!({ "service": svc.name, "promoted": true }),
                    )
                }
                Err(e) => error(StatusCode::NOT_FOUND, e),
            }
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
