//! The API's endpoints, one function each: a [`Req`] in, an [`Answer`] out (`Err` is a
//! [`Refusal`], an error answer). Status and metrics are in [`super::observe`].

use super::{Answer, Failure, Refusal, Req, Resp, answer, wire};
use crate::engine::Ctl;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Response, StatusCode};
use recast_api::v1;
use std::convert::Infallible;
use std::sync::Arc;

/// `GET /v1/health`.
pub(super) fn health() -> Answer {
    Ok(answer(
        StatusCode::OK,
        &v1::Health {
            ok: true,
            pid: std::process::id(),
        },
    ))
}

/// `POST /v1/apply`: starts applying a spec file; `GET /v1/applies/ID` follows it.
pub(super) fn apply(ctl: &Arc<Ctl>, req: &Req) -> Answer {
    let r: v1::ApplyRequest = req.parse()?;
    // Only spec files: never make the server read (and echo) some other file.
    let path = crate::project::api_spec_path(std::path::Path::new(&r.path))?;
    let mut secrets = std::collections::BTreeMap::new();
    for (name, v) in r.secrets {
        let bytes = v.bytes().ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("the value of secret {name} is not hex"),
            )
        })?;
        secrets.insert(name, bytes);
    }
    let id = ctl.start_apply(crate::engine::ApplyInput {
        path,
        inputs: r.inputs,
        secrets,
        promote: r.promote,
        expect_plan: r.expect_plan,
    })?;
    Ok(answer(
        StatusCode::ACCEPTED,
        &v1::ApplyStarted { apply: id },
    ))
}

/// `GET /v1/applies/ID`.
pub(super) fn apply_status(ctl: &Ctl, req: &Req) -> Answer {
    let id = req.path.trim_start_matches("/v1/applies/");
    match id.parse::<u64>().ok().and_then(|id| ctl.apply_status(id)) {
        Some(s) => Ok(answer(StatusCode::OK, &s)),
        None => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no apply {id}"),
        )),
    }
}

/// `GET /v1/history?service=NAME[&project=P]`.
pub(super) fn history(ctl: &Ctl, req: &Req) -> Answer {
    let service = req.service()?;
    let (project, service) = match ctl.find_svc(req.get("project"), service) {
        Ok(svc) => (svc.project.clone(), svc.name.clone()),
        // A destroyed service keeps its history in the state store.
        Err(e) => match crate::records::project_of(&ctl.state, req.get("project"), service) {
            Ok(project) => (project, service.to_string()),
            Err(_) => return Err(e.into()),
        },
    };
    let h = crate::records::history(&ctl.state, &project, &service)
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(answer(StatusCode::OK, &h))
}

/// `POST /v1/rollback`; with `dry_run`, what a rollback would restore, without acting (the
/// CLI asks before).
pub(super) async fn rollback(ctl: &Arc<Ctl>, req: &Req) -> Answer {
    let r: v1::RollbackRequest = req.parse()?;
    let svc = ctl.find_svc(r.project.as_deref(), &r.service)?;
    if r.dry_run {
        let plan = ctl
            .restore_plan(&svc, r.to)
            .map_err(|e| e.refusal(StatusCode::CONFLICT))?;
        return Ok(answer(StatusCode::OK, &plan));
    }
    let done = ctl
        .rollback(&svc, r.to, r.restore_volumes)
        .await
        .map_err(|e| e.refusal(StatusCode::CONFLICT))?;
    Ok(answer(StatusCode::OK, &done))
}

/// `GET /v1/volumes[?service=NAME[&project=P]]`.
pub(super) fn volumes(ctl: &Ctl, req: &Req) -> Answer {
    let svc = req
        .get("service")
        .map(|s| ctl.find_svc(req.get("project"), s))
        .transpose()?;
    let volumes = ctl.volumes(svc.as_deref())?;
    Ok(answer(StatusCode::OK, &v1::Volumes { volumes }))
}

/// `GET /v1/volumes/snapshots?service=NAME[&project=P]`.
pub(super) fn snapshots(ctl: &Ctl, req: &Req) -> Answer {
    let service = req.service()?;
    let svc = ctl.find_svc(req.get("project"), service)?;
    let snapshots = ctl.state.snapshots(&svc.project, &svc.name)?;
    Ok(answer(
        StatusCode::OK,
        &v1::Snapshots {
            project: svc.project.clone(),
            service: svc.name.clone(),
            keep: crate::engine::KEEP_SNAPSHOTS,
            snapshots,
        },
    ))
}

