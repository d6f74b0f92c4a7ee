//! Evaluating the expressions of a spec before it is decoded: `var.NAME`, string templates,
//! operators, conditionals and a few functions.
//!
//! The loader calls [`substitute`] on each parsed file: every expression that needs evaluation
//! ([`needs_eval`]) is replaced by a literal carrying its value ([`literal_at`]) whose span starts
//! where the original expression started, so the decoder sees only literals and bare references
//! (`service.web`, `secret.db`) and its diagnostics still point into the file.
//!
//! Choices where HCL leaves room: a string template always yields a string (also `"${var.n}"`),
//! `&&`, `||` and `? :` evaluate only what decides the result, and operators never convert
//! between types (`"1" + 1` is an error; functions taking strings accept numbers and bools).

use crate::diag::did_you_mean;
use hcl_edit::expr::{
    BinaryOp, BinaryOperator, Conditional, Expression, FuncCall, Object, ObjectKey, Traversal,
    TraversalOperator, UnaryOp, UnaryOperator,
};
use hcl_edit::structure::Body;
use hcl_edit::template::{Directive, Element, Template};
use hcl_edit::visit::{self, Visit};
use hcl_edit::{Decor, Decorate, Span};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

/// A value: what a variable holds and what an expression evaluates to. Serialized like JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// The name of this value's type, as written in messages and in `variable { type = … }`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    /// The type with an article, for messages: "a string", "null".
    fn a_type(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a bool",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::List(_) => "a list",
            Value::Map(_) => "a map",
        }
    }

    /// This value as an HCL literal, which parses back to the same value. A number that is not
    /// finite (no HCL literal exists for it) is written `null`; evaluation never produces one.
    pub fn to_hcl(&self) -> String {
        let mut out = String::new();
        self.write_hcl(&mut out);
        out
    }

    fn write_hcl(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) if n.is_finite() => out.push_str(&number_text(*n)),
            Value::Number(_) => out.push_str("null"),
            Value::String(s) => quote_into(s, out),
            Value::List(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.write_hcl(out);
                }
                out.push(']');
            }
            Value::Map(m) if m.is_empty() => out.push_str("{}"),
            Value::Map(m) => {
                out.push_str("{ ");
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    quote_into(k, out);
                    out.push_str(" = ");
                    v.write_hcl(out);
                }
                out.push_str(" }");
            }
        }
    }

    /// What `${x}` inserts into a string: strings as they are, numbers (whole ones without a
    /// fraction) and bools as written. Lists, maps and null cannot be inserted.
    pub fn to_template_string(&self) -> Result<String, String> {
        match self {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(number_text(*n)),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(format!("cannot insert {} into a string", other.a_type())),
        }
    }
}

/// A number as HCL writes it: `8080`, `0.5`, never `8080.0` or an exponent.
fn number_text(n: f64) -> String {
    if n == 0.0 {
        "0".to_string() // also -0
    } else {
        n.to_string()
    }
}

/// `s` as a quoted HCL string, escaping what would otherwise end it or start a template.
fn quote_into(s: &str, out: &mut String) {
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A problem evaluating an expression, located by byte offsets into the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    pub span: Range<usize>,
    /// Lowercase, no trailing period.
    pub message: String,
    pub hint: Option<String>,
}

