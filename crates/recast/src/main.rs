//! The `recast` command line: parse arguments, then call one operation per command.

mod validate;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "recast",
    version,
    about = "Immutable infrastructure in one binary: build, test, plan, deploy by replacement, guard",
    propagate_version = true
)]
struct Cli {
    /// The spec: a recast.hcl file, or a directory whose *.hcl files form one project
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        default_value = "recast.hcl",
        value_name = "PATH"
    )]
    file: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the spec; exit 1 with file:line:column errors
    Validate {
        /// Print only JSON on stdout: {"valid": bool, "errors": [...]}
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { json } => validate::run(&cli.file, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
