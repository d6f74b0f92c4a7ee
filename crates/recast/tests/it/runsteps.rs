//! `run` steps: commands in throwaway build containers whose changes become layers (issue 11).

use crate::{stderr, stdout};
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn rc(cwd: &Path, data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(args)
        .current_dir(cwd)
        .env("RECAST_DATA_DIR", data)
        .output()
        .expect("run recast")
}

/// A project with Debian's static busybox and `steps` after it has installed its applets.
fn project(steps: &str, test: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    fs::copy("/bin/busybox", dir.path().join("busybox")).expect("busybox-static is not installed");
    fs::write(
        dir.path().join("recast.hcl"),
        format!(
            r#"
image "app" {{
  from = "scratch"
  copy {{
    src  = "busybox"
    dest = "/bin/busybox"
    mode = "0755"
  }}
  run {{
    command = ["/bin/busybox", "sh", "-c", "mkdir -p /usr/bin /sbin /usr/sbin /tmp /out /srv/www && chmod 1777 /tmp /out && /bin/busybox --install -s"]
    network = "none"
  }}
  {steps}
  env = {{ FROM_IMAGE = "yes" }}
  cmd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/srv/www"]
  test {{
    {test}
    timeout = "10s"
  }}
}}
"#
        ),
    )
    .expect("spec");
    dir
}

