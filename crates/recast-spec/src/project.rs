//! Loading a project: finding its files, parsing each, and the checks that span files.

use crate::decode::{Cx, Decoded, Named, Ref};
use crate::diag::{Diagnostic, Diagnostics, SourceFile, did_you_mean, file_diag};
use crate::model::{Base, Guard, Project, Registry};
use crate::vars::{self, Inputs};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Load the project at `path`: a spec file, or a directory whose `*.hcl` files form one project.
/// Variables take their defaults; a spec that declares none loads the same with any inputs.
///
/// Returns every problem found, sorted by file and position, or the checked model.
pub fn load(path: &Path) -> Result<Project, Diagnostics> {
    load_with(path, &Inputs::default())
}

/// [`load`] for an environment and variable values ([`Inputs`]).
pub fn load_with(path: &Path, inputs: &Inputs) -> Result<Project, Diagnostics> {
    let (dir, paths) = spec_files(path).map_err(|d| Diagnostics(vec![d]))?;
    let mut sources = Vec::new();
    let mut diags = Vec::new();
    for p in &paths {
        match read_bounded(p) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => sources.push(SourceFile::new(p.clone(), text)),
                Err(e) => diags.push(file_diag(
                    p,
                    format!(
                        "spec file is not valid UTF-8 (byte {})",
                        e.utf8_error().valid_up_to()
                    ),
                    None,
                )),
            },
            Err(e) => diags.push(file_diag(p, format!("cannot read spec file: {e}"), None)),
        }
    }
    let mut bodies: Vec<Option<hcl_edit::structure::Body>> = sources
        .iter()
        .map(|src| match hcl_edit::parser::parse_body(&src.text) {
            Ok(body) => Some(body),
            Err(e) => {
                let at = e.location().offset();
                diags.push(src.diag(at..at + 1, format!("syntax error: {}", e.message()), None));
                None
            }
        })
        .collect();
    let before = diags.len();
    let variables = vars::resolve(&sources, &bodies, inputs, &mut diags);
    if diags.len() > before {
        // Without every variable's value, decoding would only repeat these errors elsewhere.
        let mut diags = Diagnostics(diags);
        diags.sort();
        return Err(diags);
    }
    let mut decoded = Decoded::default();
    for (i, (src, body)) in sources.iter().zip(bodies.iter_mut()).enumerate() {
        let Some(body) = body else { continue };
        for e in crate::eval::substitute(body, &variables, &["variable", "environment"]) {
            diags.push(src.diag(e.span, e.message, e.hint));
        }
        let mut cx = Cx::new(src, i, &mut decoded);
        cx.file(body);
        diags.append(&mut cx.diags);
    }
    let mut project = cross_check(dir, paths, decoded, &sources, &mut diags);
    project.environment = inputs.env.clone();
    project.variables = variables;
    let mut diags = Diagnostics(diags);
    diags.sort();
    if diags.is_empty() {
        Ok(project)
    } else {
        Err(diags)
    }
}

/// The largest spec file read: specs are small, and nothing may make recast read a device or a
/// huge file into memory.
const MAX_SPEC_FILE: u64 = 4 << 20;

/// A spec file's bytes: a regular file (symlinks followed) of at most [`MAX_SPEC_FILE`] bytes.
fn read_bounded(p: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    // Checked before opening too: opening a FIFO would block.
    if !std::fs::metadata(p)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let f = std::fs::File::open(p)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(MAX_SPEC_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SPEC_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_SPEC_FILE >> 20
        )));
    }
    Ok(bytes)
}

/// The files of the project at `path`, and the directory it lives in.
fn spec_files(path: &Path) -> Result<(PathBuf, Vec<PathBuf>), Diagnostic> {
    let meta = std::fs::metadata(path).map_err(|e| {
        let hint = (path == Path::new("recast.hcl"))
            .then(|| "run recast in a directory with a recast.hcl, or pass -f PATH".to_string());
        file_diag(path, format!("cannot read spec: {e}"), hint)
    })?;
    if !meta.is_dir() {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        return Ok((dir, vec![path.to_path_buf()]));
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| file_diag(path, format!("cannot list spec directory: {e}"), None))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "hcl") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(file_diag(
            path,
            "no spec files (*.hcl) in this directory".into(),
            Some("create a recast.hcl, or pass -f PATH".into()),
        ));
    }
    Ok((path.to_path_buf(), files))
}

