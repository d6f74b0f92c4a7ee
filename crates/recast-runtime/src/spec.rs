//! The OCI runtime spec (`config.json`) of an instance: isolation, limits and the process.

use crate::{InstanceSpec, Network};
use serde_json::{Value, json};
use std::path::Path;

/// Capabilities an instance keeps: enough for an ordinary server, nothing that reaches the host.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETGID",
    "CAP_SETUID",
];

/// Syscalls every instance may make: Docker's default seccomp profile (moby `profiles/seccomp/
/// default.json`, its unconditional allow list), minus `clock_adjtime` and `name_to_handle_at`.
/// Everything else is refused with EPERM: mounts, namespaces (`unshare`, `setns`), `io_uring_*`,
/// module loading, `kexec`, `bpf`, `perf_event_open`, `ptrace`/`process_vm_*`, keyrings
/// (`keyctl`, `add_key`, `request_key`), `reboot`, swap, clock setting, `chroot`, `acct`. A name
/// the kernel or libseccomp does not know on this architecture is skipped by runc.
const ALLOWED_SYSCALLS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "riscv_hwprobe",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Allowed on x86 only (Docker allows them there too).
#[cfg(target_arch = "x86_64")]
const ARCH_SYSCALLS: &[&str] = &["arch_prctl", "modify_ldt"];
/// Allowed on ARM only (Docker allows them there too).
#[cfg(target_arch = "aarch64")]
const ARCH_SYSCALLS: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH_SYSCALLS: &[&str] = &[];