impl EvalError {
    fn new(span: Range<usize>, message: impl Into<String>) -> EvalError {
        EvalError {
            span,
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> EvalError {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for EvalError {}

type Res = Result<Value, EvalError>;

fn span_of(x: &impl Span) -> Range<usize> {
    x.span().unwrap_or(0..0)
}

/// The functions, with how each is called (for hints).
const FUNCTIONS: [(&str, &str); 16] = [
    ("abs", "abs(number)"),
    ("can", "can(expression)"),
    ("coalesce", "coalesce(value, …)"),
    ("contains", "contains(list, value)"),
    ("endswith", "endswith(string, suffix)"),
    ("join", "join(separator, list)"),
    ("length", "length(string, list or map)"),
    ("lower", "lower(string)"),
    ("max", "max(number, …)"),
    ("min", "min(number, …)"),
    ("split", "split(separator, string)"),
    ("startswith", "startswith(string, prefix)"),
    ("tonumber", "tonumber(value)"),
    ("tostring", "tostring(value)"),
    ("trimspace", "trimspace(string)"),
    ("upper", "upper(string)"),
];

const NO_FOR: &str = "for expressions are not supported";
const NO_DIRECTIVES: &str = "template directives (%{…}) are not supported";

/// Evaluates `e`, where `var.NAME` is `vars[NAME]` (already typed and validated by the caller).
pub fn eval(e: &Expression, vars: &BTreeMap<String, Value>) -> Res {
    Ev { vars }.eval(e)
}

/// Whether `e` must be evaluated before decoding: it contains a `var.` reference, a template
/// with an interpolation or directive, an operator, a conditional, a function call, parentheses
/// or a for expression, anywhere inside. Literals (also `-1`) and bare references with another
/// root (`service.web`, `secret.db`) do not.
pub fn needs_eval(e: &Expression) -> bool {
    match e {
        Expression::Null(_) | Expression::Bool(_) | Expression::Number(_) => false,
        Expression::String(_) => false,
        Expression::Array(a) => a.iter().any(needs_eval),
        Expression::Object(o) => o
            .iter()
            .any(|(k, v)| key_needs_eval(k) || needs_eval(v.expr())),
        Expression::StringTemplate(t) => template_needs_eval(t),
        Expression::HeredocTemplate(h) => template_needs_eval(&h.template),
        Expression::Variable(v) => v.as_str() == "var",
        Expression::Traversal(t) => match &t.expr {
            Expression::Variable(v) => {
                v.as_str() == "var"
                    || t.operators.iter().any(
                        |op| matches!(op.value(), TraversalOperator::Index(x) if needs_eval(x)),
                    )
            }
            _ => true,
        },
        Expression::UnaryOp(u) => {
            !(*u.operator.value() == UnaryOperator::Neg && matches!(u.expr, Expression::Number(_)))
        }
        _ => true,
    }
}

fn key_needs_eval(k: &ObjectKey) -> bool {
    match k {
        ObjectKey::Ident(_) | ObjectKey::Expression(Expression::String(_)) => false,
        ObjectKey::Expression(_) => true,
    }
}

fn template_needs_eval(t: &Template) -> bool {
    t.iter().any(|el| !matches!(el, Element::Literal(_)))
}

/// A literal expression for `v` whose span starts at byte `start` of the original file, with no
/// decoration. Elements inside a list or map get the spans they would have if the literal were
/// written at `start`: near the original expression, but not exactly on what produced them.
pub fn literal_at(v: &Value, start: usize) -> Expression {
    // Spans can only be set by hcl-edit's parser, which does not accept leading whitespace:
    // parse `(` and `start - 1` spaces before the literal, and take what is inside.
    let lit = v.to_hcl();
    let text = match start {
        0 => lit,
        _ => format!("({}{lit})", " ".repeat(start - 1)),
    };
    let e = hcl_edit::parser::parse_expr(&text).expect("to_hcl always writes a valid literal");
    let mut e = match e {
        Expression::Parenthesis(p) if start > 0 => p.into_inner(),
        e => e,
    };
    *e.decor_mut() = Decor::default();
    e
}

/// Replaces, in every attribute of `body` and of its nested blocks, each expression that needs
/// evaluation by a literal of its value. Inside a list or an object only the elements that need
/// it are replaced, so `[service.web, var.x]` keeps `service.web`. Blocks named in `skip` are
/// left alone, and so is an expression that fails: every failure is returned.
pub fn substitute(
    body: &mut Body,
    vars: &BTreeMap<String, Value>,
    skip: &[&str],
) -> Vec<EvalError> {
    let mut errors = Vec::new();
    subst_body(body, &Ev { vars }, skip, &mut errors);
    errors
}

fn subst_body(body: &mut Body, ev: &Ev, skip: &[&str], errors: &mut Vec<EvalError>) {
    for mut s in body.iter_mut() {
        if let Some(mut a) = s.as_attribute_mut() {
            subst_expr(a.value_mut(), ev, errors);
        } else if let Some(b) = s.as_block_mut()
            && !skip.contains(&b.ident.as_str())
        {
            subst_body(&mut b.body, ev, skip, errors);
        }
    }
}

fn subst_expr(e: &mut Expression, ev: &Ev, errors: &mut Vec<EvalError>) {
    if !needs_eval(e) {
        return;
    }
    match e {
        Expression::Array(a) => {
            for x in a.iter_mut() {
                subst_expr(x, ev, errors);
            }
        }
        Expression::Object(o) if !o.iter().any(|(k, _)| key_needs_eval(k)) => {
            for (_, v) in o.iter_mut() {
                subst_expr(v.expr_mut(), ev, errors);
            }
        }
        _ => match ev.eval(e) {
            Ok(v) => {
                let mut lit = literal_at(&v, span_of(e).start);
                *lit.decor_mut() = e.decor().clone();
                *e = lit;
            }
            Err(err) => errors.push(err),
        },
    }
}

/// The evaluator: the variables in scope.
struct Ev<'a> {
    vars: &'a BTreeMap<String, Value>,
}

/// A function argument, evaluated, with where it was written.
struct Arg {
    v: Value,
    span: Range<usize>,
}

impl Ev<'_> {
    fn eval(&self, e: &Expression) -> Res {
        let span = span_of(e);
        match e {
            Expression::Null(_) => Ok(Value::Null),
            Expression::Bool(b) => Ok(Value::Bool(*b.value())),
            Expression::Number(n) => match n.value().as_f64() {
                Some(x) if x.is_finite() => Ok(Value::Number(x)),
                _ => Err(EvalError::new(span, "this number is too large")),
            },
            Expression::String(s) => Ok(Value::String(s.value().clone())),
            Expression::Array(a) => a
                .iter()
                .map(|x| self.eval(x))
                .collect::<Result<_, _>>()
                .map(Value::List),
            Expression::Object(o) => self.object(o),
            Expression::StringTemplate(t) => self.template(t),
            Expression::HeredocTemplate(h) => self.template(&h.template),
            Expression::Parenthesis(p) => self.eval(p.inner()),
            Expression::Variable(v) => Err(bare_name(v.as_str(), span)),
            Expression::Conditional(c) => self.conditional(c),
            Expression::FuncCall(f) => self.call(f),
            Expression::Traversal(t) => self.traversal(t),
            Expression::UnaryOp(u) => self.unary(u),
            Expression::BinaryOp(b) => self.binary(b),
            Expression::ForExpr(_) => Err(EvalError::new(span, NO_FOR)),
        }
    }

    fn object(&self, o: &Object) -> Res {
        let mut map = BTreeMap::new();
        for (k, v) in o.iter() {
            let (key, kspan) = match k {
                ObjectKey::Ident(i) => (i.as_str().to_string(), span_of(i)),
                ObjectKey::Expression(x) => match self.eval(x)? {
                    Value::String(s) => (s, span_of(x)),
                    other => {
                        let msg =
                            format!("an object key must be a string, found {}", other.a_type());
                        return Err(EvalError::new(span_of(x), msg));
                    }
                },
            };
            if map.contains_key(&key) {
                return Err(EvalError::new(kspan, format!("duplicate key \"{key}\"")));
            }
            map.insert(key, self.eval(v.expr())?);
        }
        Ok(Value::Map(map))
    }

    fn template(&self, t: &Template) -> Res {
        let els: Vec<&Element> = t.iter().collect();
        let strips_after =
            |i: usize| matches!(els.get(i), Some(Element::Interpolation(x)) if x.strip.strip_end());
        let strips_before = |i: usize| matches!(els.get(i), Some(Element::Interpolation(x)) if x.strip.strip_start());
        let mut out = String::new();
        for (i, el) in els.iter().enumerate() {
            match el {
                Element::Literal(l) => {
                    let mut s: &str = l.as_str();
                    if i > 0 && strips_after(i - 1) {
                        s = s.trim_start();
                    }
                    if strips_before(i + 1) {
                        s = s.trim_end();
                    }
                    out.push_str(s);
                }
                Element::Interpolation(x) => {
                    let v = self.eval(&x.expr)?;
                    match v.to_template_string() {
                        Ok(s) => out.push_str(&s),
                        Err(msg) => {
                            let hint = match v {
                                Value::Null => "give it a value, or write coalesce(x, \"\")",
                                _ => "turn a list into a string with join(\", \", x)",
                            };
                            return Err(EvalError::new(span_of(&x.expr), msg).hint(hint));
                        }
                    }
                }
                Element::Directive(d) => return Err(directive_error(d)),
            }
        }
        Ok(Value::String(out))
    }

    fn conditional(&self, c: &Conditional) -> Res {
        match self.eval(&c.cond_expr)? {
            Value::Bool(true) => self.eval(&c.true_expr),
            Value::Bool(false) => self.eval(&c.false_expr),
            other => Err(EvalError::new(
                span_of(&c.cond_expr),
                format!("a condition must be a bool, found {}", other.a_type()),
            )),
        }
    }

    /// The value of `var.NAME`, or an error naming it.
    fn var(&self, name: &str, span: Range<usize>) -> Res {
        if let Some(v) = self.vars.get(name) {
            return Ok(v.clone());
        }
        let hint = did_you_mean(name, self.vars.keys().map(String::as_str))
            .unwrap_or_else(|| format!("declare it: variable \"{name}\" {{ … }}"));
        Err(EvalError::new(span, format!("unknown variable `{name}`")).hint(hint))
    }

    /// For a traversal rooted at a name: the value of `var.NAME`, its text and how many
    /// operators that took. Another root name is an error; `None` when the root is not a name.
    fn named_root(&self, t: &Traversal) -> Result<Option<(Value, String, usize)>, EvalError> {
        let Expression::Variable(root) = &t.expr else {
            return Ok(None);
        };
        if root.as_str() != "var" {
            return Err(not_var(t));
        }
        match t.operators.first().map(|op| (op, op.value())) {
            Some((op, TraversalOperator::GetAttr(name))) => {
                let span = span_of(&t.expr).start..span_of(op).end;
                let v = self.var(name.as_str(), span)?;
                Ok(Some((v, format!("var.{}", name.as_str()), 1)))
            }
            _ => Err(bare_name("var", span_of(t))),
        }
    }

    fn traversal(&self, t: &Traversal) -> Res {
        let (mut value, mut path, used) = match self.named_root(t)? {
            Some(root) => root,
            None => (
                self.eval(&t.expr)?,
                t.expr.to_string().trim().to_string(),
                0,
            ),
        };
        for op in &t.operators[used..] {
            let span = span_of(op);
            value = match op.value() {
                TraversalOperator::GetAttr(k) => get_key(value, k.as_str(), &path, span)?,
                TraversalOperator::LegacyIndex(n) => index(value, *n.value() as f64, &path, span)?,
                TraversalOperator::Index(x) => match (value, self.eval(x)?) {
                    (v @ Value::List(_), Value::Number(n)) => index(v, n, &path, span_of(x))?,
                    (v @ Value::Map(_), Value::String(k)) => get_key(v, &k, &path, span_of(x))?,
                    (Value::List(_), k) => {
                        let msg = format!("a list index must be a number, found {}", k.a_type());
                        return Err(EvalError::new(span_of(x), msg));
                    }
                    (Value::Map(_), k) => {
                        let msg = format!("a map key must be a string, found {}", k.a_type());
                        return Err(EvalError::new(span_of(x), msg));
                    }
                    (v, _) => {
                        let msg = format!("cannot index {path}: it is {}", v.a_type());
                        return Err(EvalError::new(span, msg));
                    }
                },
                TraversalOperator::AttrSplat(_) | TraversalOperator::FullSplat(_) => {
                    return Err(EvalError::new(span, "splat expressions are not supported"));
                }
            };
            path.push_str(&op_text(op.value()));
        }
        Ok(value)
    }

    fn unary(&self, u: &UnaryOp) -> Res {
        let op = *u.operator.value();
        match (op, self.eval(&u.expr)?) {
            (UnaryOperator::Neg, Value::Number(n)) => Ok(Value::Number(-n)),
            (UnaryOperator::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
            (_, v) => {
                let want = if op == UnaryOperator::Neg {
                    "a number"
                } else {
                    "a bool"
                };
                let msg = format!("`{}` needs {want}, found {}", op.as_str(), v.a_type());
                Err(EvalError::new(span_of(&u.expr), msg))
            }
        }
    }

    fn binary(&self, b: &BinaryOp) -> Res {
        use BinaryOperator as B;
        let op = *b.operator.value();
        let l = self.eval(&b.lhs_expr)?;
        let logic = matches!(op, B::And | B::Or);
        if logic && l == Value::Bool(op == B::Or) {
            return Ok(l); // false && …, true || …
        }
        let r = self.eval(&b.rhs_expr)?;
        match (op, &l, &r) {
            (B::Eq, ..) => Ok(Value::Bool(l == r)),
            (B::NotEq, ..) => Ok(Value::Bool(l != r)),
            (B::And | B::Or, Value::Bool(_), Value::Bool(y)) => Ok(Value::Bool(*y)),
            (_, Value::Number(x), Value::Number(y)) if !logic => arithmetic(b, *x, *y),
            _ => Err(operand_error(b, &l, &r)),
        }
    }

    fn call(&self, f: &FuncCall) -> Res {
        let name = check_function(f)?;
        let span = span_of(f);
        if name == "can" {
            arity(name, f.args.len(), 1, span)?;
            let arg = f.args.iter().next().expect("one argument");
            let mut check = StaticCheck {
                ev: self,
                err: None,
            };
            check.visit_expr(arg);
            if let Some(err) = check.err {
                return Err(err);
            }
            return Ok(Value::Bool(self.eval(arg).is_ok()));
        }
        let mut args = Vec::new();
        let n = f.args.len();
        for (i, a) in f.args.iter().enumerate() {
            let v = self.eval(a)?;
            match v {
                Value::List(items) if i + 1 == n && f.args.expand_final() => {
                    args.extend(items.into_iter().map(|v| Arg {
                        v,
                        span: span_of(a),
                    }));
                }
                v if i + 1 == n && f.args.expand_final() => {
                    let msg = format!("`...` needs a list, found {}", v.a_type());
                    return Err(EvalError::new(span_of(a), msg));
                }
                v => args.push(Arg {
                    v,
                    span: span_of(a),
                }),
            }
        }
        builtin(name, args, span)
    }
}

/// Finds what a `can(…)` argument gets wrong whatever the values: unknown variables and
/// functions, references other than `var.`, unsupported syntax. Those are errors, not `false`.
struct StaticCheck<'a> {
    ev: &'a Ev<'a>,
    err: Option<EvalError>,
}

impl Visit for StaticCheck<'_> {
    fn visit_expr(&mut self, e: &Expression) {
        if self.err.is_some() {
            return;
        }
        let found = match e {
            Expression::Traversal(t) => self.ev.named_root(t).err(),
            Expression::Variable(v) => Some(bare_name(v.as_str(), span_of(e))),
            Expression::FuncCall(f) => check_function(f).err(),
            Expression::ForExpr(_) => Some(EvalError::new(span_of(e), NO_FOR)),
            _ => None,
        };
        if found.is_some() {
            self.err = found;
        } else if let Expression::Traversal(t) = e {
            // The root name is checked; look into the operators only.
            if !matches!(t.expr, Expression::Variable(_)) {
                self.visit_expr(&t.expr);
            }
            for op in &t.operators {
                self.visit_traversal_operator(op);
            }
        } else {
            visit::visit_expr(self, e);
        }
    }

    fn visit_directive(&mut self, d: &Directive) {
        if self.err.is_none() {
            self.err = Some(directive_error(d));
        }
    }
}

fn directive_error(d: &Directive) -> EvalError {
    EvalError::new(span_of(d), NO_DIRECTIVES)
        .hint("use a conditional inside an interpolation: \"${var.x ? \"a\" : \"b\"}\"")
}

/// A name used alone: `var` without `.NAME`, or any other bare word.
fn bare_name(name: &str, span: Range<usize>) -> EvalError {
    if name == "var" {
        EvalError::new(span, "`var` must be followed by a variable name").hint("write var.NAME")
    } else {
        EvalError::new(span, format!("unknown name `{name}`"))
            .hint(format!("a variable is written var.NAME, e.g. var.{name}"))
    }
}

/// A reference with another root than `var` where a value is needed.
fn not_var(t: &Traversal) -> EvalError {
    let mut text = t.expr.to_string().trim().to_string();
    for op in &t.operators {
        text.push_str(&op_text(op.value()));
    }
    let msg = format!("only var.NAME can be used in an expression; {text} is a reference");
    let hint = match &t.expr {
        Expression::Variable(v) if v.as_str() == "secret" => format!(
            "a secret is used as a whole value (`env = {{ X = {text} }}`), never inside a string \
             or an expression"
        ),
        _ => format!("write {text} alone, as the whole value of an attribute or list element"),
    };
    EvalError::new(span_of(t), msg).hint(hint)
}

/// How a traversal operator is written: `.name`, `[0]`.
fn op_text(op: &TraversalOperator) -> String {
    match op {
        TraversalOperator::GetAttr(k) => format!(".{}", k.as_str()),
        TraversalOperator::LegacyIndex(n) => format!(".{}", n.value()),
        TraversalOperator::Index(x) => format!("[{}]", x.to_string().trim()),
        TraversalOperator::AttrSplat(_) => ".*".to_string(),
        TraversalOperator::FullSplat(_) => "[*]".to_string(),
    }
}

fn get_key(v: Value, key: &str, path: &str, span: Range<usize>) -> Res {
    match v {
        Value::Map(mut m) => match m.remove(key) {
            Some(x) => Ok(x),
            None => {
                let err = EvalError::new(span, format!("{path} has no key \"{key}\""));
                Err(match did_you_mean(key, m.keys().map(String::as_str)) {
                    Some(h) => err.hint(h),
                    None => err,
                })
            }
        },
        other => Err(EvalError::new(
            span,
            format!("{path} is {}, it has no key \"{key}\"", other.a_type()),
        )),
    }
}

fn index(v: Value, n: f64, path: &str, span: Range<usize>) -> Res {
    let Value::List(mut items) = v else {
        let msg = format!("{path} is {}, not a list", v.a_type());
        return Err(EvalError::new(span, msg));
    };
    if n < 0.0 || n.fract() != 0.0 {
        let msg = format!("a list index must be a whole number from 0, found {n}");
        return Err(EvalError::new(span, msg));
    }
    let len = items.len();
    if n >= len as f64 {
        let msg = format!("index {n} is out of range: {path} has {len} element(s)");
        return Err(EvalError::new(span, msg));
    }
    Ok(items.swap_remove(n as usize))
}

fn arithmetic(b: &BinaryOp, x: f64, y: f64) -> Res {
    use BinaryOperator as B;
    let zero = |what: &str| Err(EvalError::new(span_of(&b.rhs_expr), what.to_string()));
    let n = match b.operator.value() {
        B::Plus => x + y,
        B::Minus => x - y,
        B::Mul => x * y,
        B::Div if y == 0.0 => return zero("division by zero"),
        B::Div => x / y,
        B::Mod if y == 0.0 => return zero("modulo by zero"),
        B::Mod => x % y,
        B::Less => return Ok(Value::Bool(x < y)),
        B::LessEq => return Ok(Value::Bool(x <= y)),
        B::Greater => return Ok(Value::Bool(x > y)),
        B::GreaterEq => return Ok(Value::Bool(x >= y)),
        B::Eq | B::NotEq | B::And | B::Or => unreachable!("handled by the caller"),
    };
    if n.is_finite() {
        Ok(Value::Number(n))
    } else {
        Err(EvalError::new(
            span_of(b),
            "the result is too large for a number",
        ))
    }
}

/// An operator applied to values of the wrong types: points at the one operand that is wrong,
/// or at the whole operation when both are.
fn operand_error(b: &BinaryOp, l: &Value, r: &Value) -> EvalError {
    let op = *b.operator.value();
    let logic = matches!(op, BinaryOperator::And | BinaryOperator::Or);
    let (want, ok): (&str, fn(&Value) -> bool) = if logic {
        ("bools", |v| matches!(v, Value::Bool(_)))
    } else {
        ("numbers", |v| matches!(v, Value::Number(_)))
    };
    let span = match (ok(l), ok(r)) {
        (true, false) => span_of(&b.rhs_expr),
        (false, true) => span_of(&b.lhs_expr),
        _ => span_of(b),
    };
    let msg = format!(
        "`{}` needs two {want}, found {} and {}",
        op.as_str(),
        l.type_name(),
        r.type_name()
    );
    let err = EvalError::new(span, msg);
    match (op, l, r) {
        (BinaryOperator::Plus, Value::String(_), _)
        | (BinaryOperator::Plus, _, Value::String(_)) => {
            err.hint("join strings with a template: \"${var.a}${var.b}\"")
        }
        _ => err,
    }
}

/// The name of a known function, or an error naming it.
fn check_function(f: &FuncCall) -> Result<&'static str, EvalError> {
    let name = f.name.name.as_str();
    if !f.name.is_namespaced()
        && let Some((known, _)) = FUNCTIONS.iter().find(|(n, _)| *n == name)
    {
        return Ok(known);
    }
    let mut full: Vec<&str> = f.name.namespace.iter().map(|n| n.as_str()).collect();
    full.push(name);
    let full = full.join("::");
    let list: Vec<&str> = FUNCTIONS.iter().map(|(n, _)| *n).collect();
    let mut hint = format!("the functions are {}", list.join(", "));
    if let Some(dym) = did_you_mean(&full, list.iter().copied()) {
        hint = format!("{dym} {hint}");
    }
    Err(EvalError::new(span_of(&f.name.name), format!("unknown function `{full}`")).hint(hint))
}

