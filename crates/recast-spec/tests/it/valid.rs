//! Valid specs exercising every block and knob, parsed into the exact expected model.

use crate::{project, render};
use recast_spec::*;
use std::collections::BTreeMap;
use std::time::Duration;

const FULL: &str = r#"
image "web" {
  from = "scratch"
  copy {
    src   = "bin/app"
    dest  = "/bin/app"
    mode  = "0555"
    owner = "1000:100"
  }
  run {
    shell = "mkdir -p /srv/cache"
  }
  copy {
    src  = "static"
    dest = "/srv/static"
  }
  run {
    command = ["/usr/sbin/useradd", "--system", "app"]
    env     = { DEBIAN_FRONTEND = "noninteractive" }
    workdir = "/srv"
    user    = "0"
    network = "none"
  }
  env        = { GREETING = "hi", WORKERS = 4 }
  workdir    = "/srv"
  user       = "65534:65534"
  entrypoint = ["/bin/app"]
  cmd        = ["--serve"]
  labels     = { "org.opencontainers.image.title" = "web" }
  test {
    http {
      path          = "/healthz"
      expect_status = 204
    }
    http {
      path        = "/"
      expect_body = "hi"
    }
    command = ["/bin/app", "--self-check"]
    port    = 9000
    timeout = "1m"
  }
}

image "base" {
  from = "registry.example.com/base@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
}

image "tagged" {
  from = "debian:12"
}

image "mirrored" {
  from = "docker.io/library/busybox"
}

base "busybox:latest" {
  source = "oci:static:v1"
}

base "alpine:3" {
  source = "mirror.local:5000/alpine:3.19"
}

base "registry.example.com/team/app" {
  source = "registry.example.com/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
}

service "web" {
  image     = image.web
  instances = 3
  port      = 8080
  env       = { MESSAGE = "v1" }
  health {
    http                = "/healthz"
    interval            = "2s"
    timeout             = "250ms"
    healthy_threshold   = 2
    unhealthy_threshold = 4
    start_period        = "5s"
  }
  volume "data" { mount = "/data" }
  volume "uploads" { mount = "/srv/uploads" }
  max_age = "24h"
  network = "host"
  memory  = "256MiB"
  cpus    = 0.5
  user_namespace = true
  tmpfs          = ["/run", "/var/lib/nginx/"]
  drain_timeout  = "45s"
  egress         = "all"
  rollout {
    strategy = "canary"
    sticky   = true
    step {
      weight = 10
      pause  = "30s"
    }
    step {
      weight = 50
    }
    analysis {
      interval           = "5s"
      min_requests       = 100
      max_error_rate     = 0.01
      max_p99_latency    = "300ms"
      failure_limit      = 1
      inconclusive_limit = 2
    }
    auto_rollback     = false
    progress_deadline = "5m"
  }
  guard {
    scan_interval = "10s"
    on_drift      = "report"
  }
}

service "api" {
  image = image.web
  port  = 9090
  protocol   = "http"
  allow_from = [service.web, service.api]
  egress = [
    "10.0.0.0/8",
    "192.168.1.5",
    "10.213.0.2:8081",
    "db.example.com:5432",
    "10.0.0.0/8:443",
    "[::1]:80",
  ]
  health {
    exec = ["/bin/app", "--ping"]
  }
  rollout {
    strategy         = "rolling"
    max_surge        = "25%"
    max_unavailable  = 1
    min_healthy_time = "10s"
  }
}

service "admin" {
  image = image.base
  port  = 7000
  allow_from = []
  egress     = "none"
  rollout {
    strategy           = "blue_green"
    preview_listen     = "127.0.0.1:7001"
    auto_promote_after = "1m"
    scale_down_delay   = "2m"
    analysis {
      max_p99_latency = "1s"
    }
  }
}

route "web" {
  listen  = "127.0.0.1:8080"
  service = service.web
  timeout = "5s"
}

route "api" {
  listen  = "[::1]:9090"
  service = service.api
}

route "db" {
  listen   = "127.0.0.1:15432"
  service  = service.admin
  protocol = "tcp"
}

guard {
  scan_interval = "1m"
  on_drift      = "replace"
}

webhook "chat" {
  url     = "http://127.0.0.1:9000/hooks/recast"
  events  = ["rollout.started", "rollout.rolled_back", "rollout.finished"]
  timeout = "2s"
}
"#;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn s(x: &str) -> String {
    x.to_string()
}

