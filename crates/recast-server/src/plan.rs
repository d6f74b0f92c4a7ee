//! The plan: what applying a spec would change, compared with the recorded state.
//!
//! Pure: the spec, the built image digests and the recorded facts ([`Recorded`], gathered from
//! the state store by the caller) go in; the plan comes out. `recast plan` and the server's
//! apply compute it the same way.
//!
//! A service is unchanged when its current release's record, decoded into the current spec
//! model, has the same canonical hash as the spec (see [`crate::record`]): a field the model
//! gained since the release was recorded takes its default on both sides and changes nothing.

use crate::record::{RecordError, ReleaseRecord, canonical_hash, secret_digests};
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
    /// The keyed digests of the secrets it uses, by name.
    pub secrets: BTreeMap<String, String>,
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
            secrets: secret_digests(&record.secrets),
            digest: record.digest,
            image: record.image,
        })
    }

    fn hash(&self) -> String {
        canonical_hash(&self.service, &self.digest, &self.image, &self.secrets)
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
    /// With `require { promoted_from }`: how long each image digest of each service was live in
    /// that environment.
    pub soak: Option<Soak>,
}

/// What an environment's `require` block asks, and what the state says of it.
#[derive(Debug, Clone, Default)]
pub struct Soak {
    /// The environment images must come from, and for how long they must have been live there.
    pub from: String,
    pub need: std::time::Duration,
    /// (service, digest) → the longest time it was the live release there (up to now).
    pub live: BTreeMap<(String, String), std::time::Duration>,
}

impl Soak {
    /// Whether `digest` of `service` satisfies the requirement: `Ok(line for the plan)` or
    /// `Err(why not)`.
    pub fn check(&self, service: &str, digest: &str) -> Result<String, String> {
        let from = &self.from;
        // How long it was live, in whole seconds ("2h5m3s", not "2h5m3s417ms").
        let live = |d: &std::time::Duration| dur(std::time::Duration::from_secs(d.as_secs()));
        match self.live.get(&(service.to_string(), digest.to_string())) {
            Some(d) if *d >= self.need => Ok(format!(
                "digest {} verified in {from} for {}",
                short(digest),
                live(d)
            )),
            Some(d) => Err(format!(
                "digest {} has been live in {from} for {}; this environment requires {} (require.soak)",
                short(digest),
                live(d),
                dur(self.need)
            )),
            None => Err(format!(
                "digest {} of service {service} has never been live in {from}; this environment requires it (require.promoted_from)",
                short(digest)
            )),
        }
    }
}