fn signature(name: &str) -> &'static str {
    FUNCTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, s)| s)
}

fn arity(name: &str, found: usize, want: usize, span: Range<usize>) -> Result<(), EvalError> {
    if found == want {
        return Ok(());
    }
    let s = if want == 1 { "" } else { "s" };
    Err(EvalError::new(
        span,
        format!("{name}() takes {want} argument{s}, found {found}"),
    )
    .hint(format!("write {}", signature(name))))
}

/// A string argument; numbers and bools are converted as `${…}` would.
fn str_arg(name: &str, a: &Arg) -> Result<String, EvalError> {
    match &a.v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(_) | Value::Bool(_) => Ok(a.v.to_template_string().unwrap_or_default()),
        other => Err(EvalError::new(
            a.span.clone(),
            format!("{name}() needs a string here, found {}", other.a_type()),
        )),
    }
}

fn num_arg(name: &str, a: &Arg) -> Result<f64, EvalError> {
    match &a.v {
        Value::Number(n) => Ok(*n),
        other => {
            let msg = format!("{name}() needs a number here, found {}", other.a_type());
            let err = EvalError::new(a.span.clone(), msg);
            Err(match other {
                Value::String(_) => err.hint("convert it with tonumber(…)"),
                _ => err,
            })
        }
    }
}

