//! Issue 18, point 1: services reach each other by name. A `web` service (busybox httpd whose
//! index is a CGI script) calls `http://api:8080/` — the same port it listens on itself — and
//! answers with what `api` said. Traffic from outside enters through web's route; web's calls
//! to api pass recast's proxy on api's address in the project network, so api's canary rollout
//! under load loses no request and its split shows in what web says. `allow_from` keeps a
//! service that is not listed out; another project never sees this one's services.

use crate::deploy::{Load, Server, free_port, ok, wait_for};
use std::fs;
use std::path::Path;

/// The CGI that answers every request to `web`: what `$TARGET` says, or why it said nothing.
const CALL_CGI: &str = "#!/bin/busybox sh\n\
b=$(/bin/busybox wget -q -O - \"$TARGET\" 2>&1 || echo \"call failed: $TARGET\")\n\
printf 'Content-Type: text/plain\\r\\nContent-Length: %d\\r\\n\\r\\n%s\\n' $((${#b} + 1)) \"$b\"\n";

/// A project directory: busybox images; `api` serves "api $VERSION", the other services
/// answer through `CALL_CGI` with what they got from `$TARGET`.
fn write_project(dir: &Path, body: &str) {
    fs::create_dir_all(dir.join("www/cgi-bin")).expect("www");
    fs::copy("/bin/busybox", dir.join("busybox")).expect("busybox-static is not installed");
    fs::write(dir.join("www/cgi-bin/index.cgi"), CALL_CGI).expect("cgi");
    fs::write(
        dir.join("recast.hcl"),
        format!(
            r#"
image "box" {{
  from = "scratch"
  copy {{
    src  = "busybox"
    dest = "/bin/busybox"
    mode = "0755"
  }}
  copy {{
    src  = "www"
    dest = "/www"
  }}
  run {{
    command = ["/bin/busybox", "chmod", "0755", "/www/cgi-bin/index.cgi"]
  }}
  cmd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
}}

image "api" {{
  from = image.box
  cmd  = ["/bin/busybox", "sh", "-c", "mkdir -p /tmp/www && echo api $VERSION > /tmp/www/index.html && exec /bin/busybox httpd -f -p 8080 -h /tmp/www"]
}}

{body}
"#
        ),
    )
    .expect("spec");
}

/// `api`: "api $VERSION" from httpd on 8080, health checked over HTTP.
fn api(version: &str, extra: &str) -> String {
    format!(
        r#"
service "api" {{
  image     = image.api
  instances = 2
  port      = 8080
  env       = {{ VERSION = "{version}" }}
  health {{
    http     = "/"
    interval = "1s"
  }}
  {extra}
}}
"#
    )
}

/// A service answering with what `target` says, published on `port`.
fn caller(name: &str, target: &str, port: u16) -> String {
    format!(
        r#"
service "{name}" {{
  image     = image.box
  instances = 1
  port      = 8080
  env       = {{ TARGET = "{target}" }}
}}

route "{name}" {{
  listen  = "127.0.0.1:{port}"
  service = service.{name}
}}
"#
    )
}