#[test]
fn every_block_and_knob() {
    let dir = project(&[("recast.hcl", FULL)]);
    let p = load(dir.path()).unwrap_or_else(|d| panic!("{d}"));
    let root = dir.path();

    assert_eq!(
        p.images["web"],
        Image {
            name: s("web"),
            from: Base::Scratch,
            dockerfile: None,
            steps: vec![
                BuildStep::Copy(CopyStep {
                    src: root.join("bin/app"),
                    dest: s("/bin/app"),
                    mode: Some(0o555),
                    owner: Some(Owner {
                        uid: 1000,
                        gid: 100
                    }),
                    from: None,
                    exclude: Vec::new(),
                    chown: None,
                    extract: false,
                }),
                BuildStep::Run(RunStep {
                    at: format!("{}:10:3", root.join("recast.hcl").display()),
                    env_is_complete: false,
                    command: RunCommand::Shell(s("mkdir -p /srv/cache")),
                    env: BTreeMap::new(),
                    workdir: None,
                    user: None,
                    network: StepNetwork::Host,
                }),
                BuildStep::Copy(CopyStep {
                    src: root.join("static"),
                    dest: s("/srv/static"),
                    mode: None,
                    owner: None,
                    from: None,
                    exclude: Vec::new(),
                    chown: None,
                    extract: false,
                }),
                BuildStep::Run(RunStep {
                    at: format!("{}:17:3", root.join("recast.hcl").display()),
                    env_is_complete: false,
                    command: RunCommand::Exec(vec![
                        s("/usr/sbin/useradd"),
                        s("--system"),
                        s("app")
                    ]),
                    env: map(&[("DEBIAN_FRONTEND", "noninteractive")]),
                    workdir: Some(s("/srv")),
                    user: Some(s("0")),
                    network: StepNetwork::None,
                }),
            ],
            env: map(&[("GREETING", "hi"), ("WORKERS", "4")]),
            workdir: Some(s("/srv")),
            user: Some(s("65534:65534")),
            cmd: Some(vec![s("--serve")]),
            entrypoint: Some(vec![s("/bin/app")]),
            labels: map(&[("org.opencontainers.image.title", "web")]),
            test: Some(ImageTest {
                http: vec![
                    HttpTest {
                        path: s("/healthz"),
                        expect_status: 204,
                        expect_body: None
                    },
                    HttpTest {
                        path: s("/"),
                        expect_status: 200,
                        expect_body: Some(s("hi"))
                    },
                ],
                command: Some(vec![s("/bin/app"), s("--self-check")]),
                port: 9000,
                timeout: Duration::from_secs(60),
            }),
        }
    );
    assert_eq!(
        p.images["base"].from,
        Base::Registry {
            reference: s(
                "registry.example.com/base@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            )
        }
    );

    assert_eq!(
        p.images["tagged"].from,
        Base::Registry {
            reference: s("docker.io/library/debian:12")
        }
    );
    let static_v1 = Base::Oci {
        path: root.join("static"),
        tag: Some(s("v1")),
    };
    assert_eq!(p.images["mirrored"].from, static_v1);
    let app_pinned = Base::Registry {
        reference: s(
            "registry.example.com/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
    };
    let alpine_mirror = Base::Registry {
        reference: s("mirror.local:5000/alpine:3.19"),
    };
    assert_eq!(
        p.bases,
        BTreeMap::from([
            (s("docker.io/library/alpine:3"), alpine_mirror.clone()),
            (s("docker.io/library/busybox:latest"), static_v1.clone()),
            (
                s("registry.example.com/team/app:latest"),
                app_pinned.clone()
            ),
        ])
    );
    // A Dockerfile's FROM goes through the same parsing and the same base blocks.
    for (from, want) in [
        ("busybox", static_v1.clone()),
        ("index.docker.io/library/busybox:latest", static_v1),
        ("alpine:3", alpine_mirror),
        ("registry.example.com/team/app", app_pinned),
        (
            "debian:12",
            Base::Registry {
                reference: s("docker.io/library/debian:12"),
            },
        ),
        (
            "alpine:3.19",
            Base::Registry {
                reference: s("docker.io/library/alpine:3.19"),
            },
        ),
        ("scratch", Base::Scratch),
        (
            "oci-archive:bin/app",
            Base::OciArchive {
                path: root.join("bin/app"),
                tag: None,
            },
        ),
    ] {
        assert_eq!(p.resolve_base(from), Ok(want), "FROM {from}");
    }
    assert_eq!(
        p.resolve_base("Debian:12"),
        Err(s(
            "invalid base image \"Debian:12\": the repository name must be lowercase\n  hint: use \"scratch\", \"oci:DIR[:TAG]\", \"oci-archive:FILE[:TAG]\", \"docker-archive:FILE\", or a registry reference such as \"debian:12\" or \"REGISTRY/REPO@sha256:DIGEST\""
        ))
    );
    assert!(
        p.resolve_base("oci:nope")
            .is_err_and(|e| e.starts_with("base image layout \"nope\" does not exist")),
    );

    assert_eq!(
        p.services["web"],
        Service {
            name: s("web"),
            image: s("web"),
            instances: 3,
            port: 8080,
            env: map(&[("MESSAGE", "v1")]),
            health: Health {
                check: HealthCheck::Http {
                    path: s("/healthz")
                },
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(250),
                healthy_threshold: 2,
                unhealthy_threshold: 4,
                start_period: Duration::from_secs(5),
            },
            volumes: vec![
                Volume {
                    name: s("data"),
                    mount: s("/data"),
                    exclusive: false,
                },
                Volume {
                    name: s("uploads"),
                    mount: s("/srv/uploads"),
                    exclusive: false,
                },
            ],
            max_age: Some(Duration::from_secs(86400)),
            network: Network::Host,
            memory: Some(256 << 20),
            cpus: Some(0.5),
            user_namespace: true,
            tmpfs: vec![s("/run"), s("/var/lib/nginx")],
            stop_signal: None,
            stop_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(45),
            protocol: None,
            allow_from: None,
            egress: Default::default(),
            secret_env: Default::default(),
            secret_files: Vec::new(),
            rollout: Rollout {
                strategy: Strategy::Canary {
                    steps: vec![
                        Step {
                            weight: 10,
                            pause: Some(Duration::from_secs(30))
                        },
                        Step {
                            weight: 50,
                            pause: None
                        },
                    ],
                    sticky: true,
                },
                analysis: Some(Analysis {
                    interval: Duration::from_secs(5),
                    min_requests: 100,
                    max_error_rate: Some(0.01),
                    max_p99_latency: Some(Duration::from_millis(300)),
                    failure_limit: 1,
                    inconclusive_limit: 2,
                }),
                auto_rollback: false,
                progress_deadline: Duration::from_secs(300),
            },
            guard: Some(Guard {
                scan_interval: Duration::from_secs(10),
                on_drift: OnDrift::Report
            }),
        }
    );

    let api = &p.services["api"];
    assert_eq!(api.instances, 1);
    assert_eq!(api.network, Network::Private);
    assert_eq!(
        api.health.check,
        HealthCheck::Exec {
            command: vec![s("/bin/app"), s("--ping")]
        }
    );
    assert_eq!(api.health.interval, Duration::from_secs(1));
    assert_eq!(
        api.rollout.strategy,
        Strategy::Rolling {
            max_surge: Count::Percent(25),
            max_unavailable: Count::Absolute(1),
            min_healthy_time: Duration::from_secs(10),
        }
    );
    assert!(api.rollout.auto_rollback);
    assert_eq!(api.rollout.progress_deadline, Duration::from_secs(600));
    assert_eq!(api.protocol, Some(Protocol::Http));
    assert_eq!(
        api.internal_protocol(),
        Protocol::Http,
        "set, though its health check is exec"
    );
    assert_eq!(api.allow_from, Some(vec![s("web"), s("api")]));
    let dest = |host: &str, port: Option<u16>| Destination {
        host: s(host),
        port,
    };
    assert_eq!(
        api.egress,
        Egress::Only(vec![
            dest("10.0.0.0/8", None),
            dest("192.168.1.5", None),
            dest("10.213.0.2", Some(8081)),
            dest("db.example.com", Some(5432)),
            dest("10.0.0.0/8", Some(443)),
            dest("::1", Some(80)),
        ])
    );
    let web = &p.services["web"];
    assert_eq!(
        web.internal_protocol(),
        Protocol::Http,
        "its health is http"
    );

    let admin = &p.services["admin"];
    assert_eq!(
        admin.rollout.strategy,
        Strategy::BlueGreen {
            preview_listen: Some("127.0.0.1:7001".parse().expect("addr")),
            auto_promote_after: Some(Duration::from_secs(60)),
            scale_down_delay: Duration::from_secs(120),
        }
    );
    let analysis = admin.rollout.analysis.as_ref().expect("analysis");
    assert_eq!(
        (
            analysis.min_requests,
            analysis.failure_limit,
            analysis.inconclusive_limit
        ),
        (50, 0, 3)
    );
    assert_eq!(admin.health.check, HealthCheck::Tcp);
    assert_eq!(
        admin.internal_protocol(),
        Protocol::Tcp,
        "its health is tcp"
    );
    assert_eq!(admin.allow_from, Some(vec![]), "no service may connect");
    assert_eq!(admin.egress, Egress::None);

    assert_eq!(
        p.routes["api"],
        Route {
            name: s("api"),
            listen: "[::1]:9090".parse().expect("addr"),
            service: s("api"),
            timeout: Duration::from_secs(30),
            protocol: Protocol::Http,
        }
    );
    assert_eq!(p.routes["web"].timeout, Duration::from_secs(5));
    assert_eq!(p.routes["db"].protocol, Protocol::Tcp);
    assert_eq!(p.routes["db"].service, "admin");
    assert_eq!(api.drain_timeout, DEFAULT_DRAIN_TIMEOUT, "30s unless set");
    assert_eq!(
        p.guard,
        Guard {
            scan_interval: Duration::from_secs(60),
            on_drift: OnDrift::Replace
        }
    );
    assert_eq!(
        p.webhooks["chat"],
        Webhook {
            name: s("chat"),
            url: s("http://127.0.0.1:9000/hooks/recast"),
            events: vec![
                s("rollout.started"),
                s("rollout.rolled_back"),
                s("rollout.finished")
            ],
            timeout: Duration::from_secs(2),
        }
    );
}

#[test]
fn local_bases_resolve_against_the_spec_directory() {
    let dir = project(&[(
        "recast.hcl",
        "image \"a\" {\n  from = \"oci:layout:v1\"\n}\nimage \"b\" {\n  from = \"oci-archive:base.tar\"\n}\nimage \"c\" {\n  from = \"docker-archive:base.tar\"\n}\n",
    )]);
    std::fs::create_dir(dir.path().join("layout")).expect("mkdir");
    std::fs::write(dir.path().join("base.tar"), b"").expect("write");
    let p = load(dir.path()).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        p.images["a"].from,
        Base::Oci {
            path: dir.path().join("layout"),
            tag: Some(s("v1"))
        }
    );
    assert_eq!(
        p.images["b"].from,
        Base::OciArchive {
            path: dir.path().join("base.tar"),
            tag: None
        }
    );
    assert_eq!(
        p.images["c"].from,
        Base::DockerArchive {
            path: dir.path().join("base.tar")
        }
    );
}

#[test]
fn the_example_spec_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    assert!(
        example.join("dist/hello").exists(),
        "examples/hello/dist/hello is missing: run scripts/build-hello (scripts/test does)"
    );
    let p = load(&example).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(p.services["hello"].instances, 3);
    assert_eq!(p.routes["web"].service, "hello");
}

