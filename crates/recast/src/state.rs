//! `recast state migrate | backup`: move an installation's records between SQLite and
//! PostgreSQL (copied in one transaction, checked row for row), or write a consistent copy of
//! them to a new SQLite file. The copying is `recast_state::State::copy_to` / `backup`.
//!
//! A server running on the data directory is not stopped nor refused: the copy is one
//! consistent snapshot of the source, and what the server writes after it began is not in it
//! (`migrate` warns; stop the server first to move an installation without losing a write).

use crate::output;
use anyhow::{Context as _, bail};
use clap::Subcommand;
use recast_state::{CopyReport, State, redact_url};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy every record of one state into another, empty one (SQLite to PostgreSQL or back),
    /// in one transaction, checked row for row
    Migrate {
        /// The state to copy: sqlite:PATH, a path to a state.db, or postgres://USER@HOST:PORT/DB
        /// (`?host=/socket/dir` for a Unix socket); it must exist
        #[arg(long, value_name = "URL")]
        from: String,
        /// The state to copy into (created and migrated if needed); it must hold no rows
        #[arg(long, value_name = "URL")]
        to: String,
        /// Print only JSON on stdout: {"from", "to", "tables": {TABLE: ROWS}, "rows"}
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent copy of the state to a new SQLite file (refused if FILE exists)
    Backup {
        /// The SQLite file to write (it opens as a state: `--state FILE`)
        file: PathBuf,
        /// The state to back up [default: $RECAST_STATE, else the running server's state, else
        /// state.db in the data directory]
        #[arg(long, value_name = "URL")]
        state: Option<String>,
        /// Print only JSON on stdout: {"from", "to", "tables": {TABLE: ROWS}, "rows"}
        #[arg(long)]
        json: bool,
    },
}

pub fn run(data_dir: &Path, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Migrate { from, to, json } => migrate(data_dir, &from, &to, json),
        Command::Backup { file, state, json } => {
            let src = recast_server::open_state(data_dir, state.as_deref())?;
            let report = src.backup(&file).with_context(|| {
                format!(
                    "backing up the state {} to {}",
                    src.location(),
                    file.display()
                )
            })?;
            let to = file.display().to_string();
            print(src.location(), &to, &report, json, "backed up")
        }
    }
}

/// The SQLite file a state URL names, if it names one (`sqlite:PATH` or a plain path).
fn sqlite_path(url: &str) -> Option<PathBuf> {
    if url.contains("://") && !url.starts_with("sqlite:") {
        return None;
    }
    let path = url.strip_prefix("sqlite:").unwrap_or(url);
    Some(PathBuf::from(path.strip_prefix("//").unwrap_or(path)))
}

fn migrate(data_dir: &Path, from: &str, to: &str, json: bool) -> anyhow::Result<ExitCode> {
    if let Some(p) = sqlite_path(from).filter(|p| !p.exists()) {
        bail!(
            "--from {}: there is no state file {}",
            redact_url(from),
            p.display()
        );
    }
    if let Some(pid) = running_server(data_dir) {
        eprintln!(
            "warning: a recast server (pid {pid}) is running on {}: what it writes after the copy begins is not in the copy (stop it first to move the installation)",
            data_dir.display()
        );
    }
    let src = State::open_url(from).context("opening --from")?;
    let created = sqlite_path(to).filter(|p| !p.exists());
    let copied = State::open_url(to)
        .context("opening --to")
        .and_then(|dest| {
            let r = src.copy_to(&dest);
            r.with_context(|| format!("copying {} to {}", src.location(), dest.location()))
        });
    let report = match copied {
        Ok(r) => r,
        Err(e) => {
            // A file this command created holds nothing worth keeping.
            if let Some(p) = created {
                for suffix in ["", "-wal", "-shm"] {
                    let mut f = p.clone().into_os_string();
                    f.push(suffix);
                    std::fs::remove_file(f).ok();
                }
            }
            return Err(e);
        }
    };
    print(src.location(), &redact_url(to), &report, json, "copied")
}

/// The pid of the server running on `data_dir`, if one is.
fn running_server(data_dir: &Path) -> Option<u32> {
    let bytes = std::fs::read(recast_server::info_path(data_dir)).ok()?;
    let info: recast_server::ServerInfo = serde_json::from_slice(&bytes).ok()?;
    Path::new(&format!("/proc/{}", info.pid))
        .exists()
        .then_some(info.pid)
}

/// `done`: what was done ("copied", "backed up").
fn print(
    from: &str,
    to: &str,
    report: &CopyReport,
    json: bool,
    done: &str,
) -> anyhow::Result<ExitCode> {
    let total: u64 = report.tables.iter().map(|t| t.rows).sum();
    if json {
        let tables: serde_json::Map<String, serde_json::Value> = report
            .tables
            .iter()
            .map(|t| (t.table.clone(), t.rows.into()))
            .collect();
        output::json(&serde_json::json!({
            "from": from, "to": to, "tables": tables, "rows": total,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    output::line(&format!("{done} {total} rows from {from} to {to}:"))?;
    for t in &report.tables {
        output::line(&format!("  {}: {} rows", t.table, t.rows))?;
    }
    Ok(ExitCode::SUCCESS)
}
