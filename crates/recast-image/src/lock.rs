//! `recast.lock`: the manifest digest each base tag of a project was resolved to, so that
//! builds stay reproducible (and work offline) until the lock is updated on purpose.
//!
//! The file lives in the project directory, next to the spec, and is meant to be committed:
//!
//! ```json
//! {
//!   "version": 1,
//!   "bases": {
//!     "docker.io/library/debian:12": "sha256:…"
//!   }
//! }
//! ```
//!
//! Keys are normalised references ([`recast_spec::reference`]), sorted; one entry a line.

use crate::digest::Digest;
use crate::error::{Context, Error, Result};
use crate::registry::{self, Remote};
use recast_spec::reference::{self, Reference};
use recast_spec::{Base, Project};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The lock file's name, in the project directory.
pub const FILE_NAME: &str = "recast.lock";

/// The format written; a file of another version is refused.
const VERSION: u64 = 1;

/// The largest lock file read.
const MAX_LOCK: u64 = 4 << 20;

/// A project's lock: normalised tag reference → manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub path: PathBuf,
    /// Whether the file existed when read.
    pub exists: bool,
    pub bases: BTreeMap<String, Digest>,
}

impl Lock {
    /// The lock of `project` (empty when there is no file yet).
    pub fn read(project: &Project) -> Result<Lock> {
        let path = project.dir.join(FILE_NAME);
        let bytes = match read_bounded(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Lock {
                    path,
                    exists: false,
                    bases: BTreeMap::new(),
                });
            }
            Err(e) => return Err(Error::msg(format!("cannot read {}: {e}", path.display()))),
        };
        let bad = |why: String| {
            Error::msg(format!(
                "{} is not a valid lock file: {why}\n  hint: delete it and run `recast lock` to write it again",
                path.display()
            ))
        };
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("{e}")))?;
        match v.get("version").and_then(serde_json::Value::as_u64) {
            Some(VERSION) => {}
            Some(n) => return Err(bad(format!("version {n} (this recast writes {VERSION})"))),
            None => return Err(bad("no \"version\"".into())),
        }
        let mut bases = BTreeMap::new();
        if let Some(b) = v.get("bases") {
            let b = b
                .as_object()
                .ok_or_else(|| bad("\"bases\" is not an object".into()))?;
            for (k, d) in b {
                let r = reference::parse(k)
                    .map_err(|e| bad(format!("entry \"{k}\" is not an image reference: {e}")))?;
                if r.is_pinned() || r.normalized() != *k {
                    return Err(bad(format!(
                        "entry \"{k}\" is not a normalised tag reference (\"{}\")",
                        r.normalized()
                    )));
                }
                let d = d.as_str().and_then(Digest::parse).ok_or_else(|| {
                    bad(format!(
                        "the digest of \"{k}\" is not sha256: and 64 hex digits"
                    ))
                })?;
                bases.insert(k.clone(), d);
            }
        }
        Ok(Lock {
            path,
            exists: true,
            bases,
        })
    }

    /// The file's text: `version` first, then the entries sorted, one a line, a final newline.
    pub fn render(&self) -> String {
        let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        let entries: Vec<String> = self
            .bases
            .iter()
            .map(|(k, d)| format!("    {}: {}", q(k), q(d.as_str())))
            .collect();
        let bases = if entries.is_empty() {
            "{}".to_string()
        } else {
            format!("{{\n{}\n  }}", entries.join(",\n"))
        };
        format!("{{\n  \"version\": {VERSION},\n  \"bases\": {bases}\n}}\n")
    }

    /// Write the file atomically (a temporary file in the same directory, synced, renamed).
    pub fn write(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{FILE_NAME}.tmp{}", std::process::id()));
        let result = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            // The lock is shared with the team: readable like the spec, whatever the umask.
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.doing(|| format!("writing {}", self.path.display()))
    }
}

fn read_bounded(p: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(p)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(MAX_LOCK + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_LOCK {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_LOCK >> 20
        )));
    }
    Ok(bytes)
}

