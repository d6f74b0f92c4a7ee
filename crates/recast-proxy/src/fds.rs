//! Passing descriptors (listening sockets) between processes over a Unix stream socket
//! (`SCM_RIGHTS`), with a payload describing them.
//!
//! A message is a 4-byte little-endian payload length, then the payload; the descriptors ride on
//! the message's first bytes. Both ends must use blocking sockets (the data plane's handoff is
//! a short, one-off exchange).

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// The largest payload sent or accepted.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The most descriptors in one message (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

/// Send `payload` (at most `MAX_PAYLOAD` bytes) and `fds` (at most `MAX_FDS`) over `sock`.
pub fn send_fds(sock: &UnixStream, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if payload.len() > MAX_PAYLOAD {
        return Err(invalid(format!(
            "a payload of {} bytes is more than the {MAX_PAYLOAD} that may be sent with descriptors",
            payload.len()
        )));
    }
    if fds.len() > MAX_FDS {
        return Err(invalid(format!(
            "{} descriptors are more than the {MAX_FDS} one message may carry",
            fds.len()
        )));
    }
    let len = (payload.len() as u32).to_le_bytes();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "descriptors do not fit their control buffer",
        ));
    }
    let iov = [IoSlice::new(&len), IoSlice::new(payload)];
    let sent = loop {
        match rustix::net::sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r.map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?,
        }
    };
    // The descriptors went with the first bytes; the rest of a long payload follows plainly.
    let rest: Vec<u8> = len.iter().chain(payload).skip(sent).copied().collect();
    (&*sock).write_all(&rest)
}

/// Receive one message sent by `send_fds`: its payload and descriptors (close-on-exec). More
/// than `max_fds` descriptors, or a payload over `MAX_PAYLOAD`, is an error.
pub fn recv_fds(sock: &UnixStream, max_fds: usize) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let max_fds = max_fds.min(MAX_FDS);
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds.max(1)))];
    let mut fds = Vec::new();
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut len[got..])];
        let msg = match rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        {
            Err(rustix::io::Errno::INTR) => continue,
            r => r.map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?,
        };
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = m {
                fds.extend(received);
            }
        }
        // The control buffer is rounded up to its alignment, so it may hold a few more.
        if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > max_fds {
            return Err(invalid(format!(
                "the peer sent more than the {max_fds} descriptors expected"
            )));
        }
        if msg.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the socket before a whole message with descriptors",
            ));
        }
        got += msg.bytes;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer announced a payload of {len} bytes, more than {MAX_PAYLOAD}"),
        ));
    }
    let mut payload = vec![0u8; len];
    (&*sock).read_exact(&mut payload)?;
    Ok((payload, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_listening_socket_passes_to_the_other_end_and_accepts_there() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let payload = vec![7u8; 200_000];
        send_fds(&a, &payload, &[listener.as_fd()]).expect("send");
        drop(listener);
        let (got, fds) = recv_fds(&b, 4).expect("receive");
        assert_eq!(got, payload, "payload changed on the way");
        assert_eq!(fds.len(), 1, "descriptors received");
        let flags = rustix::io::fcntl_getfd(&fds[0]).expect("getfd");
        assert!(
            flags.contains(rustix::io::FdFlags::CLOEXEC),
            "not close-on-exec"
        );
        let received = std::net::TcpListener::from(fds.into_iter().next().expect("fd"));
        assert_eq!(received.local_addr().expect("addr"), addr);
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        let (mut server, _) = received.accept().expect("accept on the received socket");
        client.write_all(b"hello").expect("write");
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn too_many_descriptors_or_a_closed_peer_are_errors() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        send_fds(&a, b"two", &[l1.as_fd(), l2.as_fd()]).expect("send");
        let err = recv_fds(&b, 1).expect_err("two descriptors where one was expected");
        assert!(err.to_string().contains("more than the 1"), "{err}");
        let too_big = vec![0u8; MAX_PAYLOAD + 1];
        let err = send_fds(&a, &too_big, &[]).expect_err("payload over the bound");
        assert!(err.to_string().contains("bytes is more than"), "{err}");
        drop(a);
        // What is left of the first message, then the end.
        let mut rest = [0u8; 3];
        (&b).read_exact(&mut rest).expect("rest of the payload");
        let err = recv_fds(&b, 1).expect_err("peer closed");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }
}