/// The checks that span files: duplicate names, at most one guard and one project name,
/// references to what is declared, listen addresses that clash; then the project itself.
fn cross_check(
    dir: PathBuf,
    files: Vec<PathBuf>,
    d: Decoded,
    sources: &[SourceFile],
    diags: &mut Vec<Diagnostic>,
) -> Project {
    let place = |file, span: &_| place(sources, file, span);
    let at = |file: usize, span: &Range<usize>, msg: String, hint: Option<String>| {
        sources[file].diag(span.clone(), msg, hint)
    };

    let registry = registry(&d, sources, diags);
    let bases = bases(d.bases, sources, diags);
    let mut images = dedupe("image", d.images, sources, diags, |i| &i.name);
    for image in images.values_mut() {
        if let Base::Registry { reference } = &image.from
            && let Some(b) = bases.get(reference)
        {
            image.from = b.clone();
        }
    }
    let services = dedupe("service", d.services, sources, diags, |s| &s.name);
    // A test block without `port` tests the image where it serves: the port of the (first)
    // service that runs it, else 8080.
    for image in images.values_mut() {
        if let Some(t) = image.test.as_mut().filter(|t| t.port == 0) {
            t.port = services
                .values()
                .find(|s| s.image == image.name)
                .map_or(8080, |s| s.port);
        }
    }
    let routes = dedupe("route", d.routes, sources, diags, |r| &r.name);
    let webhooks = dedupe("webhook", d.webhooks, sources, diags, |w| &w.name);
    let secrets = dedupe("secret", d.secrets, sources, diags, |s| &s.name);
    let environments = dedupe("environment", d.environments, sources, diags, |e| &e.name);

    if let [first, rest @ ..] = d.guards.as_slice() {
        for g in rest {
            diags.push(at(
                g.file,
                &g.span,
                "a project takes at most one guard block".into(),
                Some(format!(
                    "the first is at {}",
                    place(first.file, &first.span)
                )),
            ));
        }
    }
    if let [first, rest @ ..] = d.projects.as_slice() {
        for p in rest {
            diags.push(at(
                p.file,
                &p.span,
                "`project` is set more than once".into(),
                Some(format!(
                    "the project is already named \"{}\" at {}; set it in one file only",
                    first.value,
                    place(first.file, &first.span)
                )),
            ));
        }
    }
    let name = d.projects.into_iter().next().map(|p| p.value);
    let guard = d
        .guards
        .into_iter()
        .next()
        .map_or_else(Guard::default, |g| g.value);

    check_refs(&d.refs, &d.declared, sources, diags);
    check_listens(&d.listens, sources, diags);

    Project {
        name,
        dir,
        files,
        images,
        services,
        routes,
        guard,
        webhooks,
        bases,
        registry,
        secrets,
        environments,
        environment: None,
        variables: BTreeMap::new(),
    }
}

/// The project's registry: at most one block, and every image a service runs must make a
/// repository name under its url.
fn registry(d: &Decoded, sources: &[SourceFile], diags: &mut Vec<Diagnostic>) -> Option<Registry> {
    let [first, rest @ ..] = d.registries.as_slice() else {
        return None;
    };
    for r in rest {
        diags.push(sources[r.file].diag(
            r.span.clone(),
            "a project takes at most one registry block".into(),
            Some(format!(
                "the first is at {}",
                place(sources, first.file, &first.span)
            )),
        ));
    }
    let registry = first.value.clone()?;
    let deployed: Vec<&str> = d.services.iter().map(|s| s.value.image.as_str()).collect();
    for image in d
        .images
        .iter()
        .filter(|i| deployed.contains(&i.value.name.as_str()))
    {
        let name = &image.value.name;
        if let Err(e) = crate::reference::registry_repository(&registry.url, name) {
            diags.push(sources[image.file].diag(
                image.span.clone(),
                format!(
                    "image \"{name}\" cannot be pushed to registry {}: {e}",
                    registry.url
                ),
                Some(format!(
                    "images are pushed as URL/IMAGE ({}); rename the image",
                    registry.repository(name)
                )),
            ));
        }
    }
    Some(registry)
}

