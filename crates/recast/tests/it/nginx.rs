//! Issue 11's acceptance, as it is checked: a stock Dockerfile of the seed's shape (`FROM` a
//! Debian base given by a `base` block, `RUN apt-get update && apt-get install` from a loopback
//! repository, `COPY` a site, `EXPOSE 80`, `CMD ["nginx", "-g", "daemon off;"]`) built by
//! recast, tested, deployed read-only with `tmpfs` for nginx's runtime directories, served
//! through a route, rolled under load and checked for drift and reproducibility.

use crate::debian::{AptRepo, base_image_archive};
use crate::deploy::{Load, Server, body_now, free_port, ok, wait_for};
use crate::{stderr, stdout};
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::time::Instant;

pub(crate) const DOCKERFILE: &str = r#"FROM debian:12
ARG DEBIAN_FRONTEND=noninteractive
ARG APT_REPO
RUN echo "deb [trusted=yes] ${APT_REPO} ./" > /etc/apt/sources.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/*
COPY site/ /var/www/html/
EXPOSE 80
CMD ["nginx", "-g", "daemon off;"]
"#;

pub(crate) fn site(dir: &Path, version: &str) -> String {
    let body = format!("<h1>recast nginx site {version}</h1>\n");
    fs::create_dir_all(dir.join("site/css")).expect("mkdir site");
    fs::write(dir.join("site/index.html"), &body).expect("write the site");
    fs::write(dir.join("site/css/site.css"), format!("/* {version} */\n")).expect("css");
    body
}

/// nginx writes its pid (`/run`), request-body and proxy temporaries (`/var/lib/nginx`) and its
/// logs (`/var/log/nginx`, opened before the configuration is read).
pub(crate) const NGINX_TMPFS: &str = r#"["/run", "/var/lib/nginx", "/var/log/nginx"]"#;

/// The spec; the test block gives no `port`: it tests where the service serves (80).
pub(crate) fn spec(archive: &Path, repo: &str, route_port: u16, body: &str, tmpfs: &str) -> String {
    format!(
        r#"
base "debian:12" {{
  source = "oci-archive:{archive}"
}}

image "site" {{
  dockerfile = "Dockerfile"
  args       = {{ APT_REPO = "{repo}" }}
  test {{
    http {{
      path        = "/"
      expect_body = "{body}"
    }}
    timeout = "30s"
  }}
}}

service "site" {{
  image     = image.site
  port      = 80
  instances = 2
  tmpfs     = {tmpfs}
  health {{
    http                = "/"
    interval            = "200ms"
    timeout             = "500ms"
    unhealthy_threshold = 2
  }}
  rollout {{
    strategy = "rolling"
  }}
}}

route "site" {{
  listen  = "127.0.0.1:{route_port}"
  service = service.site
}}

"#,
        archive = archive.display(),
        body = body.trim_end(),
    )
}

/// `recast drift --json`'s findings that are not `config` (the process check's view of
/// nginx's rewritten title is issue 12's); the `config` ones are printed.
fn file_and_mount_findings(server: &Server, dir: &Path) -> Vec<Value> {
    let o = server.rc(dir, &["drift", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "drift --json is not JSON ({e}): {}{}",
            stdout(&o),
            stderr(&o)
        )
    });
    let all: Vec<Value> = v["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("drift --json has no instances: {v}"))
        .iter()
        .flat_map(|i| i["findings"].as_array().cloned().unwrap_or_default())
        .collect();
    let (config, rest): (Vec<Value>, Vec<Value>) =
        all.into_iter().partition(|f| f["kind"] == "config");
    if !config.is_empty() {
        eprintln!("drift: config findings (issue 12's): {config:?}");
    }
    rest
}

