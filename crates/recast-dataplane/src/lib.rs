//! The data plane: one long-lived process per data directory (`recast dataplane`) that owns the
//! routes' listeners, the routing tables, the upstream connection pools and the traffic
//! counters. The control plane (`recast server`) configures it over `dataplane.sock` and
//! starts it when none answers; it is never a child that dies with the server, so a crash,
//! `kill -9` or restart of the control plane closes no listener and drops no request. While
//! the control plane is away it keeps the last tables and checks on its own that each instance
//! in rotation still accepts connections (one that stops is taken out).

pub mod client;
mod dns;
mod liveness;
mod plane;
pub mod proto;

pub use client::Client;
pub use plane::run;