fn list_arg<'a>(name: &str, a: &'a Arg) -> Result<&'a [Value], EvalError> {
    match &a.v {
        Value::List(items) => Ok(items),
        other => Err(EvalError::new(
            a.span.clone(),
            format!("{name}() needs a list here, found {}", other.a_type()),
        )),
    }
}

fn builtin(name: &'static str, args: Vec<Arg>, span: Range<usize>) -> Res {
    match name {
        "min" | "max" | "coalesce" => return variadic(name, args, span),
        "contains" | "join" | "split" | "startswith" | "endswith" => {
            arity(name, args.len(), 2, span)?;
            return binary_fn(name, &args[0], &args[1]);
        }
        _ => arity(name, args.len(), 1, span)?,
    }
    let a = &args[0];
    Ok(match name {
        "length" => match &a.v {
            Value::String(s) => Value::Number(s.chars().count() as f64),
            Value::List(l) => Value::Number(l.len() as f64),
            Value::Map(m) => Value::Number(m.len() as f64),
            other => {
                let msg = format!(
                    "length() needs a string, list or map, found {}",
                    other.a_type()
                );
                return Err(EvalError::new(a.span.clone(), msg));
            }
        },
        "upper" => Value::String(str_arg(name, a)?.to_uppercase()),
        "lower" => Value::String(str_arg(name, a)?.to_lowercase()),
        "trimspace" => Value::String(str_arg(name, a)?.trim().to_string()),
        "abs" => Value::Number(num_arg(name, a)?.abs()),
        "tostring" => match &a.v {
            Value::Null => Value::Null,
            _ => Value::String(str_arg(name, a)?),
        },
        "tonumber" => match &a.v {
            Value::Null => Value::Null,
            Value::Number(n) => Value::Number(*n),
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => Value::Number(n),
                _ => {
                    let msg = format!("tonumber() cannot read \"{s}\" as a number");
                    return Err(EvalError::new(a.span.clone(), msg));
                }
            },
            other => {
                let msg = format!("tonumber() cannot turn {} into a number", other.a_type());
                return Err(EvalError::new(a.span.clone(), msg));
            }
        },
        _ => unreachable!("every function in FUNCTIONS is handled: {name}"),
    })
}

