//! Variables and environments: `variable` blocks, the values given for them, and their
//! substitution into the spec before it is decoded.
//!
//! A variable's value comes from, lowest precedence first: its `default`; the selected
//! `environment` block's `variables`; `RECAST_VAR_NAME`; `--var-file` files (in the order given);
//! `-var NAME=VALUE` flags (in the order given). Every value is converted to the declared type
//! and checked by the variable's `validation` blocks; then every expression that uses one
//! (`var.port`, `"v${var.version}"`, `var.n * 2`) is replaced by its value, so decoding sees
//! literals only.

use crate::diag::{Diagnostic, SourceFile, did_you_mean, file_diag};
use crate::eval::{self, Value};
use hcl_edit::Span;
use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{Attribute, Block, Body};
pub use recast_api::v1::{Inputs, VarValue};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where variable values come from.
pub struct Given;

impl Given {
    /// The `RECAST_VAR_NAME=VALUE` entries of `vars` (a process's environment).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<VarValue> {
        let mut out: Vec<VarValue> = vars
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("RECAST_VAR_")?.to_string();
                Some(VarValue {
                    from: k.clone(),
                    name,
                    value: v,
                    hcl: false,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A `-var NAME=VALUE` flag.
    pub fn from_flag(flag: &str) -> Result<VarValue, String> {
        match flag.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => Ok(VarValue {
                name: name.trim().to_string(),
                value: value.to_string(),
                from: format!("-var {}", name.trim()),
                hcl: false,
            }),
            _ => Err(format!(
                "invalid -var \"{flag}\": expected NAME=VALUE, like -var replicas=3"
            )),
        }
    }

    /// The `NAME = VALUE` lines of a var file (HCL).
    pub fn from_file(path: &Path, text: &str) -> Result<Vec<VarValue>, Diagnostic> {
        let src = SourceFile::new(path.to_path_buf(), text.to_string());
        let body = hcl_edit::parser::parse_body(text).map_err(|e| {
            let at = e.location().offset();
            src.diag(at..at + 1, format!("syntax error: {}", e.message()), None)
        })?;
        let mut out = Vec::new();
        for s in body.iter() {
            let Some(a) = s.as_attribute() else {
                return Err(src.diag(
                    span_of(s),
                    "a var file holds only NAME = VALUE lines".into(),
                    None,
                ));
            };
            let v = span_of(&a.value);
            let d = src.diag(v.clone(), String::new(), None);
            out.push(VarValue {
                name: a.key.as_str().to_string(),
                value: text[v.start.min(text.len())..v.end.min(text.len())].to_string(),
                from: format!("{}:{}:{}", path.display(), d.line, d.column),
                hcl: true,
            });
        }
        Ok(out)
    }
}

fn span_of(x: &impl Span) -> Range<usize> {
    x.span().unwrap_or(0..0)
}

/// A variable's declared type.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Any,
    String,
    Number,
    Bool,
    List(Box<Ty>),
    Map(Box<Ty>),
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ty::Any => f.write_str("any"),
            Ty::String => f.write_str("string"),
            Ty::Number => f.write_str("number"),
            Ty::Bool => f.write_str("bool"),
            Ty::List(t) => write!(f, "list({t})"),
            Ty::Map(t) => write!(f, "map({t})"),
        }
    }
}

