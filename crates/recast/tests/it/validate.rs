//! `recast validate`: exit codes, human and JSON output (issue 2).

use crate::{example, recast, stderr, stdout};

#[test]
fn the_example_is_valid() {
    let out = recast(&example(), &["validate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "recast.hcl is valid: 1 image, 1 service, 1 route\n"
    );
}

#[test]
fn json_on_a_valid_spec() {
    let out = recast(&example(), &["validate", "--json", "-f", "."]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v, serde_json::json!({ "valid": true, "errors": [] }));
}

#[test]
fn json_on_an_invalid_spec_lists_every_error() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("recast.hcl"),
        "service \"a\" {\n  image = image.nope\n  port  = 70000\n}\n",
    )
    .expect("write");
    let out = recast(dir.path(), &["validate", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is only JSON");
    assert_eq!(
        v,
        serde_json::json!({
            "valid": false,
            "errors": [
                { "file": "recast.hcl", "line": 2, "column": 11, "message": "unknown image `nope`",
                  "hint": "no image is defined; add image \"nope\" { … }" },
                { "file": "recast.hcl", "line": 3, "column": 11,
                  "message": "`port` must be between 1 and 65535, found 70000" },
            ]
        })
    );
}

#[test]
fn human_errors_go_to_stderr_with_the_source_line() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("app.hcl"),
        "route \"web\" {\n  listen = \"nowhere\"\n}\n",
    )
    .expect("write");
    let out = recast(dir.path(), &["validate", "-f", "app.hcl"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert!(
        err.starts_with(
            "app.hcl:1:1: error: missing required attribute `service` in route \"web\"\n"
        ),
        "{err}"
    );
    assert!(
        err.contains("2 |   listen = \"nowhere\"\n  |            ^^^^^^^^^\n"),
        "{err}"
    );
    assert!(err.ends_with("2 errors\n"), "{err}");
}

#[test]
fn a_missing_spec_is_a_located_error_with_a_hint() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = recast(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("recast.hcl:1:1: error: cannot read spec: No such file or directory"),
        "{err}"
    );
    assert!(
        err.contains("hint: run recast in a directory with a recast.hcl, or pass -f PATH"),
        "{err}"
    );
}

#[test]
fn an_unknown_flag_is_a_usage_error() {
    let out = recast(&example(), &["validate", "--jsno"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unexpected argument '--jsno'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn every_command_of_the_brief_is_there() {
    let out = recast(&example(), &["--help"]);
    let help = stdout(&out);
    for cmd in [
        "validate", "build", "test", "image", "server", "up", "plan", "apply", "status", "history",
        "rollback", "promote", "abort", "pause", "resume", "drift", "logs", "destroy", "run",
        "lock",
    ] {
        assert!(
            help.contains(&format!("  {cmd} ")),
            "`recast {cmd}` is missing:\n{help}"
        );
    }
}

#[test]
fn every_command_parses_its_arguments() {
    // clap checks argument definitions (unique short flags, …) when a command is used.
    for cmd in [
        "validate", "build", "test", "run", "image", "server", "up", "plan", "apply", "status",
        "history", "rollback", "promote", "logs", "destroy", "lock",
    ] {
        let out = recast(&example(), &[cmd, "--help"]);
        assert!(
            out.status.success(),
            "recast {cmd} --help failed: {}",
            stderr(&out)
        );
    }
}
