//! Bases by tag (issue 11, points 5 and 6): `recast.lock` pins a tag on a real loopback
//! `docker-registry` until `recast lock --update`, `--locked` refuses a missing or stale lock,
//! `base` blocks redirect a tag to a local archive, and credentials from the Docker config file
//! reach only their registry (fake registries written here, one requiring Basic auth).

use crate::images::Registry;
use crate::{stderr, stdout};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Run recast in `cwd` with a data directory and a Docker config directory of its own (never
/// the machine's `~/.docker`).
fn rc(cwd: &Path, data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_recast"));
    c.args(args)
        .current_dir(cwd)
        .env("RECAST_DATA_DIR", data)
        .env("DOCKER_CONFIG", data.join("no-docker-config"))
        .env_remove("RECAST_REGISTRY_USER")
        .env_remove("RECAST_REGISTRY_PASSWORD");
    c.envs(env.iter().copied());
    c.output().expect("run recast")
}

fn ok(o: &Output) -> Value {
    assert!(o.status.success(), "recast failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

fn fails(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "recast should have failed; stdout: {}",
        stdout(o)
    );
    stderr(o)
}

/// A directory with `recast.hcl` = `spec` and a file `app.txt` = `content`.
fn project(spec: &str, content: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("recast.hcl"), spec).expect("write spec");
    std::fs::write(dir.path().join("app.txt"), content).expect("write");
    dir
}

/// An image from scratch whose one file is `/base.txt` = `content`.
fn base_project(content: &str) -> tempfile::TempDir {
    project(
        "image \"base\" {\n  from = \"scratch\"\n  copy {\n    src  = \"app.txt\"\n    dest = \"/base.txt\"\n  }\n  cmd = [\"/bin/true\"]\n}\n",
        content,
    )
}

/// An image `app` on `from`, adding `/app.txt`.
fn app_spec(from: &str) -> String {
    format!(
        "image \"app\" {{\n  from = \"{from}\"\n  copy {{\n    src  = \"app.txt\"\n    dest = \"/app.txt\"\n  }}\n}}\n"
    )
}

/// Build the base image with `content` and push it to `dest`; its digest.
fn push_base(content: &str, dest: &str) -> String {
    let p = base_project(content);
    let d = tempfile::tempdir().expect("tmp");
    ok(&rc(p.path(), d.path(), &["build", "--json"], &[]));
    let pushed = ok(&rc(
        p.path(),
        d.path(),
        &["image", "push", "base", dest, "--json"],
        &[],
    ));
    pushed["digest"].as_str().expect("digest").to_string()
}

fn built_digest(v: &Value) -> String {
    v[0]["digest"].as_str().expect("digest").to_string()
}

fn lock_of(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("recast.lock")).expect("recast.lock");
    serde_json::from_str(&text).expect("recast.lock is JSON")
}