fn ty_of(e: &Expression) -> Result<Ty, String> {
    let bad = || {
        "a type is string, number, bool, list(TYPE), map(TYPE) or any — written without quotes"
            .to_string()
    };
    match e {
        Expression::Variable(v) => match v.as_str() {
            "string" => Ok(Ty::String),
            "number" => Ok(Ty::Number),
            "bool" => Ok(Ty::Bool),
            "any" => Ok(Ty::Any),
            _ => Err(bad()),
        },
        Expression::FuncCall(c) if c.args.len() == 1 && c.name.namespace.is_empty() => {
            let inner = Box::new(ty_of(c.args.iter().next().ok_or_else(bad)?)?);
            match c.name.name.as_str() {
                "list" | "set" => Ok(Ty::List(inner)),
                "map" => Ok(Ty::Map(inner)),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// `v` converted to `ty` (numbers and bools become strings, strings that are numbers or bools
/// become them), or what is wrong.
fn conform(v: Value, ty: &Ty) -> Result<Value, String> {
    let wrong = |v: &Value| format!("expected {ty}, found {}", v.type_name());
    match (ty, v) {
        (Ty::Any, v) => Ok(v),
        (Ty::String, Value::String(s)) => Ok(Value::String(s)),
        (Ty::String, v @ (Value::Number(_) | Value::Bool(_))) => {
            Ok(Value::String(v.to_template_string()?))
        }
        (Ty::Number, Value::Number(n)) => Ok(Value::Number(n)),
        (Ty::Number, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Value::Number)
            .ok_or_else(|| format!("expected a number, found \"{s}\"")),
        (Ty::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
        (Ty::Bool, Value::String(s)) if s == "true" || s == "false" => Ok(Value::Bool(s == "true")),
        (Ty::List(t), Value::List(items)) => items
            .into_iter()
            .map(|i| conform(i, t))
            .collect::<Result<_, _>>()
            .map(Value::List),
        (Ty::Map(t), Value::Map(m)) => m
            .into_iter()
            .map(|(k, v)| Ok((k, conform(v, t)?)))
            .collect::<Result<_, String>>()
            .map(Value::Map),
        (_, v) => Err(wrong(&v)),
    }
}

/// A `variable` block, read.
struct Variable<'a> {
    name: String,
    file: usize,
    span: Range<usize>,
    ty: Ty,
    default: Option<Value>,
    validations: Vec<(&'a Expression, String)>,
}

/// The variables' values for `inputs`, every problem in `diags`. `bodies` are the spec files
/// as parsed (`None`: a syntax error), in load order.
pub(crate) fn resolve(
    sources: &[SourceFile],
    bodies: &[Option<Body>],
    inputs: &Inputs,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Value> {
    let blocks = |ident: &'static str| {
        bodies.iter().enumerate().flat_map(move |(i, b)| {
            b.iter()
                .flat_map(|b| b.blocks())
                .filter(move |b| b.ident.as_str() == ident)
                .map(move |b| (i, b))
        })
    };
    let vars = declared(sources, blocks("variable"), diags);
    let mut given: Vec<VarValue> =
        environment_values(sources, blocks("environment"), inputs, diags);
    given.extend(inputs.vars.iter().cloned());
    let mut values: BTreeMap<String, (Value, String)> = BTreeMap::new();
    for v in &vars {
        if let Some(d) = &v.default {
            values.insert(v.name.clone(), (d.clone(), "its default".into()));
        }
    }
    for g in given {
        let Some(v) = vars.iter().find(|v| v.name == g.name) else {
            let names = vars.iter().map(|v| v.name.as_str());
            let hint = did_you_mean(&g.name, names).or_else(|| {
                Some(format!(
                    "declare it: variable \"{}\" {{ type = string }}",
                    g.name
                ))
            });
            let at = sources
                .first()
                .map_or_else(PathBuf::new, |s| s.path.clone());
            diags.push(file_diag(
                &at,
                format!(
                    "{} sets variable \"{}\", which is not declared",
                    g.from, g.name
                ),
                hint,
            ));
            continue;
        };
        match given_value(&g, &v.ty) {
            Ok(value) => {
                values.insert(v.name.clone(), (value, g.from.clone()));
            }
            Err(e) => diags.push(sources[v.file].diag(
                v.span.clone(),
                format!(
                    "invalid value for variable \"{}\" from {}: {e}",
                    v.name, g.from
                ),
                None,
            )),
        }
    }
    let envs: Vec<String> = blocks("environment")
        .filter_map(|(_, b)| b.labels.first().map(|l| l.as_str().to_string()))
        .collect();
    let env_hint = if envs.is_empty() || inputs.env.is_some() {
        String::new()
    } else {
        format!(
            ", or choose an environment that sets it (--env {})",
            envs.join("|")
        )
    };
    for v in vars.iter().filter(|v| !values.contains_key(&v.name)) {
        diags.push(sources[v.file].diag(
            v.span.clone(),
            format!("variable \"{}\" has no value", v.name),
            Some(format!(
                "give it one with -var {0}=VALUE, --var-file FILE or RECAST_VAR_{0}, or a default{env_hint}",
                v.name
            )),
        ));
    }
    let plain: BTreeMap<String, Value> = values
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    validate(sources, &vars, &values, &plain, diags);
    plain
}

/// Every variable's `validation` blocks, over the values as given.
fn validate(
    sources: &[SourceFile],
    vars: &[Variable],
    values: &BTreeMap<String, (Value, String)>,
    plain: &BTreeMap<String, Value>,
    diags: &mut Vec<Diagnostic>,
) {
    for v in vars {
        let Some((_, from)) = values.get(&v.name) else {
            continue;
        };
        for (cond, message) in &v.validations {
            let ok = match eval::eval(cond, plain) {
                Ok(Value::Bool(b)) => b,
                Ok(other) => {
                    diags.push(sources[v.file].diag(
                        span_of(*cond),
                        format!(
                            "the condition of variable \"{}\" must be a bool, found {}",
                            v.name,
                            other.type_name()
                        ),
                        None,
                    ));
                    continue;
                }
                Err(e) => {
                    diags.push(sources[v.file].diag(e.span, e.message, e.hint));
                    continue;
                }
            };
            if !ok {
                diags.push(sources[v.file].diag(
                    span_of(*cond),
                    format!(
                        "invalid value for variable \"{}\" (from {from}): {message}",
                        v.name
                    ),
                    None,
                ));
            }
        }
    }
}

/// The `variable` blocks, each name once.
fn declared<'a>(
    sources: &[SourceFile],
    blocks: impl Iterator<Item = (usize, &'a Block)>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Variable<'a>> {
    let mut vars: Vec<Variable> = Vec::new();
    for (file, b) in blocks {
        if let Some(v) = variable(&sources[file], file, b, diags) {
            if let Some(first) = vars.iter().find(|o| o.name == v.name) {
                let at = sources[first.file].diag(first.span.clone(), String::new(), None);
                diags.push(sources[file].diag(
                    v.span.clone(),
                    format!("variable \"{}\" is declared twice", v.name),
                    Some(format!("the first is at {}:{}", at.file.display(), at.line)),
                ));
                continue;
            }
            vars.push(v);
        }
    }
    vars
}

/// A value given from outside the spec, converted to `ty`.
fn given_value(g: &VarValue, ty: &Ty) -> Result<Value, String> {
    let structured = matches!(ty, Ty::List(_) | Ty::Map(_));
    let value = if g.hcl || structured {
        let e = hcl_edit::parser::parse_expr(&g.value)
            .map_err(|e| format!("not a valid value ({})", e.message()))?;
        eval::eval(&e, &BTreeMap::new()).map_err(|e| e.message)?
    } else {
        Value::String(g.value.clone())
    };
    conform(value, ty)
}

/// The values the selected environment's block gives (`inputs.env`), checking that it exists.
fn environment_values<'a>(
    sources: &[SourceFile],
    blocks: impl Iterator<Item = (usize, &'a Block)>,
    inputs: &Inputs,
    diags: &mut Vec<Diagnostic>,
) -> Vec<VarValue> {
    let blocks: Vec<(usize, &Block)> = blocks.collect();
    let Some(env) = &inputs.env else {
        return Vec::new();
    };
    let named = |b: &Block| b.labels.first().map(|l| l.as_str().to_string());
    let Some((file, block)) = blocks
        .iter()
        .find(|(_, b)| named(b).as_deref() == Some(env.as_str()))
    else {
        let names: Vec<String> = blocks.iter().filter_map(|(_, b)| named(b)).collect();
        let at = sources
            .first()
            .map_or_else(PathBuf::new, |s| s.path.clone());
        diags.push(file_diag(
            &at,
            format!("no environment \"{env}\" is declared"),
            Some(if names.is_empty() {
                "declare it: environment \"NAME\" { variables = { … } }".into()
            } else {
                format!("declared environments: {}", names.join(", "))
            }),
        ));
        return Vec::new();
    };
    let src = &sources[*file];
    let Some(a) = block.body.get_attribute("variables") else {
        return Vec::new();
    };
    let Expression::Object(obj) = &a.value else {
        diags.push(src.diag(
            span_of(&a.value),
            "`variables` must be an object like { port = 8080 }".into(),
            None,
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in obj.iter() {
        let name = match k {
            ObjectKey::Ident(i) => i.as_str().to_string(),
            ObjectKey::Expression(Expression::String(s)) => s.as_str().to_string(),
            ObjectKey::Expression(e) => {
                diags.push(src.diag(
                    span_of(e),
                    "keys of `variables` must be variable names".into(),
                    None,
                ));
                continue;
            }
        };
        let span = span_of(v.expr());
        let d = src.diag(span.clone(), String::new(), None);
        out.push(VarValue {
            name,
            value: src.text[span.start.min(src.text.len())..span.end.min(src.text.len())]
                .to_string(),
            from: format!(
                "environment \"{env}\" ({}:{}:{})",
                d.file.display(),
                d.line,
                d.column
            ),
            hcl: true,
        });
    }
    out
}

/// A `variable "NAME"` block: `type`, `default`, `description`, `validation` blocks.
fn variable<'a>(
    src: &SourceFile,
    file: usize,
    b: &'a Block,
    diags: &mut Vec<Diagnostic>,
) -> Option<Variable<'a>> {
    let [label] = b.labels.as_slice() else {
        diags.push(src.diag(
            span_of(&b.ident),
            "variable block takes one name".into(),
            Some("write variable \"NAME\" { type = string }".into()),
        ));
        return None;
    };
    let name = label.as_str().to_string();
    let span = span_of(label);
    let ident_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ident_ok {
        diags.push(src.diag(
            span.clone(),
            format!("invalid variable name \"{name}\""),
            Some("a variable name is letters, digits, '_' and '-', starting with a letter or '_'".into()),
        ));
        return None;
    }
    let mut ty = Ty::Any;
    let mut default = None;
    let mut validations = Vec::new();
    let mut ok = true;
    for s in b.body.iter() {
        if let Some(a) = s.as_attribute() {
            match a.key.as_str() {
                "type" => match ty_of(&a.value) {
                    Ok(t) => ty = t,
                    Err(e) => {
                        diags.push(src.diag(span_of(&a.value), format!("invalid type: {e}"), None));
                        ok = false;
                    }
                },
                "default" => default = Some(a),
                "description" => {
                    if !matches!(a.value, Expression::String(_)) {
                        diags.push(src.diag(
                            span_of(&a.value),
                            "`description` must be a string".into(),
                            None,
                        ));
                    }
                }
                other => {
                    diags.push(
                        src.diag(
                            span_of(&a.key),
                            format!("unknown attribute `{other}` in variable \"{name}\""),
                            Some(
                                "a variable takes type, default, description and validation blocks"
                                    .into(),
                            ),
                        ),
                    );
                    ok = false;
                }
            }
        } else if let Some(vb) = s.as_block() {
            match validation(src, vb, diags) {
                Some(v) => validations.push(v),
                None => ok = false,
            }
        }
    }
    let default = match default.map(|a| default_value(a, &ty)) {
        Some(Ok(v)) => Some(v),
        Some(Err((at, e))) => {
            diags.push(src.diag(
                at,
                format!("invalid default of variable \"{name}\": {e}"),
                None,
            ));
            return None;
        }
        None => None,
    };
    ok.then_some(Variable {
        name,
        file,
        span,
        ty,
        default,
        validations,
    })
}

fn default_value(a: &Attribute, ty: &Ty) -> Result<Value, (Range<usize>, String)> {
    let v = eval::eval(&a.value, &BTreeMap::new()).map_err(|e| (e.span, e.message))?;
    conform(v, ty).map_err(|e| (span_of(&a.value), e))
}

/// `validation { condition = EXPR, message = "…" }`.
fn validation<'a>(
    src: &SourceFile,
    b: &'a Block,
    diags: &mut Vec<Diagnostic>,
) -> Option<(&'a Expression, String)> {
    if b.ident.as_str() != "validation" {
        diags.push(src.diag(
            span_of(&b.ident),
            format!("unknown block `{}` in a variable", b.ident.as_str()),
            Some("a variable takes validation { condition = …, message = \"…\" } blocks".into()),
        ));
        return None;
    }
    let condition = b.body.get_attribute("condition").map(|a| &a.value);
    let message = match b.body.get_attribute("message").map(|a| &a.value) {
        Some(Expression::String(s)) => Some(s.as_str().to_string()),
        Some(other) => {
            diags.push(src.diag(span_of(other), "`message` must be a string".into(), None));
            return None;
        }
        None => None,
    };
    for a in b.body.attributes() {
        if !matches!(a.key.as_str(), "condition" | "message") {
            diags.push(src.diag(
                span_of(&a.key),
                format!("unknown attribute `{}` in validation", a.key.as_str()),
                Some("a validation takes condition and message".into()),
            ));
            return None;
        }
    }
    match (condition, message) {
        (Some(c), Some(m)) => Some((c, m)),
        _ => {
            diags.push(src.diag(
                span_of(&b.ident),
                "a validation needs `condition` and `message`".into(),
                Some("write validation { condition = var.NAME > 0, message = \"…\" }".into()),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests;