#[test]
fn a_single_file_loads_only_that_file() {
    let dir = project(&[
        (
            "one.hcl",
            "image \"a\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\n",
        ),
        ("broken.hcl", "this is not hcl {"),
    ]);
    assert!(load(&dir.path().join("one.hcl")).is_ok());
    assert_eq!(render(dir.path()).len(), 1);
}

#[test]
fn a_registry_block_is_read_with_its_default() {
    let dir = project(&[
        (
            "a.hcl",
            "registry {\n  url = \"127.0.0.1:5000/team/apps/\"\n}\n",
        ),
        (
            "b.hcl",
            "image \"app\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\nservice \"web\" {\n  image = image.app\n  port = 80\n}\n",
        ),
    ]);
    let p = load(dir.path()).unwrap_or_else(|d| panic!("{d}"));
    let r = p.registry.expect("a registry");
    assert_eq!(
        r,
        Registry {
            url: s("127.0.0.1:5000/team/apps"),
            insecure: false
        }
    );
    assert_eq!(r.repository("app"), "127.0.0.1:5000/team/apps/app");
    let dir = project(&[(
        "recast.hcl",
        "registry {\n  url = \"registry.example.com\"\n  insecure = true\n}\n",
    )]);
    let p = load(dir.path()).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        p.registry,
        Some(Registry {
            url: s("registry.example.com"),
            insecure: true
        })
    );
    let dir = project(&[("recast.hcl", "project = \"x\"\n")]);
    assert_eq!(load(dir.path()).map(|p| p.registry).ok(), Some(None));
}