#[test]
fn a_stock_debian_nginx_dockerfile_builds_deploys_and_rolls_under_load() {
    let repo = AptRepo::serve();
    let archive = base_image_archive();
    let server = Server::start();
    let port = free_port();
    let p = tempfile::Builder::new()
        .prefix("nginx")
        .tempdir()
        .expect("tmp");
    let dir = p.path();
    fs::write(dir.join("Dockerfile"), DOCKERFILE).expect("Dockerfile");
    let v1 = site(dir, "v1");
    let write_spec = |body: &str, tmpfs: &str| {
        fs::write(
            dir.join("recast.hcl"),
            spec(&archive, &repo.url, port, body, tmpfs),
        )
        .expect("spec")
    };
    write_spec(&v1, NGINX_TMPFS);

    // Cold build: the base from its archive, apt from the loopback repository.
    let t = Instant::now();
    let o = server.rc(dir, &["build", "--json"]);
    let cold = t.elapsed();
    ok(&o);
    let asked = repo.requests();
    assert!(
        asked
            .iter()
            .any(|r| r.contains("nginx-light_") && r.ends_with(" 200")),
        "apt did not fetch nginx-light from the loopback repository: {asked:?}"
    );
    // Built again: every step from the cache (apt is not asked again).
    let t = Instant::now();
    let o = server.rc(dir, &["build", "--json"]);
    let cached = t.elapsed();
    ok(&o);
    let again: Value = serde_json::from_slice(&o.stdout).expect("build --json");
    assert_eq!(
        again[0]["cached"], true,
        "a rebuild of an unchanged spec: {again}"
    );
    assert_eq!(
        repo.requests().len(),
        asked.len(),
        "a cached rebuild ran apt again"
    );
    eprintln!(
        "timings: cold build {:.1}s, cached rebuild {:.2}s",
        cold.as_secs_f64(),
        cached.as_secs_f64()
    );
    let o = server.rc(dir, &["image", "inspect", "site", "--json"]);
    ok(&o);
    let text = stdout(&o);
    for want in ["80/tcp", "daemon off;"] {
        assert!(text.contains(want), "inspect lacks {want:?}: {text}");
    }

    // Without a writable /var/log/nginx nginx cannot start in the read-only root: the apply
    // fails at the image test, quoting nginx and saying what to do.
    write_spec(&v1, r#"["/run", "/var/lib/nginx"]"#);
    let o = server.rc(dir, &["apply", "--yes"]);
    assert!(!o.status.success(), "nginx ran without its log directory");
    let err = stderr(&o);
    eprintln!("without /var/log/nginx: {err}");
    for want in ["/var/log/nginx/error.log", "Read-only file system", "tmpfs"] {
        assert!(err.contains(want), "the failure lacks {want:?}: {err}");
    }

    // With its three directories: tested (the test instance gets the service's tmpfs paths,
    // and its port), deployed as two read-only instances, served through the route.
    write_spec(&v1, NGINX_TMPFS);
    ok(&server.rc(dir, &["apply", "--yes"]));
    wait_for("the site through the route", 20, || body_now(port) == v1);
    let findings = file_and_mount_findings(&server, dir);
    assert!(
        findings.is_empty(),
        "nginx's writes were drift: {findings:?}"
    );

    // A new site, rolled out under continuous load: no failed request, every answer v1 or v2.
    let v2 = site(dir, "v2");
    write_spec(&v2, NGINX_TMPFS);
    let load = Load::start(port);
    load.flowing(50);
    let t = Instant::now();
    let o = server.rc(dir, &["apply", "--yes", "--json"]);
    let rollout = t.elapsed();
    ok(&o);
    load.flowing(50);
    let (n, failures, bodies) = load.finish();
    eprintln!(
        "rolling update: {:.1}s (cached build included), {n} requests, bodies {:?}",
        rollout.as_secs_f64(),
        bodies
    );
    assert!(
        failures.is_empty(),
        "{} failed requests during the rollout: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(n > 100, "too little load to mean anything: {n}");
    for b in bodies.keys() {
        assert!(*b == v1 || *b == v2, "an answer from neither site: {b:?}");
    }
    assert!(bodies.contains_key(&v2), "no answer from v2: {bodies:?}");
    assert_eq!(body_now(port), v2);
    assert_eq!(
        repo.requests().len(),
        asked.len(),
        "changing the site ran apt again"
    );
    let findings = file_and_mount_findings(&server, dir);
    assert!(
        findings.is_empty(),
        "nginx's writes were drift after the rollout: {findings:?}"
    );
    // nginx wrote only to its tmpfs directories: nothing reached the instances' roots.
    for inst in fs::read_dir(server.data.join("instances"))
        .expect("instances")
        .flatten()
    {
        for written in [
            "run/nginx.pid",
            "var/log/nginx/access.log",
            "var/lib/nginx/body",
        ] {
            assert!(
                !inst.path().join("upper").join(written).exists(),
                "{written} reached the root of {}",
                inst.path().display()
            );
        }
    }

    // `--check` rebuilds without cache and compares. apt and dpkg write timestamps into their
    // logs, so the step may not be reproducible: then the check must fail naming a file and the
    // step that wrote it.
    let t = Instant::now();
    let o = server.rc(dir, &["build", "--check"]);
    let check = t.elapsed();
    let err = stderr(&o);
    eprintln!(
        "build --check ({:.1}s): {}\n{err}",
        check.as_secs_f64(),
        if o.status.success() {
            "reproducible"
        } else {
            "NOT reproducible"
        }
    );
    if !o.status.success() {
        assert!(
            err.contains("file /"),
            "--check does not name a file: {err}"
        );
        assert!(
            err.contains("apt-get install") || err.contains("Dockerfile:4"),
            "--check does not name the RUN step that wrote it: {err}"
        );
    }
}

/// The site behind HTTP basic auth whose user file is a recast secret (`/healthz` stays open
/// for the health check and the image test).
const AUTH_DOCKERFILE: &str = r#"FROM debian:12
ARG DEBIAN_FRONTEND=noninteractive
ARG APT_REPO
RUN echo "deb [trusted=yes] ${APT_REPO} ./" > /etc/apt/sources.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default
COPY site.conf /etc/nginx/conf.d/site.conf
COPY site/ /var/www/html/
CMD ["nginx", "-g", "daemon off;"]
"#;

const AUTH_CONF: &str = r#"server {
    listen 80 default_server;
    root /var/www/html;
    location = /healthz { return 200 "ok\n"; }
    location / {
        auth_basic "recast";
        auth_basic_user_file /run/secrets/htpasswd;
    }
}
"#;

/// [`spec`] with the image test and health check on `/healthz`, and the secret `htpasswd`
/// (file `htpasswd` beside the spec) mounted world-readable (nginx's workers read it).
fn auth_spec(archive: &Path, repo: &str, route_port: u16) -> String {
    let mut text = spec(archive, repo, route_port, "ok", NGINX_TMPFS);
    for (from, to) in [
        ("path        = \"/\"", "path        = \"/healthz\""),
        (
            "http                = \"/\"",
            "http                = \"/healthz\"",
        ),
        (
            "service \"site\" {",
            "secret \"htpasswd\" {\n  from_file = \"htpasswd\"\n}\n\nservice \"site\" {",
        ),
        (
            "  health {",
            "  secret_file {\n    secret = secret.htpasswd\n    path   = \"/run/secrets/htpasswd\"\n    mode   = \"0444\"\n  }\n  health {",
        ),
    ] {
        assert!(text.contains(from), "the nginx spec lacks {from:?}");
        text = text.replacen(from, to, 1);
    }
    text
}

/// The status curl gets for `GET /` through the route, as `user:password` when given.
fn status_as(port: u16, user: Option<&str>) -> String {
    let mut c = std::process::Command::new("curl");
    c.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ]);
    if let Some(u) = user {
        c.args(["-u", u]);
    }
    let o = c
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("run curl");
    stdout(&o)
}

