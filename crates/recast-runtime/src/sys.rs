//! The kernel calls the runtime needs that the standard library lacks: network namespaces,
//! mounts, `setns` for connecting into an instance, and reaping exited instances.
//!
//! This is the only module with `unsafe`; each call is a plain syscall on valid, owned buffers.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
/// `volatile` skips the filesystem sync of the upper directory at unmount: only for mounts whose
/// upper directory is never used again after a crash (build steps).
pub fn mount_overlay(
    lowers: &[std::path::PathBuf],
    upper: &Path,
    work: &Path,
    merged: &Path,
    volatile: bool,
) -> io::Result<()> {
    let lowers: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    // No redirects or metadata-only copies: the upper directory must hold whole files and
    // whole renamed directories, so that it can be read as a layer.
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off{}",
        lowers.join(":"),
        upper.display(),
        work.display(),
        if volatile { ",volatile" } else { "" }
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
///
/// Only the socket is made inside the namespace (a socket stays in the namespace it was made in),
/// by one long-lived thread that does nothing else: starting a thread per connection (every
/// health probe, every proxied connection) cost more than the connection itself.
pub fn connect_in(netns: &Path, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let ns = File::open(netns)?;
    if let SocketAddr::V4(v4) = addr {
        return connect_timeout(socket_in(ns, libc::SOCK_STREAM)?, v4, timeout);
    }
    std::thread::spawn(move || {
        // SAFETY: ns is an open namespace file; setns only affects this short-lived thread.
        check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
        TcpStream::connect_timeout(&addr, timeout)
    })
    .join()
    .map_err(|_| io::Error::other("the connect thread panicked"))?
}

type SocketRequest = (
    File,
    libc::c_int,
    std::sync::mpsc::SyncSender<io::Result<OwnedFd>>,
);

/// An IPv4 TCP socket made in the network namespace pinned at `netns` (to listen there).
pub fn tcp_socket_in(netns: &Path) -> io::Result<OwnedFd> {
    socket_in(File::open(netns)?, libc::SOCK_STREAM)
}

/// An IPv4 UDP socket made in the network namespace pinned at `netns`.
pub fn udp_socket_in(netns: &Path) -> io::Result<OwnedFd> {
    socket_in(File::open(netns)?, libc::SOCK_DGRAM)
}

/// An IPv4 socket of `kind` (`SOCK_STREAM`, `SOCK_DGRAM`) made in the network namespace `ns` by
/// the socket thread.
fn socket_in(ns: File, kind: libc::c_int) -> io::Result<OwnedFd> {
    use std::sync::mpsc;
    static THREAD: std::sync::Mutex<Option<mpsc::Sender<SocketRequest>>> =
        std::sync::Mutex::new(None);
    let (reply, answer) = mpsc::sync_channel(1);
    {
        let mut t = THREAD.lock().unwrap_or_else(|p| p.into_inner());
        let mut req = (ns, kind, reply);
        for _ in 0..2 {
            let sender = match t.as_ref() {
                Some(s) => s.clone(),
                None => {
                    let s = socket_thread()?;
                    *t = Some(s.clone());
                    s
                }
            };
            match sender.send(req) {
                Ok(()) => break,
                // The thread is gone (it never exits on its own): start another.
                Err(mpsc::SendError(r)) => {
                    req = r;
                    *t = None;
                }
            }
        }
    }
    answer
        .recv()
        .map_err(|_| io::Error::other("the network namespace socket thread stopped"))?
}

fn socket_thread() -> io::Result<std::sync::mpsc::Sender<SocketRequest>> {
    let (tx, rx) = std::sync::mpsc::channel::<SocketRequest>();
    // The host's namespace, returned to after each socket so that no instance's namespace is
    // kept alive by this thread.
    let home = File::open("/proc/thread-self/ns/net")?;
    std::thread::Builder::new()
        .name("recast-netns".into())
        .spawn(move || {
            for (ns, kind, reply) in rx {
                let made = (|| {
                    // SAFETY: ns is an open namespace file; setns affects only this thread,
                    // which does nothing but make sockets.
                    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
                    // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
                    let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0) };
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                })();
                // SAFETY: home is an open namespace file.
                if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    // Stuck in another namespace: this thread ends, the next call starts another.
                    let _ = reply.send(made);
                    return;
                }
                let _ = reply.send(made);
            }
        })?;
    Ok(tx)
}

/// Connect the socket `fd` to `addr` within `timeout` (as `TcpStream::connect_timeout` does).
fn connect_timeout(
    fd: OwnedFd,
    addr: std::net::SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let s = TcpStream::from(fd);
    s.set_nonblocking(true)?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sa is a valid sockaddr_in and its size is given.
    let r = unsafe {
        libc::connect(
            s.as_raw_fd(),
            (&raw const sa).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection timed out",
                ));
            }
            let mut p = libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n > 0 {
                break;
            }
        }
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
    }
    s.set_nonblocking(false)?;
    Ok(s)
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

/// Start `c`'s process with umask `mask`. runc makes the directories an instance's mounts need
/// (a secret file's parent, say) before it applies the spec's umask, so with recast's own 0077
/// they would be closed to the instance's other users.
pub fn child_umask(c: &mut std::process::Command, mask: u32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: `umask` is async-signal-safe, cannot fail and touches no memory.
    unsafe {
        c.pre_exec(move || {
            libc::umask(mask as libc::mode_t);
            Ok(())
        });
    }
}