/// A tag the project builds on, and who uses it (`image app`, `image site, Dockerfile:3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub reference: String,
    pub by: String,
}

/// Every tag (not pinned by digest) the project's images build on, after `base` blocks: each
/// `from`, and each `FROM` and `COPY --from` image of the Dockerfile stages an image builds.
/// Sorted by reference; a reference used twice is listed once (with its first user).
/// A Dockerfile that cannot be read or parsed is skipped here: building it reports why.
pub fn tags(project: &Project) -> Vec<Use> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut add = |base: &Base, by: String| {
        if let Base::Registry { reference: r } = base
            && let Ok(parsed) = reference::parse(r)
            && !parsed.is_pinned()
        {
            out.entry(parsed.normalized()).or_insert(by);
        }
    };
    for image in project.images.values() {
        add(&image.from, format!("image {}", image.name));
        let Some(df) = &image.dockerfile else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&df.path) else {
            continue;
        };
        let opts = recast_dockerfile::Options {
            args: df.args.clone(),
            ..Default::default()
        };
        let Ok(parsed) = recast_dockerfile::parse_with(&df.path, &text, &opts) else {
            continue;
        };
        let Ok(order) = parsed.stage_order(df.target.as_deref()) else {
            continue;
        };
        let file = df
            .path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        for i in order {
            let stage = &parsed.stages[i];
            let mut refs = Vec::new();
            if let recast_dockerfile::Base::Image(r) = &stage.base {
                refs.push((r, stage.from_span.line));
            }
            for instr in &stage.instructions {
                if let recast_dockerfile::Op::Copy(recast_dockerfile::Copy {
                    from: Some(recast_dockerfile::CopyFrom::Image(r)),
                    ..
                }) = &instr.op
                {
                    refs.push((r, instr.span.line));
                }
            }
            for (r, line) in refs {
                if let Ok(base) = project.resolve_base(r) {
                    add(&base, format!("image {}, {file}:{line}", image.name));
                }
            }
        }
    }
    out.into_iter()
        .map(|(reference, by)| Use { reference, by })
        .collect()
}

/// What to do with the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A build: resolve tags the lock lacks and add them (writing the file); move nothing.
    Build,
    /// `--locked`: the lock must already pin every tag; nothing is resolved or written.
    Locked,
    /// `recast lock`: complete the lock, drop entries nothing uses, always write the file.
    Lock,
    /// `recast lock --update [REF…]`: resolve these tags again (every tag when empty), complete
    /// the rest, drop entries nothing uses.
    Update(Vec<String>),
}

/// One entry's fate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub reference: String,
    pub digest: Digest,
    /// `added`, `updated`, `unchanged` or `removed`.
    pub change: &'static str,
    /// The digest before, for `updated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<Digest>,
}

