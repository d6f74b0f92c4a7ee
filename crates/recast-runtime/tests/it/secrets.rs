//! Secrets (issue 16) with real runc: secret environment variables and files reach the
//! instance — its process, `runc exec`, a read-only file on a tmpfs owned by its user — and their
//! plain text is nowhere under the data directory (runc's state included), while the guard's
//! hash of the runtime spec still holds; nothing is mounted once the instance is gone.

use crate::{Fixture, fixture, fixture_as, mode};
use recast_runtime::{Attach, Instance, InstanceSpec, SecretFile, new_id};
use recast_spec::Egress;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// On a failed test, what it made is removed all the same (instances, the test's network).
struct CleanUp<'a>(&'a Fixture);

impl Drop for CleanUp<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for inst in self.0.rt.list() {
                let _ = self.0.rt.delete(&inst);
            }
            let _ = self.0.rt.remove_network("sec");
        }
    }
}

/// A spec with a plain `DB_PASSWORD` that its secret one replaces, a secret `API_TOKEN`, and
/// the secret file `/run/secrets/db` (whose directory the image does not have); every secret
/// value holds `marker`.
fn secret_spec(f: &Fixture, marker: &str, file_mode: u32) -> InstanceSpec {
    let mut spec = f.spec(&[("DB_PASSWORD", "plain-value"), ("MESSAGE", "hello")]);
    spec.secret_env = [
        ("DB_PASSWORD".to_string(), format!("{marker}-env")),
        ("API_TOKEN".to_string(), format!("{marker}-token")),
    ]
    .into();
    let mut file = SecretFile::new("/run/secrets/db", format!("{marker}-file\n"));
    file.mode = file_mode;
    spec.secret_files = vec![file];
    spec
}

/// Every regular file under `dir` (symlinks not followed), read whole.
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, std::io::Result<Vec<u8>>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => files_under(&p, out),
            Ok(m) if m.is_file() => {
                let bytes = std::fs::read(&p);
                out.push((p, bytes));
            }
            _ => {}
        }
    }
}

/// `marker` is in no file under the data directory (runc's state is `runc/` there), and every
/// file but a namespace pin could be read.
fn assert_nowhere_on_disk(f: &Fixture, marker: &str) {
    let mut files = Vec::new();
    files_under(f.dir.path(), &mut files);
    let mut read = 0;
    for (p, bytes) in &files {
        match bytes {
            Ok(b) => {
                read += 1;
                assert!(
                    // (Lossy text keeps every ASCII byte; std's search is fast in a debug build.)
                    !String::from_utf8_lossy(b).contains(marker),
                    "a secret is in {}",
                    p.display()
                );
            }
            Err(e) => assert!(p.ends_with("netns"), "{}: {e}", p.display()),
        }
    }
    assert!(read > 10, "only {read} files read under the data directory");
}

/// The mount at `at` inside the instance, from its `mountinfo`: (options, type, super options).
fn mount_in(pid: i32, at: &str) -> (String, String, String) {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(at))
        .unwrap_or_else(|| panic!("no mount at {at} in the instance:\n{info}"));
    let (head, tail) = line.split_once(" - ").expect("mountinfo line");
    let tail: Vec<&str> = tail.split(' ').collect();
    (
        head.split(' ').nth(5).unwrap_or_default().to_string(),
        tail[0].to_string(),
        tail.get(2).copied().unwrap_or_default().to_string(),
    )
}

/// The host mounts under the instance's directory.
fn host_mounts_under(inst: &Instance) -> Vec<String> {
    let dir = inst.dir().to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)))
        .map(|l| l.split(' ').nth(4).unwrap_or_default().to_string())
        .collect()
}

