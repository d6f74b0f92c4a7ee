//! What the control plane and the data plane say to each other over `dataplane.sock`: one JSON
//! object per line, a request then its reply, on connections local to the machine (mode 0600).
//!
//! The control plane always sends the *whole* desired state of what it changes (a service's
//! routing, a project's routes, a preview), never a delta, so a message lost with a crashed
//! control plane leaves nothing half-applied and a restarted one converges by sending again.

pub use recast_api::v1::RouteProtocol;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Bumped when a message changes meaning; a peer with another version is replaced (handoff).
pub const PROTOCOL: u32 = 2;

/// The longest line either side reads: a whole project's state fits many times over.
pub const MAX_LINE: usize = 16 << 20;

/// How to reach an instance's port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// Inside the network namespace pinned at `path`, on 127.0.0.1.
    Netns { path: PathBuf },
    /// The host's 127.0.0.1.
    Host,
}

/// One instance traffic may go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub id: String,
    pub release: i64,
    pub target: Target,
    pub port: u16,
}

/// A release's share of a service's traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub release: i64,
    /// Explicit weight (a canary split); `None`: as many as the group's live backends.
    pub weight: Option<u32>,
    /// Backend ids, all of them in [`ServiceState::backends`].
    pub backends: Vec<String>,
}

/// How the data plane checks, on its own, that an instance still accepts connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failed connects that take an instance out of rotation.
    pub threshold: u32,
}

/// Everything about one service's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    /// `project/service`.
    pub key: String,
    /// For messages.
    pub name: String,
    pub backends: Vec<Backend>,
    /// The routing table: groups of active, healthy instances per release.
    pub groups: Vec<Group>,
    /// While nothing can serve: the answer requests get (503).
    pub unavailable: Option<String>,
    pub sticky: bool,
    pub liveness: Liveness,
}

/// One listening route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteState {
    /// `project/route`.
    pub key: String,
    pub listen: SocketAddr,
    /// The service key it forwards to.
    pub service: String,
    pub timeout_ms: u64,
    /// HTTP (requests) or TCP (connections passed through); an older control plane does not
    /// say, and its routes are HTTP.
    #[serde(default)]
    pub protocol: RouteProtocol,
    /// Listen inside this network namespace (a project network) instead of the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Accept only clients from these networks (address, prefix length); `None`: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<(std::net::IpAddr, u8)>>,
    /// In a project network: the route's service may resolve names outside the project (it
    /// has egress); its instances are the /24 of the route's address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resolves_outside: bool,
}

/// A blue/green preview: the new release's instances on their own address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewState {
    pub listen: SocketAddr,
    pub release: i64,
    /// Backend ids of the service.
    pub backends: Vec<String>,
}

/// A release's traffic counters so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub requests: u64,
    pub errors_5xx: u64,
    pub connect_failures: u64,
    pub latency: Vec<u64>,
    /// Sum of the recorded latencies, in microseconds (absent from older data planes).
    #[serde(default)]
    pub latency_sum_us: u64,
}

impl From<recast_proxy::Snapshot> for Counters {
    fn from(s: recast_proxy::Snapshot) -> Counters {
        Counters {
            requests: s.requests,
            errors_5xx: s.errors_5xx,
            connect_failures: s.connect_failures,
            latency: s.latency.to_vec(),
            latency_sum_us: s.latency_sum_us,
        }
    }
}

impl From<&Counters> for recast_proxy::Snapshot {
    fn from(c: &Counters) -> recast_proxy::Snapshot {
        let mut latency = recast_proxy::Snapshot::default().latency;
        for (slot, v) in latency.iter_mut().zip(&c.latency) {
            *slot = *v;
        }
        recast_proxy::Snapshot {
            requests: c.requests,
            errors_5xx: c.errors_5xx,
            connect_failures: c.connect_failures,
            latency,
            latency_sum_us: c.latency_sum_us,
        }
    }
}

/// The whole configuration a data plane holds (what a handoff carries).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub services: Vec<ServiceState>,
    /// Per project, its routes.
    pub routes: BTreeMap<String, Vec<RouteState>>,
    /// Per service key, its preview.
    pub previews: BTreeMap<String, PreviewState>,
}

