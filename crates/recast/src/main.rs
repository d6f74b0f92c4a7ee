//! The `recast` command line: parse arguments, then call one operation per command.

mod build;
mod client;
mod deploy;
mod hosts;
mod image;
mod imagetest;
mod lock;
mod output;
mod run;
mod secrets;
mod serve;
mod state;
mod term;
mod validate;
mod volume;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// `recast --version`: the crate's version and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("RECAST_COMMIT"), ")");

#[derive(Debug, Parser)]
#[command(
    name = "recast",
    version = VERSION,
    about = "Immutable infrastructure in one binary: build, test, plan, deploy by replacement, guard",
    propagate_version = true
)]
struct Cli {
    /// Where recast keeps its image store, caches and state [default: $XDG_DATA_HOME/recast]
    #[arg(long, global = true, env = "RECAST_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Colour: auto (on a terminal, unless NO_COLOR is set), always or never
    #[arg(long, global = true, value_enum, default_value_t = term::ColorChoice::Auto, value_name = "WHEN")]
    color: term::ColorChoice,

    /// Say less: errors only (no progress, no notes)
    #[arg(short = 'q', long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// Say more: progress also when stderr is not a terminal, and each API request
    #[arg(short = 'v', long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

/// `-f PATH`, for the commands that read a spec.
#[derive(Debug, clap::Args)]
struct Spec {
    /// The spec: a recast.hcl file, or a directory whose *.hcl files form one project
    #[arg(
        short = 'f',
        long = "file",
        default_value = "recast.hcl",
        value_name = "PATH"
    )]
    file: PathBuf,
    /// The environment to load the spec for (an `environment "NAME"` block)
    #[arg(long, value_name = "NAME")]
    env: Option<String>,
    /// Set a variable; also written -var NAME=VALUE (repeatable; later ones win)
    #[arg(long = "var", value_name = "NAME=VALUE")]
    var: Vec<String>,
    /// Read variable values from a file of NAME = VALUE lines (HCL; repeatable)
    #[arg(long = "var-file", value_name = "FILE")]
    var_file: Vec<PathBuf>,
}

impl Spec {
    /// The spec path and its inputs: RECAST_VAR_* of this process, then var files, then -var.
    fn arg(&self) -> anyhow::Result<build::SpecArg> {
        use recast_spec::Given;
        // Only RECAST_VAR_* matter; a non-UTF-8 one is an error, any other variable is not read.
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            if let Some(k) = k.to_str().filter(|k| k.starts_with("RECAST_VAR_")) {
                let v = v
                    .into_string()
                    .map_err(|_| anyhow::anyhow!("the value of {k} is not UTF-8"))?;
                env.push((k.to_string(), v));
            }
        }
        let mut vars = Given::from_env(env);
        for f in &self.var_file {
            let text = output::read_small(f, "var file")?;
            vars.extend(Given::from_file(f, &text).map_err(|d| anyhow::anyhow!("{d}"))?);
        }
        for v in &self.var {
            vars.push(Given::from_flag(v).map_err(anyhow::Error::msg)?);
        }
        Ok(build::SpecArg {
            path: self.file.clone(),
            inputs: recast_spec::Inputs {
                env: self.env.clone(),
                vars,
            },
        })
    }
}

/// `--env NAME`, for the commands that name a deployed service.
#[derive(Debug, clap::Args)]
struct Env {
    /// The environment of the service (when the spec declares environments)
    #[arg(long, value_name = "NAME")]
    env: Option<String>,
}

/// `--locked`, for the commands that build.
#[derive(Debug, clap::Args)]
struct Locked {
    /// Fail if recast.lock is missing or does not pin every base tag the spec uses, instead of
    /// resolving and recording them (for CI)
    #[arg(long)]
    locked: bool,
}

/// Where the server's API listens.
#[derive(Debug, clap::Args)]
struct Api {
    /// API address (loopback; the CLI finds it through the data directory)
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Allow --listen on a non-loopback address: the API is plain HTTP, so its token and
    /// everything it says cross the network readable by anyone on the path
    #[arg(long)]
    insecure_listen: bool,
    /// Where the state lives: postgres://USER@HOST:PORT/DB (`?host=/socket/dir` for a Unix
    /// socket) or sqlite:PATH; default: state.db in the data directory
    #[arg(long, env = "RECAST_STATE")]
    state: Option<String>,
    /// This server's name among the hosts sharing the state [default: the machine's hostname]
    #[arg(long, env = "RECAST_HOST_NAME", value_name = "NAME")]
    host_name: Option<String>,
    /// Take over these projects (comma-separated, or `all`) when the host acting for them stops
    /// renewing its lease
    #[arg(long, value_name = "PROJECT|all")]
    standby_for: Vec<String>,
    /// How long a project's lease lasts without renewal: a standby takes it over after this
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    lease_time: u64,
    /// How the server logs on stderr: human lines (coloured on a terminal unless NO_COLOR is
    /// set) or json, one object per line (timestamp, level, message and fields)
    #[arg(long, value_enum, default_value_t = serve::LogFormat::Human, value_name = "FORMAT")]
    log_format: serve::LogFormat,
}