/// How long each (service, digest) was the live release of `project`, at the longest: a
/// release is live from the end of its successful rollout until the next successful release of
/// the service (or now, while it is current); releases rolled back never count.
pub fn live_times(
    state: &State,
    project: &str,
    now_ms: i64,
) -> Result<BTreeMap<(String, String), std::time::Duration>, recast_state::Error> {
    let current = state.current_releases(project)?;
    let mut out = BTreeMap::new();
    for service in current.keys() {
        let rows = state.releases(project, service)?;
        let live: Vec<&recast_state::Release> = rows
            .iter()
            .filter(|r| r.outcome == recast_api::v1::ReleaseOutcome::Succeeded)
            .collect();
        for (i, r) in live.iter().enumerate() {
            let Some(from) = r.finished_ms else { continue };
            let is_current = current.get(service).is_some_and(|c| c.number == r.number);
            let until = match live.get(i + 1).and_then(|n| n.finished_ms) {
                _ if is_current => now_ms,
                Some(next) => next,
                None => continue,
            };
            let d = std::time::Duration::from_millis(until.saturating_sub(from).max(0) as u64);
            let e = out
                .entry((service.clone(), r.digest.clone()))
                .or_insert(std::time::Duration::ZERO);
            *e = (*e).max(d);
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    #[error("reading the state store: {0}")]
    State(#[from] recast_state::Error),
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl Recorded {
    /// Read what the plan of `spec` (deployed as `project`) needs from the state store.
    pub fn gather(state: &State, project: &str, spec: &Project) -> Result<Recorded, GatherError> {
        let mut r = Recorded::gather_project(state, project)?;
        let require = spec
            .environment
            .as_ref()
            .and_then(|e| spec.environments.get(e))
            .and_then(|e| e.require.as_ref());
        if let Some(req) = require {
            let source = format!("{}@{}", base_name(project), req.promoted_from);
            r.soak = Some(Soak {
                from: req.promoted_from.clone(),
                need: req.soak,
                live: live_times(state, &source, state.db_now_ms()?)?,
            });
        }
        Ok(r)
    }

    /// What the plan needs of `project`'s own records.
    pub fn gather_project(state: &State, project: &str) -> Result<Recorded, GatherError> {
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
            soak: None,
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
    /// Why applying it is refused (the environment's `require` block), if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// How long its image was live where the environment's `require` block says it must have
    /// been ("digest sha256:… verified in staging for 2h").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub project: String,
    pub services: Vec<ServicePlan>,
    /// Routes added or removed: "add web 127.0.0.1:8080 → hello".
    pub routes: Vec<String>,
}

impl Plan {
    /// A hash of everything the plan says (`recast plan -out`, and the apply of a saved plan
    /// checks it is still the plan).
    pub fn fingerprint(&self) -> String {
        // Not the soak times: they grow while the plan waits, and were checked when it was made.
        let mut p = self.clone();
        for s in &mut p.services {
            s.verified = None;
        }
        let v = serde_json::to_value(&p).unwrap_or_default();
        let bytes = serde_json::to_vec(&crate::record::canonical(v)).unwrap_or_default();
        recast_image::Digest::of(&bytes).hex().to_string()
    }

    /// Every reason the plan cannot be applied, one per refused service.
    pub fn refusals(&self) -> Vec<String> {
        self.services
            .iter()
            .filter_map(|s| Some(format!("service {}: {}", s.service, s.refused.as_ref()?)))
            .collect()
    }

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
///
/// An environment's deployment is a project of its own: `NAME@ENV` (`@` is in no name).
pub fn project_name(project: &Project) -> String {
    let base = spec_name(project);
    match &project.environment {
        Some(env) => format!("{base}@{env}"),
        None => base,
    }
}

/// Whether `project` is the one `filter` names: exactly, or `@ENV` for any project in that
/// environment (`recast … --env ENV`); no filter names every project.
pub fn names_project(filter: Option<&str>, project: &str) -> bool {
    match filter {
        None => true,
        Some(env) if env.starts_with('@') => project.ends_with(env),
        Some(p) => project == p,
    }
}

/// The project name without its environment: `hello@staging` → `hello`.
pub fn base_name(project: &str) -> &str {
    project.split_once('@').map_or(project, |(base, _)| base)
}

/// The name the spec gives the project, whatever the environment.
fn spec_name(project: &Project) -> String {
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

/// The keyed digests of the secrets `svc` uses, from every secret's digest.
pub fn service_secrets(
    svc: &Service,
    secrets: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    svc.secrets()
        .into_iter()
        .map(|n| (n.to_string(), secrets.get(n).cloned().unwrap_or_default()))
        .collect()
}

/// Compare the spec (with its images' digests and its secrets' keyed digests) with the
/// recorded state. No I/O.
pub fn plan(
    project: &Project,
    name: &str,
    digests: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
    recorded: &Recorded,
) -> Plan {
    let mut services = Vec::new();
    for (sname, svc) in &project.services {
        let digest = digests.get(&svc.image).cloned().unwrap_or_default();
        let secrets = service_secrets(svc, secrets);
        let current = recorded.current.get(sname);
        let next_number = recorded.last_numbers.get(sname).map_or(1, |n| n + 1);
        let (action, reasons, created, retired) = match current {
            None => (
                Action::Create,
                vec!["new service".to_string()],
                svc.instances,
                0,
            ),
            Some(c) if c.hash() == canonical_hash(svc, &digest, &svc.image, &secrets) => {
                (Action::Unchanged, Vec::new(), 0, 0)
            }
            Some(c) => (
                Action::Update,
                differences(c, svc, &digest, &secrets),
                svc.instances,
                c.service.instances,
            ),
        };
        let changing = action != Action::Unchanged;
        let (mut refused, mut verified) = (None, None);
        if let Some(soak) = recorded.soak.as_ref().filter(|_| changing) {
            match soak.check(sname, &digest) {
                Ok(line) => verified = Some(line),
                Err(why) => refused = Some(why),
            }
        }
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
            refused,
            verified,
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
                refused: None,
                verified: None,
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
fn differences(
    old: &Current,
    new: &Service,
    digest: &str,
    secrets: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut names: Vec<&String> = old.secrets.keys().chain(secrets.keys()).collect();
    names.sort();
    names.dedup();
    for n in names {
        match (old.secrets.get(n), secrets.get(n)) {
            (Some(a), Some(b)) if a != b => out.push(format!("secret {n} changed")),
            (None, Some(_)) => out.push(format!("secret {n} added")),
            (Some(_), None) => out.push(format!("secret {n} no longer used")),
            _ => {}
        }
    }
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
