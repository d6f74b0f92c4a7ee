//! A recast route in front of fixed backends, for benchmarks: the same proxy code the server
//! runs, without instances. `route LISTEN BACKEND[=WEIGHT] [BACKEND[=WEIGHT]…]`; each backend
//! is its own release group (so `A=10 B=90` is a 10/90 canary split).

use recast_proxy::{Backend, Group, Route, Service, Table};
use std::sync::Arc;

// The route runs its own thread per core; this runtime only waits for Ctrl-C.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, backends) = args
        .split_first()
        .ok_or("usage: route LISTEN BACKEND[=WEIGHT]…")?;
    let svc = Service::new("bench");
    let mut groups = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        let (addr, weight) = match b.split_once('=') {
            Some((a, w)) => (a.to_string(), w.parse()?),
            None => (b.clone(), 1),
        };
        let target: std::net::SocketAddr = addr.parse()?;
        let connector: recast_proxy::Connector =
            Arc::new(move || std::net::TcpStream::connect(target));
        let release = i as i64 + 1;
        let backend = Backend::new(
            format!("b{release}"),
            release,
            connector,
            svc.metrics(release),
        );
        groups.push(Group {
            release,
            weight,
            backends: vec![backend],
        });
    }
    svc.set_table(Table { groups });
    let route = Route::bind(listen.parse()?, svc.clone()).await?;
    eprintln!("route listening on {}", route.addr);
    tokio::signal::ctrl_c().await.ok();
    for r in 1..=backends.len() as i64 {
        let m = svc.metrics(r).snapshot();
        eprintln!("release {r}: {} requests, {} 5xx", m.requests, m.errors_5xx);
    }
    Ok(())
}
