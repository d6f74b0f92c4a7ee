//! Real containers through runc, built from the example service plus a static busybox (issue 4).
//! These tests run as root, as recast does.

mod network;
mod secrets;

use recast_image::build::{self, Options};
use recast_image::{Digest, Store};
use recast_runtime::health::{self, Status, Tracker, http_get};
use recast_runtime::{Instance, InstanceSpec, Network, Runtime, State, new_id};
use recast_spec::{Health, HealthCheck};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A data directory with the test image built into its store.
struct Fixture {
    dir: tempfile::TempDir,
    rt: Runtime,
    image: Digest,
}

fn example_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/dist/hello");
    assert!(
        p.exists(),
        "run scripts/build-hello first (scripts/test does)"
    );
    p
}

fn fixture() -> Fixture {
    fixture_as(Some("65534:65534"))
}

/// The test image, run as `user` (the image's default, root, when `None`).
fn fixture_as(user: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).expect("mkdir");
    std::fs::copy(example_binary(), ctx.join("hello")).expect("copy hello");
    let probe = example_binary().with_file_name("sysprobe");
    std::fs::copy(&probe, ctx.join("sysprobe"))
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-hello)", probe.display()));
    std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("busybox-static is not installed");
    let user = user.map_or(String::new(), |u| format!("user = \"{u}\""));
    std::fs::write(
        ctx.join("recast.hcl"),
        format!(
            r#"
image "box" {{
  from = "scratch"
  copy {{
    src  = "hello"
    dest = "/bin/hello"
    mode = "0555"
  }}
  copy {{
    src  = "busybox"
    dest = "/bin/busybox"
    mode = "0555"
  }}
  copy {{
    src  = "sysprobe"
    dest = "/bin/sysprobe"
    mode = "0555"
  }}
  {user}
  cmd  = ["/bin/hello"]
}}
"#
        ),
    )
    .expect("spec");
    let project = recast_spec::load(&ctx).unwrap_or_else(|d| panic!("{d}"));
    let store = Store::open(&dir.path().join("store")).expect("store");
    let built = build::build(
        &store,
        None,
        &project,
        &[],
        &Options::default(),
        None,
        &mut |_| {},
    )
    .expect("build");
    let rt = Runtime::new(dir.path(), store).expect("runtime");
    Fixture {
        image: built[0].digest.clone(),
        rt,
        dir,
    }
}

impl Fixture {
    fn spec(&self, env: &[(&str, &str)]) -> InstanceSpec {
        InstanceSpec {
            id: new_id("t"),
            image: self.image.clone(),
            image_name: "box:latest".into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            secret_env: BTreeMap::new(),
            secret_files: Vec::new(),
            port: 8080,
            network: Network::Private,
            volumes: Vec::new(),
            volume_scope: "proj/svc".into(),
            memory: None,
            cpus: None,
            user_namespace: false,
            tmpfs: Vec::new(),
            owner: "test".into(),
            stop_signal: None,
            stop_timeout: Duration::from_secs(5),
            attach: None,
        }
    }

    fn start(&self, spec: &InstanceSpec) -> Instance {
        let inst = self.rt.start(spec).unwrap_or_else(|e| panic!("start: {e}"));
        let ready = tcp_ready();
        health::wait_healthy(
            &self.rt,
            &inst,
            &ready,
            Instant::now() + Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        inst
    }

    fn sh(&self, inst: &Instance, script: &str) -> (i32, String) {
        let cmd = ["/bin/busybox", "sh", "-c", script].map(String::from);
        self.rt
            .exec(inst, &cmd, Duration::from_secs(10))
            .expect("exec")
    }

    /// Delete and check that nothing of the instance is left on the machine.
    fn delete_and_check_gone(&self, inst: &Instance) {
        self.rt.delete(inst).expect("delete");
        assert_gone(&self.rt, self.dir.path(), inst);
    }

    /// The instance's cgroup directory in the hierarchy `controller` (cgroup v1) or the unified
    /// hierarchy (v2).
    fn cgroup(&self, inst: &Instance, controller: &str) -> PathBuf {
        let v1 = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(self.rt.cgroup_parent())
            .join(&inst.id);
        if v1.exists() {
            return v1;
        }
        Path::new("/sys/fs/cgroup")
            .join(self.rt.cgroup_parent())
            .join(&inst.id)
    }
}

/// Wait (with a deadline) until the listener on `port`, in the network namespace of `pid`, has no
/// connection waiting to be accepted: a connection made before the call has been accepted.
/// (For a LISTEN socket, /proc/net/tcp's rx_queue is the accept queue.)
fn wait_accepted(pid: i32, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let local = format!(":{port:04X}");
    loop {
        let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        let waiting = tcp.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1)?.ends_with(&local) && f.get(3) == Some(&"0A"))
                .then(|| f.get(4)?.split(':').nth(1).map(|q| q != "00000000"))?
        });
        if waiting == Some(false) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the connection was never accepted"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn tcp_ready() -> Health {
    Health {
        check: HealthCheck::Tcp,
        interval: Duration::from_millis(5),
        timeout: Duration::from_millis(500),
        healthy_threshold: 1,
        unhealthy_threshold: u32::MAX,
        start_period: Duration::ZERO,
    }
}

