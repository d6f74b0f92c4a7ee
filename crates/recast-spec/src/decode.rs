//! Decoding one parsed HCL file into the typed model, collecting every problem on the way.
//!
//! Per-file checks happen here (types, ranges, unknown names, strategy knobs); checks that need
//! the whole project (references, duplicates across files) happen in `project.rs`.

use crate::diag::{Diagnostic, SourceFile, did_you_mean};
use crate::model::*;
use crate::values;
use hcl_edit::Span;
use hcl_edit::expr::{Expression, Object, TraversalOperator, UnaryOperator};
use hcl_edit::structure::{Attribute, Block, Body, Structure};
use hcl_edit::template::{Element, Template};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

/// A named thing and where its name was written.
#[derive(Debug, Clone)]
pub(crate) struct Named<T> {
    pub value: T,
    pub file: usize,
    pub span: Range<usize>,
}

/// A reference such as `image.hello`, to be resolved once every file is read.
#[derive(Debug, Clone)]
pub(crate) struct Ref {
    pub kind: &'static str,
    pub name: String,
    pub file: usize,
    pub span: Range<usize>,
}

/// What the files of a project declare, before cross-file checks.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub images: Vec<Named<Image>>,
    pub services: Vec<Named<Service>>,
    pub routes: Vec<Named<Route>>,
    pub guards: Vec<Named<Guard>>,
    pub webhooks: Vec<Named<Webhook>>,
    /// Every top-level `project = "NAME"`.
    pub projects: Vec<Named<String>>,
    pub refs: Vec<Ref>,
    /// Every image and service name declared, even where the block has errors, so that a
    /// broken block does not also make every reference to it an error.
    pub declared: Vec<(&'static str, String)>,
    /// Every address something listens on: routes and blue/green previews.
    pub listens: Vec<Named<std::net::SocketAddr>>,
    /// `base` blocks: (normalised reference, reference as written, source).
    pub bases: Vec<Named<(String, String, Option<Base>)>>,
    /// `registry` blocks (a broken one is `None`, still counted for "at most one").
    pub registries: Vec<Named<Option<Registry>>>,
    /// `secret` blocks.
    pub secrets: Vec<Named<Secret>>,
    /// `environment` blocks.
    pub environments: Vec<Named<Environment>>,
}

pub(crate) struct Cx<'a> {
    file: &'a SourceFile,
    file_idx: usize,
    /// Directory that relative paths in this file are resolved against.
    dir: PathBuf,
    pub diags: Vec<Diagnostic>,
    out: &'a mut Decoded,
}

fn span_of(x: &impl Span) -> Range<usize> {
    x.span().unwrap_or(0..0)
}

/// Name of an expression's kind, for "must be X, found Y" messages.
fn kind(e: &Expression) -> &'static str {
    match e {
        Expression::Null(_) => "null",
        Expression::Bool(_) => "a bool",
        Expression::Number(_) => "a number",
        Expression::String(_) | Expression::StringTemplate(_) | Expression::HeredocTemplate(_) => {
            "a string"
        }
        Expression::Array(_) => "a list",
        Expression::Object(_) => "an object",
        Expression::Variable(_) | Expression::Traversal(_) => "a reference",
        Expression::UnaryOp(u) if matches!(u.expr, Expression::Number(_)) => "a number",
        _ => "an expression",
    }
}

/// A block's body, with what has been read from it so far.
struct Reader<'b> {
    body: &'b Body,
    /// `service "hello"`, for messages.
    what: String,
    /// Span of the block header, for "missing attribute" errors.
    span: Range<usize>,
    used: Vec<bool>,
    known_attrs: Vec<&'static str>,
    known_blocks: Vec<&'static str>,
}