/// Every reference to an image or service names one that is declared somewhere in the
/// project; an unknown name gets a did-you-mean or the list of those defined.
fn check_refs(
    refs: &[Ref],
    declared: &[(&'static str, String)],
    sources: &[SourceFile],
    diags: &mut Vec<Diagnostic>,
) {
    let at = |file: usize, span: &Range<usize>, msg: String, hint: Option<String>| {
        sources[file].diag(span.clone(), msg, hint)
    };
    for r in refs {
        let mut names: Vec<&str> = declared
            .iter()
            .filter(|(k, _)| *k == r.kind)
            .map(|(_, n)| n.as_str())
            .collect();
        names.dedup();
        if !names.contains(&r.name.as_str()) {
            let hint = did_you_mean(&r.name, names.iter().copied()).or_else(|| {
                Some(if names.is_empty() {
                    format!(
                        "no {} is defined; add {} \"{}\" {{ … }}",
                        r.kind, r.kind, r.name
                    )
                } else {
                    format!("defined {}s: {}", r.kind, names.join(", "))
                })
            });
            diags.push(at(
                r.file,
                &r.span,
                format!("unknown {} `{}`", r.kind, r.name),
                hint,
            ));
        }
    }
}

/// No two listen addresses of the project (routes, blue/green previews) overlap: the same
/// port on the same address, or on the unspecified address.
fn check_listens(
    listens: &[Named<std::net::SocketAddr>],
    sources: &[SourceFile],
    diags: &mut Vec<Diagnostic>,
) {
    let place = |file, span: &_| place(sources, file, span);
    let at = |file: usize, span: &Range<usize>, msg: String, hint: Option<String>| {
        sources[file].diag(span.clone(), msg, hint)
    };
    for (i, l) in listens.iter().enumerate() {
        let clash = listens[..i].iter().find(|o| {
            o.value.port() == l.value.port()
                && (o.value.ip() == l.value.ip()
                    || o.value.ip().is_unspecified()
                    || l.value.ip().is_unspecified())
        });
        if let Some(o) = clash {
            diags.push(at(
                l.file,
                &l.span,
                format!(
                    "listen address {} is already in use by this project",
                    l.value
                ),
                Some(format!("it is also used at {}", place(o.file, &o.span))),
            ));
        }
    }
}

/// The `base` blocks by normalised reference; a second block for the same reference (however
/// spelled) is an error.
fn bases(
    items: Vec<Named<(String, String, Option<Base>)>>,
    sources: &[SourceFile],
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Base> {
    let mut out = BTreeMap::new();
    let mut first: BTreeMap<String, (usize, Range<usize>)> = BTreeMap::new();
    for n in items {
        let (normalized, written, source) = n.value;
        if let Some((f0, s0)) = first.get(&normalized) {
            diags.push(sources[n.file].diag(
                n.span.clone(),
                format!("duplicate base \"{written}\""),
                Some(format!(
                    "{normalized} already has a base block at {}",
                    place(sources, *f0, s0)
                )),
            ));
        } else {
            first.insert(normalized.clone(), (n.file, n.span));
            if let Some(source) = source {
                out.insert(normalized, source);
            }
        }
    }
    out
}

/// "file:line:col" of a span.
fn place(sources: &[SourceFile], file: usize, span: &Range<usize>) -> String {
    let d = sources[file].diag(span.clone(), String::new(), None);
    format!("{}:{}:{}", d.file.display(), d.line, d.column)
}

/// Keep the first of each name; report the others as duplicates.
fn dedupe<T>(
    kind: &str,
    items: Vec<Named<T>>,
    sources: &[SourceFile],
    diags: &mut Vec<Diagnostic>,
    name: impl Fn(&T) -> &String,
) -> BTreeMap<String, T> {
    let mut out: BTreeMap<String, T> = BTreeMap::new();
    let mut first: BTreeMap<String, (usize, Range<usize>)> = BTreeMap::new();
    for n in items {
        let key = name(&n.value).clone();
        if let Some((f0, s0)) = first.get(&key) {
            diags.push(sources[n.file].diag(
                n.span.clone(),
                format!("duplicate {kind} \"{key}\""),
                Some(format!(
                    "{kind} \"{key}\" is already defined at {}",
                    place(sources, *f0, s0)
                )),
            ));
        } else {
            first.insert(key.clone(), (n.file, n.span));
            out.insert(key, n.value);
        }
    }
    out
}