#[test]
fn project_name_is_read_from_the_top_level() {
    let dir = project(&[
        ("a.hcl", "project = \"shop\"\n"),
        (
            "b.hcl",
            "image \"app\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\n",
        ),
    ]);
    let p = load(dir.path()).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(p.name.as_deref(), Some("shop"));
    let dir = project(&[(
        "recast.hcl",
        "image \"app\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\n",
    )]);
    assert_eq!(load(dir.path()).map(|p| p.name).ok(), Some(None));
}

#[test]
fn an_exclusive_volume_makes_the_rollout_recreate() {
    let spec = "image \"db\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\nservice \"db\" {\n  image = image.db\n  port = 5432\n  volume \"data\" {\n    mount = \"/data\"\n    exclusive = true\n  }\n  volume \"cache\" {\n    mount = \"/cache\"\n  }\n  rollout {\n    progress_deadline = \"2m\"\n  }\n}\nservice \"worker\" {\n  image = image.db\n  port = 80\n  rollout {\n    strategy = \"recreate\"\n  }\n}\n";
    let dir = project(&[("recast.hcl", spec)]);
    let p = load(dir.path()).unwrap_or_else(|d| panic!("{d}"));
    let db = &p.services["db"];
    assert_eq!(db.rollout.strategy, Strategy::Recreate);
    assert_eq!(db.rollout.progress_deadline, Duration::from_secs(120));
    assert_eq!(
        db.volumes,
        vec![
            Volume {
                name: s("data"),
                mount: s("/data"),
                exclusive: true
            },
            Volume {
                name: s("cache"),
                mount: s("/cache"),
                exclusive: false
            },
        ]
    );
    assert!(db.stops_first());
    assert_eq!(
        db.exclusive_volumes()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["data"]
    );
    let worker = &p.services["worker"];
    assert_eq!(worker.rollout.strategy, Strategy::Recreate);
    assert_eq!(worker.rollout.strategy.name(), "recreate");
    assert_eq!(worker.exclusive_volumes().count(), 0);
}

