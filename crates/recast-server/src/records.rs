//! What the state store says of deployed services, read without an engine: the history a
//! server answers at `GET /v1/history`, and what `recast history` and `recast status` show from
//! the recorded state when no server runs.

use crate::api::wire;
use recast_api::v1;
use recast_state::State;

/// The project of the recorded service `service`: `project` names it exactly, or `@ENV` (its
/// project in that environment); without it, the one project that has such a service. A
/// service destroyed since (no current release) is found through its project's routes.
pub fn project_of(state: &State, project: Option<&str>, service: &str) -> Result<String, String> {
    let wanted = |p: &str| crate::plan::names_project(project, p);
    let mut found: Vec<String> = state
        .all_services()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(p, s)| s == service && wanted(p))
        .map(|(p, _)| p)
        .collect();
    if found.is_empty() {
        let routes = state.routes().map_err(|e| e.to_string())?;
        found = routes
            .into_iter()
            .filter(|r| r.service == service && wanted(&r.project))
            .map(|r| r.project)
            .filter(|p| state.releases(p, service).is_ok_and(|r| !r.is_empty()))
            .collect();
        found.dedup();
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("no service \"{service}\" is recorded")),
        many => Err(format!(
            "service \"{service}\" exists in several projects ({}); choose one with --env ENV",
            many.join(", ")
        )),
    }
}

/// Every release, rollout and analysis verdict of a service, from the state store.
pub fn history(state: &State, project: &str, service: &str) -> Result<v1::History, String> {
    let e = |e: recast_state::Error| e.to_string();
    Ok(v1::History {
        project: project.to_string(),
        service: service.to_string(),
        releases: state
            .releases(project, service)
            .map_err(e)?
            .iter()
            .map(wire::release)
            .collect(),
        rollouts: state
            .rollouts(project, service)
            .map_err(e)?
            .iter()
            .map(wire::rollout)
            .collect(),
        verdicts: state
            .events_of(project, service, "analysis.verdict")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| serde_json::from_str(&e.message).ok())
            .collect(),
    })
}

/// The recorded services (`service`: only those of that name) with their current release:
/// no instances, health or traffic — those are a running server's to tell.
pub fn status(state: &State, service: Option<&str>) -> Result<v1::Status, String> {
    let e = |e: recast_state::Error| e.to_string();
    let mut services = Vec::new();
    for (project, name) in state.all_services().map_err(e)? {
        if service.is_some_and(|s| s != name) {
            continue;
        }
        let current = state.current(&project, &name).map_err(e)?;
        services.push(v1::ServiceStatus {
            project: project.clone(),
            service: name,
            current_release: current.as_ref().map(|r| r.number),
            image: current.as_ref().map(|r| r.image.clone()),
            digest: current.map(|r| r.digest),
            rollout: None,
            paused: false,
            verdicts: Vec::new(),
            drift: Vec::new(),
            instances: Vec::new(),
            traffic: Vec::new(),
        });
    }
    let routes = state
        .routes()
        .map_err(e)?
        .into_iter()
        .map(wire::route_status)
        .collect();
    Ok(v1::Status {
        services,
        routes,
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    })
}
