//! `recast build` and `recast image …` against real tools: skopeo, umoci, podman, and a real
//! registry (issue 3).

use crate::{example, stderr, stdout};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run recast with a data directory.
fn rc(cwd: &Path, data: &Path, args: &[&str]) -> Output {
    rc_env(cwd, data, args, &[])
}

fn rc_env(cwd: &Path, data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(args)
        .current_dir(cwd)
        .env("RECAST_DATA_DIR", data)
        .envs(env.iter().copied())
        .output()
        .expect("run recast")
}

fn ok(o: &Output) -> Value {
    assert!(o.status.success(), "recast failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

fn tool(cmd: &str, args: &[&str]) -> Output {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is not installed: {e}"));
    assert!(o.status.success(), "{cmd} {args:?} failed: {}", stderr(&o));
    o
}

/// A copy of the example project (spec + binary) plus a directory of varied files, so tests
/// can change mtimes and permissions without touching the repository.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    let ex = example();
    std::fs::create_dir_all(dir.path().join("dist")).expect("mkdir");
    std::fs::copy(ex.join("dist/hello"), dir.path().join("dist/hello"))
        .expect("copy the example binary (run scripts/build-hello)");
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("css/deep")).expect("mkdir");
    for (p, body) in [
        ("index.html", "<h1>hi</h1>"),
        ("css/a.css", "a{}"),
        ("css/deep/b.css", "b{}"),
        ("z.txt", "z"),
    ] {
        std::fs::write(site.join(p), body).expect("write");
    }
    std::os::unix::fs::symlink("index.html", site.join("home.html")).expect("symlink");
    std::fs::write(
        dir.path().join("recast.hcl"),
        r#"
image "hello" {
  from = "scratch"
  copy {
    src  = "dist/hello"
    dest = "/bin/hello"
    mode = "0555"
  }
  copy {
    src   = "site"
    dest  = "/srv/site"
    owner = "1000:1000"
  }
  env = { GREETING = "hello" }
  cmd = ["/bin/hello"]
}
"#,
    )
    .expect("write spec");
    dir
}

/// `recast image export hello -o TO --format FORMAT --json`, which must succeed.
fn export(cwd: &Path, data: &Path, to: &Path, format: &str) -> Value {
    ok(&rc(
        cwd,
        data,
        &[
            "image",
            "export",
            "hello",
            "-o",
            to.to_str().expect("utf8"),
            "--format",
            format,
            "--json",
        ],
    ))
}

fn digest_of(v: &Value) -> String {
    v[0]["digest"].as_str().expect("digest").to_string()
}

