//! The resolver of a project network: on the gateway's port 53 (UDP) inside the project's
//! namespace, it answers the names of the project's services with their addresses and passes
//! every other question to the egress resolver (slirp4netns's), or answers SERVFAIL when there
//! is none. Instances name it in their `/etc/resolv.conf`, so a service name never leaves the
//! machine and resolves even for programs that ask DNS before `/etc/hosts`.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::UdpSocket;

/// Where the resolver listens: the project network's gateway.
pub const LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(recast_runtime::GATEWAY), 53);
/// Where other questions go: the resolver of the project's egress (slirp4netns).
const UPSTREAM: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 0, 2, 3)), 53);
/// How long a question passed upstream may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long clients may keep an answer about a service (its address never changes).
const TTL: u32 = 60;
/// Most questions passed upstream at once (each holds a socket).
const MAX_FORWARDING: usize = 64;

/// What the resolver knows, changed in place when the project's services change.
#[derive(Debug, Default)]
pub struct Known {
    /// Service names and their addresses.
    pub names: HashMap<String, Ipv4Addr>,
    /// The addresses of the services whose instances (the /24 of the address) may resolve
    /// names outside the project: those with egress.
    pub outside: Vec<Ipv4Addr>,
}

impl Known {
    fn may_resolve_outside(&self, client: SocketAddr) -> bool {
        let std::net::IpAddr::V4(c) = client.ip() else {
            return false;
        };
        self.outside
            .iter()
            .any(|a| a.octets()[..3] == c.octets()[..3])
    }
}

pub type Names = Arc<RwLock<Known>>;

/// A running resolver; it stops when dropped.
pub struct Resolver {
    pub names: Names,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP socket made in the namespace at `netns`, bound to `addr` (`SO_REUSEPORT`: a newer data
/// plane binds beside this one during a handoff).
fn bound_in(netns: &Path, addr: Option<SocketAddr>) -> io::Result<UdpSocket> {
    let fd: OwnedFd = recast_runtime::udp_socket_in(netns)?;
    let std = std::net::UdpSocket::from(fd);
    if let Some(addr) = addr {
        rustix::net::sockopt::set_socket_reuseport(&std, true)?;
        rustix::net::bind(&std, &addr)?;
    } else {
        rustix::net::bind(&std, &SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    }
    std.set_nonblocking(true)?;
    UdpSocket::from_std(std)
}

impl Resolver {
    /// Answer on [`LISTEN`] inside the namespace at `netns`. Must be called inside a runtime.
    pub fn start(netns: &Path, names: Known) -> io::Result<Resolver> {
        let socket = Arc::new(bound_in(netns, Some(LISTEN))?);
        let names: Names = Arc::new(RwLock::new(names));
        let (n, ns) = (names.clone(), netns.to_path_buf());
        let task = tokio::spawn(async move { serve(socket, n, ns).await });
        Ok(Resolver { names, task })
    }
}

async fn serve(socket: Arc<UdpSocket>, names: Names, netns: std::path::PathBuf) {
    let forwarding = Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDING));
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let query = &buf[..n];
        let Some(q) = Question::parse(query) else {
            continue;
        };
        let (known, outside) = {
            let k = names.read().unwrap_or_else(|p| p.into_inner());
            (k.names.get(&q.name).copied(), k.may_resolve_outside(peer))
        };
        if let Some(addr) = known {
            let _ = socket.send_to(&answer(query, &q, addr), peer).await;
            continue;
        }
        // Without egress, a name outside the project is not looked up (no way out, not even
        // through questions): REFUSED. Too many questions upstream at once: SERVFAIL.
        let permit = forwarding.clone().try_acquire_owned();
        let Some(permit) = permit.ok().filter(|_| outside) else {
            let rcode = if outside { 2 } else { 5 };
            let _ = socket.send_to(&failure(query, &q, rcode), peer).await;
            continue;
        };
        let (socket, query, ns) = (socket.clone(), query.to_vec(), netns.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let reply = match forward(&ns, &query).await {
                Some(r) => r,
                None => failure(&query, &q, 2),
            };
            let _ = socket.send_to(&reply, peer).await;
        });
    }
}

