//! Issue 12, points 1 and 2: the guard on real software. Stock Debian nginx (which rewrites its
//! process title), PostgreSQL 15 (a volume, initdb on first start, forked backends) and a
//! busybox httpd started through `sh -c "exec …"` run for many one-second scans with
//! `on_drift = "replace"`: no finding, no replacement. Real tampering — a file changed in the
//! root the instance sees, a read-write mount made inside it, a process started in it from a
//! binary copied to `/tmp` — is found with its kind and replaced under load with no failed
//! request.

use crate::debian::{AptRepo, base_image_archive};
use crate::deploy::{Load, Server, free_port, ok, wait_for};
use crate::postgres::{POSTGRES_ENTRYPOINT, postgres_dockerfile};
use crate::{stderr, stdout};
use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The apt line every Dockerfile starts with (the loopback repository, trusted).
const APT: &str = r#"ARG DEBIAN_FRONTEND=noninteractive
ARG APT_REPO
RUN echo "deb [trusted=yes] ${APT_REPO} ./" > /etc/apt/sources.list"#;

fn nginx_dockerfile() -> String {
    format!(
        r#"FROM debian:12
{APT} \
 && apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* \
 && echo "nginx ok" > /var/www/html/index.html
EXPOSE 80
CMD ["nginx", "-g", "daemon off;"]
"#
    )
}

fn busybox_dockerfile() -> String {
    format!(
        r#"FROM debian:12
{APT} \
 && apt-get update \
 && apt-get install -y --no-install-recommends busybox \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /srv/www && echo "busybox ok" > /srv/www/index.html
EXPOSE 8080
CMD ["sh", "-c", "exec busybox httpd -f -p 8080 -h /srv/www"]
"#
    )
}

/// nginx writes its pid, temporaries and logs (see nginx.rs).
const NGINX_TMPFS: &str = r#"["/run", "/var/lib/nginx", "/var/log/nginx"]"#;

