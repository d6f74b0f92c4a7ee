//! `recast volume ls | snapshots | restore`: the volumes of deployed services and the snapshots
//! recast takes of exclusive volumes before a recreate rollout.

use crate::client::Client;
use crate::output;
use anyhow::bail;
use clap::Subcommand;
use recast_api::v1;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The volumes of deployed services (all, or SERVICE's)
    Ls {
        /// Only this service (all when omitted)
        service: Option<String>,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// The snapshots of a service's exclusive volumes, oldest first
    Snapshots {
        /// The service, by its name in the spec
        service: String,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Put a snapshot back: stops the service's instances, replaces the volume's content with
    /// the snapshot's, starts the live release again (downtime)
    Restore {
        /// The service, by its name in the spec
        service: String,
        /// The volume, by its name in the service
        volume: String,
        /// The snapshot's number or directory name, as `recast volume snapshots` lists it
        snapshot: String,
        /// Do not ask (required without a terminal)
        #[arg(long)]
        yes: bool,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
}

fn time(ms: Option<i64>) -> String {
    ms.map_or_else(
        || "-".into(),
        |ms| recast_image::oci::rfc3339(ms.max(0) as u64 / 1000),
    )
}

pub fn run(data_dir: &Path, cmd: Command) -> anyhow::Result<ExitCode> {
    let client = Client::find(data_dir)?;
    match cmd {
        Command::Ls { service, json } => {
            let q = service.map_or_else(String::new, |s| format!("?service={s}"));
            let v: v1::Volumes = client.get_as(&format!("/v1/volumes{q}"))?;
            if json {
                output::json(&v)?;
                return Ok(ExitCode::SUCCESS);
            }
            output::line(&format!(
                "{:<20} {:<12} {:<16} {:<10} {:<10} {:<21} PATH",
                "SERVICE", "VOLUME", "MOUNT", "EXCLUSIVE", "SNAPSHOTS", "LAST SNAPSHOT (UTC)"
            ))?;
            for x in &v.volumes {
                output::line(&format!(
                    "{:<20} {:<12} {:<16} {:<10} {:<10} {:<21} {}",
                    x.service,
                    x.volume,
                    x.mount,
                    if x.exclusive { "yes" } else { "no" },
                    x.snapshots,
                    time(x.last_snapshot_ms),
                    x.path
                ))?;
            }
        }
        Command::Snapshots { service, json } => {
            let v: v1::Snapshots =
                client.get_as(&format!("/v1/volumes/snapshots?service={service}"))?;
            if json {
                output::json(&v)?;
                return Ok(ExitCode::SUCCESS);
            }
            output::line(&format!(
                "{:<5} {:<12} {:<7} {:<7} {:<21} PATH",
                "#", "VOLUME", "BEFORE", "DATA OF", "TAKEN (UTC)"
            ))?;
            for s in &v.snapshots {
                output::line(&format!(
                    "{:<5} {:<12} {:<7} {:<7} {:<21} {}",
                    s.id,
                    s.volume,
                    format!("r{}", s.before_release),
                    s.of_release.map_or_else(|| "-".into(), |n| format!("r{n}")),
                    time(Some(s.created_ms)),
                    s.path
                ))?;
            }
        }
        Command::Restore {
            service,
            volume,
            snapshot,
            yes,
            json,
        } => {
            if !yes && !confirm_restore(&service, &volume, &snapshot, json)? {
                eprintln!("nothing restored");
                return Ok(ExitCode::FAILURE);
            }
            let v: v1::VolumeRestored = client.post_as(
                "/v1/volumes/restore",
                &v1::RestoreRequest {
                    service: service.clone(),
                    project: None,
                    volume: volume.clone(),
                    snapshot: v1::SnapshotRef::Name(snapshot.clone()),
                },
            )?;
            if json {
                output::json(&v)?;
            } else {
                output::line(&format!(
                    "{service}: volume {volume} restored from {} ({} instance(s) stopped, {} started)",
                    v.snapshot.path,
                    v.stopped,
                    v.started.len()
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Ask before a restore replaces a volume's content; refused without a terminal or with `--json`.
fn confirm_restore(
    service: &str,
    volume: &str,
    snapshot: &str,
    json: bool,
) -> anyhow::Result<bool> {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !interactive || json {
        bail!(
            "refusing to restore volume {volume} of {service} without confirmation: {}\n  hint: pass --yes (the service's instances stop, the volume's content is replaced by snapshot {snapshot}, the live release starts again)",
            if json {
                "--json leaves no room for a question"
            } else {
                "there is no terminal to ask on"
            }
        );
    }
    eprint!(
        "Stop {service}, replace volume {volume} with snapshot {snapshot} and start it again? The data written since is lost. [y/N] "
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