#[test]
fn the_lock_pins_a_tag_until_it_is_updated() {
    let reg = Registry::start();
    let tag = format!("{}/team/base:1", reg.addr);
    let first = push_base("first\n", &tag);

    let p = project(&app_spec(&tag), "app\n");
    let data = tempfile::tempdir().expect("tmp");

    // --locked with no lock: refused, naming the tag and the way out; nothing written.
    let err = fails(&rc(
        p.path(),
        data.path(),
        &["build", "--locked", "--json"],
        &[],
    ));
    assert!(
        err.contains("recast.lock does not exist")
            && err.contains(&tag)
            && err.contains("image app")
            && err.contains("hint: run `recast lock`"),
        "{err}"
    );
    assert!(!p.path().join("recast.lock").exists());

    // The first build resolves the tag and records it, like Cargo.
    let built = built_digest(&ok(&rc(p.path(), data.path(), &["build", "--json"], &[])));
    let text = std::fs::read_to_string(p.path().join("recast.lock")).expect("lock written");
    assert_eq!(
        text,
        format!("{{\n  \"version\": 1,\n  \"bases\": {{\n    \"{tag}\": \"{first}\"\n  }}\n}}\n")
    );
    ok(&rc(
        p.path(),
        data.path(),
        &["build", "--locked", "--json"],
        &[],
    ));

    // The tag moves on in the registry.
    let second = push_base("second\n", &tag);
    assert_ne!(first, second);

    // Builds keep the locked digest: in this data directory, and from nothing in another one
    // (pulled by digest from the registry).
    let again = built_digest(&ok(&rc(p.path(), data.path(), &["build", "--json"], &[])));
    assert_eq!(again, built);
    let fresh = tempfile::tempdir().expect("tmp");
    let elsewhere = built_digest(&ok(&rc(
        p.path(),
        fresh.path(),
        &["build", "--locked", "--json"],
        &[],
    )));
    assert_eq!(
        elsewhere, built,
        "the locked base is the same on any machine"
    );
    assert_eq!(lock_of(p.path())["bases"][&tag], first.as_str());

    // `recast lock` completes; it never moves an entry.
    let l = ok(&rc(p.path(), data.path(), &["lock", "--json"], &[]));
    assert_eq!(
        l["bases"],
        json!([{ "reference": tag, "digest": first, "change": "unchanged" }])
    );
    assert_eq!(lock_of(p.path())["bases"][&tag], first.as_str());

    // Naming tags without --update is a usage error, not a silent no-op.
    let err = fails(&rc(p.path(), data.path(), &["lock", &tag], &[]));
    assert!(err.contains("without --update"), "{err}");

    // A tag the project does not use cannot be updated.
    let err = fails(&rc(
        p.path(),
        data.path(),
        &["lock", "--update", "debian:12"],
        &[],
    ));
    assert!(
        err.contains("does not build on docker.io/library/debian:12") && err.contains(&tag),
        "{err}"
    );

    // --update moves it (named as written, or normalised), and the build follows.
    let l = ok(&rc(
        p.path(),
        data.path(),
        &["lock", "--update", &tag, "--json"],
        &[],
    ));
    assert_eq!(
        l["bases"],
        json!([{ "reference": tag, "digest": second, "change": "updated", "previous": first }])
    );
    assert_eq!(lock_of(p.path())["bases"][&tag], second.as_str());
    let moved = built_digest(&ok(&rc(p.path(), data.path(), &["build", "--json"], &[])));
    assert_ne!(moved, built, "the build follows the updated lock");

    // A second tag makes the lock stale: --locked names it (and only it).
    let tag2 = format!("{}/team/base:2", reg.addr);
    let third = push_base("third\n", &tag2);
    std::fs::write(
        p.path().join("recast.hcl"),
        format!(
            "{}{}",
            app_spec(&tag),
            app_spec(&tag2).replace("image \"app\"", "image \"two\"")
        ),
    )
    .expect("write spec");
    for cmd in ["build", "test", "plan"] {
        let err = fails(&rc(p.path(), data.path(), &[cmd, "--locked"], &[]));
        assert!(
            err.contains("recast.lock is stale")
                && err.contains(&format!("{tag2} (used by image two)"))
                && !err.contains(&format!("{tag} "))
                && err.contains("hint: run `recast lock`"),
            "{cmd}: {err}"
        );
    }
    let l = ok(&rc(p.path(), data.path(), &["lock", "--json"], &[]));
    assert_eq!(
        l["bases"],
        json!([
            { "reference": tag, "digest": second, "change": "unchanged" },
            { "reference": tag2, "digest": third, "change": "added" },
        ])
    );

    // Entries nothing uses any more are dropped by `lock --update`, not by builds.
    std::fs::write(p.path().join("recast.hcl"), app_spec(&tag2)).expect("write spec");
    ok(&rc(
        p.path(),
        data.path(),
        &["build", "--locked", "--json"],
        &[],
    ));
    assert_eq!(
        lock_of(p.path())["bases"].as_object().map(|m| m.len()),
        Some(2)
    );
    let l = ok(&rc(
        p.path(),
        data.path(),
        &["lock", "--update", "--json"],
        &[],
    ));
    assert_eq!(
        l["bases"],
        json!([
            { "reference": tag, "digest": second, "change": "removed" },
            { "reference": tag2, "digest": third, "change": "unchanged" },
        ])
    );
    assert_eq!(lock_of(p.path())["bases"], json!({ tag2.clone(): third }));
}

#[test]
fn a_broken_lock_is_named() {
    let p = project(&app_spec("127.0.0.1:9/team/base:1"), "app\n");
    let data = tempfile::tempdir().expect("tmp");
    std::fs::write(
        p.path().join("recast.lock"),
        "{\"version\": 1, \"bases\": {\"127.0.0.1:9/team/base:1\": \"sha256:12\"}}",
    )
    .expect("write");
    let err = fails(&rc(p.path(), data.path(), &["build"], &[]));
    assert!(
        err.contains("recast.lock is not a valid lock file")
            && err.contains("the digest of \"127.0.0.1:9/team/base:1\"")
            && err.contains("hint:"),
        "{err}"
    );
}

