//! sysprobe: which system calls does the sandbox allow? Run inside an instance, it makes each
//! call below once and prints one line per call: `NAME ok` or `NAME errno N`. Ordinary calls
//! come first (they must work), then the ones recast's seccomp profile must refuse. It exits 0
//! whatever the answers; the caller judges them.
//!
//! Built fully static (`scripts/build-hello` → `dist/sysprobe`), like hello.

// Raw system calls are the point of this program: the standard library does not make these calls,
// and it must see the kernel's (or the filter's) answer unfiltered by any wrapper.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_long};
use std::io::Write;

unsafe extern "C" {
    fn syscall(number: c_long, ...) -> c_long;
    fn _exit(status: c_int) -> !;
}

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const CLOSE: i64 = 3;
    pub const GETPID: i64 = 39;
    pub const SOCKET: i64 = 41;
    pub const CLONE: i64 = 56;
    pub const WAIT4: i64 = 61;
    pub const PTRACE: i64 = 101;
    pub const MOUNT: i64 = 165;
    pub const UMOUNT2: i64 = 166;
    pub const REBOOT: i64 = 169;
    pub const KEYCTL: i64 = 250;
    pub const OPENAT: i64 = 257;
    pub const UNSHARE: i64 = 272;
    pub const PERF_EVENT_OPEN: i64 = 298;
    pub const SETNS: i64 = 308;
    pub const FINIT_MODULE: i64 = 313;
    pub const BPF: i64 = 321;
    pub const IO_URING_SETUP: i64 = 425;
    pub const CLONE3: i64 = 435;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const CLOSE: i64 = 57;
    pub const GETPID: i64 = 172;
    pub const SOCKET: i64 = 198;
    pub const CLONE: i64 = 220;
    pub const WAIT4: i64 = 260;
    pub const PTRACE: i64 = 117;
    pub const MOUNT: i64 = 40;
    pub const UMOUNT2: i64 = 39;
    pub const REBOOT: i64 = 142;
    pub const KEYCTL: i64 = 219;
    pub const OPENAT: i64 = 56;
    pub const UNSHARE: i64 = 97;
    pub const PERF_EVENT_OPEN: i64 = 241;
    pub const SETNS: i64 = 268;
    pub const FINIT_MODULE: i64 = 273;
    pub const BPF: i64 = 280;
    pub const IO_URING_SETUP: i64 = 425;
    pub const CLONE3: i64 = 435;
}

const SIGCHLD: i64 = 17;
const CLONE_NEWNS: i64 = 0x0002_0000;
const CLONE_NEWUSER: i64 = 0x1000_0000;
const CLONE_NEWNET: i64 = 0x4000_0000;
const AT_FDCWD: i64 = -100;
const O_RDONLY_DIRECTORY: i64 = 0o200000;
const AF_UNIX: i64 = 1;
const AF_INET: i64 = 2;
const AF_VSOCK: i64 = 40;
const SOCK_STREAM: i64 = 1;
const MNT_DETACH: i64 = 2;

