//! Instructions: their arguments and flags (BuildKit's `instructions/parse.go`), substitution
//! with the scoping of `dockerfile2llb` (global and stage `ARG`s, `ENV`, build args), and the
//! stages.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use recast_spec::{Diagnostic, Diagnostics};

use crate::lines::{self, Command as Cmd, Logical, Word};
use crate::model::*;
use crate::shell::{Env, process_word, process_words};
use crate::source::{Source, file_diag, suggest};

/// What a Dockerfile is parsed with, beyond its text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Build arguments (the spec's `args`): they override `ARG` defaults.
    pub args: BTreeMap<String, String>,
    /// The environment of base images, by the reference a stage's `FROM` names after
    /// substitution (`Stage::from`). It takes part in substitution (`ENV PATH=/x:$PATH`) and in
    /// `Run::env`; a base not listed has an empty environment.
    pub base_env: BTreeMap<String, Vec<(String, String)>>,
}

/// The instructions recast knows, as Docker spells them.
const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Build args every build has (BuildKit passes them to `RUN` without an `ARG`).
const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

const PLATFORM_ARGS: &[&str] = &[
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// Whether platform `v` (`os/arch[/variant]`, as `--platform` says it) is the host's.
fn is_host_platform(v: &str) -> bool {
    let (arch, _) = host_arch();
    let v_low = v.to_ascii_lowercase();
    let mut parts = v_low.split('/');
    let os = parts.next().unwrap_or_default();
    let a = match parts.next().unwrap_or_default() {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let rest: Vec<&str> = parts.collect();
    let variant_ok = rest.is_empty()
        || (rest.len() == 1 && (arch != "arm64" || rest[0] == "v8"))
        || (rest.len() == 1 && arch == "arm");
    os == "linux" && a == arch && variant_ok
}

/// The flags `COPY` (or `ADD`, when `add`) knows.
fn copy_flags(add: bool) -> Vec<(&'static str, FlagKind)> {
    let mut known = vec![
        ("chown", FlagKind::Str),
        ("chmod", FlagKind::Str),
        ("link", FlagKind::Bool),
        (
            "exclude",
            FlagKind::Unsupported(
                "list the files to leave out in .dockerignore, or COPY the ones you want",
            ),
        ),
    ];
    if add {
        known.extend([
            (
                "checksum",
                FlagKind::Unsupported("ADD takes local files only"),
            ),
            (
                "keep-git-dir",
                FlagKind::Unsupported("ADD takes local files only"),
            ),
            (
                "unpack",
                FlagKind::Unsupported(
                    "ADD extracts local tar archives; use COPY to copy one as is",
                ),
            ),
        ]);
    } else {
        known.extend([
            ("from", FlagKind::Str),
            (
                "parents",
                FlagKind::Unsupported("COPY each directory to its destination"),
            ),
        ]);
    }
    known
}

/// The host's platform in OCI terms: (`amd64`, variant).
pub(crate) fn host_arch() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", ""),
        "aarch64" => ("arm64", ""),
        "x86" => ("386", ""),
        "arm" => ("arm", "v7"),
        "powerpc64" => ("ppc64le", ""),
        "loongarch64" => ("loong64", ""),
        other => (other, ""),
    }
}

fn host_platform() -> String {
    match host_arch() {
        (a, "") => format!("linux/{a}"),
        (a, v) => format!("linux/{a}/{v}"),
    }
}

/// Parse a Dockerfile with no build args and no base image environments.
pub fn parse(file: &Path, text: &str) -> Result<Dockerfile, Diagnostics> {
    parse_with(file, text, &Options::default())
}

/// Parse and resolve a Dockerfile: every problem, located, or the model.
pub fn parse_with(file: &Path, text: &str, opts: &Options) -> Result<Dockerfile, Diagnostics> {
    let src = Source::new(file, text);
    let split = lines::split(&src);
    let mut p = Parser {
        src: &src,
        escape: split.escape,
        opts,
        errors: split.errors,
        global: Env::default(),
        declared: BTreeSet::new(),
        stages: Vec::new(),
        finals: Vec::new(),
        cur: None,
        pending_from: Vec::new(),
    };
    let (arch, variant) = host_arch();
    let platform = host_platform();
    for (k, v) in [
        ("TARGETPLATFORM", platform.as_str()),
        ("TARGETOS", "linux"),
        ("TARGETARCH", arch),
        ("TARGETVARIANT", variant),
        ("BUILDPLATFORM", platform.as_str()),
        ("BUILDOS", "linux"),
        ("BUILDARCH", arch),
        ("BUILDVARIANT", variant),
    ] {
        p.global.set(k, v);
    }
    for l in &split.instructions {
        p.instruction(l);
    }
    p.finish_stage();
    p.resolve_copy_from();
    if p.stages.is_empty() && p.errors.is_empty() {
        p.errors.push(file_diag(
            file,
            if split.instructions.is_empty() {
                "the Dockerfile has no instructions".into()
            } else {
                "the Dockerfile has no `FROM` instruction".into()
            },
            Some("a Dockerfile starts with `FROM IMAGE` (after any `ARG`s)".into()),
        ));
    }
    if !p.errors.is_empty() {
        let mut errors = p.errors;
        errors.sort_by_key(|d| (d.line, d.column));
        errors.dedup();
        return Err(Diagnostics(errors));
    }
    let mut warnings = Vec::new();
    for k in opts.args.keys() {
        if PLATFORM_ARGS.contains(&k.as_str()) {
            warnings.push(format!(
                "build arg `{k}` is ignored: recast builds for the host platform ({})",
                host_platform()
            ));
        } else if !p.declared.contains(k) && !PROXY_ARGS.contains(&k.as_str()) {
            warnings.push(format!(
                "build arg `{k}` is not declared by any `ARG` in {}",
                file.display()
            ));
        }
    }
    Ok(Dockerfile {
        stages: p.stages,
        warnings,
    })
}

