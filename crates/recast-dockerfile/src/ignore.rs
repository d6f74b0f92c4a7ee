//! `.dockerignore` (moby's `ignorefile` and `patternmatcher`) and the wildcard sources of
//! `COPY`/`ADD` (Go's `filepath.Match`, one path segment at a time).

use std::fmt;
use std::path::{Path, PathBuf};

use recast_spec::{Diagnostic, Diagnostics};

use crate::source::{Source, file_diag};

/// Go's `filepath.Clean` for slash-separated paths.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|p| *p != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            p => out.push(p),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(char),
    /// `*`: any run of characters but `/`.
    Star,
    /// `?`: one character but `/`.
    Any,
    /// `[…]`, `[^…]`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**` followed by more pattern: `(.*/)?`.
    DirStar,
    /// `**` at the end: anything.
    Rest,
}

fn class_matches(negated: bool, ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != negated
}

/// Parse `[…]` starting after the `[`; returns the token and the index after `]`.
fn parse_class(chars: &[char], mut i: usize) -> Result<(Tok, usize), String> {
    let mut negated = false;
    if chars.get(i) == Some(&'^') {
        negated = true;
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err("unterminated `[` character class".into());
        };
        if c == ']' && !first {
            return Ok((Tok::Class { negated, ranges }, i + 1));
        }
        if c == ']' {
            return Err("empty `[]` character class".into());
        }
        first = false;
        let mut lo = c;
        if c == '\\' {
            i += 1;
            lo = *chars.get(i).ok_or("unterminated `[` character class")?;
        }
        i += 1;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&n| n != ']') {
            i += 1;
            let mut h = chars[i];
            if h == '\\' {
                i += 1;
                h = *chars.get(i).ok_or("unterminated `[` character class")?;
            }
            i += 1;
            if h < lo {
                return Err(format!("bad range `{lo}-{h}` in character class"));
            }
            hi = h;
        }
        ranges.push((lo, hi));
    }
}

/// One `filepath.Match` segment (no `/`, no `**`).
fn compile_segment(p: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = p.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                out.push(Tok::Star);
                i += 1;
            }
            '?' => {
                out.push(Tok::Any);
                i += 1;
            }
            '[' => {
                let (t, next) = parse_class(&chars, i + 1)?;
                out.push(t);
                i = next;
            }
            '\\' => {
                let c = *chars.get(i + 1).ok_or("a trailing `\\` escapes nothing")?;
                out.push(Tok::Lit(c));
                i += 2;
            }
            c => {
                out.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// A `.dockerignore` pattern as moby's `patternmatcher` compiles it.
fn compile_ignore(p: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = p.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                out.push(if i >= chars.len() {
                    Tok::Rest
                } else {
                    Tok::DirStar
                });
            }
            '*' => {
                out.push(Tok::Star);
                i += 1;
            }
            '?' => {
                out.push(Tok::Any);
                i += 1;
            }
            '[' => {
                let (t, next) = parse_class(&chars, i + 1)?;
                out.push(t);
                i = next;
            }
            '\\' => {
                let c = *chars.get(i + 1).ok_or("a trailing `\\` escapes nothing")?;
                out.push(Tok::Lit(c));
                i += 2;
            }
            c => {
                out.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Whether one token matches `c` (tokens that consume exactly one character).
fn one(t: &Tok, c: char) -> bool {
    match t {
        Tok::Any => c != '/',
        Tok::Class { negated, ranges } => class_matches(*negated, ranges, c),
        Tok::Lit(l) => *l == c,
        Tok::Star | Tok::DirStar | Tok::Rest => false,
    }
}

/// Whether `p` matches all of `s` (dynamic programming: linear in pattern × path, whatever the
/// stars).
fn matches(p: &[Tok], s: &[char]) -> bool {
    let (n, m) = (p.len(), s.len());
    // dp[i][j]: p[i..] matches s[j..].
    let mut dp = vec![vec![false; m + 1]; n + 1];
    dp[n][m] = true;
    for i in (0..n).rev() {
        for j in (0..=m).rev() {
            dp[i][j] = match &p[i] {
                Tok::Rest => true,
                Tok::Star => dp[i + 1][j] || (j < m && s[j] != '/' && dp[i][j + 1]),
                Tok::DirStar => dp[i + 1][j] || (j..m).any(|k| s[k] == '/' && dp[i + 1][k + 1]),
                t => j < m && one(t, s[j]) && dp[i + 1][j + 1],
            };
        }
    }
    dp[0][0]
}

/// Whether some path starting with `s` could match `p`.
fn may_match_with_prefix(p: &[Tok], s: &[char]) -> bool {
    let (n, m) = (p.len(), s.len());
    // dp[i][j]: p[i..] can consume all of s[j..] (and then, perhaps, more).
    let mut dp = vec![vec![false; m + 1]; n + 1];
    for row in dp.iter_mut() {
        row[m] = true;
    }
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            dp[i][j] = match &p[i] {
                Tok::Rest | Tok::DirStar => true,
                Tok::Star => dp[i + 1][j] || (s[j] != '/' && dp[i][j + 1]),
                t => one(t, s[j]) && dp[i + 1][j + 1],
            };
        }
    }
    dp[0][0]
}