/// No process, cgroup, mount, namespace or file of the instance remains.
pub fn assert_gone(rt: &Runtime, data_dir: &Path, inst: &Instance) {
    if let Some(pid) = inst.pid {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "process {pid} of {} is still running",
            inst.id
        );
    }
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroupfs")
        .flatten()
    {
        let p = h.path().join(rt.cgroup_parent()).join(&inst.id);
        assert!(!p.exists(), "cgroup {} left behind", p.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&*inst.dir().to_string_lossy()),
        "a mount of {} is left:\n{mounts}",
        inst.id
    );
    assert!(
        !data_dir.join("instances").join(&inst.id).exists(),
        "instance directory left behind"
    );
    assert!(
        !data_dir.join("runc").join(&inst.id).exists(),
        "runc state left behind"
    );
}

#[test]
fn answers_on_its_port_and_is_cleaned_up() {
    let f = fixture();
    let inst = f.start(&f.spec(&[("MESSAGE", "from-a-container")]));
    let (status, body) = http_get(&f.rt, &inst, "/", Duration::from_secs(2)).expect("get");
    assert_eq!(
        (status, body.as_str()),
        (200, "from-a-container from hello 0.1.0\n")
    );
    assert_eq!(f.rt.state(&inst), State::Running);
    // Nothing is exposed on the host: the port lives in the instance's own network namespace.
    let ns = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("netns");
    assert_ne!(ns(inst.pid.expect("pid").to_string()), ns("self".into()));
    f.delete_and_check_gone(&inst);
}

