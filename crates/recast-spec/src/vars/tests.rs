use super::*;
use crate::eval::Value;

const SPEC: &str = r#"
variable "port" {
  type        = number
  default     = 8000
  description = "where the route listens"
  validation {
    condition = var.port >= 1024 && var.port <= 65535
    message   = "port must be 1024-65535"
  }
}
variable "tag" {
  type = string
}
environment "staging" {
  variables = { port = 18080, tag = "st" }
}
environment "production" {
  variables = { tag = "pr" }
  require {
    promoted_from = "staging"
    soak          = "10m"
  }
}
image "web" {
  from = "scratch"
  env  = { TAG = "v-${var.tag}" }
  cmd  = ["/web"]
}
service "web" {
  image     = image.web
  port      = 8080
  instances = var.port > 20000 ? 3 : 1
}
route "web" {
  listen  = "127.0.0.1:${var.port}"
  service = service.web
}
"#;

fn load(spec: &str, inputs: &Inputs) -> Result<crate::Project, crate::Diagnostics> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("recast.hcl");
    std::fs::write(&p, spec).expect("write");
    crate::load_with(&p, inputs)
}

fn flag(s: &str) -> VarValue {
    Given::from_flag(s).expect("flag")
}

fn env(k: &str, v: &str) -> VarValue {
    Given::from_env([(format!("RECAST_VAR_{k}"), v.to_string())]).remove(0)
}

fn file(text: &str) -> Vec<VarValue> {
    Given::from_file(Path::new("prod.vars"), text).expect("var file")
}

/// Which value wins: default < environment block < RECAST_VAR_* < --var-file < -var.
#[test]
fn precedence_table() {
    let cases: Vec<(&str, Option<&str>, Vec<VarValue>, f64)> = vec![
        ("default", None, vec![env("tag", "x")], 8000.0),
        (
            "environment block over default",
            Some("staging"),
            vec![],
            18080.0,
        ),
        (
            "RECAST_VAR over environment",
            Some("staging"),
            vec![env("port", "2000")],
            2000.0,
        ),
        (
            "var file over RECAST_VAR",
            Some("staging"),
            [vec![env("port", "2000")], file("port = 3000\n")].concat(),
            3000.0,
        ),
        (
            "-var over var file",
            Some("staging"),
            [
                vec![env("port", "2000")],
                file("port = 3000"),
                vec![flag("port=4000")],
            ]
            .concat(),
            4000.0,
        ),
        (
            "the last -var wins",
            Some("staging"),
            vec![flag("port=4000"), flag("port=5000")],
            5000.0,
        ),
    ];
    for (what, e, vars, want) in cases {
        let inputs = Inputs {
            env: e.map(str::to_string),
            vars,
        };
        let p = load(SPEC, &inputs).unwrap_or_else(|d| panic!("{what}: {d}"));
        assert_eq!(p.variables["port"], Value::Number(want), "{what}");
        assert_eq!(p.routes["web"].listen.port() as f64, want, "{what}");
    }
}

#[test]
fn values_are_substituted_everywhere() {
    let inputs = Inputs {
        env: Some("production".into()),
        vars: vec![flag("port=28080")],
    };
    let p = load(SPEC, &inputs).expect("loads");
    assert_eq!(p.environment.as_deref(), Some("production"));
    assert_eq!(p.images["web"].env["TAG"], "v-pr");
    assert_eq!(p.services["web"].instances, 3);
    let req = p.environments["production"]
        .require
        .as_ref()
        .expect("require");
    assert_eq!(req.promoted_from, "staging");
    assert_eq!(req.soak, std::time::Duration::from_secs(600));
}

fn errors(spec: &str, inputs: &Inputs) -> String {
    match load(spec, inputs) {
        Ok(_) => panic!("loaded"),
        Err(d) => d.to_string(),
    }
}

#[test]
fn problems_are_located() {
    let none = Inputs::default();
    let e = errors(SPEC, &none);
    assert!(
        e.contains("recast.hcl:11:10: error: variable \"tag\" has no value"),
        "{e}"
    );
    assert!(e.contains("--env staging|production"), "{e}");
    let bad = Inputs {
        env: None,
        vars: vec![flag("tag=x"), flag("port=80")],
    };
    let e = errors(SPEC, &bad);
    assert!(
        e.contains("recast.hcl:7:17: error: invalid value for variable \"port\" (from -var port): port must be 1024-65535"),
        "{e}"
    );
    let bad = Inputs {
        env: None,
        vars: vec![flag("tag=x"), flag("port=eighty")],
    };
    let e = errors(SPEC, &bad);
    assert!(
        e.contains("invalid value for variable \"port\" from -var port: expected a number, found \"eighty\""),
        "{e}"
    );
    let bad = Inputs {
        env: Some("qa".into()),
        vars: vec![flag("tag=x"), flag("prot=9000")],
    };
    let e = errors(SPEC, &bad);
    assert!(e.contains("no environment \"qa\" is declared"), "{e}");
    assert!(
        e.contains("declared environments: staging, production"),
        "{e}"
    );
    assert!(
        e.contains("-var prot sets variable \"prot\", which is not declared"),
        "{e}"
    );
    assert!(e.contains("did you mean"), "{e}");
    let e = errors(
        "variable \"n\" {\n  type = numbr\n}\nvariable \"m\" {\n  default = var.n\n}\n",
        &none,
    );
    assert!(e.contains("recast.hcl:2:10: error: invalid type"), "{e}");
    let e = errors(
        "variable \"n\" {\n  type = number\n  default = \"x\"\n}\n",
        &none,
    );
    assert!(
        e.contains("recast.hcl:3:13: error: invalid default of variable \"n\""),
        "{e}"
    );
}

#[test]
fn a_var_file_error_names_its_line() {
    let e = Given::from_file(Path::new("prod.vars"), "port = 1\nblock {}\n").expect_err("block");
    assert_eq!((e.line, e.column), (2, 1), "{e}");
    let v = file("\n\n  tag = \"a\"\n");
    assert_eq!(v[0].from, "prod.vars:3:9");
}