impl Config {
    /// Nothing listens and no instance is configured: no data plane is needed.
    pub fn is_idle(&self) -> bool {
        self.routes.values().all(Vec::is_empty)
            && self.previews.is_empty()
            && self.services.iter().all(|s| s.backends.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Hello,
    /// Replace a service's routing.
    SetService {
        service: ServiceState,
    },
    /// Replace a project's routes: new ones listen, gone ones close, others keep listening.
    SetRoutes {
        project: String,
        routes: Vec<RouteState>,
    },
    /// Open, replace or (`None`) close a service's preview.
    SetPreview {
        service: String,
        preview: Option<PreviewState>,
    },
    /// Wait until no request is in flight on a backend out of rotation (or `timeout_ms`).
    Drain {
        service: String,
        backend: String,
        timeout_ms: u64,
    },
    /// Traffic counters of every release of a service.
    Metrics {
        service: String,
    },
    /// The whole configuration.
    Config,
    /// A newer data plane takes over: the reply carries the configuration, the route
    /// listeners follow on the same connection (SCM_RIGHTS), then this one drains and exits.
    Handoff,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        protocol: u32,
        pid: u32,
        /// Identity of the executable it runs (device, inode, size, mtime).
        exe: String,
        /// When it started serving, ms since the epoch.
        since_ms: u64,
    },
    Ok,
    /// Routes that could not listen, each with why.
    Routes {
        failed: Vec<String>,
    },
    Drained {
        drained: bool,
    },
    /// Per release (a list: JSON map keys are strings, and a tagged enum cannot read them as
    /// numbers).
    Metrics {
        releases: Vec<(i64, Counters)>,
    },
    Config {
        config: Config,
    },
    /// Handoff: the configuration, then `listeners` (route key, number of fds) in fd order.
    Handoff {
        config: Config,
        listeners: Vec<(String, usize)>,
    },
    Error {
        message: String,
    },
}

/// Write one message as a line.
pub fn write_msg<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Read one message (a line of at most [`MAX_LINE`] bytes); `None` at a clean end.
pub fn read_msg<T: serde::de::DeserializeOwned>(r: &mut impl BufRead) -> io::Result<Option<T>> {
    let mut line = Vec::new();
    let n = Read::take(&mut *r, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE {
        return Err(io::Error::other(format!(
            "a message over {MAX_LINE} bytes on the data plane's socket"
        )));
    }
    serde_json::from_slice(&line).map(Some).map_err(|e| {
        io::Error::other(format!(
            "a malformed message on the data plane's socket: {e}"
        ))
    })
}

/// The identity of the running executable: a different binary (an upgrade) differs.
pub fn exe_identity() -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self/exe") {
        Ok(m) => format!("{}:{}:{}:{}", m.dev(), m.ino(), m.size(), m.mtime()),
        Err(_) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message reads back as written (a tagged enum cannot read everything serde writes).
    #[test]
    fn every_message_round_trips_through_a_line() {
        let backend = Backend {
            id: "web-r1-1".into(),
            release: 1,
            target: Target::Netns {
                path: "/d/instances/web-r1-1/netns".into(),
            },
            port: 8080,
        };
        let service = ServiceState {
            key: "p/web".into(),
            name: "web".into(),
            backends: vec![backend],
            groups: vec![Group {
                release: 1,
                weight: Some(90),
                backends: vec!["web-r1-1".into()],
            }],
            unavailable: Some("starting".into()),
            sticky: true,
            liveness: Liveness {
                interval_ms: 1000,
                timeout_ms: 500,
                threshold: 3,
            },
        };
        let route = RouteState {
            key: "p/web".into(),
            listen: "127.0.0.1:8080".parse().expect("addr"),
            service: "p/web".into(),
            timeout_ms: 30_000,
            protocol: RouteProtocol::Tcp,
            netns: None,
            allow: None,
            resolves_outside: false,
        };
        let internal = RouteState {
            key: "p/api@network".into(),
            listen: "10.89.1.1:8080".parse().expect("addr"),
            netns: Some("/d/networks/p/netns".into()),
            allow: Some(vec![("10.89.2.0".parse().expect("ip"), 24)]),
            resolves_outside: true,
            ..route.clone()
        };
        let config = Config {
            services: vec![service.clone()],
            routes: BTreeMap::from([("p".into(), vec![route.clone()])]),
            previews: BTreeMap::from([(
                "p/web".into(),
                PreviewState {
                    listen: "127.0.0.1:9090".parse().expect("addr"),
                    release: 2,
                    backends: vec!["web-r2-1".into()],
                },
            )]),
        };
        let requests = vec![
            Request::Hello,
            Request::SetService { service },
            Request::SetRoutes {
                project: "p".into(),
                routes: vec![route],
            },
            Request::SetRoutes {
                project: "p#network".into(),
                routes: vec![internal],
            },
            Request::Drain {
                service: "p/web".into(),
                backend: "web-r1-1".into(),
                timeout_ms: 5,
            },
            Request::Metrics {
                service: "p/web".into(),
            },
            Request::Config,
            Request::Handoff,
        ];
        for r in requests {
            let mut line = Vec::new();
            write_msg(&mut line, &r).expect("write");
            let back: Request = read_msg(&mut &line[..]).expect("read").expect("a message");
            assert_eq!(back, r);
        }
        let replies = vec![
            Reply::Metrics {
                releases: vec![(1, Counters::default()), (2, Counters::default())],
            },
            Reply::Config {
                config: config.clone(),
            },
            Reply::Handoff {
                config,
                listeners: vec![("p/web".into(), 2)],
            },
            Reply::Routes {
                failed: vec!["route web: cannot listen".into()],
            },
            Reply::Drained { drained: true },
        ];
        for r in replies {
            let mut line = Vec::new();
            write_msg(&mut line, &r).expect("write");
            let back: Reply = read_msg(&mut &line[..]).expect("read").expect("a message");
            assert_eq!(back, r);
        }
    }

    #[test]
    fn a_route_from_an_older_control_plane_is_http() {
        let old = r#"{"key":"p/web","listen":"127.0.0.1:8080","service":"p/web","timeout_ms":5}"#;
        let r: RouteState = serde_json::from_str(old).expect("an older route reads");
        assert_eq!(r.protocol, RouteProtocol::Http);
        let tcp = serde_json::to_string(&RouteState {
            protocol: RouteProtocol::Tcp,
            ..r
        })
        .expect("json");
        assert!(tcp.contains(r#""protocol":"tcp""#), "{tcp}");
    }

    #[test]
    fn a_line_over_the_limit_or_malformed_is_an_error() {
        let long = vec![b'x'; MAX_LINE + 2];
        let e = read_msg::<Request>(&mut &long[..]).expect_err("a line over the limit");
        assert!(e.to_string().contains("over"), "{e}");
        let e =
            read_msg::<Request>(&mut &b"{\"op\":\"explode\"}\n"[..]).expect_err("an unknown op");
        assert!(e.to_string().contains("malformed"), "{e}");
    }
}