impl Api {
    fn host(&self) -> anyhow::Result<recast_server::engine::HostConfig> {
        recast_server::engine::HostConfig::new(
            self.host_name.as_deref(),
            &self.standby_for,
            std::time::Duration::from_secs(self.lease_time),
        )
        .map_err(anyhow::Error::msg)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the spec; exit 1 with file:line:column errors
    #[command(
        after_help = "Examples:\n  recast validate\n  recast validate -f deploy/ --env production --json"
    )]
    Validate {
        #[command(flatten)]
        spec: Spec,
        /// Print only JSON on stdout: {"valid": bool, "errors": [...]}
        #[arg(long)]
        json: bool,
    },
    /// Build the spec's images, reproducibly
    #[command(
        after_help = "Examples:\n  recast build\n  recast build web --check        # rebuild from nothing, same digest or the first difference"
    )]
    Build {
        #[command(flatten)]
        spec: Spec,
        /// Images to build (default: all)
        images: Vec<String>,
        /// Build again from nothing in a fresh store and fail if any digest differs
        #[arg(long)]
        check: bool,
        /// Run every step again: ignore the step, layer and file caches
        #[arg(long)]
        no_cache: bool,
        #[command(flatten)]
        locked: Locked,
        /// Print only JSON on stdout: [{"image", "digest", "size", "cached"}]
        #[arg(long)]
        json: bool,
    },
    /// Run each image's test block against a throwaway instance
    Test {
        #[command(flatten)]
        spec: Spec,
        /// Images to test (default: all)
        images: Vec<String>,
        #[command(flatten)]
        locked: Locked,
        /// Print only JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Pin every base tag the spec uses to a digest in recast.lock (existing entries stay)
    Lock {
        #[command(flatten)]
        spec: Spec,
        /// Resolve the tags again from their registries: the given ones (default: all)
        #[arg(long)]
        update: bool,
        /// Tags to move with --update, as the spec writes them (debian:12)
        refs: Vec<String>,
        /// Print only JSON on stdout: {"path", "bases": [{"reference", "digest", "change"}]}
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
    /// The control plane: supervisor, API; starts the data plane (routes) when none runs
    Server {
        #[command(flatten)]
        api: Api,
    },
    /// The data plane of a data directory: routes, routing tables, traffic counters. Started
    /// and configured by `recast server`, and kept running when the server stops.
    #[command(hide = true)]
    Dataplane {
        /// Take the listening sockets over from the data plane serving the directory (an
        /// upgrade: no connection is dropped), which then drains and exits
        #[arg(long)]
        takeover: bool,
    },
    /// Server in the foreground, and apply the spec (development and demos)
    #[command(after_help = "Examples:\n  recast up -f examples/hello")]
    Up {
        #[command(flatten)]
        spec: Spec,
        #[command(flatten)]
        api: Api,
    },
    /// What apply would do, rollout steps included
    #[command(
        after_help = "Examples:\n  recast plan --env staging\n  recast plan --detailed-exitcode || [ $? = 2 ] && echo changes"
    )]
    Plan {
        #[command(flatten)]
        spec: Spec,
        #[command(flatten)]
        locked: Locked,
        /// Print the plan as JSON
        #[arg(long)]
        json: bool,
        /// Exit 0 with no changes, 2 with changes, 1 on error (as terraform plan does)
        #[arg(long)]
        detailed_exitcode: bool,
        /// Save the plan to FILE, for `recast apply FILE` (also written -out FILE)
        #[arg(long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Build, test, then roll out through the running server
    #[command(
        after_help = "Examples:\n  recast apply --yes\n  recast apply --env staging -var replicas=3 --yes\n  recast apply --detach --yes && recast status --watch\n  recast plan -out web.plan && recast apply web.plan"
    )]
    Apply {
        /// A plan saved by `recast plan -out FILE`: apply exactly it, or refuse if the spec, the
        /// images, the secrets or the state moved since
        #[arg(value_name = "PLAN")]
        saved: Option<PathBuf>,
        #[command(flatten)]
        spec: Spec,
        #[command(flatten)]
        locked: Locked,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
        /// Start the apply and return at once
        #[arg(long)]
        detach: bool,
        /// Do not ask for confirmation (required without a terminal, and with --json)
        #[arg(long)]
        yes: bool,
    },
    /// Releases, instances, health, traffic split
    #[command(
        after_help = "Examples:\n  recast status\n  recast status web --env production --json"
    )]
    Status {
        /// Only this service (all when omitted)
        service: Option<String>,
        #[command(flatten)]
        env: Env,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
        /// Refresh every half second: live split, instances, verdicts
        #[arg(long)]
        watch: bool,
    },
    /// Every release of a service with digest, time, outcome
    #[command(
        after_help = "Examples:\n  recast history web\n  recast history web --env staging --json"
    )]
    History {
        /// The service, by its name in the spec
        service: String,
        #[command(flatten)]
        env: Env,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Back to the previous (or Nth) release
    #[command(
        after_help = "Examples:\n  recast rollback web\n  recast rollback web --to 3 --env production"
    )]
    Rollback {
        /// The service, by its name in the spec
        service: String,
        #[command(flatten)]
        env: Env,
        /// The release number to go back to
        #[arg(long)]
        to: Option<i64>,
        /// Also put the exclusive volumes back as the target release left them (from the
        /// snapshot taken before the next release started); without it a terminal is asked
        #[arg(long)]
        restore_volumes: bool,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Volumes of deployed services and their snapshots
    #[command(subcommand)]
    Volume(volume::Command),
    /// Move the state between SQLite and PostgreSQL, or back it up to a SQLite file
    #[command(subcommand)]
    State(state::Command),
    /// Projects among hosts: hand one over to another host
    #[command(subcommand)]
    Project(hosts::Command),
    /// The hosts sharing the state, and the projects each acts for
    Hosts {
        /// The state [default: $RECAST_STATE, else the running server's state, else state.db in
        /// the data directory]
        #[arg(long, value_name = "URL")]
        state: Option<String>,
        /// Print only JSON on stdout: {"hosts": [...], "leases": [...]}
        #[arg(long)]
        json: bool,
    },
    /// Deploy to one environment the image live and healthy in another: the same digest, never a rebuild
    #[command(
        name = "promote-release",
        after_help = "Example: recast promote-release web --from staging --to production"
    )]
    PromoteRelease {
        /// The service to promote
        service: String,
        /// The environment whose live release is promoted
        #[arg(long, value_name = "ENV")]
        from: String,
        /// The environment it is deployed to
        #[arg(long, value_name = "ENV")]
        to: String,
        #[command(flatten)]
        spec: Spec,
        /// Print the apply's outcome as JSON
        #[arg(long)]
        json: bool,
        /// Promote without asking
        #[arg(long)]
        yes: bool,
    },
    /// Move a rollout on: the next canary step, or the blue/green switch
    Promote {
        /// The service, by its name in the spec
        service: String,
        #[command(flatten)]
        env: Env,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Roll a running rollout back at once
    Abort {
        /// The service, by its name in the spec
        service: String,
        #[command(flatten)]
        env: Env,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Freeze a running rollout where it is
    Pause {
        /// The service, by its name in the spec
        service: String,
        #[command(flatten)]
        env: Env,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Continue a paused rollout
    Resume {
        /// The service, by its name in the spec
        service: String,
        #[command(flatten)]
        env: Env,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Verify running instances against their images; exit 1 on drift
    Drift {
        /// Only this service (all when omitted)
        service: Option<String>,
        /// Replace the drifted instances
        #[arg(long)]
        fix: bool,
        /// Hash every file, not only those metadata cannot vouch for
        #[arg(long)]
        full: bool,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Print the logs of a service's current instances, each line prefixed with its instance
    #[command(
        after_help = "Examples:\n  recast logs web --tail 20\n  recast logs web --follow --timestamps"
    )]
    Logs {
        /// The service, by its name in the spec
        service: String,
        #[command(flatten)]
        env: Env,
        /// Keep printing new lines (`-f` is the spec file everywhere, so only --follow)
        #[arg(long)]
        follow: bool,
        /// Only the last N lines of each instance
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Only lines written within DURATION (like "30s", "5m", "1h")
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// Prefix each line with the time recast saw it (RFC 3339, UTC)
        #[arg(long, short = 't')]
        timestamps: bool,
        /// One JSON object per line: {"instance", "time", "stream", "line"} (errors as {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Retire every instance and route of the project (or of those services)
    #[command(
        after_help = "Examples:\n  recast destroy --yes\n  recast destroy web --env staging --yes"
    )]
    Destroy {
        #[command(flatten)]
        spec: Spec,
        /// Only these services (all of the project's when none is named)
        services: Vec<String>,
        /// Delete the services' volumes too
        #[arg(long)]
        volumes: bool,
        /// Do not ask for confirmation (required without a terminal)
        #[arg(long)]
        yes: bool,
        /// Destroy every project of the server, not the spec's (no spec is read)
        #[arg(long)]
        all_projects: bool,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  recast completions bash > /etc/bash_completion.d/recast\n  recast completions zsh > \"${fpath[1]}/_recast\""
    )]
    Completions {
        /// The shell to complete in
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), generated from the command line definition
    #[command(
        after_help = "Example:\n  recast man > /usr/local/share/man/man1/recast.1 && man recast"
    )]
    Man,
}