/// A project directory with the three images' build contexts.
fn project(dir: &Path) {
    for (name, df) in [
        ("nginx", nginx_dockerfile()),
        ("postgres", postgres_dockerfile()),
        ("busybox", busybox_dockerfile()),
    ] {
        fs::create_dir_all(dir.join(name)).expect("mkdir context");
        fs::write(dir.join(name).join("Dockerfile"), df).expect("Dockerfile");
    }
    let ep = dir.join("postgres/entrypoint.sh");
    fs::write(&ep, POSTGRES_ENTRYPOINT).expect("entrypoint");
    fs::set_permissions(&ep, fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn image(name: &str, repo: &str) -> String {
    format!(
        r#"
image "{name}" {{
  dockerfile = "{name}/Dockerfile"
  args       = {{ APT_REPO = "{repo}" }}
}}
"#
    )
}

const GUARD: &str = r#"
guard {
  scan_interval = "1s"
  on_drift      = "replace"
}
"#;

fn base(archive: &Path) -> String {
    format!(
        "base \"debian:12\" {{\n  source = \"oci-archive:{}\"\n}}\n",
        archive.display()
    )
}

fn nginx_service(port: u16) -> String {
    format!(
        r#"
service "nginx" {{
  image     = image.nginx
  port      = 80
  instances = 2
  tmpfs     = {NGINX_TMPFS}
  health {{
    http     = "/"
    interval = "200ms"
  }}
}}

route "nginx" {{
  listen  = "127.0.0.1:{port}"
  service = service.nginx
}}
"#
    )
}

fn busybox_service(port: u16, instances: u32) -> String {
    format!(
        r#"
service "busybox" {{
  image     = image.busybox
  port      = 8080
  instances = {instances}
  health {{
    http     = "/"
    interval = "200ms"
  }}
}}

route "busybox" {{
  listen  = "127.0.0.1:{port}"
  service = service.busybox
}}
"#
    )
}

const POSTGRES_SERVICE: &str = r#"
service "postgres" {
  image = image.postgres
  port  = 5432
  tmpfs = ["/run/postgresql"]
  volume "data" {
    mount = "/var/lib/postgresql/data"
  }
  health {
    tcp          = true
    interval     = "500ms"
    start_period = "60s"
  }
}
"#;

/// `recast status --json`: service → instance ids.
fn instances(server: &Server, dir: &Path) -> Vec<(String, Vec<String>)> {
    let o = server.rc(dir, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", stderr(&o)));
    let mut out: Vec<(String, Vec<String>)> = v["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let mut ids: Vec<String> = s["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["id"].as_str().unwrap_or("").to_string())
                .collect();
            ids.sort();
            (s["service"].as_str().unwrap_or("").to_string(), ids)
        })
        .collect();
    out.sort();
    out
}

fn healthy(server: &Server, dir: &Path, service: &str) -> usize {
    let o = server.rc(dir, &["status", service, "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v["services"][0]["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["healthy"] == true && i["active"] == true)
        .count()
}

/// Every finding of `recast drift --json` (a metadata scan, as the guard runs it).
fn findings(server: &Server, dir: &Path) -> Vec<Value> {
    let o = server.rc(dir, &["drift", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "drift --json is not JSON ({e}): {}{}",
            stdout(&o),
            stderr(&o)
        )
    });
    v["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("drift --json has no instances: {v}"))
        .iter()
        .flat_map(|i| {
            i["findings"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|f| serde_json::json!({"instance": i["instance"], "finding": f}))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One GET of the server's API with its token.
fn api(server: &Server, path: &str) -> TcpStream {
    let info: Value =
        serde_json::from_slice(&fs::read(server.data.join("server.json")).expect("server.json"))
            .expect("server.json is JSON");
    let addr = info["addr"].as_str().expect("addr").to_string();
    let token = fs::read_to_string(server.data.join("token")).expect("token");
    let mut s = TcpStream::connect(&addr).expect("connect to the API");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    s
}

/// The recorded events so far: (kind, message).
fn events(server: &Server) -> Vec<(String, String)> {
    let s = api(server, "/v1/events?since=0");
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    let mut l = String::new();
    loop {
        l.clear();
        match r.read_line(&mut l) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(data) = l.strip_prefix("data: ") {
            let e: Value = serde_json::from_str(data.trim()).unwrap_or_default();
            out.push((
                e["kind"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

/// The guard's scheduled scans per service, from `/metrics`.
fn scans(server: &Server) -> Vec<(String, u64)> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut api(server, "/metrics"), &mut text).expect("metrics");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("recast_guard_scans_total{service=\"")?;
            let (svc, rest) = rest.split_once('"')?;
            Some((
                svc.to_string(),
                rest.rsplit_once(' ')?.1.trim().parse().ok()?,
            ))
        })
        .collect()
}

fn build(server: &Server, dir: &Path) {
    let t = Instant::now();
    ok(&server.rc(dir, &["build"]));
    eprintln!("built in {:.1}s", t.elapsed().as_secs_f64());
}

#[test]
fn stock_nginx_postgres_and_busybox_are_never_drift_over_many_scans() {
    let repo = AptRepo::serve();
    let archive = base_image_archive();
    let server = Server::start();
    let (nginx_port, busybox_port) = (free_port(), free_port());
    let p = tempfile::Builder::new()
        .prefix("real")
        .tempdir()
        .expect("tmp");
    let dir = p.path();
    project(dir);
    fs::write(
        dir.join("recast.hcl"),
        format!(
            "{}{}{}{}{}{}{POSTGRES_SERVICE}{GUARD}",
            base(&archive),
            image("nginx", &repo.url),
            image("postgres", &repo.url),
            image("busybox", &repo.url),
            nginx_service(nginx_port),
            busybox_service(busybox_port, 2),
        ),
    )
    .expect("spec");
    build(&server, dir);
    ok(&server.rc(dir, &["apply", "--yes"]));
    let before = instances(&server, dir);
    assert_eq!(
        before.iter().map(|(_, ids)| ids.len()).collect::<Vec<_>>(),
        [2, 2, 1],
        "{before:?}"
    );
    // PostgreSQL answers on its port (a startup packet gets an answer, not a reset).
    let pg = &before[2].1[0];
    let o = Command::new("runc")
        .arg("--root")
        .arg(server.data.join("runc"))
        .args([
            "exec",
            pg,
            "/usr/lib/postgresql/15/bin/psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-Atc",
            "select 40 + 2",
        ])
        .output()
        .expect("runc exec psql");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "42",
        "psql in the instance: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Many scans under light load: nothing found, nothing replaced.
    let load = Load::start(busybox_port);
    let nginx_load = Load::start(nginx_port);
    // Until every service has had at least 10 scans (about 10 s; a loaded machine delays
    // scans, so the deadline is generous), checking all along that nothing is replaced.
    let start = scans(&server);
    let n = |v: &[(String, u64)], svc: &str| v.iter().find(|(s, _)| s == svc).map_or(0, |x| x.1);
    let t = Instant::now();
    loop {
        assert_eq!(
            instances(&server, dir),
            before,
            "an instance of a clean fleet was replaced: {:?}",
            events(&server)
        );
        let now = scans(&server);
        if ["busybox", "nginx", "postgres"]
            .iter()
            .all(|svc| n(&now, svc) >= n(&start, svc) + 10)
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "fewer than 10 scans of each service in 90 s: {start:?} -> {now:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let f = findings(&server, dir);
    assert!(f.is_empty(), "a clean fleet has findings: {f:?}");
    let ev = events(&server);
    let bad: Vec<_> = ev
        .iter()
        .filter(|(k, _)| k.starts_with("drift") || k == "instance.replaced")
        .collect();
    assert!(bad.is_empty(), "drift or replacement events: {bad:?}");
    assert_eq!(instances(&server, dir), before);
    for (l, name) in [(load, "busybox"), (nginx_load, "nginx")] {
        let (n, failures, bodies) = l.finish();
        assert!(
            failures.is_empty(),
            "{name}: {} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(n > 100, "{name}: too little load: {n}");
        assert!(
            bodies.keys().all(|b| b == &format!("{name} ok\n")),
            "{name}: {bodies:?}"
        );
    }
}

/// Wait until `id` of `service` is replaced by the guard (a healthy fleet of `n` without it),
/// and return the drift event that named it.
fn replaced(server: &Server, dir: &Path, service: &str, id: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = instances(server, dir);
        let ids = &now
            .iter()
            .find(|(s, _)| s == service)
            .expect("the service")
            .1;
        if !ids.iter().any(|i| i == id) && healthy(server, dir, service) == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guard did not replace {id} within 60 s: instances {now:?}, events {:?}, findings {:?}",
            events(server),
            findings(server, dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut ev = Vec::new();
    wait_for(&format!("the replacement event of {id}"), 20, || {
        ev = events(server);
        ev.iter()
            .any(|(k, m)| k == "instance.replaced" && m.contains(id) && m.contains("(drift)"))
    });
    ev.into_iter()
        .find(|(k, m)| k == "drift.detected" && m.contains(id))
        .map(|(_, m)| m)
        .unwrap_or_else(|| panic!("no drift event for {id}"))
}

fn pid_of(server: &Server, id: &str) -> String {
    fs::read_to_string(server.data.join("instances").join(id).join("pid"))
        .expect("pid")
        .trim()
        .to_string()
}

#[test]
fn real_tamper_is_found_with_its_kind_and_replaced_under_load() {
    let repo = AptRepo::serve();
    let archive = base_image_archive();
    let server = Server::start();
    let port = free_port();
    let p = tempfile::Builder::new()
        .prefix("tamper")
        .tempdir()
        .expect("tmp");
    let dir = p.path();
    project(dir);
    fs::write(
        dir.join("recast.hcl"),
        format!(
            "{}{}{}{GUARD}",
            base(&archive),
            image("busybox", &repo.url),
            busybox_service(port, 3),
        ),
    )
    .expect("spec");
    build(&server, dir);
    ok(&server.rc(dir, &["apply", "--yes"]));
    let load = Load::start(port);
    load.flowing(50);
    let ids = || instances(&server, dir)[0].1.clone();

    // 1. A file of the image changed in the root the instance sees (its overlay, shared with
    //    the kernel's view of the instance: the instance reads the new content at once).
    let id = ids()[0].clone();
    let root = server.data.join("instances").join(&id).join("rootfs");
    fs::write(root.join("etc/debian_version"), "tampered\n").expect("tamper a file");
    let seen = fs::read_to_string(format!(
        "/proc/{}/root/etc/debian_version",
        pid_of(&server, &id)
    ))
    .expect("read through the instance's root");
    assert_eq!(seen, "tampered\n");
    let m = replaced(&server, dir, "busybox", &id, 3);
    assert!(
        m.contains("changed /etc/debian_version (content"),
        "file tamper: {m}"
    );

    // 2. A read-write filesystem mounted inside the instance (by someone in its namespace).
    let id = ids()[1].clone();
    let st = Command::new("nsenter")
        .args(["-t", &pid_of(&server, &id), "-m", "--"])
        .args(["/bin/busybox", "mount", "-t", "tmpfs", "tmpfs", "/srv"])
        .status()
        .expect("nsenter");
    assert!(st.success(), "mount in the instance failed");
    let m = replaced(&server, dir, "busybox", &id, 3);
    assert!(
        m.contains("unexpected_mount /srv (mounted read-write)"),
        "mount tamper: {m}"
    );

    // 3. A process started in the instance from a binary copied to /tmp.
    let id = ids()[2].clone();
    let st = Command::new("runc")
        .arg("--root")
        .arg(server.data.join("runc"))
        .args(["exec", "-d", &id, "sh", "-c"])
        // (busybox picks its applet by its name: the copy keeps it.)
        .arg("cp /bin/busybox /tmp/busybox && exec /tmp/busybox sleep 1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("runc exec");
    assert!(st.success(), "runc exec failed");
    let m = replaced(&server, dir, "busybox", &id, 3);
    assert!(
        m.contains("process /tmp/busybox (pid ") && m.contains("runs a file from /tmp"),
        "process tamper: {m}"
    );

    load.flowing(50);
    let (n, failures, _) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed requests while tampered instances were replaced: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(n > 100, "too little load: {n}");
    let f = findings(&server, dir);
    assert!(f.is_empty(), "the healed fleet has findings: {f:?}");
}