/// What a GET of `/` on the route at `port` answers, or what went wrong (`curl`).
fn body_now(port: u16) -> String {
    let o = std::process::Command::new("curl")
        .args(["-sS", "-m", "20", &format!("http://127.0.0.1:{port}/")])
        .output()
        .expect("curl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn services_reach_each_other_by_name_and_a_rollout_behind_a_name_drops_nothing() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tmp");
    let (web, stranger) = (free_port(), free_port());
    let spec = |version: &str| {
        format!(
            "{}{}{}",
            api(
                version,
                r#"allow_from = [service.web]
  rollout {
    strategy = "canary"
    step {
      weight = 50
      pause  = "6s"
    }
  }"#
            ),
            caller("web", "http://api:8080/", web),
            caller("stranger", "http://api:8080/", stranger),
        )
    };
    write_project(dir.path(), &spec("v1"));
    ok(&server.rc(dir.path(), &["apply", "--yes"]));
    assert_eq!(body_now(web).trim(), "api v1", "web reaches api by name");
    // What the runtime binds for names (`/etc/hosts`, `/etc/resolv.conf`, and the `/etc` it made
    // for them in an image without one) is not drift: the guard leaves the instances alone.
    ok(&server.rc(dir.path(), &["drift"]));
    // `stranger` resolves the name, but api only lets web in.
    let refused = body_now(stranger);
    assert!(
        refused.contains("call failed") && !refused.contains("api v1"),
        "stranger must not reach api: {refused:?}"
    );

    // api rolls out as a canary while web calls it under load: web's calls split between the
    // releases at the step's weight, no request fails, and web ends up on v2.
    let load = Load::start(web);
    load.flowing(20);
    write_project(dir.path(), &spec("v2"));
    let (_, apply) = crate::tcp_routes::apply_in_background(&server, dir.path());
    wait_for("the canary to take traffic", 60, || {
        body_now(web).trim() == "api v2"
    });
    let sample: Vec<String> = (0..40).map(|_| body_now(web).trim().to_string()).collect();
    let v2 = sample.iter().filter(|b| *b == "api v2").count();
    assert!(
        (8..=32).contains(&v2),
        "a 50% canary behind a name: {v2} of 40 calls went to v2: {sample:?}"
    );
    ok(&apply.join().expect("apply thread"));
    load.flowing(20);
    let (served, failures, bodies) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed of {served}: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        bodies
            .keys()
            .all(|b| b.trim() == "api v1" || b.trim() == "api v2"),
        "{bodies:?}"
    );
    assert_eq!(body_now(web).trim(), "api v2");

    // Another project, with a service of the same name at the same address in its own
    // network: it reaches its own `api`, never this project's.
    let other = tempfile::tempdir().expect("tmp");
    let other_port = free_port();
    write_project(
        other.path(),
        &format!(
            "{}{}",
            api("elsewhere", ""),
            caller("web", "http://10.89.1.1:8080/", other_port)
        ),
    );
    ok(&server.rc(other.path(), &["apply", "--yes"]));
    wait_for("the other project's web", 10, || {
        body_now(other_port).trim() == "api elsewhere"
    });
    assert_eq!(body_now(web).trim(), "api v2", "this project is unchanged");

    // Destroyed, a project leaves no network behind.
    ok(&server.rc(other.path(), &["destroy", "--yes"]));
    ok(&server.rc(dir.path(), &["destroy", "--yes"]));
    let left: Vec<_> = fs::read_dir(server.data.join("networks"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "networks left: {left:?}");
}

/// A host outside recast that the test makes itself: a network namespace with its own address,
/// joined to the host by a veth pair, serving "outside PORT" over HTTP on two ports. Traffic to it
/// never leaves the machine. Removed (namespace, veth, servers) when dropped.
struct TestHost {
    pin: tempfile::TempDir,
    servers: Vec<std::process::Child>,
    host_end: String,
}

const TEST_HOST: &str = "10.213.77.2";

impl TestHost {
    fn start(ports: &[u16]) -> TestHost {
        let pin = tempfile::tempdir().expect("tmp");
        let ns = pin.path().join("netns");
        let sh = |cmd: &str| {
            let o = std::process::Command::new("sh")
                .args(["-ec", cmd])
                .output()
                .expect("sh");
            assert!(
                o.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let host_end = format!("rtest{}", std::process::id() % 100_000);
        fs::write(&ns, b"").expect("pin");
        sh(&format!(
            "unshare --net={ns} true
             ip link add {host_end} type veth peer name eth0 netns {ns}
             ip addr add 10.213.77.1/30 dev {host_end}
             ip link set {host_end} up
             nsenter --net={ns} ip addr add {TEST_HOST}/30 dev eth0
             nsenter --net={ns} ip link set eth0 up
             nsenter --net={ns} ip link set lo up",
            ns = ns.display()
        ));
        let www = pin.path().join("www");
        let mut servers = Vec::new();
        for port in ports {
            let dir = www.join(port.to_string());
            fs::create_dir_all(&dir).expect("www");
            fs::write(dir.join("index.html"), format!("outside {port}\n")).expect("page");
            servers.push(
                std::process::Command::new("nsenter")
                    .arg(format!("--net={}", ns.display()))
                    .args(["python3", "-m", "http.server", &port.to_string()])
                    .args(["--bind", TEST_HOST, "--directory"])
                    .arg(&dir)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("python3"),
            );
        }
        let host = TestHost {
            pin,
            servers,
            host_end,
        };
        for port in ports {
            wait_for("the test host's server", 10, || {
                std::process::Command::new("curl")
                    .args(["-sf", "-m", "1", &format!("http://{TEST_HOST}:{port}/")])
                    .status()
                    .is_ok_and(|s| s.success())
            });
        }
        host
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_end])
            .status();
        let _ = std::process::Command::new("umount")
            .arg(self.pin.path().join("netns"))
            .status();
    }
}