#[test]
fn a_base_block_redirects_a_tag_to_an_archive_offline() {
    let src = base_project("from the archive\n");
    let data = tempfile::tempdir().expect("tmp");
    ok(&rc(src.path(), data.path(), &["build", "--json"], &[]));
    let p = project(
        &format!(
            "base \"docker.io/library/debian:12\" {{\n  source = \"oci-archive:base.tar\"\n}}\n{}",
            app_spec("debian:12")
        ),
        "app\n",
    );
    let archive = p.path().join("base.tar");
    ok(&rc(
        src.path(),
        data.path(),
        &[
            "image",
            "export",
            "base",
            "-o",
            archive.to_str().expect("utf8"),
            "--format",
            "oci",
            "--json",
        ],
        &[],
    ));
    // No registry, no lock: the tag never reaches the network, so --locked has nothing to pin.
    let redirected = built_digest(&ok(&rc(
        p.path(),
        data.path(),
        &["build", "--locked", "--json"],
        &[],
    )));
    assert!(!p.path().join("recast.lock").exists(), "nothing to lock");
    let l = ok(&rc(p.path(), data.path(), &["lock", "--json"], &[]));
    assert_eq!(l["bases"], json!([]));

    // The same as naming the archive directly.
    let direct = project(&app_spec("oci-archive:base.tar"), "app\n");
    std::fs::copy(&archive, direct.path().join("base.tar")).expect("copy");
    let d2 = tempfile::tempdir().expect("tmp");
    let plain = built_digest(&ok(&rc(
        direct.path(),
        d2.path(),
        &["build", "--json"],
        &[],
    )));
    assert_eq!(redirected, plain);

    // A base block for a tag nobody uses is fine; a broken one is a located spec error.
    std::fs::write(
        p.path().join("zz.hcl"),
        "base \"alpine:3\" {\n  source = \"scratch\"\n}\nbase \"debian:12\" {\n  source = \"oci-archive:missing.tar\"\n}\n",
    )
    .expect("write");
    let err = fails(&rc(p.path(), data.path(), &["validate", "-f", "."], &[]));
    assert!(
        err.contains("zz.hcl:4:6: error: duplicate base \"debian:12\"")
            && err
                .contains("zz.hcl:5:12: error: base image archive \"missing.tar\" does not exist"),
        "{err}"
    );
}

// ---- a fake registry that wants Basic auth ---------------------------------------------------------

fn sha(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A one-layer image: manifest bytes and blobs by digest.
fn image(file: &str) -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(file.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, "base.txt", file.as_bytes())
        .expect("tar");
    let layer = b.into_inner().expect("tar");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": [sha(&layer)] },
    }))
    .expect("json");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(&layer), "size": layer.len() }],
    }))
    .expect("json");
    let mut blobs = BTreeMap::new();
    blobs.insert(sha(&config), config);
    blobs.insert(sha(&layer), layer);
    (manifest, blobs)
}

/// A request line and headers (names lowercase) as the fake registry saw them.
type Seen = Arc<Mutex<Vec<(String, BTreeMap<String, String>)>>>;

/// A registry on `ip` serving `image` for any repository and tag; when `basic` is set, every
/// request without exactly that `Authorization` gets a Basic challenge.
fn fake_registry(ip: &str, file: &str, basic: Option<String>) -> (String, Seen) {
    let (manifest, blobs) = image(file);
    let listener = TcpListener::bind((ip, 0)).expect("bind loopback");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (m, b, basic, log) = (
                manifest.clone(),
                blobs.clone(),
                basic.clone(),
                Arc::clone(&log),
            );
            std::thread::spawn(move || answer(conn, &m, &b, basic.as_deref(), &log));
        }
    });
    (addr, seen)
}

