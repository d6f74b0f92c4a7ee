//! What the API shows of the running system: `GET /v1/status` (services, instances, traffic,
//! routes) and `GET /metrics` (Prometheus text, rendered by `prometheus-client`).

use super::{Answer, Req, Resp, answer, wire};
use crate::engine::{Ctl, Svc};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use recast_api::v1::{self, InstancePhase};
use recast_proxy::Snapshot;
use recast_state::RouteRow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
        .map(wire::route_status)
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

/// `GET /metrics`: Prometheus text exposition (format 0.0.4, rendered by `prometheus-client`):
/// per route and release request counts, errors and latency histograms; rollout state;
/// instance health; the guard's scans.
pub(super) async fn metrics(ctl: &Ctl) -> Answer {
    let routes = ctl.route_rows().await;
    let scrape = Scrape::read(ctl, &routes);
    let text = scrape.render().map_err(|_| {
        super::Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "GET /metrics: the Prometheus text encoder failed",
        )
    })?;
    Ok(prometheus_text(text))
}

/// A metric's labels, in the order they are rendered.
type Labels = Vec<(&'static str, String)>;

/// What one scrape shows, read from the engine and the data planes' counters when `/metrics`
/// is asked for. A fresh registry with this as its only collector renders it: the values are
/// already counters kept elsewhere (the proxy's, the guard's), so no metric objects live here.
#[derive(Debug, Default)]
struct Scrape {
    /// Per route, service, project and release: the proxy's counters.
    releases: Vec<(Labels, Snapshot)>,
    /// Per service and project: whether a rollout runs.
    rollouts: Vec<(Labels, bool)>,
    /// Per service, instance and release: whether the instance passes its health checks.
    instances: Vec<(Labels, bool)>,
    /// Per service and project: the guard's scheduled scans and the time they took.
    scans: Vec<(Labels, u64, Duration)>,
}

impl Scrape {
    fn read(ctl: &Ctl, routes: &[RouteRow]) -> Scrape {
        let mut scrape = Scrape {
            releases: release_counters(ctl, routes),
            ..Scrape::default()
        };
        for svc in ctl.all_svcs() {
            let running = svc.rollout.lock().map(|r| r.is_some()).unwrap_or(false);
            scrape.rollouts.push((
                vec![
                    ("service", svc.name.clone()),
                    ("project", svc.project.clone()),
                ],
                running,
            ));
            if let Ok(live) = svc.live.lock() {
                for l in live.iter() {
                    scrape.instances.push((
                        vec![
                            ("service", svc.name.clone()),
                            ("instance", l.inst.id.clone()),
                            ("release", l.release.to_string()),
                        ],
                        l.healthy,
                    ));
                }
            }
        }
        scrape.scans = crate::guard::scan_totals(ctl)
            .into_iter()
            .map(|(project, service, n, t)| {
                (vec![("service", service), ("project", project)], n, t)
            })
            .collect();
        scrape
    }

    /// The Prometheus text (0.0.4) of this scrape.
    fn render(self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        // Counter names get `_total` from the encoder: `recast_requests` is `recast_requests_total`.
        let releases = &self.releases;
        counter(
            &mut enc,
            "recast_requests",
            "Requests proxied, per route and release.",
            releases.iter().map(|(l, m)| (l, m.requests)),
        )?;
        counter(
            &mut enc,
            "recast_errors",
            "Responses with status 5xx.",
            releases.iter().map(|(l, m)| (l, m.errors_5xx)),
        )?;
        counter(
            &mut enc,
            "recast_connect_failures",
            "Failed connections to instances.",
            releases.iter().map(|(l, m)| (l, m.connect_failures)),
        )?;
        let mut latency = enc.encode_descriptor(
            "recast_request_duration_seconds",
            "Time to response headers.",
            None,
            MetricType::Histogram,
        )?;
        for (l, m) in releases {
            let (sum, count, buckets) = histogram(m);
            latency
                .encode_family(l)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        gauge(
            &mut enc,
            "recast_rollout_in_progress",
            "1 while a rollout runs.",
            self.rollouts.iter().map(|(l, on)| (l, *on)),
        )?;
        gauge(
            &mut enc,
            "recast_instance_healthy",
            "1 when an instance passes its health checks.",
            self.instances.iter().map(|(l, on)| (l, *on)),
        )?;
        counter(
            &mut enc,
            "recast_guard_scans",
            "Scheduled drift scans of instances.",
            self.scans.iter().map(|(l, n, _)| (l, *n)),
        )?;
        counter(
            &mut enc,
            "recast_guard_scan_seconds",
            "Time spent in scheduled drift scans of instances.",
            self.scans.iter().map(|(l, _, t)| (l, t.as_secs_f64())),
        )
    }
}

/// One counter family: its HELP and TYPE, then a sample per label set.
fn counter<'a, V: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (&'a Labels, V)>,
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, v) in samples {
        family
            .encode_family(l)?
            .encode_counter::<NoLabelSet, V, f64>(&v, None)?;
    }
    Ok(())
}