/// The call's result: its return value, or the errno it failed with.
fn sys(number: i64, args: [i64; 6]) -> Result<i64, i32> {
    // SAFETY: every call below passes integers, NULL, or pointers to live, correctly sized
    // buffers owned by the caller; none of them changes memory this program relies on.
    let r = unsafe { syscall(number, args[0], args[1], args[2], args[3], args[4], args[5]) };
    if r == -1 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

/// `clone` (or `clone3`) that forks: the child exits at once, the parent reaps it.
fn fork_like(number: i64, args: [i64; 6]) -> Result<i64, i32> {
    let pid = sys(number, args)?;
    if pid == 0 {
        // SAFETY: the child leaves at once, without running anything of the parent's state.
        unsafe { _exit(0) }
    }
    let mut status: c_int = 0;
    sys(nr::WAIT4, [pid, &raw mut status as i64, 0, 0, 0, 0])?;
    Ok(pid)
}

fn report(out: &mut impl Write, name: &str, r: Result<i64, i32>) {
    let _ = match r {
        Ok(_) => writeln!(out, "{name} ok"),
        Err(e) => writeln!(out, "{name} errno {e}"),
    };
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--noop") {
        return;
    }
    let mut out = std::io::stdout().lock();
    // Ordinary calls.
    report(&mut out, "getpid", sys(nr::GETPID, [0; 6]));
    let root = c"/";
    let fd = sys(
        nr::OPENAT,
        [AT_FDCWD, root.as_ptr() as i64, O_RDONLY_DIRECTORY, 0, 0, 0],
    );
    report(&mut out, "openat", fd);
    for (name, family) in [("socket(AF_INET)", AF_INET), ("socket(AF_UNIX)", AF_UNIX)] {
        let s = sys(nr::SOCKET, [family, SOCK_STREAM, 0, 0, 0, 0]);
        report(&mut out, name, s);
        if let Ok(s) = s {
            let _ = sys(nr::CLOSE, [s, 0, 0, 0, 0, 0]);
        }
    }
    if let Ok(fd) = fd {
        let _ = sys(nr::CLOSE, [fd, 0, 0, 0, 0, 0]);
    }
    report(
        &mut out,
        "clone(fork)",
        fork_like(nr::CLONE, [SIGCHLD, 0, 0, 0, 0, 0]),
    );
    // libc's thread and process creation try clone3 first and fall back to clone on ENOSYS.
    let thread = std::thread::spawn(|| 7).join();
    report(&mut out, "thread", thread.map(|_| 0).map_err(|_| 0));
    let spawned = std::process::Command::new("/proc/self/exe")
        .arg("--noop")
        .status();
    report(
        &mut out,
        "spawn",
        match spawned {
            Ok(s) if s.success() => Ok(0),
            Ok(_) => Err(0),
            Err(e) => Err(e.raw_os_error().unwrap_or(0)),
        },
    );

    // Calls the profile refuses.
    report(
        &mut out,
        "unshare(CLONE_NEWUSER)",
        sys(nr::UNSHARE, [CLONE_NEWUSER, 0, 0, 0, 0, 0]),
    );
    report(
        &mut out,
        "unshare(CLONE_NEWNS)",
        sys(nr::UNSHARE, [CLONE_NEWNS, 0, 0, 0, 0, 0]),
    );
    report(
        &mut out,
        "clone(CLONE_NEWNET)",
        fork_like(nr::CLONE, [CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0, 0]),
    );
    report(
        &mut out,
        "clone(CLONE_NEWUSER)",
        fork_like(nr::CLONE, [CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0, 0]),
    );
    // struct clone_args (version 0, 64 bytes): flags, pidfd, child_tid, parent_tid, exit_signal,
    // stack, stack_size, tls.
    let args: [u64; 8] = [0, 0, 0, 0, SIGCHLD as u64, 0, 0, 0];
    report(
        &mut out,
        "clone3",
        fork_like(nr::CLONE3, [args.as_ptr() as i64, 64, 0, 0, 0, 0]),
    );
    report(&mut out, "setns", sys(nr::SETNS, [-1, 0, 0, 0, 0, 0]));
    let params = [0u8; 120];
    report(
        &mut out,
        "io_uring_setup",
        sys(nr::IO_URING_SETUP, [1, params.as_ptr() as i64, 0, 0, 0, 0]),
    );
    // A target that does not exist: where the call is allowed, it fails with ENOENT and changes
    // nothing, even run outside any sandbox.
    let (none, tmp, tmpfs) = (c"none", c"/nonexistent-sysprobe", c"tmpfs");
    report(
        &mut out,
        "mount",
        sys(
            nr::MOUNT,
            [
                none.as_ptr() as i64,
                tmp.as_ptr() as i64,
                tmpfs.as_ptr() as i64,
                0,
                0,
                0,
            ],
        ),
    );
    report(
        &mut out,
        "umount2",
        sys(nr::UMOUNT2, [tmp.as_ptr() as i64, MNT_DETACH, 0, 0, 0, 0]),
    );
    // PTRACE_TRACEME.
    report(&mut out, "ptrace", sys(nr::PTRACE, [0, 0, 0, 0, 0, 0]));
    // KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING.
    report(&mut out, "keyctl", sys(nr::KEYCTL, [0, -3, 0, 0, 0, 0]));
    // BPF_MAP_CREATE without attributes.
    report(&mut out, "bpf", sys(nr::BPF, [0, 0, 0, 0, 0, 0]));
    report(
        &mut out,
        "perf_event_open",
        sys(nr::PERF_EVENT_OPEN, [0, 0, -1, -1, 0, 0]),
    );
    // Invalid magic numbers: even where allowed, this could never reboot anything.
    report(&mut out, "reboot", sys(nr::REBOOT, [0, 0, 0, 0, 0, 0]));
    let empty = c"";
    report(
        &mut out,
        "finit_module",
        sys(nr::FINIT_MODULE, [-1, empty.as_ptr() as i64, 0, 0, 0, 0]),
    );
    report(
        &mut out,
        "socket(AF_VSOCK)",
        sys(nr::SOCKET, [AF_VSOCK, SOCK_STREAM, 0, 0, 0, 0]),
    );
}
