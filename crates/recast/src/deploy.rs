//! `recast plan | apply | status | history | rollback | promote | logs | destroy`.

use crate::client::Client;
use crate::output;
use anyhow::{Context as _, anyhow, bail};
use recast_image::build::{self, Options};
use recast_image::step::StepRunner;
use recast_server::plan::{self, Action, Plan};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

fn load(spec: &Path) -> anyhow::Result<recast_spec::Project> {
    recast_spec::load(spec).map_err(|d| anyhow!("the spec is invalid:\n{d}"))
}

/// Build (cached) and compare with the recorded state.
pub fn compute_plan(spec: &Path, data_dir: &Path, locked: bool) -> anyhow::Result<Plan> {
    let project = load(spec)?;
    let pins = crate::lock::pins(&project, locked)?;
    let store = output::store(data_dir)?;
    let runner = crate::run::step_runner(data_dir, &project)?;
    let built = build::build(
        &store,
        Some(&data_dir.join("cache")),
        &project,
        &[],
        &Options {
            pins,
            ..Options::from_env()?
        },
        runner.as_ref().map(|r| r as &dyn StepRunner),
        &mut output::progress(),
    )?;
    let digests: BTreeMap<String, String> = built
        .iter()
        .map(|b| (b.image.clone(), b.digest.to_string()))
        .collect();
    let state = recast_state::State::open(&data_dir.join("state.db"))?;
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
    Ok(plan::plan(&project, &id.name, &digests, &state)?)
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
        out.push_str(&format!("  {sym} service {}: {what}\n", s.service));
        for r in &s.reasons {
            out.push_str(&format!("      why: {r}\n"));
        }
        for (i, st) in s.steps.iter().enumerate() {
            out.push_str(&format!("      step {}: {st}\n", i + 1));
        }
    }
    for r in &p.routes {
        out.push_str(&format!("  * {r}\n"));
    }
    out
}

pub fn plan_cmd(
    spec: &Path,
    data_dir: &Path,
    locked: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let p = compute_plan(spec, data_dir, locked)?;
    if json {
        output::json(&p)?;
    } else {
        print!("{}", render_plan(&p));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn apply(
    spec: &Path,
    data_dir: &Path,
    locked: bool,
    json: bool,
    detach: bool,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::find(data_dir)?;
    let path = std::fs::canonicalize(spec)
        .with_context(|| format!("cannot read spec {}", spec.display()))?;
    // Checked here first, so that errors show the spec's lines (the server shows locations only).
    // The server builds with the lock as it is: complete it here (or check it, --locked).
    crate::lock::pins(&load(&path)?, locked)?;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if !yes && (!interactive || json) {
        bail!(
            "refusing to apply {} without confirmation: {}\n  hint: pass --yes to apply without asking (scripts, CI)",
            spec.display(),
            if json {
                "--json leaves no room for a question"
            } else {
                "there is no terminal to ask on"
            }
        );
    }
    if !yes {
        let p = compute_plan(&path, data_dir, true)?;
        print!("{}", render_plan(&p));
        if p.changes() == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        print!("Apply these changes? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing applied");
            return Ok(ExitCode::FAILURE);
        }
    }
    let started = client.post("/v1/apply", &json!({ "path": path }))?;
    let id = started["apply"]
        .as_u64()
        .ok_or_else(|| anyhow!("the server did not start an apply"))?;
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
    let tty = std::io::stderr().is_terminal();
    let mut seen = 0;
    let status = loop {
        std::thread::sleep(Duration::from_millis(100));
        let s = client.get(&format!("/v1/applies/{id}"))?;
        let log = s["log"].as_array().cloned().unwrap_or_default();
        if tty {
            for l in &log[seen.min(log.len())..] {
                eprintln!("  {}", l["message"].as_str().unwrap_or(""));
            }
        }
        seen = log.len();
        if s["state"] != "running" {
            break s;
        }
    };
    if json {
        output::json(&status)?;
    } else {
        for s in status["services"].as_array().into_iter().flatten() {
            let release = s["release"]
                .as_i64()
                .map_or_else(String::new, |r| format!(" release {r}"));
            let reason = s["reason"]
                .as_str()
                .map_or_else(String::new, |r| format!(": {r}"));
            output::line(&format!(
                "{}:{release} {}{reason}",
                s["service"].as_str().unwrap_or(""),
                s["outcome"].as_str().unwrap_or("")
            ))?;
        }
    }
    if let Some(e) = status["error"].as_str() {
        eprintln!("error: {e}");
    }
    if status["state"] == "succeeded" {
        Ok(ExitCode::SUCCESS)
    } else {
        for s in status["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| {
                s["outcome"] != "succeeded"
                    && s["outcome"] != "unchanged"
                    && s["outcome"] != "removed"
            })
        {
            eprintln!(
                "error: service {} was {}: {}",
                s["service"].as_str().unwrap_or(""),
                s["outcome"].as_str().unwrap_or(""),
                s["reason"].as_str().unwrap_or("")
            );
        }
        Ok(ExitCode::FAILURE)
    }
}