/// A stage being read.
struct Current {
    stage: Stage,
    /// Variables for substitution and `RUN`: base env, `ENV`s, `ARG`s.
    env: Env,
    /// What the image config's env will be: base env and `ENV`s (what a child stage inherits).
    config_env: Env,
    shell: Vec<String>,
}

struct Parser<'a, 'o> {
    src: &'a Source<'a>,
    escape: char,
    opts: &'o Options,
    errors: Vec<Diagnostic>,
    /// Global `ARG`s (before the first `FROM`) and the automatic platform ones.
    global: Env,
    /// Every `ARG` name declared anywhere.
    declared: BTreeSet<String>,
    stages: Vec<Stage>,
    /// Each finished stage's config env and shell, for stages built on it.
    finals: Vec<(Env, Vec<String>)>,
    cur: Option<Current>,
    /// `COPY --from=NAME` to resolve once every stage is known: (stage, instruction, name, where).
    pending_from: Vec<(usize, usize, String, Range<usize>)>,
}

/// A `COPY --from` name to resolve once every stage is known, and where it is written.
type PendingFrom = (String, Range<usize>);

enum FlagKind {
    Str,
    Bool,
    /// Known to Docker, not supported by recast: the hint says what to do instead.
    Unsupported(&'static str),
}

/// A parsed `--flag[=value]`.
struct Flag {
    name: String,
    value: String,
    range: Range<usize>,
}

struct Flags(Vec<Flag>);

impl Flags {
    fn get(&self, name: &str) -> Option<&Flag> {
        self.0.iter().find(|f| f.name == name)
    }
}

/// JSON (exec) form: `Ok(Some)` for an array of strings, `Ok(None)` for text that is not a JSON
/// array (shell form), `Err` for a JSON array holding something else.
fn json_array(text: &str) -> Result<Option<Vec<String>>, ()> {
    let t = text.trim_start();
    if !t.starts_with('[') {
        return Ok(None);
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(t) {
        Err(_) => Ok(None),
        Ok(values) => values
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

/// Go's `time.ParseDuration`, for `HEALTHCHECK` flags.
fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += num * nanos;
    }
    if !total.is_finite() || total > 1e18 {
        return None;
    }
    Some(Duration::from_nanos(total as u64))
}

const SIGNALS: &[&str] = &[
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
];

fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if SIGNALS.contains(&name) {
        return true;
    }
    let rt = |p: &str, n: &str| {
        name.strip_prefix(p)
            .and_then(|r| r.strip_prefix(n))
            .is_some_and(|r| r.is_empty() || r.parse::<u32>().is_ok_and(|k| k <= 15))
    };
    name == "RTMIN" || name == "RTMAX" || rt("RTMIN", "+") || rt("RTMAX", "-")
}

/// `80`, `80/udp`, `8000-8010/tcp` → `PORT/PROTO` each.
fn expose_ports(p: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match p.split_once('/') {
        Some((a, b)) => (a, b.to_ascii_lowercase()),
        None => (p, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "invalid protocol `{proto}` in `{p}`: use tcp, udp or sctp"
        ));
    }
    let num = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("invalid port `{p}`: ports are numbers from 1 to 65535"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(ports)?;
            (n, n)
        }
    };
    if hi < lo {
        return Err(format!("invalid port range `{p}`"));
    }
    Ok((lo..=hi).map(|n| format!("{n}/{proto}")).collect())
}

/// Docker's reference grammar, loosely: `[HOST[:PORT]/]PATH[:TAG][@ALGO:HEX]` with lowercase path
/// components.
fn check_reference(r: &str) -> Result<(), String> {
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(a, h)| {
            !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+._-".contains(c))
                && h.len() >= 32
                && h.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return Err(format!("`{d}` is not a digest"));
        }
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(format!("`{t}` is not a tag"));
        }
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains(['.', ':']) || first == "localhost" || first != first.to_lowercase() {
            parts.remove(0);
        }
    }
    for p in parts {
        let ok = !p.is_empty()
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if !ok {
            return Err(format!(
                "`{p}` is not a repository name (lowercase letters, digits, `.`, `_`, `-`)"
            ));
        }
    }
    Ok(())
}

fn valid_stage_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_lowercase())
        && c.all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "-_.".contains(ch))
}

impl Parser<'_, '_> {
    fn err(&mut self, l: &Logical, r: Range<usize>, message: String, hint: Option<String>) {
        let d = self.src.diag(l.span(r), message, hint);
        self.errors.push(d);
    }

    fn span_of(&self, l: &Logical, r: Range<usize>) -> Span {
        let (line, column) = self.src.line_col(l.span(r).start);
        Span { line, column }
    }

    /// Substitute one word; a failure is reported at the word.
    fn subst(&mut self, l: &Logical, w: &Word, env: &Env) -> Option<String> {
        match process_word(&w.text, env, self.escape) {
            Ok(s) => Some(s),
            Err(e) => {
                self.err(
                    l,
                    w.range.clone(),
                    format!("cannot substitute variables in `{}`: {e}", w.text),
                    None,
                );
                None
            }
        }
    }