#[test]
fn digests_do_not_depend_on_mtimes_umask_data_dir_or_listing_order() {
    let p = project();
    let (d1, d2) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let first = ok(&rc(p.path(), d1.path(), &["build", "--json"]));
    assert_eq!(first[0]["cached"], false);
    assert_eq!(first[0]["image"], "hello");

    // Change every source mtime and the permission bits the umask would have set, and re-create
    // a directory so it lists in a different order.
    let site = p.path().join("site");
    for f in ["index.html", "css/a.css", "z.txt"] {
        let file = std::fs::File::options()
            .append(true)
            .open(site.join(f))
            .expect("open");
        file.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_234_567))
            .expect("mtime");
        std::fs::set_permissions(site.join(f), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
    std::fs::rename(site.join("css"), p.path().join("css-moved")).expect("mv");
    std::fs::create_dir(site.join("css")).expect("mkdir");
    std::fs::set_permissions(site.join("css"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    std::fs::rename(p.path().join("css-moved/deep"), site.join("css/deep")).expect("mv");
    std::fs::rename(p.path().join("css-moved/a.css"), site.join("css/a.css")).expect("mv");

    let second = ok(&rc(p.path(), d2.path(), &["build", "--json"]));
    assert_eq!(
        digest_of(&first),
        digest_of(&second),
        "same inputs, different digest"
    );
    let check = rc(p.path(), d2.path(), &["build", "--check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stderr(&check).contains("reproducible: 1 image(s)"),
        "{}",
        stderr(&check)
    );
}

#[test]
fn a_noop_rebuild_reuses_everything() {
    let p = project();
    let d = tempfile::tempdir().expect("tmp");
    let first = ok(&rc(p.path(), d.path(), &["build", "--json"]));
    let blobs = |d: &Path| -> Vec<(PathBuf, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(d.join("store/blobs/sha256"))
            .expect("blobs")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.path(),
                    e.metadata().and_then(|m| m.modified()).expect("mtime"),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = blobs(d.path());
    // Touch a source file: its content is hashed again, but no layer is re-tarred.
    let f = std::fs::File::options()
        .append(true)
        .open(p.path().join("site/z.txt"))
        .expect("open");
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .expect("mtime");
    let second = ok(&rc(p.path(), d.path(), &["build", "--json"]));
    assert_eq!(second[0]["cached"], true);
    assert_eq!(digest_of(&first), digest_of(&second));
    assert_eq!(
        before,
        blobs(d.path()),
        "a rebuild of unchanged content wrote blobs"
    );
    // A real change makes a new image.
    std::fs::write(p.path().join("site/z.txt"), "changed").expect("write");
    let third = ok(&rc(p.path(), d.path(), &["build", "--json"]));
    assert_eq!(third[0]["cached"], false);
    assert_ne!(digest_of(&first), digest_of(&third));
}

#[test]
fn check_fails_on_a_builder_that_varies() {
    let p = project();
    let d = tempfile::tempdir().expect("tmp");
    let out = rc_env(
        p.path(),
        d.path(),
        &["build", "--check"],
        &[("RECAST_TEST_VARY_BUILD", "1")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("error: image hello is not reproducible"),
        "{err}"
    );
    assert!(
        err.contains("first difference: config field created differs"),
        "{err}"
    );
}

#[test]
fn source_date_epoch_sets_times() {
    let p = project();
    let d = tempfile::tempdir().expect("tmp");
    ok(&rc_env(
        p.path(),
        d.path(),
        &["build", "--json"],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    ));
    let v = ok(&rc(
        p.path(),
        d.path(),
        &["image", "inspect", "hello", "--json"],
    ));
    assert_eq!(v["config"]["created"], "2023-11-14T22:13:20Z");
    assert_eq!(v["files"], 11, "{v}");
}

#[test]
fn skopeo_umoci_and_podman_read_what_recast_writes() {
    let p = project();
    let d = tempfile::tempdir().expect("tmp");
    let built = ok(&rc(p.path(), d.path(), &["build", "--json"]));
    let digest = digest_of(&built);

    // The store itself is an OCI layout.
    let store = d.path().join("store");
    let o = tool(
        "skopeo",
        &["inspect", &format!("oci:{}:hello:latest", store.display())],
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["Digest"], digest.as_str());

    // umoci unpacks it and the files match the sources, with their modes and owners.
    let unpacked = d.path().join("unpacked");
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:hello:latest", store.display()),
            unpacked.to_str().expect("utf8"),
        ],
    );
    let rootfs = unpacked.join("rootfs");
    assert_eq!(
        std::fs::read(rootfs.join("bin/hello")).expect("read"),
        std::fs::read(p.path().join("dist/hello")).expect("read")
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("srv/site/css/deep/b.css")).expect("read"),
        "b{}"
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("srv/site/home.html")).expect("link"),
        Path::new("index.html")
    );
    let mode = std::fs::metadata(rootfs.join("bin/hello"))
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o555);

    // An exported OCI archive: skopeo inspects it and copies it to a directory.
    let archive = d.path().join("hello.tar");
    let e = export(p.path(), d.path(), &archive, "oci");
    assert_eq!(e["digest"], digest.as_str());
    let o = tool(
        "skopeo",
        &["inspect", &format!("oci-archive:{}", archive.display())],
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["Digest"], digest.as_str());
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci-archive:{}", archive.display()),
            &format!("dir:{}", d.path().join("dir").display()),
        ],
    );

    // A docker archive: skopeo reads it, and podman loads both kinds.
    let docker = d.path().join("hello-docker.tar");
    export(p.path(), d.path(), &docker, "docker");
    tool(
        "skopeo",
        &["inspect", &format!("docker-archive:{}", docker.display())],
    );
    let podman = |archive: &Path| {
        let root = d.path().join("podman");
        tool(
            "podman",
            &[
                "--root",
                root.join("root").to_str().expect("utf8"),
                "--runroot",
                root.join("run").to_str().expect("utf8"),
                "--storage-driver",
                "vfs",
                "load",
                "-i",
                archive.to_str().expect("utf8"),
            ],
        )
    };
    assert!(stdout(&podman(&docker)).contains("Loaded image"));
    assert!(stdout(&podman(&archive)).contains("Loaded image"));

    // And recast imports both back, with the same digest for the OCI archive.
    let d2 = tempfile::tempdir().expect("tmp");
    let added = ok(&rc(
        p.path(),
        d2.path(),
        &["image", "import", archive.to_str().expect("utf8"), "--json"],
    ));
    assert_eq!(added[0]["digest"], digest.as_str());
    assert_eq!(added[0]["name"], "hello:latest");
    let added = ok(&rc(
        p.path(),
        d2.path(),
        &["image", "import", docker.to_str().expect("utf8"), "--json"],
    ));
    assert_eq!(added[0]["name"], "hello:latest");
}

