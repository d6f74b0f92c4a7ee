//! Malicious images, crafted here, imported, pulled from a real loopback registry, used as a
//! base, run and tested through the real binary: each is refused with an error naming the entry
//! or neutralised (it runs, confined to its root) — and no byte outside the image root changes.
//! A canary directory on the host is what an escape would hit (issue 10, finding 1).

#[path = "../../../recast-root/tests/support/rawtar.rs"]
mod rawtar;

use crate::images::Registry;
use crate::{example, stderr, stdout};
use rawtar::{E, layer};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rc(cwd: &Path, data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(args)
        .current_dir(cwd)
        .env("RECAST_DATA_DIR", data)
        .output()
        .expect("run recast")
}

fn sha(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// An OCI archive (a tar of an image layout) whose image has `layers` (uncompressed), runs
/// `/bin/hello` as nobody, and is tagged `evil`.
fn oci_archive(to: &Path, layers: &[Vec<u8>]) {
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/hello"], "User": "65534:65534"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(&config), "size": config.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": sha(l), "size": l.len()})).collect::<Vec<_>>(),
    }))
    .expect("manifest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": sha(&manifest), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "evil"}}],
    }))
    .expect("index");
    blobs.extend(layers.iter().cloned());
    blobs.push(config);
    blobs.push(manifest);
    let mut b = tar::Builder::new(fs::File::create(to).expect("archive"));
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data).expect("append");
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for blob in &blobs {
        add(&format!("blobs/sha256/{}", &sha(blob)[7..]), blob);
    }
    b.finish().expect("finish");
}

/// Everything under `dir`, not following links: path → mode, links and content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let what = if m.is_dir() {
                stack.push(p.clone());
                String::new()
            } else {
                String::from_utf8_lossy(&fs::read(&p).expect("read")).into_owned()
            };
            out.insert(p, format!("{:o} {} {what}", m.mode(), m.nlink()));
        }
    }
    out
}

/// A spec using `from` as the base of an image with a test block that must pass to run.
fn spec(dir: &Path, from: &str) {
    fs::write(
        dir.join("recast.hcl"),
        format!(
            r#"
image "app" {{
  from = "{from}"
  test {{
    http {{
      path          = "/healthz"
      expect_status = 200
    }}
    timeout = "10s"
  }}
}}
"#
        ),
    )
    .expect("spec");
}

struct Case {
    what: &'static str,
    evil: Vec<E>,
    /// Refused with an error containing this; `None`: neutralised, the image runs.
    refused: Option<&'static str>,
}

fn cases(canary: &str) -> Vec<Case> {
    let up = format!("../../../../../../..{canary}");
    vec![
        Case {
            what: "absolute whiteout",
            evil: vec![E::File(format!("{canary}/.wh.file"), "")],
            refused: None,
        },
        Case {
            what: "`..` whiteout",
            evil: vec![E::File(format!("{up}/.wh.file"), "")],
            refused: Some("contains `..`"),
        },
        Case {
            what: "whiteout through a symlink to the host",
            evil: vec![
                E::Sym("y".into(), canary.into()),
                E::File("y/.wh.file".into(), ""),
                E::File("y/.wh.dir".into(), ""),
            ],
            refused: None,
        },
        Case {
            what: "opaque directory through a symlink to the host",
            evil: vec![
                E::Sym("o".into(), up.clone()),
                E::File("o/.wh..wh..opq".into(), ""),
            ],
            refused: None,
        },
        Case {
            what: "opaque whiteout at /",
            evil: vec![E::File(".wh..wh..opq".into(), "")],
            refused: None,
        },
        Case {
            what: "`..` entry",
            evil: vec![E::File(format!("{up}/planted"), "x")],
            refused: Some("contains `..`"),
        },
        Case {
            what: "hard link to a host file",
            evil: vec![E::Hard("h".into(), format!("{canary}/file"))],
            refused: Some("hard link target"),
        },
        Case {
            what: "symlinked /etc/passwd",
            evil: vec![
                E::Dir("etc".into()),
                E::Sym("etc/passwd".into(), format!("{canary}/passwd")),
            ],
            refused: None,
        },
        Case {
            what: "device outside /dev",
            evil: vec![E::Dev("kmem".into())],
            refused: Some("device files are only allowed under /dev"),
        },
        Case {
            what: "setuid file and a device under /dev",
            evil: vec![E::Setuid("bin/su".into()), E::Dev("dev/mem".into())],
            refused: None,
        },
    ]
}

