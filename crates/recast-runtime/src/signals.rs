//! Waiting for SIGINT/SIGTERM on a thread, for commands that run in the foreground.
#![allow(unsafe_code)]

use std::sync::mpsc;

/// Block SIGINT and SIGTERM in this thread and every thread started after, and deliver them
/// on the returned channel instead. Call before starting other threads.
pub fn forward() -> mpsc::Receiver<i32> {
    // SAFETY: sigset_t is plain data; the calls get valid pointers to it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        loop {
            let mut sig = 0;
            // SAFETY: `set` is initialised; `sig` is a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 && tx.send(sig).is_err() {
                return;
            }
        }
    });
    rx
}
