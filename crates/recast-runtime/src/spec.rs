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

/// Syscalls refused (EPERM) by the default seccomp profile: kernel modules, mounts, namespaces,
/// tracing, clocks, keyrings, reboot — what Docker's default profile also keeps from containers.
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "vm86",
    "vm86old",
];

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
) -> Value {
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    if spec.network == Network::Private {
        let path = netns.map(|p| p.display().to_string()).unwrap_or_default();
        namespaces.push(json!({"type": "network", "path": path}));
    }
    let tmp_size = spec.memory.map_or(64 << 20, |m| (m / 2).max(4 << 20));
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", format!("size={tmp_size}")]}),
    ];
    for (host, mount) in volumes {
        mounts.push(json!({"destination": mount, "type": "bind", "source": host, "options": ["rbind", "rw", "nosuid", "nodev"]}));
    }
    let mut resources =
        json!({"devices": [{"allow": false, "access": "rwm"}], "pids": {"limit": 4096}});
    if let Some(m) = spec.memory {
        resources["memory"] = json!({"limit": m, "swap": m});
    }
    if let Some(c) = spec.cpus {
        resources["cpu"] = json!({"quota": (c * 100_000.0) as i64, "period": 100_000});
    }
    let caps = json!(CAPS);
    let nofile = crate::sys::nofile_hard_limit().min(65536);
    json!({
        "ociVersion": "1.0.2",
        "hostname": spec.id,
        "root": {"path": rootfs, "readonly": true},
        "process": {
            "terminal": false,
            "user": {"uid": process.uid, "gid": process.gid},
            "args": process.args,
            "env": process.env,
            "cwd": process.cwd,
            "noNewPrivileges": true,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
        },
        "mounts": mounts,
        "linux": {
            "cgroupsPath": format!("/recast/{}", spec.id),
            "namespaces": namespaces,
            "resources": resources,
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
                "syscalls": [{"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            },
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

/// Resolve the image's `User` ("uid[:gid]" or names from the image's /etc/passwd and /etc/group).
pub fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32), String> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(rootfs.join(file)).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| {
                Some((
                    f.get(2)?.parse().ok()?,
                    f.get(3).and_then(|x| x.parse().ok()).unwrap_or(0),
                ))
            })?
        })
    };
    let (uid, default_gid) = match u.parse::<u32>() {
        Ok(n) => (n, lookup_by_uid(rootfs, n).unwrap_or(n)),
        Err(_) => lookup("etc/passwd", u)
            .ok_or_else(|| format!("user \"{u}\" is not in the image's /etc/passwd"))?,
    };
    let gid = match g {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup("etc/group", g)
                .map(|(gid, _)| gid)
                .ok_or_else(|| format!("group \"{g}\" is not in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// The home directory of `uid` in the image's /etc/passwd, or "/".
fn home_of(rootfs: &Path, uid: u32) -> String {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f.get(5).map(|h| h.to_string()))?
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}

fn lookup_by_uid(rootfs: &Path, uid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f.get(3)?.parse().ok())?
    })
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
    let (uid, gid) = resolve_user(c["User"].as_str().unwrap_or(""), rootfs)?;
    // HOME as runc would add it (the user's passwd home, else "/"), but written in the spec, so
    // that the spec is the whole environment the process gets.
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(rootfs, uid)));
    }
    Ok(Process {
        args,
        env,
        cwd,
        uid,
        gid,
    })
}