/// The upstream's answer to `query`, or `None` when there is none in time.
async fn forward(netns: &Path, query: &[u8]) -> Option<Vec<u8>> {
    let s = bound_in(netns, None).ok()?;
    s.send_to(query, UPSTREAM).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, s.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        // Only the upstream's answer to this very question.
        if from == UPSTREAM && n >= 2 && buf[..2] == query[..2] {
            return Some(buf[..n].to_vec());
        }
    }
}

/// The one question of a standard query.
#[derive(Debug, PartialEq, Eq)]
struct Question {
    /// Lowercase, without the root's dot.
    name: String,
    qtype: u16,
    /// Where the question section ends.
    end: usize,
}

impl Question {
    fn parse(m: &[u8]) -> Option<Question> {
        if m.len() < 12 {
            return None;
        }
        let flags = u16::from_be_bytes([m[2], m[3]]);
        let qdcount = u16::from_be_bytes([m[4], m[5]]);
        // A query (QR 0), opcode QUERY, exactly one question.
        if flags & 0x8000 != 0 || (flags >> 11) & 0xF != 0 || qdcount != 1 {
            return None;
        }
        let mut i = 12;
        let mut labels = Vec::new();
        loop {
            let len = *m.get(i)? as usize;
            i += 1;
            if len == 0 {
                break;
            }
            // No compression in a question; labels at most 63 bytes, names at most 255.
            if len > 63 || i + len > m.len() || i > 12 + 255 {
                return None;
            }
            labels.push(String::from_utf8_lossy(&m[i..i + len]).to_ascii_lowercase());
            i += len;
        }
        let qtype = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
        let _class = u16::from_be_bytes([*m.get(i + 2)?, *m.get(i + 3)?]);
        Some(Question {
            name: labels.join("."),
            qtype,
            end: i + 4,
        })
    }
}

/// The header and question of a reply to `query` with `rcode` and `answers` answers.
fn reply_head(query: &[u8], q: &Question, rcode: u16, answers: u16) -> Vec<u8> {
    let rd = u16::from_be_bytes([query[2], query[3]]) & 0x0100;
    // QR, AA, RD as asked, RA.
    let flags = 0x8000 | 0x0400 | rd | 0x0080 | rcode;
    let mut r = Vec::with_capacity(q.end + 16);
    r.extend_from_slice(&query[..2]);
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&answers.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&query[12..q.end]);
    r
}

/// The answer about a service's name: its address for A, no data for any other type.
fn answer(query: &[u8], q: &Question, addr: Ipv4Addr) -> Vec<u8> {
    const A: u16 = 1;
    if q.qtype != A {
        return reply_head(query, q, 0, 0);
    }
    let mut r = reply_head(query, q, 0, 1);
    // The name by a pointer to the question's, type A, class IN, TTL, 4 bytes of address.
    r.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
    r.extend_from_slice(&TTL.to_be_bytes());
    r.extend_from_slice(&4u16.to_be_bytes());
    r.extend_from_slice(&addr.octets());
    r
}

fn failure(query: &[u8], q: &Question, rcode: u16) -> Vec<u8> {
    reply_head(query, q, rcode, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn a_service_name_is_answered_with_its_address() {
        let q = query("Api", 1);
        let parsed = Question::parse(&q).expect("a query");
        assert_eq!(parsed.name, "api");
        let r = answer(&q, &parsed, Ipv4Addr::new(10, 89, 1, 1));
        assert_eq!(&r[..2], &[0x12, 0x34], "same id");
        assert_eq!(r[3] & 0x0F, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 89, 1, 1]);
        // AAAA: no data, no error.
        let q6 = query("api", 28);
        let r6 = answer(
            &q6,
            &Question::parse(&q6).expect("a query"),
            Ipv4Addr::LOCALHOST,
        );
        assert_eq!(u16::from_be_bytes([r6[6], r6[7]]), 0);
        assert_eq!(r6.len(), q6.len());
    }

    #[test]
    fn malformed_questions_are_ignored() {
        let good = query("api", 1);
        for bad in [
            good[..11].to_vec(),
            good[..good.len() - 1].to_vec(),
            {
                let mut m = good.clone();
                m[12] = 0xC0; // a pointer in a question
                m
            },
            {
                let mut m = good.clone();
                m[2] |= 0x80; // a response, not a query
                m
            },
            {
                let mut m = good.clone();
                m[5] = 2; // two questions
                m
            },
        ] {
            assert_eq!(Question::parse(&bad), None, "{bad:?}");
        }
    }
}
