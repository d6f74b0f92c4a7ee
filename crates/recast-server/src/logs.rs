//! `GET /v1/services/NAME/logs`: the output of every instance of a service's current release,
//! each line prefixed with its instance, optionally its time; the last lines, those since a
//! moment, and new ones as they come (`follow`). Plain text or JSON lines (`json`), streamed.

use crate::ServerError;
use crate::engine::{Ctl, Svc, lock};
use bytes::Bytes;
use recast_runtime::logs::{self, Cursor, Line};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most lines `tail` may ask for per instance.
pub const MAX_TAIL: usize = 100_000;
/// How often a follower looks for new output and new instances.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// What a request asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The last N lines of each instance.
    pub tail: Option<usize>,
    /// Only lines seen at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    pub timestamps: bool,
    pub follow: bool,
    /// One `v1::InstanceLine` of JSON per line.
    pub json: bool,
}

fn flag(q: &HashMap<String, String>, name: &str) -> Result<bool, ServerError> {
    match q.get(name).map(String::as_str) {
        None | Some("" | "0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(v) => Err(ServerError::Invalid(format!(
            "invalid `{name}` \"{v}\": expected true or false"
        ))),
    }
}

impl Query {
    /// From the request's query string; every bad value is an error naming it.
    pub fn parse(q: &HashMap<String, String>) -> Result<Query, ServerError> {
        let tail = match q.get("tail") {
            None => None,
            Some(t) => match t.parse::<usize>() {
                Ok(n) if n <= MAX_TAIL => Some(n),
                _ => {
                    return Err(ServerError::Invalid(format!(
                        "invalid `tail` \"{t}\": expected a number of lines from 0 to {MAX_TAIL}"
                    )));
                }
            },
        };
        let since_ms = match q.get("since") {
            None => None,
            Some(s) => {
                let d = recast_spec::values::duration(s)
                    .map_err(|e| ServerError::Invalid(format!("`since`: {e}")))?;
                Some(now_ms().saturating_sub(d.as_millis() as u64))
            }
        };
        Ok(Query {
            tail,
            since_ms,
            timestamps: flag(q, "timestamps")?,
            follow: flag(q, "follow")?,
            json: flag(q, "json")?,
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The instances (id → directory) of the service's current release, or why there are none.
fn instances(ctl: &Ctl, svc: &Svc) -> Result<BTreeMap<String, PathBuf>, ServerError> {
    let current = ctl.state.current(&svc.project, &svc.name)?.ok_or_else(|| {
        ServerError::NotFound(format!("service \"{}\" has no current release", svc.name))
    })?;
    Ok(lock(&svc.live)
        .iter()
        .filter(|l| l.release == current.number)
        .map(|l| (l.inst.id.clone(), l.inst.dir().to_path_buf()))
        .collect())
}

fn render(out: &mut String, id: &str, l: &Line, q: &Query) {
    if q.json {
        let line = recast_api::v1::InstanceLine {
            instance: id.to_string(),
            time: logs::rfc3339(l.at_ms),
            stream: match l.stream {
                logs::Stream::Stdout => "stdout",
                logs::Stream::Stderr => "stderr",
            }
            .to_string(),
            line: l.text.clone(),
        };
        out.push_str(&serde_json::to_string(&line).unwrap_or_default());
        out.push('\n');
        return;
    }
    out.push('[');
    out.push_str(id);
    out.push_str("] ");
    if q.timestamps {
        out.push_str(&logs::rfc3339(l.at_ms));
        out.push(' ');
    }
    out.push_str(&l.text);
    out.push('\n');
}

/// Check the service has a current release (so a mistake is an error, not an empty stream).
pub fn check(ctl: &Ctl, svc: &Svc) -> Result<(), ServerError> {
    instances(ctl, svc).map(|_| ())
}

/// Stream the logs on `tx` until done (or, following, until the client goes away).
pub fn stream(ctl: Arc<Ctl>, svc: Arc<Svc>, q: Query, tx: tokio::sync::mpsc::Sender<Bytes>) {
    let send =
        |text: String| -> bool { text.is_empty() || tx.blocking_send(Bytes::from(text)).is_ok() };
    let Ok(first) = instances(&ctl, &svc) else {
        return;
    };
    let mut cursors: BTreeMap<String, Cursor> = BTreeMap::new();
    let mut picked: Vec<(String, Line)> = Vec::new();
    for (id, dir) in &first {
        let (lines, cursor) = logs::read_all(dir, q.follow);
        cursors.insert(id.clone(), cursor);
        let mut lines: Vec<Line> = lines
            .into_iter()
            .filter(|l| q.since_ms.is_none_or(|s| l.at_ms >= s))
            .collect();
        if let Some(n) = q.tail {
            lines.drain(..lines.len().saturating_sub(n));
        }
        picked.extend(lines.into_iter().map(|l| (id.clone(), l)));
    }
    // One timeline across instances; each instance's lines keep their order.
    picked.sort_by_key(|(_, l)| l.at_ms);
    let mut out = String::new();
    for (id, l) in &picked {
        render(&mut out, id, l, &q);
        if out.len() >= 64 << 10 && !send(std::mem::take(&mut out)) {
            return;
        }
    }
    if !send(out) || !q.follow {
        return;
    }
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        if tx.is_closed() {
            return;
        }
        // Instances come and go (replacements, a new release): follow the current ones.
        let Ok(now) = instances(&ctl, &svc) else {
            return;
        };
        cursors.retain(|id, _| now.contains_key(id));
        let mut new: Vec<(String, Line)> = Vec::new();
        for (id, dir) in &now {
            let lines = match cursors.get_mut(id) {
                Some(c) => c.read_new(dir),
                None => {
                    let (lines, c) = logs::read_all(dir, true);
                    cursors.insert(id.clone(), c);
                    lines
                }
            };
            new.extend(lines.into_iter().map(|l| (id.clone(), l)));
        }
        new.sort_by_key(|(_, l)| l.at_ms);
        let mut out = String::new();
        for (id, l) in &new {
            render(&mut out, id, l, &q);
        }
        if !send(out) {
            return;
        }
    }
}