/// Raise the soft limit on open files to the hard limit: recast holds a descriptor per client
/// connection (and one upstream), and the default soft limit (often 1024) is far below what
/// the kernel allows. Instances get their own limit from their runtime spec.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            eprintln!("warning: cannot raise the open-file limit to its maximum: {e}");
        }
    }
}

/// Terraform's single-dash spellings: `-var NAME=VALUE` (and `-var=…`) is `--var`, `-out FILE`
/// is `--out`.
fn terraform_flags(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> impl Iterator<Item = std::ffi::OsString> {
    args.map(|a| match a.to_str() {
        Some("-var") => "--var".into(),
        Some("-out") => "--out".into(),
        Some(s) if s.starts_with("-var=") || s.starts_with("-out=") => format!("-{s}").into(),
        _ => a,
    })
}

fn main() -> ExitCode {
    raise_open_file_limit();
    // Everything recast creates is private unless it sets a mode itself (image files keep theirs).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let args: Vec<std::ffi::OsString> = terraform_flags(std::env::args_os()).collect();
    // With --json, a failure is JSON on stdout too: {"error": {"message", "hint"}}.
    let json = args.iter().any(|a| a == "--json");
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if json && e.use_stderr() => {
            let (message, hint) = output::usage_error(&e.to_string());
            output::json_error(&message, Some(&hint));
            e.exit()
        }
        Err(e) => e.exit(),
    };
    term::init(cli.color, cli.quiet, cli.verbose);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let text = format!("{e:#}");
            if json {
                let (message, hint) = output::split_hints(&text);
                output::json_error(&message, hint.as_deref());
            }
            eprintln!("{}", term::error_text(&text));
            ExitCode::FAILURE
        }
    }
}