/// One 0/1 gauge family: its HELP and TYPE, then a sample per label set.
fn gauge<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (&'a Labels, bool)>,
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, on) in samples {
        family.encode_family(l)?.encode_gauge(&i64::from(on))?;
    }
    Ok(())
}

/// The proxy's latency histogram as Prometheus wants it: sum and count in seconds, and per
/// bucket its upper bound in seconds and its own (not cumulative) count. The bounds are the
/// proxy's own (50 µs doubling to ~52.4 s); its overflow bucket is `+Inf`.
fn histogram(m: &Snapshot) -> (f64, u64, Vec<(f64, u64)>) {
    let buckets = m
        .latency
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let le = if i + 1 < recast_proxy::BUCKETS {
                recast_proxy::bucket_bound_us(i) as f64 / 1e6
            } else {
                f64::INFINITY
            };
            (le, n)
        })
        .collect();
    let sum = m.latency_sum_us as f64 / 1e6;
    (sum, m.latency.iter().sum(), buckets)
}

/// The counters of every release of every service (live or current), each with its labels.
fn release_counters(ctl: &Ctl, routes: &[RouteRow]) -> Vec<(Labels, Snapshot)> {
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
            let labels = vec![
                ("route", route.clone()),
                ("service", svc.name.clone()),
                ("project", svc.project.clone()),
                ("release", r.to_string()),
            ];
            lines.push((labels, m));
        }
    }
    lines
}

