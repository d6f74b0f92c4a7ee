//! Shared plumbing of commands: the data directory, JSON on stdout, progress on a terminal.

use anyhow::Context as _;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `--data-dir`, `RECAST_DATA_DIR`, `$XDG_DATA_HOME/recast`, or `~/.local/share/recast`;
/// made private ([`private_dir`]).
pub fn data_dir(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = if let Some(d) = flag {
        d.to_path_buf()
    } else if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        PathBuf::from(x).join("recast")
    } else {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .context("no data directory: set --data-dir, RECAST_DATA_DIR or HOME")?;
        PathBuf::from(home).join(".local/share/recast")
    };
    private_dir(&dir)?;
    Ok(dir)
}

/// Create the data directory 0700, or make an existing one 0700: it holds the state, instance
/// configurations (service environments) and the API token, so no other user may enter it. A
/// shared directory (sticky, like `/tmp`) or one owned by another user is refused.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(e),
                })
                .with_context(|| format!("creating the data directory {}", dir.display()))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("reading the data directory {}", dir.display())),
        Ok(m) if !m.is_dir() => anyhow::bail!(
            "the data directory {} is not a directory\n  hint: pick another with --data-dir",
            dir.display()
        ),
        Ok(m) if m.mode() & 0o1000 != 0 || m.uid() != rustix::process::geteuid().as_raw() => {
            anyhow::bail!(
                "the data directory {} is shared (mode {:o}, owner uid {})\n  hint: give recast a directory of its own with --data-dir or RECAST_DATA_DIR",
                dir.display(),
                m.mode() & 0o7777,
                m.uid()
            )
        }
        // 0710 with the user-namespace group: the mapped root of `user_namespace` instances
        // must traverse it (the runtime sets that up); nobody else can.
        Ok(m) if m.mode() & 0o077 == 0o010 && m.gid() == recast_runtime::USERNS_HOST_ID => Ok(()),
        Ok(m) if m.mode() & 0o077 != 0 => {
            std::fs::set_permissions(dir, PermissionsExt::from_mode(0o700)).with_context(|| {
                format!("making the data directory {} private (0700)", dir.display())
            })
        }
        Ok(_) => Ok(()),
    }
}

/// The image store of a data directory.
pub fn store(data_dir: &Path) -> anyhow::Result<recast_image::Store> {
    Ok(recast_image::Store::open(
        &recast_api::DataDir::new(data_dir).store(),
    )?)
}

/// Print `value` as one line of JSON on stdout. A closed pipe is not an error.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let text = serde_json::to_string(value)?;
    match writeln!(out, "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Print a line of data on stdout. A closed pipe is not an error.
pub fn line(text: &str) -> anyhow::Result<()> {
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Progress messages for people: a spinner with the elapsed time on a terminal, silent in pipes
/// (each message a line with `-v`, nothing with `-q`).
pub fn progress() -> impl FnMut(&str) {
    let spinner = crate::term::Spinner::new("working");
    move |msg: &str| spinner.set(msg)
}

/// "1.2 MiB".
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A small file given on the command line (a var file, a secret): at most 1 MiB, UTF-8 when
/// `text` is read through [`read_small`].
pub fn read_small_bytes(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    const MAX: u64 = 1 << 20;
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !f.metadata()?.is_file() {
        anyhow::bail!("cannot read {what} {}: not a regular file", path.display());
    }
    let mut bytes = Vec::new();
    f.take(MAX + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if bytes.len() as u64 > MAX {
        anyhow::bail!("{what} {} is larger than 1 MiB", path.display());
    }
    Ok(bytes)
}

/// [`read_small_bytes`] as text.
pub fn read_small(path: &Path, what: &str) -> anyhow::Result<String> {
    String::from_utf8(read_small_bytes(path, what)?)
        .map_err(|_| anyhow::anyhow!("{what} {} is not UTF-8 text", path.display()))
}

/// An error's text as its message and its hints: each `  hint: …` line is a hint (several are
/// joined by a newline), every other line stays in the message.
pub fn split_hints(text: &str) -> (String, Option<String>) {
    let (hints, rest): (Vec<&str>, Vec<&str>) =
        text.lines().partition(|l| l.starts_with("  hint: "));
    let hints: Vec<&str> = hints.iter().map(|h| &h["  hint: ".len()..]).collect();
    (
        rest.join("\n"),
        (!hints.is_empty()).then(|| hints.join("\n")),
    )
}

/// Clap's text of bad usage as a message (what is wrong, without `error: `) and a hint (its
/// usage line and where help is).
pub fn usage_error(text: &str) -> (String, String) {
    let (what, usage) = text.split_once("\n\nUsage: ").unwrap_or((text, ""));
    let what = what.strip_prefix("error: ").unwrap_or(what);
    // Clap's own tips ("to pass '--json' as a value…") are noise here.
    let what = what.split("\n\n  tip:").next().unwrap_or(what).trim_end();
    let usage = usage.lines().next().unwrap_or("").trim();
    let hint = if usage.is_empty() {
        "see --help".to_string()
    } else {
        format!("usage: {usage}; see --help")
    };
    (what.to_string(), hint)
}

/// A failure as JSON on stdout, for `--json`: `{"error": {"message": …, "hint": …}}`.
pub fn json_error(message: &str, hint: Option<&str>) {
    let v = serde_json::json!({ "error": { "message": message, "hint": hint } });
    println!("{v}");
}

/// `bytes` on stdout; a reader that went away (`| head`) is no error.
pub fn raw(bytes: &[u8]) -> anyhow::Result<std::process::ExitCode> {
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(std::process::ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_leave_the_message_and_every_other_line_stays() {
        let text = "the spec is invalid:\nrecast.hcl:1:1: error: cannot read spec\n  hint: pass -f PATH\n1 error";
        assert_eq!(
            split_hints(text),
            (
                "the spec is invalid:\nrecast.hcl:1:1: error: cannot read spec\n1 error"
                    .to_string(),
                Some("pass -f PATH".to_string())
            )
        );
        assert_eq!(
            split_hints("a\n  hint: one\nb\n  hint: two"),
            ("a\nb".to_string(), Some("one\ntwo".to_string()))
        );
        assert_eq!(split_hints("plain"), ("plain".to_string(), None));
    }

    #[test]
    fn bad_usage_says_what_is_missing_and_how_to_call() {
        let clap = "error: the following required arguments were not provided:\n  <SERVICE>\n\nUsage: recast history --json <SERVICE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_error(clap),
            (
                "the following required arguments were not provided:\n  <SERVICE>".to_string(),
                "usage: recast history --json <SERVICE>; see --help".to_string()
            )
        );
        let tip = "error: unexpected argument '--json' found\n\n  tip: to pass '--json' as a value, use '-- --json'\n\nUsage: recast logs <SERVICE>\n";
        assert_eq!(usage_error(tip).0, "unexpected argument '--json' found");
    }
}
