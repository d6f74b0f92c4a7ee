//! The `recast` command line: parse arguments, then call one operation per command.

mod build;
mod image;
mod imagetest;
mod output;
mod run;
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

    /// Where recast keeps its image store, caches and state [default: $XDG_DATA_HOME/recast]
    #[arg(long, global = true, env = "RECAST_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

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
    /// Build the spec's images, reproducibly
    Build {
        /// Images to build (default: all)
        images: Vec<String>,
        /// Build again from nothing in a fresh store and fail if any digest differs
        #[arg(long)]
        check: bool,
        /// Print only JSON on stdout: [{"image", "digest", "size", "cached"}]
        #[arg(long)]
        json: bool,
    },
    /// Run each image's test block against a throwaway instance
    Test {
        /// Images to test (default: all)
        images: Vec<String>,
        /// Print only JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Run one instance of an image in the foreground (Ctrl-C stops and removes it)
    Run {
        /// NAME[:TAG], NAME@sha256:DIGEST, or a digest
        image: String,
        /// The port it listens on, given to it as $PORT (host network)
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Manage the images in the store
    #[command(subcommand)]
    Image(image::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let data_dir = || output::data_dir(cli.data_dir.as_deref());
    let result = match cli.command {
        Command::Validate { json } => validate::run(&cli.file, json),
        Command::Build {
            images,
            check,
            json,
        } => data_dir().and_then(|d| build::run(&cli.file, &d, &images, check, json)),
        Command::Test { images, json } => {
            data_dir().and_then(|d| imagetest::run(&cli.file, &d, &images, json))
        }
        Command::Run { image, port } => data_dir().and_then(|d| run::run(&d, &image, port)),
        Command::Image(cmd) => data_dir().and_then(|d| image::run(&d, cmd)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