fn binary_fn(name: &str, a: &Arg, b: &Arg) -> Res {
    Ok(match name {
        "contains" => Value::Bool(list_arg(name, a)?.contains(&b.v)),
        "startswith" => Value::Bool(str_arg(name, a)?.starts_with(&str_arg(name, b)?)),
        "endswith" => Value::Bool(str_arg(name, a)?.ends_with(&str_arg(name, b)?)),
        "split" => {
            let (sep, s) = (str_arg(name, a)?, str_arg(name, b)?);
            let parts: Vec<Value> = if sep.is_empty() {
                s.chars().map(|c| Value::String(c.to_string())).collect()
            } else {
                s.split(sep.as_str())
                    .map(|p| Value::String(p.to_string()))
                    .collect()
            };
            Value::List(parts)
        }
        "join" => {
            let sep = str_arg(name, a)?;
            let mut parts = Vec::new();
            for (i, v) in list_arg(name, b)?.iter().enumerate() {
                parts.push(v.to_template_string().map_err(|_| {
                    let msg = format!(
                        "join() needs a list of strings, element {i} is {}",
                        v.a_type()
                    );
                    EvalError::new(b.span.clone(), msg)
                })?);
            }
            Value::String(parts.join(&sep))
        }
        _ => unreachable!("not a two-argument function: {name}"),
    })
}

