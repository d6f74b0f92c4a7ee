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
use recast_spec::{Count, Project, Service, Strategy};
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
    /// Each route of the project: name → (listen address, service).
    pub routes: BTreeMap<String, (String, String)>,
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
            .map(|r| (r.name, (r.listen, r.service)))
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
        let want = (r.listen.to_string(), r.service.clone());
        match recorded.routes.get(rname) {
            None => routes.push(format!("add route {rname}: {} → {}", want.0, want.1)),
            Some(have) if *have != want => routes.push(format!(
                "change route {rname}: {} → {} (was {} → {})",
                want.0, want.1, have.0, have.1
            )),
            _ => {}
        }
    }
    for (rname, (listen, svc)) in &recorded.routes {
        if !project.routes.contains_key(rname) {
            routes.push(format!("remove route {rname}: {listen} → {svc}"));
        }
    }
    Plan {
        project: name.to_string(),
        services,
        routes,
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

#[cfg(test)]
mod tests {
    use super::*;
    use recast_spec::{Health, HealthCheck, Network, Rollout, Step};
    use std::time::Duration;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn rolling() -> Strategy {
        Strategy::Rolling {
            max_surge: Count::Absolute(1),
            max_unavailable: Count::Absolute(0),
            min_healthy_time: Duration::ZERO,
        }
    }

    fn service(name: &str, strategy: Strategy) -> Service {
        Service {
            name: name.into(),
            image: "app".into(),
            instances: 3,
            port: 8080,
            env: BTreeMap::from([("MESSAGE".into(), "v1".into())]),
            health: Health {
                check: HealthCheck::Http {
                    path: "/healthz".into(),
                },
                interval: secs(1),
                timeout: Duration::from_millis(500),
                healthy_threshold: 2,
                unhealthy_threshold: 3,
                start_period: secs(60),
            },
            volumes: Vec::new(),
            max_age: None,
            network: Network::Private,
            memory: None,
            cpus: None,
            user_namespace: false,
            tmpfs: Vec::new(),
            stop_signal: None,
            stop_timeout: recast_spec::DEFAULT_STOP_TIMEOUT,
            rollout: Rollout {
                strategy,
                analysis: None,
                auto_rollback: true,
                progress_deadline: secs(600),
            },
            guard: None,
        }
    }

    fn project(services: &[Service]) -> Project {
        Project {
            name: Some("shop".into()),
            dir: "/nonexistent".into(),
            files: Vec::new(),
            images: BTreeMap::new(),
            services: services
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            routes: BTreeMap::new(),
            guard: recast_spec::Guard::default(),
            webhooks: BTreeMap::new(),
            bases: BTreeMap::new(),
        }
    }

    fn digests(d: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), d.to_string())])
    }

    /// What the state store would record after release `number` of `svc` at `digest`, as the
    /// server writes it (through the stored JSON).
    fn recorded(releases: &[(i64, &Service, &str)]) -> Recorded {
        let mut r = Recorded::default();
        for (number, svc, digest) in releases {
            let json = ReleaseRecord::from_spec(svc, digest, &svc.image).to_json();
            let record = ReleaseRecord::parse(&json, &svc.name, *number).expect("record parses");
            r.current.insert(
                svc.name.clone(),
                Current::new(*number, record).expect("current release decodes"),
            );
            r.last_numbers.insert(svc.name.clone(), *number);
        }
        r
    }

    fn only(p: &Plan) -> &ServicePlan {
        assert_eq!(p.services.len(), 1, "{p:?}");
        &p.services[0]
    }

    #[test]
    fn a_new_service_is_created_as_release_1() {
        let web = service("web", rolling());
        let p = plan(&project(&[web]), "shop", &digests(A), &Recorded::default());
        let s = only(&p);
        assert_eq!(s.action, Action::Create);
        assert_eq!((s.current_release, s.next_release), (None, Some(1)));
        assert_eq!((s.instances_created, s.instances_retired), (3, 0));
        assert_eq!(s.reasons, ["new service"]);
        assert_eq!(s.digest.as_deref(), Some(A));
        assert_eq!(
            s.steps,
            [
                "start 3 instance(s), healthy after ~1s (start period 1m: failed if not healthy by then), then route traffic to them"
            ]
        );
        assert_eq!(p.changes(), 1);
    }

    #[test]
    fn numbering_continues_after_failed_releases() {
        let web = service("web", rolling());
        let mut r = Recorded::default();
        r.last_numbers.insert("web".into(), 4);
        let p = plan(&project(&[web]), "shop", &digests(A), &r);
        assert_eq!(only(&p).action, Action::Create);
        assert_eq!(only(&p).next_release, Some(5));
    }

    #[test]
    fn the_same_service_and_digest_is_unchanged() {
        let web = service("web", rolling());
        let r = recorded(&[(2, &web, A)]);
        let p = plan(&project(&[web]), "shop", &digests(A), &r);
        let s = only(&p);
        assert_eq!(s.action, Action::Unchanged);
        assert_eq!((s.current_release, s.next_release), (Some(2), None));
        assert!(s.reasons.is_empty() && s.steps.is_empty() && s.strategy.is_none());
        assert_eq!(p.changes(), 0);
    }

    #[test]
    fn a_new_image_digest_is_an_update() {
        let web = service("web", rolling());
        let r = recorded(&[(2, &web, A)]);
        let p = plan(&project(&[web]), "shop", &digests(B), &r);
        let s = only(&p);
        assert_eq!(s.action, Action::Update);
        assert_eq!((s.current_release, s.next_release), (Some(2), Some(3)));
        assert_eq!(
            s.reasons,
            ["image app: sha256:aaaaaaaaaaaa → sha256:bbbbbbbbbbbb"]
        );
        assert_eq!(s.strategy.as_deref(), Some("rolling"));
    }

    #[test]
    fn a_changed_setting_is_an_update_naming_it() {
        let old = service("web", rolling());
        let mut new = old.clone();
        new.instances = 5;
        new.env.insert("MESSAGE".into(), "v2".into());
        new.env.insert("MODE".into(), "prod".into());
        let r = recorded(&[(2, &old, A)]);
        let p = plan(&project(&[new]), "shop", &digests(A), &r);
        let s = only(&p);
        assert_eq!(s.action, Action::Update);
        assert_eq!(
            s.reasons,
            [
                r#"env MESSAGE: "v1" → "v2""#,
                r#"env MODE: added "prod""#,
                "instances: 3 → 5"
            ]
        );
        assert_eq!((s.instances_created, s.instances_retired), (5, 3));
    }

    #[test]
    fn a_service_gone_from_the_spec_is_removed() {
        let web = service("web", rolling());
        let mut api = service("api", rolling());
        api.instances = 2;
        let r = recorded(&[(1, &web, A), (7, &api, A)]);
        let p = plan(&project(&[web]), "shop", &digests(A), &r);
        let api = p
            .services
            .iter()
            .find(|s| s.service == "api")
            .expect("service is planned");
        assert_eq!(api.action, Action::Remove);
        assert_eq!((api.current_release, api.next_release), (Some(7), None));
        assert_eq!((api.instances_created, api.instances_retired), (0, 2));
        assert_eq!(api.steps, ["drain and stop every instance"]);
        assert_eq!(p.changes(), 1);
    }

    #[test]
    fn routes_added_changed_and_removed() {
        let web = service("web", rolling());
        let mut proj = project(std::slice::from_ref(&web));
        for (name, listen) in [("main", "127.0.0.1:8080"), ("admin", "127.0.0.1:9001")] {
            proj.routes.insert(
                name.into(),
                recast_spec::Route {
                    name: name.into(),
                    listen: listen.parse().expect("address parses"),
                    service: "web".into(),
                    timeout: secs(30),
                },
            );
        }
        let mut r = recorded(&[(1, &web, A)]);
        r.routes
            .insert("admin".into(), ("127.0.0.1:9000".into(), "web".into()));
        r.routes
            .insert("old".into(), ("127.0.0.1:7000".into(), "web".into()));
        let p = plan(&proj, "shop", &digests(A), &r);
        assert_eq!(
            p.routes,
            [
                "change route admin: 127.0.0.1:9001 → web (was 127.0.0.1:9000 → web)",
                "add route main: 127.0.0.1:8080 → web",
                "remove route old: 127.0.0.1:7000 → web",
            ]
        );
        assert_eq!(p.changes(), 3);
    }

    /// The steps of an update of `svc` (a first release is the same for every strategy).
    fn update_steps(svc: &Service) -> Vec<String> {
        let mut old = svc.clone();
        old.env.insert("MESSAGE".into(), "v0".into());
        let r = recorded(&[(1, &old, A)]);
        let p = plan(&project(std::slice::from_ref(svc)), "shop", &digests(A), &r);
        assert_eq!(only(&p).action, Action::Update);
        only(&p).steps.clone()
    }

    const READY: &str = "healthy after ~1s (start period 1m: failed if not healthy by then)";

    #[test]
    fn a_first_release_starts_and_routes_whatever_the_strategy() {
        let strategies = [
            rolling(),
            Strategy::Recreate,
            Strategy::BlueGreen {
                preview_listen: None,
                auto_promote_after: None,
                scale_down_delay: secs(30),
            },
            Strategy::Canary {
                steps: vec![Step {
                    weight: 10,
                    pause: None,
                }],
                sticky: false,
            },
        ];
        for strategy in strategies {
            let name = strategy.name();
            let p = plan(
                &project(&[service("web", strategy)]),
                "shop",
                &digests(A),
                &Recorded::default(),
            );
            assert_eq!(
                only(&p).steps,
                [format!(
                    "start 3 instance(s), {READY}, then route traffic to them"
                )],
                "{name}"
            );
            assert_eq!(only(&p).strategy.as_deref(), Some(name));
        }
    }

    #[test]
    fn a_rolling_update_goes_in_batches() {
        let mut svc = service("web", rolling());
        svc.instances = 4;
        assert_eq!(
            update_steps(&svc),
            [
                format!(
                    "rolling in 4 batch(es) of up to 1: start 1 new, {READY}, put in rotation, drain and stop old (max_surge 1, max_unavailable 0)"
                ),
                "rolled back if no progress within 10m".into(),
            ]
        );
        svc.rollout.strategy = Strategy::Rolling {
            max_surge: Count::Percent(50),
            max_unavailable: Count::Percent(25),
            min_healthy_time: secs(5),
        };
        assert_eq!(
            update_steps(&svc)[0],
            format!(
                "rolling in 2 batch(es) of up to 3: start 2 new, {READY} and stay healthy for 5s, put in rotation, drain and stop old (max_surge 50%, max_unavailable 25%)"
            )
        );
    }

    #[test]
    fn a_recreate_update_stops_first_and_snapshots_exclusive_volumes() {
        let mut svc = service("db", Strategy::Recreate);
        svc.instances = 1;
        svc.volumes = vec![recast_spec::Volume {
            name: "data".into(),
            mount: "/data".into(),
            exclusive: true,
        }];
        assert_eq!(
            update_steps(&svc),
            [
                "drain and stop every old instance (downtime: the route answers 503 until the new release is healthy)".to_string(),
                format!(
                    "snapshot exclusive volume(s) data (the last {} kept; `recast rollback --restore-volumes` restores)",
                    crate::engine::KEEP_SNAPSHOTS
                ),
                format!("start 1 new instance(s), {READY}, then route traffic to them"),
                "rolled back if no progress within 10m: the new release stops, then the old one starts again".into(),
            ]
        );
    }

    #[test]
    fn a_blue_green_update_waits_or_promotes() {
        let mut svc = service(
            "web",
            Strategy::BlueGreen {
                preview_listen: Some("127.0.0.1:9090".parse().expect("address parses")),
                auto_promote_after: None,
                scale_down_delay: secs(30),
            },
        );
        assert_eq!(
            update_steps(&svc),
            [
                format!("start 3 green instance(s) beside the blue ones, {READY}"),
                "serve the green release on preview 127.0.0.1:9090".into(),
                "wait for `recast promote`".into(),
                "switch all traffic to green at once".into(),
                "keep blue warm for 30s (instant rollback), then drain and stop it".into(),
            ]
        );
        svc.rollout.strategy = Strategy::BlueGreen {
            preview_listen: None,
            auto_promote_after: Some(secs(90)),
            scale_down_delay: secs(0),
        };
        assert_eq!(
            update_steps(&svc)[1..],
            [
                "promote automatically after 1m30s",
                "switch all traffic to green at once",
                "keep blue warm for 0s (instant rollback), then drain and stop it",
            ]
        );
    }

    #[test]
    fn a_canary_update_lists_its_steps() {
        let mut svc = service(
            "web",
            Strategy::Canary {
                steps: vec![
                    Step {
                        weight: 10,
                        pause: Some(secs(10)),
                    },
                    Step {
                        weight: 50,
                        pause: None,
                    },
                ],
                sticky: false,
            },
        );
        svc.health.start_period = Duration::ZERO;
        assert_eq!(
            update_steps(&svc),
            [
                "start canary instance(s), healthy after ~1s (failed after 3 failed probe(s), no start period)",
                "send 10% of requests to the new release for 10s",
                "send 50% of requests to the new release, then wait for `recast promote`",
                "send 100% to the new release, drain and stop the old one",
                "rolled back if no progress within 10m",
            ]
        );
    }

    /// The spec file and the record today's recast wrote for it (schema 1, before records had
    /// a schema): planning the same spec against the record changes nothing.
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn fixture_plan(record: &str) -> ServicePlan {
        let proj = recast_spec::load(std::path::Path::new(&format!(
            "{FIXTURES}/release-schema1.hcl"
        )))
        .unwrap_or_else(|d| panic!("{d}"));
        let rec = ReleaseRecord::parse(record, "web", 3).expect("record parses");
        let digest = rec.digest.clone();
        let mut r = Recorded::default();
        r.current.insert(
            "web".into(),
            Current::new(3, rec).expect("current release decodes"),
        );
        r.last_numbers.insert("web".into(), 3);
        let dig = BTreeMap::from([("web".to_string(), digest)]);
        let p = plan(&proj, "shop", &dig, &r);
        only(&p).clone()
    }

    #[test]
    fn a_schema_1_record_of_the_same_spec_is_unchanged() {
        let s = fixture_plan(include_str!("../tests/fixtures/release-schema1.json"));
        assert_eq!(s.action, Action::Unchanged, "{:?}", s.reasons);
    }

    #[test]
    fn a_record_missing_defaulted_fields_is_unchanged() {
        let s = fixture_plan(include_str!(
            "../tests/fixtures/release-schema1-before-stop-timeout.json"
        ));
        assert_eq!(s.action, Action::Unchanged, "{:?}", s.reasons);
    }
}