// long: the dispatch table, one arm per command, each only unpacking its arguments.
fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = || output::data_dir(cli.data_dir.as_deref());
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "recast", &mut out);
            output::raw(&out)
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            output::raw(&out)
        }
        Command::Validate { spec, json } => validate::run(&spec.arg()?, json),
        Command::Build {
            spec,
            images,
            check,
            no_cache,
            locked,
            json,
        } => data_dir().and_then(|d| {
            let how = build::How {
                check,
                no_cache,
                locked: locked.locked,
                json,
            };
            build::run(&spec.arg()?, &d, &images, how)
        }),
        Command::Test {
            spec,
            images,
            locked,
            json,
        } => {
            data_dir().and_then(|d| imagetest::run(&spec.arg()?, &d, &images, locked.locked, json))
        }
        Command::Lock {
            spec,
            update,
            refs,
            json,
        } => lock::run(&spec.arg()?, update, &refs, json),
        Command::Run { image, port } => data_dir().and_then(|d| run::run(&d, &image, port)),
        Command::Image(cmd) => data_dir().and_then(|d| image::run(&d, cmd)),
        Command::Dataplane { takeover } => data_dir().and_then(|d| {
            recast_dataplane::run(&d, takeover).map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Server { api } => data_dir().and_then(|d| {
            serve::run(
                &d,
                api.listen,
                api.insecure_listen,
                api.state.as_deref(),
                api.host()?,
                api.log_format,
                None,
            )
        }),
        Command::Up { spec, api } => data_dir().and_then(|d| {
            serve::run(
                &d,
                api.listen,
                api.insecure_listen,
                api.state.as_deref(),
                api.host()?,
                api.log_format,
                Some(&spec.arg()?),
            )
        }),
        Command::Plan {
            spec,
            locked,
            json,
            detailed_exitcode,
            out,
        } => data_dir().and_then(|d| {
            let code = deploy::plan_cmd(&spec.arg()?, &d, locked.locked, json, out.as_deref())?;
            Ok(match code {
                deploy::Planned::Changes if detailed_exitcode => ExitCode::from(2),
                _ => ExitCode::SUCCESS,
            })
        }),
        Command::Apply {
            saved,
            spec,
            locked,
            json,
            detach,
            yes,
        } => data_dir().and_then(|d| {
            let how = deploy::ApplyHow {
                locked: locked.locked,
                json,
                detach,
                yes,
            };
            match saved {
                Some(file) => deploy::apply_saved(&file, &d, how),
                None => deploy::apply(&spec.arg()?, &d, how),
            }
        }),
        Command::Status {
            service,
            env,
            json,
            watch,
        } => data_dir()
            .and_then(|d| deploy::status(&d, service.as_deref(), env.env.as_deref(), json, watch)),
        Command::History { service, env, json } => {
            data_dir().and_then(|d| deploy::history(&d, &service, env.env.as_deref(), json))
        }
        Command::PromoteRelease {
            service,
            from,
            to,
            spec,
            json,
            yes,
        } => data_dir().and_then(|d| {
            if spec.env.is_some() {
                anyhow::bail!("promote-release takes --to ENV, not --env");
            }
            let mut arg = spec.arg()?;
            arg.inputs.env = Some(to);
            deploy::promote_release(&arg, &d, &service, &from, json, yes)
        }),
        Command::Rollback {
            service,
            env,
            to,
            restore_volumes,
            json,
        } => data_dir().and_then(|d| {
            deploy::rollback(&d, &service, env.env.as_deref(), to, restore_volumes, json)
        }),
        Command::Volume(cmd) => data_dir().and_then(|d| volume::run(&d, cmd)),
        Command::State(cmd) => data_dir().and_then(|d| state::run(&d, cmd)),
        Command::Project(cmd) => data_dir().and_then(|d| hosts::run(&d, cmd)),
        Command::Hosts { state, json } => {
            data_dir().and_then(|d| hosts::list(&d, state.as_deref(), json))
        }
        Command::Promote { service, env, json } => data_dir().and_then(|d| {
            deploy::control(
                &d,
                recast_api::v1::ControlAction::Promote,
                &service,
                env.env.as_deref(),
                json,
            )
        }),
        Command::Drift {
            service,
            fix,
            full,
            json,
        } => data_dir().and_then(|d| deploy::drift(&d, service.as_deref(), fix, full, json)),
        Command::Abort { service, env, json } => data_dir().and_then(|d| {
            deploy::control(
                &d,
                recast_api::v1::ControlAction::Abort,
                &service,
                env.env.as_deref(),
                json,
            )
        }),
        Command::Pause { service, env, json } => data_dir().and_then(|d| {
            deploy::control(
                &d,
                recast_api::v1::ControlAction::Pause,
                &service,
                env.env.as_deref(),
                json,
            )
        }),
        Command::Resume { service, env, json } => data_dir().and_then(|d| {
            deploy::control(
                &d,
                recast_api::v1::ControlAction::Resume,
                &service,
                env.env.as_deref(),
                json,
            )
        }),
        Command::Logs {
            service,
            env,
            follow,
            tail,
            since,
            timestamps,
            json,
        } => data_dir().and_then(|d| {
            let q = deploy::LogsQuery {
                follow,
                tail,
                since,
                timestamps,
                json,
            };
            deploy::logs(&d, &service, env.env.as_deref(), &q)
        }),
        Command::Destroy {
            spec,
            services,
            volumes,
            yes,
            all_projects,
            json,
        } => data_dir().and_then(|d| {
            deploy::destroy(
                &spec.arg()?,
                &d,
                &services,
                volumes,
                yes,
                all_projects,
                json,
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command, flag and argument says what it is for (`--help` is the manual).
    #[test]
    fn every_command_flag_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && !cmd.is_hide_set() {
                missing.push(format!("{path}: the command"));
            }
            for a in cmd.get_arguments() {
                let auto = matches!(a.get_id().as_str(), "help" | "version");
                if !auto && !a.is_hide_set() && a.get_help().is_none() {
                    missing.push(format!("{path}: {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "without help:\n{}", missing.join("\n"));
    }
}