    fn instruction(&mut self, l: &Logical) {
        let Some(cmd) = lines::split_command(&l.text, self.escape) else {
            return;
        };
        let kw = cmd.keyword.text.to_ascii_uppercase();
        let kw_range = cmd.keyword.range.clone();
        if !INSTRUCTIONS.contains(&kw.as_str()) {
            let hint = suggest(&kw, INSTRUCTIONS.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .or_else(|| Some(format!("the instructions are {}", INSTRUCTIONS.join(", "))));
            self.err(
                l,
                kw_range,
                format!("unknown instruction `{}`", cmd.keyword.text),
                hint,
            );
            return;
        }
        if kw == "ONBUILD" {
            self.err(
                l,
                kw_range,
                "`ONBUILD` is not supported".into(),
                Some("recast images are not used as bases for later Dockerfile builds: run these steps in the Dockerfile that needs them".into()),
            );
            return;
        }
        if kw == "FROM" {
            self.from(l, &cmd);
            return;
        }
        if self.cur.is_none() && kw != "ARG" {
            self.err(
                l,
                kw_range,
                format!("`{kw}` before the first `FROM`"),
                Some("only `ARG` may come before the first `FROM`".into()),
            );
            return;
        }
        let args = cmd.args.clone();
        if matches!(kw.as_str(), "COPY" | "ADD")
            && json_array(&l.text[args.clone()]) == Ok(None)
            && let Some(h) = lines::heredocs(&l.text, args.clone(), self.escape).first()
        {
            self.heredoc_error(l, h.at, &kw);
            return;
        }
        match kw.as_str() {
            "ARG" => self.arg(l, &cmd),
            "RUN" => self.run(l, &cmd),
            "COPY" | "ADD" => self.copy(l, &cmd, kw == "ADD"),
            "ENV" | "LABEL" => self.env_or_label(l, &cmd, kw == "ENV"),
            "MAINTAINER" => self.maintainer(l, &cmd),
            "WORKDIR" | "USER" | "STOPSIGNAL" => self.single(l, &cmd, &kw),
            "CMD" | "ENTRYPOINT" => self.cmd(l, &cmd, kw == "ENTRYPOINT"),
            "SHELL" => self.shell(l, &cmd),
            "EXPOSE" => self.expose(l, &cmd),
            "VOLUME" => self.volume(l, &cmd),
            "HEALTHCHECK" => self.healthcheck(l, &cmd),
            _ => {}
        }
    }

    fn maintainer(&mut self, l: &Logical, cmd: &Cmd) {
        if self.flags(l, cmd, "MAINTAINER", &[]).is_none() {
            return;
        }
        let text = l.text[cmd.args.clone()].to_string();
        if text.is_empty() {
            self.needs_arguments(l, cmd, "MAINTAINER", "a name");
        } else {
            self.push(l, cmd, Op::Maintainer(text));
        }
    }

    fn heredoc_error(&mut self, l: &Logical, at: usize, kw: &str) {
        let end = l.text[at..]
            .find(char::is_whitespace)
            .map_or(l.text.len(), |e| at + e);
        self.err(
            l,
            at..end,
            format!("heredocs in `{kw}` are not supported"),
            Some(if kw == "RUN" {
                "write the commands on one line joined with `&&`, or put them in a script file and COPY it".into()
            } else {
                "put the content in a file in the build context and COPY it".into()
            }),
        );
    }

    fn needs_arguments(&mut self, l: &Logical, cmd: &Cmd, kw: &str, what: &str) {
        self.err(
            l,
            cmd.keyword.range.clone(),
            format!("`{kw}` needs {what}"),
            None,
        );
    }

    fn push(&mut self, l: &Logical, cmd: &Cmd, op: Op) {
        let span = self.span_of(l, cmd.keyword.range.clone());
        let text = l.text.trim().to_string();
        if let Some(cur) = &mut self.cur {
            cur.stage.instructions.push(Instr { span, text, op });
        }
    }

    /// Check the instruction's flags against those it accepts.
    fn flags(
        &mut self,
        l: &Logical,
        cmd: &Cmd,
        kw: &str,
        known: &[(&str, FlagKind)],
    ) -> Option<Flags> {
        let mut out: Vec<Flag> = Vec::new();
        let mut ok = true;
        for w in &cmd.flags {
            let body = w.text.strip_prefix("--").unwrap_or(&w.text);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some((_, kind)) = known.iter().find(|(n, _)| *n == name) else {
                let hint = suggest(name, known.iter().map(|(n, _)| *n))
                    .map(|s| format!("did you mean `--{s}`?"))
                    .or_else(|| {
                        Some(if known.is_empty() {
                            format!("`{kw}` takes no flags")
                        } else {
                            let names: Vec<String> =
                                known.iter().map(|(n, _)| format!("--{n}")).collect();
                            format!("`{kw}` takes {}", names.join(", "))
                        })
                    });
                self.err(
                    l,
                    w.range.clone(),
                    format!("unknown flag `--{name}` for `{kw}`"),
                    hint,
                );
                ok = false;
                continue;
            };
            if out.iter().any(|f| f.name == name) {
                self.err(
                    l,
                    w.range.clone(),
                    format!("flag `--{name}` is given twice"),
                    None,
                );
                ok = false;
                continue;
            }
            let value = match (kind, value) {
                (FlagKind::Unsupported(hint), _) => {
                    self.err(
                        l,
                        w.range.clone(),
                        format!("`{kw} --{name}` is not supported"),
                        Some((*hint).to_string()),
                    );
                    ok = false;
                    continue;
                }
                (FlagKind::Bool, None) => "true".to_string(),
                (FlagKind::Bool, Some(v)) => {
                    let v = v.to_ascii_lowercase();
                    if v != "true" && v != "false" {
                        self.err(
                            l,
                            w.range.clone(),
                            format!("`--{name}` takes true or false, not `{v}`"),
                            None,
                        );
                        ok = false;
                        continue;
                    }
                    v
                }
                (FlagKind::Str, None) | (FlagKind::Str, Some("")) => {
                    self.err(
                        l,
                        w.range.clone(),
                        format!("flag `--{name}` needs a value"),
                        Some(format!("write `--{name}=VALUE`")),
                    );
                    ok = false;
                    continue;
                }
                (FlagKind::Str, Some(v)) => v.to_string(),
            };
            out.push(Flag {
                name: name.to_string(),
                value,
                range: w.range.clone(),
            });
        }
        ok.then_some(Flags(out))
    }

    fn finish_stage(&mut self) {
        if let Some(cur) = self.cur.take() {
            self.finals.push((cur.config_env, cur.shell));
            self.stages.push(cur.stage);
        }
    }

    fn from(&mut self, l: &Logical, cmd: &Cmd) {
        self.finish_stage();
        let index = self.stages.len();
        let span = self.span_of(l, cmd.keyword.range.clone());
        let flags = self.flags(l, cmd, "FROM", &[("platform", FlagKind::Str)]);
        let words = lines::blank_split(&l.text, cmd.args.clone());
        let mut name = None;
        let mut from = String::new();
        match words.as_slice() {
            [_] => {}
            [_, as_, n] if as_.text.eq_ignore_ascii_case("as") => {
                name = self.stage_name(l, n);
            }
            [] => self.needs_arguments(l, cmd, "FROM", "an image"),
            _ => {
                let r = cmd.args.clone();
                self.err(
                    l,
                    r,
                    "`FROM` takes an image and optionally `AS name`".into(),
                    Some("write `FROM IMAGE` or `FROM IMAGE AS NAME`".into()),
                );
            }
        }
        if let Some(w) = words.first() {
            let global = self.global.clone();
            if let Some(v) = self.subst(l, w, &global) {
                if v.is_empty() {
                    self.err(
                        l,
                        w.range.clone(),
                        format!("the base `{}` is empty after substitution", w.text),
                        Some(
                            "give the ARG a default before the first FROM, or set it in `args`"
                                .into(),
                        ),
                    );
                }
                from = v;
            }
        }
        if let Some(p) = flags.as_ref().and_then(|f| f.get("platform")) {
            self.check_platform(l, p);
        }
        let base = if from == "scratch" {
            Base::Scratch
        } else if let Some(i) = self
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(from.to_ascii_lowercase().as_str()))
        {
            Base::Stage(i)
        } else {
            if !from.is_empty()
                && let Err(e) = check_reference(&from)
                && let Some(w) = words.first()
            {
                self.err(
                    l,
                    w.range.clone(),
                    format!("invalid image reference `{from}`: {e}"),
                    Some("write NAME[:TAG][@sha256:DIGEST], like `debian:12`".into()),
                );
            }
            Base::Image(from.clone())
        };
        let (config_env, shell) = match base {
            Base::Stage(i) => self.finals[i].clone(),
            _ => (
                Env(self.opts.base_env.get(&from).cloned().unwrap_or_default()),
                vec!["/bin/sh".to_string(), "-c".to_string()],
            ),
        };
        self.cur = Some(Current {
            stage: Stage {
                name,
                index,
                from,
                base,
                from_span: span,
                instructions: Vec::new(),
            },
            env: config_env.clone(),
            config_env,
            shell,
        });
    }

