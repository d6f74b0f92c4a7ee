//! `recast test` and `recast run` with real containers (issue 4).

use crate::{example, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn rc(cwd: &Path, data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(args)
        .current_dir(cwd)
        .env("RECAST_DATA_DIR", data)
        .output()
        .expect("run recast")
}

/// The example project with its `test` block, optionally with extra image env.
fn project(image_env: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(dir.path().join("dist")).expect("mkdir");
    std::fs::copy(example().join("dist/hello"), dir.path().join("dist/hello")).expect("copy hello");
    std::fs::write(
        dir.path().join("recast.hcl"),
        format!(
            r#"
image "web" {{
  from = "scratch"
  copy {{
    src  = "dist/hello"
    dest = "/bin/hello"
    mode = "0555"
  }}
  env = {{ {image_env} }}
  user = "65534:65534"
  cmd = ["/bin/hello"]
  test {{
    http {{
      path          = "/healthz"
      expect_status = 200
    }}
    http {{
      path        = "/"
      expect_body = "hello from hello"
    }}
    command = ["/bin/hello", "--self-check"]
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
fn recast_test_passes_a_good_image() {
    let p = project("");
    let d = tempfile::tempdir().expect("tmp");
    let out = rc(p.path(), d.path(), &["test", "--json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["image"], "web");
    assert_eq!(v[0]["passed"], true);
    assert_eq!(v[0]["checks"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        std::fs::read_dir(d.path().join("instances"))
            .expect("dir")
            .count(),
        0,
        "the throwaway instance is gone"
    );
    let human = rc(p.path(), d.path(), &["test"]);
    assert!(
        stdout(&human).starts_with("PASS web (3 checks in "),
        "{}",
        stdout(&human)
    );
}

#[test]
fn recast_test_fails_an_image_whose_health_check_fails() {
    let p = project(r#"HEALTHY = "false""#);
    let d = tempfile::tempdir().expect("tmp");
    let out = rc(p.path(), d.path(), &["test"]);
    assert_eq!(out.status.code(), Some(1));
    // The reason, then what the program said (its last output).
    let said = stdout(&out);
    assert!(
        said.starts_with("FAIL web: GET /healthz answered 503, expected 200; its last output:\n")
            && said.contains("  | hello 0.1.0 listening on :8080"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_dir(d.path().join("instances"))
            .expect("dir")
            .count(),
        0,
        "the throwaway instance is gone"
    );
}

#[test]
fn recast_test_fails_an_image_that_crashes() {
    // hello refuses a bad FAIL_RATE and exits with status 2 before it listens.
    let p = project(r#"FAIL_RATE = "lots""#);
    let d = tempfile::tempdir().expect("tmp");
    let out = rc(p.path(), d.path(), &["test"]);
    assert_eq!(out.status.code(), Some(1));
    let s = stdout(&out);
    assert!(
        s.starts_with("FAIL web: port 8080 never accepted connections: instance test-web-"),
        "{s}"
    );
    assert!(
        s.contains("exited with status 2 before it was healthy"),
        "{s}"
    );
}

#[test]
fn a_killed_recast_run_leaves_nothing_once_recast_runs_again() {
    let p = project("");
    let d = tempfile::tempdir().expect("tmp");
    assert!(rc(p.path(), d.path(), &["build"]).status.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let run = Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(["run", "web", "--port", &port.to_string()])
        .current_dir(p.path())
        .env("RECAST_DATA_DIR", d.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("recast run");
    // Killed on every path, even when an assertion fails first.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut run = KillOnDrop(run);
    // Wait for our instance to run (its record says so and runc wrote its pid) and to answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (id, pid) = loop {
        assert!(Instant::now() < deadline, "the instance never ran");
        let found = std::fs::read_dir(d.path().join("instances"))
            .ok()
            .and_then(|mut r| r.next())
            .and_then(Result::ok);
        if let Some(e) = found {
            let dir = e.path();
            let running = std::fs::read_to_string(dir.join("instance.json"))
                .is_ok_and(|j| j.contains("\"phase\":\"running\""));
            let pid = std::fs::read_to_string(dir.join("pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let (true, Some(pid)) = (running, pid) {
                break (e.file_name().to_string_lossy().into_owned(), pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let answers = || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            r.ends_with("hello from hello 0.1.0\n")
        })
    };
    while !answers() {
        assert!(Instant::now() < deadline, "the instance never answered");
        std::thread::sleep(Duration::from_millis(10));
    }

    run.0.kill().expect("SIGKILL recast");
    run.0.wait().expect("wait");
    // The instance does not depend on the process that started it.
    assert!(answers(), "the instance died with recast");

    // The next recast in this data directory finds it and, its owner being dead, removes it.
    let out = rc(p.path(), d.path(), &["test"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            Instant::now() < deadline,
            "process {pid} of the orphaned instance still runs"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Each data directory's cgroups live under its own `recast-<hash>` parent, in every
    // hierarchy (v1 controllers and the v2 root alike).
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroupfs")
        .flatten();
    for h in hierarchies
        .map(|h| h.path())
        .chain([PathBuf::from("/sys/fs/cgroup")])
    {
        for parent in std::fs::read_dir(&h).into_iter().flatten().flatten() {
            let name = parent.file_name();
            if name.to_string_lossy().starts_with("recast-") {
                assert!(
                    !parent.path().join(&id).exists(),
                    "cgroup left in {}",
                    parent.path().display()
                );
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(d.path().to_str().expect("utf8")),
        "mounts left:\n{mounts}"
    );
    assert_eq!(
        std::fs::read_dir(d.path().join("instances"))
            .expect("dir")
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(d.path().join("runc"))
            .expect("dir")
            .count(),
        0,
        "runc state left"
    );
}