/// Bring the project's lock in line with `mode`; returns the lock (whose `bases` pin every
/// tag the project uses) and what happened to each entry.
pub fn ensure(
    project: &Project,
    mode: &Mode,
    insecure: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<(Lock, Vec<Change>)> {
    let mut lock = Lock::read(project)?;
    let used = tags(project);
    if *mode == Mode::Locked {
        return match unpinned(&lock, &used) {
            None => Ok((lock, Vec::new())),
            Some(e) => Err(e),
        };
    }
    let again = to_resolve_again(mode, &used)?;
    let mut changes = Vec::new();
    for u in &used {
        let previous = lock.bases.get(&u.reference).cloned();
        if let Some(p) = &previous
            && !again.contains(&u.reference)
        {
            changes.push(Change {
                reference: u.reference.clone(),
                digest: p.clone(),
                change: "unchanged",
                previous: None,
            });
            continue;
        }
        progress(&format!("resolving {} (used by {})", u.reference, u.by));
        let parsed: Reference = reference::parse(&u.reference).map_err(Error::msg)?;
        let digest = registry::resolve(&Remote::from_reference(&parsed), insecure)
            .map_err(|e| Error::msg(format!("{e}\n  (the tag is used by {})", u.by)))?;
        let change = match &previous {
            None => "added",
            Some(p) if *p == digest => "unchanged",
            Some(_) => "updated",
        };
        changes.push(Change {
            reference: u.reference.clone(),
            digest: digest.clone(),
            change,
            previous: previous.filter(|p| *p != digest),
        });
        lock.bases.insert(u.reference.clone(), digest);
    }
    let mut write = changes.iter().any(|c| c.change != "unchanged");
    if matches!(mode, Mode::Lock | Mode::Update(_)) {
        let stale: Vec<String> = lock
            .bases
            .keys()
            .filter(|k| !used.iter().any(|u| &u.reference == *k))
            .cloned()
            .collect();
        for k in stale {
            if let Some(d) = lock.bases.remove(&k) {
                changes.push(Change {
                    reference: k,
                    digest: d,
                    change: "removed",
                    previous: None,
                });
            }
        }
        write = true;
    }
    if write {
        lock.write()?;
        lock.exists = true;
    }
    changes.sort_by(|a, b| a.reference.cmp(&b.reference));
    Ok((lock, changes))
}

/// For `--locked`: the error naming the tags `used` that `lock` does not pin, if any.
fn unpinned(lock: &Lock, used: &[Use]) -> Option<Error> {
    let missing: Vec<&Use> = used
        .iter()
        .filter(|u| !lock.bases.contains_key(&u.reference))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let list: Vec<String> = missing
        .iter()
        .map(|u| format!("{} (used by {})", u.reference, u.by))
        .collect();
    let head = if lock.exists {
        format!("{} is stale: it does not pin", lock.path.display())
    } else {
        format!(
            "{} does not exist, and the project builds on",
            lock.path.display()
        )
    };
    Some(Error::msg(format!(
        "{head} {} (--locked)\n  hint: run `recast lock` and commit {FILE_NAME}",
        list.join(", ")
    )))
}

/// The normalised tags to resolve again even where the lock pins them: those `recast lock
/// --update` names (each must be used by the project), or all it uses when it names none.
fn to_resolve_again(mode: &Mode, used: &[Use]) -> Result<Vec<String>> {
    Ok(match mode {
        Mode::Update(refs) if refs.is_empty() => used.iter().map(|u| u.reference.clone()).collect(),
        Mode::Update(refs) => {
            let mut out = Vec::new();
            for r in refs {
                let n = reference::parse(r)
                    .map_err(|e| Error::msg(format!("invalid image reference \"{r}\": {e}")))?
                    .normalized();
                if !used.iter().any(|u| u.reference == n) {
                    let known: Vec<&str> = used.iter().map(|u| u.reference.as_str()).collect();
                    return Err(Error::msg(format!(
                        "the project does not build on {n} (\"{r}\"){}",
                        if known.is_empty() {
                            "; it uses no tags".to_string()
                        } else {
                            format!("; its tags are {}", known.join(", "))
                        }
                    )));
                }
                out.push(n);
            }
            out
        }
        _ => Vec::new(),
    })
}

/// The registry remote a base reference is built from: itself when pinned by digest, else the
/// digest `pins` (a lock's `bases`) gives its tag.
pub fn pinned_remote(reference: &str, pins: &BTreeMap<String, Digest>, of: &str) -> Result<Remote> {
    let r = reference::parse(reference)
        .map_err(|e| Error::msg(format!("{of} builds on \"{reference}\": {e}")))?;
    if r.is_pinned() {
        return Ok(Remote::from_reference(&r));
    }
    let n = r.normalized();
    let d = pins.get(&n).ok_or_else(|| {
        Error::msg(format!(
            "{of} builds on the tag {n}, which {FILE_NAME} does not pin\n  hint: run `recast lock` (or build without --locked)"
        ))
    })?;
    Ok(Remote::from_reference(&r.pinned(d.as_str())))
}
