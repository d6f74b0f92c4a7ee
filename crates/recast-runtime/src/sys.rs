//! The kernel calls the runtime needs that the standard library lacks: network namespaces,
//! mounts, `setns` for connecting into an instance, and reaping exited instances.
//!
//! This is the only module with `unsafe`; each call is a plain syscall on valid, owned buffers.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Create a network namespace with only loopback, up, and pin it at `path` (a bind mount, as
/// `ip netns add` does). Runs on a throwaway thread: namespaces belong to threads.
pub fn create_netns(path: &Path) -> io::Result<()> {
    File::create(path)?;
    let target = cstr(path)?;
    std::thread::spawn(move || -> io::Result<()> {
        // SAFETY: unshare only changes this thread's namespaces; the thread ends right after.
        check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
        loopback_up()?;
        let src = CString::new("/proc/thread-self/ns/net").unwrap_or_default();
        // SAFETY: both paths are valid NUL-terminated strings; no data argument.
        check(unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        })
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Pin the network namespace of process `pid` at `path` (an existing file), as `create_netns`
/// pins a new one: for namespaces runc created (inside an instance's user namespace).
pub fn pin_netns(pid: i32, path: &Path) -> io::Result<()> {
    let src = CString::new(format!("/proc/{pid}/ns/net")).unwrap_or_default();
    let target = cstr(path)?;
    // SAFETY: both paths are valid NUL-terminated strings; no data argument.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: fd is a socket and ifr a valid ifreq for both ioctls.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            Err(io::Error::last_os_error())
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            check(libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr))
        }
    };
    // SAFETY: fd came from socket(2) above.
    unsafe { libc::close(fd) };
    result
}

/// Detach the mount at `path` (a namespace pin or an overlay); no error if nothing is mounted.
pub fn unmount(path: &Path) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: valid path string.
    match check(unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) }) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(()),
        r => r,
    }
}

/// Mount an overlay of `lower` (read-only, shared) and `upper`/`work` (this instance's) at `merged`.
pub fn mount_overlay(
    lowers: &[std::path::PathBuf],
    upper: &Path,
    work: &Path,
    merged: &Path,
) -> io::Result<()> {
    let lowers: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    // No redirects or metadata-only copies: the upper directory must hold whole files and
    // whole renamed directories, so that it can be read as a layer.
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    if opts.len() >= 4096 {
        return Err(io::Error::other(format!(
            "{} layers are more than one overlay mount can take",
            lowers.len()
        )));
    }
    let opts = CString::new(opts)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let (src, fstype, target) = (
        CString::new("overlay").unwrap_or_default(),
        CString::new("overlay").unwrap_or_default(),
        cstr(merged)?,
    );
    // SAFETY: all strings are valid and NUL-terminated; opts is the data argument overlayfs expects.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    })
}

/// Connect to `addr` from inside the network namespace pinned at `netns`. The socket stays in
/// that namespace; the thread that made it ends.
pub fn connect_in(netns: &Path, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let ns = File::open(netns)?;
    std::thread::spawn(move || {
        // SAFETY: ns is an open namespace file; setns only affects this short-lived thread.
        check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
        TcpStream::connect_timeout(&addr, timeout)
    })
    .join()
    .map_err(|_| io::Error::other("the connect thread panicked"))?
}

/// Make this process the reaper of orphaned descendants, so that instances (whose `runc`
/// parent exits at once) are our children and we learn their exit status.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: a prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })
}

/// What `waitpid(pid, WNOHANG)` says about one of our children.
pub enum Child {
    Running,
    Exited(i32),
    /// Not our child (started by another process), or already reaped.
    NotOurs,
}

pub fn try_wait(pid: i32) -> Child {
    let mut status = 0;
    // SAFETY: waitpid on a specific pid with a valid status pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r == 0 {
        Child::Running
    } else if r < 0 {
        Child::NotOurs
    } else if libc::WIFEXITED(status) {
        Child::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Child::Exited(128 + libc::WTERMSIG(status))
    } else {
        Child::Running
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Send `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill(2) with integer arguments.
    check(unsafe { libc::kill(pid, sig) })
}

/// This process's hard limit on open files: an instance may not get more.
pub fn nofile_hard_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_max
    } else {
        1024
    }
}