#[test]
fn builds_on_local_bases() {
    let p = project();
    let d = tempfile::tempdir().expect("tmp");
    ok(&rc(p.path(), d.path(), &["build", "--json"]));
    let base = p.path().join("base.tar");
    export(p.path(), d.path(), &base, "oci");
    let docker = p.path().join("base-docker.tar");
    export(p.path(), d.path(), &docker, "docker");
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci-archive:{}", base.display()),
            &format!("oci:{}:v1", p.path().join("layout").display()),
        ],
    );
    std::fs::write(p.path().join("extra.txt"), "extra").expect("write");
    std::fs::write(
        p.path().join("recast.hcl"),
        r#"
image "a" {
  from = "oci-archive:base.tar"
  copy {
    src  = "extra.txt"
    dest = "/etc/extra.txt"
  }
  env = { GREETING = "hi", MORE = "1" }
}
image "b" {
  from = "oci:layout:v1"
  copy {
    src  = "extra.txt"
    dest = "/etc/extra.txt"
  }
}
image "c" {
  from = "docker-archive:base-docker.tar"
  cmd  = ["/bin/hello", "--self-check"]
}
"#,
    )
    .expect("spec");
    let built = ok(&rc(p.path(), d.path(), &["build", "--json"]));
    assert_eq!(built.as_array().map(Vec::len), Some(3));
    let a = ok(&rc(
        p.path(),
        d.path(),
        &["image", "inspect", "a", "--json"],
    ));
    assert_eq!(a["manifest"]["layers"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        a["config"]["config"]["Env"],
        serde_json::json!(["GREETING=hi", "MORE=1"])
    );
    assert_eq!(
        a["config"]["config"]["Cmd"],
        serde_json::json!(["/bin/hello"]),
        "inherited from the base"
    );
    assert_eq!(a["files"], 13, "base files plus /etc and /etc/extra.txt");
    // b sits on the same files (recompressed by skopeo) and adds the same layer as a: one blob.
    let b = ok(&rc(
        p.path(),
        d.path(),
        &["image", "inspect", "b", "--json"],
    ));
    assert_eq!(a["manifest"]["layers"][2], b["manifest"]["layers"][2]);
    assert_eq!(a["files"], b["files"]);
    let c = ok(&rc(
        p.path(),
        d.path(),
        &["image", "inspect", "c", "--json"],
    ));
    assert_eq!(
        c["config"]["config"]["Cmd"],
        serde_json::json!(["/bin/hello", "--self-check"])
    );
    let check = rc(p.path(), d.path(), &["build", "--check"]);
    assert!(check.status.success(), "{}", stderr(&check));
}

