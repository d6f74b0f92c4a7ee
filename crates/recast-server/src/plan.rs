//! The plan: what applying a spec would change, compared with the recorded state.
//!
//! Pure: the spec, the built image digests and the recorded facts ([`Recorded`], gathered from
//! the state store by the caller) go in; the plan comes out. `recast plan` and the server's
//! apply compute it the same way.
//!
//! A service is unchanged when its current release's record, decoded into the current spec
//! model, has the same canonical hash as the spec (see [`crate::record`]): a field the model
//! gained since the release was recorded takes its default on both sides and changes nothing.

use crate::record::{RecordError, ReleaseRecord, canonical_hash};
use recast_spec::{Project, Protocol as RouteProtocol, Service};
use recast_state::State;
use serde::Serialize;
use std::collections::BTreeMap;

/// The current release of a service, as recorded.
#[derive(Debug, Clone)]
pub struct Current {
    pub number: i64,
    pub digest: String,
    pub image: String,
    /// The release's record decoded into the current spec model.
    pub service: Service,
}

impl Current {
    pub fn from_row(row: &recast_state::Release) -> Result<Current, RecordError> {
        Current::new(row.number, ReleaseRecord::read(row)?)
    }

    /// Release `number`, recorded as `record`.
    pub fn new(number: i64, record: ReleaseRecord) -> Result<Current, RecordError> {
        Ok(Current {
            number,
            service: record.service()?,
            digest: record.digest,
            image: record.image,
        })
    }

    fn hash(&self) -> String {
        canonical_hash(&self.service, &self.digest, &self.image)
    }
}

