//! What `from` (and a Dockerfile's `FROM`) may name, and the `base` blocks that redirect
//! registry references to other sources.

use crate::model::{Base, Project};
use crate::reference;
use crate::values;
use std::path::Path;

/// The sources `from` accepts, for hints.
pub(crate) const SOURCES_HINT: &str = "use \"scratch\", \"oci:DIR[:TAG]\", \"oci-archive:FILE[:TAG]\", \"docker-archive:FILE\", or a registry reference such as \"debian:12\" or \"REGISTRY/REPO@sha256:DIGEST\"";

/// Why a `from` value is not a base: a message and maybe a hint.
pub(crate) type BaseError = (String, Option<String>);

/// Parse a `from` value. Local paths are resolved against `dir` and must exist; registry
/// references are normalised (`debian:12` is `docker.io/library/debian:12`), tags included.
pub(crate) fn parse_from(s: &str, dir: &Path) -> Result<Base, BaseError> {
    /// `PATH[:TAG]`, where a colon belongs to the tag only if what follows has no '/'.
    fn path_tag(rest: &str) -> (&str, Option<String>) {
        match rest.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') && !t.is_empty() && !p.is_empty() => {
                (p, Some(t.to_string()))
            }
            _ => (rest, None),
        }
    }
    let local = |p: &str, what: &str| {
        let path = dir.join(p);
        if path.exists() {
            Ok(path)
        } else {
            Err((
                format!("{what} \"{p}\" does not exist"),
                Some(format!(
                    "paths are relative to the spec file's directory; looked for {}",
                    path.display()
                )),
            ))
        }
    };
    if s == "scratch" {
        return Ok(Base::Scratch);
    }
    if let Some(rest) = s.strip_prefix("oci:") {
        let (p, tag) = path_tag(rest);
        let path = local(p, "base image layout")?;
        return Ok(Base::Oci { path, tag });
    }
    if let Some(rest) = s.strip_prefix("oci-archive:") {
        let (p, tag) = path_tag(rest);
        let path = local(p, "base image archive")?;
        return Ok(Base::OciArchive { path, tag });
    }
    if let Some(rest) = s.strip_prefix("docker-archive:") {
        let path = local(rest, "base image archive")?;
        return Ok(Base::DockerArchive { path });
    }
    if let Some((_, d)) = s.rsplit_once('@')
        && !values::is_sha256_digest(d)
    {
        return Err((
            format!("invalid image digest in base \"{s}\""),
            Some("a digest is sha256: followed by 64 lowercase hex digits".into()),
        ));
    }
    match reference::parse(s) {
        Ok(r) => Ok(Base::Registry {
            reference: r.normalized(),
        }),
        Err(e) => Err((
            format!("invalid base image \"{s}\": {e}"),
            Some(SOURCES_HINT.into()),
        )),
    }
}

impl Project {
    /// What a `from` value, or a Dockerfile's `FROM` (after its `ARG` substitution), builds
    /// on: parsed exactly as `from = "…"` is (local paths relative to the project directory),
    /// then redirected by the project's `base` blocks. A registry reference comes back
    /// normalised (`Base::Registry { reference: "docker.io/library/debian:12" }`), pinned
    /// by digest or by tag; a tag is pinned by `recast.lock` when the image is built.
    pub fn resolve_base(&self, from: &str) -> Result<Base, String> {
        let base = parse_from(from, &self.dir).map_err(|(m, h)| match h {
            Some(h) => format!("{m}\n  hint: {h}"),
            None => m,
        })?;
        Ok(self.redirect(base))
    }

    /// `base` apply through its `base` block, if one names it (one level: a block's source is
    /// not redirected again).
    pub fn redirect(&self, base: Base) -> Base {
        match &base {
            Base::Registry { reference } => match self.bases.get(reference) {
                Some(b) => b.clone(),
                None => base,
            },
            _ => base,
        }
    }
}