/// `POST /v1/volumes/restore`.
pub(super) async fn restore(ctl: &Arc<Ctl>, req: &Req) -> Answer {
    let r: v1::RestoreRequest = req.parse()?;
    let svc = ctl.find_svc(r.project.as_deref(), &r.service)?;
    let restored = ctl
        .restore_volume(&svc, &r.volume, &r.snapshot.to_string())
        .await
        .map_err(|e| e.refusal(StatusCode::CONFLICT))?;
    Ok(answer(StatusCode::OK, &restored))
}

/// `POST /v1/promote`, `/v1/abort`, `/v1/pause`, `/v1/resume`: the running rollout's controls.
pub(super) fn control(ctl: &Ctl, req: &Req) -> Answer {
    let Ok(action) = req
        .path
        .trim_start_matches("/v1/")
        .parse::<v1::ControlAction>()
    else {
        return Err(Refusal::not_found(&req.path));
    };
    let r: v1::ControlRequest = req.parse()?;
    let svc = ctl.find_svc(r.project.as_deref(), &r.service)?;
    let done = match action {
        v1::ControlAction::Promote => ctl.promote(&svc),
        v1::ControlAction::Abort => ctl.abort(&svc),
        v1::ControlAction::Pause => ctl.pause(&svc, true),
        v1::ControlAction::Resume => ctl.pause(&svc, false),
    };
    done.map_err(|e| e.refusal(StatusCode::CONFLICT))?;
    Ok(answer(
        StatusCode::OK,
        &v1::ControlReply {
            service: svc.name.clone(),
            action,
        },
    ))
}

/// `POST /v1/drift`: checks instances against their images (and with `fix`, replaces the
/// drifted ones).
pub(super) async fn drift(ctl: &Arc<Ctl>, req: &Req) -> Answer {
    let r: v1::DriftRequest = req.parse()?;
    let mode = if r.full {
        recast_guard::Mode::Full
    } else {
        recast_guard::Mode::Metadata
    };
    if let Some(s) = &r.service {
        ctl.find_svc(r.project.as_deref(), s)?;
    }
    let (instances, replaced) = ctl
        .drift(r.service.as_deref(), mode, r.fix)
        .await
        .map_err(|e| e.refusal(StatusCode::INTERNAL_SERVER_ERROR))?;
    let instances: Vec<v1::InstanceDrift> = instances.iter().map(wire::drift).collect();
    let drifted = instances.iter().filter(|d| !d.findings.is_empty()).count();
    Ok(answer(
        StatusCode::OK,
        &v1::DriftReply {
            instances,
            drifted,
            replaced,
        },
    ))
}

/// `POST /v1/destroy`.
pub(super) async fn destroy(ctl: &Ctl, req: &Req) -> Answer {
    let r: v1::DestroyRequest = req.parse()?;
    let removed = ctl
        .destroy(r.project.as_deref(), &r.services, r.volumes)
        .await
        .map_err(|e| e.refusal(StatusCode::INTERNAL_SERVER_ERROR))?;
    Ok(answer(StatusCode::OK, &v1::Destroyed { removed }))
}

/// `GET /v1/events?since=ID`: server-sent events, every recorded event after `since`, then new
/// ones as they happen.
pub(super) fn events(ctl: Arc<Ctl>, req: &Req) -> Answer {
    let mut since: i64 = req.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        loop {
            let batch = ctl.state.events(since, 200).unwrap_or_default();
            for e in batch {
                since = e.id;
                let data = serde_json::to_string(&wire::event(&e)).unwrap_or_default();
                let frame = format!("id: {}\nevent: {}\ndata: {data}\n\n", e.id, e.kind);
                if tx.send(Bytes::from(frame)).await.is_err() {
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    Ok(streamed(rx, "text/event-stream"))
}

/// `GET /v1/services/NAME/logs?tail=N&since=DURATION&timestamps=true&follow=true`: plain
/// text, one `[INSTANCE] [TIME ]LINE` per line, streamed (see `crate::logs`).
pub(super) fn logs(ctl: Arc<Ctl>, req: &Req) -> Answer {
    let p = req.path.as_str();
    let name = &p["/v1/services/".len()..p.len() - "/logs".len()];
    let query = crate::logs::Query::parse(&req.query)?;
    let svc = ctl.find_svc(req.get("project"), name)?;
    crate::logs::check(&ctl, &svc)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::task::spawn_blocking(move || crate::logs::stream(ctl, svc, query, tx));
    Ok(streamed(rx, "text/plain; charset=utf-8"))
}

/// A response streamed from a channel, not cached.
fn streamed(rx: tokio::sync::mpsc::Receiver<Bytes>, content_type: &'static str) -> Resp {
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    r
}

/// A response body fed by a channel (for the event stream and logs).
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}