    /// The name of a stage (`FROM … AS NAME`), lowercased; `None` after an error when it is
    /// invalid or taken by an earlier stage.
    fn stage_name(&mut self, l: &Logical, n: &Word) -> Option<String> {
        let lower = n.text.to_ascii_lowercase();
        if !valid_stage_name(&lower) {
            self.err(
                l,
                n.range.clone(),
                format!("invalid stage name `{}`", n.text),
                Some("a stage name starts with a letter and has only letters, digits, `-`, `_` and `.`".into()),
            );
        } else if let Some(first) = self
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(&lower))
        {
            let line = first.from_span.line;
            self.err(
                l,
                n.range.clone(),
                format!("duplicate stage name `{lower}`"),
                Some(format!("a stage named `{lower}` starts on line {line}")),
            );
        } else {
            return Some(lower);
        }
        None
    }

    /// `FROM --platform=P`: P (after substitution) must be the host's platform.
    fn check_platform(&mut self, l: &Logical, p: &Flag) {
        let w = Word {
            text: p.value.clone(),
            range: p.range.clone(),
        };
        let global = self.global.clone();
        if let Some(v) = self.subst(l, &w, &global)
            && !is_host_platform(&v)
        {
            let host = host_platform();
            self.err(
                l,
                p.range.clone(),
                format!("recast builds for the host platform ({host}) only, not `{v}`"),
                Some(format!("remove `--platform`, or build on a {v} machine")),
            );
        }
    }

    fn arg(&mut self, l: &Logical, cmd: &Cmd) {
        if self.flags(l, cmd, "ARG", &[]).is_none() {
            return;
        }
        let words = lines::parse_words(&l.text, cmd.args.clone(), self.escape);
        if words.is_empty() {
            self.needs_arguments(l, cmd, "ARG", "a name");
            return;
        }
        for w in words {
            let (key, default) = match w.text.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (w.text.clone(), None),
            };
            if key.is_empty() {
                self.err(
                    l,
                    w.range.clone(),
                    "`ARG` names cannot be blank".into(),
                    None,
                );
                continue;
            }
            self.declared.insert(key.clone());
            let build_arg = self
                .opts
                .args
                .get(&key)
                .filter(|_| !PLATFORM_ARGS.contains(&key.as_str()))
                .cloned();
            let in_stage = self.cur.is_some();
            let env = match &self.cur {
                Some(c) => c.env.clone(),
                None => self.global.clone(),
            };
            let value = if let Some(v) = build_arg {
                Some(v)
            } else if let Some(d) = default {
                let dw = Word {
                    text: d,
                    range: w.range.clone(),
                };
                match self.subst(l, &dw, &env) {
                    Some(v) => Some(v),
                    None => continue,
                }
            } else {
                // `ARG NAME` imports a global value into a stage (and keeps an automatic one).
                self.global.get(&key).map(str::to_string)
            };
            let Some(value) = value else { continue };
            if in_stage {
                if let Some(c) = &mut self.cur {
                    c.env.set(&key, &value);
                }
            } else {
                self.global.set(&key, &value);
            }
        }
    }

    fn run(&mut self, l: &Logical, cmd: &Cmd) {
        let flags = self.flags(
            l,
            cmd,
            "RUN",
            &[
                ("network", FlagKind::Str),
                ("mount", FlagKind::Unsupported("copy what the step needs into the image with COPY; caches and secrets mounts are not available")),
                ("security", FlagKind::Unsupported("build steps always run unprivileged")),
                ("device", FlagKind::Unsupported("build steps get no devices")),
            ],
        );
        let Some(flags) = flags else { return };
        let network = match flags.get("network") {
            None => None,
            Some(f) => match f.value.as_str() {
                "default" => Some(Network::Default),
                "none" => Some(Network::None),
                "host" => Some(Network::Host),
                v => {
                    let r = f.range.clone();
                    self.err(
                        l,
                        r,
                        format!("unknown network mode `{v}`"),
                        Some("use `--network=default`, `none` or `host`".into()),
                    );
                    return;
                }
            },
        };
        let text = &l.text[cmd.args.clone()];
        let run_cmd = match json_array(text) {
            Err(()) => {
                self.not_strings(l, cmd, "RUN");
                return;
            }
            Ok(Some(v)) if v.is_empty() => {
                self.needs_arguments(l, cmd, "RUN", "a command");
                return;
            }
            Ok(Some(v)) => RunCmd::Exec(v),
            Ok(None) if text.is_empty() => {
                self.needs_arguments(l, cmd, "RUN", "a command");
                return;
            }
            Ok(None) => {
                if let Some(h) = lines::heredocs(&l.text, cmd.args.clone(), self.escape).first() {
                    self.heredoc_error(l, h.at, "RUN");
                    return;
                }
                RunCmd::Shell(text.to_string())
            }
        };
        let Some(cur) = &self.cur else { return };
        let mut env = cur.env.clone();
        for k in PROXY_ARGS {
            if let Some(v) = self.opts.args.get(*k) {
                env.set(k, v);
            }
        }
        let run = Run {
            cmd: run_cmd,
            shell: cur.shell.clone(),
            network,
            env: env.0,
        };
        self.push(l, cmd, Op::Run(run));
    }

    fn not_strings(&mut self, l: &Logical, cmd: &Cmd, kw: &str) {
        self.err(
            l,
            cmd.args.clone(),
            format!("the JSON array of `{kw}` must hold strings only"),
            Some("quote every element: [\"cmd\", \"arg\"]".into()),
        );
    }

    /// `--chmod=C` (at `r`): octal permission bits; `None` after an error.
    fn chmod(&mut self, l: &Logical, r: Range<usize>, c: &str) -> Option<u32> {
        match u32::from_str_radix(c, 8) {
            Ok(m) if m <= 0o7777 && !c.is_empty() => Some(m),
            _ => {
                self.err(
                    l,
                    r,
                    format!("`--chmod={c}` is not octal permission bits"),
                    Some("write the mode in octal, like `--chmod=0755`".into()),
                );
                None
            }
        }
    }

    /// Whether an `ADD` source (`words`, substituted as `values`) is a URL, which is refused:
    /// the error is reported at the first one.
    fn add_of_url(&mut self, l: &Logical, words: &[Word], values: &[String]) -> bool {
        for (w, v) in words.iter().zip(values) {
            let lower = v.to_ascii_lowercase();
            if lower.contains("://") || lower.starts_with("git@") {
                self.err(
                    l,
                    w.range.clone(),
                    format!("`ADD` of a URL (`{v}`) is not supported"),
                    Some("download it in a RUN step, or put the file in the build context and COPY it".into()),
                );
                return true;
            }
        }
        false
    }

    /// `COPY --from=F`: an earlier stage by index, or a stage or image by name, with the name
    /// and its span to resolve once every stage is known; `None` after an error.
    fn copy_from(&mut self, l: &Logical, f: &Flag) -> Option<(CopyFrom, Option<PendingFrom>)> {
        if f.value.contains('$') {
            self.err(
                l,
                f.range.clone(),
                "variables are not substituted in `--from`".into(),
                Some(
                    "define a stage with `FROM ${VAR} AS name` (a global ARG) and copy from it"
                        .into(),
                ),
            );
            None
        } else if let Ok(n) = f.value.parse::<usize>() {
            let index = self.cur.as_ref().map_or(0, |c| c.stage.index);
            if n >= index {
                self.err(
                    l,
                    f.range.clone(),
                    format!("`--from={n}` names stage {n}, which does not come before this stage ({index})"),
                    Some("stages count from 0; copy from an earlier stage".into()),
                );
                None
            } else {
                Some((CopyFrom::Stage(n), None))
            }
        } else {
            // A name: resolved once every stage is known (it may name a later one).
            Some((
                CopyFrom::Image(f.value.clone()),
                Some((f.value.clone(), l.span(f.range.clone()))),
            ))
        }
    }

    fn copy(&mut self, l: &Logical, cmd: &Cmd, add: bool) {
        let kw = if add { "ADD" } else { "COPY" };
        let known = copy_flags(add);
        let Some(flags) = self.flags(l, cmd, kw, &known) else {
            return;
        };
        let text = &l.text[cmd.args.clone()];
        let words: Vec<Word> = match json_array(text) {
            Err(()) => {
                self.not_strings(l, cmd, kw);
                return;
            }
            Ok(Some(v)) => v
                .into_iter()
                .map(|s| Word {
                    text: s,
                    range: cmd.args.clone(),
                })
                .collect(),
            Ok(None) => lines::blank_split(&l.text, cmd.args.clone()),
        };
        if words.len() < 2 {
            self.err(
                l,
                cmd.keyword.range.start..cmd.args.end.max(cmd.keyword.range.end),
                format!("`{kw}` needs at least one source and a destination"),
                Some(format!("write `{kw} SRC... DEST`")),
            );
            return;
        }
        let Some(env) = self.cur.as_ref().map(|c| c.env.clone()) else {
            return;
        };
        let mut ok = true;
        let mut values = Vec::new();
        for w in &words {
            match self.subst(l, w, &env) {
                Some(v) => values.push(v),
                None => ok = false,
            }
        }
        let mut opt = |p: &mut Self, name: &str| -> Option<String> {
            let f = flags.get(name)?;
            let w = Word {
                text: f.value.clone(),
                range: f.range.clone(),
            };
            let v = p.subst(l, &w, &env);
            if v.is_none() {
                ok = false;
            }
            v
        };
        let chown = opt(self, "chown");
        let chmod_text = opt(self, "chmod");
        let mut chmod = None;
        if let Some(c) = chmod_text {
            let r = flags
                .get("chmod")
                .map_or(cmd.args.clone(), |f| f.range.clone());
            chmod = self.chmod(l, r, &c);
            ok &= chmod.is_some();
        }
        let mut from = None;
        let mut pending = None;
        if let Some(f) = flags.get("from") {
            match self.copy_from(l, f) {
                Some((f, p)) => (from, pending) = (Some(f), p),
                None => ok = false,
            }
        }
        if !ok {
            return;
        }
        let dest = values.pop().unwrap_or_default();
        if add && self.add_of_url(l, &words, &values) {
            return;
        }
        if let (Some((name, span)), Some(cur)) = (pending, &self.cur) {
            self.pending_from
                .push((cur.stage.index, cur.stage.instructions.len(), name, span));
        }
        self.push(
            l,
            cmd,
            Op::Copy(Copy {
                from,
                srcs: values,
                dest,
                chown,
                chmod,
                add,
            }),
        );
    }

    fn resolve_copy_from(&mut self) {
        let pending = std::mem::take(&mut self.pending_from);
        for (stage, instr, name, span) in pending {
            let lower = name.to_ascii_lowercase();
            let Some(target) = self
                .stages
                .iter()
                .position(|s| s.name.as_deref() == Some(lower.as_str()))
            else {
                continue;
            };
            if target >= stage {
                let d = self.src.diag(
                    span,
                    format!("`--from={name}` names a stage that does not come before this one"),
                    Some(format!(
                        "move stage `{lower}` above the stage that copies from it"
                    )),
                );
                self.errors.push(d);
                continue;
            }
            if let Some(Instr {
                op: Op::Copy(c), ..
            }) = self
                .stages
                .get_mut(stage)
                .and_then(|s| s.instructions.get_mut(instr))
            {
                c.from = Some(CopyFrom::Stage(target));
            }
        }
    }

    fn env_or_label(&mut self, l: &Logical, cmd: &Cmd, is_env: bool) {
        let kw = if is_env { "ENV" } else { "LABEL" };
        if self.flags(l, cmd, kw, &[]).is_none() {
            return;
        }
        let words = lines::parse_words(&l.text, cmd.args.clone(), self.escape);
        if words.is_empty() {
            self.needs_arguments(l, cmd, kw, "a name and a value");
            return;
        }
        let mut pairs: Vec<(Word, Word)> = Vec::new();
        if !words[0].text.contains('=') {
            // Legacy `ENV NAME VALUE…`: the name, then the rest of the line as the value.
            let args = cmd.args.clone();
            let t = &l.text[args.clone()];
            match t.find(['\t', '\u{b}', '\u{c}', '\r', ' ']) {
                None => {
                    self.err(
                        l,
                        args,
                        format!("`{kw} {t}` has no value"),
                        Some(format!("write `{kw} {t}=VALUE`")),
                    );
                    return;
                }
                Some(i) => {
                    let rest = t[i..].trim_start();
                    let vstart = args.end - rest.len();
                    pairs.push((
                        Word {
                            text: t[..i].to_string(),
                            range: args.start..args.start + i,
                        },
                        Word {
                            text: rest.to_string(),
                            range: vstart..args.end,
                        },
                    ));
                }
            }
        } else {
            for w in &words {
                let Some((k, v)) = w.text.split_once('=') else {
                    self.err(
                        l,
                        w.range.clone(),
                        format!("`{}` is not of the form name=value", w.text),
                        Some(format!(
                            "every word after `{kw}` is NAME=VALUE (quote values with spaces)"
                        )),
                    );
                    return;
                };
                pairs.push((
                    Word {
                        text: k.to_string(),
                        range: w.range.clone(),
                    },
                    Word {
                        text: v.to_string(),
                        range: w.range.clone(),
                    },
                ));
            }
        }
        let Some(env) = self.cur.as_ref().map(|c| c.env.clone()) else {
            return;
        };
        let mut out = Vec::new();
        for (k, v) in &pairs {
            let (Some(key), Some(value)) = (self.subst(l, k, &env), self.subst(l, v, &env)) else {
                return;
            };
            if key.is_empty() {
                self.err(
                    l,
                    k.range.clone(),
                    format!("`{kw}` names cannot be blank"),
                    None,
                );
                return;
            }
            out.push((key, value));
        }
        if is_env {
            if let Some(cur) = &mut self.cur {
                for (k, v) in &out {
                    cur.env.set(k, v);
                    cur.config_env.set(k, v);
                }
            }
            self.push(l, cmd, Op::Env(out));
        } else {
            self.push(l, cmd, Op::Label(out));
        }
    }

    fn single(&mut self, l: &Logical, cmd: &Cmd, kw: &str) {
        if self.flags(l, cmd, kw, &[]).is_none() {
            return;
        }
        let args = cmd.args.clone();
        if args.is_empty() {
            let what = match kw {
                "WORKDIR" => "a path",
                "USER" => "a user",
                _ => "a signal",
            };
            self.needs_arguments(l, cmd, kw, what);
            return;
        }
        let w = Word {
            text: l.text[args.clone()].to_string(),
            range: args.clone(),
        };
        let Some(env) = self.cur.as_ref().map(|c| c.env.clone()) else {
            return;
        };
        let Some(v) = self.subst(l, &w, &env) else {
            return;
        };
        let op = match kw {
            "WORKDIR" => {
                if v.is_empty() {
                    self.err(
                        l,
                        args,
                        "`WORKDIR` is empty after substitution".into(),
                        None,
                    );
                    return;
                }
                Op::Workdir(v)
            }
            "USER" => {
                if v.is_empty() {
                    self.err(l, args, "`USER` is empty after substitution".into(), None);
                    return;
                }
                Op::User(v)
            }
            _ => {
                if !valid_signal(&v) {
                    self.err(
                        l,
                        args,
                        format!("unknown signal `{v}`"),
                        Some("write a signal name like SIGTERM or a number".into()),
                    );
                    return;
                }
                Op::StopSignal(v)
            }
        };
        self.push(l, cmd, op);
    }

    fn cmd(&mut self, l: &Logical, cmd: &Cmd, entrypoint: bool) {
        let kw = if entrypoint { "ENTRYPOINT" } else { "CMD" };
        if self.flags(l, cmd, kw, &[]).is_none() {
            return;
        }
        let text = &l.text[cmd.args.clone()];
        let command = match json_array(text) {
            Err(()) => {
                self.not_strings(l, cmd, kw);
                return;
            }
            Ok(Some(v)) => Command {
                args: v,
                shell_form: false,
            },
            Ok(None) if text.is_empty() => {
                self.needs_arguments(l, cmd, kw, "a command");
                return;
            }
            Ok(None) => {
                let mut args = self
                    .cur
                    .as_ref()
                    .map(|c| c.shell.clone())
                    .unwrap_or_default();
                args.push(text.to_string());
                Command {
                    args,
                    shell_form: true,
                }
            }
        };
        self.push(
            l,
            cmd,
            if entrypoint {
                Op::Entrypoint(command)
            } else {
                Op::Cmd(command)
            },
        );
    }

    fn shell(&mut self, l: &Logical, cmd: &Cmd) {
        if self.flags(l, cmd, "SHELL", &[]).is_none() {
            return;
        }
        match json_array(&l.text[cmd.args.clone()]) {
            Ok(Some(v)) if !v.is_empty() => {
                if let Some(cur) = &mut self.cur {
                    cur.shell = v.clone();
                }
                self.push(l, cmd, Op::Shell(v));
            }
            Err(()) => self.not_strings(l, cmd, "SHELL"),
            _ => {
                let r = if cmd.args.is_empty() {
                    cmd.keyword.range.clone()
                } else {
                    cmd.args.clone()
                };
                self.err(
                    l,
                    r,
                    "`SHELL` must be a JSON array of strings".into(),
                    Some("write `SHELL [\"/bin/bash\", \"-c\"]`".into()),
                );
            }
        }
    }

    fn expose(&mut self, l: &Logical, cmd: &Cmd) {
        if self.flags(l, cmd, "EXPOSE", &[]).is_none() {
            return;
        }
        let words = lines::blank_split(&l.text, cmd.args.clone());
        if words.is_empty() {
            self.needs_arguments(l, cmd, "EXPOSE", "a port");
            return;
        }
        let Some(env) = self.cur.as_ref().map(|c| c.env.clone()) else {
            return;
        };
        let mut ports = Vec::new();
        for w in &words {
            let parts = match process_words(&w.text, &env, self.escape) {
                Ok(p) => p,
                Err(e) => {
                    self.err(
                        l,
                        w.range.clone(),
                        format!("cannot substitute variables in `{}`: {e}", w.text),
                        None,
                    );
                    return;
                }
            };
            for p in parts {
                match expose_ports(&p) {
                    Ok(v) => ports.extend(v),
                    Err(e) => {
                        self.err(l, w.range.clone(), e, None);
                        return;
                    }
                }
            }
        }
        self.push(l, cmd, Op::Expose(ports));
    }

    fn volume(&mut self, l: &Logical, cmd: &Cmd) {
        if self.flags(l, cmd, "VOLUME", &[]).is_none() {
            return;
        }
        let text = &l.text[cmd.args.clone()];
        let words: Vec<Word> = match json_array(text) {
            Err(()) => {
                self.not_strings(l, cmd, "VOLUME");
                return;
            }
            Ok(Some(v)) => v
                .into_iter()
                .map(|s| Word {
                    text: s,
                    range: cmd.args.clone(),
                })
                .collect(),
            Ok(None) => lines::blank_split(&l.text, cmd.args.clone()),
        };
        if words.is_empty() {
            self.needs_arguments(l, cmd, "VOLUME", "a path");
            return;
        }
        let Some(env) = self.cur.as_ref().map(|c| c.env.clone()) else {
            return;
        };
        let mut out = Vec::new();
        for w in &words {
            let Some(v) = self.subst(l, w, &env) else {
                return;
            };
            let v = v.trim().to_string();
            if v.is_empty() {
                self.err(
                    l,
                    w.range.clone(),
                    "`VOLUME` paths cannot be empty".into(),
                    None,
                );
                return;
            }
            out.push(v);
        }
        self.push(l, cmd, Op::Volume(out));
    }

    /// `HEALTHCHECK NONE`: no flags, no arguments.
    fn healthcheck_none(&mut self, l: &Logical, cmd: &Cmd, rest: &str, rest_range: Range<usize>) {
        if let Some(f) = cmd.flags.first() {
            self.err(
                l,
                f.range.clone(),
                "`HEALTHCHECK NONE` takes no flags".into(),
                None,
            );
            return;
        }
        if !rest.is_empty() {
            self.err(
                l,
                rest_range,
                "`HEALTHCHECK NONE` takes no arguments".into(),
                None,
            );
            return;
        }
        self.push(
            l,
            cmd,
            Op::Healthcheck(Healthcheck {
                test: None,
                interval: None,
                timeout: None,
                start_period: None,
                start_interval: None,
                retries: None,
            }),
        );
    }

    /// The test of `HEALTHCHECK CMD REST`: `CMD` and the JSON array's strings, or `CMD-SHELL` and
    /// the shell form; `None` after an error.
    fn healthcheck_test(
        &mut self,
        l: &Logical,
        cmd: &Cmd,
        rest: &str,
        typ_range: Range<usize>,
    ) -> Option<Vec<String>> {
        match json_array(rest) {
            Err(()) => {
                self.not_strings(l, cmd, "HEALTHCHECK");
                None
            }
            Ok(Some(v)) if !v.is_empty() => {
                let mut t = vec!["CMD".to_string()];
                t.extend(v);
                Some(t)
            }
            Ok(None) if !rest.is_empty() => Some(vec!["CMD-SHELL".to_string(), rest.to_string()]),
            _ => {
                self.err(
                    l,
                    typ_range,
                    "`HEALTHCHECK CMD` needs a command".into(),
                    None,
                );
                None
            }
        }
    }

    /// A `HEALTHCHECK` duration flag `--NAME=D` (Go syntax): `None` for 0 (the default), an
    /// error below 1ms.
    fn flag_duration(&mut self, l: &Logical, f: &Flag, name: &str) -> Result<Option<Duration>, ()> {
        match parse_go_duration(&f.value) {
            Some(d) if d.is_zero() => Ok(None),
            Some(d) if d < Duration::from_millis(1) => {
                self.err(
                    l,
                    f.range.clone(),
                    format!("`--{name}` cannot be less than 1ms"),
                    None,
                );
                Err(())
            }
            Some(d) => Ok(Some(d)),
            None => {
                self.err(
                    l,
                    f.range.clone(),
                    format!("invalid duration `{}` for `--{name}`", f.value),
                    Some("write a duration like 30s, 1m30s or 500ms".into()),
                );
                Err(())
            }
        }
    }

    fn healthcheck(&mut self, l: &Logical, cmd: &Cmd) {
        let args = cmd.args.clone();
        let text = &l.text[args.clone()];
        let typ_end = text.find(char::is_whitespace).unwrap_or(text.len());
        let typ = text[..typ_end].to_ascii_uppercase();
        let rest = text[typ_end..].trim_start();
        let rest_range = args.end - rest.len()..args.end;
        if typ.is_empty() {
            self.needs_arguments(l, cmd, "HEALTHCHECK", "`CMD …` or `NONE`");
            return;
        }
        let typ_range = args.start..args.start + typ_end;
        if typ == "NONE" {
            self.healthcheck_none(l, cmd, rest, rest_range);
            return;
        }
        let Some(flags) = self.flags(
            l,
            cmd,
            "HEALTHCHECK",
            &[
                ("interval", FlagKind::Str),
                ("timeout", FlagKind::Str),
                ("start-period", FlagKind::Str),
                ("start-interval", FlagKind::Str),
                ("retries", FlagKind::Str),
            ],
        ) else {
            return;
        };
        if typ != "CMD" {
            self.err(
                l,
                typ_range,
                format!("unknown `HEALTHCHECK` type `{}`", &text[..typ_end]),
                Some("write `HEALTHCHECK CMD …` or `HEALTHCHECK NONE`".into()),
            );
            return;
        }
        let Some(test) = self.healthcheck_test(l, cmd, rest, typ_range) else {
            return;
        };
        let mut ok = true;
        let mut dur = |p: &mut Self, name: &str| -> Option<Duration> {
            let f = flags.get(name)?;
            p.flag_duration(l, f, name).unwrap_or_else(|()| {
                ok = false;
                None
            })
        };
        let interval = dur(self, "interval");
        let timeout = dur(self, "timeout");
        let start_period = dur(self, "start-period");
        let start_interval = dur(self, "start-interval");
        let mut retries = None;
        if let Some(f) = flags.get("retries") {
            match f.value.parse::<u32>() {
                Ok(n) => retries = Some(n),
                Err(_) => {
                    self.err(
                        l,
                        f.range.clone(),
                        format!("`--retries={}` is not a number of retries", f.value),
                        Some("write a whole number, like `--retries=3`".into()),
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return;
        }
        self.push(
            l,
            cmd,
            Op::Healthcheck(Healthcheck {
                test: Some(test),
                interval,
                timeout,
                start_period,
                start_interval,
                retries,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        for ok in [
            "debian:12",
            "golang:1.22-bookworm",
            "localhost:5000/team/app:v1.2",
            "Registry.example.com/a/b",
            "alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(check_reference(ok), Ok(()), "{ok}");
        }
        for bad in ["Alpine", "debian:", "a/B:1", "a@sha256:xyz", "a b", "-a"] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("s"), None);
    }

    #[test]
    fn ports_and_signals() {
        assert_eq!(
            expose_ports("8000-8002/UDP"),
            Ok(vec![
                "8000/udp".into(),
                "8001/udp".into(),
                "8002/udp".into()
            ])
        );
        assert!(expose_ports("0").is_err());
        assert!(valid_signal("SIGRTMIN+3") && valid_signal("term") && valid_signal("9"));
        assert!(!valid_signal("SIGFOO"));
    }
}