/// What every started instance with [`secret_spec`] shows: the process's environment, the file
/// (content, owner, mode, a read-only tmpfs), `runc exec`, no tmpfs left on the host, the spec
/// on disk with placeholders and no drift, no plain text under the data directory.
fn check_secrets_reach_only_the_instance(
    f: &Fixture,
    inst: &Instance,
    marker: &str,
    owner: (u32, u32),
    file_mode: u32,
) {
    let pid = inst.pid.expect("pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect();
    for want in [
        format!("DB_PASSWORD={marker}-env"),
        format!("API_TOKEN={marker}-token"),
        "MESSAGE=hello".to_string(),
    ] {
        assert!(environ.contains(&want), "{want} not in {environ:?}");
    }
    assert!(
        !environ.iter().any(|e| e.contains("plain-value")),
        "the secret replaces the plain variable: {environ:?}"
    );
    let file = PathBuf::from(format!("/proc/{pid}/root/run/secrets/db"));
    let content = std::fs::read_to_string(&file).expect("the secret file inside the instance");
    assert_eq!(content, format!("{marker}-file\n"));
    let m = std::fs::metadata(&file).expect("secret file");
    assert_eq!((m.uid(), m.gid()), owner, "owner of the secret file");
    assert_eq!(mode(&file), file_mode, "mode of the secret file");
    // The directory runc made for it is open to the instance's other users (a daemon's workers
    // read such files), and the instance's process starts with Docker's umask, not recast's.
    let parent = PathBuf::from(format!("/proc/{pid}/root/run/secrets"));
    assert_eq!(mode(&parent), 0o755, "mode of /run/secrets");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(status.lines().any(|l| l == "Umask:\t0022"), "{status}");
    let (opts, fstype, super_opts) = mount_in(pid, "/run/secrets/db");
    assert_eq!(fstype, "tmpfs", "the secret file is on a tmpfs");
    for o in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|x| x == o), "{o} not in {opts}");
    }
    assert!(
        super_opts.contains("size="),
        "a bounded tmpfs: {super_opts}"
    );
    // A command run in the instance gets the secret environment too, and reads the file as the
    // instance's user.
    let (code, out) = f.sh(
        inst,
        "echo \"$DB_PASSWORD $API_TOKEN $MESSAGE\"; /bin/busybox cat /run/secrets/db; echo x > /run/secrets/db",
    );
    assert_ne!(code, 0, "the secret file is read-only: {out}");
    assert!(
        out.starts_with(&format!(
            "{marker}-env {marker}-token hello\n{marker}-file\n"
        )),
        "{out}"
    );
    // Nothing of the secrets is mounted on the host any more.
    let mounts = host_mounts_under(inst);
    assert!(
        mounts.iter().all(|m| !m.contains("secrets")),
        "the secrets tmpfs is still mounted on the host: {mounts:?}"
    );
    // The spec on disk names the secret variables, with placeholders, and is what was hashed.
    let config = std::fs::read_to_string(inst.dir().join("config.json")).expect("config.json");
    assert!(config.contains("\"DB_PASSWORD=(secret)\""), "{config}");
    assert!(config.contains("\"API_TOKEN=(secret)\""), "{config}");
    assert!(config.contains("\"/run/secrets/db\""), "{config}");
    assert_eq!(f.rt.config_drift(inst), None);
    assert_eq!(inst.secret_names, ["API_TOKEN", "DB_PASSWORD"]);
    assert_eq!(inst.secret_mounts, ["/run/secrets/db"]);
    // runc's state (its bundle is the detached tmpfs) is read too.
    let state = f.dir.path().join("runc").join(&inst.id).join("state.json");
    let state = std::fs::read_to_string(&state).expect("runc's state");
    let bundle = inst.dir().join("secrets").to_string_lossy().into_owned();
    assert!(state.contains(&format!("bundle={bundle}\"")), "{state}");
    assert_nowhere_on_disk(f, marker);
}

#[test]
fn secrets_reach_the_instance_and_no_file_on_disk() {
    let f = fixture();
    let _clean = CleanUp(&f);
    let marker = new_id("marker");
    let inst = f.start(&secret_spec(&f, &marker, 0o400));
    check_secrets_reach_only_the_instance(&f, &inst, &marker, (65534, 65534), 0o400);
    // A new runtime (a restarted server) still gives commands the secret environment.
    let again = recast_runtime::Runtime::new(f.dir.path(), f.rt.store().clone()).expect("runtime");
    let listed = again.list().into_iter().find(|i| i.id == inst.id);
    let listed = listed.expect("the instance is listed");
    let cmd = ["/bin/busybox", "sh", "-c", "echo $API_TOKEN"].map(String::from);
    let (code, out) = again
        .exec(&listed, &cmd, Duration::from_secs(10))
        .expect("exec");
    assert_eq!((code, out.trim()), (0, format!("{marker}-token").as_str()));
    // A creator that died between the tmpfs's mount and the container's start left it mounted:
    // deleting the instance detaches it.
    let left = inst.dir().join("secrets");
    std::fs::create_dir(&left).expect("mkdir");
    rustix::mount::mount(
        "tmpfs",
        &left,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .expect("mount a tmpfs");
    std::fs::write(left.join("config.json"), &marker).expect("write");
    f.delete_and_check_gone(&inst);
    assert_nowhere_on_disk(&f, &marker);
}

#[test]
fn secrets_in_a_user_namespace_belong_to_its_mapped_user() {
    // Root in the image; the data directory private, as recast makes it.
    let f = fixture_as(None);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
    }
    let _clean = CleanUp(&f);
    let marker = new_id("marker");
    let mut spec = secret_spec(&f, &marker, 0o440);
    spec.user_namespace = true;
    // On a project network: `runc create`, then the network, then `runc start`.
    let addr =
        f.rt.service_address("sec", "web")
            .unwrap_or_else(|e| panic!("address: {e}"));
    spec.attach = Some(Attach {
        project: "sec".into(),
        service: "web".into(),
        hosts: vec![("web".into(), addr)],
        egress: Egress::None,
    });
    let inst = f.start(&spec);
    check_secrets_reach_only_the_instance(
        &f,
        &inst,
        &marker,
        (2_000_000_000, 2_000_000_000),
        0o440,
    );
    f.delete_and_check_gone(&inst);
    f.rt.remove_network("sec").expect("remove network");
    assert_nowhere_on_disk(&f, &marker);
}

