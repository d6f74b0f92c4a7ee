//! The plan from recorded facts: no state store, no I/O.

use super::*;
use recast_spec::{Count, Health, HealthCheck, Network, Rollout, Step, Strategy};
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
        drain_timeout: recast_spec::DEFAULT_DRAIN_TIMEOUT,
        protocol: None,
        allow_from: None,
        egress: Default::default(),
        rollout: Rollout {
            strategy,
            analysis: None,
            auto_rollback: true,
            progress_deadline: secs(600),
        },
        guard: None,
        secret_env: BTreeMap::new(),
        secret_files: Vec::new(),
    }
}

/// No secrets: their digests.
const NO_SECRETS: BTreeMap<String, String> = BTreeMap::new();

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
        secrets: BTreeMap::new(),
        environments: BTreeMap::new(),
        environment: None,
        variables: BTreeMap::new(),
        registry: None,
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
    let p = plan(
        &project(&[web]),
        "shop",
        &digests(A),
        &NO_SECRETS,
        &Recorded::default(),
    );
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
    let p = plan(&project(&[web]), "shop", &digests(A), &NO_SECRETS, &r);
    assert_eq!(only(&p).action, Action::Create);
    assert_eq!(only(&p).next_release, Some(5));
}

#[test]
fn the_same_service_and_digest_is_unchanged() {
    let web = service("web", rolling());
    let r = recorded(&[(2, &web, A)]);
    let p = plan(&project(&[web]), "shop", &digests(A), &NO_SECRETS, &r);
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
    let p = plan(&project(&[web]), "shop", &digests(B), &NO_SECRETS, &r);
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
    let p = plan(&project(&[new]), "shop", &digests(A), &NO_SECRETS, &r);
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
    let p = plan(&project(&[web]), "shop", &digests(A), &NO_SECRETS, &r);
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
    use recast_spec::Protocol::{Http, Tcp};
    for (name, listen, protocol) in [
        ("main", "127.0.0.1:8080", Http),
        ("admin", "127.0.0.1:9001", Http),
        ("db", "127.0.0.1:15432", Tcp),
        ("cache", "127.0.0.1:6379", Tcp),
    ] {
        proj.routes.insert(
            name.into(),
            recast_spec::Route {
                name: name.into(),
                listen: listen.parse().expect("address parses"),
                service: "web".into(),
                timeout: secs(30),
                protocol,
            },
        );
    }
    let mut r = recorded(&[(1, &web, A)]);
    r.routes.insert(
        "admin".into(),
        ("127.0.0.1:9000".into(), "web".into(), Http),
    );
    r.routes
        .insert("old".into(), ("127.0.0.1:7000".into(), "web".into(), Tcp));
    r.routes
        .insert("db".into(), ("127.0.0.1:15432".into(), "web".into(), Http));
    r.routes
        .insert("cache".into(), ("127.0.0.1:6379".into(), "web".into(), Tcp));
    let p = plan(&proj, "shop", &digests(A), &NO_SECRETS, &r);
    assert_eq!(
        p.routes,
        [
            "change route admin: 127.0.0.1:9001 → web (was 127.0.0.1:9000 → web)",
            "change route db: 127.0.0.1:15432 → web (tcp) (was 127.0.0.1:15432 → web)",
            "add route main: 127.0.0.1:8080 → web",
            "remove route old: 127.0.0.1:7000 → web (tcp)",
        ]
    );
    assert_eq!(p.changes(), 4);
}

/// The steps of an update of `svc` (a first release is the same for every strategy).
fn update_steps(svc: &Service) -> Vec<String> {
    let mut old = svc.clone();
    old.env.insert("MESSAGE".into(), "v0".into());
    let r = recorded(&[(1, &old, A)]);
    let p = plan(
        &project(std::slice::from_ref(svc)),
        "shop",
        &digests(A),
        &NO_SECRETS,
        &r,
    );
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
            &NO_SECRETS,
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
    let p = plan(&proj, "shop", &dig, &NO_SECRETS, &r);
    only(&p).clone()
}

#[test]
fn a_schema_1_record_of_the_same_spec_is_unchanged() {
    let s = fixture_plan(include_str!("../../tests/fixtures/release-schema1.json"));
    assert_eq!(s.action, Action::Unchanged, "{:?}", s.reasons);
}

#[test]
fn a_record_missing_defaulted_fields_is_unchanged() {
    let s = fixture_plan(include_str!(
        "../../tests/fixtures/release-schema1-before-stop-timeout.json"
    ));
    assert_eq!(s.action, Action::Unchanged, "{:?}", s.reasons);
}

#[test]
fn a_soak_says_how_long_in_whole_seconds_and_what_is_missing() {
    let key = ("web".to_string(), "sha256:abcdef0123456789".to_string());
    let soak = Soak {
        from: "staging".into(),
        need: Duration::from_secs(600),
        live: BTreeMap::from([(key.clone(), Duration::from_millis(7_203_417))]),
    };
    assert_eq!(
        soak.check("web", &key.1).as_deref(),
        Ok("digest sha256:abcdef012345 verified in staging for 2h3s")
    );
    let early = Soak {
        live: BTreeMap::from([(key.clone(), Duration::from_millis(183_900))]),
        ..soak.clone()
    };
    assert_eq!(
        early.check("web", &key.1),
        Err("digest sha256:abcdef012345 has been live in staging for 3m3s; this environment requires 10m (require.soak)".to_string())
    );
    assert!(
        soak.check("api", &key.1)
            .is_err_and(|e| e.contains("service api has never been live in staging")),
    );
}