/// A Prometheus text (0.0.4) answer.
fn prometheus_text(out: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(out)).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        ),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// One sample line of Prometheus text: name, labels (unescaped), value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// Parses Prometheus text 0.0.4 strictly: every line is `# HELP`, `# TYPE` or a sample;
    /// label values are quoted with only `\\`, `\"` and `\n` escaped; each sample's family has
    /// a TYPE before it.
    fn parse(text: &str) -> Result<Vec<Sample>, String> {
        let name_ok = |n: &str| {
            !n.is_empty()
                && !n.starts_with(|c: char| c.is_ascii_digit())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let at = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# ") {
                let (kind, rest) = rest.split_once(' ').ok_or_else(|| at("comment"))?;
                let (name, tail) = rest.split_once(' ').ok_or_else(|| at("comment"))?;
                if !name_ok(name) || tail.contains('\n') {
                    return Err(at("metric name in comment"));
                }
                match kind {
                    "HELP" => {}
                    "TYPE" => {
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail)
                        {
                            return Err(at("type"));
                        }
                        types.insert(name.to_string(), tail.to_string());
                    }
                    _ => return Err(at("comment kind")),
                }
                continue;
            }
            let end = line
                .find(['{', ' '])
                .ok_or_else(|| at("sample without value"))?;
            let name = &line[..end];
            if !name_ok(name) {
                return Err(at("metric name"));
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
                .unwrap_or(name);
            if !types.contains_key(family) {
                return Err(at("sample before its TYPE"));
            }
            let mut rest = &line[end..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                rest = r;
                loop {
                    if let Some(r) = rest.strip_prefix('}') {
                        rest = r;
                        break;
                    }
                    let (key, r) = rest.split_once("=\"").ok_or_else(|| at("label"))?;
                    if !name_ok(key) || key.contains(':') {
                        return Err(at("label name"));
                    }
                    let mut value = String::new();
                    let mut chars = r.char_indices();
                    let close = loop {
                        match chars.next().ok_or_else(|| at("unterminated label value"))? {
                            (i, '"') => break i,
                            (_, '\\') => match chars.next().map(|c| c.1) {
                                Some('\\') => value.push('\\'),
                                Some('"') => value.push('"'),
                                Some('n') => value.push('\n'),
                                _ => return Err(at("bad escape")),
                            },
                            (_, c) => value.push(c),
                        }
                    };
                    labels.push((key.to_string(), value));
                    rest = &r[close + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
            }
            let value = rest
                .strip_prefix(' ')
                .ok_or_else(|| at("space before value"))?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().map_err(|_| at("value"))?,
            };
            samples.push((name.to_string(), labels, value));
        }
        Ok(samples)
    }

    fn labels(pairs: &[(&'static str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn metrics_render_as_valid_prometheus_text_with_escaped_labels_and_full_histograms() {
        let m = recast_proxy::Metrics::default();
        for ms in [1, 1, 250, 31_000] {
            m.record(200, Duration::from_millis(ms));
        }
        m.record(503, Duration::from_secs(90));
        m.connect_failed();
        let awkward = "we\"b\\n\nx";
        let project = "shop@staging";
        let release = labels(&[
            ("route", "front"),
            ("service", awkward),
            ("project", project),
            ("release", "3"),
        ]);
        let svc = labels(&[("service", awkward), ("project", project)]);
        let scrape = Scrape {
            releases: vec![(release.clone(), m.snapshot())],
            rollouts: vec![(svc.clone(), true)],
            instances: vec![(
                labels(&[
                    ("service", awkward),
                    ("instance", "we-r3-1"),
                    ("release", "3"),
                ]),
                false,
            )],
            scans: vec![(svc.clone(), 7, Duration::from_millis(1500))],
        };
        let text = scrape.render().expect("render");
        let samples = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let owned = |l: &Labels| -> Vec<(String, String)> {
            l.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
        };
        let value = |name: &str, l: &Labels| {
            samples
                .iter()
                .find(|s| s.0 == name && s.1 == owned(l))
                .unwrap_or_else(|| panic!("no {name} with {l:?} in\n{text}"))
                .2
        };
        // The label values come back unchanged (quote, backslash, newline, `@`), in order.
        assert_eq!(value("recast_requests_total", &release), 5.0);
        assert_eq!(value("recast_errors_total", &release), 1.0);
        assert_eq!(value("recast_connect_failures_total", &release), 1.0);
        assert_eq!(value("recast_rollout_in_progress", &svc), 1.0);
        assert_eq!(value("recast_guard_scans_total", &svc), 7.0);
        assert_eq!(value("recast_guard_scan_seconds_total", &svc), 1.5);
        assert!(
            text.contains("# TYPE recast_request_duration_seconds histogram\n"),
            "{text}"
        );
        // The histogram: cumulative buckets up past 30 s, then +Inf = _count, and _sum.
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.0 == "recast_request_duration_seconds_bucket")
            .map(|s| {
                assert_eq!(&s.1[..4], &owned(&release)[..], "{text}");
                let le = &s.1.last().expect("le").1;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                (le, s.2)
            })
            .collect();
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{buckets:?}"
        );
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 5.0)), "{text}");
        let count_at = |secs: f64| {
            buckets
                .iter()
                .find(|b| b.0 >= secs)
                .map(|b| b.1)
                .expect("a bucket")
        };
        assert_eq!(count_at(0.001), 2.0, "{buckets:?}");
        assert_eq!(count_at(0.25), 3.0, "{buckets:?}");
        assert!(
            buckets.iter().any(|b| b.0 >= 30.0 && b.0.is_finite()),
            "a finite bucket at or above 30 s: {buckets:?}"
        );
        assert_eq!(count_at(26.0), 3.0, "31 s is above the 26.2 s bound");
        assert_eq!(count_at(30.0), 4.0, "31 s is within the 52.4 s bound");
        assert_eq!(count_at(60.0), 5.0, "90 s is only in +Inf");
        assert_eq!(
            value("recast_request_duration_seconds_count", &release),
            5.0
        );
        let sum = value("recast_request_duration_seconds_sum", &release);
        assert!((sum - 121.252).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn the_parser_refuses_what_prometheus_would() {
        let ok = "# TYPE a_total counter\na_total{x=\"1\"} 1\n";
        parse(ok).expect("valid");
        for bad in [
            "# TYPE a_total counter\na_total{x=\"a\"b\"} 1\n",
            "# TYPE a_total counter\na_total{x=\"a\nb\"} 1\n",
            "# TYPE a_total counter\na_total{x=\"a\\qb\"} 1\n",
            "a_total 1\n",
            "# TYPE a_total counter\na_total{x=\"1\"}\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_content_type_is_prometheus_text() {
        let r = prometheus_text(String::new());
        assert_eq!(
            r.headers()[hyper::header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }
}