impl<'a> Cx<'a> {
    pub fn new(file: &'a SourceFile, file_idx: usize, out: &'a mut Decoded) -> Cx<'a> {
        let dir = match file.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Cx {
            file,
            file_idx,
            dir,
            diags: Vec::new(),
            out,
        }
    }

    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.err_hint(span, message, None);
    }

    fn err_hint(&mut self, span: Range<usize>, message: impl Into<String>, hint: Option<String>) {
        self.diags.push(self.file.diag(span, message.into(), hint));
    }

    fn named<T>(&self, value: T, span: Range<usize>) -> Named<T> {
        Named {
            value,
            file: self.file_idx,
            span,
        }
    }

    // ---- the top level ----------------------------------------------------------------------

    pub fn file(&mut self, body: &Body) {
        for s in body.iter() {
            match s {
                Structure::Attribute(a) if a.key.as_str() == "project" => self.project_name(a),
                Structure::Attribute(a) => self.err_hint(
                    span_of(&a.key),
                    format!("unexpected attribute `{}` at the top level", a.key.as_str()),
                    Some(
                        "the top level takes `project = \"NAME\"` and blocks: image, service, route, guard, webhook, base, registry, secret, variable, environment"
                            .into(),
                    ),
                ),
                Structure::Block(b) => match b.ident.as_str() {
                    "image" => self.image(b),
                    "service" => self.service(b),
                    "route" => self.route(b),
                    "guard" => {
                        if self.no_labels(b) {
                            let mut r = self.reader(b, "guard".into());
                            let g = self.guard(&mut r);
                            self.finish(r);
                            let span = span_of(&b.ident);
                            let g = self.named(g, span);
                            self.out.guards.push(g);
                        }
                    }
                    "webhook" => self.webhook(b),
                    "base" => self.base_block(b),
                    "registry" => self.registry(b),
                    "secret" => self.secret(b),
                    // Read before decoding, by `vars.rs`.
                    "variable" => {}
                    "environment" => self.environment(b),
                    other => self.err_hint(
                        span_of(&b.ident),
                        format!("unknown block `{other}`"),
                        did_you_mean(
                            other,
                            [
                                "image",
                                "service",
                                "route",
                                "guard",
                                "webhook",
                                "base",
                                "registry",
                                "secret",
                                "variable",
                                "environment",
                            ],
                        )
                        .or_else(|| {
                            Some(
                                "top-level blocks are image, service, route, guard, webhook, base, registry, secret, variable, environment"
                                    .into(),
                            )
                        }),
                    ),
                },
            }
        }
    }

    /// `project = "NAME"`: the project's name, checked like every other name.
    fn project_name(&mut self, a: &Attribute) {
        let Some(name) = self.string(a) else {
            return;
        };
        let span = span_of(&a.value);
        if !values::is_name(&name) {
            self.err_hint(
                span,
                format!("invalid project name \"{name}\""),
                Some("names use lowercase letters, digits, '-', '_' and '.', start with a letter or digit, and have at most 63 characters".into()),
            );
            return;
        }
        let n = self.named(name, span_of(&a.key));
        self.out.projects.push(n);
    }

    /// The single label of `kind "NAME" { … }`, checked as a name.
    fn label(&mut self, b: &Block) -> Option<(String, Range<usize>)> {
        let kind = b.ident.as_str();
        match b.labels.as_slice() {
            [] => {
                self.err_hint(
                    span_of(&b.ident),
                    format!("{kind} block needs a name"),
                    Some(format!("write {kind} \"NAME\" {{ … }}")),
                );
                None
            }
            [l] => {
                let name = l.as_str();
                let span = span_of(l);
                if !values::is_name(name) {
                    self.err_hint(
                        span,
                        format!("invalid {kind} name \"{name}\""),
                        Some("names use lowercase letters, digits, '-', '_' and '.', start with a letter or digit, and have at most 63 characters".into()),
                    );
                    return None;
                }
                Some((name.to_string(), span))
            }
            [_, extra, ..] => {
                self.err(
                    span_of(extra),
                    format!("{kind} block takes one label, found {}", b.labels.len()),
                );
                None
            }
        }
    }

    fn no_labels(&mut self, b: &Block) -> bool {
        if let Some(l) = b.labels.first() {
            self.err(
                span_of(l),
                format!("{} block takes no label", b.ident.as_str()),
            );
            return false;
        }
        true
    }

    fn reader<'b>(&mut self, b: &'b Block, what: String) -> Reader<'b> {
        Reader {
            body: &b.body,
            what,
            span: span_of(&b.ident),
            used: vec![false; b.body.len()],
            known_attrs: Vec::new(),
            known_blocks: Vec::new(),
        }
    }

    /// Report everything in the block that nobody asked for.
    fn finish(&mut self, r: Reader<'_>) {
        for (i, s) in r.body.iter().enumerate() {
            if r.used[i] {
                continue;
            }
            match s {
                Structure::Attribute(a) => {
                    let name = a.key.as_str();
                    let hint = if r.known_blocks.contains(&name) {
                        Some(format!("`{name}` is a block: write {name} {{ … }}"))
                    } else {
                        did_you_mean(name, r.known_attrs.iter().copied())
                    };
                    self.err_hint(
                        span_of(&a.key),
                        format!("unknown attribute `{name}` in {}", r.what),
                        hint,
                    );
                }
                Structure::Block(b) => {
                    let name = b.ident.as_str();
                    let hint = if r.known_attrs.contains(&name) {
                        Some(format!("`{name}` is an attribute: write {name} = …"))
                    } else {
                        did_you_mean(name, r.known_blocks.iter().copied())
                    };
                    self.err_hint(
                        span_of(&b.ident),
                        format!("unknown block `{name}` in {}", r.what),
                        hint,
                    );
                }
            }
        }
    }

    fn required<'b>(&mut self, r: &mut Reader<'b>, name: &'static str) -> Option<&'b Attribute> {
        let a = r.attr(name);
        if a.is_none() {
            self.err(
                r.span.clone(),
                format!("missing required attribute `{name}` in {}", r.what),
            );
        }
        a
    }

    // ---- typed values -----------------------------------------------------------------------

    fn type_err(&mut self, a: &Attribute, expected: &str) {
        let found = kind(&a.value);
        let hint = match (&a.value, expected) {
            (Expression::String(s), "a number") if s.parse::<f64>().is_ok() => Some(format!(
                "remove the quotes: {} = {}",
                a.key.as_str(),
                s.as_str()
            )),
            _ => None,
        };
        self.err_hint(
            span_of(&a.value),
            format!("`{}` must be {expected}, found {found}", a.key.as_str()),
            hint,
        );
    }

    /// The text of a string expression. Templates that interpolate were evaluated before
    /// decoding (`eval::substitute`); one still here failed to, and that was reported then.
    fn str_of(&mut self, e: &Expression) -> Result<String, ()> {
        let template: &Template = match e {
            Expression::String(s) => return Ok(s.as_str().to_string()),
            Expression::StringTemplate(t) => t,
            Expression::HeredocTemplate(h) => &h.template,
            _ => return Err(()),
        };
        let mut out = String::new();
        for el in template.iter() {
            match el {
                Element::Literal(l) => out.push_str(l.as_str()),
                Element::Interpolation(_) | Element::Directive(_) => return Ok(out),
            }
        }
        Ok(out)
    }

    fn string(&mut self, a: &Attribute) -> Option<String> {
        match self.str_of(&a.value) {
            Ok(s) => Some(s),
            Err(()) => {
                self.type_err(a, "a string");
                None
            }
        }
    }

    /// A string that must not be empty.
    fn nonempty(&mut self, a: &Attribute) -> Option<String> {
        let s = self.string(a)?;
        if s.is_empty() {
            self.err(
                span_of(&a.value),
                format!("`{}` must not be empty", a.key.as_str()),
            );
            return None;
        }
        Some(s)
    }

    fn number(&mut self, a: &Attribute) -> Option<f64> {
        let n = match &a.value {
            Expression::Number(n) => n.value().as_f64(),
            Expression::UnaryOp(u) if *u.operator.value() == UnaryOperator::Neg => match &u.expr {
                Expression::Number(n) => n.value().as_f64().map(|x| -x),
                _ => None,
            },
            _ => None,
        };
        if n.is_none() {
            self.type_err(a, "a number");
        }
        n
    }

    /// A whole number in `min..=max`.
    fn integer(&mut self, a: &Attribute, min: u64, max: u64) -> Option<u64> {
        let n = self.number(a)?;
        let key = a.key.as_str();
        if n.fract() != 0.0 {
            self.err(
                span_of(&a.value),
                format!("`{key}` must be a whole number, found {n}"),
            );
            return None;
        }
        if n < min as f64 || n > max as f64 {
            let msg = if max == u64::from(u32::MAX) {
                format!("`{key}` must be at least {min}, found {n}")
            } else {
                format!("`{key}` must be between {min} and {max}, found {n}")
            };
            self.err(span_of(&a.value), msg);
            return None;
        }
        Some(n as u64)
    }

    fn u32_at_least(&mut self, a: &Attribute, min: u32) -> Option<u32> {
        self.integer(a, u64::from(min), u64::from(u32::MAX))
            .map(|n| n as u32)
    }

    fn fraction(&mut self, a: &Attribute, min: f64, max: f64) -> Option<f64> {
        let n = self.number(a)?;
        if !(min..=max).contains(&n) {
            self.err(
                span_of(&a.value),
                format!(
                    "`{}` must be between {min} and {max}, found {n}",
                    a.key.as_str()
                ),
            );
            return None;
        }
        Some(n)
    }

    fn boolean(&mut self, a: &Attribute) -> Option<bool> {
        match &a.value {
            Expression::Bool(b) => Some(*b.value()),
            _ => {
                self.type_err(a, "a bool (true or false)");
                None
            }
        }
    }

    /// A string parsed by `parse`, with its error placed on the value.
    fn parsed<T>(&mut self, a: &Attribute, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let s = self.string(a)?;
        match parse(&s) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.err(span_of(&a.value), msg);
                None
            }
        }
    }

    fn duration(&mut self, a: &Attribute) -> Option<Duration> {
        if let Expression::Number(n) = &a.value {
            self.err_hint(
                span_of(&a.value),
                format!(
                    "`{}` must be a duration string, found a number",
                    a.key.as_str()
                ),
                Some(format!(
                    "add a unit: {} = \"{}s\"",
                    a.key.as_str(),
                    n.value()
                )),
            );
            return None;
        }
        self.parsed(a, values::duration)
    }

    /// A non-empty list of strings.
    fn strings(&mut self, a: &Attribute) -> Option<Vec<String>> {
        let Expression::Array(arr) = &a.value else {
            self.type_err(a, "a list of strings");
            return None;
        };
        let mut out = Vec::new();
        for e in arr.iter() {
            match self.str_of(e) {
                Ok(s) => out.push(s),
                Err(()) => {
                    self.err(
                        span_of(e),
                        format!(
                            "`{}` must be a list of strings, found {} in it",
                            a.key.as_str(),
                            kind(e)
                        ),
                    );
                    return None;
                }
            }
        }
        if out.is_empty() {
            self.err(
                span_of(&a.value),
                format!("`{}` must not be empty", a.key.as_str()),
            );
            return None;
        }
        Some(out)
    }

    /// An object of string values; keys are checked as environment variable names when `env`.
    fn string_map(&mut self, a: &Attribute, env: bool) -> Option<BTreeMap<String, String>> {
        let Expression::Object(obj) = &a.value else {
            self.type_err(a, "an object like { KEY = \"value\" }");
            return None;
        };
        self.object_strings(a.key.as_str(), obj, env, None)
    }

    /// The entries of `obj` as strings; with `secrets`, an entry whose value is `secret.NAME`
    /// goes there instead (key → secret name).
    fn object_strings(
        &mut self,
        attr: &str,
        obj: &Object,
        env: bool,
        mut secrets: Option<&mut BTreeMap<String, String>>,
    ) -> Option<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (k, v) in obj.iter() {
            let key = match k {
                hcl_edit::expr::ObjectKey::Ident(i) => Some(i.as_str().to_string()),
                hcl_edit::expr::ObjectKey::Expression(e) => self.str_of(e).ok(),
            };
            let kspan = span_of(k);
            let Some(key) = key else {
                self.err(kspan, format!("keys of `{attr}` must be names or strings"));
                ok = false;
                continue;
            };
            if env && !values::is_env_name(&key) {
                self.err(
                    kspan,
                    format!("invalid environment variable name \"{key}\" in `{attr}`"),
                );
                ok = false;
                continue;
            }
            if let Some(secrets) = secrets.as_deref_mut()
                && is_secret_ref(v.expr())
            {
                let name = self.reference_in(attr, v.expr(), "secret", false);
                let dup = out.contains_key(&key);
                if let Some(name) = name
                    && (dup || secrets.insert(key.clone(), name).is_some())
                {
                    self.err(kspan, format!("duplicate key \"{key}\" in `{attr}`"));
                    ok = false;
                }
                continue;
            }
            let value = match v.expr() {
                // Numbers and bools are written to the environment as text.
                Expression::Number(n) => n.value().to_string(),
                Expression::Bool(b) => b.value().to_string(),
                e => match self.str_of(e) {
                    Ok(s) => s,
                    Err(()) => {
                        self.err(
                            span_of(e),
                            format!("values of `{attr}` must be strings, found {}", kind(e)),
                        );
                        ok = false;
                        continue;
                    }
                },
            };
            let in_secrets = secrets.as_ref().is_some_and(|s| s.contains_key(&key));
            if out.insert(key.clone(), value).is_some() || in_secrets {
                self.err(kspan, format!("duplicate key \"{key}\" in `{attr}`"));
                ok = false;
            }
        }
        ok.then_some(out)
    }

    /// `image.NAME` or `service.NAME`; recorded for resolution once every file is read.
    fn reference(&mut self, a: &Attribute, kind_name: &'static str) -> Option<String> {
        self.reference_in(a.key.as_str(), &a.value, kind_name, false)
    }

    /// A reference written as the value of `key`, or as an element of its list (`in_list`,
    /// which changes only how the messages show it).
    fn reference_in(
        &mut self,
        key: &str,
        e: &Expression,
        kind_name: &'static str,
        in_list: bool,
    ) -> Option<String> {
        let span = span_of(e);
        let parts = match e {
            Expression::Traversal(t) => match &t.expr {
                Expression::Variable(v) => {
                    let mut parts = vec![v.as_str().to_string()];
                    for op in &t.operators {
                        match op.value() {
                            TraversalOperator::GetAttr(i) => parts.push(i.as_str().to_string()),
                            _ => parts.push(String::new()),
                        }
                    }
                    Some(parts)
                }
                _ => None,
            },
            Expression::Variable(v) => Some(vec![v.as_str().to_string()]),
            _ => None,
        };
        let example = format!("{kind_name}.NAME");
        let write = |x: &str| {
            if in_list {
                format!("{key} = [{x}]")
            } else {
                format!("{key} = {x}")
            }
        };
        match parts.as_deref() {
            Some([k, name]) if k == kind_name && !name.is_empty() => {
                self.out.refs.push(Ref {
                    kind: kind_name,
                    name: name.clone(),
                    file: self.file_idx,
                    span,
                });
                Some(name.clone())
            }
            Some([k, ..]) if k != kind_name => {
                self.err_hint(
                    span,
                    format!(
                        "`{key}` must reference {} {kind_name}, found a reference to `{k}`",
                        article(kind_name)
                    ),
                    Some(format!("write {}", write(&example))),
                );
                None
            }
            Some(_) => {
                self.err_hint(
                    span,
                    format!("invalid reference in `{key}`"),
                    Some(format!("write {}", write(&example))),
                );
                None
            }
            None => {
                let hint = match self.str_of(e) {
                    Ok(s) => format!(
                        "write a reference without quotes: {}",
                        write(&format!("{kind_name}.{s}"))
                    ),
                    Err(()) => format!("write {}", write(&example)),
                };
                let msg = if in_list {
                    format!(
                        "`{key}` must be a list of references like {example}, found {} in it",
                        kind(e)
                    )
                } else {
                    format!(
                        "`{key}` must be a reference like {example}, found {}",
                        kind(e)
                    )
                };
                self.err_hint(span, msg, Some(hint));
                None
            }
        }
    }

    fn abs_path(&mut self, a: &Attribute, what: &str) -> Option<String> {
        let s = self.string(a)?;
        if !s.starts_with('/') {
            self.err_hint(
                span_of(&a.value),
                format!("{what} must be an absolute path, found \"{s}\""),
                Some(format!("write \"/{}\"", s.trim_start_matches("./"))),
            );
            return None;
        }
        if s.split('/').any(|c| c == "..") {
            self.err(
                span_of(&a.value),
                format!("{what} must not contain \"..\", found \"{s}\""),
            );
            return None;
        }
        Some(s)
    }

    /// A path on the build machine, resolved against this file's directory and required to exist.
    fn local_path(&mut self, span: Range<usize>, s: &str, what: &str) -> Option<PathBuf> {
        let p = self.dir.join(s);
        if !p.exists() {
            self.err_hint(
                span,
                format!("{what} \"{s}\" does not exist"),
                Some(format!(
                    "paths are relative to the spec file's directory; looked for {}",
                    p.display()
                )),
            );
            return None;
        }
        Some(p)
    }

    // ---- blocks -----------------------------------------------------------------------------

    /// An `image` block.
    fn image(&mut self, b: &Block) {
        let label = self.label(b);
        if let Some((name, _)) = &label {
            self.out.declared.push(("image", name.clone()));
        }
        let what = label
            .as_ref()
            .map_or_else(|| "image".to_string(), |l| format!("image \"{}\"", l.0));
        let mut r = self.reader(b, what);
        let dockerfile = self.image_dockerfile(&mut r);
        let from = match &dockerfile {
            Some(Some(_)) => Some(Base::Scratch),
            _ => self.required(&mut r, "from").and_then(|a| match &a.value {
                Expression::Traversal(_) | Expression::Variable(_) => {
                    self.reference(a, "image").map(|name| Base::Image { name })
                }
                _ => self
                    .string(a)
                    .and_then(|s| self.base(&s, span_of(&a.value))),
            }),
        };
        let steps = self.build_steps(&mut r);
        let env = r.attr("env").and_then(|a| self.string_map(a, true));
        let workdir = r.attr("workdir").and_then(|a| self.abs_path(a, "workdir"));
        let user = r.attr("user").and_then(|a| self.nonempty(a));
        let cmd = r.attr("cmd").and_then(|a| self.strings(a));
        let entrypoint = r.attr("entrypoint").and_then(|a| self.strings(a));
        let labels = r.attr("labels").and_then(|a| self.string_map(a, false));
        let tests = r.blocks("test");
        self.at_most_one(&tests, "an image takes at most one test block");
        let test = tests.first().and_then(|tb| self.image_test(tb));
        let runs_nothing = ["cmd", "entrypoint"]
            .iter()
            .all(|k| r.body.get_attribute(k).is_none());
        if let Some(Some(_)) = &dockerfile
            && !steps.is_empty()
        {
            self.err_hint(
                r.span.clone(),
                format!("{} has both `dockerfile` and copy/run steps", r.what),
                Some("put the steps in the Dockerfile, or build on it: from = image.NAME".into()),
            );
        }
        if matches!(from, Some(Base::Scratch)) && runs_nothing && matches!(dockerfile, Some(None)) {
            self.err_hint(
                r.span.clone(),
                format!("{} has neither `cmd` nor `entrypoint`", r.what),
                Some("an image from scratch needs something to run: cmd = [\"/bin/app\"]".into()),
            );
        }
        self.finish(r);
        if let (Some((name, span)), Some(from), Some(dockerfile)) = (label, from, dockerfile) {
            let image = Image {
                name,
                from,
                steps,
                dockerfile,
                env: env.unwrap_or_default(),
                workdir,
                user,
                cmd,
                entrypoint,
                labels: labels.unwrap_or_default(),
                test,
            };
            let n = self.named(image, span);
            self.out.images.push(n);
        }
    }

    /// An image's `dockerfile` and the attributes that go with it only, or with it never:
    /// `Some(None)` for an image without a Dockerfile, `None` when `dockerfile` is wrong.
    fn image_dockerfile(&mut self, r: &mut Reader<'_>) -> Option<Option<DockerfileSource>> {
        match r.attr("dockerfile") {
            Some(df) => {
                let src = self.dockerfile_source(df, r);
                for k in ["from"] {
                    if let Some(a) = r.attr(k) {
                        self.err_hint(
                            span_of(&a.key),
                            format!(
                                "`{k}` does not go with `dockerfile`: the Dockerfile's FROM says it"
                            ),
                            Some("remove it, or pick a stage with target = \"NAME\"".into()),
                        );
                    }
                }
                src.map(Some)
            }
            None => {
                for k in ["context", "target", "args"] {
                    if let Some(a) = r.attr(k) {
                        self.err_hint(
                            span_of(&a.key),
                            format!("`{k}` only goes with `dockerfile`"),
                            Some("add dockerfile = \"Dockerfile\", or remove it".into()),
                        );
                    }
                }
                Some(None)
            }
        }
    }

    /// An image's `copy` and `run` blocks, in order.
    fn build_steps(&mut self, r: &mut Reader<'_>) -> Vec<BuildStep> {
        let mut steps = Vec::new();
        for sb in r.blocks_of(&["copy", "run"]) {
            if !self.no_labels(sb) {
                continue;
            }
            let step = if sb.ident.as_str() == "run" {
                self.run_step(sb).map(BuildStep::Run)
            } else {
                self.copy_step(sb).map(BuildStep::Copy)
            };
            steps.extend(step);
        }
        steps
    }

    /// `dockerfile = "PATH"` with `context`, `target` and `args`, paths relative to this file.
    fn dockerfile_source(
        &mut self,
        df: &Attribute,
        r: &mut Reader<'_>,
    ) -> Option<DockerfileSource> {
        let path = self
            .nonempty(df)
            .and_then(|s| self.local_path(span_of(&df.value), &s, "Dockerfile"));
        let context = match r.attr("context") {
            Some(a) => self
                .nonempty(a)
                .and_then(|s| self.local_path(span_of(&a.value), &s, "build context")),
            None => path
                .as_ref()
                .map(|p| p.parent().map(PathBuf::from).unwrap_or_default()),
        };
        let target = r.attr("target").and_then(|a| self.nonempty(a));
        let args = r.attr("args").and_then(|a| self.string_map(a, false));
        Some(DockerfileSource {
            path: path?,
            context: context?,
            target,
            args: args.unwrap_or_default(),
        })
    }

    fn copy_step(&mut self, cb: &Block) -> Option<CopyStep> {
        let mut cr = self.reader(cb, "copy".into());
        let from = cr.attr("from").map(|a| self.reference(a, "image"));
        let src = self.required(&mut cr, "src").and_then(|a| {
            if from.is_some() {
                // A path inside the other image.
                return self
                    .abs_path(a, "copy source in an image")
                    .map(PathBuf::from);
            }
            let s = self.nonempty(a)?;
            self.local_path(span_of(&a.value), &s, "copy source")
        });
        let dest = self
            .required(&mut cr, "dest")
            .and_then(|a| self.abs_path(a, "copy destination"));
        let mode = cr.attr("mode").and_then(|a| {
            if let Expression::Number(_) = a.value {
                self.err_hint(
                    span_of(&a.value),
                    "`mode` must be a string of octal digits, found a number",
                    Some("quote it so it stays octal: mode = \"0755\"".into()),
                );
                return None;
            }
            self.parsed(a, values::mode)
        });
        let owner = cr
            .attr("owner")
            .and_then(|a| self.parsed(a, values::owner))
            .map(|(uid, gid)| Owner { uid, gid });
        self.finish(cr);
        let from = match from {
            Some(None) => return None,
            Some(Some(name)) => Some(name),
            None => None,
        };
        Some(CopyStep {
            src: src?,
            dest: dest?,
            mode,
            owner,
            from,
            exclude: Vec::new(),
            chown: None,
            extract: false,
        })
    }

    fn run_step(&mut self, b: &Block) -> Option<RunStep> {
        let d = self.file.diag(span_of(&b.ident), String::new(), None);
        let at = format!("{}:{}:{}", d.file.display(), d.line, d.column);
        let mut r = self.reader(b, "run".into());
        let shell = r.attr("shell");
        let command = r.attr("command");
        let cmd = match (shell, command) {
            (Some(_), Some(c)) => {
                self.err_hint(
                    span_of(&c.key),
                    "a run step takes one of `shell` and `command`, not both",
                    Some("`shell = \"…\"` runs through /bin/sh -c; `command = [\"/bin/x\", \"arg\"]` runs directly".into()),
                );
                None
            }
            (Some(a), None) => self.nonempty(a).map(RunCommand::Shell),
            (None, Some(a)) => match self.strings(a) {
                Some(v) if v.is_empty() => {
                    self.err(span_of(&a.value), "`command` must not be empty");
                    None
                }
                v => v.map(RunCommand::Exec),
            },
            (None, None) => {
                self.err_hint(
                    r.span.clone(),
                    "a run step needs `shell` or `command`",
                    Some("run { shell = \"apt-get update\" } or run { command = [\"/usr/sbin/useradd\", \"app\"] }".into()),
                );
                None
            }
        };
        let env = r.attr("env").and_then(|a| self.string_map(a, true));
        let workdir = r.attr("workdir").and_then(|a| self.abs_path(a, "workdir"));
        let user = r.attr("user").and_then(|a| self.nonempty(a));
        let network = match r.attr("network") {
            Some(a) => self.choice(
                a,
                &[("host", StepNetwork::Host), ("none", StepNetwork::None)],
            ),
            None => Some(StepNetwork::Host),
        };
        self.finish(r);
        Some(RunStep {
            at,
            env_is_complete: false,
            command: cmd?,
            env: env.unwrap_or_default(),
            workdir,
            user,
            network: network?,
        })
    }

    fn base(&mut self, s: &str, span: Range<usize>) -> Option<Base> {
        match crate::bases::parse_from(s, &self.dir) {
            Ok(b) => Some(b),
            Err((message, hint)) => {
                self.err_hint(span, message, hint);
                None
            }
        }
    }

    /// `base "REF" { source = "…" }`: wherever a `from` names REF, build on the source.
    fn base_block(&mut self, b: &Block) {
        let label = match b.labels.as_slice() {
            [l] => Some(l),
            [] => {
                self.err_hint(
                    span_of(&b.ident),
                    "base block needs the image reference it replaces",
                    Some("write base \"debian:12\" { source = \"oci-archive:debian.tar\" }".into()),
                );
                None
            }
            [_, extra, ..] => {
                self.err(
                    span_of(extra),
                    format!("base block takes one label, found {}", b.labels.len()),
                );
                None
            }
        };
        let reference = label.and_then(|l| match crate::reference::parse(l.as_str()) {
            Ok(r) => Some((r.normalized(), l.as_str().to_string(), span_of(l))),
            Err(e) => {
                self.err_hint(
                    span_of(l),
                    format!("invalid image reference \"{}\" in base block: {e}", l.as_str()),
                    Some("a base block names a registry reference, such as \"debian:12\" or \"registry.example.com/team/app:1\"".into()),
                );
                None
            }
        });
        let what = label.map_or_else(
            || "base".to_string(),
            |l| format!("base \"{}\"", l.as_str()),
        );
        let mut r = self.reader(b, what);
        let source = self
            .required(&mut r, "source")
            .and_then(|a| self.nonempty(a).map(|s| (s, span_of(&a.value))))
            .and_then(|(s, span)| self.base(&s, span));
        self.finish(r);
        // Declared even when its source is wrong, so that a duplicate is still found.
        if let Some((normalized, written, span)) = reference {
            let n = self.named((normalized, written, source), span);
            self.out.bases.push(n);
        }
    }

    /// `registry { url = "HOST[:PORT][/PREFIX]", insecure = false }`.
    fn registry(&mut self, b: &Block) {
        if !self.no_labels(b) {
            return;
        }
        let mut r = self.reader(b, "registry".into());
        let url = self.required(&mut r, "url").and_then(|a| {
            let u = self.string(a)?;
            match crate::reference::registry_url(&u) {
                Ok(u) => Some(u),
                Err(e) => {
                    self.err_hint(
                        span_of(&a.value),
                        format!("invalid registry url \"{}\": {e}", crate::redact_url(&u)),
                        Some("write url = \"HOST[:PORT]/PREFIX\", such as \"registry.example.com/team\" (plain HTTP: insecure = true)".into()),
                    );
                    None
                }
            }
        });
        let insecure = r.attr("insecure").map_or(Some(false), |a| self.boolean(a));
        self.finish(r);
        let registry = match (url, insecure) {
            (Some(url), Some(insecure)) => Some(Registry { url, insecure }),
            _ => None,
        };
        let n = self.named(registry, span_of(&b.ident));
        self.out.registries.push(n);
    }

    /// A `secret "NAME"` block: exactly one of `from_file`, `from_env`, `from_command`.
    fn secret(&mut self, b: &Block) {
        let label = self.label(b);
        if let Some((name, _)) = &label {
            self.out.declared.push(("secret", name.clone()));
        }
        let what = label
            .as_ref()
            .map_or_else(|| "secret".to_string(), |l| format!("secret \"{}\"", l.0));
        let mut r = self.reader(b, what.clone());
        let (file, env, cmd) = (
            r.attr("from_file"),
            r.attr("from_env"),
            r.attr("from_command"),
        );
        let mut given: Vec<&Attribute> = [file, env, cmd].into_iter().flatten().collect();
        given.sort_by_key(|a| span_of(&a.key).start);
        let source = match given.as_slice() {
            [] => {
                self.err_hint(
                    span_of(&b.ident),
                    format!("{what} has no source"),
                    Some("write one of from_file = \"PATH\", from_env = \"NAME\", from_command = [\"CMD\", \"ARG\"]".into()),
                );
                None
            }
            [_] => match (file, env, cmd) {
                (Some(a), _, _) => self
                    .nonempty(a)
                    .map(|p| SecretSource::File(self.dir.join(p))),
                (_, Some(a), _) => self
                    .parsed(a, |s| {
                        if values::is_env_name(s) {
                            Ok(s.to_string())
                        } else {
                            Err(format!("invalid environment variable name \"{s}\""))
                        }
                    })
                    .map(SecretSource::Env),
                (_, _, Some(a)) => self.command(a).map(SecretSource::Command),
                _ => None,
            },
            [_, second, ..] => {
                self.err(
                    span_of(&second.key),
                    format!("{what} takes only one of from_file, from_env, from_command"),
                );
                None
            }
        };
        self.finish(r);
        if let (Some((name, span)), Some(source)) = (label, source) {
            let n = self.named(Secret { name, source }, span);
            self.out.secrets.push(n);
        }
    }

    /// An `environment "NAME"` block (its `variables` were applied by `vars.rs`).
    fn environment(&mut self, b: &Block) {
        let label = self.label(b);
        if let Some((name, _)) = &label {
            self.out.declared.push(("environment", name.clone()));
        }
        let what = label.as_ref().map_or_else(
            || "environment".to_string(),
            |l| format!("environment \"{}\"", l.0),
        );
        let mut r = self.reader(b, what);
        let _ = r.attr("variables");
        let requires = r.blocks("require");
        self.at_most_one(&requires, "an environment takes at most one require block");
        let require = requires.first().and_then(|rb| {
            if !self.no_labels(rb) {
                return None;
            }
            let mut rr = self.reader(rb, "require".into());
            let from = self.required(&mut rr, "promoted_from").and_then(|a| {
                let name = self.nonempty(a)?;
                if label.as_ref().is_some_and(|(l, _)| *l == name) {
                    self.err(
                        span_of(&a.value),
                        "an environment cannot require promotion from itself",
                    );
                    return None;
                }
                self.out.refs.push(Ref {
                    kind: "environment",
                    name: name.clone(),
                    file: self.file_idx,
                    span: span_of(&a.value),
                });
                Some(name)
            });
            let soak = rr
                .attr("soak")
                .map_or(Some(Duration::ZERO), |a| self.duration(a));
            self.finish(rr);
            Some(Require {
                promoted_from: from?,
                soak: soak?,
            })
        });
        self.finish(r);
        if let Some((name, span)) = label {
            let n = self.named(Environment { name, require }, span);
            self.out.environments.push(n);
        }
    }

    /// `from_command`: a list is the command and its arguments; a string is run by `sh -c`.
    fn command(&mut self, a: &Attribute) -> Option<Vec<String>> {
        let argv = match &a.value {
            Expression::Array(_) => self.strings(a)?,
            _ => vec!["/bin/sh".into(), "-c".into(), self.nonempty(a)?],
        };
        if argv.first().is_none_or(String::is_empty) {
            self.err(span_of(&a.value), "`from_command` must name a command");
            return None;
        }
        Some(argv)
    }

    /// A service's `secret_file` blocks.
    fn secret_files(&mut self, r: &mut Reader<'_>) -> Vec<SecretFile> {
        let mut out: Vec<SecretFile> = Vec::new();
        for b in r.blocks("secret_file") {
            if !self.no_labels(b) {
                continue;
            }
            let mut fr = self.reader(b, "secret_file".into());
            let secret = self
                .required(&mut fr, "secret")
                .and_then(|a| self.reference(a, "secret"));
            let path = self.required(&mut fr, "path").and_then(|a| {
                let p = self.abs_path(a, "the `path` of a secret_file")?;
                let p = p.trim_end_matches('/').to_string();
                let system = ["/proc", "/sys", "/dev"]
                    .iter()
                    .any(|d| p == *d || p.starts_with(&format!("{d}/")));
                if p.is_empty() || system {
                    self.err(
                        span_of(&a.value),
                        format!("a secret_file cannot be mounted at \"{p}\""),
                    );
                    return None;
                }
                if out.iter().any(|f| f.path == p) {
                    self.err(
                        span_of(&a.value),
                        format!("two secret_file blocks mount at \"{p}\""),
                    );
                    return None;
                }
                Some(p)
            });
            let mode = fr
                .attr("mode")
                .map_or(Some(0o400), |a| self.parsed(a, values::mode));
            self.finish(fr);
            if let (Some(secret), Some(path), Some(mode)) = (secret, path, mode) {
                out.push(SecretFile { secret, path, mode });
            }
        }
        out
    }

    fn image_test(&mut self, b: &Block) -> Option<ImageTest> {
        if !self.no_labels(b) {
            return None;
        }
        let mut r = self.reader(b, "test".into());
        let mut http = Vec::new();
        let http_blocks = r.blocks("http");
        for &hb in &http_blocks {
            if !self.no_labels(hb) {
                continue;
            }
            let mut hr = self.reader(hb, "http test".into());
            let path = hr
                .attr("path")
                .map_or(Some("/".to_string()), |a| self.url_path(a));
            let expect_status = hr
                .attr("expect_status")
                .map_or(Some(200), |a| self.integer(a, 100, 599).map(|n| n as u16));
            let expect_body = hr.attr("expect_body").and_then(|a| self.string(a));
            self.finish(hr);
            if let (Some(path), Some(expect_status)) = (path, expect_status) {
                http.push(HttpTest {
                    path,
                    expect_status,
                    expect_body,
                });
            }
        }
        let command = r.attr("command").and_then(|a| self.strings(a));
        let port = r
            .attr("port")
            // 0: not given; the project resolves it (`project::cross_check`).
            .map_or(Some(0), |a| self.integer(a, 1, 65535).map(|n| n as u16));
        let timeout = r
            .attr("timeout")
            .map_or(Some(Duration::from_secs(30)), |a| self.duration(a));
        if http_blocks.is_empty() && r.body.get_attribute("command").is_none() {
            self.err_hint(
                r.span.clone(),
                "test block checks nothing",
                Some("add an http { … } block or a command".into()),
            );
        }
        self.finish(r);
        Some(ImageTest {
            http,
            command,
            port: port?,
            timeout: timeout?,
        })
    }

    fn url_path(&mut self, a: &Attribute) -> Option<String> {
        let s = self.string(a)?;
        if !s.starts_with('/') || s.contains(char::is_whitespace) {
            self.err_hint(
                span_of(&a.value),
                format!(
                    "`{}` must be a URL path starting with '/', found \"{s}\"",
                    a.key.as_str()
                ),
                Some(format!("write {} = \"/{}\"", a.key.as_str(), s.trim())),
            );
            return None;
        }
        Some(s)
    }

    /// A `service` block.
    fn service(&mut self, b: &Block) {
        let label = self.label(b);
        if let Some((name, span)) = &label {
            self.out.declared.push(("service", name.clone()));
            self.check_service_name(name, span);
        }
        let what = label
            .as_ref()
            .map_or_else(|| "service".to_string(), |l| format!("service \"{}\"", l.0));
        let mut r = self.reader(b, what);
        let image = self
            .required(&mut r, "image")
            .and_then(|a| self.reference(a, "image"));
        let instances = r
            .attr("instances")
            .map_or(Some(1), |a| self.integer(a, 1, 1000).map(|n| n as u32));
        let port = self
            .required(&mut r, "port")
            .and_then(|a| self.integer(a, 1, 65535).map(|n| n as u16));
        let (env, secret_env) = self.service_env(&mut r);
        let secret_files = self.secret_files(&mut r);
        let healths = r.blocks("health");
        self.at_most_one(&healths, "a service takes at most one health block");
        let health = match healths.first() {
            Some(hb) => self.health(hb),
            None => Some(default_health()),
        };
        let (volumes, exclusive_at) = self.volumes(&mut r);
        let max_age = r.attr("max_age").and_then(|a| {
            let d = self.duration(a)?;
            if d < Duration::from_secs(1) {
                self.err(span_of(&a.value), "`max_age` must be at least 1s");
                return None;
            }
            Some(d)
        });
        let (network, protocol, allow_from, egress) = self.service_network(&mut r);
        let memory = r.attr("memory").and_then(|a| self.memory(a));
        let cpus = r.attr("cpus").and_then(|a| self.cpus(a));
        let user_namespace = r
            .attr("user_namespace")
            .and_then(|a| self.boolean(a))
            .unwrap_or(false);
        let tmpfs = r
            .attr("tmpfs")
            .and_then(|a| self.tmpfs(a, &volumes))
            .unwrap_or_default();
        let stop_signal = r.attr("stop_signal").and_then(|a| self.stop_signal(a));
        let stop_timeout = r.attr("stop_timeout").and_then(|a| self.at_most_an_hour(a));
        let drain_timeout = r
            .attr("drain_timeout")
            .and_then(|a| self.at_most_an_hour(a));
        let rollout = self.service_rollout(&mut r, instances, exclusive_at.as_ref());
        let guard = self.service_guard(&mut r);
        self.finish(r);
        if let (
            Some((name, span)),
            Some(image),
            Some(instances),
            Some(port),
            Some(health),
            Some(rollout),
            Some(network),
            Some(egress),
        ) = (
            label, image, instances, port, health, rollout, network, egress,
        ) {
            let s = Service {
                name,
                image,
                instances,
                port,
                env: env.unwrap_or_default(),
                health,
                volumes,
                max_age,
                network,
                memory,
                cpus,
                user_namespace,
                tmpfs,
                stop_signal,
                stop_timeout: stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
                drain_timeout: drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
                protocol,
                allow_from,
                egress,
                rollout,
                guard,
                secret_env,
                secret_files,
            };
            let n = self.named(s, span);
            self.out.services.push(n);
        }
    }

    /// `allow_from = [service.web, …]`: the services that may connect, each once (itself
    /// included if listed); `[]` lets none connect.
    fn allow_from(&mut self, a: &Attribute) -> Option<Vec<String>> {
        let Expression::Array(arr) = &a.value else {
            let hint = match &a.value {
                Expression::Traversal(_) => "write a list: allow_from = [service.NAME]",
                _ => "write allow_from = [service.NAME, …], or [] to let no service connect",
            };
            self.err_hint(
                span_of(&a.value),
                format!(
                    "`allow_from` must be a list of service references, found {}",
                    kind(&a.value)
                ),
                Some(hint.into()),
            );
            return None;
        };
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for e in arr.iter() {
            let Some(name) = self.reference_in("allow_from", e, "service", true) else {
                ok = false;
                continue;
            };
            if out.contains(&name) {
                self.err(
                    span_of(e),
                    format!("service `{name}` is listed twice in `allow_from`"),
                );
                ok = false;
                continue;
            }
            out.push(name);
        }
        ok.then_some(out)
    }

    /// `egress = "none" | "all" | ["10.0.0.0/8", "db.example.com:5432", …]`; `[]` is "none".
    fn egress(&mut self, a: &Attribute) -> Option<Egress> {
        let expected = "expected \"none\", \"all\" or a list of destinations";
        let Expression::Array(arr) = &a.value else {
            let Ok(s) = self.str_of(&a.value) else {
                self.err_hint(
                    span_of(&a.value),
                    format!(
                        "`egress` must be a string or a list of strings, found {}",
                        kind(&a.value)
                    ),
                    Some("write egress = \"none\", \"all\" or [\"HOST[:PORT]\", …]".into()),
                );
                return None;
            };
            match s.as_str() {
                "none" => return Some(Egress::None),
                "all" => return Some(Egress::All),
                _ => {}
            }
            let hint = did_you_mean(&s, ["none", "all"])
                .map(|h| h.replace('`', "\""))
                .or_else(|| {
                    values::destination(&s)
                        .is_ok()
                        .then(|| format!("write a list: egress = [\"{s}\"]"))
                });
            self.err_hint(
                span_of(&a.value),
                format!("invalid `egress` \"{s}\": {expected}"),
                hint,
            );
            return None;
        };
        let mut out: Vec<Destination> = Vec::new();
        let mut ok = true;
        for e in arr.iter() {
            let Ok(s) = self.str_of(e) else {
                self.err(
                    span_of(e),
                    format!(
                        "`egress` must be a list of strings, found {} in it",
                        kind(e)
                    ),
                );
                ok = false;
                continue;
            };
            match values::destination(&s) {
                Ok(d) if out.contains(&d) => {
                    self.err(
                        span_of(e),
                        format!("egress destination \"{s}\" is listed twice"),
                    );
                    ok = false;
                }
                Ok(d) => out.push(d),
                Err(msg) => {
                    self.err(span_of(e), msg);
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        Some(if out.is_empty() {
            Egress::None
        } else {
            Egress::Only(out)
        })
    }

    /// A service's `network`, `protocol`, `allow_from` and `egress`; the last two only on the
    /// project network (`network = "private"`).
    fn service_network(
        &mut self,
        r: &mut Reader<'_>,
    ) -> (
        Option<Network>,
        Option<Protocol>,
        Option<Vec<String>>,
        Option<Egress>,
    ) {
        let network = r.attr("network").map_or(Some(Network::Private), |a| {
            self.choice(a, &[("private", Network::Private), ("host", Network::Host)])
        });
        let protocol = r
            .attr("protocol")
            .and_then(|a| self.choice(a, &[("http", Protocol::Http), ("tcp", Protocol::Tcp)]));
        let allow_from = r.attr("allow_from").map(|a| (a, self.allow_from(a)));
        let egress = r.attr("egress").map(|a| (a, self.egress(a)));
        if network == Some(Network::Host) {
            let on_host = [
                allow_from.as_ref().map(|(a, _)| *a),
                egress
                    .as_ref()
                    .filter(|(_, e)| e.as_ref().is_some_and(|e| *e != Egress::All))
                    .map(|(a, _)| *a),
            ];
            for a in on_host.into_iter().flatten() {
                self.err_hint(
                    span_of(&a.key),
                    format!(
                        "`{}` does not apply to a service with network = \"host\": its instances are not on the project network",
                        a.key.as_str()
                    ),
                    Some("remove it, or use network = \"private\"".into()),
                );
            }
        }
        let allow_from = allow_from.and_then(|(_, v)| v);
        let egress = match egress {
            Some((_, e)) => e,
            None => Some(Egress::All),
        };
        (network, protocol, allow_from, egress)
    }

    /// A duration of at most an hour (`stop_timeout`, `drain_timeout`).
    fn at_most_an_hour(&mut self, a: &Attribute) -> Option<Duration> {
        let d = self.duration(a)?;
        if d > Duration::from_secs(3600) {
            let msg = format!("`{}` must be at most 1h", a.key.as_str());
            self.err(span_of(&a.value), msg);
            return None;
        }
        Some(d)
    }

    /// A service's `env`, which must not set PORT (recast sets it).
    /// `env`: plain values, and those that are `secret.NAME` references.
    fn service_env(
        &mut self,
        r: &mut Reader<'_>,
    ) -> (Option<BTreeMap<String, String>>, BTreeMap<String, String>) {
        let mut secrets = BTreeMap::new();
        let env = r.attr("env").and_then(|a| {
            let Expression::Object(obj) = &a.value else {
                self.type_err(a, "an object like { KEY = \"value\" }");
                return None;
            };
            self.object_strings(a.key.as_str(), obj, true, Some(&mut secrets))
        });
        if let (Some(env), Some(a)) = (&env, r.body.get_attribute("env"))
            && (env.contains_key("PORT") || secrets.contains_key("PORT"))
        {
            self.err_hint(
                span_of(&a.value),
                "`env` must not set PORT",
                Some("recast sets $PORT from the service's `port` (or a free port with network = \"host\")".into()),
            );
        }
        (env, secrets)
    }

    /// A service's `rollout` block (at most one; rolling by default), checked against an
    /// exclusive volume (`exclusive_at`: where, and the volume's name).
    fn service_rollout(
        &mut self,
        r: &mut Reader<'_>,
        instances: Option<u32>,
        exclusive_at: Option<&(Range<usize>, String)>,
    ) -> Option<Rollout> {
        let rollouts = r.blocks("rollout");
        self.at_most_one(&rollouts, "a service takes at most one rollout block");
        let mut rollout = match rollouts.first() {
            Some(rb) => self.rollout(rb, instances.unwrap_or(1)),
            None => Some(Rollout {
                strategy: default_rolling(),
                analysis: None,
                auto_rollback: true,
                progress_deadline: DEFAULT_PROGRESS_DEADLINE,
            }),
        };
        if let Some((at, volume)) = exclusive_at {
            self.exclusive_service(
                r,
                at,
                volume,
                instances,
                rollouts.first().copied(),
                &mut rollout,
            );
        }
        rollout
    }

    /// An error at the second of `blocks`, if there is one: `msg` says at most one is taken.
    fn at_most_one(&mut self, blocks: &[&Block], msg: &str) {
        if let Some(extra) = blocks.get(1) {
            self.err(span_of(&extra.ident), msg);
        }
    }

    /// A service name must leave room in instance ids and hostnames (63 characters).
    fn check_service_name(&mut self, name: &str, span: &Range<usize>) {
        if name.len() > MAX_SERVICE_NAME {
            self.err_hint(
            span.clone(),
            format!(
                "service name \"{name}\" is {} characters long, at most {MAX_SERVICE_NAME} are allowed",
                name.len()
            ),
            Some(format!(
                "instance ids and hostnames are NAME-rRELEASE-XXXXXXXX and must fit in 63 characters; shorten the name to {MAX_SERVICE_NAME} characters or fewer"
            )),
        );
        }
    }

    /// The `volume` blocks of a service, and where the first `exclusive = true` is (with its
    /// volume's name), for the checks that span the service.
    fn volumes(&mut self, r: &mut Reader<'_>) -> (Vec<Volume>, Option<(Range<usize>, String)>) {
        let mut volumes: Vec<Volume> = Vec::new();
        // The first `exclusive = true`, for the checks that span the service.
        let mut exclusive_at: Option<(Range<usize>, String)> = None;
        for vb in r.blocks("volume") {
            let Some((name, span)) = self.label(vb) else {
                continue;
            };
            let mut vr = self.reader(vb, format!("volume \"{name}\""));
            let mount = self.required(&mut vr, "mount").and_then(|a| {
                let m = self.abs_path(a, "volume mount")?;
                if m.trim_end_matches('/').is_empty() || m == "/tmp" || m.starts_with("/tmp/") {
                    self.err(
                        span_of(&a.value),
                        format!("volume mount \"{m}\" is not allowed: / is the image and /tmp is private"),
                    );
                    return None;
                }
                if let Some(v) = volumes.iter().find(|v| v.mount == m) {
                    self.err(span_of(&a.value), format!("volume mount \"{m}\" is already used by volume \"{}\"", v.name));
                    return None;
                }
                Some(m)
            });
            let exclusive = vr.attr("exclusive").and_then(|a| {
                let e = self.boolean(a)?;
                if e {
                    exclusive_at.get_or_insert((span_of(&a.value), name.clone()));
                }
                Some(e)
            });
            self.finish(vr);
            if volumes.iter().any(|v| v.name == name) {
                self.err(span, format!("duplicate volume \"{name}\""));
            } else if let Some(mount) = mount {
                volumes.push(Volume {
                    name,
                    mount,
                    exclusive: exclusive.unwrap_or(false),
                });
            }
        }
        (volumes, exclusive_at)
    }

    /// `memory`: a size string (a bare number is refused: its unit would be a guess), at
    /// least 4MiB.
    fn memory(&mut self, a: &Attribute) -> Option<u64> {
        if let Expression::Number(_) = a.value {
            self.err_hint(
                span_of(&a.value),
                "`memory` must be a size string, found a number",
                Some("write it with a unit: memory = \"256MiB\"".into()),
            );
            return None;
        }
        let m = self.parsed(a, values::size)?;
        if m < 4 << 20 {
            self.err(span_of(&a.value), "`memory` must be at least 4MiB");
            return None;
        }
        Some(m)
    }

    /// `cpus`: more than 0, at most 1024.
    fn cpus(&mut self, a: &Attribute) -> Option<f64> {
        let n = self.number(a)?;
        if !(n > 0.0 && n <= 1024.0) {
            self.err(
                span_of(&a.value),
                format!("`cpus` must be more than 0 and at most 1024, found {n}"),
            );
            return None;
        }
        Some(n)
    }

    /// `stop_signal`: a signal by name or number, as its canonical name.
    fn stop_signal(&mut self, a: &Attribute) -> Option<String> {
        let text = match &a.value {
            Expression::Number(n) => n.value().to_string(),
            _ => self.string(a)?,
        };
        match values::signal(&text) {
            Ok((name, _)) => Some(name),
            Err(e) => {
                self.err(span_of(&a.value), e);
                None
            }
        }
    }

    /// `tmpfs`: absolute paths without `..`, each once, none that recast mounts itself or that
    /// is a volume mount.
    fn tmpfs(&mut self, a: &Attribute, volumes: &[Volume]) -> Option<Vec<String>> {
        let list = self.strings(a)?;
        let mut out: Vec<String> = Vec::new();
        for p in list {
            let p = p.trim_end_matches('/').to_string();
            let problem = if !p.starts_with('/') {
                Some(format!("tmpfs path \"{p}\" must be absolute"))
            } else if p.split('/').any(|c| c == "..") {
                Some(format!("tmpfs path \"{p}\" must not contain \"..\""))
            } else if p.is_empty() || p == "/tmp" || p == "/proc" || p == "/dev" || p == "/sys" {
                Some(format!(
                    "tmpfs path \"{}\" is not allowed: recast mounts / and {} itself",
                    if p.is_empty() { "/" } else { &p },
                    "/tmp, /proc, /dev and /sys"
                ))
            } else if out.contains(&p) {
                Some(format!("tmpfs path \"{p}\" is listed twice"))
            } else if volumes.iter().any(|v| v.mount.trim_end_matches('/') == p) {
                Some(format!("tmpfs path \"{p}\" is already a volume mount"))
            } else {
                None
            };
            match problem {
                Some(m) => self.err(span_of(&a.value), m),
                None => out.push(p),
            }
        }
        Some(out)
    }

    /// A service's `guard` block (at most one).
    fn service_guard(&mut self, r: &mut Reader<'_>) -> Option<Guard> {
        let guards = r.blocks("guard");
        self.at_most_one(&guards, "a service takes at most one guard block");
        guards.first().and_then(|gb| {
            if !self.no_labels(gb) {
                return None;
            }
            let mut gr = self.reader(gb, "guard".into());
            let g = self.guard(&mut gr);
            self.finish(gr);
            Some(g)
        })
    }

    /// One of a fixed set of strings.
    fn choice<T: Copy>(&mut self, a: &Attribute, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(a)?;
        if let Some((_, v)) = options.iter().find(|(o, _)| *o == s) {
            return Some(*v);
        }
        let names: Vec<String> = options.iter().map(|(o, _)| format!("\"{o}\"")).collect();
        self.err_hint(
            span_of(&a.value),
            format!(
                "invalid `{}` \"{s}\": expected {}",
                a.key.as_str(),
                names.join(" or ")
            ),
            did_you_mean(&s, options.iter().map(|(o, _)| *o)).map(|h| h.replace('`', "\"")),
        );
        None
    }

    fn health(&mut self, b: &Block) -> Option<Health> {
        if !self.no_labels(b) {
            return None;
        }
        let mut r = self.reader(b, "health".into());
        let d = default_health();
        let mut checks = Vec::new();
        let mut check = None;
        if let Some(a) = r.attr("http") {
            checks.push(span_of(&a.key));
            if let Some(path) = self.url_path(a) {
                check = Some(HealthCheck::Http { path });
            }
        }
        if let Some(a) = r.attr("tcp") {
            checks.push(span_of(&a.key));
            if self.boolean(a) == Some(false) {
                self.err_hint(
                    span_of(&a.value),
                    "`tcp = false` turns nothing off",
                    Some("remove it; without http or exec the check is tcp".into()),
                );
            }
            check = Some(HealthCheck::Tcp);
        }
        if let Some(a) = r.attr("exec") {
            checks.push(span_of(&a.key));
            if let Some(command) = self.strings(a) {
                check = Some(HealthCheck::Exec { command });
            }
        }
        if checks.len() > 1 {
            self.err_hint(
                checks[1].clone(),
                "a health block takes one of `http`, `tcp` or `exec`",
                Some("keep one check per service".into()),
            );
        }
        let interval = r
            .attr("interval")
            .map_or(Some(d.interval), |a| self.positive_duration(a));
        let timeout = r
            .attr("timeout")
            .map_or(Some(d.timeout), |a| self.positive_duration(a));
        let healthy_threshold = r
            .attr("healthy_threshold")
            .map_or(Some(d.healthy_threshold), |a| {
                self.integer(a, 1, 100).map(|n| n as u32)
            });
        let unhealthy_threshold = r
            .attr("unhealthy_threshold")
            .map_or(Some(d.unhealthy_threshold), |a| {
                self.integer(a, 1, 100).map(|n| n as u32)
            });
        let start_period = r
            .attr("start_period")
            .map_or(Some(d.start_period), |a| self.duration(a));
        let check = check.unwrap_or(HealthCheck::Tcp);
        self.finish(r);
        Some(Health {
            check,
            interval: interval?,
            timeout: timeout?,
            healthy_threshold: healthy_threshold?,
            unhealthy_threshold: unhealthy_threshold?,
            start_period: start_period?,
        })
    }

    fn positive_duration(&mut self, a: &Attribute) -> Option<Duration> {
        let d = self.duration(a)?;
        if d.is_zero() {
            self.err(
                span_of(&a.value),
                format!("`{}` must be more than 0s", a.key.as_str()),
            );
            return None;
        }
        Some(d)
    }

    fn count(&mut self, a: &Attribute) -> Option<Count> {
        match &a.value {
            Expression::Number(_) | Expression::UnaryOp(_) => {
                self.integer(a, 0, 1000).map(|n| Count::Absolute(n as u32))
            }
            _ => {
                let s = self.string(a)?;
                match s.strip_suffix('%').and_then(|p| p.parse::<u32>().ok()) {
                    Some(p) if p <= 100 => Some(Count::Percent(p)),
                    _ => {
                        self.err_hint(
                            span_of(&a.value),
                            format!(
                                "invalid `{}` \"{s}\": expected a number or a percentage",
                                a.key.as_str()
                            ),
                            Some(format!(
                                "write {} = 1 or {} = \"25%\"",
                                a.key.as_str(),
                                a.key.as_str()
                            )),
                        );
                        None
                    }
                }
            }
        }
    }

    /// A service with an exclusive volume: one instance, and every rollout a `recreate` (the
    /// default for it; another strategy written out is an error).
    fn exclusive_service(
        &mut self,
        r: &Reader<'_>,
        at: &Range<usize>,
        volume: &str,
        instances: Option<u32>,
        rollout_block: Option<&Block>,
        rollout: &mut Option<Rollout>,
    ) {
        if let Some(n) = instances.filter(|n| *n > 1) {
            let span = r
                .body
                .get_attribute("instances")
                .map_or_else(|| at.clone(), |a| span_of(&a.value));
            self.err_hint(
                span,
                format!("`instances = {n}` with exclusive volume \"{volume}\": an exclusive volume allows one instance at a time"),
                Some("set instances = 1, or drop `exclusive = true` if the software can share the volume".into()),
            );
        }
        let written = rollout_block.and_then(|b| b.body.get_attribute("strategy"));
        if let Some(ro) = rollout.as_mut() {
            if ro.strategy == Strategy::Recreate {
                return;
            }
            match written {
                Some(a) => self.err_hint(
                    span_of(&a.value),
                    format!(
                        "strategy \"{}\" would run two instances on exclusive volume \"{volume}\"",
                        ro.strategy.name()
                    ),
                    Some("an exclusive volume rolls out by strategy \"recreate\" (the default for it)".into()),
                ),
                None => {
                    if let Some(a) = rollout_block.and_then(|b| {
                        ["max_surge", "max_unavailable", "min_healthy_time"]
                            .into_iter()
                            .find_map(|k| b.body.get_attribute(k))
                    }) {
                        self.err_hint(
                            span_of(&a.key),
                            format!("`{}` does not apply to strategy \"recreate\"", a.key.as_str()),
                            Some(format!("a service with exclusive volume \"{volume}\" rolls out by strategy \"recreate\"")),
                        );
                    }
                    ro.strategy = Strategy::Recreate;
                }
            }
        }
    }

    /// A `rollout` block for a service of `instances` instances.
    fn rollout(&mut self, b: &Block, instances: u32) -> Option<Rollout> {
        if !self.no_labels(b) {
            return None;
        }
        let mut r = self.reader(b, "rollout".into());
        let strategy_name = r.attr("strategy").map_or(Some("rolling"), |a| {
            self.choice(
                a,
                &[
                    ("rolling", "rolling"),
                    ("blue_green", "blue_green"),
                    ("canary", "canary"),
                    ("recreate", "recreate"),
                ],
            )
        });
        // Read every knob of every strategy, then complain about those that do not belong.
        let max_surge = r.attr("max_surge").map(|a| (a, "rolling"));
        let max_unavailable = r.attr("max_unavailable").map(|a| (a, "rolling"));
        let min_healthy_time = r.attr("min_healthy_time").map(|a| (a, "rolling"));
        let preview_listen = r.attr("preview_listen").map(|a| (a, "blue_green"));
        let auto_promote_after = r.attr("auto_promote_after").map(|a| (a, "blue_green"));
        let scale_down_delay = r.attr("scale_down_delay").map(|a| (a, "blue_green"));
        let sticky = r.attr("sticky").map(|a| (a, "canary"));
        let steps = r.blocks("step");
        let analysis_blocks = r.blocks("analysis");
        let auto_rollback = r
            .attr("auto_rollback")
            .map_or(Some(true), |a| self.boolean(a));
        let progress_deadline = r
            .attr("progress_deadline")
            .map_or(Some(DEFAULT_PROGRESS_DEADLINE), |a| {
                self.positive_duration(a)
            });
        self.at_most_one(
            &analysis_blocks,
            "a rollout takes at most one analysis block",
        );
        let analysis = analysis_blocks.first().and_then(|ab| self.analysis(ab));
        let strategy_name = strategy_name?;
        self.misplaced_knobs(
            strategy_name,
            &[
                max_surge,
                max_unavailable,
                min_healthy_time,
                preview_listen,
                auto_promote_after,
                scale_down_delay,
                sticky,
            ],
            &steps,
        );
        let strategy = match strategy_name {
            "recreate" => Strategy::Recreate,
            "rolling" => self.rolling(
                max_surge.map(|(a, _)| a),
                max_unavailable.map(|(a, _)| a),
                min_healthy_time.map(|(a, _)| a),
                instances,
                &r.span,
            )?,
            "blue_green" => {
                let preview = preview_listen.and_then(|(a, _)| {
                    let addr = self.parsed(a, values::listen)?;
                    let n = self.named(addr, span_of(&a.value));
                    self.out.listens.push(n);
                    Some(addr)
                });
                Strategy::BlueGreen {
                    preview_listen: preview,
                    auto_promote_after: auto_promote_after.and_then(|(a, _)| self.duration(a)),
                    scale_down_delay: scale_down_delay
                        .map_or(Some(Duration::from_secs(30)), |(a, _)| self.duration(a))?,
                }
            }
            _ => {
                let out = self.canary_steps(&steps, &r.span);
                Strategy::Canary {
                    steps: out,
                    sticky: sticky.and_then(|(a, _)| self.boolean(a)).unwrap_or(false),
                }
            }
        };
        self.finish(r);
        Some(Rollout {
            strategy,
            analysis,
            auto_rollback: auto_rollback?,
            progress_deadline: progress_deadline?,
        })
    }

    /// An error at every knob (an attribute, with the strategy it belongs to) and `step` block
    /// that does not belong to strategy `strategy_name`.
    fn misplaced_knobs(
        &mut self,
        strategy_name: &str,
        knobs: &[Option<(&Attribute, &'static str)>],
        steps: &[&Block],
    ) {
        for (a, owner) in knobs.iter().flatten().copied() {
            if owner != strategy_name {
                self.err_hint(
                    span_of(&a.key),
                    format!(
                        "`{}` does not apply to strategy \"{strategy_name}\"",
                        a.key.as_str()
                    ),
                    Some(format!("it is a knob of strategy \"{owner}\"")),
                );
            }
        }
        if strategy_name != "canary"
            && let Some(s) = steps.first()
        {
            self.err_hint(
                span_of(&s.ident),
                format!("`step` does not apply to strategy \"{strategy_name}\""),
                Some("steps belong to strategy \"canary\"".into()),
            );
        }
    }

    /// Strategy "rolling" from its knobs: `max_surge` and `max_unavailable` must not both be 0
    /// for `instances`.
    fn rolling(
        &mut self,
        max_surge: Option<&Attribute>,
        max_unavailable: Option<&Attribute>,
        min_healthy_time: Option<&Attribute>,
        instances: u32,
        span: &Range<usize>,
    ) -> Option<Strategy> {
        let surge = max_surge.map_or(Some(Count::Absolute(1)), |a| self.count(a));
        let unavail = max_unavailable.map_or(Some(Count::Absolute(0)), |a| self.count(a));
        let mht = min_healthy_time.map_or(Some(Duration::ZERO), |a| self.duration(a));
        let (surge, unavail) = (surge?, unavail?);
        if surge.resolve(instances, true) == 0 && unavail.resolve(instances, false) == 0 {
            let at = max_surge
                .or(max_unavailable)
                .map_or(span.clone(), |a| span_of(&a.value));
            self.err_hint(
                at,
                "`max_surge` and `max_unavailable` are both 0, so the rollout could never make progress",
                Some("allow at least one: max_surge = 1".into()),
            );
            return None;
        }
        Some(Strategy::Rolling {
            max_surge: surge,
            max_unavailable: unavail,
            min_healthy_time: mht?,
        })
    }

    /// The `step` blocks of strategy "canary" (at least one; weights increase strictly).
    fn canary_steps(&mut self, steps: &[&Block], span: &Range<usize>) -> Vec<Step> {
        let mut out: Vec<Step> = Vec::new();
        for sb in steps {
            if !self.no_labels(sb) {
                continue;
            }
            let mut sr = self.reader(sb, "step".into());
            let weight = self.required(&mut sr, "weight").and_then(|a| {
                let w = self.integer(a, 1, 100)? as u8;
                if let Some(prev) = out.last()
                    && w <= prev.weight
                {
                    self.err_hint(
                        span_of(&a.value),
                        format!(
                            "canary weights must increase strictly, but {w} follows {}",
                            prev.weight
                        ),
                        Some(
                            "each step sends a larger share of requests to the new release".into(),
                        ),
                    );
                    return None;
                }
                Some(w)
            });
            let pause = sr.attr("pause").and_then(|a| self.duration(a));
            self.finish(sr);
            if let Some(weight) = weight {
                out.push(Step { weight, pause });
            }
        }
        if steps.is_empty() {
            self.err_hint(
                span.clone(),
                "strategy \"canary\" needs at least one step",
                Some("add step { weight = 10  pause = \"30s\" }".into()),
            );
        }
        out
    }

    fn analysis(&mut self, b: &Block) -> Option<Analysis> {
        if !self.no_labels(b) {
            return None;
        }
        let mut r = self.reader(b, "analysis".into());
        let interval = r
            .attr("interval")
            .map_or(Some(Duration::from_secs(5)), |a| self.positive_duration(a));
        let min_requests = r
            .attr("min_requests")
            .map_or(Some(50), |a| self.integer(a, 1, u64::from(u32::MAX)));
        let max_error_rate = r
            .attr("max_error_rate")
            .and_then(|a| self.fraction(a, 0.0, 1.0));
        let max_p99_latency = r
            .attr("max_p99_latency")
            .and_then(|a| self.positive_duration(a));
        let failure_limit = r
            .attr("failure_limit")
            .map_or(Some(0), |a| self.u32_at_least(a, 0));
        let inconclusive_limit = r
            .attr("inconclusive_limit")
            .map_or(Some(3), |a| self.u32_at_least(a, 0));
        if r.body.get_attribute("max_error_rate").is_none()
            && r.body.get_attribute("max_p99_latency").is_none()
        {
            self.err_hint(
                r.span.clone(),
                "analysis judges nothing: set `max_error_rate` or `max_p99_latency`",
                Some("for example max_error_rate = 0.01".into()),
            );
        }
        self.finish(r);
        Some(Analysis {
            interval: interval?,
            min_requests: min_requests?,
            max_error_rate,
            max_p99_latency,
            failure_limit: failure_limit?,
            inconclusive_limit: inconclusive_limit?,
        })
    }

    fn guard(&mut self, r: &mut Reader<'_>) -> Guard {
        let d = Guard::default();
        let scan_interval = r
            .attr("scan_interval")
            .and_then(|a| self.positive_duration(a))
            .unwrap_or(d.scan_interval);
        let on_drift = r
            .attr("on_drift")
            .and_then(|a| {
                self.choice(
                    a,
                    &[("replace", OnDrift::Replace), ("report", OnDrift::Report)],
                )
            })
            .unwrap_or(d.on_drift);
        Guard {
            scan_interval,
            on_drift,
        }
    }

    fn route(&mut self, b: &Block) {
        let label = self.label(b);
        let what = label
            .as_ref()
            .map_or_else(|| "route".to_string(), |l| format!("route \"{}\"", l.0));
        let mut r = self.reader(b, what);
        let listen = self.required(&mut r, "listen").and_then(|a| {
            let addr = self.parsed(a, values::listen)?;
            let n = self.named(addr, span_of(&a.value));
            self.out.listens.push(n);
            Some(addr)
        });
        let service = self
            .required(&mut r, "service")
            .and_then(|a| self.reference(a, "service"));
        let protocol = r.attr("protocol").map_or(Some(Protocol::Http), |a| {
            self.choice(a, &[("http", Protocol::Http), ("tcp", Protocol::Tcp)])
        });
        let timeout = match r.attr("timeout") {
            Some(a) if protocol == Some(Protocol::Tcp) => {
                self.err_hint(
                    span_of(&a.key),
                    "`timeout` is for HTTP routes: it bounds the wait for response headers",
                    Some("remove it; a tcp route passes connections through for as long as they last".into()),
                );
                None
            }
            Some(a) => self.positive_duration(a),
            None => Some(Duration::from_secs(30)),
        };
        self.finish(r);
        if let (Some((name, span)), Some(listen), Some(service), Some(timeout), Some(protocol)) =
            (label, listen, service, timeout, protocol)
        {
            let n = self.named(
                Route {
                    name,
                    listen,
                    service,
                    timeout,
                    protocol,
                },
                span,
            );
            self.out.routes.push(n);
        }
    }

    fn webhook(&mut self, b: &Block) {
        let label = self.label(b);
        let what = label
            .as_ref()
            .map_or_else(|| "webhook".to_string(), |l| format!("webhook \"{}\"", l.0));
        let mut r = self.reader(b, what);
        let url = self.required(&mut r, "url").and_then(|a| {
            let u = self.string(a)?;
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"));
            if rest.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
                self.err(
                    span_of(&a.value),
                    format!(
                        "invalid webhook url \"{}\": expected http:// or https:// and a host",
                        crate::redact_url(&u)
                    ),
                );
                return None;
            }
            Some(u)
        });
        let events = self.required(&mut r, "events").and_then(|a| {
            let list = self.strings(a)?;
            let mut ok = true;
            if let Expression::Array(arr) = &a.value {
                for (e, s) in arr.iter().zip(&list) {
                    if !WEBHOOK_EVENTS.contains(&s.as_str()) {
                        let hint = did_you_mean(s, WEBHOOK_EVENTS.iter().copied())
                            .unwrap_or_else(|| format!("events are {}", WEBHOOK_EVENTS.join(", ")));
                        self.err_hint(
                            span_of(e),
                            format!("unknown webhook event \"{s}\""),
                            Some(hint),
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(list)
        });
        let timeout = r
            .attr("timeout")
            .map_or(Some(Duration::from_secs(5)), |a| self.positive_duration(a));
        self.finish(r);
        if let (Some((name, span)), Some(url), Some(events), Some(timeout)) =
            (label, url, events, timeout)
        {
            let n = self.named(
                Webhook {
                    name,
                    url,
                    events,
                    timeout,
                },
                span,
            );
            self.out.webhooks.push(n);
        }
    }
}

/// `secret.NAME` (or anything rooted at `secret`).
fn is_secret_ref(e: &Expression) -> bool {
    match e {
        Expression::Traversal(t) => {
            matches!(&t.expr, Expression::Variable(v) if v.as_str() == "secret")
        }
        _ => false,
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

pub(crate) const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

fn default_health() -> Health {
    Health {
        check: HealthCheck::Tcp,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        healthy_threshold: 1,
        unhealthy_threshold: 3,
        start_period: DEFAULT_START_PERIOD,
    }
}

/// How long a new instance may take to become healthy before it counts as failed (bounded by
/// the rollout's `progress_deadline`): generous, as databases initialise for seconds.
pub(crate) const DEFAULT_START_PERIOD: Duration = Duration::from_secs(60);

fn default_rolling() -> Strategy {
    Strategy::Rolling {
        max_surge: Count::Absolute(1),
        max_unavailable: Count::Absolute(0),
        min_healthy_time: Duration::ZERO,
    }
}

impl<'b> Reader<'b> {
    /// The attribute `name`, if present (the first one, if duplicated).
    fn attr(&mut self, name: &'static str) -> Option<&'b Attribute> {
        self.known_attrs.push(name);
        let mut found = None;
        for (i, s) in self.body.iter().enumerate() {
            if let Structure::Attribute(a) = s
                && a.key.as_str() == name
            {
                self.used[i] = true;
                found = found.or(Some(a));
            }
        }
        found
    }

    /// Every block named one of `names`, in the order they appear.
    fn blocks_of(&mut self, names: &[&'static str]) -> Vec<&'b Block> {
        self.known_blocks.extend(names);
        let mut out = Vec::new();
        for (i, s) in self.body.iter().enumerate() {
            if let Structure::Block(b) = s
                && names.contains(&b.ident.as_str())
            {
                self.used[i] = true;
                out.push(b);
            }
        }
        out
    }

    /// Every block `name`, in order.
    fn blocks(&mut self, name: &'static str) -> Vec<&'b Block> {
        self.known_blocks.push(name);
        let mut out = Vec::new();
        for (i, s) in self.body.iter().enumerate() {
            if let Structure::Block(b) = s
                && b.ident.as_str() == name
            {
                self.used[i] = true;
                out.push(b);
            }
        }
        out
    }
}
