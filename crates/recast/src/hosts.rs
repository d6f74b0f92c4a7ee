//! `recast hosts` and `recast project move`: which server acts for which project, read from and
//! asked through the state every host shares (no server needs to run where they are typed).

use crate::output;
use anyhow::{Context as _, bail};
use clap::Subcommand;
use recast_state::State;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hand a project over to another host: it stops here (drained) and starts there from its
    /// records; waits until the new host serves it
    ///
    /// Example: recast project move shop --to host-b
    Move {
        /// The project to move
        project: String,
        /// The host to move it to (a running `recast server --host-name HOST` on the same state)
        #[arg(long, value_name = "HOST")]
        to: String,
        /// How long to wait for the new host to serve it, in seconds
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        timeout: u64,
        /// The state [default: $RECAST_STATE, else the running server's state, else state.db
        /// in the data directory]
        #[arg(long, value_name = "URL")]
        state: Option<String>,
        /// Print only JSON on stdout: {"project", "from", "to", "token", "seconds"}
        #[arg(long)]
        json: bool,
    },
}

pub fn run(data_dir: &Path, cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Move {
        project,
        to,
        timeout,
        state,
        json,
    } = cmd;
    let state = recast_server::open_state(data_dir, state.as_deref())?;
    let started = Instant::now();
    let before = recast_server::engine::request_move(&state, &project, &to)?;
    if before.host == to {
        bail!("project {project} is held by host {to} already");
    }
    if !json {
        eprintln!(
            "asked host {} to hand project {project} over to {to}",
            before.host
        );
    }
    let deadline = started + Duration::from_secs(timeout);
    let lease = loop {
        let l = state
            .lease(&project)
            .with_context(|| format!("reading the lease of project {project}"))?;
        if let Some(l) = l.filter(|l| l.host == to && l.serving_ms.is_some()) {
            break l;
        }
        if Instant::now() >= deadline {
            bail!(
                "project {project} is not serving on host {to} after {timeout} s\n  hint: see `recast hosts`; the move goes on when host {} finishes its rollouts",
                before.host
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let seconds = started.elapsed().as_secs_f64();
    if json {
        output::json(&serde_json::json!({
            "project": project, "from": before.host, "to": to, "token": lease.token,
            "seconds": (seconds * 10.0).round() / 10.0,
        }))?;
    } else {
        output::line(&format!(
            "moved project {project} from {} to {to} in {seconds:.1} s (lease token {})",
            before.host, lease.token
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `recast hosts`: every host, whether it runs, what it stands by for, and the projects it holds.
pub fn list(data_dir: &Path, state: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let state: State = recast_server::open_state(data_dir, state)?;
    let (hosts, leases, now) = (state.hosts()?, state.leases()?, state.db_now_ms()?);
    if json {
        let hosts: Vec<serde_json::Value> = hosts
            .iter()
            .map(|h| {
                serde_json::json!({
                    "name": h.name, "api": h.api, "running": h.running(now),
                    "standby_for": h.standby_for.iter().map(|s| if s == "*" { "all" } else { s }).collect::<Vec<_>>(),
                    "projects": leases.iter().filter(|l| l.host == h.name).map(|l| &l.project).collect::<Vec<_>>(),
                })
            })
            .collect();
        let leases: Vec<serde_json::Value> = leases
            .iter()
            .map(|l| {
                serde_json::json!({
                    "project": l.project, "host": (!l.host.is_empty()).then_some(&l.host),
                    "token": l.token, "expires_in_ms": l.expires_ms - now,
                    "serving": l.serving_ms.is_some(), "move_to": l.move_to,
                })
            })
            .collect();
        output::json(&serde_json::json!({ "hosts": hosts, "leases": leases }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if hosts.is_empty() {
        output::line("no host has registered with this state")?;
    }
    for h in &hosts {
        let projects: Vec<&str> = leases
            .iter()
            .filter(|l| l.host == h.name)
            .map(|l| l.project.as_str())
            .collect();
        let standby = if h.standby_for.is_empty() {
            String::new()
        } else {
            format!(
                ", standby for {}",
                h.standby_for.join(", ").replace('*', "all")
            )
        };
        output::line(&format!(
            "{} ({}, API {}{standby}): {}",
            h.name,
            if h.running(now) {
                "running"
            } else {
                "not running"
            },
            h.api,
            if projects.is_empty() {
                "no projects".to_string()
            } else {
                projects.join(", ")
            }
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