#[test]
fn the_root_filesystem_is_read_only_and_tmp_is_private() {
    let f = fixture();
    let a = f.start(&f.spec(&[]));
    let b = f.start(&f.spec(&[]));
    let (code, out) = f.sh(&a, "echo x > /bin/evil");
    assert_ne!(code, 0);
    assert!(out.contains("Read-only file system"), "{out}");
    let (code, out) = f.sh(&a, "echo secret > /tmp/note && cat /tmp/note");
    assert_eq!((code, out.trim()), (0, "secret"));
    let (code, _) = f.sh(&b, "test -e /tmp/note");
    assert_ne!(code, 0, "/tmp is shared between instances");
    // Isolation: own PID namespace (the app is PID 1), no new privileges, the image's user.
    let (_, out) = f.sh(
        &a,
        "cat /proc/1/cmdline; echo; grep -E '^(NoNewPrivs|Uid)' /proc/self/status",
    );
    assert!(out.starts_with("/bin/hello"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Uid:\t65534"), "{out}");
    // The seccomp profile refuses namespace tricks.
    let (code, out) = f.sh(&a, "/bin/busybox unshare -n true");
    assert_ne!(code, 0, "{out}");
    f.delete_and_check_gone(&a);
    f.delete_and_check_gone(&b);
}

#[test]
fn a_volume_survives_replacement() {
    let f = fixture();
    let mut spec = f.spec(&[]);
    spec.volumes = vec![("data".into(), "/data".into())];
    let a = f.start(&spec);
    let (code, out) = f.sh(&a, "echo kept > /data/file");
    assert_eq!(code, 0, "{out}");
    f.delete_and_check_gone(&a);
    spec.id = new_id("t");
    let b = f.start(&spec);
    assert_eq!(f.sh(&b, "cat /data/file").1.trim(), "kept");
    f.delete_and_check_gone(&b);
    assert!(
        f.dir.path().join("volumes/proj/svc/data/file").exists(),
        "the volume outlives its instances"
    );
}

#[test]
fn a_volume_or_scope_that_would_leave_the_data_directory_is_refused() {
    let f = fixture();
    for (scope, volume) in [
        ("proj/svc", ".."),
        ("proj/svc", "../../../escaped"),
        ("../..", "data"),
        ("proj/svc/..", "data"),
        ("svc", "data"),
    ] {
        let mut spec = f.spec(&[]);
        spec.volume_scope = scope.into();
        spec.volumes = vec![(volume.into(), "/data".into())];
        let e = match f.rt.start(&spec) {
            Ok(inst) => {
                f.delete_and_check_gone(&inst);
                panic!("volume {volume:?} of scope {scope:?} was accepted");
            }
            Err(e) => e.to_string(),
        };
        assert!(e.contains(&spec.id), "the error names the instance: {e}");
        assert!(
            f.rt.list().iter().all(|i| i.id != spec.id),
            "nothing is left of instance {} after: {e}",
            spec.id
        );
    }
    assert!(
        !f.dir.path().join("escaped").exists() && !f.dir.path().join("data").exists(),
        "nothing was made outside volumes/"
    );
}

#[test]
fn two_releases_listen_on_the_same_port_privately() {
    let f = fixture();
    let v1 = f.start(&f.spec(&[("MESSAGE", "v1")]));
    let v2 = f.start(&f.spec(&[("MESSAGE", "v2")]));
    assert_eq!(v1.port, v2.port);
    assert!(
        http_get(&f.rt, &v1, "/", Duration::from_secs(2))
            .expect("v1")
            .1
            .starts_with("v1 ")
    );
    assert!(
        http_get(&f.rt, &v2, "/", Duration::from_secs(2))
            .expect("v2")
            .1
            .starts_with("v2 ")
    );
    f.delete_and_check_gone(&v1);
    f.delete_and_check_gone(&v2);
}

#[test]
fn host_network_gives_each_instance_its_own_port() {
    let f = fixture();
    let mut spec = f.spec(&[("MESSAGE", "host")]);
    spec.network = Network::Host;
    spec.port = 0;
    let a = f.start(&spec);
    spec.id = new_id("t");
    let b = f.start(&spec);
    assert_ne!(a.port, b.port);
    for inst in [&a, &b] {
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", inst.port)).expect("reachable on the host");
        use std::io::{Read, Write};
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read");
        assert!(resp.contains("host from hello"), "{resp}");
    }
    f.delete_and_check_gone(&a);
    f.delete_and_check_gone(&b);
}

#[test]
fn the_memory_limit_is_enforced() {
    let f = fixture();
    let mut spec = f.spec(&[]);
    spec.memory = Some(32 << 20);
    let inst = f.start(&spec);
    let limit = memory_limit(&f, &inst);
    assert_eq!(limit.trim(), (32u64 << 20).to_string());
    // Holding 64 MiB in a shell variable must get the shell killed.
    let (code, _) = f.sh(
        &inst,
        "x=$(/bin/busybox head -c 67108864 /dev/zero | /bin/busybox tr '\\0' a); echo ${#x}",
    );
    assert_eq!(code, 137, "the allocation was not stopped by the limit");
    f.delete_and_check_gone(&inst);
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let f = fixture();
    let inst = f.start(&f.spec(&[("LATENCY_MS", "600")]));
    // The request is sent, and hello has accepted the connection: it is in flight.
    let mut conn =
        f.rt.connect(&inst, Duration::from_secs(1))
            .expect("connect");
    {
        use std::io::Write;
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
    }
    let inflight = std::thread::spawn(move || {
        use std::io::Read;
        let mut resp = String::new();
        conn.read_to_string(&mut resp).expect("read");
        resp
    });
    wait_accepted(inst.pid.expect("pid"), inst.port);
    let state = f.rt.stop(&inst, Duration::from_secs(5));
    assert_eq!(
        state,
        State::Exited { status: Some(0) },
        "a graceful stop exits 0"
    );
    let resp = inflight.join().expect("request");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    f.delete_and_check_gone(&inst);
}

#[test]
fn an_exiting_instance_is_reported_with_its_status() {
    let f = fixture();
    let inst = f.start(&f.spec(&[("EXIT_AFTER_MS", "200")]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.rt.state(&inst) == State::Running {
        assert!(Instant::now() < deadline, "the instance did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(f.rt.state(&inst), State::Exited { status: Some(1) });
    let log = std::fs::read_to_string(inst.stderr_log()).expect("log");
    assert!(
        log.contains("EXIT_AFTER_MS reached"),
        "stderr goes to the instance's log: {log}"
    );
    f.delete_and_check_gone(&inst);
}

#[test]
fn an_unhealthy_instance_is_reported_within_the_thresholds() {
    let f = fixture();
    let inst = f.start(&f.spec(&[("HEALTHY", "false")]));
    let cfg = Health {
        check: HealthCheck::Http {
            path: "/healthz".into(),
        },
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        healthy_threshold: 1,
        unhealthy_threshold: 3,
        start_period: Duration::ZERO,
    };
    let mut t = Tracker::new();
    let start = Instant::now();
    let mut probes = 0;
    while t.status != Status::Unhealthy {
        t.record(&health::probe(&f.rt, &inst, &cfg.check, cfg.timeout), &cfg);
        probes += 1;
        assert!(probes <= 3, "not unhealthy after 3 failed probes");
        std::thread::sleep(cfg.interval);
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(t.events.len(), 1);
    assert_eq!(t.events[0].detail, "GET /healthz answered 503");
    assert!(t.events[0].at_ms > 0);
    // The exec check sees the same instance from the inside.
    let exec = HealthCheck::Exec {
        command: vec!["/bin/hello".into(), "--self-check".into()],
    };
    assert_eq!(
        health::probe(&f.rt, &inst, &exec, Duration::from_secs(5)),
        Ok(())
    );
    f.delete_and_check_gone(&inst);
}

#[test]
fn a_new_runtime_takes_over_running_instances_and_cleans_up_dead_ones() {
    let f = fixture();
    let live = f.start(&f.spec(&[("MESSAGE", "survivor")]));
    let dead = f.start(&f.spec(&[("EXIT_AFTER_MS", "100")]));
    // A half-created instance: its record exists, nothing else does.
    let half = f.dir.path().join("instances/t-halfmade");
    std::fs::create_dir_all(&half).expect("mkdir");
    std::fs::write(
        half.join("instance.json"),
        format!(r#"{{"id":"t-halfmade","image":"{}","image_name":"box","owner":"test","owner_pid":1,"network":"private","port":8080,"pid":null,"phase":"creating","created_ms":0}}"#, f.image),
    )
    .expect("write");
    // Directories whose creator died before it wrote their record: known by the pid in the
    // name (a dead one goes; one of a live process is being created right now and stays).
    let orphan = f.dir.path().join("instances/.creating-t-orphan.4194304");
    std::fs::create_dir_all(&orphan).expect("mkdir");
    let busy = f
        .dir
        .path()
        .join(format!("instances/.creating-t-busy.{}", std::process::id()));
    std::fs::create_dir_all(&busy).expect("mkdir");
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.rt.state(&dead) == State::Running {
        assert!(
            Instant::now() < deadline,
            "the EXIT_AFTER_MS instance did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let store = Store::open(&f.dir.path().join("store")).expect("store");
    let rt2 = Runtime::new(f.dir.path(), store).expect("runtime");
    let r = rt2.recover(|_| true).expect("recover");
    assert_eq!(
        r.running.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [live.id.as_str()]
    );
    let mut cleaned: Vec<&str> = r.cleaned.iter().map(|(id, _)| id.as_str()).collect();
    cleaned.sort();
    let mut want = vec![dead.id.as_str(), "t-halfmade", ".creating-t-orphan.4194304"];
    want.sort();
    assert_eq!(cleaned, want);
    assert_gone(&rt2, f.dir.path(), &dead);
    assert!(
        !orphan.exists(),
        "a record-less directory of a dead creator stays"
    );
    assert!(
        busy.exists(),
        "a directory a live process is creating was removed"
    );
    std::fs::remove_dir(&busy).expect("rmdir");

    // The new runtime checks, reads and stops what it took over.
    let taken = &r.running[0];
    assert_eq!(
        http_get(&rt2, taken, "/", Duration::from_secs(2))
            .expect("get")
            .1,
        "survivor from hello 0.1.0\n"
    );
    assert!(
        std::fs::read_to_string(taken.stderr_log())
            .expect("log")
            .contains("listening")
    );
    assert!(matches!(
        rt2.stop(taken, Duration::from_secs(5)),
        State::Exited { .. }
    ));
    rt2.delete(taken).expect("delete");
    assert_gone(&rt2, f.dir.path(), taken);
}

#[test]
fn a_corrupted_image_is_never_started() {
    let f = fixture();
    let store = f.rt.store();
    let m = store.manifest(&f.image, "box").expect("manifest");
    let layer = &m.layers[0].digest;
    let path = store.blob_path(layer);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[700] ^= 0xff;
    std::fs::write(&path, bytes).expect("write");
    let err =
        f.rt.start(&f.spec(&[]))
            .expect_err("a corrupted layer must not run");
    assert!(
        err.to_string()
            .contains(&format!("blob {layer} of image box:latest is corrupted")),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(f.dir.path().join("instances"))
            .expect("dir")
            .count(),
        0,
        "nothing left behind"
    );
    assert!(
        !f.dir.path().join("rootfs").join(f.image.hex()).exists(),
        "a partial unpack was kept"
    );
}

#[test]
fn a_tampered_unpacked_image_is_unpacked_again_before_use() {
    let f = fixture();
    let first = f.start(&f.spec(&[]));
    f.delete_and_check_gone(&first);
    // Someone edits the shared unpacked copy on the host.
    let lower = f
        .dir
        .path()
        .join("rootfs")
        .join(f.image.hex())
        .join("fs/bin/hello");
    let good = std::fs::read(&lower).expect("read");
    std::fs::write(&lower, b"#!/bin/sh\necho owned\n").expect("tamper");
    let inst = f.start(&f.spec(&[("MESSAGE", "clean")]));
    assert_eq!(
        std::fs::read(&lower).expect("read"),
        good,
        "the tampered copy was used"
    );
    let (status, body) = http_get(&f.rt, &inst, "/", Duration::from_secs(2)).expect("get");
    assert_eq!((status, body.as_str()), (200, "clean from hello 0.1.0\n"));
    f.delete_and_check_gone(&inst);
}

/// The memory limit in the instance's cgroup (v1 `memory.limit_in_bytes` or v2 `memory.max`).
fn memory_limit(f: &Fixture, inst: &Instance) -> String {
    let dir = f.cgroup(inst, "memory");
    std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(dir.join("memory.max")))
        .unwrap_or_else(|e| panic!("the memory cgroup of {} in {}: {e}", inst.id, dir.display()))
        .trim()
        .to_string()
}

fn pids_limit(f: &Fixture, inst: &Instance) -> String {
    let p = f.cgroup(inst, "pids").join("pids.max");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

/// Run `/bin/sysprobe` in the instance: syscall name → "ok" or "errno N".
fn probe(f: &Fixture, inst: &Instance) -> BTreeMap<String, String> {
    let (code, out) =
        f.rt.exec(
            inst,
            &["/bin/sysprobe".to_string()],
            Duration::from_secs(10),
        )
        .expect("exec sysprobe");
    assert_eq!(code, 0, "sysprobe failed: {out}");
    out.lines()
        .filter_map(|l| {
            let (name, result) = l.split_once(' ')?;
            Some((name.to_string(), result.to_string()))
        })
        .collect()
}

#[test]
fn the_seccomp_allowlist_refuses_namespaces_io_uring_and_kernel_calls() {
    let f = fixture();
    let inst = f.start(&f.spec(&[]));
    let got = probe(&f, &inst);
    let mut want = BTreeMap::new();
    // Ordinary software: files, sockets, fork, threads and process creation (libc's clone3 is
    // answered ENOSYS and it falls back to clone).
    for ok in [
        "getpid",
        "openat",
        "socket(AF_INET)",
        "socket(AF_UNIX)",
        "clone(fork)",
        "thread",
        "spawn",
    ] {
        want.insert(ok.to_string(), "ok".to_string());
    }
    for refused in [
        "unshare(CLONE_NEWUSER)",
        "unshare(CLONE_NEWNS)",
        "clone(CLONE_NEWNET)",
        "clone(CLONE_NEWUSER)",
        "setns",
        "io_uring_setup",
        "mount",
        "umount2",
        "ptrace",
        "keyctl",
        "bpf",
        "perf_event_open",
        "reboot",
        "finit_module",
        "socket(AF_VSOCK)",
    ] {
        want.insert(refused.to_string(), "errno 1".to_string());
    }
    want.insert("clone3".into(), "errno 38".into());
    assert_eq!(
        got, want,
        "sysprobe's answers (errno 1 = EPERM, 38 = ENOSYS)"
    );
    f.delete_and_check_gone(&inst);
}

#[test]
fn stock_programs_still_work_under_the_allowlist() {
    let f = fixture();
    let inst = f.start(&f.spec(&[("MESSAGE", "stock")]));
    // busybox's shell: pipelines (fork, pipe, exec), /proc, time, sleep, sockets (nc), files.
    let (code, out) = f.sh(
        &inst,
        "echo abc | /bin/busybox tr a-c x-z && /bin/busybox ls / | /bin/busybox wc -l >/dev/null \
         && /bin/busybox ps >/dev/null && /bin/busybox date +%s >/dev/null && /bin/busybox sleep 0.01 \
         && echo data > /tmp/f && /bin/busybox sha256sum /tmp/f >/dev/null \
         && /bin/busybox wget -q -O - http://127.0.0.1:8080/ && /bin/busybox id -u",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "xyz\nstock from hello 0.1.0\n65534\n");
    // The example service itself (threads, sockets, signals) answers as before.
    let (status, body) = http_get(&f.rt, &inst, "/", Duration::from_secs(2)).expect("get");
    assert_eq!((status, body.as_str()), (200, "stock from hello 0.1.0\n"));
    f.delete_and_check_gone(&inst);
}

#[test]
fn every_instance_gets_the_default_memory_and_pids_limits() {
    let f = fixture();
    let inst = f.start(&f.spec(&[]));
    assert_eq!(
        memory_limit(&f, &inst),
        recast_runtime::DEFAULT_MEMORY.to_string()
    );
    assert_eq!(
        pids_limit(&f, &inst),
        recast_runtime::DEFAULT_PIDS.to_string()
    );
    // The cgroup is under this data directory's parent, not a shared `recast/`.
    assert!(
        f.rt.cgroup_parent().starts_with("recast-") && f.rt.cgroup_parent().len() == 19,
        "{}",
        f.rt.cgroup_parent()
    );
    f.delete_and_check_gone(&inst);
}

#[test]
fn two_data_directories_never_share_a_cgroup() {
    let a = fixture();
    let b = fixture();
    assert_ne!(a.rt.cgroup_parent(), b.rt.cgroup_parent());
    // The same instance id in both installations.
    let id = new_id("same");
    let mut spec_a = a.spec(&[("MESSAGE", "a")]);
    spec_a.id = id.clone();
    spec_a.memory = Some(64 << 20);
    let mut spec_b = b.spec(&[("MESSAGE", "b")]);
    spec_b.id = id.clone();
    let ia = a.start(&spec_a);
    let ib = b.start(&spec_b);
    assert_eq!(memory_limit(&a, &ia), (64u64 << 20).to_string());
    assert_eq!(
        memory_limit(&b, &ib),
        recast_runtime::DEFAULT_MEMORY.to_string()
    );
    // Recovery by a new runtime of A finds A's instance only and leaves B's alone.
    let store = Store::open(&a.dir.path().join("store")).expect("store");
    let ra = Runtime::new(a.dir.path(), store).expect("runtime");
    assert_eq!(ra.cgroup_parent(), a.rt.cgroup_parent());
    let r = ra.recover(|_| true).expect("recover");
    assert_eq!(r.running.len(), 1);
    assert!(r.cleaned.is_empty(), "{:?}", r.cleaned);
    // Deleting A's instance leaves B's running, in its cgroup.
    a.delete_and_check_gone(&ia);
    assert_eq!(b.rt.state(&ib), State::Running);
    assert!(b.cgroup(&ib, "memory").exists());
    let (status, body) = http_get(&b.rt, &ib, "/", Duration::from_secs(2)).expect("get b");
    assert_eq!((status, body.as_str()), (200, "b from hello 0.1.0\n"));
    b.delete_and_check_gone(&ib);
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn runtime_files_are_private_and_a_non_root_user_still_reads_its_root_and_writes_its_volume() {
    // As the binary runs: nothing it creates is open by accident.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let f = fixture();
    let mut spec = f.spec(&[("SECRET_TOKEN", "hunter2")]);
    spec.volumes = vec![("data".into(), "/data".into())];
    let inst = f.start(&spec);
    // The instance (user 65534) reads its root and writes its volume.
    let (code, out) = f.sh(
        &inst,
        "/bin/busybox stat -c %a / && /bin/busybox ls /bin >/dev/null && echo ok > /data/f && /bin/busybox cat /data/f && /bin/busybox id -u",
    );
    assert_eq!((code, out.as_str()), (0, "755\nok\n65534\n"));
    let dir = inst.dir();
    // (The namespace pin `netns` shows the namespace's own inode, 0444, usable only with
    // CAP_SYS_ADMIN, inside the 0700 directory.)
    for file in ["config.json", "instance.json", "stdout.log", "stderr.log"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    assert!(
        std::fs::read_to_string(dir.join("config.json"))
            .expect("config")
            .contains("hunter2")
    );
    assert_eq!(mode(dir), 0o700, "the instance directory");
    assert_eq!(mode(&dir.join("upper")), 0o755, "/ inside the instance");
    for d in ["instances", "rootfs", "volumes", "runc"] {
        assert_eq!(mode(&f.dir.path().join(d)), 0o700, "{d}");
    }
    let volume = f.dir.path().join("volumes/proj/svc/data");
    assert_eq!(mode(&volume), 0o755);
    assert_eq!(mode(&volume.with_file_name("")), 0o700);
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&volume).expect("volume");
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
    }
    // Stopped: the exit status is recorded privately too.
    f.rt.stop(&inst, Duration::from_secs(5));
    assert_eq!(mode(&dir.join("exit-status")), 0o600);
    f.delete_and_check_gone(&inst);
}

#[test]
fn a_user_namespace_maps_root_to_an_unprivileged_host_uid() {
    // A stock image that runs as root.
    let f = fixture_as(None);
    // A private data directory, as recast makes it.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
    }
    let mut spec = f.spec(&[("MESSAGE", "mapped")]);
    spec.user_namespace = true;
    spec.volumes = vec![
        ("data".into(), "/data".into()),
        ("deep".into(), "/srv/deep/state".into()),
    ];
    let inst = f.start(&spec);
    let (status, body) = http_get(&f.rt, &inst, "/", Duration::from_secs(2)).expect("get");
    assert_eq!((status, body.as_str()), (200, "mapped from hello 0.1.0\n"));
    // Inside: root, with the mapping in place; the image is readable, the volumes writable.
    let (code, out) = f.sh(
        &inst,
        "/bin/busybox id -u && /bin/busybox cat /proc/self/uid_map && /bin/busybox ls /bin >/dev/null \
         && echo kept > /data/f && echo deep > /srv/deep/state/f && /bin/busybox cat /data/f",
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [vec!["0"], vec!["0", "2000000000", "65536"], vec!["kept"]],
        "{out}"
    );
    // Root inside is still refused what the profile refuses.
    let got = probe(&f, &inst);
    assert_eq!(got["unshare(CLONE_NEWUSER)"], "errno 1");
    assert_eq!(got["mount"], "errno 1");
    assert_eq!(got["spawn"], "ok");
    // The host sees the app as uid/gid 2000000000, and the volume files it wrote as its own.
    let pid = inst.pid.expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), ["2000000000"; 4], "{status}");
    assert_eq!(field("Gid:"), ["2000000000"; 4], "{status}");
    {
        use std::os::unix::fs::MetadataExt;
        let m =
            std::fs::metadata(f.dir.path().join("volumes/proj/svc/data/f")).expect("volume file");
        assert_eq!((m.uid(), m.gid()), (2_000_000_000, 2_000_000_000));
        // The way to its root filesystem is open to the mapped root's group only; the runtime
        // spec (with the environment) stays root's.
        for d in [f.dir.path(), &f.dir.path().join("instances"), inst.dir()] {
            let m = std::fs::metadata(d).expect("dir");
            assert_eq!(
                (m.gid(), mode(d)),
                (2_000_000_000, 0o710),
                "{}",
                d.display()
            );
        }
        assert_eq!(mode(&inst.dir().join("config.json")), 0o600);
    }
    // Its own network namespace (runc made it inside the user namespace) and its own sysfs.
    let (code, out) = f.sh(&inst, "/bin/busybox grep ' /sys ' /proc/mounts");
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("sysfs /sys sysfs ro,"), "{out}");
    let ns = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("netns");
    assert_ne!(ns(pid.to_string()), ns("self".into()));
    f.delete_and_check_gone(&inst);
}