/// Debian's docker-registry on a free loopback port, stopped on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tmp");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("config");
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().expect("utf8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is not installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn push_and_pull_through_a_real_registry() {
    let reg = Registry::start();
    let p = project();
    let d = tempfile::tempdir().expect("tmp");
    let digest = digest_of(&ok(&rc(p.path(), d.path(), &["build", "--json"])));
    let dest = format!("{}/team/hello:v1", reg.addr);

    let pushed = ok(&rc(
        p.path(),
        d.path(),
        &["image", "push", "hello", &dest, "--json"],
    ));
    assert_eq!(pushed["digest"], digest.as_str());
    assert_eq!(
        pushed["blobs_uploaded"], 4,
        "two layers, the config and the file index"
    );
    let again = ok(&rc(
        p.path(),
        d.path(),
        &["image", "push", "hello", &dest, "--json"],
    ));
    assert_eq!(
        (
            again["blobs_uploaded"].as_u64(),
            again["blobs_skipped"].as_u64()
        ),
        (Some(0), Some(4))
    );

    // skopeo sees the digest recast built.
    let o = tool(
        "skopeo",
        &["inspect", "--tls-verify=false", &format!("docker://{dest}")],
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["Digest"], digest.as_str());

    // recast pulls it back by tag and by digest into an empty store, digest intact.
    let d2 = tempfile::tempdir().expect("tmp");
    let pulled = ok(&rc(
        p.path(),
        d2.path(),
        &["image", "pull", &dest, "--json"],
    ));
    assert_eq!(pulled["digest"], digest.as_str());
    let by_digest = format!("{}/team/hello@{digest}", reg.addr);
    ok(&rc(
        p.path(),
        d2.path(),
        &["image", "pull", &by_digest, "--json"],
    ));
    let v = ok(&rc(
        p.path(),
        d2.path(),
        &[
            "image",
            "inspect",
            &format!("{}/team/hello:v1", reg.addr),
            "--json",
        ],
    ));
    assert_eq!(v["files"], 11, "the file index came along");

    // recast pulls what skopeo pushed (skopeo recompresses, so that is a new digest).
    let archive = d.path().join("h.tar");
    export(p.path(), d.path(), &archive, "oci");
    let other = format!("{}/other:v2", reg.addr);
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci-archive:{}", archive.display()),
            &format!("docker://{other}"),
        ],
    );
    let o = tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{other}"),
        ],
    );
    let skopeo_digest = serde_json::from_slice::<Value>(&o.stdout).expect("json")["Digest"].clone();
    let pulled = ok(&rc(
        p.path(),
        d2.path(),
        &["image", "pull", &other, "--json"],
    ));
    assert_eq!(pulled["digest"], skopeo_digest);

    // And a spec can build on it, pinned by digest.
    std::fs::write(
        p.path().join("recast.hcl"),
        format!(
            "image \"on-registry\" {{\n  from = \"{}/other@{}\"\n}}\n",
            reg.addr,
            skopeo_digest.as_str().expect("str")
        ),
    )
    .expect("spec");
    let built = ok(&rc(p.path(), d.path(), &["build", "--json"]));
    assert_eq!(built[0]["image"], "on-registry");
}

// ---- bad input -----------------------------------------------------------------------------------

fn assert_store_clean(data: &Path) {
    let tmp = data.join("store/tmp");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "half-written staging left behind: {leftovers:?}"
    );
}

