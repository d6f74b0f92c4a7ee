//! A project's `registry` block (issue 15): apply pushes every image it deploys to a real
//! registry (Debian's docker-registry), the release records where, and a server whose store
//! lacks the image pulls it by digest before it starts instances.

use crate::deploy::{Project, Server, body_now, free_port, ok, wait_for};
use crate::images::Registry;
use crate::{stderr, stdout};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Add a `registry` block to the project's spec.
pub(crate) fn with_registry(p: &Project, url: &str) {
    let spec = p.path().join("recast.hcl");
    let mut text = std::fs::read_to_string(&spec).expect("read spec");
    text.push_str(&format!(
        "\nregistry {{\n  url      = \"{url}\"\n  insecure = true\n}}\n"
    ));
    std::fs::write(&spec, text).expect("write spec");
}

/// The releases of `service` as `recast history --json` shows them.
fn releases(server: &Server, p: &Project, service: &str) -> Vec<Value> {
    let h = server.rc(p.path(), &["history", service, "--json"]);
    ok(&h);
    let v: Value = serde_json::from_slice(&h.stdout).expect("history is JSON");
    v["releases"].as_array().expect("releases").clone()
}

/// What skopeo reads at `docker://REF` of a plain-HTTP registry.
fn skopeo_inspect(reference: &str) -> Value {
    let o = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ])
        .output()
        .expect("skopeo is not installed");
    assert!(
        o.status.success(),
        "skopeo inspect {reference}: {}",
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).expect("skopeo prints JSON")
}

/// Kill every instance process of the data directory (as a reboot would).
fn kill_instances(server: &Server) {
    for id in server.instance_ids() {
        let pid = std::fs::read_to_string(server.data.join("instances").join(&id).join("pid"))
            .expect("instance pid");
        let killed = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill");
        assert!(killed.success(), "kill -9 {} ({id})", pid.trim());
    }
}

fn blob(data: &Path, digest: &str) -> std::path::PathBuf {
    data.join("store/blobs/sha256")
        .join(digest.strip_prefix("sha256:").expect("a sha256 digest"))
}

#[test]
fn apply_pushes_to_the_registry_and_a_server_lacking_the_image_pulls_it_by_digest() {
    let reg = Registry::start();
    let mut server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    let url = format!("{}/team", reg.addr);
    with_registry(&p, &url);
    let out = server.rc(p.path(), &["apply", "--yes", "--json"]);
    ok(&out);
    let applied: Value = serde_json::from_slice(&out.stdout).expect("apply prints JSON");
    let log: Vec<&str> = applied["log"]
        .as_array()
        .expect("apply log")
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert!(
        log.iter()
            .any(|l| l.starts_with(&format!("image web is at {url}/web@sha256:"))),
        "{log:#?}"
    );
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");

    // The registry has the image by its digest and by the digest-derived tag.
    let rel = &releases(&server, &p, "web")[0];
    let digest = rel["digest"].as_str().expect("digest").to_string();
    let by_digest = format!("{url}/web@{digest}");
    assert_eq!(skopeo_inspect(&by_digest)["Digest"], digest.as_str());
    let tag = format!("{url}/web:sha256-{}", &digest["sha256:".len()..]);
    assert_eq!(skopeo_inspect(&tag)["Digest"], digest.as_str());
    // The release records where its image can be pulled from.
    let record: Value =
        serde_json::from_str(rel["spec"].as_str().expect("record")).expect("record is JSON");
    assert_eq!(record["registry"]["reference"], by_digest.as_str());
    assert_eq!(record["registry"]["insecure"], true);

    // The machine loses the server, the instances and the whole image store.
    server.kill9();
    kill_instances(&server);
    std::fs::remove_dir_all(server.data.join("store")).expect("remove the store");
    assert!(!blob(&server.data, &digest).exists());

    // A server on it pulls the image by digest and starts the live release again.
    server.spawn();
    wait_for("the live release serving again", 60, || {
        body_now(p.port) == "v1 from hello 0.1.0\n" && server.instances() == 3
    });
    assert!(
        blob(&server.data, &digest).is_file(),
        "the manifest is back in the store"
    );
    let log = std::fs::read_to_string(server.data.join("server-test.log")).expect("server log");
    let pulls = log
        .lines()
        .filter(|l| l.contains("pulled image web:latest"))
        .count();
    assert_eq!(pulls, 1, "three instances, one pull:\n{}", server.logs());
    let listed = server.rc(p.path(), &["image", "ls", "--json"]);
    ok(&listed);
    assert!(
        stdout(&listed).contains(&format!("{url}/web@{digest}")),
        "the pulled image is listed (kept from gc): {}",
        stdout(&listed)
    );
}

#[test]
fn a_registry_that_does_not_answer_fails_the_apply_naming_it() {
    let server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    let url = format!("127.0.0.1:{}/team", free_port());
    with_registry(&p, &url);
    let out = server.rc(p.path(), &["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("pushing image web to registry {url}")),
        "{err}"
    );
    assert_eq!(server.instances(), 0, "nothing rolled out");
    let h = server.rc(p.path(), &["history", "web", "--json"]);
    let v: Value = serde_json::from_slice(&h.stdout).unwrap_or_default();
    assert!(
        v["releases"].as_array().is_none_or(Vec::is_empty),
        "no release recorded: {v}"
    );
}