#[test]
fn without_secrets_nothing_is_mounted_and_runc_reads_the_instance_directory() {
    let f = fixture();
    let _clean = CleanUp(&f);
    let inst = f.start(&f.spec(&[("DB_PASSWORD", "plain-value")]));
    assert!(!inst.dir().join("secrets").exists());
    let mounts = host_mounts_under(&inst);
    let dir = inst.dir().to_string_lossy().into_owned();
    assert_eq!(mounts, [format!("{dir}/rootfs"), format!("{dir}/netns")]);
    let config = std::fs::read_to_string(inst.dir().join("config.json")).expect("config");
    assert!(config.contains("DB_PASSWORD=plain-value"), "{config}");
    let state =
        std::fs::read_to_string(f.dir.path().join("runc").join(&inst.id).join("state.json"))
            .expect("runc state");
    assert!(state.contains(&format!("bundle={dir}\"")), "{state}");
    assert_eq!(f.sh(&inst, "echo $DB_PASSWORD").1.trim(), "plain-value");
    assert!(inst.secret_names.is_empty() && inst.secret_mounts.is_empty());
    f.delete_and_check_gone(&inst);
}

#[test]
fn bad_secrets_are_refused_by_name_and_a_failed_start_leaves_no_mount() {
    let f = fixture();
    let _clean = CleanUp(&f);
    let marker = new_id("marker");
    let file = |path: &str| SecretFile::new(path, format!("{marker}-file"));
    let cases: Vec<(InstanceSpec, &str)> = vec![
        {
            let mut s = f.spec(&[]);
            s.secret_files = vec![file("/proc/self/x")];
            (s, "secret file \"/proc/self/x\": the path is under /proc")
        },
        {
            let mut s = f.spec(&[]);
            s.secret_files = vec![file("run/x")];
            (s, "secret file \"run/x\": the path is not absolute")
        },
        {
            let mut s = f.spec(&[]);
            s.secret_files = vec![file("/run/../etc/passwd")];
            (s, "not normalised")
        },
        {
            let mut s = f.spec(&[]);
            s.secret_files = vec![file("/run/x"), file("/run/x")];
            (s, "secret file /run/x is given twice")
        },
        {
            let mut s = f.spec(&[]);
            let mut setuid = file("/run/x");
            setuid.mode = 0o4755;
            s.secret_files = vec![setuid];
            (s, "mode 4755")
        },
        {
            let mut s = f.spec(&[]);
            s.secret_env = [("PORT".to_string(), marker.clone())].into();
            (s, "secret environment variable PORT")
        },
        {
            let mut s = f.spec(&[]);
            s.secret_env = [("A=B".to_string(), marker.clone())].into();
            (s, "is not a valid name")
        },
        // Accepted, but runc cannot bind a file on the image's directory /bin: the start
        // fails after the tmpfs was mounted.
        {
            let mut s = f.spec(&[]);
            s.secret_env = [("TOKEN".to_string(), marker.clone())].into();
            s.secret_files = vec![file("/bin")];
            (s, "runc could not start instance")
        },
    ];
    for (spec, want) in cases {
        let e = match f.rt.start(&spec) {
            Ok(inst) => {
                f.delete_and_check_gone(&inst);
                panic!("{spec:?} was accepted");
            }
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want), "{want:?} not in: {e}");
        assert!(e.contains(&spec.id), "the error names the instance: {e}");
        assert!(!e.contains(&marker), "the error shows a secret: {e}");
        assert!(
            !format!("{spec:?}").contains(&marker),
            "Debug shows a secret"
        );
        assert!(
            !f.dir.path().join("instances").join(&spec.id).exists(),
            "instance {} is left after: {e}",
            spec.id
        );
        let data = f.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&data)).collect();
        assert!(left.is_empty(), "mounts left after {want:?}: {left:#?}");
    }
    assert_nowhere_on_disk(&f, &marker);
}