/// Issue 16 with stock software: Debian's nginx reads its basic-auth user file from a recast
/// secret mounted on a tmpfs; the guard sees no drift in it; a changed secret is a planned
/// change that rolls out, after which only the new password opens the site; the password is
/// nowhere in the data directory.
#[test]
fn stock_nginx_reads_a_secret_file_and_a_changed_secret_rolls_out() {
    let repo = AptRepo::serve();
    let archive = base_image_archive();
    let server = Server::start();
    let port = free_port();
    let p = tempfile::Builder::new()
        .prefix("nginx-secret")
        .tempdir()
        .expect("tmp");
    let dir = p.path();
    fs::write(dir.join("Dockerfile"), AUTH_DOCKERFILE).expect("Dockerfile");
    fs::write(dir.join("site.conf"), AUTH_CONF).expect("site.conf");
    site(dir, "v1");
    fs::write(dir.join("recast.hcl"), auth_spec(&archive, &repo.url, port)).expect("spec");
    let (old, new) = ("pw-7f3c1e9a-old", "pw-0b5d48c2-new");
    fs::write(dir.join("htpasswd"), format!("alice:{{PLAIN}}{old}\n")).expect("htpasswd");

    ok(&server.rc(dir, &["apply", "--yes"]));
    let as_old = format!("alice:{old}");
    let as_new = format!("alice:{new}");
    wait_for("the site to open with the password", 30, || {
        status_as(port, Some(&as_old)) == "200"
    });
    assert_eq!(
        status_as(port, None),
        "401",
        "the site opened without a password"
    );
    assert_eq!(
        status_as(port, Some(&as_new)),
        "401",
        "a wrong password opened the site"
    );
    let findings = file_and_mount_findings(&server, dir);
    assert!(
        findings.is_empty(),
        "the secret file was drift: {findings:?}"
    );

    fs::write(dir.join("htpasswd"), format!("alice:{{PLAIN}}{new}\n")).expect("htpasswd");
    let plan = server.rc(dir, &["plan"]);
    ok(&plan);
    assert!(
        stdout(&plan).contains("secret htpasswd changed"),
        "the plan does not show the secret changed:\n{}",
        stdout(&plan)
    );
    ok(&server.rc(dir, &["apply", "--yes"]));
    wait_for("the new password to open the site", 30, || {
        status_as(port, Some(&as_new)) == "200"
    });
    assert_eq!(
        status_as(port, Some(&as_old)),
        "401",
        "the old password still works"
    );
    crate::environments::data_dir_clean(&server, &[old, new], "after nginx's secret changed");
}
