//! `recast plan | apply | status | history | rollback | promote | logs | destroy`.

use crate::build::{SpecArg, load_spec as load};
use crate::client::Client;
use crate::output;
use crate::term::{self, Paint};
use anyhow::{Context as _, anyhow, bail};
use recast_api::v1;
use recast_server::plan::{self, Action, Plan};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Build (cached) and compare with the recorded state; `secrets` are the values read.
pub fn compute_plan(
    spec: &SpecArg,
    data_dir: &Path,
    locked: bool,
    secrets: &BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<Plan> {
    let crate::build::SpecBuild { project, built, .. } =
        crate::build::build_spec(spec, data_dir, &[], locked, true, &mut output::progress())?;
    recast_server::project::environment_chosen(&project).map_err(anyhow::Error::msg)?;
    let digests: BTreeMap<String, String> = built
        .iter()
        .map(|b| (b.image.clone(), b.digest.to_string()))
        .collect();
    let secret_digests = crate::secrets::digests(data_dir, secrets)?;
    let state = recast_server::open_state(data_dir, None)?;
    let id = recast_server::project::Identity::of(&project);
    if let recast_server::project::Ownership::Moved { from } =
        recast_server::project::check(&state, &id).map_err(|e| anyhow!("{e}"))?
    {
        eprintln!(
            "note: project {} moves from {from} to {} on apply",
            id.name,
            id.dir.display()
        );
    }
    let recorded = plan::Recorded::gather(&state, &id.name, &project)?;
    Ok(plan::plan(
        &project,
        &id.name,
        &digests,
        &secret_digests,
        &recorded,
    ))
}

pub fn render_plan(p: &Plan) -> String {
    let mut out = String::new();
    let n = p.changes();
    out.push_str(&format!(
        "project {}: {}\n",
        p.project,
        if n == 0 {
            "no changes".to_string()
        } else {
            format!("{n} change(s)")
        }
    ));
    for s in &p.services {
        let (sym, what) = match s.action {
            Action::Create => (
                "+",
                format!(
                    "create release {} ({} instance(s))",
                    s.next_release.unwrap_or(1),
                    s.instances_created
                ),
            ),
            Action::Update => (
                "~",
                format!(
                    "release {} → {} by {} ({} instance(s) created, {} retired)",
                    s.current_release.unwrap_or(0),
                    s.next_release.unwrap_or(0),
                    s.strategy.as_deref().unwrap_or("rolling"),
                    s.instances_created,
                    s.instances_retired
                ),
            ),
            Action::Unchanged => (
                "=",
                format!("unchanged (release {})", s.current_release.unwrap_or(0)),
            ),
            Action::Remove => (
                "-",
                format!("remove ({} instance(s) retired)", s.instances_retired),
            ),
        };
        let sym = match s.action {
            Action::Create => term::out(sym, Paint::Green),
            Action::Update => term::out(sym, Paint::Yellow),
            Action::Remove => term::out(sym, Paint::Red),
            Action::Unchanged => term::out(sym, Paint::Dim),
        };
        out.push_str(&format!("  {sym} service {}: {what}\n", s.service));
        for r in &s.reasons {
            out.push_str(&format!("      why: {r}\n"));
        }
        for (i, st) in s.steps.iter().enumerate() {
            out.push_str(&format!("      step {}: {st}\n", i + 1));
        }
        if let Some(v) = &s.verified {
            let label = term::out("verified:", Paint::Green);
            out.push_str(&format!("      {label} {v}\n"));
        }
        if let Some(r) = &s.refused {
            let label = term::out("refused:", Paint::Red);
            out.push_str(&format!("      {label} {r}\n"));
        }
    }
    for r in &p.routes {
        out.push_str(&format!("  * {r}\n"));
    }
    out
}

/// What `recast plan` found.
pub enum Planned {
    NoChanges,
    Changes,
}

pub fn plan_cmd(
    spec: &SpecArg,
    data_dir: &Path,
    locked: bool,
    json: bool,
    out: Option<&Path>,
) -> anyhow::Result<Planned> {
    let secrets = crate::secrets::read(&load(spec)?)?;
    let p = compute_plan(spec, data_dir, locked, &secrets)?;
    if let Some(file) = out {
        save_plan(file, spec, &p)?;
    }
    if json {
        output::json(&p)?;
    } else {
        print!("{}", render_plan(&p));
    }
    Ok(if p.changes() == 0 {
        Planned::NoChanges
    } else {
        Planned::Changes
    })
}

/// The flags of `recast apply`.
pub struct ApplyHow {
    pub locked: bool,
    pub json: bool,
    pub detach: bool,
    pub yes: bool,
}

/// A plan saved by `recast plan -out FILE` (no secret values: their digests are in the plan).
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPlan {
    format: String,
    /// The spec (canonical path) and what it was loaded with.
    spec: std::path::PathBuf,
    inputs: v1::Inputs,
    /// [`Plan::fingerprint`]: the apply goes ahead only if the plan is still exactly this.
    fingerprint: String,
    plan: serde_json::Value,
}

const SAVED_PLAN: &str = "recast-plan/1";

fn save_plan(file: &Path, spec: &SpecArg, p: &Plan) -> anyhow::Result<()> {
    let saved = SavedPlan {
        format: SAVED_PLAN.into(),
        spec: std::fs::canonicalize(&spec.path)
            .with_context(|| format!("cannot read spec {}", spec.path.display()))?,
        inputs: spec.inputs.clone(),
        fingerprint: p.fingerprint(),
        plan: serde_json::to_value(p)?,
    };
    std::fs::write(file, serde_json::to_vec_pretty(&saved)?)
        .with_context(|| format!("cannot write the plan to {}", file.display()))?;
    eprintln!(
        "plan saved to {}: `recast apply {}` applies exactly it",
        file.display(),
        file.display()
    );
    Ok(())
}

/// `recast apply FILE`: the saved plan, if it still holds (same spec, images, secrets and
/// state), checked here and again by the server before it rolls anything out.
pub fn apply_saved(file: &Path, data_dir: &Path, how: ApplyHow) -> anyhow::Result<ExitCode> {
    let text = output::read_small(file, "saved plan")?;
    let saved: SavedPlan = serde_json::from_str(&text)
        .ok()
        .filter(|s: &SavedPlan| s.format == SAVED_PLAN)
        .ok_or_else(|| {
            anyhow!(
                "{} is not a plan saved by `recast plan -out` ({SAVED_PLAN})",
                file.display()
            )
        })?;
    let client = Client::find(data_dir)?;
    let spec = SpecArg {
        path: saved.spec,
        inputs: saved.inputs,
    };
    let project = load(&spec)?;
    crate::lock::pins(&project, true)?;
    let secrets = crate::secrets::read(&project)?;
    let now = compute_plan(&spec, data_dir, true, &secrets)?;
    if now.fingerprint() != saved.fingerprint {
        bail!(
            "the plan in {} no longer holds: the spec, an image, a secret or the state moved since it was made; now:\n{}  hint: make a new one with `recast plan -out {}`",
            file.display(),
            render_plan(&now),
            file.display()
        );
    }
    let started = send_apply(&client, &spec, &secrets, None, Some(saved.fingerprint))?;
    follow_apply(&client, started, how.json, how.detach)
}

pub fn apply(spec: &SpecArg, data_dir: &Path, how: ApplyHow) -> anyhow::Result<ExitCode> {
    let ApplyHow {
        locked,
        json,
        detach,
        yes,
    } = how;
    let client = Client::find(data_dir)?;
    let path = std::fs::canonicalize(&spec.path)
        .with_context(|| format!("cannot read spec {}", spec.path.display()))?;
    let spec = &spec.at(path.clone());
    // Checked here first, so that errors show the spec's lines (the server shows locations only).
    // The server builds with the lock as it is: complete it here (or check it, --locked).
    let project = load(spec)?;
    recast_server::project::environment_chosen(&project).map_err(anyhow::Error::msg)?;
    crate::lock::pins(&project, locked)?;
    let secrets = crate::secrets::read(&project)?;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if !yes && (!interactive || json) {
        bail!(
            "refusing to apply {} without confirmation: {}\n  hint: pass --yes to apply without asking (scripts, CI)",
            spec.path.display(),
            if json {
                "--json leaves no room for a question"
            } else {
                "there is no terminal to ask on"
            }
        );
    }
    if !yes {
        let p = compute_plan(spec, data_dir, true, &secrets)?;
        if let Some(stop) = confirm(&p, "Apply these changes?", "nothing applied")? {
            return Ok(stop);
        }
    }
    let started = send_apply(&client, spec, &secrets, None, None)?;
    follow_apply(&client, started, json, detach)
}

/// Show `p` and ask `question` on the terminal: `None` to go on, else how the command ends
/// (success when there is nothing to do, failure when the answer is no).
fn confirm(p: &Plan, question: &str, declined: &str) -> anyhow::Result<Option<ExitCode>> {
    print!("{}", render_plan(p));
    if p.changes() == 0 {
        return Ok(Some(ExitCode::SUCCESS));
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(None)
    } else {
        eprintln!("{declined}");
        Ok(Some(ExitCode::FAILURE))
    }
}

/// Ask the server to apply `spec` (its canonical path) with the secrets' values.
fn send_apply(
    client: &Client,
    spec: &SpecArg,
    secrets: &BTreeMap<String, Vec<u8>>,
    promote: Option<v1::Promotion>,
    expect_plan: Option<String>,
) -> anyhow::Result<v1::ApplyStarted> {
    client.post_as(
        "/v1/apply",
        &v1::ApplyRequest {
            path: spec.path.to_string_lossy().into_owned(),
            inputs: spec.inputs.clone(),
            secrets: secrets
                .iter()
                .map(|(k, v)| (k.clone(), v1::SecretValue::new(v)))
                .collect(),
            promote,
            expect_plan,
        },
    )
}

/// Follow an apply the server started until it ends (or not, `detach`), and say how it went.
fn follow_apply(
    client: &Client,
    started: v1::ApplyStarted,
    json: bool,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let id = started.apply;
    if detach {
        if json {
            output::json(&started)?;
        } else {
            output::line(&format!(
                "apply {id} started; follow it with `recast status`"
            ))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let status = follow(
        || client.get_as(&format!("/v1/applies/{id}")).map(Some),
        Duration::from_millis(100),
        std::io::stderr().is_terminal(),
    )?;
    if json {
        output::json(&status)?;
    } else {
        for s in &status.services {
            let release = s
                .release
                .map_or_else(String::new, |r| format!(" release {r}"));
            let reason = s
                .reason
                .as_ref()
                .map_or_else(String::new, |r| format!(": {r}"));
            output::line(&format!("{}:{release} {}{reason}", s.service, s.outcome))?;
        }
    }
    if let Some(e) = &status.error {
        eprintln!("error: {e}");
    }
    if status.state == v1::ApplyState::Succeeded {
        Ok(ExitCode::SUCCESS)
    } else {
        for s in status.services.iter().filter(|s| !s.outcome.is_ok()) {
            eprintln!(
                "error: service {} was {}: {}",
                s.service,
                s.outcome,
                s.reason.as_deref().unwrap_or("")
            );
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Follow an apply until it finishes: `poll` gives its progress (`None` while it is not there
/// yet), every `every`; with `echo`, each new line of its log goes to stderr as it comes.
/// `recast apply` polls the API, `recast up` the server it runs.
pub fn follow(
    mut poll: impl FnMut() -> anyhow::Result<Option<v1::ApplyStatus>>,
    every: Duration,
    echo: bool,
) -> anyhow::Result<v1::ApplyStatus> {
    let mut seen = 0;
    let spinner = echo.then(|| term::Spinner::new("applying"));
    loop {
        std::thread::sleep(every);
        let Some(s) = poll()? else {
            continue;
        };
        if let Some(spinner) = &spinner {
            for l in s.log.iter().skip(seen) {
                spinner.println(&format!("  {}", l.message));
                spinner.set(&format!("apply {}: {}", s.id, l.message));
            }
        }
        seen = s.log.len();
        if s.finished() {
            return Ok(s);
        }
    }
}

pub fn status(
    data_dir: &Path,
    service: Option<&str>,
    env: Option<&str>,
    json: bool,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    if !watch {
        return status_once(data_dir, service, env, json);
    }
    let tty = std::io::stdout().is_terminal();
    loop {
        if tty {
            print!("\x1b[2J\x1b[H");
        }
        status_once(data_dir, service, env, json)?;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The server's status, or the recorded releases when no server runs.
fn fetch_status(data_dir: &Path, service: Option<&str>) -> anyhow::Result<v1::Status> {
    let path = match service {
        Some(s) => format!("/v1/status?service={s}"),
        None => "/v1/status".to_string(),
    };
    match Client::running(data_dir)? {
        Some(client) => client.get_as(&path),
        None => {
            term::note(
                "no server is running: the recorded releases only (no instances, health or traffic)",
            );
            recorded(data_dir, |state| {
                recast_server::records::status(state, service)
            })
        }
    }
}

fn status_once(
    data_dir: &Path,
    service: Option<&str>,
    env: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut v = fetch_status(data_dir, service)?;
    let filter = env_project(env);
    v.services
        .retain(|s| plan::names_project(filter.as_deref(), &s.project));
    if let Some(s) = service
        && v.services.is_empty()
    {
        bail!("no service \"{s}\" is deployed");
    }
    if json {
        output::json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in &v.services {
        output::line(&format!(
            "service {} (project {}): release {} · image {} {}",
            s.service,
            s.project,
            s.current_release.map_or("-".into(), |r| r.to_string()),
            s.image.as_deref().unwrap_or("-"),
            s.digest.as_deref().map_or("", |d| &d[..d.len().min(19)]),
        ))?;
        if let Some(r) = &s.rollout {
            let paused = if s.paused { " (paused)" } else { "" };
            output::line(&format!("  rollout: {r}{paused}"))?;
        }
        for d in &s.drift {
            for f in &d.findings {
                output::line(&format!(
                    "  drift in {}: {} {} ({})",
                    d.instance, f.kind, f.path, f.detail
                ))?;
            }
        }
        for v in &s.verdicts {
            output::line(&format!(
                "  analysis of release {}: {} — {}",
                v.release, v.result, v.reason
            ))?;
        }
        for t in &s.traffic {
            output::line(&format!(
                "  traffic: release {} {:.0}% on {} instance(s) · {} requests, {} 5xx, {} failed connections, p99 {:.1} ms",
                t.release,
                t.percent,
                t.instances,
                t.requests,
                t.errors_5xx,
                t.connect_failures,
                t.p99_ms
            ))?;
        }
        for i in &s.instances {
            let health = match i.state {
                v1::InstancePhase::Exited => format!(
                    "exited ({})",
                    i.exit_status
                        .map_or_else(|| "null".into(), |c| c.to_string())
                ),
                _ if i.healthy => "healthy".into(),
                _ => "unhealthy".into(),
            };
            output::line(&format!(
                "  instance {} release {} {} {} age {}s",
                i.id,
                i.release,
                health,
                if i.active {
                    "in rotation"
                } else {
                    "out of rotation"
                },
                i.age_ms / 1000
            ))?;
        }
    }
    for r in &v.routes {
        output::line(&format!(
            "route {} on {} → {}",
            r.route, r.listen, r.service
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `read` of the recorded state (the server's, `RECAST_STATE`, or `state.db`) when no server
/// runs: read-only commands work without one.
fn recorded<T>(
    data_dir: &Path,
    read: impl FnOnce(&recast_state::State) -> Result<T, String>,
) -> anyhow::Result<T> {
    let state = recast_server::open_state(data_dir, None)?;
    read(&state).map_err(anyhow::Error::msg)
}

/// The `project` an API request names for `--env ENV`: `@ENV`, the service's project in that
/// environment.
pub fn env_project(env: Option<&str>) -> Option<String> {
    env.map(|e| format!("@{e}"))
}

pub fn history(
    data_dir: &Path,
    service: &str,
    env: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let query = match env_project(env) {
        Some(p) => format!("/v1/history?service={service}&project={p}"),
        None => format!("/v1/history?service={service}"),
    };
    let v: v1::History = match Client::running(data_dir)? {
        Some(client) => client.get_as(&query)?,
        None => recorded(data_dir, |state| {
            let p = env_project(env);
            let project = recast_server::records::project_of(state, p.as_deref(), service)?;
            recast_server::records::history(state, &project, service)
        })?,
    };
    if json {
        output::json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::line(&format!(
        "{:<4} {:<12} {:<19} {:<25} REASON",
        "#", "OUTCOME", "DIGEST", "CREATED (UTC)"
    ))?;
    for r in &v.releases {
        let created = recast_image::oci::rfc3339(r.created_ms.max(0) as u64 / 1000);
        output::line(&format!(
            "{:<4} {:<12} {:<19} {:<25} {}",
            r.number,
            r.outcome.as_str(),
            &r.digest[..r.digest.len().min(19)],
            created,
            r.reason.as_deref().unwrap_or("")
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rollback(
    data_dir: &Path,
    service: &str,
    env: Option<&str>,
    to: Option<i64>,
    restore_volumes: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::find(data_dir)?;
    let request = |dry_run: bool, restore_volumes: bool| v1::RollbackRequest {
        service: service.to_string(),
        project: env_project(env),
        to,
        dry_run,
        restore_volumes,
    };
    let mut restore = restore_volumes;
    let mut hint = None;
    if !restore {
        // Snapshots of the release's data exist: ask on a terminal, say how otherwise.
        let plan: v1::RestorePlan = client.post_as("/v1/rollback", &request(true, false))?;
        if !plan.snapshots.is_empty() && plan.missing.is_none() {
            let names: Vec<String> = plan
                .snapshots
                .iter()
                .map(|s| {
                    format!(
                        "{} (snapshot {}, taken before release {})",
                        s.volume, s.id, s.before_release
                    )
                })
                .collect();
            let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
            if interactive && !json {
                eprint!(
                    "Restore volume(s) {} to the data release {} left? The data written since is lost. [y/N] ",
                    names.join(", "),
                    plan.to
                );
                std::io::stderr().flush()?;
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                restore = matches!(answer.trim(), "y" | "Y" | "yes");
            }
            if !restore {
                hint = Some(format!(
                    "volumes kept as they are; to restore release {}'s data: `recast rollback {service} --to {} --restore-volumes` (instead of this rollback), or afterwards `recast volume restore {service} VOLUME SNAPSHOT --yes` ({})",
                    plan.to,
                    plan.to,
                    names.join(", ")
                ));
            }
        }
    }
    let v: v1::RollbackResult = client.post_as("/v1/rollback", &request(false, restore))?;
    if json {
        output::json(&v)?;
    } else {
        output::line(&format!(
            "{}: release {} → {} ({}, traffic switched in {:.1} ms)",
            service,
            v.from,
            v.to,
            if v.warm { "warm" } else { "cold start" },
            v.switched_ms
        ))?;
        for s in &v.restored {
            output::line(&format!(
                "{}: volume {} restored from {}",
                service, s.volume, s.path
            ))?;
        }
    }
    if let Some(h) = hint {
        term::note(&h);
    }
    Ok(ExitCode::SUCCESS)
}

/// `promote`, `abort`, `pause`, `resume`: a request to the service's running rollout.
pub fn control(
    data_dir: &Path,
    action: v1::ControlAction,
    service: &str,
    env: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let v: v1::ControlReply = Client::find(data_dir)?.post_as(
        &format!("/v1/{action}"),
        &v1::ControlRequest {
            service: service.to_string(),
            project: env_project(env),
        },
    )?;
    if json {
        output::json(&v)?;
    } else {
        let done = match v.action {
            v1::ControlAction::Promote => "promoted",
            v1::ControlAction::Abort => "aborted: rolling back",
            v1::ControlAction::Pause => "paused",
            v1::ControlAction::Resume => "resumed",
        };
        output::line(&format!("{service}: {done}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What `recast logs` asks for.
pub use recast_api::v1::LogsQuery;

/// The logs of a service's current instances, through the server's API (so it works from any
/// machine that reaches the server): `[INSTANCE] [TIME ]LINE`, streamed to stdout.
pub fn logs(
    data_dir: &Path,
    service: &str,
    env: Option<&str>,
    q: &LogsQuery,
) -> anyhow::Result<ExitCode> {
    if let Some(s) = &q.since {
        recast_spec::values::duration(s).map_err(|e| anyhow!("--since: {e}"))?;
    }
    let client = Client::find(data_dir)?;
    let mut path = format!("/v1/services/{service}/logs{}", q.to_query());
    if let Some(p) = env_project(env) {
        path.push_str(&format!("&project={p}"));
    }
    let mut body = client.get_stream(&path)?;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("reading the logs of {service} from the server: {e}"),
        };
        // A closed pipe (`| head`) ends the command quietly.
        if stdout
            .write_all(&buf[..n])
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn destroy(
    spec: &SpecArg,
    data_dir: &Path,
    services: &[String],
    volumes: bool,
    yes: bool,
    all_projects: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::find(data_dir)?;
    // A spec that does not load is an error, never "every project": that takes --all-projects.
    let project = if all_projects {
        None
    } else {
        let p = recast_spec::load_with(&spec.path, &spec.inputs).map_err(|d| {
            anyhow!(
                "cannot tell which project to destroy: the spec {} is invalid:\n{d}\n  hint: fix the spec or pick one with -f; --all-projects destroys every project of the server",
                spec.path.display()
            )
        })?;
        recast_server::project::environment_chosen(&p).map_err(anyhow::Error::msg)?;
        // Never destroy another directory's project of the same name.
        let id = recast_server::project::Identity::of(&p);
        let state = recast_server::open_state(data_dir, None)?;
        recast_server::project::check(&state, &id).map_err(|e| anyhow!("{e}"))?;
        Some(id.name)
    };
    let what = if services.is_empty() {
        format!(
            "every service of project {}",
            project.as_deref().unwrap_or("(all projects)")
        )
    } else {
        services.join(", ")
    };
    if !yes && !std::io::stdin().is_terminal() {
        bail!(
            "refusing to destroy {what} without confirmation: there is no terminal to ask on\n  hint: pass --yes to destroy without asking"
        );
    }
    if !yes {
        print!(
            "Destroy {what}{}? [y/N] ",
            if volumes { " and their volumes" } else { "" }
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing destroyed");
            return Ok(ExitCode::FAILURE);
        }
    }
    let v: v1::Destroyed = client.post_as(
        "/v1/destroy",
        &v1::DestroyRequest {
            project,
            services: services.to_vec(),
            volumes,
        },
    )?;
    if json {
        output::json(&v)?;
    } else {
        for s in &v.removed {
            output::line(&format!("destroyed service {s}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn drift(
    data_dir: &Path,
    service: Option<&str>,
    fix: bool,
    full: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let v: v1::DriftReply = Client::find(data_dir)?.post_as(
        "/v1/drift",
        &v1::DriftRequest {
            service: service.map(str::to_string),
            project: None,
            fix,
            full,
        },
    )?;
    let drifted = v.drifted;
    if json {
        output::json(&v)?;
    } else {
        let n = v.instances.len();
        for d in &v.instances {
            for f in &d.findings {
                output::line(&format!(
                    "{} {}: {} {} ({})",
                    d.service, d.instance, f.kind, f.path, f.detail
                ))?;
            }
        }
        for r in &v.replaced {
            output::line(&format!("replaced by new instance {r}"))?;
        }
        eprintln!("{n} instance(s) checked, {drifted} drifted");
    }
    Ok(if drifted > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `recast promote-release SERVICE --from ENV --to ENV`: deploy to `--to` the image digest that
/// is live and healthy in `--from` (never a rebuild), with `--to`'s settings.
pub fn promote_release(
    spec: &SpecArg,
    data_dir: &Path,
    service: &str,
    from: &str,
    json: bool,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::find(data_dir)?;
    let path = std::fs::canonicalize(&spec.path)
        .with_context(|| format!("cannot read spec {}", spec.path.display()))?;
    let spec = &spec.at(path.clone());
    let project = load(spec)?;
    let secrets = crate::secrets::read(&project)?;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if !yes && (!interactive || json) {
        bail!(
            "refusing to promote {service} without confirmation: there is no terminal to ask on\n  hint: pass --yes to promote without asking (scripts, CI)"
        );
    }
    if !yes {
        let p = promotion_plan(&project, data_dir, service, from, &secrets)?;
        if let Some(stop) = confirm(&p, "Promote?", "nothing promoted")? {
            return Ok(stop);
        }
    }
    let promote = v1::Promotion {
        service: service.to_string(),
        from: from.to_string(),
    };
    let started = send_apply(&client, spec, &secrets, Some(promote), None)?;
    follow_apply(&client, started, json, false)
}

/// The plan of a promotion, from the recorded state: only `service`, at the digest live in
/// `from`.
fn promotion_plan(
    project: &recast_spec::Project,
    data_dir: &Path,
    service: &str,
    from: &str,
    secrets: &BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<Plan> {
    let svc = project
        .services
        .get(service)
        .ok_or_else(|| anyhow!("the spec has no service \"{service}\""))?;
    let state = recast_server::open_state(data_dir, None)?;
    let name = plan::project_name(project);
    let source = format!("{}@{from}", plan::base_name(&name));
    let row = state
        .current(&source, service)?
        .ok_or_else(|| anyhow!("service {service} has no live release in {from}"))?;
    let digests = BTreeMap::from([(svc.image.clone(), row.digest)]);
    let recorded = plan::Recorded::gather(&state, &name, project)?;
    let secret_digests = crate::secrets::digests(data_dir, secrets)?;
    let mut p = plan::plan(project, &name, &digests, &secret_digests, &recorded);
    p.services.retain(|s| s.service == service);
    p.routes.clear();
    Ok(p)
}