fn variadic(name: &str, args: Vec<Arg>, span: Range<usize>) -> Res {
    if args.is_empty() {
        let msg = format!("{name}() needs at least one argument");
        return Err(EvalError::new(span, msg).hint(format!("write {}", signature(name))));
    }
    if name == "coalesce" {
        return args
            .into_iter()
            .map(|a| a.v)
            .find(|v| !matches!(v, Value::Null) && *v != Value::String(String::new()))
            .ok_or_else(|| EvalError::new(span, "coalesce() found only null and empty strings"));
    }
    let mut best = num_arg(name, &args[0])?;
    for a in &args[1..] {
        let n = num_arg(name, a)?;
        best = if name == "min" {
            best.min(n)
        } else {
            best.max(n)
        };
    }
    Ok(Value::Number(best))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcl_edit::parser::{parse_body, parse_expr};

    fn vars() -> BTreeMap<String, Value> {
        let json = serde_json::json!({
            "port": 8080,
            "name": "web",
            "tier": "gold",
            "replicas": 3,
            "half": 0.5,
            "flag": true,
            "empty": "",
            "nothing": null,
            "list": ["a", "b"],
            "nums": [3, 1, 2],
            "map": { "a": 1, "b-c": "x" },
        });
        serde_json::from_value(json).expect("vars")
    }

    fn ev(src: &str) -> Res {
        let e = parse_expr(src).unwrap_or_else(|err| panic!("parse {src}: {err}"));
        eval(&e, &vars())
    }

    #[test]
    fn evaluates() {
        let table = [
            ("1", "1"),
            ("-1.5", "-1.5"),
            ("\"x\"", "\"x\""),
            ("null", "null"),
            ("[1, \"a\", true]", "[1, \"a\", true]"),
            ("{ a = 1, \"b\" = [2] }", "{ \"a\" = 1, \"b\" = [2] }"),
            ("var.port", "8080"),
            ("var.half", "0.5"),
            ("\"127.0.0.1:${var.port}\"", "\"127.0.0.1:8080\""),
            ("\"${var.port}\"", "\"8080\""),
            ("\"v${var.half}-${var.flag}\"", "\"v0.5-true\""),
            ("\"a ${~ var.name ~} b\"", "\"awebb\""),
            ("<<EOT\nhi ${var.name}\nEOT", "\"hi web\\n\""),
            ("var.list[1]", "\"b\""),
            ("var.list.0", "\"a\""),
            ("var.map[\"b-c\"]", "\"x\""),
            ("var.map.a", "1"),
            ("{ a = [10, 20] }.a[1]", "20"),
            ("var.replicas >= 1 && var.replicas <= 10", "true"),
            ("var.replicas > 3 || var.replicas < 1", "false"),
            ("!var.flag", "false"),
            ("-var.port", "-8080"),
            ("1 + 2 * 3 - 4 / 2", "5"),
            ("(1 + 2) * 3", "9"),
            ("7 % 3", "1"),
            ("0.1 + 0.2 > 0.3", "true"),
            ("var.name == \"web\"", "true"),
            ("var.list == [\"a\", \"b\"]", "true"),
            ("1 == \"1\"", "false"),
            ("var.nothing == null", "true"),
            ("var.nothing != null && length(var.nothing) > 0", "false"),
            ("var.flag || var.missing_is_not_evaluated", "true"),
            ("var.flag ? \"on\" : var.nope", "\"on\""),
            ("var.replicas > 5 ? 1 : 2", "2"),
            ("contains([\"gold\", \"silver\"], var.tier)", "true"),
            ("contains(var.list, \"z\")", "false"),
            ("length(var.name) > 0", "true"),
            ("length(\"héllo\")", "5"),
            ("length(var.list) + length(var.map)", "4"),
            ("upper(var.name)", "\"WEB\""),
            ("lower(\"AbC\")", "\"abc\""),
            ("trimspace(\"  a b \\n\")", "\"a b\""),
            ("startswith(var.name, \"w\")", "true"),
            ("endswith(var.name, \"x\")", "false"),
            ("join(\",\", var.list)", "\"a,b\""),
            ("join(\"-\", [1, true, \"x\"])", "\"1-true-x\""),
            ("split(\",\", \"a,b,,c\")", "[\"a\", \"b\", \"\", \"c\"]"),
            ("split(\"\", \"ab\")", "[\"a\", \"b\"]"),
            ("tostring(var.port)", "\"8080\""),
            ("tostring(null)", "null"),
            ("tonumber(\" 42 \")", "42"),
            ("tonumber(1.5)", "1.5"),
            ("min(3, 1, 2)", "1"),
            ("max(var.nums...)", "3"),
            ("abs(-4)", "4"),
            ("can(var.list[5])", "false"),
            ("can(var.list[1])", "true"),
            ("coalesce(var.nothing, var.empty, \"d\")", "\"d\""),
            ("coalesce(var.nothing, 0)", "0"),
            ("\"$${x} %%{y}\"", "\"$${x} %%{y}\""),
        ];
        for (src, want) in table {
            let got = ev(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(got.to_hcl(), want, "{src}");
        }
    }

    /// (source, text of the span, message contains, hint contains)
    #[test]
    fn errors_are_located() {
        let table: &[(&str, &str, &str, &str)] = &[
            (
                "var.prot + 1",
                "var.prot",
                "unknown variable `prot`",
                "did you mean `port`?",
            ),
            (
                "var.zzzzz",
                "var.zzzzz",
                "unknown variable `zzzzz`",
                "variable \"zzzzz\" { … }",
            ),
            (
                "\"a${var}\"",
                "var",
                "`var` must be followed by a variable name",
                "var.NAME",
            ),
            (
                "\"${service.web}\"",
                "service.web",
                "only var.NAME can be used in an expression; service.web is a reference",
                "alone",
            ),
            (
                "\"${secret.db}\"",
                "secret.db",
                "secret.db is a reference",
                "a secret is used as a whole value (`env = { X = secret.db }`), never inside a string",
            ),
            ("secret.x + 1", "secret.x", "only var.NAME", "whole value"),
            (
                "\"x\" + var.port",
                "\"x\"",
                "`+` needs two numbers, found string and number",
                "template",
            ),
            (
                "var.name * var.list",
                "var.name * var.list",
                "found string and list",
                "",
            ),
            (
                "var.port && true",
                "var.port",
                "`&&` needs two bools, found number and bool",
                "",
            ),
            ("1 < \"2\"", "\"2\"", "found number and string", ""),
            (
                "var.port / (var.replicas - 3)",
                "(var.replicas - 3)",
                "division by zero",
                "",
            ),
            ("5 % 0", "0", "modulo by zero", ""),
            (
                "-var.name",
                "var.name",
                "`-` needs a number, found a string",
                "",
            ),
            ("!1", "1", "`!` needs a bool, found a number", ""),
            (
                "var.port ? 1 : 2",
                "var.port",
                "a condition must be a bool, found a number",
                "",
            ),
            (
                "[for x in var.list : x]",
                "[for x in var.list : x]",
                "for expressions are not supported",
                "",
            ),
            (
                "\"a %{if var.flag}b%{endif}\"",
                "%{if var.flag}b%{endif}",
                "template directives (%{…}) are not supported",
                "conditional",
            ),
            (
                "\"x ${var.list}\"",
                "var.list",
                "cannot insert a list into a string",
                "join",
            ),
            (
                "\"x ${var.nothing}\"",
                "var.nothing",
                "cannot insert null into a string",
                "coalesce",
            ),
            (
                "var.list[2]",
                "2",
                "index 2 is out of range: var.list has 2 element(s)",
                "",
            ),
            ("var.list[var.half]", "var.half", "whole number", ""),
            (
                "var.list[\"a\"]",
                "\"a\"",
                "a list index must be a number, found a string",
                "",
            ),
            (
                "var.map.bc",
                ".bc",
                "var.map has no key \"bc\"",
                "did you mean `b-c`?",
            ),
            ("var.map[\"q\"].x", "\"q\"", "var.map has no key \"q\"", ""),
            (
                "var.name.x",
                ".x",
                "var.name is a string, it has no key \"x\"",
                "",
            ),
            ("var.list[*]", "[*]", "splat", ""),
            (
                "lenght(var.name)",
                "lenght",
                "unknown function `lenght`",
                "did you mean `length`? the functions are abs, can,",
            ),
            (
                "upper(var.list)",
                "var.list",
                "upper() needs a string here, found a list",
                "",
            ),
            (
                "upper(1, 2)",
                "upper(1, 2)",
                "upper() takes 1 argument, found 2",
                "upper(string)",
            ),
            (
                "contains(\"ab\", \"a\")",
                "\"ab\"",
                "contains() needs a list here, found a string",
                "",
            ),
            (
                "abs(\"1\")",
                "\"1\"",
                "abs() needs a number here, found a string",
                "tonumber",
            ),
            (
                "min()",
                "min()",
                "min() needs at least one argument",
                "min(number, …)",
            ),
            (
                "max(var.name...)",
                "var.name",
                "`...` needs a list, found a string",
                "",
            ),
            (
                "tonumber(\"x1\")",
                "\"x1\"",
                "tonumber() cannot read \"x1\" as a number",
                "",
            ),
            ("tonumber(\"inf\")", "\"inf\"", "cannot read", ""),
            ("join(\",\", [[1]])", "[[1]]", "element 0 is a list", ""),
            (
                "coalesce(null, \"\")",
                "coalesce(null, \"\")",
                "coalesce() found only null",
                "",
            ),
            ("can(var.nope)", "var.nope", "unknown variable `nope`", ""),
            ("can(service.web)", "service.web", "only var.NAME", ""),
            ("can(nofn(1))", "nofn", "unknown function `nofn`", ""),
            ("length(foo)", "foo", "unknown name `foo`", "var.foo"),
            ("{ a = 1, \"a\" = 2 }", "\"a\"", "duplicate key \"a\"", ""),
            ("1e300 * 1e300", "1e300 * 1e300", "too large", ""),
        ];
        for &(src, at, msg, hint) in table {
            let err = match ev(src) {
                Ok(v) => panic!("{src}: expected an error, got {v:?}"),
                Err(e) => e,
            };
            let text = src.get(err.span.clone()).unwrap_or("<bad span>");
            assert_eq!(text, at, "span of {src}: {err}");
            assert!(
                err.message.contains(msg),
                "{src}: message {:?}",
                err.message
            );
            let h = err.hint.clone().unwrap_or_default();
            assert!(h.contains(hint), "{src}: hint {h:?}");
            assert!(!err.message.ends_with('.'), "{src}: {}", err.message);
        }
    }

    #[test]
    fn to_hcl_round_trips() {
        let mut map = BTreeMap::new();
        map.insert("with \"quote\"".to_string(), Value::Number(1.0));
        map.insert("${not} a template".to_string(), Value::List(vec![]));
        map.insert("empty".to_string(), Value::Map(BTreeMap::new()));
        let values = [
            Value::Null,
            Value::Bool(false),
            Value::Number(0.0),
            Value::Number(8080.0),
            Value::Number(-3.0),
            Value::Number(0.1),
            Value::Number(-2.5e-7),
            Value::Number(1e300),
            Value::Number(9007199254740993.0),
            Value::Number(u64::MAX as f64),
            Value::String(String::new()),
            Value::String("say \"hi\" \\ back\\slash".into()),
            Value::String("line1\nline2\r\n\ttab".into()),
            Value::String("${var.x} and %{if} and $${x} and $$ and % and $".into()),
            Value::String("$${".into()),
            Value::String("ends with $".into()),
            Value::String("héllo ✓ 🦀 \u{1} \u{7f}".into()),
            Value::List(vec![
                Value::Number(-1.0),
                Value::String("a,b".into()),
                Value::Null,
            ]),
            Value::Map(map),
        ];
        for v in values {
            let text = v.to_hcl();
            let e = parse_expr(&text).unwrap_or_else(|err| panic!("{text}: {err}"));
            assert!(
                !needs_eval(&e) || text.contains("${"),
                "{text} is a literal"
            );
            assert_eq!(eval(&e, &BTreeMap::new()), Ok(v.clone()), "{text}");
        }
        assert_eq!(Value::Number(8080.0).to_hcl(), "8080");
        assert_eq!(Value::Number(-0.0).to_hcl(), "0");
        assert_eq!(Value::Number(f64::NAN).to_hcl(), "null");
        assert_eq!(Value::String("a${b}".into()).to_hcl(), "\"a$${b}\"");
    }

    #[test]
    fn template_strings_and_type_names() {
        assert_eq!(Value::Number(3.0).to_template_string(), Ok("3".into()));
        assert_eq!(Value::Number(0.25).to_template_string(), Ok("0.25".into()));
        assert_eq!(Value::Bool(true).to_template_string(), Ok("true".into()));
        assert_eq!(
            Value::String("a\"b".into()).to_template_string(),
            Ok("a\"b".into())
        );
        assert!(Value::Map(BTreeMap::new()).to_template_string().is_err());
        let names: Vec<&str> = [
            Value::Null,
            Value::Bool(true),
            Value::Number(1.0),
            Value::String(String::new()),
            Value::List(vec![]),
            Value::Map(BTreeMap::new()),
        ]
        .iter()
        .map(Value::type_name)
        .collect();
        assert_eq!(names, ["null", "bool", "number", "string", "list", "map"]);
    }

    #[test]
    fn values_serialize_like_json() {
        let json = r#"{"a":[1,2.5,"x",true,null],"b":{"c":"d"}}"#;
        let v: Value = serde_json::from_str(json).expect("parse");
        let Value::Map(m) = &v else { panic!("{v:?}") };
        assert_eq!(
            m["a"],
            Value::List(vec![
                Value::Number(1.0),
                Value::Number(2.5),
                Value::String("x".into()),
                Value::Bool(true),
                Value::Null
            ])
        );
        assert_eq!(
            serde_json::to_string(&v).expect("write"),
            json.replace("1,", "1.0,")
        );
    }

    #[test]
    fn needs_eval_only_for_expressions() {
        let yes = [
            "var.x",
            "var",
            "\"a${var.x}\"",
            "\"a%{if true}b%{endif}\"",
            "<<EOT\n${var.x}\nEOT",
            "1 + 1",
            "!true",
            "(1)",
            "true ? 1 : 2",
            "upper(\"a\")",
            "[for x in [] : x]",
            "[service.web, var.x]",
            "{ a = { b = var.x } }",
            "{ (var.k) = 1 }",
            "service.web[var.i]",
            "\"${service.web}\"",
        ];
        let no = [
            "1",
            "-1",
            "\"plain\"",
            "\"$${escaped}\"",
            "<<EOT\nplain\nEOT",
            "null",
            "[1, \"a\", service.web]",
            "{ a = 1, \"b\" = secret.db }",
            "service.web",
            "image.x",
            "secret.db",
            "rolling",
        ];
        for src in yes {
            let e = parse_expr(src).expect(src);
            assert!(needs_eval(&e), "{src} needs evaluation");
        }
        for src in no {
            let e = parse_expr(src).expect(src);
            assert!(!needs_eval(&e), "{src} is a literal");
        }
    }

    #[test]
    fn literals_start_where_asked() {
        let v = Value::List(vec![Value::String("a".into()), Value::Number(12.0)]);
        for start in [0, 7, 1000] {
            let e = literal_at(&v, start);
            let len = v.to_hcl().len();
            assert_eq!(e.span(), Some(start..start + len));
            assert_eq!(e.to_string(), "[\"a\", 12]", "no padding is printed");
            let Expression::Array(a) = &e else {
                panic!("{e:?}")
            };
            let first = a.iter().next().expect("element");
            assert_eq!(first.span(), Some(start + 1..start + 4));
            assert_eq!(eval(&e, &BTreeMap::new()), Ok(v.clone()));
        }
        let neg = literal_at(&Value::Number(-5.0), 3);
        assert_eq!(neg.span(), Some(3..5));
    }

    #[test]
    fn substitutes_in_a_body() {
        let src = r#"project = "demo"
variable "port" {
  default = var.port + 1
}
service "web" {
  replicas = var.replicas # how many
  name     = "svc-${var.name}"
  motd     = <<-EOT
    hello ${upper(var.name)}
    EOT
  tags     = [service.web, var.tier, "plain"]
  env      = { A = secret.db, B = "${var.port}", C = 1 }
  check {
    url = "http://127.0.0.1:${var.port}/health"
    bad = "${var.nope}"
  }
}
route "r" {
  listen  = "127.0.0.1:${var.port}"
  service = service.web
  oops    = [var.list[9], var.tier]
}
"#;
        let mut body = parse_body(src).expect("parse");
        let errors = substitute(&mut body, &vars(), &["variable"]);
        let texts: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (&src[e.span.clone()], e.message.as_str()))
            .collect();
        assert_eq!(
            texts,
            [
                ("var.nope", "unknown variable `nope`"),
                ("9", "index 9 is out of range: var.list has 2 element(s)")
            ]
        );
        let want = src
            .replace("replicas = var.replicas", "replicas = 3")
            .replace("\"svc-${var.name}\"", "\"svc-web\"")
            .replace(
                "<<-EOT\n    hello ${upper(var.name)}\n    EOT",
                "\"hello WEB\\n\"",
            )
            .replace("var.tier, \"plain\"", "\"gold\", \"plain\"")
            .replace("B = \"${var.port}\"", "B = \"8080\"")
            .replace(":${var.port}/health", ":8080/health")
            .replace("\"127.0.0.1:${var.port}\"", "\"127.0.0.1:8080\"")
            .replace("var.list[9], var.tier", "var.list[9], \"gold\"");
        assert_eq!(body.to_string(), want);

        // Spans of the replacements start where the original expressions did.
        let service = body.get_blocks("service").next().expect("service");
        let name = service.body.get_attribute("name").expect("name");
        assert_eq!(name.value.span().map(|s| s.start), src.find("\"svc-"));
        let tags = service.body.get_attribute("tags").expect("tags");
        let Expression::Array(tags) = &tags.value else {
            panic!("{tags:?}")
        };
        let tier = tags.iter().nth(1).expect("tier");
        assert_eq!(tier.span(), src.find("var.tier").map(|s| s..s + 6));
        assert!(matches!(tags.iter().next(), Some(Expression::Traversal(_))));
    }
}
