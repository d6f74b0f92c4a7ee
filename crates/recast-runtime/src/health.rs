//! Health checks: http (2xx), tcp (connects) and exec (exit 0), with thresholds, a start
//! period, and every change of health recorded as a timestamped event.

use crate::{Instance, Runtime, State};
use recast_spec::{Health, HealthCheck};
use serde::Serialize;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How a probe that failed on recast's side (no free file descriptor to open the socket or
/// start the command) begins: it says nothing about the instance, so it counts neither way.
pub const NOT_PROBED: &str = "not probed: recast has no free file descriptor";

/// Whether `e` means this process (or the system) ran out of descriptors.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The probe result for a local failure; logged once until a probe runs again.
fn not_probed(inst: &Instance, e: &dyn std::fmt::Display) -> String {
    if !SHORT_OF_DESCRIPTORS.swap(true, Ordering::Relaxed) {
        eprintln!(
            "recast: health probes are not running ({e}, probing instance {}); their results are unknown, not failures, until descriptors are free",
            inst.id
        );
    }
    format!("{NOT_PROBED} ({e})")
}

/// Set while probes fail for lack of descriptors (so that it is logged once).
static SHORT_OF_DESCRIPTORS: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Starting,
    Healthy,
    Unhealthy,
}

/// A change of health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub status: Status,
    /// The probe result that caused it.
    pub detail: String,
}

/// The health of one instance, fed one probe result at a time.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub status: Status,
    successes: u32,
    failures: u32,
    started: Instant,
    pub events: Vec<Event>,
}

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker::new()
    }
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker {
            status: Status::Starting,
            successes: 0,
            failures: 0,
            started: Instant::now(),
            events: Vec::new(),
        }
    }

    /// A tracker of an instance known to be healthy already (taken over after a restart).
    pub fn healthy() -> Tracker {
        Tracker {
            status: Status::Healthy,
            ..Tracker::new()
        }
    }

    /// Record one probe; returns the event if the health changed. A probe that recast could
    /// not run (`NOT_PROBED`) is unknown: it counts toward neither threshold.
    ///
    /// An instance is *starting* until its first healthy verdict: then failed probes do not
    /// count, and it is unhealthy only once its `start_period` has passed without a healthy
    /// verdict (a zero start period: the thresholds apply from the first probe). Once it has
    /// been healthy, `unhealthy_threshold` consecutive failures make it unhealthy.
    pub fn record(&mut self, result: &Result<(), String>, cfg: &Health) -> Option<&Event> {
        if let Err(e) = result
            && e.starts_with(NOT_PROBED)
        {
            return None;
        }
        let next = match result {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                (self.successes >= cfg.healthy_threshold).then_some(Status::Healthy)
            }
            Err(_) => {
                self.successes = 0;
                if self.status == Status::Starting && !cfg.start_period.is_zero() {
                    (self.started.elapsed() >= cfg.start_period).then_some(Status::Unhealthy)
                } else {
                    self.failures += 1;
                    (self.failures >= cfg.unhealthy_threshold).then_some(Status::Unhealthy)
                }
            }
        };
        let starting = self.status == Status::Starting && !cfg.start_period.is_zero();
        match next {
            Some(s) if s != self.status => {
                self.status = s;
                let at_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64;
                let detail = match result {
                    Ok(()) => "probe passed".to_string(),
                    Err(e) if starting => format!(
                        "not healthy within its start period of {} (last probe: {e})",
                        recast_spec::values::format_duration(cfg.start_period)
                    ),
                    Err(e) => e.clone(),
                };
                self.events.push(Event {
                    at_ms,
                    status: s,
                    detail,
                });
                self.events.last()
            }
            _ => None,
        }
    }
}

/// Run one probe against the instance.
pub fn probe(
    rt: &Runtime,
    inst: &Instance,
    check: &HealthCheck,
    timeout: Duration,
) -> Result<(), String> {
    let r = match check {
        HealthCheck::Tcp => match rt.connect(inst, timeout) {
            Ok(_) => Ok(()),
            Err(e) if out_of_descriptors(&e) => return Err(not_probed(inst, &e)),
            Err(e) => Err(format!("tcp connect to port {}: {e}", inst.port)),
        },
        HealthCheck::Http { path } => match http_get(rt, inst, path, timeout) {
            Ok((status, _)) if (200..300).contains(&status) => Ok(()),
            Ok((status, _)) => Err(format!("GET {path} answered {status}")),
            Err(e) if out_of_descriptors(&e) => return Err(not_probed(inst, &e)),
            Err(e) => Err(format!("GET {path}: {e}")),
        },
        HealthCheck::Exec { command } => match rt.exec(inst, command, timeout) {
            Ok((0, _)) => Ok(()),
            Ok((code, out)) => Err(format!(
                "{command:?} exited with status {code}: {}",
                out.trim()
            )),
            Err(crate::Error::Io { source, .. }) if out_of_descriptors(&source) => {
                return Err(not_probed(inst, &source));
            }
            Err(e) => Err(e.to_string()),
        },
    };
    // The probe ran: a later shortage is logged again.
    SHORT_OF_DESCRIPTORS.store(false, Ordering::Relaxed);
    r
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(
    rt: &Runtime,
    inst: &Instance,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = rt.connect(inst, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: recast-health\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response")
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Probe until the instance is healthy, it exits, or `deadline` passes. Probes fast while the
/// instance starts (every 5 ms), so a ready instance is seen at once; but a failure counts
/// toward `unhealthy_threshold` at most once per `interval`, as if probed at that cadence.
pub fn wait_healthy(
    rt: &Runtime,
    inst: &Instance,
    cfg: &Health,
    deadline: Instant,
) -> Result<Tracker, String> {
    let mut t = Tracker::new();
    let mut counted: Option<Instant> = None;
    loop {
        if let State::Exited { status } = rt.state(inst) {
            return Err(format!(
                "instance {} exited with status {} before it was healthy{}",
                inst.id,
                status.map_or_else(|| "unknown".into(), |s| s.to_string()),
                inst.last_output()
                    .map(|o| format!("; its last output:\n{o}"))
                    .unwrap_or_default()
            ));
        }
        let r = probe(rt, inst, &cfg.check, cfg.timeout);
        let last = r.clone().err();
        let due = counted.is_none_or(|c| c.elapsed() >= cfg.interval);
        if r.is_ok() || due {
            t.record(&r, cfg);
            if r.is_err() {
                counted = Some(Instant::now());
            }
        }
        match t.status {
            Status::Healthy => return Ok(t),
            Status::Unhealthy => {
                return Err(format!(
                    "instance {} is unhealthy: {}",
                    inst.id,
                    t.events
                        .last()
                        .map(|e| e.detail.clone())
                        .or(last)
                        .unwrap_or_default()
                ));
            }
            Status::Starting => {}
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "instance {} was not healthy in time: {}",
                inst.id,
                last.unwrap_or_else(|| "no passing probe".into())
            ));
        }
        let pause = if r.is_ok() {
            cfg.interval
        } else {
            Duration::from_millis(5)
        };
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
    }
}