#[test]
fn run_steps_build_layers_with_whiteouts_env_workdir_and_user() {
    let p = project(
        r#"
  run {
    shell = "mkdir -p /etc/gone && echo page > /srv/www/index.html && echo bye > /etc/motd && touch /etc/gone/x"
  }
  run {
    shell   = "echo \"$GREETING $FROM_IMAGE\" > /out/greeting; pwd > /out/wd; id -u > /out/uid"
    env     = { GREETING = "hi" }
    workdir = "/srv/www"
    user    = "65534:65534"
  }
  run {
    shell = "rm /etc/motd && rm -rf /etc/gone && mkdir /etc/gone && echo new > /etc/gone/y"
  }
"#,
        r#"
    http {
      path        = "/index.html"
      expect_body = "page"
    }
    command = ["/bin/sh", "-c", "test ! -e /etc/motd && test ! -e /etc/gone/x && test \"$(cat /etc/gone/y)\" = new && test \"$(cat /out/greeting)\" = 'hi yes' && test \"$(cat /out/wd)\" = /srv/www && test \"$(cat /out/uid)\" = 65534 && test \"$(stat -c %a /out/greeting)\" = 644 && test \"$(umask)\" = 0022"]
"#,
    );
    let d = tempfile::tempdir().expect("data");
    let o = rc(p.path(), d.path(), &["test", "--json"]);
    assert!(o.status.success(), "{}{}", stderr(&o), stdout(&o));

    // The last step's layer carries the whiteout and the opaque directory.
    let out = tempfile::tempdir().expect("out");
    let oci = out.path().join("app.tar");
    let e = rc(
        p.path(),
        d.path(),
        &["image", "export", "app", "-o", oci.to_str().expect("utf8")],
    );
    assert!(e.status.success(), "{}", stderr(&e));
    let mut names = Vec::new();
    let mut outer = tar::Archive::new(fs::File::open(&oci).expect("export"));
    for blob in outer.entries().expect("entries") {
        let blob = blob.expect("entry");
        let mut inner = tar::Archive::new(blob);
        if let Ok(entries) = inner.entries() {
            for e in entries.flatten() {
                if let Ok(p) = e.path() {
                    names.push(p.to_string_lossy().into_owned());
                }
            }
        }
    }
    assert!(names.iter().any(|n| n == "etc/.wh.motd"), "{names:?}");
    assert!(
        names.iter().any(|n| n == "etc/gone/.wh..wh..opq"),
        "{names:?}"
    );

    // Built again: every step comes from the cache, the digest is the same.
    let first: Value =
        serde_json::from_slice(&rc(p.path(), d.path(), &["build", "--json"]).stdout).expect("json");
    let again = rc(p.path(), d.path(), &["build", "--json"]);
    let again: Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(first[0]["digest"], again[0]["digest"]);
    // And the same from nothing in another data directory: the steps are deterministic.
    let d2 = tempfile::tempdir().expect("data");
    let other: Value =
        serde_json::from_slice(&rc(p.path(), d2.path(), &["build", "--json"]).stdout)
            .expect("json");
    assert_eq!(first[0]["digest"], other[0]["digest"]);
    let check = rc(p.path(), d.path(), &["build", "--check"]);
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn a_failing_step_names_its_location_status_and_output_and_keeps_nothing() {
    let p = project(
        r#"
  run {
    shell = "echo about to fail; echo on stderr >&2; exit 3"
  }
"#,
        r#"command = ["/bin/true"]"#,
    );
    let d = tempfile::tempdir().expect("data");
    let o = rc(p.path(), d.path(), &["build"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    for want in [
        "recast.hcl:14:3",
        "exited with status 3",
        "about to fail",
        "on stderr",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    let ls = rc(p.path(), d.path(), &["image", "ls", "--json"]);
    assert_eq!(stdout(&ls).trim(), "[]", "nothing half-built is kept");
    let builds: Vec<_> = fs::read_dir(d.path().join("builds"))
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(builds.is_empty(), "build containers left: {builds:?}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(d.path().to_str().expect("utf8")),
        "{mounts}"
    );
}

#[test]
fn a_hermetic_step_has_no_network_and_a_host_step_has_the_hosts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            use std::io::Write;
            let mut s = s;
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let p = project(
        &format!(
            r#"
  run {{
    shell = "wget -q -O /fetched http://127.0.0.1:{port}/"
  }}
  run {{
    shell   = "if wget -q -T 2 -O /x http://127.0.0.1:{port}/; then exit 1; fi; echo offline > /offline"
    network = "none"
  }}
  run {{
    # On the host's network a step cannot open raw sockets (no sniffing, no spoofing).
    shell = "arping -c1 -w1 -I lo 127.0.0.1 2>&1 | grep -q 'not permitted'"
  }}
"#
        ),
        r#"command = ["/bin/sh", "-c", "test \"$(cat /fetched)\" = ok && test -e /offline"]"#,
    );
    let d = tempfile::tempdir().expect("data");
    let o = rc(p.path(), d.path(), &["test"]);
    assert!(o.status.success(), "{}{}", stderr(&o), stdout(&o));
}

/// A daemon that writes its runtime directories runs read-only with `tmpfs`: the directories
/// keep the image's owner, writes never reach the instance's root, and the guard sees no drift.
#[test]
fn tmpfs_directories_are_writable_private_and_not_drift() {
    use crate::deploy::{Server, free_port, ok, wait_for};
    let server = Server::start();
    let port = free_port();
    let p = project(
        r#"
  run {
    shell = "mkdir -p /var/lib/app /run/app && chown 65534:65534 /var/lib/app /run/app && chmod 700 /var/lib/app && echo page > /srv/www/index.html"
  }
"#,
        r#"command = ["/bin/true"]"#,
    );
    let spec = fs::read_to_string(p.path().join("recast.hcl")).expect("spec");
    let spec = spec.replace(
        r#"cmd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/srv/www"]"#,
        r#"cmd = ["/bin/sh", "-c", "echo $$ > /run/app/pid && echo state > /var/lib/app/state && exec httpd -f -p 8080 -h /srv/www"]
  user = "65534:65534""#,
    );
    fs::write(
        p.path().join("recast.hcl"),
        format!(
            r#"{spec}
service "web" {{
  image = image.app
  port  = 8080
  tmpfs = ["/run/app", "/var/lib/app"]
}}
route "web" {{
  listen  = "127.0.0.1:{port}"
  service = service.web
}}
guard {{
  scan_interval = "1h"
  on_drift      = "report"
}}
"#
        ),
    )
    .expect("spec");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    wait_for("the page through the route", 10, || {
        crate::deploy::body_now(port).contains("page")
    });
    // No file or mount finding: the tmpfs directories are neither files nor unexpected mounts.
    // (The process check's verdict on `sh -c exec` is issue 12's, not this test's.)
    let drift = server.rc(p.path(), &["drift", "--json"]);
    let v: Value = serde_json::from_slice(&drift.stdout).expect("json");
    let findings: Vec<&Value> = v["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["findings"].as_array().into_iter().flatten())
        .filter(|f| f["kind"] != "config")
        .collect();
    assert!(findings.is_empty(), "{findings:?}");
    for inst in fs::read_dir(server.data.join("instances"))
        .expect("instances")
        .flatten()
    {
        let upper = inst.path().join("upper");
        assert!(
            !upper.join("var/lib/app/state").exists(),
            "a tmpfs write reached the root"
        );
        assert!(
            !upper.join("run/app/pid").exists(),
            "a tmpfs write reached the root"
        );
    }
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (p, text) in files {
        let p = dir.join(p);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }
}

/// A multi-stage Dockerfile with ARG, ENV, WORKDIR, COPY --from, .dockerignore and EXPOSE builds
/// into an ordinary recast image: its test passes, a rebuild is cached and `--check` agrees.
#[test]
fn a_multi_stage_dockerfile_builds_an_ordinary_image() {
    let dir = tempfile::tempdir().expect("tmp");
    fs::copy("/bin/busybox", dir.path().join("busybox")).expect("busybox");
    write(
        dir.path(),
        &[
            ("site/index.html", "page"),
            ("site/secret.env", "TOKEN=x"),
            (".dockerignore", "# not in the image\nsite/*.env\n"),
            (
                "Dockerfile",
                r#"# syntax=docker/dockerfile:1
ARG GREETING=hello
FROM scratch AS tools
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "mkdir -p /usr/bin /sbin /usr/sbin /tmp && /bin/busybox --install -s"]

FROM tools AS build
ARG GREETING
ENV OUT=/out
WORKDIR /src
COPY site/ ./site/
RUN mkdir -p $OUT && cp -r site $OUT/www \
 && echo "$GREETING" > $OUT/www/greeting.txt

FROM tools
COPY --from=build /out/www /srv/www
EXPOSE 8080
LABEL org.example.kind=site
CMD ["httpd", "-f", "-p", "8080", "-h", "/srv/www"]
"#,
            ),
            (
                "recast.hcl",
                r#"
image "site" {
  dockerfile = "Dockerfile"
  args       = { GREETING = "hi" }
  test {
    http {
      path        = "/index.html"
      expect_body = "page"
    }
    http {
      path        = "/greeting.txt"
      expect_body = "hi"
    }
    command = ["/bin/sh", "-c", "test ! -e /srv/www/secret.env && test ! -e /src"]
    timeout = "10s"
  }
}
"#,
            ),
        ],
    );
    let d = tempfile::tempdir().expect("data");
    let o = rc(dir.path(), d.path(), &["test", "--json"]);
    assert!(o.status.success(), "{}{}", stderr(&o), stdout(&o));
    let inspect = rc(
        dir.path(),
        d.path(),
        &["image", "inspect", "site", "--json"],
    );
    let v: Value = serde_json::from_slice(&inspect.stdout).expect("json");
    let text = v.to_string();
    assert!(text.contains("8080/tcp"), "{text}");
    assert!(text.contains("org.example.kind"), "{text}");
    let ls = rc(dir.path(), d.path(), &["image", "ls", "--json"]);
    assert!(
        !stdout(&ls).contains('#'),
        "stages are not named images: {}",
        stdout(&ls)
    );
    let check = rc(dir.path(), d.path(), &["build", "--check"]);
    assert!(check.status.success(), "{}", stderr(&check));
}

/// HCL multi-stage: `from = image.x` and `copy { from = image.x }`.
#[test]
fn images_build_on_and_copy_from_other_images() {
    let p = project(
        r#"
  run {
    shell = "echo built > /out/artifact && echo page > /srv/www/index.html"
  }
"#,
        r#"command = ["/bin/true"]"#,
    );
    let spec = fs::read_to_string(p.path().join("recast.hcl")).expect("spec");
    fs::write(
        p.path().join("recast.hcl"),
        format!(
            r#"{spec}
image "derived" {{
  from = image.app
  run {{
    shell = "cat /out/artifact > /srv/www/derived.txt"
  }}
  test {{
    http {{
      path        = "/derived.txt"
      expect_body = "built"
    }}
  }}
}}

image "slim" {{
  from = "scratch"
  copy {{
    from = image.app
    src  = "/bin/busybox"
    dest = "/bin/busybox"
  }}
  copy {{
    from = image.derived
    src  = "/srv/www"
    dest = "/www"
  }}
  cmd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
  test {{
    http {{
      path        = "/derived.txt"
      expect_body = "built"
    }}
  }}
}}
"#
        ),
    )
    .expect("spec");
    let d = tempfile::tempdir().expect("data");
    let o = rc(p.path(), d.path(), &["test", "slim", "--json"]);
    assert!(o.status.success(), "{}{}", stderr(&o), stdout(&o));
}

#[test]
fn an_unsupported_dockerfile_instruction_is_a_located_error() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        &[
            ("Dockerfile", "FROM scratch\nONBUILD RUN true\n"),
            (
                "recast.hcl",
                "image \"x\" {\n  dockerfile = \"Dockerfile\"\n}\n",
            ),
        ],
    );
    let d = tempfile::tempdir().expect("data");
    let o = rc(dir.path(), d.path(), &["build"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Dockerfile:2:1"), "{}", stderr(&o));
}

/// A step that is not deterministic: the cache keeps builds stable, `--no-cache` runs it
/// again, and `--check` names the file that differs and the step that wrote it.
#[test]
fn check_names_the_file_and_step_of_a_nondeterministic_build() {
    let p = project(
        r#"
  run {
    shell = "cat /proc/sys/kernel/random/uuid > /srv/www/stamp"
  }
"#,
        r#"command = ["/bin/true"]"#,
    );
    let d = tempfile::tempdir().expect("data");
    let digest = |args: &[&str]| -> String {
        let o = rc(p.path(), d.path(), args);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).expect("json");
        v[0]["digest"].as_str().expect("digest").to_string()
    };
    let first = digest(&["build", "--json"]);
    assert_eq!(
        digest(&["build", "--json"]),
        first,
        "the step cache keeps it"
    );
    assert_ne!(
        digest(&["build", "--no-cache", "--json"]),
        first,
        "--no-cache runs the step again"
    );
    let check = rc(p.path(), d.path(), &["build", "--check"]);
    assert!(!check.status.success());
    let err = stderr(&check);
    assert!(
        err.contains("file /srv/www/stamp differs (content)")
            && err.contains("cat /proc/sys/kernel/random/uuid"),
        "{err}"
    );
}

/// `COPY --chown` by names from the image's own /etc/passwd, and `ADD` of a local tar.gz
/// extracting it.
#[test]
fn dockerfile_chown_by_name_and_add_of_an_archive() {
    let dir = tempfile::tempdir().expect("tmp");
    fs::copy("/bin/busybox", dir.path().join("busybox")).expect("busybox");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    {
        let mut b = tar::Builder::new(&mut gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(9);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "docs/readme.txt", &b"extracted"[..])
            .expect("tar");
        b.finish().expect("tar");
    }
    fs::write(dir.path().join("docs.tar.gz"), gz.finish().expect("gz")).expect("write");
    write(
        dir.path(),
        &[
            ("owned.html", "mine"),
            (
                "Dockerfile",
                r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "mkdir -p /usr/bin /sbin /usr/sbin /etc /srv/www && /bin/busybox --install -s"]
RUN echo 'app:x:1234:4321::/home/app:/bin/sh' >> /etc/passwd && echo 'web:x:4321:' >> /etc/group
COPY --chown=app:web owned.html /srv/www/
ADD docs.tar.gz /srv/www/
CMD ["httpd", "-f", "-p", "8080", "-h", "/srv/www"]
"#,
            ),
            (
                "recast.hcl",
                r#"
image "site" {
  dockerfile = "Dockerfile"
  test {
    http {
      path        = "/docs/readme.txt"
      expect_body = "extracted"
    }
    command = ["/bin/sh", "-c", "test \"$(stat -c %u:%g /srv/www/owned.html)\" = 1234:4321"]
  }
}
"#,
            ),
        ],
    );
    let d = tempfile::tempdir().expect("data");
    let o = rc(dir.path(), d.path(), &["test", "--json"]);
    assert!(o.status.success(), "{}{}", stderr(&o), stdout(&o));
}

/// Steps that change nothing make identical (empty) layers: two in a row still build (overlayfs
/// refuses a directory used twice as a lower), and a later step sees the layers below them.
#[test]
fn consecutive_steps_that_change_nothing_build() {
    let p = project(
        r#"
  run {
    shell = "echo page > /srv/www/index.html"
  }
  run {
    shell = "true"
  }
  run {
    shell = "true"
  }
  run {
    shell = "cat /srv/www/index.html > /out/seen"
  }
"#,
        r#"command = ["/bin/sh", "-c", "test \"$(cat /out/seen)\" = page"]"#,
    );
    let d = tempfile::tempdir().expect("data");
    let o = rc(p.path(), d.path(), &["test", "--json"]);
    assert!(o.status.success(), "{}{}", stderr(&o), stdout(&o));
}