fn answer(
    conn: TcpStream,
    manifest: &[u8],
    blobs: &BTreeMap<String, Vec<u8>>,
    basic: Option<&str>,
    log: &Mutex<Vec<(String, BTreeMap<String, String>)>>,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut r = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    log.lock()
        .expect("log")
        .push((line.trim().to_string(), headers.clone()));
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let (status, extra, body): (&str, Vec<String>, Vec<u8>) =
        if basic.is_some() && headers.get("authorization").map(String::as_str) != basic {
            (
                "401 Unauthorized",
                vec!["WWW-Authenticate: Basic realm=\"fake\"".into()],
                Vec::new(),
            )
        } else if path.contains("/manifests/") {
            (
                "200 OK",
                vec![
                    "Content-Type: application/vnd.oci.image.manifest.v1+json".into(),
                    format!("Docker-Content-Digest: {}", sha(manifest)),
                ],
                manifest.to_vec(),
            )
        } else if let Some(b) = path.split_once("/blobs/").and_then(|(_, d)| blobs.get(d)) {
            ("200 OK", Vec::new(), b.clone())
        } else {
            ("404 Not Found", Vec::new(), b"{}".to_vec())
        };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in extra {
        head.push_str(&h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut w = conn;
    let _ = w.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = w.write_all(&body);
    }
}

#[test]
fn docker_config_credentials_reach_only_their_registry() {
    let basic = "Basic YWxpY2U6czNjcmV0"; // alice:s3cret
    let (private, private_seen) = fake_registry("127.0.0.1", "private\n", Some(basic.into()));
    let (public, public_seen) = fake_registry("127.0.0.2", "public\n", None);
    let p = project(
        &format!(
            "{}{}",
            app_spec(&format!("{private}/team/app:v1")),
            app_spec(&format!("{public}/team/other:v1"))
                .replace("image \"app\"", "image \"other\"")
        ),
        "app\n",
    );
    let data = tempfile::tempdir().expect("tmp");
    let config_dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        config_dir.path().join("config.json"),
        json!({
            "auths": {
                private.clone(): { "auth": "YWxpY2U6czNjcmV0" },
                "https://index.docker.io/v1/": { "auth": "aHViOmh1YnBhc3M=" },
            }
        })
        .to_string(),
    )
    .expect("write docker config");
    let docker_config = config_dir.path().to_str().expect("utf8");

    // Without the config: the registry's challenge cannot be answered, and the error says how.
    let err = fails(&rc(p.path(), data.path(), &["lock"], &[]));
    assert!(
        err.contains(&format!(
            "registry {private} wants a user name and password"
        )) && err.contains("docker login"),
        "{err}"
    );

    // RECAST_REGISTRY_USER/PASSWORD win over the config file.
    let err = fails(&rc(
        p.path(),
        data.path(),
        &["lock"],
        &[
            ("DOCKER_CONFIG", docker_config),
            ("RECAST_REGISTRY_USER", "mallory"),
            ("RECAST_REGISTRY_PASSWORD", "guess"),
        ],
    ));
    assert!(err.contains("401"), "{err}");
    let (_, wrong) = private_seen
        .lock()
        .expect("log")
        .iter()
        .rev()
        .find(|(_, h)| h.contains_key("authorization"))
        .cloned()
        .expect("credentials were sent");
    assert_eq!(wrong["authorization"], "Basic bWFsbG9yeTpndWVzcw==");

    // With the config: lock and build work; only the private registry ever saw credentials.
    let l = ok(&rc(
        p.path(),
        data.path(),
        &["lock", "--json"],
        &[("DOCKER_CONFIG", docker_config)],
    ));
    assert_eq!(l["bases"].as_array().map(Vec::len), Some(2), "{l}");
    ok(&rc(
        p.path(),
        data.path(),
        &["build", "--locked", "--json"],
        &[("DOCKER_CONFIG", docker_config)],
    ));
    let private_reqs = private_seen.lock().expect("log").clone();
    assert!(
        private_reqs.iter().any(|(l, h)| l.starts_with("GET ")
            && l.contains("/blobs/")
            && h.get("authorization").map(String::as_str) == Some(basic)),
        "the private registry's blobs were not fetched with the config's credentials: {private_reqs:?}"
    );
    let public_reqs = public_seen.lock().expect("log").clone();
    assert!(
        public_reqs.iter().any(|(l, _)| l.contains("/blobs/")),
        "{public_reqs:?}"
    );
    for (l, h) in &public_reqs {
        assert!(
            !h.contains_key("authorization"),
            "{l} to another registry carried credentials: {h:?}"
        );
    }
}

/// A build pulling a base shows a byte bar naming it on a terminal (script(1) gives the build
/// one), and nothing of it when piped.
#[test]
fn a_base_pull_shows_a_byte_bar_on_a_terminal_only() {
    let reg = Registry::start();
    let tag = format!("{}/team/base:1", reg.addr);
    push_base("bar\n", &tag);
    let p = project(&app_spec(&tag), "app\n");

    let data = tempfile::tempdir().expect("tmp");
    let piped = rc(p.path(), data.path(), &["build"], &[]);
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert!(
        !stderr(&piped).contains("pulling"),
        "a bar in a pipe: {}",
        stderr(&piped)
    );

    // A fresh store pulls the base again, now on a terminal.
    let data = tempfile::tempdir().expect("tmp");
    let build = format!("{} build", env!("CARGO_BIN_EXE_recast"));
    let o = Command::new("script")
        .args(["-qec", &build, "/dev/null"])
        .current_dir(p.path())
        .env("RECAST_DATA_DIR", data.path())
        .env("DOCKER_CONFIG", data.path().join("no-docker-config"))
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .output()
        .expect("run script");
    let shown = stdout(&o);
    assert!(o.status.success(), "the build failed: {shown}");
    assert!(
        shown.contains(&format!("pulling {tag}")),
        "no bar for the pull on a terminal: {shown:?}"
    );
}