fn canary() -> (tempfile::TempDir, String) {
    let c = tempfile::tempdir().expect("canary");
    fs::create_dir(c.path().join("dir")).expect("mkdir");
    fs::write(c.path().join("file"), "precious").expect("write");
    fs::write(c.path().join("dir/file"), "precious too").expect("write");
    fs::write(
        c.path().join("passwd"),
        "root:x:0:0:LEAKED:/leaked-home:/bin/sh\nnobody:x:65534:65534::/leaked-home:/bin/sh\n",
    )
    .expect("write");
    let path = c.path().display().to_string();
    (c, path)
}

fn hello_layer() -> Vec<u8> {
    let bin = fs::read(example().join("dist/hello")).expect("built by scripts/build-hello");
    layer(&[E::Dir("bin".into()), E::Exec("bin/hello".into(), bin)])
}

/// Import, build on and test each crafted image; the canary never changes.
#[test]
fn crafted_archives_are_refused_or_confined() {
    let (c, canary_path) = canary();
    let before = snapshot(c.path());
    let hello = hello_layer();
    for case in cases(&canary_path) {
        let work = tempfile::tempdir().expect("work");
        let data = tempfile::tempdir().expect("data");
        let archive = work.path().join("evil.tar");
        oci_archive(&archive, &[layer(&case.evil), hello.clone()]);

        // `image import`, then a build on it as `from`, then its test in a throwaway instance.
        let imported = rc(work.path(), data.path(), &["image", "import", "evil.tar"]);
        spec(work.path(), "oci-archive:evil.tar");
        let tested = rc(work.path(), data.path(), &["test", "--json"]);
        let said = format!(
            "{}{}{}",
            stderr(&imported),
            stderr(&tested),
            stdout(&tested)
        );
        match case.refused {
            Some(why) => {
                assert!(!tested.status.success(), "{}: ran: {said}", case.what);
                assert!(
                    said.contains(why) && said.contains("entry"),
                    "{}: the error names the entry and why ({why}): {said}",
                    case.what
                );
            }
            None => assert!(
                tested.status.success(),
                "{}: a neutralised image still runs: {said}",
                case.what
            ),
        }
        assert_eq!(
            snapshot(c.path()),
            before,
            "{}: the host changed",
            case.what
        );
        assert!(
            !said.contains("LEAKED") && !said.contains("leaked-home"),
            "{}: a host file leaked: {said}",
            case.what
        );
    }
}

/// The same through a real registry: pushed by skopeo, pulled by recast, used by digest.
#[test]
fn crafted_images_from_a_registry_are_refused_or_confined() {
    let reg = Registry::start();
    let (c, canary_path) = canary();
    let before = snapshot(c.path());
    let hello = hello_layer();
    for case in cases(&canary_path)
        .into_iter()
        .filter(|c| c.what.contains("symlink to the host") || c.what.contains("`..` whiteout"))
    {
        let work = tempfile::tempdir().expect("work");
        let data = tempfile::tempdir().expect("data");
        let archive = work.path().join("evil.tar");
        oci_archive(&archive, &[layer(&case.evil), hello.clone()]);
        let dest = format!("{}/evil/image:1", reg.addr);
        let pushed = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}:evil", archive.display()))
            .arg(format!("docker://{dest}"))
            .output()
            .expect("skopeo");
        assert!(pushed.status.success(), "skopeo: {}", stderr(&pushed));
        let pulled = rc(
            work.path(),
            data.path(),
            &["image", "pull", &dest, "--json"],
        );
        let said = format!("{}{}", stderr(&pulled), stdout(&pulled));
        if let Some(why) = case.refused
            && !pulled.status.success()
        {
            assert!(said.contains(why), "{}: {said}", case.what);
            continue;
        }
        assert!(pulled.status.success(), "{}: pull: {said}", case.what);
        let v: Value = serde_json::from_slice(&pulled.stdout).expect("json");
        let digest = v["digest"].as_str().expect("digest");
        spec(work.path(), &format!("{}/evil/image@{digest}", reg.addr));
        let tested = rc(work.path(), data.path(), &["test", "--json"]);
        let said = format!("{}{}", stderr(&tested), stdout(&tested));
        assert_eq!(
            tested.status.success(),
            case.refused.is_none(),
            "{}: {said}",
            case.what
        );
        assert_eq!(
            snapshot(c.path()),
            before,
            "{}: the host changed",
            case.what
        );
    }
}
