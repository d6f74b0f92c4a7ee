//! The engine's and the store's values as the API's types ([`recast_api::v1`]), field by field:
//! the store and the engine may grow fields without changing what the API answers.

use recast_api::v1;

pub fn release(r: &recast_state::Release) -> v1::Release {
    v1::Release {
        project: r.project.clone(),
        service: r.service.clone(),
        number: r.number,
        spec_hash: r.spec_hash.clone(),
        digest: r.digest.clone(),
        image: r.image.clone(),
        spec: r.spec.clone(),
        created_ms: r.created_ms,
        created_by: r.created_by.clone(),
        outcome: r.outcome,
        reason: r.reason.clone(),
        finished_ms: r.finished_ms,
    }
}

pub fn rollout(r: &recast_state::Rollout) -> v1::Rollout {
    v1::Rollout {
        id: r.id,
        project: r.project.clone(),
        service: r.service.clone(),
        from_release: r.from_release,
        to_release: r.to_release,
        strategy: r.strategy.clone(),
        state: r.state,
        step: r.step,
        detail: r.detail.clone(),
        started_ms: r.started_ms,
        updated_ms: r.updated_ms,
    }
}

pub fn verdict(v: &crate::analysis::Verdict) -> v1::Verdict {
    v1::Verdict {
        at_ms: v.at_ms,
        release: v.release,
        result: v.result,
        reason: v.reason.clone(),
        canary: numbers(&v.canary),
        stable: numbers(&v.stable),
    }
}

fn numbers(n: &crate::analysis::Numbers) -> v1::Numbers {
    v1::Numbers {
        requests: n.requests,
        errors: n.errors,
        error_rate: n.error_rate,
        p99_ms: n.p99_ms,
    }
}

pub fn drift(d: &crate::guard::InstanceDrift) -> v1::InstanceDrift {
    v1::InstanceDrift {
        service: d.service.clone(),
        instance: d.instance.clone(),
        release: d.release,
        findings: d
            .findings
            .iter()
            .map(|f| v1::Finding {
                path: f.path.clone(),
                kind: f.kind,
                detail: f.detail.clone(),
            })
            .collect(),
        scan: v1::ScanStats {
            micros: d.scan.micros,
            entries: d.scan.entries,
            hashed: d.scan.hashed,
            bytes_hashed: d.scan.bytes_hashed,
            processes: d.scan.processes,
        },
    }
}

pub fn event(e: &recast_state::Event) -> v1::Event {
    v1::Event {
        id: e.id,
        at_ms: e.at_ms,
        project: e.project.clone(),
        service: e.service.clone(),
        kind: e.kind.clone(),
        message: e.message.clone(),
    }
}

/// A recorded route as `status` shows it.
pub fn route_status(r: recast_state::RouteRow) -> v1::RouteStatus {
    v1::RouteStatus {
        project: r.project,
        route: r.name,
        listen: r.listen,
        service: r.service,
    }
}
