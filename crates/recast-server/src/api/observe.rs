//! What the API shows of the running system: `GET /v1/status` (services, instances, traffic,
//! routes) and `GET /metrics` (Prometheus text).

use super::{Answer, Req, Resp, answer, wire};
use crate::engine::{Ctl, Svc};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use recast_api::v1::{self, InstancePhase};
use recast_proxy::Snapshot;
use recast_state::RouteRow;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// `GET /v1/status[?service=NAME]`.
pub(super) async fn status(ctl: &Ctl, req: &Req) -> Answer {
    Ok(answer(
        StatusCode::OK,
        &status_of(ctl, req.get("service")).await,
    ))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Every service (or only the one named) with a current release or live instances, and every
/// route.
async fn status_of(ctl: &Ctl, only: Option<&str>) -> v1::Status {
    let services = ctl
        .all_svcs()
        .iter()
        .filter(|svc| only.is_none_or(|s| s == svc.name))
        .filter_map(|svc| service_status(ctl, svc))
        .collect();
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

/// One service's status row; `None` for one with neither a current release nor live instances.
fn service_status(ctl: &Ctl, svc: &Svc) -> Option<v1::ServiceStatus> {
    let current = ctl.state.current(&svc.project, &svc.name).ok().flatten();
    if current.is_none() && svc.live.lock().map(|l| l.is_empty()).unwrap_or(true) {
        return None;
    }
    let instances = instance_rows(svc);
    let traffic = traffic_rows(svc);
    let rollout = svc.rollout.lock().ok().and_then(|r| r.clone());
    Some(v1::ServiceStatus {
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
    })
}

/// A service's live instances.
fn instance_rows(svc: &Svc) -> Vec<v1::InstanceStatus> {
    svc.live
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
        .unwrap_or_default()
}

/// A service's traffic split, per release group of its routing, with each group's counters.
fn traffic_rows(svc: &Svc) -> Vec<v1::Traffic> {
    let routing = svc.routing();
    let counters = svc.all_metrics();
    let weight = |g: &recast_dataplane::proto::Group| g.weight.unwrap_or(g.backends.len() as u32);
    let total: u32 = routing.groups.iter().map(weight).sum();
    routing
        .groups
        .iter()
        .map(|g| {
            let m = counters
                .get(&g.release)
                .map(Snapshot::from)
                .unwrap_or_default();
            v1::Traffic {
                release: g.release,
                percent: if total == 0 {
                    0.0
                } else {
                    f64::from(weight(g)) * 100.0 / f64::from(total)
                },
                instances: g.backends.len(),
                requests: m.requests,
                errors_5xx: m.errors_5xx,
                connect_failures: m.connect_failures,
                p99_ms: m.quantile(0.99).as_secs_f64() * 1000.0,
            }
        })
        .collect()
}

/// `GET /metrics`: Prometheus text exposition: per route and release request counts, errors
/// and latency histograms; rollout state; instance health.
pub(super) async fn metrics(ctl: &Ctl) -> Answer {
    let mut out = String::new();
    let routes = ctl.route_rows().await;
    let lines = release_counters(ctl, &routes);
    counter(
        &mut out,
        "recast_requests_total",
        "Requests proxied, per route and release.",
        &lines,
        |m| m.requests,
    );
    counter(
        &mut out,
        "recast_errors_total",
        "Responses with status 5xx.",
        &lines,
        |m| m.errors_5xx,
    );
    counter(
        &mut out,
        "recast_connect_failures_total",
        "Failed connections to instances.",
        &lines,
        |m| m.connect_failures,
    );
    latency(&mut out, &lines);
    rollouts_and_health(ctl, &mut out);
    crate::guard::metrics(ctl, &mut out);
    Ok(plain_text(out))
}

/// The counters of every release of every service (live or current), each with its labels.
fn release_counters(ctl: &Ctl, routes: &[RouteRow]) -> Vec<(String, Snapshot)> {
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
        let counters = svc.all_metrics();
        for r in releases {
            let m = counters.get(&r).map(Snapshot::from).unwrap_or_default();
            let l = format!(
                "route=\"{route}\",service=\"{}\",project=\"{}\",release=\"{r}\"",
                svc.name, svc.project
            );
            lines.push((l, m));
        }
    }
    lines
}

/// One counter family: its HELP and TYPE, then a sample per labelled snapshot.
fn counter(
    out: &mut String,
    name: &str,
    help: &str,
    lines: &[(String, Snapshot)],
    value: impl Fn(&Snapshot) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (l, m) in lines {
        let _ = writeln!(out, "{name}{{{l}}} {}", value(m));
    }
}

/// The latency histogram: cumulative buckets from 50µs, doubling.
fn latency(out: &mut String, lines: &[(String, Snapshot)]) {
    let _ = writeln!(
        out,
        "# HELP recast_request_duration_seconds Time to response headers.\n# TYPE recast_request_duration_seconds histogram"
    );
    for (l, m) in lines {
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
}

/// Per service, whether a rollout runs, and per live instance, whether it is healthy.
fn rollouts_and_health(ctl: &Ctl, out: &mut String) {
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
}

/// A Prometheus text answer.
fn plain_text(out: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(out)).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
