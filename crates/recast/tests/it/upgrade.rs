//! State written by the previous recast is served by this one (issue 14): a data directory
//! recorded by commit 19c19f7 (`tests/fixtures/prev-state`, see its README) is taken over as it
//! is — its live releases serve, its history reads — and applying the same spec changes nothing.

use crate::deploy::{Server, get, ok};
use crate::{example, stdout};
use sha2::{Digest, Sha256};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The image every recorded release runs, as the previous recast built it.
const RECORDED_DIGEST: &str =
    "sha256:2903ec29598e2c4020ccd2958f9ca483f2927c18afbd81a90df8d45d6045c209";
/// The `examples/hello/dist/hello` that image was built from.
const RECORDED_HELLO_SHA256: &str =
    "d8d21272f17a0e75a26dfb03ded46892f3277731c01652732720470cf17810be";
/// The routes the recorded state declares.
const WEB: u16 = 28471;
const API: u16 = 28472;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prev-state")
}

/// Wait until `f` holds, for at most `secs`; on timeout, fail with what `f` saw last.
fn until(what: &str, secs: u64, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {secs}s waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn json(out: &std::process::Output, what: &str) -> serde_json::Value {
    ok(out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", stdout(out)))
}

/// One GET / on a route: (status, body), or what went wrong.
fn answer(port: u16) -> Result<(u16, String), String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    let (status, body, _) = get(s).map_err(|e| format!("GET /: {e}"))?;
    Ok((status, body))
}

/// The recorded data directory (private, as recast keeps it) and a copy of the spec it was
/// applied from, with the example binary the spec copies.
fn recorded() -> (tempfile::TempDir, tempfile::TempDir) {
    let hello = example().join("dist/hello");
    let bytes = std::fs::read(&hello)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-hello)", hello.display()));
    let sha = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    assert_eq!(
        sha,
        RECORDED_HELLO_SHA256,
        "{} is not the binary the fixture {} was recorded with (another toolchain, or examples/hello \
         changed), so its image cannot come out as the recorded {RECORDED_DIGEST}: re-record the \
         fixture as its README.md says",
        hello.display(),
        fixture().display()
    );

    let data = tempfile::Builder::new()
        .prefix("prev-state")
        .tempdir()
        .expect("tmp");
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::copy(fixture().join("state.db"), data.path().join("state.db")).expect("copy state");
    std::fs::set_permissions(
        data.path().join("state.db"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod state");

    let spec = tempfile::Builder::new()
        .prefix("upgrade")
        .tempdir()
        .expect("tmp");
    std::fs::create_dir(spec.path().join("dist")).expect("mkdir dist");
    std::fs::copy(
        fixture().join("spec/recast.hcl"),
        spec.path().join("recast.hcl"),
    )
    .expect("copy spec");
    std::fs::copy(&hello, spec.path().join("dist/hello")).expect("copy hello");
    (data, spec)
}

#[test]
fn state_recorded_by_the_previous_recast_is_served_as_it_is() {
    for port in [WEB, API] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "127.0.0.1:{port}, a route of the recorded state, is taken by another process"
        );
    }
    let (data, spec) = recorded();

    // The images, built by this recast into the recorded directory's store, are the ones the
    // previous recast recorded: builds are reproducible across versions.
    let build = std::process::Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(["build", "--json"])
        .current_dir(spec.path())
        .env("RECAST_DATA_DIR", data.path())
        .output()
        .expect("recast build");
    let built = json(&build, "recast build --json");
    assert_eq!(
        built[0]["digest"], RECORDED_DIGEST,
        "image hello built by this recast differs from the one the previous recast recorded: {built}"
    );

    // No apply: the server serves what the previous recast left live, release 2 of both.
    let server = Server::start_in(data);
    until("the recorded routes to serve release 2", 60, || {
        let seen = (answer(WEB), answer(API));
        let want = (
            Ok((200, "web v2 from hello 0.1.0\n".to_string())),
            Ok((200, "api v2 from hello 0.1.0\n".to_string())),
        );
        if seen == want {
            Ok(())
        } else {
            Err(format!("web {:?}, api {:?}", seen.0, seen.1))
        }
    });

    for service in ["web", "api"] {
        let h = json(
            &server.rc(spec.path(), &["history", service, "--json"]),
            "recast history --json",
        );
        let releases = h["releases"].as_array().expect("releases");
        let seen: Vec<(i64, &str, &str)> = releases
            .iter()
            .map(|r| {
                (
                    r["number"].as_i64().unwrap_or(0),
                    r["outcome"].as_str().unwrap_or(""),
                    r["digest"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (1, "succeeded", RECORDED_DIGEST),
                (2, "succeeded", RECORDED_DIGEST)
            ],
            "history of {service}: {h}"
        );
        let text = server.rc(spec.path(), &["history", service]);
        ok(&text);
        let lines: Vec<String> = stdout(&text)
            .lines()
            .filter(|l| l.contains("succeeded"))
            .map(str::to_string)
            .collect();
        assert!(
            lines.len() == 2 && lines[0].starts_with('1') && lines[1].starts_with('2'),
            "recast history {service}:\n{}",
            stdout(&text)
        );
    }

    let want = [("api", 1usize), ("web", 2usize)];
    let mut status = serde_json::Value::Null;
    until("every recorded instance healthy at release 2", 60, || {
        status = json(
            &server.rc(spec.path(), &["status", "--json"]),
            "recast status --json",
        );
        let mut seen: Vec<(String, i64, usize)> = status["services"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        let healthy = s["instances"].as_array().map_or(0, |i| {
                            i.iter()
                                .filter(|i| i["release"] == 2 && i["healthy"] == true)
                                .count()
                        });
                        (
                            s["service"].as_str().unwrap_or("").to_string(),
                            s["current_release"].as_i64().unwrap_or(0),
                            healthy,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        seen.sort();
        if seen == want.map(|(s, n)| (s.to_string(), 2, n)) {
            Ok(())
        } else {
            Err(status.to_string())
        }
    });
    for s in status["services"].as_array().expect("services") {
        assert_eq!(s["project"], "upgrade", "{s}");
        assert_eq!(s["digest"], RECORDED_DIGEST, "{s}");
    }
    let mut routes: Vec<(String, String)> = status["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| {
            (
                r["route"].as_str().unwrap_or("").to_string(),
                r["listen"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            ("api".to_string(), format!("127.0.0.1:{API}")),
            ("web".to_string(), format!("127.0.0.1:{WEB}")),
        ],
        "{status}"
    );

    // The same spec, applied by this recast: the schema-1 records hash as today's model does,
    // so nothing changes and no release is added.
    let plan = json(
        &server.rc(spec.path(), &["plan", "--json"]),
        "recast plan --json",
    );
    let actions: Vec<(&str, &str)> = plan["services"]
        .as_array()
        .expect("plan services")
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap_or(""),
                s["action"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        actions.len() == 2 && actions.iter().all(|(_, a)| *a == "unchanged"),
        "recast plan: {plan}"
    );
    let apply = json(
        &server.rc(spec.path(), &["apply", "--yes", "--json"]),
        "recast apply --yes --json",
    );
    assert_eq!(apply["state"], "succeeded", "{apply}");
    let mut outcomes: Vec<(String, String, i64)> = apply["services"]
        .as_array()
        .expect("apply services")
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap_or("").to_string(),
                s["outcome"].as_str().unwrap_or("").to_string(),
                s["release"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            ("api".to_string(), "unchanged".to_string(), 2),
            ("web".to_string(), "unchanged".to_string(), 2),
        ],
        "recast apply: {apply}"
    );
    for service in ["web", "api"] {
        let h = json(
            &server.rc(spec.path(), &["history", service, "--json"]),
            "recast history --json",
        );
        assert_eq!(
            h["releases"].as_array().map(Vec::len),
            Some(2),
            "apply added a release to {service}: {h}"
        );
    }
    assert_eq!(
        answer(WEB),
        Ok((200, "web v2 from hello 0.1.0\n".to_string()))
    );
    assert_eq!(
        answer(API),
        Ok((200, "api v2 from hello 0.1.0\n".to_string()))
    );
    drop(server);
    drop(spec);
}
