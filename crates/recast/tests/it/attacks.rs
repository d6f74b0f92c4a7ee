//! An outside reviewer's attacks on issue 10, each reproduced through the real binary: what an
//! untrusted image or instance could still do to the host, and the proof that it no longer can.

use crate::deploy::{Server, ok, wait_for};
use std::fs;
use std::path::Path;

/// A project whose service `chatty` runs Debian's static busybox: `script` runs before `httpd`
/// serves on the service port.
fn busybox_service(script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    fs::copy("/bin/busybox", dir.path().join("busybox")).expect("busybox-static is not installed");
    fs::write(
        dir.path().join("recast.hcl"),
        format!(
            r#"
image "chatty" {{
  from = "scratch"
  copy {{
    src  = "busybox"
    dest = "/bin/busybox"
    mode = "0755"
  }}
  cmd = ["/bin/busybox", "sh", "-c", "{script}; exec /bin/busybox httpd -f -p 8080 -h /"]
}}

service "chatty" {{
  image     = image.chatty
  instances = 1
  port      = 8080
}}
"#
        ),
    )
    .expect("spec");
    dir
}

fn len(p: &Path) -> u64 {
    fs::metadata(p).map_or(0, |m| m.len())
}

/// An instance that writes without end must not fill the host's disk: the server keeps each
/// log file of its instances under the runtime's limit (10 MiB), one older copy no larger.
#[test]
fn a_service_instance_cannot_fill_the_disk_with_its_output() {
    let server = Server::start();
    let p = busybox_service("/bin/busybox dd if=/dev/zero bs=1048576 count=40 2>/dev/null");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let dir = fs::read_dir(server.data.join("instances"))
        .expect("instances")
        .flatten()
        .map(|e| e.path())
        .next()
        .expect("an instance");
    let (log, old) = (dir.join("stdout.log"), dir.join("stdout.log.1"));
    wait_for("the 40 MiB of output to be rotated away", 30, || {
        old.exists() && len(&log) <= 10 << 20
    });
    assert!(
        len(&old) <= 10 << 20,
        "the rotated copy keeps at most the limit: {} bytes",
        len(&old)
    );
}

/// A build context (a cloned repository) is untrusted: a `COPY` of a context entry that is a
/// symlink to a host file or directory must not copy the host's files into the image.
#[test]
fn a_dockerfile_cannot_copy_host_files_through_a_context_symlink() {
    let outside = tempfile::tempdir().expect("outside");
    fs::write(outside.path().join("secret"), "HOST SECRET").expect("secret");
    for (link, target) in [
        ("evil", outside.path().join("secret")),
        ("evildir", outside.path().to_path_buf()),
    ] {
        let ctx = tempfile::tempdir().expect("context");
        let data = tempfile::tempdir().expect("data");
        std::os::unix::fs::symlink(&target, ctx.path().join(link)).expect("symlink");
        fs::write(
            ctx.path().join("Dockerfile"),
            format!("FROM scratch\nCOPY {link} /leak\n"),
        )
        .expect("Dockerfile");
        fs::write(
            ctx.path().join("recast.hcl"),
            "image \"x\" {\n  dockerfile = \"Dockerfile\"\n}\n",
        )
        .expect("spec");
        let rc = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_recast"))
                .args(args)
                .current_dir(ctx.path())
                .env("RECAST_DATA_DIR", data.path())
                .output()
                .expect("run recast")
        };
        let built = rc(&["build"]);
        let said = crate::stderr(&built);
        if built.status.success() {
            // Whatever was built must not hold the host's file.
            let out = ctx.path().join("x.tar");
            let o = rc(&["image", "export", "x", "-o", out.to_str().expect("utf8")]);
            assert!(o.status.success(), "{}", crate::stderr(&o));
            let bytes = fs::read(&out).expect("export");
            assert!(
                !bytes.windows(11).any(|w| w == b"HOST SECRET"),
                "COPY {link}: the host's file is in the image"
            );
        } else {
            assert!(
                said.contains("leaves the build context"),
                "COPY {link}: refused with a clear error: {said}"
            );
        }
    }
}