pub fn status(
    data_dir: &Path,
    service: Option<&str>,
    json: bool,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    if !watch {
        return status_once(data_dir, service, json);
    }
    let tty = std::io::stdout().is_terminal();
    loop {
        if tty {
            print!("\x1b[2J\x1b[H");
        }
        status_once(data_dir, service, json)?;
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn status_once(data_dir: &Path, service: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::find(data_dir)?;
    let path = match service {
        Some(s) => format!("/v1/status?service={s}"),
        None => "/v1/status".to_string(),
    };
    let v = client.get(&path)?;
    if let Some(s) = service
        && v["services"].as_array().is_none_or(Vec::is_empty)
    {
        bail!("no service \"{s}\" is deployed");
    }
    if json {
        output::json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in v["services"].as_array().into_iter().flatten() {
        output::line(&format!(
            "service {} (project {}): release {} · image {} {}",
            s["service"].as_str().unwrap_or(""),
            s["project"].as_str().unwrap_or(""),
            s["current_release"]
                .as_i64()
                .map_or("-".into(), |r| r.to_string()),
            s["image"].as_str().unwrap_or("-"),
            s["digest"].as_str().map_or("", |d| &d[..d.len().min(19)]),
        ))?;
        if let Some(r) = s["rollout"].as_str() {
            let paused = if s["paused"] == true { " (paused)" } else { "" };
            output::line(&format!("  rollout: {r}{paused}"))?;
        }
        for d in s["drift"].as_array().into_iter().flatten() {
            for f in d["findings"].as_array().into_iter().flatten() {
                output::line(&format!(
                    "  drift in {}: {} {} ({})",
                    d["instance"].as_str().unwrap_or(""),
                    f["kind"].as_str().unwrap_or(""),
                    f["path"].as_str().unwrap_or(""),
                    f["detail"].as_str().unwrap_or("")
                ))?;
            }
        }
        for v in s["verdicts"].as_array().into_iter().flatten() {
            output::line(&format!(
                "  analysis of release {}: {} — {}",
                v["release"],
                v["result"].as_str().unwrap_or(""),
                v["reason"].as_str().unwrap_or("")
            ))?;
        }
        for t in s["traffic"].as_array().into_iter().flatten() {
            output::line(&format!(
                "  traffic: release {} {:.0}% on {} instance(s) · {} requests, {} 5xx, {} failed connections, p99 {:.1} ms",
                t["release"],
                t["percent"].as_f64().unwrap_or(0.0),
                t["instances"],
                t["requests"],
                t["errors_5xx"],
                t["connect_failures"],
                t["p99_ms"].as_f64().unwrap_or(0.0)
            ))?;
        }
        for i in s["instances"].as_array().into_iter().flatten() {
            let health = match (i["state"].as_str(), i["healthy"].as_bool()) {
                (Some("exited"), _) => format!("exited ({})", i["exit_status"]),
                (_, Some(true)) => "healthy".into(),
                _ => "unhealthy".into(),
            };
            output::line(&format!(
                "  instance {} release {} {} {} age {}s",
                i["id"].as_str().unwrap_or(""),
                i["release"],
                health,
                if i["active"] == true {
                    "in rotation"
                } else {
                    "out of rotation"
                },
                i["age_ms"].as_u64().unwrap_or(0) / 1000
            ))?;
        }
    }
    for r in v["routes"].as_array().into_iter().flatten() {
        output::line(&format!(
            "route {} on {} → {}",
            r["route"].as_str().unwrap_or(""),
            r["listen"].as_str().unwrap_or(""),
            r["service"].as_str().unwrap_or("")
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn history(data_dir: &Path, service: &str, json: bool) -> anyhow::Result<ExitCode> {
    let v = Client::find(data_dir)?.get(&format!("/v1/history?service={service}"))?;
    if json {
        output::json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::line(&format!(
        "{:<4} {:<12} {:<19} {:<25} REASON",
        "#", "OUTCOME", "DIGEST", "CREATED (UTC)"
    ))?;
    for r in v["releases"].as_array().into_iter().flatten() {
        let digest = r["digest"].as_str().unwrap_or("");
        let created = recast_image::oci::rfc3339(r["created_ms"].as_u64().unwrap_or(0) / 1000);
        output::line(&format!(
            "{:<4} {:<12} {:<19} {:<25} {}",
            r["number"].as_i64().unwrap_or(0),
            r["outcome"].as_str().unwrap_or(""),
            &digest[..digest.len().min(19)],
            created,
            r["reason"].as_str().unwrap_or("")
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rollback(
    data_dir: &Path,
    service: &str,
    to: Option<i64>,
    restore_volumes: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::find(data_dir)?;
    let mut restore = restore_volumes;
    let mut hint = None;
    if !restore {
        // Snapshots of the release's data exist: ask on a terminal, say how otherwise.
        let plan = client.post(
            "/v1/rollback",
            &json!({ "service": service, "to": to, "dry_run": true }),
        )?;
        let snaps = plan["snapshots"].as_array().cloned().unwrap_or_default();
        if !snaps.is_empty() && plan["missing"].is_null() {
            let names: Vec<String> = snaps
                .iter()
                .map(|s| {
                    format!(
                        "{} (snapshot {}, taken before release {})",
                        s["volume"].as_str().unwrap_or(""),
                        s["id"],
                        s["before_release"]
                    )
                })
                .collect();
            let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
            if interactive && !json {
                eprint!(
                    "Restore volume(s) {} to the data release {} left? The data written since is lost. [y/N] ",
                    names.join(", "),
                    plan["to"]
                );
                std::io::stderr().flush()?;
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                restore = matches!(answer.trim(), "y" | "Y" | "yes");
            }
            if !restore {
                hint = Some(format!(
                    "volumes kept as they are; to restore release {}'s data: `recast rollback {service} --to {} --restore-volumes` (instead of this rollback), or afterwards `recast volume restore {service} VOLUME SNAPSHOT --yes` ({})",
                    plan["to"],
                    plan["to"],
                    names.join(", ")
                ));
            }
        }
    }
    let v = client.post(
        "/v1/rollback",
        &json!({ "service": service, "to": to, "restore_volumes": restore }),
    )?;
    if json {
        output::json(&v)?;
    } else {
        output::line(&format!(
            "{}: release {} → {} ({}, traffic switched in {:.1} ms)",
            service,
            v["from"],
            v["to"],
            if v["warm"] == true {
                "warm"
            } else {
                "cold start"
            },
            v["switched_ms"].as_f64().unwrap_or(0.0)
        ))?;
        for s in v["restored"].as_array().into_iter().flatten() {
            output::line(&format!(
                "{}: volume {} restored from {}",
                service,
                s["volume"].as_str().unwrap_or(""),
                s["path"].as_str().unwrap_or("")
            ))?;
        }
    }
    if let Some(h) = hint {
        eprintln!("note: {h}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `promote`, `abort`, `pause`, `resume`: a request to the service's running rollout.
pub fn control(data_dir: &Path, verb: &str, service: &str, json: bool) -> anyhow::Result<ExitCode> {
    let v = Client::find(data_dir)?.post(&format!("/v1/{verb}"), &json!({ "service": service }))?;
    if json {
        output::json(&v)?;
    } else {
        let done = match verb {
            "promote" => "promoted",
            "abort" => "aborted: rolling back",
            "pause" => "paused",
            _ => "resumed",
        };
        output::line(&format!("{service}: {done}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What `recast logs` asks for.
pub struct LogsQuery {
    pub follow: bool,
    pub tail: Option<usize>,
    pub since: Option<String>,
    pub timestamps: bool,
}

/// The logs of a service's current instances, through the server's API (so it works from any
/// machine that reaches the server): `[INSTANCE] [TIME ]LINE`, streamed to stdout.
pub fn logs(data_dir: &Path, service: &str, q: &LogsQuery) -> anyhow::Result<ExitCode> {
    if let Some(s) = &q.since {
        recast_spec::values::duration(s).map_err(|e| anyhow!("--since: {e}"))?;
    }
    let client = Client::find(data_dir)?;
    let mut path = format!(
        "/v1/services/{service}/logs?timestamps={}&follow={}",
        q.timestamps, q.follow
    );
    if let Some(n) = q.tail {
        path.push_str(&format!("&tail={n}"));
    }
    if let Some(s) = &q.since {
        path.push_str(&format!("&since={s}"));
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
    spec: &Path,
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
        let p = recast_spec::load(spec).map_err(|d| {
            anyhow!(
                "cannot tell which project to destroy: the spec {} is invalid:\n{d}\n  hint: fix the spec or pick one with -f; --all-projects destroys every project of the server",
                spec.display()
            )
        })?;
        // Never destroy another directory's project of the same name.
        let id = recast_server::project::Identity::of(&p);
        let state = recast_state::State::open(&data_dir.join("state.db"))?;
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
    let v: Value = client.post(
        "/v1/destroy",
        &json!({ "project": project, "services": services, "volumes": volumes }),
    )?;
    if json {
        output::json(&v)?;
    } else {
        for s in v["removed"].as_array().into_iter().flatten() {
            output::line(&format!("destroyed service {}", s.as_str().unwrap_or("")))?;
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
    let v = Client::find(data_dir)?.post(
        "/v1/drift",
        &json!({ "service": service, "fix": fix, "full": full }),
    )?;
    let drifted = v["drifted"].as_u64().unwrap_or(0);
    if json {
        output::json(&v)?;
    } else {
        let n = v["instances"].as_array().map_or(0, Vec::len);
        for d in v["instances"].as_array().into_iter().flatten() {
            for f in d["findings"].as_array().into_iter().flatten() {
                output::line(&format!(
                    "{} {}: {} {} ({})",
                    d["service"].as_str().unwrap_or(""),
                    d["instance"].as_str().unwrap_or(""),
                    f["kind"].as_str().unwrap_or(""),
                    f["path"].as_str().unwrap_or(""),
                    f["detail"].as_str().unwrap_or("")
                ))?;
            }
        }
        for r in v["replaced"].as_array().into_iter().flatten() {
            output::line(&format!(
                "replaced by new instance {}",
                r.as_str().unwrap_or("")
            ))?;
        }
        eprintln!("{n} instance(s) checked, {drifted} drifted");
    }
    Ok(if drifted > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