/// The seccomp architectures of this machine: the native one and the 32-bit ABIs its kernel runs.
#[cfg(target_arch = "x86_64")]
const ARCHITECTURES: &[&str] = &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"];
#[cfg(target_arch = "aarch64")]
const ARCHITECTURES: &[&str] = &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCHITECTURES: &[&str] = &[];

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET`: `clone` is allowed only when its flags carry none of them (as Docker does).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `personality` values allowed (Docker's): PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
/// and 0xffffffff (the query).
const PERSONALITIES: &[u64] = &[0, 8, 0x20000, 0x20008, 0xffff_ffff];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The seccomp profile: deny (EPERM) by default, allow [`ALLOWED_SYSCALLS`]; `clone` without
/// namespace flags; `clone3` answers ENOSYS so that libc falls back to `clone` (whose flags a
/// filter can see); `socket` for every family but AF_ALG (38) and AF_VSOCK (40).
pub fn seccomp() -> Value {
    let mut names: Vec<&str> = ALLOWED_SYSCALLS.to_vec();
    names.extend(ARCH_SYSCALLS);
    let arg = |op: &str, value: u64| json!([{"index": 0, "value": value, "op": op}]);
    let mut rules = vec![json!({"names": names, "action": "SCMP_ACT_ALLOW"})];
    rules.push(json!({
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
    }));
    rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    for (op, value) in [
        ("SCMP_CMP_LT", 38),
        ("SCMP_CMP_EQ", 39),
        ("SCMP_CMP_GT", 40),
    ] {
        rules
            .push(json!({"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": arg(op, value)}));
    }
    for p in PERSONALITIES {
        rules.push(
            json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": arg("SCMP_CMP_EQ", *p)}),
        );
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ARCHITECTURES,
        "syscalls": rules,
    })
}

/// The process to run, from the image config and the instance.
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

pub fn runtime_spec(
    spec: &InstanceSpec,
    process: &Process,
    rootfs: &Path,
    netns: Option<&Path>,
    volumes: &[(std::path::PathBuf, String)],
    cgroup_parent: &str,
) -> Value {
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    if spec.network == Network::Private {
        if spec.user_namespace {
            // Made by runc inside the user namespace (which must own it for the instance to
            // mount its sysfs and for `runc exec` to join it), loopback up; recast pins it.
            namespaces.push(json!({"type": "network"}));
        } else {
            let path = netns.map(|p| p.display().to_string()).unwrap_or_default();
            namespaces.push(json!({"type": "network", "path": path}));
        }
    }
    let tmp_size = spec.memory.map_or(64 << 20, |m| (m / 2).max(4 << 20));
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        // In a user namespace on the host's network the instance may not mount a sysfs (the
        // network namespace is not its own), and a bind of the host's /sys would show the
        // host's mounts under it: /sys is an empty read-only tmpfs instead.
        if spec.user_namespace && spec.network == Network::Host {
            json!({"destination": "/sys", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "noexec", "nodev", "ro", "size=4k", "mode=755"]})
        } else {
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]})
        },
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", format!("size={tmp_size}")]}),
    ];
    for (host, mount) in volumes {
        mounts.push(json!({"destination": mount, "type": "bind", "source": host, "options": ["rbind", "rw", "nosuid", "nodev"]}));
    }
    // Every instance is bounded: the spec's memory, else the default; the default pids limit.
    let memory = spec.memory.unwrap_or(crate::DEFAULT_MEMORY);
    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "pids": {"limit": crate::DEFAULT_PIDS},
        "memory": {"limit": memory, "swap": memory},
    });
    if let Some(c) = spec.cpus {
        resources["cpu"] = json!({"quota": (c * 100_000.0) as i64, "period": 100_000});
    }
    let caps = json!(CAPS);
    let nofile = crate::sys::nofile_hard_limit().min(65536);
    let mut linux = json!({
        "cgroupsPath": format!("/{cgroup_parent}/{}", spec.id),
        "namespaces": namespaces,
        "resources": resources,
        "seccomp": seccomp(),
        "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    });
    if spec.user_namespace {
        let map = json!([{"containerID": 0, "hostID": crate::USERNS_HOST_ID, "size": crate::USERNS_SIZE}]);
        linux["uidMappings"] = map.clone();
        linux["gidMappings"] = map;
        if let Some(ns) = linux["namespaces"].as_array_mut() {
            ns.push(json!({"type": "user"}));
        }
    }
    json!({
        "ociVersion": "1.0.2",
        "hostname": spec.id,
        "root": {"path": rootfs, "readonly": true},
        "process": {
            "terminal": false,
            // Docker's umask: recast's own 0077 (its files on the host are private) must not be
            // what an instance's or a build step's processes create files with.
            "user": {"uid": process.uid, "gid": process.gid, "umask": UMASK},
            "args": process.args,
            "env": process.env,
            "cwd": process.cwd,
            "noNewPrivileges": true,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
        },
        "mounts": mounts,
        "linux": linux,
    })
}

/// The umask every instance and build step starts with (Docker's and BuildKit's).
pub const UMASK: u32 = 0o022;

/// Largest `/etc/passwd` or `/etc/group` recast reads from an image.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// The image's text file `path`, read inside its root (symlinks cannot leave it), regular
/// files only and bounded; `None` when it does not exist.
fn image_file(rootfs: &Path, path: &str) -> Result<Option<String>, String> {
    let read = recast_root::Root::open(rootfs).and_then(|r| r.read_file(path, MAX_ACCOUNT_FILE));
    match read {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading the image's {path}: {e}")),
    }
}

/// The fields of the first line of an account file (`name:x:id:…`) that `pick` accepts.
fn find_entry(text: &str, pick: impl Fn(&[&str]) -> bool) -> Option<Vec<&str>> {
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| pick(f))
}

/// Resolve the image's `User` ("uid[:gid]" or names from the image's /etc/passwd and /etc/group)
/// to uid, gid and home directory (the passwd home, else "/").
pub fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32, String), String> {
    let passwd = image_file(rootfs, "/etc/passwd")?.unwrap_or_default();
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let num = |f: &[&str], i: usize| f.get(i).and_then(|x| x.parse::<u32>().ok());
    let entry = match u.parse::<u32>() {
        Ok(n) => find_entry(&passwd, |f| num(f, 2) == Some(n)),
        Err(_) if u.is_empty() => find_entry(&passwd, |f| num(f, 2) == Some(0)),
        Err(_) => Some(
            find_entry(&passwd, |f| f.first() == Some(&u) && num(f, 2).is_some())
                .ok_or_else(|| format!("user \"{u}\" is not in the image's /etc/passwd"))?,
        ),
    };
    let uid = u
        .parse::<u32>()
        .ok()
        .or_else(|| entry.as_ref().and_then(|f| num(f, 2)))
        .unwrap_or(0);
    let home = entry
        .as_ref()
        .and_then(|f| f.get(5))
        .filter(|h| !h.is_empty())
        .map_or_else(|| "/".to_string(), |h| h.to_string());
    let gid = match g {
        None => entry.as_ref().and_then(|f| num(f, 3)).unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let group = image_file(rootfs, "/etc/group")?.unwrap_or_default();
                find_entry(&group, |f| f.first() == Some(&g))
                    .and_then(|f| num(&f, 2))
                    .ok_or_else(|| format!("group \"{g}\" is not in the image's /etc/group"))?
            }
        },
    };
    Ok((uid, gid, home))
}

/// The image config's process: entrypoint + cmd, env (image, then instance, then PORT), cwd.
pub fn process_of(
    config: &Value,
    spec: &InstanceSpec,
    port: u16,
    rootfs: &Path,
) -> Result<Process, String> {
    let c = &config["config"];
    let list = |k: &str| -> Vec<String> {
        c[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut args = list("Entrypoint");
    args.extend(list("Cmd"));
    if args.is_empty() {
        return Err("the image has neither an entrypoint nor a cmd".into());
    }
    let mut env: Vec<String> = list("Env");
    let has_path = env.iter().any(|e| e.starts_with("PATH="));
    let mut set = |k: &str, v: &str| {
        let kv = format!("{k}={v}");
        match env
            .iter_mut()
            .find(|e| e.split_once('=').is_some_and(|(ek, _)| ek == k))
        {
            Some(e) => *e = kv,
            None => env.push(kv),
        }
    };
    if !has_path {
        set(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    for (k, v) in &spec.env {
        set(k, v);
    }
    set("PORT", &port.to_string());
    let cwd = c["WorkingDir"]
        .as_str()
        .filter(|w| !w.is_empty())
        .unwrap_or("/")
        .to_string();
    let (uid, gid, home) = resolve_user(c["User"].as_str().unwrap_or(""), rootfs)?;
    // HOME as runc would add it (the user's passwd home, else "/"), but written in the spec, so
    // that the spec is the whole environment the process gets.
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    Ok(Process {
        args,
        env,
        cwd,
        uid,
        gid,
    })
}
