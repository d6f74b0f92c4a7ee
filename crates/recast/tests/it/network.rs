//! Issue 18, point 1: services reach each other by name. A `web` service (busybox httpd whose
//! index is a CGI script) calls `http://api:8080/` — the same port it listens on itself — and
//! answers with what `api` said. Traffic from outside enters through web's route; web's calls
//! to api pass recast's proxy on api's address in the project network, so api's rollout under
//! load loses no request and a canary's split shows in what web says. `allow_from` keeps a
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
    strategy = "rolling"
  }"#
            ),
            caller("web", "http://api:8080/", web),
            caller("stranger", "http://api:8080/", stranger),
        )
    };
    write_project(dir.path(), &spec("v1"));
    ok(&server.rc(dir.path(), &["apply", "--yes"]));
    assert_eq!(body_now(web).trim(), "api v1", "web reaches api by name");
    // `stranger` resolves the name, but api only lets web in.
    let refused = body_now(stranger);
    assert!(
        refused.contains("call failed") && !refused.contains("api v1"),
        "stranger must not reach api: {refused:?}"
    );

    // api rolls out while web calls it under load: no request fails, and web ends up on v2.
    let load = Load::start(web);
    load.flowing(20);
    write_project(dir.path(), &spec("v2"));
    ok(&server.rc(dir.path(), &["apply", "--yes"]));
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