#[test]
fn a_truncated_archive_is_a_clear_error_and_leaves_nothing() {
    let p = project();
    let d = tempfile::tempdir().expect("tmp");
    ok(&rc(p.path(), d.path(), &["build", "--json"]));
    let archive = d.path().join("h.tar");
    export(p.path(), d.path(), &archive, "oci");
    let bytes = std::fs::read(&archive).expect("read");
    let cut = p.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");

    let d2 = tempfile::tempdir().expect("tmp");
    let out = rc(
        p.path(),
        d2.path(),
        &["image", "import", cut.to_str().expect("utf8")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cut.tar") && (err.contains("truncated") || err.contains("not a valid tar")),
        "{err}"
    );
    assert_store_clean(d2.path());
    let blobs = std::fs::read_dir(d2.path().join("store/blobs/sha256"))
        .expect("blobs")
        .count();
    assert_eq!(blobs, 0, "a failed import left blobs in the store");

    std::fs::write(
        p.path().join("recast.hcl"),
        "image \"x\" {\n  from = \"oci-archive:cut.tar\"\n}\n",
    )
    .expect("spec");
    let out = rc(p.path(), d2.path(), &["build"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cut.tar"), "{}", stderr(&out));
    assert_store_clean(d2.path());
}

#[test]
fn a_corrupted_blob_is_named_and_never_used() {
    let p = project();
    let d = tempfile::tempdir().expect("tmp");
    let built = ok(&rc(p.path(), d.path(), &["build", "--json"]));
    let v = ok(&rc(
        p.path(),
        d.path(),
        &["image", "inspect", "hello", "--json"],
    ));
    let layer = v["manifest"]["layers"][0]["digest"]
        .as_str()
        .expect("layer")
        .to_string();
    let path = d.path().join("store/blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[600] ^= 1;
    std::fs::write(&path, &bytes).expect("write");

    let out = rc(
        p.path(),
        d.path(),
        &[
            "image",
            "export",
            "hello",
            "-o",
            d.path().join("x.tar").to_str().expect("utf8"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("blob {layer} of hello:latest is corrupted")),
        "{err}"
    );
    assert!(
        !d.path().join("x.tar").exists(),
        "a failed export left a file"
    );
    let reg_out = rc(
        p.path(),
        d.path(),
        &["image", "push", "hello", "127.0.0.1:1/x:y"],
    );
    assert_eq!(reg_out.status.code(), Some(1));
    let _ = built;
}

#[test]
fn a_missing_blob_is_named() {
    let p = project();
    let d = tempfile::tempdir().expect("tmp");
    ok(&rc(p.path(), d.path(), &["build", "--json"]));
    let v = ok(&rc(
        p.path(),
        d.path(),
        &["image", "inspect", "hello", "--json"],
    ));
    let config = v["manifest"]["config"]["digest"]
        .as_str()
        .expect("config")
        .to_string();
    std::fs::remove_file(d.path().join("store/blobs/sha256").join(&config[7..])).expect("rm");
    let out = rc(p.path(), d.path(), &["image", "inspect", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "blob {config} of image hello:latest is missing from the store"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unreachable_registry_is_a_clear_error() {
    let p = project();
    let d = tempfile::tempdir().expect("tmp");
    let out = rc(
        p.path(),
        d.path(),
        &["image", "pull", "127.0.0.1:1/nothing:v1"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("at registry 127.0.0.1:1") && err.contains("Connection refused"),
        "{err}"
    );
    assert!(err.contains("hint: is the registry running"), "{err}");
    let out = rc(p.path(), d.path(), &["image", "pull", "nothing:v1"]);
    assert!(
        stderr(&out).contains("invalid registry reference \"nothing:v1\": no registry host"),
        "{}",
        stderr(&out)
    );
    assert_store_clean(d.path());
}

#[test]
fn rm_and_gc_free_space() {
    let p = project();
    let d = tempfile::tempdir().expect("tmp");
    ok(&rc(p.path(), d.path(), &["build", "--json"]));
    let ls = ok(&rc(p.path(), d.path(), &["image", "ls", "--json"]));
    assert_eq!(ls[0]["name"], "hello:latest");
    let removed = ok(&rc(p.path(), d.path(), &["image", "rm", "hello", "--json"]));
    assert_eq!(removed[0]["name"], "hello:latest");
    let gc = ok(&rc(p.path(), d.path(), &["image", "gc", "--json"]));
    assert_eq!(
        gc["blobs_removed"], 5,
        "manifest, config, two layers, file index"
    );
    assert_eq!(
        ok(&rc(p.path(), d.path(), &["image", "ls", "--json"])),
        serde_json::json!([])
    );
    let out = rc(p.path(), d.path(), &["image", "inspect", "hello"]);
    assert!(
        stderr(&out).contains("no image hello:latest in the store"),
        "{}",
        stderr(&out)
    );
}
