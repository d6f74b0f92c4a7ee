//! Project networks as the engine keeps them: every service of a project has an address on its
//! project's network where the data plane listens on the service's port and forwards through
//! the service's routing table (the one its routes use: splits, drains, counters); every
//! private instance resolves the project's service names to those addresses.

use super::*;
use recast_runtime::Attach;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

impl Ctl {
    /// Give every service of `project` (`services`, all of them) its address and have the data
    /// plane listen there; with no services, the project's network goes. Remembers the names
    /// the project's instances resolve.
    pub(crate) async fn sync_network(
        &self,
        project: &str,
        services: &[Service],
    ) -> Result<(), String> {
        let plane_key = format!("{project}#network");
        if services.is_empty() {
            let plane = self.plane.clone();
            let failed = blocking(|| plane.set_routes(&plane_key, Vec::new()));
            lock(&self.networks).remove(project);
            let rt = self.rt.clone();
            let p = project.to_string();
            return tokio::task::spawn_blocking(move || rt.remove_network(&p))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
                .and(failed);
        }
        let rt = self.rt.clone();
        let (p, names) = (
            project.to_string(),
            services.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        );
        let (netns, addrs) = tokio::task::spawn_blocking(move || {
            let net = rt.network(&p)?;
            let addrs = names
                .iter()
                .map(|n| Ok((n.clone(), rt.service_address(&p, n)?)))
                .collect::<recast_runtime::Result<BTreeMap<String, Ipv4Addr>>>()?;
            Ok::<_, recast_runtime::Error>((net.netns, addrs))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the network of project {project}: {e}"))?;
        let listeners = services
            .iter()
            .map(|s| dp::RouteState {
                key: key(project, &format!("{}@network", s.name)),
                listen: SocketAddr::new(IpAddr::V4(addrs[&s.name]), s.port),
                service: key(project, &s.name),
                // As a route without a `timeout`: how long an instance may take to answer.
                timeout_ms: recast_proxy::UPSTREAM_TIMEOUT.as_millis() as u64,
                protocol: s.internal_protocol(),
                netns: Some(netns.clone()),
                allow: s.allow_from.as_ref().map(|from| {
                    from.iter()
                        .filter_map(|n| addrs.get(n))
                        .map(|a| {
                            let [x, y, s, _] = a.octets();
                            (IpAddr::V4(Ipv4Addr::new(x, y, s, 0)), 24)
                        })
                        .collect()
                }),
                resolves_outside: s.egress != recast_spec::Egress::None,
            })
            .collect();
        let plane = self.plane.clone();
        let served = blocking(|| plane.set_routes(&plane_key, listeners));
        lock(&self.networks).insert(project.to_string(), addrs.into_iter().collect());
        served
    }

    /// The project network an instance of `service` joins (private network only).
    pub(crate) fn attach_for(&self, project: &str, service: &Service) -> Option<Attach> {
        if service.network != recast_spec::Network::Private {
            return None;
        }
        let hosts = lock(&self.networks).get(project)?.clone();
        Some(Attach {
            project: project.to_string(),
            service: service.name.clone(),
            hosts,
            egress: service.egress.clone(),
        })
    }

    /// Every project's network as its live releases say (after a restart, or services
    /// destroyed); a network whose project has nothing live goes. `only`: just that project.
    pub(crate) async fn recall_networks(&self, only: Option<&str>) -> Vec<String> {
        let mut by_project: BTreeMap<String, Vec<Service>> = BTreeMap::new();
        let mut notes = Vec::new();
        let services = match self.state.all_services() {
            Ok(s) => s,
            Err(e) => return vec![format!("reading the services: {e}")],
        };
        for (p, s) in services {
            if !self.restoring(only, &p) {
                continue;
            }
            let live = self.state.current(&p, &s).map_err(|e| e.to_string());
            match live.and_then(|cur| cur.map(|c| Run::from_row(&c)).transpose()) {
                Ok(Some(run)) => by_project.entry(p).or_default().push(run.service),
                Ok(None) => {}
                Err(e) => notes.push(format!("{p}/{s}: {e}")),
            }
        }
        // A network of a project this host does not act for goes too.
        for p in self.rt.networks() {
            if only.is_none_or(|o| o == p) {
                by_project.entry(p).or_default();
            }
        }
        if let Some(o) = only {
            by_project.entry(o.to_string()).or_default();
        }
        for (project, services) in by_project {
            if let Err(e) = self.sync_network(&project, &services).await {
                notes.push(e);
            }
        }
        notes
    }
}