#[derive(Debug, Clone, PartialEq)]
struct Pattern {
    text: String,
    exception: bool,
    toks: Vec<Tok>,
}

/// The patterns of a `.dockerignore`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

/// A problem with the build context: a source outside it, nothing matching, unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextError(pub String);

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ContextError {}

impl Ignore {
    /// `CONTEXT/.dockerignore`, or nothing ignored when there is none.
    pub fn load(context_dir: &Path) -> Result<Ignore, Diagnostics> {
        Self::load_file(&context_dir.join(".dockerignore"))
    }

    /// The ignore file BuildKit uses for `dockerfile`: `<dockerfile>.dockerignore` beside it
    /// when that exists, else `CONTEXT/.dockerignore`.
    pub fn load_for(context_dir: &Path, dockerfile: &Path) -> Result<Ignore, Diagnostics> {
        let mut own = dockerfile.as_os_str().to_owned();
        own.push(".dockerignore");
        let own = PathBuf::from(own);
        if own.is_file() {
            return Self::load_file(&own);
        }
        Self::load(context_dir)
    }

    fn load_file(path: &Path) -> Result<Ignore, Diagnostics> {
        match read_bounded(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Self::parse(path, &text),
                Err(_) => Err(Diagnostics(vec![file_diag(
                    path,
                    "the ignore file is not UTF-8 text".into(),
                    None,
                )])),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ignore::default()),
            Err(e) => Err(Diagnostics(vec![file_diag(
                path,
                format!("cannot read the ignore file: {e}"),
                None,
            )])),
        }
    }

    /// Parse the text of an ignore file (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Ignore, Diagnostics> {
        let src = Source::new(path, text);
        let mut errors: Vec<Diagnostic> = Vec::new();
        let mut patterns = Vec::new();
        let mut off = 0;
        for (n, raw) in text.split_inclusive('\n').enumerate() {
            let line_off = off;
            off += raw.len();
            let mut line = raw.trim_end_matches(['\n', '\r']);
            let mut lo = line_off;
            if n == 0
                && let Some(rest) = line.strip_prefix('\u{feff}')
            {
                line = rest;
                lo += '\u{feff}'.len_utf8();
            }
            if line.starts_with('#') {
                continue;
            }
            let mut p = line.trim();
            if p.is_empty() {
                continue;
            }
            let span = lo + (line.len() - line.trim_start().len());
            let span = span..span + p.len();
            let exception = p.starts_with('!');
            if exception {
                p = p[1..].trim();
                if p.is_empty() {
                    errors.push(
                        src.diag(
                            span,
                            "`!` excludes nothing".into(),
                            Some(
                                "write `!PATTERN` to re-include paths an earlier pattern ignores"
                                    .into(),
                            ),
                        ),
                    );
                    continue;
                }
            }
            let mut cleaned = clean(p);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            match compile_ignore(&cleaned) {
                Ok(toks) => patterns.push(Pattern {
                    text: cleaned,
                    exception,
                    toks,
                }),
                Err(e) => errors.push(src.diag(
                    span,
                    format!("invalid pattern `{p}`: {e}"),
                    Some("patterns use Go's filepath.Match syntax: * ? [a-z] [^a] and \\ escapes, plus **".into()),
                )),
            }
        }
        if errors.is_empty() {
            Ok(Ignore { patterns })
        } else {
            Err(Diagnostics(errors))
        }
    }

    /// The patterns, cleaned, with `!` for exceptions.
    pub fn patterns(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| {
                if p.exception {
                    format!("!{}", p.text)
                } else {
                    p.text.clone()
                }
            })
            .collect()
    }

    /// Whether the patterns exclude `rel_path` (slash-separated, relative to the context): a
    /// pattern matches a path or any of its parent directories, and the last pattern that matches
    /// decides (`!` re-includes).
    pub fn matches(&self, rel_path: &str) -> bool {
        let path = clean(rel_path);
        if path == "." || self.patterns.is_empty() {
            return false;
        }
        let chars: Vec<char> = path.chars().collect();
        let prefixes: Vec<usize> = chars
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c == '/')
            .map(|(i, _)| i)
            .collect();
        let mut excluded = false;
        for p in &self.patterns {
            if p.exception != excluded {
                continue;
            }
            let hit =
                matches(&p.toks, &chars) || prefixes.iter().any(|&i| matches(&p.toks, &chars[..i]));
            if hit {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether `rel_path` stays out of the build context. A directory counts as ignored only when
    /// nothing below it can be re-included by a `!` pattern (so a walker may skip it whole); an
    /// excluded directory that may hold re-included paths is not ignored (it is walked, and kept).
    pub fn is_ignored(&self, rel_path: &str, is_dir: bool) -> bool {
        if !self.matches(rel_path) {
            return false;
        }
        if !is_dir {
            return true;
        }
        let path = clean(rel_path);
        let below: Vec<char> = format!("{path}/").chars().collect();
        let chars: Vec<char> = path.chars().collect();
        !self.patterns.iter().filter(|p| p.exception).any(|p| {
            // An exception that may match below the directory, or that matches the directory
            // or a parent (re-including everything below), means the directory must be walked.
            may_match_with_prefix(&p.toks, &below)
                || matches(&p.toks, &chars)
                || chars
                    .iter()
                    .enumerate()
                    .any(|(i, &c)| c == '/' && matches(&p.toks, &chars[..i]))
        })
    }

    /// The context paths a `COPY`/`ADD` source names (see [`glob`]), leaving out ignored ones.
    pub fn glob(&self, context_dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, ContextError> {
        glob_in(context_dir, pattern, self)
    }
}

/// The context paths a `COPY`/`ADD` source names, relative to `context_dir` and sorted: the
/// path itself, or every match of its wildcards (`*`, `?`, `[…]`, `\` escapes, per path
/// segment as Go's `filepath.Match`). An absolute source is relative to the context; one that
/// leaves the context (`..`), or that matches nothing, is an error. `.` is the whole context.
pub fn glob(context_dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, ContextError> {
    glob_in(context_dir, pattern, &Ignore::default())
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '[', '\\'])
}

fn glob_in(
    context_dir: &Path,
    pattern: &str,
    ignore: &Ignore,
) -> Result<Vec<PathBuf>, ContextError> {
    let trimmed = pattern.trim_start_matches('/');
    let cleaned = clean(trimmed);
    if cleaned == ".." || cleaned.starts_with("../") {
        return Err(ContextError(format!(
            "`{pattern}` is outside the build context"
        )));
    }
    if cleaned == "." {
        return Ok(vec![PathBuf::from(".")]);
    }
    let segments: Vec<&str> = cleaned.split('/').collect();
    let mut current: Vec<String> = vec![String::new()];
    for (n, seg) in segments.iter().enumerate() {
        let last = n + 1 == segments.len();
        let mut next = Vec::new();
        if has_wildcard(seg) {
            let toks = compile_segment(seg)
                .map_err(|e| ContextError(format!("invalid pattern `{pattern}`: {e}")))?;
            for dir in &current {
                let full = context_dir.join(dir);
                if !full.is_dir() {
                    continue;
                }
                let entries = std::fs::read_dir(&full).map_err(|e| {
                    ContextError(format!(
                        "cannot list `{}` in the build context: {e}",
                        show(dir)
                    ))
                })?;
                let mut names: Vec<String> = Vec::new();
                for e in entries {
                    let e = e.map_err(|e| {
                        ContextError(format!(
                            "cannot list `{}` in the build context: {e}",
                            show(dir)
                        ))
                    })?;
                    if let Some(name) = e.file_name().to_str() {
                        names.push(name.to_string());
                    }
                }
                names.sort();
                for name in names {
                    let chars: Vec<char> = name.chars().collect();
                    if matches(&toks, &chars) {
                        next.push(join(dir, &name));
                    }
                }
            }
        } else {
            let lit: String = seg.to_string();
            for dir in &current {
                let rel = join(dir, &lit);
                if std::fs::symlink_metadata(context_dir.join(&rel)).is_ok() {
                    next.push(rel);
                }
            }
        }
        if !last {
            next.retain(|p| context_dir.join(p).is_dir() && !ignore.is_ignored(p, true));
        }
        current = next;
    }
    let mut excluded = false;
    let mut out = Vec::new();
    for rel in current {
        let is_dir = std::fs::symlink_metadata(context_dir.join(&rel)).is_ok_and(|m| m.is_dir());
        if ignore.is_ignored(&rel, is_dir) {
            excluded = true;
            continue;
        }
        check_inside(context_dir, &rel, pattern)?;
        out.push(PathBuf::from(rel));
    }
    out.sort();
    if out.is_empty() {
        return Err(ContextError(if excluded {
            format!("`{pattern}` is excluded from the build context by .dockerignore")
        } else if has_wildcard(&cleaned) {
            format!("no file in the build context matches `{pattern}`")
        } else {
            format!("`{pattern}` does not exist in the build context")
        }));
    }
    Ok(out)
}

/// `rel` must resolve inside the context: no symlinked way out on the way to it, nor at its end
/// (a source that is itself a link is followed when copied, so a link to a host file or
/// directory would copy the host's files into the image).
fn check_inside(context_dir: &Path, rel: &str, pattern: &str) -> Result<(), ContextError> {
    let (Ok(root), Ok(dir)) = (
        context_dir.canonicalize(),
        context_dir.join(rel).canonicalize(),
    ) else {
        return Ok(());
    };
    if dir.starts_with(&root) {
        Ok(())
    } else {
        Err(ContextError(format!(
            "`{pattern}` leaves the build context through a symbolic link"
        )))
    }
}

/// The most of an ignore file recast reads: it comes with the (untrusted) build context.
const MAX_IGNORE_FILE: u64 = 1 << 20;

/// An ignore file's bytes: a regular file (a link to `/dev/zero` or a FIFO is refused, not read
/// without end or waited on) of at most [`MAX_IGNORE_FILE`] bytes.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_IGNORE_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_IGNORE_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_IGNORE_FILE >> 20
        )));
    }
    Ok(bytes)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn show(dir: &str) -> &str {
    if dir.is_empty() { "." } else { dir }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The context decides what its ignore file is: a device or an oversized file is refused
    /// with the file named, never read without end.
    #[test]
    fn an_ignore_file_is_a_bounded_regular_file() {
        let ctx = tempfile::tempdir().expect("tmp");
        let file = ctx.path().join(".dockerignore");
        std::fs::write(&file, "#".repeat((MAX_IGNORE_FILE + 1) as usize)).expect("write");
        let e = Ignore::load(ctx.path()).expect_err("oversized");
        assert!(format!("{e}").contains("larger than 1 MiB"), "{e}");
        std::fs::remove_file(&file).expect("rm");
        std::os::unix::fs::symlink("/dev/zero", &file).expect("symlink");
        let e = Ignore::load(ctx.path()).expect_err("a device");
        assert!(format!("{e}").contains("not a regular file"), "{e}");
        std::fs::remove_file(&file).expect("rm");
        assert_eq!(Ignore::load(ctx.path()), Ok(Ignore::default()));
    }

    #[test]
    fn clean_is_go_filepath_clean() {
        for (i, o) in [
            ("", "."),
            ("a//b/./c/", "a/b/c"),
            ("a/../../b", "../b"),
            ("/../a", "/a"),
            ("./", "."),
            ("/", "/"),
        ] {
            assert_eq!(clean(i), o, "{i}");
        }
    }
}
