//! The plan: what applying a spec would change, compared with the recorded state.
//!
//! Pure: the spec, the built image digests and the state go in; the plan comes out. `recast plan`
//! and the server's apply compute it the same way.

use recast_spec::{Count, Project, Service, Strategy};
use recast_state::State;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a release is made of; its hash identifies it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReleaseSpec {
    pub digest: String,
    pub image: String,
    pub service: serde_json::Value,
}

impl ReleaseSpec {
    pub fn new(service: &Service, digest: &str) -> ReleaseSpec {
        ReleaseSpec {
            digest: digest.to_string(),
            image: service.image.clone(),
            service: serde_json::to_value(service).unwrap_or_default(),
        }
    }

    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        recast_image::Digest::of(&bytes).hex().to_string()
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

/// Compare the spec (with its images' digests) with the recorded state.
pub fn plan(
    project: &Project,
    name: &str,
    digests: &BTreeMap<String, String>,
    state: &State,
) -> Result<Plan, recast_state::Error> {
    let mut services = Vec::new();
    let currents = state.current_releases(name)?;
    let last_numbers = state.last_release_numbers(name)?;
    for (sname, svc) in &project.services {
        let digest = digests.get(&svc.image).cloned().unwrap_or_default();
        let next = ReleaseSpec::new(svc, &digest);
        let current = currents.get(sname).cloned();
        let next_number = last_numbers.get(sname).map_or(1, |n| n + 1);
        let (action, reasons, created, retired, cur) = match &current {
            None => (
                Action::Create,
                vec!["new service".to_string()],
                svc.instances,
                0,
                None,
            ),
            Some(r) if r.spec_hash == next.hash() => {
                (Action::Unchanged, Vec::new(), 0, 0, Some(r.number))
            }
            Some(r) => {
                let old: ReleaseSpec = serde_json::from_str(&r.spec).unwrap_or(ReleaseSpec {
                    digest: r.digest.clone(),
                    image: r.image.clone(),
                    service: serde_json::Value::Null,
                });
                let old_n = old
                    .service
                    .get("instances")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0) as u32;
                (
                    Action::Update,
                    differences(&old, &next),
                    svc.instances,
                    old_n,
                    Some(r.number),
                )
            }
        };
        let changing = action != Action::Unchanged;
        services.push(ServicePlan {
            service: sname.clone(),
            action,
            current_release: cur,
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
    for (sname, cur) in currents {
        if !project.services.contains_key(&sname) {
            let cur = Some(cur);
            let n = cur
                .as_ref()
                .and_then(|r| serde_json::from_str::<ReleaseSpec>(&r.spec).ok())
                .and_then(|s| s.service.get("instances").and_then(|v| v.as_u64()))
                .unwrap_or(0) as u32;
            services.push(ServicePlan {
                service: sname,
                action: Action::Remove,
                current_release: cur.map(|r| r.number),
                next_release: None,
                digest: None,
                reasons: vec!["no longer in the spec".into()],
                instances_created: 0,
                instances_retired: n,
                strategy: None,
                steps: vec!["drain and stop every instance".into()],
            });
        }
    }
    let recorded: BTreeMap<String, (String, String)> = state
        .routes()?
        .into_iter()
        .filter(|r| r.project == name)
        .map(|r| (r.name, (r.listen, r.service)))
        .collect();
    let mut routes = Vec::new();
    for (rname, r) in &project.routes {
        let want = (r.listen.to_string(), r.service.clone());
        match recorded.get(rname) {
            None => routes.push(format!("add route {rname}: {} → {}", want.0, want.1)),
            Some(have) if *have != want => routes.push(format!(
                "change route {rname}: {} → {} (was {} → {})",
                want.0, want.1, have.0, have.1
            )),
            _ => {}
        }
    }
    for (rname, (listen, svc)) in &recorded {
        if !project.routes.contains_key(rname) {
            routes.push(format!("remove route {rname}: {listen} → {svc}"));
        }
    }
    Ok(Plan {
        project: name.to_string(),
        services,
        routes,
    })
}

fn differences(old: &ReleaseSpec, new: &ReleaseSpec) -> Vec<String> {
    let mut out = Vec::new();
    if old.digest != new.digest {
        out.push(format!(
            "image {}: {} → {}",
            new.image,
            short(&old.digest),
            short(&new.digest)
        ));
    }
    if let (Some(a), Some(b)) = (old.service.as_object(), new.service.as_object()) {
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
    match &svc.rollout.strategy {
        Strategy::Recreate => {
            let mut v = vec!["drain and stop every old instance (downtime: the route answers 503 until the new release is healthy)".to_string()];
            let exclusive: Vec<&str> = svc.exclusive_volumes().map(|v| v.name.as_str()).collect();
            if !exclusive.is_empty() {
                v.push(format!(
                    "snapshot exclusive volume(s) {} (the last {} kept; `recast rollback --restore-volumes` restores)",
                    exclusive.join(", "),
                    crate::engine::KEEP_SNAPSHOTS
                ));
            }
            v.push(format!(
                "start {n} new instance(s), {ready}, then route traffic to them"
            ));
            v.push(format!(
                "{deadline}: the new release stops, then the old one starts again"
            ));
            v
        }
        Strategy::Rolling {
            max_surge,
            max_unavailable,
            min_healthy_time,
        } => {
            let surge = max_surge.resolve(n, true);
            let unavail = max_unavailable.resolve(n, false);
            let batch = (surge + unavail).max(1);
            let batches = n.div_ceil(batch);
            let mut v = vec![format!(
                "rolling in {batches} batch(es) of up to {batch}: start {surge} new, {ready}{}, put in rotation, drain and stop old (max_surge {}, max_unavailable {})",
                if min_healthy_time.is_zero() {
                    String::new()
                } else {
                    format!(" and stay healthy for {}", dur(*min_healthy_time))
                },
                count(max_surge),
                count(max_unavailable)
            )];
            v.push(deadline);
            v
        }
        Strategy::BlueGreen {
            preview_listen,
            auto_promote_after,
            scale_down_delay,
        } => {
            let mut v = vec![format!(
                "start {n} green instance(s) beside the blue ones, {ready}"
            )];
            if let Some(p) = preview_listen {
                v.push(format!("serve the green release on preview {p}"));
            }
            v.push(match auto_promote_after {
                Some(d) => format!("promote automatically after {}", dur(*d)),
                None => "wait for `recast promote`".into(),
            });
            v.push("switch all traffic to green at once".into());
            v.push(format!(
                "keep blue warm for {} (instant rollback), then drain and stop it",
                dur(*scale_down_delay)
            ));
            v
        }
        Strategy::Canary { steps, .. } => {
            let mut v = vec![format!("start canary instance(s), {ready}")];
            for s in steps {
                v.push(match s.pause {
                    Some(p) => format!(
                        "send {}% of requests to the new release for {}",
                        s.weight,
                        dur(p)
                    ),
                    None => format!(
                        "send {}% of requests to the new release, then wait for `recast promote`",
                        s.weight
                    ),
                });
            }
            v.push("send 100% to the new release, drain and stop the old one".into());
            v.push(deadline);
            v
        }
    }
}

fn count(c: &Count) -> String {
    match c {
        Count::Absolute(n) => n.to_string(),
        Count::Percent(p) => format!("{p}%"),
    }
}