/// The host's interfaces (names), to check recast adds none.
fn host_links() -> Vec<String> {
    let o = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip");
    let mut names: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
        .collect();
    names.sort();
    names
}

/// The processes whose command line mentions `text`.
fn processes_with(text: &str) -> usize {
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(text))
        })
        .count()
}

/// `egress`: "all" (the default) reaches a host outside, "none" reaches nothing outside, a list
/// reaches what it lists and nothing else. Two data directories with the same project run side
/// by side; when their projects are destroyed, nothing recast added remains (no interface on
/// the host, no egress process, no network directory).
#[test]
fn egress_is_all_none_or_a_list_and_leaves_nothing_behind() {
    let links_before = host_links();
    let host = TestHost::start(&[8081, 8082]);
    let with_test_host = host_links();
    // Egress per service: `open` the default, `closed` none, `listed` and `unlisted` the same
    // list (port 8081 of the test host only).
    let project = |ports: &[u16]| {
        let outside = |port: u16| format!("http://{TEST_HOST}:{port}/");
        let dir = tempfile::tempdir().expect("tmp");
        let spec = format!(
            "project = \"shop\"\n{}{}{}{}",
            caller("open", &outside(8081), ports[0]),
            caller("closed", &outside(8081), ports[1]),
            caller("listed", &outside(8081), ports[2]),
            caller("unlisted", &outside(8082), ports[3]),
        )
        .replace(
            "service \"closed\" {",
            "service \"closed\" {\n  egress = \"none\"",
        )
        .replace(
            "service \"listed\" {",
            &format!("service \"listed\" {{\n  egress = [\"{TEST_HOST}:8081\"]"),
        )
        .replace(
            "service \"unlisted\" {",
            &format!("service \"unlisted\" {{\n  egress = [\"{TEST_HOST}:8081\"]"),
        );
        write_project(dir.path(), &spec);
        dir
    };
    // Two data directories, the same project (same name, same addresses inside) in each.
    let (first, second) = (Server::start(), Server::start());
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let other_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let (dir, other_dir) = (project(&ports), project(&other_ports));
    ok(&first.rc(dir.path(), &["apply", "--yes"]));
    ok(&second.rc(other_dir.path(), &["apply", "--yes"]));
    let expected = |p: &[u16]| {
        [
            (p[0], Some("outside 8081")),
            (p[1], None),
            (p[2], Some("outside 8081")),
            (p[3], None),
        ]
    };
    for (port, want) in expected(&ports).into_iter().chain(expected(&other_ports)) {
        let got = body_now(port);
        match want {
            Some(w) => assert_eq!(got.trim(), w, "route {port}"),
            None => assert!(
                got.contains("call failed") && !got.contains("outside"),
                "route {port} must not reach the test host: {got:?}"
            ),
        }
    }
    assert_eq!(
        host_links(),
        with_test_host,
        "recast added no interface to the host"
    );
    for (s, d) in [(&first, &dir), (&second, &other_dir)] {
        ok(&s.rc(d.path(), &["destroy", "--yes"]));
        let left: Vec<_> = fs::read_dir(s.data.join("networks"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "networks left: {left:?}");
        assert_eq!(
            processes_with(&format!("{}/networks", s.data.display())),
            0,
            "no egress process is left"
        );
    }
    drop(host);
    assert_eq!(host_links(), links_before, "the test host is gone too");
}
