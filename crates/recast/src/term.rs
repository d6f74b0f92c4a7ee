//! How the command talks to a person: colour (`--color`, `NO_COLOR`, terminals only), how much
//! it says (`-q`, `-v`), and spinners and byte progress bars on a terminal (`indicatif`).
//!
//! Data on stdout (and every `--json` output) is never decorated; only text for people is.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// How much the command says on stderr (`-q`, `-v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Errors only.
    Quiet,
    /// Progress on a terminal, notes.
    Normal,
    /// Progress also when stderr is not a terminal, and every API request.
    Verbose,
}

struct Settings {
    colour_out: bool,
    colour_err: bool,
    verbosity: Verbosity,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Set once, from the command line, before anything is printed.
pub fn init(color: ColorChoice, quiet: bool, verbose: bool) {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let decide = |tty: bool| match color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => tty && !no_color,
    };
    let _ = SETTINGS.set(Settings {
        colour_out: decide(std::io::stdout().is_terminal()),
        colour_err: decide(std::io::stderr().is_terminal()),
        verbosity: match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (_, true) => Verbosity::Verbose,
            _ => Verbosity::Normal,
        },
    });
}

fn settings() -> &'static Settings {
    SETTINGS.get_or_init(|| Settings {
        colour_out: false,
        colour_err: false,
        verbosity: Verbosity::Normal,
    })
}

/// Whether text for people on stderr is coloured (the server's log too).
pub fn colours_stderr() -> bool {
    settings().colour_err
}

pub fn verbosity() -> Verbosity {
    settings().verbosity
}

/// A colour of text for people.
#[derive(Debug, Clone, Copy)]
pub enum Paint {
    Red,
    Green,
    Yellow,
    Cyan,
    Dim,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Paint::Red => "31",
            Paint::Green => "32",
            Paint::Yellow => "33",
            Paint::Cyan => "36",
            Paint::Dim => "2",
        }
    }
}

fn paint_if(on: bool, text: &str, p: Paint) -> String {
    if on {
        format!("\x1b[{}m{text}\x1b[0m", p.code())
    } else {
        text.to_string()
    }
}

/// `text` painted for stdout (when stdout takes colour).
pub fn out(text: &str, p: Paint) -> String {
    paint_if(settings().colour_out, text, p)
}

/// `text` painted for stderr (when stderr takes colour).
pub fn err(text: &str, p: Paint) -> String {
    paint_if(settings().colour_err, text, p)
}

/// An error for stderr: `error:` in red, its `hint:` lines in cyan.
pub fn error_text(text: &str) -> String {
    let body: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix("  hint: ") {
            Some(h) => format!("  {} {h}", err("hint:", Paint::Cyan)),
            None => l.to_string(),
        })
        .collect();
    format!("{} {}", err("error:", Paint::Red), body.join("\n"))
}

/// A note for people on stderr (not under `-q`).
pub fn note(text: &str) {
    if verbosity() > Verbosity::Quiet {
        eprintln!("{} {text}", err("note:", Paint::Dim));
    }
}

/// Whether progress shows: on a terminal, or anywhere with `-v`; never with `-q`.
fn progress_shows() -> bool {
    match verbosity() {
        Verbosity::Quiet => false,
        Verbosity::Normal => std::io::stderr().is_terminal(),
        Verbosity::Verbose => true,
    }
}

/// Every bar and spinner shown, drawn together (a build's spinner and its base pulls' bars).
static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// A spinner with the elapsed time for a long step, on stderr; hidden when progress does not
/// show (then `-v` prints each message as a line instead).
pub struct Spinner {
    bar: Option<ProgressBar>,
}

impl Spinner {
    pub fn new(what: &str) -> Spinner {
        let bar = (progress_shows() && std::io::stderr().is_terminal()).then(|| {
            let bar = BARS.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar.set_message(what.to_string());
            bar
        });
        if bar.is_none() && verbosity() == Verbosity::Verbose {
            eprintln!("  {what}");
        }
        Spinner { bar }
    }

    /// Say what it is doing now.
    pub fn set(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None if verbosity() == Verbosity::Verbose => eprintln!("  {msg}"),
            None => {}
        }
    }

    /// Print a line above the spinner (or plainly, without one), unless `-q`.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(_) => {
                let _ = BARS.println(line);
            }
            None if verbosity() > Verbosity::Quiet => eprintln!("{line}"),
            None => {}
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// A byte progress bar with the rate, for transfers (push, pull, export), on a terminal only;
/// it is a `recast_image` [`Progress`](recast_image::progress::Progress).
pub struct Bytes {
    bar: ProgressBar,
}

impl Bytes {
    pub fn new(what: &str) -> Bytes {
        if !(progress_shows() && std::io::stderr().is_terminal()) {
            return Bytes {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = BARS.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Bytes { bar }
    }
}

impl Bytes {
    /// A bar for `what`, as a `recast_image` progress (the build's base pulls).
    pub fn boxed(what: &str) -> Box<dyn recast_image::progress::Progress> {
        Box::new(Bytes::new(what))
    }
}

impl recast_image::progress::Progress for Bytes {
    fn total(&self, bytes: u64) {
        self.bar.set_length(bytes);
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