/// What the state store records about a project, as far as the plan needs it.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// The current release of each service.
    pub current: BTreeMap<String, Current>,
    /// The highest release number of each service, failed releases included.
    pub last_numbers: BTreeMap<String, i64>,
    /// Each route of the project: name → (listen address, service, protocol).
    pub routes: BTreeMap<String, (String, String, RouteProtocol)>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    #[error("reading the state store: {0}")]
    State(#[from] recast_state::Error),
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl Recorded {
    /// Read what the plan of `project` needs from the state store.
    pub fn gather(state: &State, project: &str) -> Result<Recorded, GatherError> {
        let mut current = BTreeMap::new();
        for (service, row) in state.current_releases(project)? {
            current.insert(service, Current::from_row(&row)?);
        }
        let routes = state
            .routes()?
            .into_iter()
            .filter(|r| r.project == project)
            .map(|r| (r.name, (r.listen, r.service, r.protocol)))
            .collect();
        Ok(Recorded {
            current,
            last_numbers: state.last_release_numbers(project)?,
            routes,
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Unchanged,
    Remove,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicePlan {
    pub service: String,
    pub action: Action,
    pub current_release: Option<i64>,
    /// The number the new release will get.
    pub next_release: Option<i64>,
    pub digest: Option<String>,
    /// Why it changes: one line per changed setting.
    pub reasons: Vec<String>,
    pub instances_created: u32,
    pub instances_retired: u32,
    pub strategy: Option<String>,
    /// The rollout, step by step, with expected timing.
    pub steps: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub project: String,
    pub services: Vec<ServicePlan>,
    /// Routes added or removed: "add web 127.0.0.1:8080 → hello".
    pub routes: Vec<String>,
}

impl Plan {
    pub fn changes(&self) -> usize {
        self.services
            .iter()
            .filter(|s| s.action != Action::Unchanged)
            .count()
            + self.routes.len()
    }
}

/// The project name of a spec: its `project = "…"`, else its directory's name (see
/// `crate::project` for who may use a name).
pub fn project_name(project: &Project) -> String {
    if let Some(n) = &project.name {
        return n.clone();
    }
    let dir = std::fs::canonicalize(&project.dir).unwrap_or_else(|_| project.dir.clone());
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "default".into());
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if clean.is_empty() {
        "default".into()
    } else {
        clean
    }
}

/// Compare the spec (with its images' digests) with the recorded state. No I/O.
pub fn plan(
    project: &Project,
    name: &str,
    digests: &BTreeMap<String, String>,
    recorded: &Recorded,
) -> Plan {
    let mut services = Vec::new();
    for (sname, svc) in &project.services {
        let digest = digests.get(&svc.image).cloned().unwrap_or_default();
        let current = recorded.current.get(sname);
        let next_number = recorded.last_numbers.get(sname).map_or(1, |n| n + 1);
        let (action, reasons, created, retired) = match current {
            None => (
                Action::Create,
                vec!["new service".to_string()],
                svc.instances,
                0,
            ),
            Some(c) if c.hash() == canonical_hash(svc, &digest, &svc.image) => {
                (Action::Unchanged, Vec::new(), 0, 0)
            }
            Some(c) => (
                Action::Update,
                differences(c, svc, &digest),
                svc.instances,
                c.service.instances,
            ),
        };
        let changing = action != Action::Unchanged;
        services.push(ServicePlan {
            service: sname.clone(),
            action,
            current_release: current.map(|c| c.number),
            next_release: changing.then_some(next_number),
            digest: Some(digest),
            reasons,
            instances_created: created,
            instances_retired: retired,
            strategy: changing.then(|| svc.rollout.strategy.name().to_string()),
            steps: if changing {
                steps(svc, current.is_none())
            } else {
                Vec::new()
            },
        });
    }
    for (sname, cur) in &recorded.current {
        if !project.services.contains_key(sname) {
            services.push(ServicePlan {
                service: sname.clone(),
                action: Action::Remove,
                current_release: Some(cur.number),
                next_release: None,
                digest: None,
                reasons: vec!["no longer in the spec".into()],
                instances_created: 0,
                instances_retired: cur.service.instances,
                strategy: None,
                steps: vec!["drain and stop every instance".into()],
            });
        }
    }
    let mut routes = Vec::new();
    for (rname, r) in &project.routes {
        let want = (r.listen.to_string(), r.service.clone(), r.protocol);
        match recorded.routes.get(rname) {
            None => routes.push(format!("add route {rname}: {}", route_text(&want))),
            Some(have) if *have != want => routes.push(format!(
                "change route {rname}: {} (was {})",
                route_text(&want),
                route_text(have)
            )),
            _ => {}
        }
    }
    for (rname, have) in &recorded.routes {
        if !project.routes.contains_key(rname) {
            routes.push(format!("remove route {rname}: {}", route_text(have)));
        }
    }
    Plan {
        project: name.to_string(),
        services,
        routes,
    }
}

/// A route as a plan line says it: "127.0.0.1:8080 → web", "… (tcp)" for a TCP route.
fn route_text((listen, service, protocol): &(String, String, RouteProtocol)) -> String {
    match protocol {
        RouteProtocol::Http => format!("{listen} → {service}"),
        RouteProtocol::Tcp => format!("{listen} → {service} (tcp)"),
    }
}

/// Why the current release and the spec differ, one line per changed setting. Both sides are
/// the current model serialised, so a field the model gained is the same (its default) on both.
fn differences(old: &Current, new: &Service, digest: &str) -> Vec<String> {
    let mut out = Vec::new();
    if old.digest != digest {
        out.push(format!(
            "image {}: {} → {}",
            new.image,
            short(&old.digest),
            short(digest)
        ));
    }
    let (a, b) = (
        serde_json::to_value(&old.service).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, v) in b {
            let before = a.get(k).unwrap_or(&serde_json::Value::Null);
            if before != v && k != "image" {
                if k == "env" {
                    let (ea, eb) = (
                        before.as_object().cloned().unwrap_or_default(),
                        v.as_object().cloned().unwrap_or_default(),
                    );
                    let mut keys: Vec<&String> = ea.keys().chain(eb.keys()).collect();
                    keys.sort();
                    keys.dedup();
                    for key in keys {
                        match (ea.get(key), eb.get(key)) {
                            (Some(x), Some(y)) if x != y => {
                                out.push(format!("env {key}: {x} → {y}"))
                            }
                            (None, Some(y)) => out.push(format!("env {key}: added {y}")),
                            (Some(_), None) => out.push(format!("env {key}: removed")),
                            _ => {}
                        }
                    }
                } else {
                    out.push(format!("{k}: {} → {}", compact(before), compact(v)));
                }
            }
        }
    }
    if out.is_empty() {
        out.push("release settings changed".into());
    }
    out
}

fn compact(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}…", &s[..s.floor_char_boundary(80)])
    } else {
        s
    }
}

fn short(d: &str) -> String {
    d.strip_prefix("sha256:").map_or_else(
        || d.to_string(),
        |h| format!("sha256:{}", &h[..h.len().min(12)]),
    )
}

fn dur(d: std::time::Duration) -> String {
    recast_spec::values::format_duration(d)
}

/// The rollout's steps with their expected timing.
fn steps(svc: &Service, first: bool) -> Vec<String> {
    let n = svc.instances;
    let h = &svc.health;
    let ready = h.interval * h.healthy_threshold.saturating_sub(1);
    // A new instance is *starting* until its first healthy verdict: given up only when it
    // exits or is not healthy by its start period (bounded by progress_deadline).
    let start_period = h.start_period.min(svc.rollout.progress_deadline);
    let ready = format!(
        "healthy after ~{}{}",
        dur(ready.max(std::time::Duration::from_millis(100))),
        if start_period.is_zero() {
            format!(
                " (failed after {} failed probe(s), no start period)",
                h.unhealthy_threshold
            )
        } else {
            format!(
                " (start period {}: failed if not healthy by then)",
                dur(start_period)
            )
        }
    );
    if first {
        return vec![format!(
            "start {n} instance(s), {ready}, then route traffic to them"
        )];
    }
    let deadline = format!(
        "rolled back if no progress within {}",
        dur(svc.rollout.progress_deadline)
    );
    crate::rollout::describe(svc, &ready, deadline)
}

#[cfg(test)]
mod tests;