#[test]
fn network_attributes_default_and_infer() {
    let spec = "image \"app\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\n\
service \"plain\" {\n  image = image.app\n  port = 80\n}\n\
service \"exec\" {\n  image = image.app\n  port = 81\n  health {\n    exec = [\"/x\"]\n  }\n  egress = []\n}\n\
service \"http\" {\n  image = image.app\n  port = 82\n  health {\n    http = \"/\"\n  }\n  protocol = \"tcp\"\n  allow_from = [service.http]\n}\n\
service \"host\" {\n  image = image.app\n  port = 83\n  network = \"host\"\n  protocol = \"http\"\n}\n";
    let dir = project(&[("recast.hcl", spec)]);
    let p = load(dir.path()).unwrap_or_else(|d| panic!("{d}"));
    let plain = &p.services["plain"];
    assert_eq!(
        (plain.protocol, &plain.allow_from, &plain.egress),
        (None, &None, &Egress::All),
        "unset: inferred protocol, everyone may connect, egress all"
    );
    assert_eq!(
        plain.internal_protocol(),
        Protocol::Tcp,
        "default health is tcp"
    );
    let exec = &p.services["exec"];
    assert_eq!(exec.internal_protocol(), Protocol::Tcp);
    assert_eq!(exec.egress, Egress::None, "[] is none");
    let http = &p.services["http"];
    assert_eq!(
        http.internal_protocol(),
        Protocol::Tcp,
        "set wins over http health"
    );
    assert_eq!(http.allow_from, Some(vec![s("http")]), "itself is allowed");
    let host = &p.services["host"];
    assert_eq!(
        (host.internal_protocol(), &host.egress),
        (Protocol::Http, &Egress::All)
    );
}
