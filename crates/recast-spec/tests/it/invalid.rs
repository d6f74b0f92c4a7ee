//! Invalid specs and the exact errors they produce (issue 2: at least 40 cases).

use crate::{project, render};

/// A valid image every case can reference as `image.app`.
const APP: &str = r#"image "app" {
  from = "scratch"
  copy {
    src  = "bin/app"
    dest = "/bin/app"
  }
  cmd = ["/bin/app"]
}
"#;

/// Check one spec file (appended after `APP` when `with_app`) against its full expected errors.
fn check(with_app: bool, spec: &str, expected: &[&str]) {
    let text = if with_app {
        format!("{APP}{spec}")
    } else {
        spec.to_string()
    };
    let dir = project(&[("recast.hcl", &text)]);
    let got = render(dir.path());
    assert_eq!(got, expected, "\nspec:\n{text}");
}

/// Lines in APP, so that cases appended to it can say where their own lines are.
const L: usize = 8;

fn at(line: usize, col: usize, msg: &str) -> String {
    format!("recast.hcl:{}:{col}: {msg}", line + L)
}

macro_rules! case {
    ($name:ident, $spec:expr, [$($line:expr, $col:expr, $msg:expr);+ $(;)?]) => {
        #[test]
        fn $name() {
            let expected: Vec<String> = vec![$(at($line, $col, $msg)),+];
            let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
            check(true, $spec, &expected);
        }
    };
}

// ---- syntax and structure --------------------------------------------------------------------

#[test]
fn syntax_error_names_line_and_column() {
    check(
        false,
        "image \"x\" {\n  from = \n}\n",
        &[
            "recast.hcl:2:10: syntax error: invalid expression; expected `\"`, `[`, `{`, `-`, `!`, `(`, `_`, `<`, letter or digit",
        ],
    );
}

#[test]
fn unclosed_block() {
    check(
        false,
        "service \"a\" {\n  port = 1\n",
        &["recast.hcl:2:11: syntax error: invalid block body; expected `}`, newline or identifier"],
    );
}

case!(
    unknown_top_level_block,
    "servce \"a\" {}\n",
    [
        1,
        1,
        "unknown block `servce` | hint: did you mean `service`?"
    ]
);

case!(
    top_level_attribute,
    "port = 8080\n",
    [
        1,
        1,
        "unexpected attribute `port` at the top level | hint: the top level takes `project = \"NAME\"` and blocks: image, service, route, guard, webhook, base, registry, secret, variable, environment"
    ]
);

case!(
    image_without_name,
    "image {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\n",
    [
        1,
        1,
        "image block needs a name | hint: write image \"NAME\" { … }"
    ]
);

case!(
    image_two_labels,
    "image \"a\" \"b\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\n",
    [1, 11, "image block takes one label, found 2"]
);

case!(
    invalid_name,
    "image \"Hello World\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\n",
    [
        1,
        7,
        "invalid image name \"Hello World\" | hint: names use lowercase letters, digits, '-', '_' and '.', start with a letter or digit, and have at most 63 characters"
    ]
);

case!(
    unknown_attribute_with_suggestion,
    "service \"a\" {\n  image = image.app\n  port = 80\n  instnces = 3\n}\n",
    [
        4,
        3,
        "unknown attribute `instnces` in service \"a\" | hint: did you mean `instances`?"
    ]
);

case!(
    unknown_block_in_service,
    "service \"a\" {\n  image = image.app\n  port = 80\n  helth {}\n}\n",
    [
        4,
        3,
        "unknown block `helth` in service \"a\" | hint: did you mean `health`?"
    ]
);

case!(
    block_written_as_attribute,
    "service \"a\" {\n  image = image.app\n  port = 80\n  health = \"/healthz\"\n}\n",
    [
        4,
        3,
        "unknown attribute `health` in service \"a\" | hint: `health` is a block: write health { … }"
    ]
);

case!(
    attribute_written_as_block,
    "service \"a\" {\n  image = image.app\n  port = 80\n  env {}\n}\n",
    [
        4,
        3,
        "unknown block `env` in service \"a\" | hint: `env` is an attribute: write env = …"
    ]
);

case!(
    duplicate_attribute,
    "service \"a\" {\n  image = image.app\n  port = 80\n  port = 81\n}\n",
    [
        4,
        3,
        "syntax error: invalid attribute; expected unique attribute key; found redefined attribute"
    ]
);

case!(
    missing_required_port,
    "service \"a\" {\n  image = image.app\n}\n",
    [1, 1, "missing required attribute `port` in service \"a\""]
);

case!(
    missing_required_from,
    "image \"b\" {\n  cmd = [\"/x\"]\n}\n",
    [1, 1, "missing required attribute `from` in image \"b\""]
);

// ---- types -------------------------------------------------------------------------------------

case!(
    port_as_string,
    "service \"a\" {\n  image = image.app\n  port = \"80\"\n}\n",
    [
        3,
        10,
        "`port` must be a number, found a string | hint: remove the quotes: port = 80"
    ]
);

case!(
    instances_as_bool,
    "service \"a\" {\n  image = image.app\n  port = 80\n  instances = true\n}\n",
    [4, 15, "`instances` must be a number, found a bool"]
);

case!(
    cmd_not_a_list,
    "image \"b\" {\n  from = \"scratch\"\n  cmd = \"/bin/app\"\n}\n",
    [3, 9, "`cmd` must be a list of strings, found a string"]
);

case!(
    cmd_with_number,
    "image \"b\" {\n  from = \"scratch\"\n  cmd = [\"/bin/app\", 3]\n}\n",
    [
        3,
        22,
        "`cmd` must be a list of strings, found a number in it"
    ]
);

case!(
    env_not_object,
    "service \"a\" {\n  image = image.app\n  port = 80\n  env = [\"A=1\"]\n}\n",
    [
        4,
        9,
        "`env` must be an object like { KEY = \"value\" }, found a list"
    ]
);

case!(
    env_bad_name,
    "service \"a\" {\n  image = image.app\n  port = 80\n  env = { \"1A\" = \"x\" }\n}\n",
    [4, 11, "invalid environment variable name \"1A\" in `env`"]
);

case!(
    env_sets_port,
    "service \"a\" {\n  image = image.app\n  port = 80\n  env = { PORT = \"9\" }\n}\n",
    [
        4,
        9,
        "`env` must not set PORT | hint: recast sets $PORT from the service's `port` (or a free port with network = \"host\")"
    ]
);

case!(
    undeclared_variable_in_a_template,
    "service \"a\" {\n  image = image.app\n  port = 80\n  env = { A = \"${var.x}\" }\n}\n",
    [
        4,
        18,
        "unknown variable `x` | hint: declare it: variable \"x\" { … }"
    ]
);

case!(
    auto_rollback_not_bool,
    "service \"a\" {\n  image = image.app\n  port = 80\n  rollout {\n    auto_rollback = \"yes\"\n  }\n}\n",
    [
        5,
        21,
        "`auto_rollback` must be a bool (true or false), found a string"
    ]
);

// ---- references --------------------------------------------------------------------------------

case!(
    unknown_image_reference,
    "service \"a\" {\n  image = image.ap\n  port = 80\n}\n",
    [2, 11, "unknown image `ap` | hint: did you mean `app`?"]
);

case!(
    reference_as_string,
    "service \"a\" {\n  image = \"app\"\n  port = 80\n}\n",
    [
        2,
        11,
        "`image` must be a reference like image.NAME, found a string | hint: write a reference without quotes: image = image.app"
    ]
);

case!(
    reference_to_wrong_kind,
    "service \"a\" {\n  image = service.a\n  port = 80\n}\n",
    [
        2,
        11,
        "`image` must reference an image, found a reference to `service` | hint: write image = image.NAME"
    ]
);

case!(
    unknown_service_reference,
    "route \"web\" {\n  listen = \"127.0.0.1:8080\"\n  service = service.web\n}\n",
    [
        3,
        13,
        "unknown service `web` | hint: no service is defined; add service \"web\" { … }"
    ]
);

case!(
    duplicate_image,
    "image \"app\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\n",
    [
        1,
        7,
        "duplicate image \"app\" | hint: image \"app\" is already defined at DIR/recast.hcl:1:7"
    ]
);

// ---- scalar notations --------------------------------------------------------------------------

case!(
    bad_duration,
    "service \"a\" {\n  image = image.app\n  port = 80\n  max_age = \"1 day\"\n}\n",
    [
        4,
        13,
        "invalid duration \"1 day\": expected numbers with units (ms, s, m, h, d), like \"250ms\" or \"1m30s\""
    ]
);

case!(
    duration_as_number,
    "service \"a\" {\n  image = image.app\n  port = 80\n  health {\n    interval = 5\n  }\n}\n",
    [
        5,
        16,
        "`interval` must be a duration string, found a number | hint: add a unit: interval = \"5s\""
    ]
);

case!(
    zero_interval,
    "service \"a\" {\n  image = image.app\n  port = 80\n  health {\n    interval = \"0s\"\n  }\n}\n",
    [5, 16, "`interval` must be more than 0s"]
);

case!(
    bad_mode,
    "image \"b\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n  copy {\n    src = \"bin/app\"\n    dest = \"/app\"\n    mode = \"0955\"\n  }\n}\n",
    [
        7,
        12,
        "invalid file mode \"0955\": expected octal digits like \"0755\""
    ]
);

case!(
    mode_as_number,
    "image \"b\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n  copy {\n    src = \"bin/app\"\n    dest = \"/app\"\n    mode = 755\n  }\n}\n",
    [
        7,
        12,
        "`mode` must be a string of octal digits, found a number | hint: quote it so it stays octal: mode = \"0755\""
    ]
);

case!(
    port_out_of_range,
    "service \"a\" {\n  image = image.app\n  port = 70000\n}\n",
    [3, 10, "`port` must be between 1 and 65535, found 70000"]
);

case!(
    port_zero,
    "service \"a\" {\n  image = image.app\n  port = 0\n}\n",
    [3, 10, "`port` must be between 1 and 65535, found 0"]
);

case!(
    instances_zero,
    "service \"a\" {\n  image = image.app\n  port = 80\n  instances = 0\n}\n",
    [4, 15, "`instances` must be between 1 and 1000, found 0"]
);

case!(
    instances_negative,
    "service \"a\" {\n  image = image.app\n  port = 80\n  instances = -2\n}\n",
    [4, 15, "`instances` must be between 1 and 1000, found -2"]
);

case!(
    bad_listen_address,
    "service \"a\" {\n  image = image.app\n  port = 80\n}\nroute \"web\" {\n  listen = \"localhost:80\"\n  service = service.a\n}\n",
    [
        6,
        12,
        "invalid listen address \"localhost:80\": expected IP:PORT, like \"127.0.0.1:8080\""
    ]
);

case!(
    bad_memory,
    "service \"a\" {\n  image = image.app\n  port = 80\n  memory = \"lots\"\n}\n",
    [
        4,
        12,
        "invalid size \"lots\": expected a number with a unit, like \"256MiB\" or \"1GiB\""
    ]
);

case!(
    cpus_zero,
    "service \"a\" {\n  image = image.app\n  port = 80\n  cpus = 0\n}\n",
    [
        4,
        10,
        "`cpus` must be more than 0 and at most 1024, found 0"
    ]
);

case!(
    user_namespace_not_bool,
    "service \"a\" {\n  image = image.app\n  port = 80\n  user_namespace = \"yes\"\n}\n",
    [
        4,
        20,
        "`user_namespace` must be a bool (true or false), found a string"
    ]
);

case!(
    bad_network,
    "service \"a\" {\n  image = image.app\n  port = 80\n  network = \"hots\"\n}\n",
    [
        4,
        13,
        "invalid `network` \"hots\": expected \"private\" or \"host\" | hint: did you mean \"host\"?"
    ]
);

case!(
    bad_registry_base,
    "image \"b\" {\n  from = \"docker.io/library/Alpine:3\"\n  cmd = [\"/x\"]\n}\n",
    [
        2,
        10,
        "invalid base image \"docker.io/library/Alpine:3\": the repository name must be lowercase | hint: use \"scratch\", \"oci:DIR[:TAG]\", \"oci-archive:FILE[:TAG]\", \"docker-archive:FILE\", or a registry reference such as \"debian:12\" or \"REGISTRY/REPO@sha256:DIGEST\""
    ]
);

case!(
    bad_registry_tag,
    "image \"b\" {\n  from = \"debian:bookworm/slim\"\n  cmd = [\"/x\"]\n}\n",
    [
        2,
        10,
        "invalid base image \"debian:bookworm/slim\": invalid registry host \"debian:bookworm\" | hint: use \"scratch\", \"oci:DIR[:TAG]\", \"oci-archive:FILE[:TAG]\", \"docker-archive:FILE\", or a registry reference such as \"debian:12\" or \"REGISTRY/REPO@sha256:DIGEST\""
    ]
);

case!(
    base_block_problems,
    "base \"debian:12\" {\n  source = \"oci:nope\"\n}\nbase \"Debian:12\" {\n  source = \"scratch\"\n}\nbase \"docker.io/library/debian:12\" {\n  source = \"debian:12.5\"\n}\nbase \"debian:12.5\" {\n  source = \"debian@sha256:abc\"\n  sourc = \"x\"\n}\nbase {\n}\nbase \"alpine\" {\n}\n",
    [
        2,
        12,
        "base image layout \"nope\" does not exist | hint: paths are relative to the spec file's directory; looked for DIR/nope";
        4,
        6,
        "invalid image reference \"Debian:12\" in base block: the repository name must be lowercase | hint: a base block names a registry reference, such as \"debian:12\" or \"registry.example.com/team/app:1\"";
        7,
        6,
        "duplicate base \"docker.io/library/debian:12\" | hint: docker.io/library/debian:12 already has a base block at DIR/recast.hcl:9:6";
        11,
        12,
        "invalid image digest in base \"debian@sha256:abc\" | hint: a digest is sha256: followed by 64 lowercase hex digits";
        12,
        3,
        "unknown attribute `sourc` in base \"debian:12.5\" | hint: did you mean `source`?";
        14,
        1,
        "base block needs the image reference it replaces | hint: write base \"debian:12\" { source = \"oci-archive:debian.tar\" }";
        14,
        1,
        "missing required attribute `source` in base";
        16,
        1,
        "missing required attribute `source` in base \"alpine\""
    ]
);

case!(
    bad_digest,
    "image \"b\" {\n  from = \"registry.local/app@sha256:abc\"\n  cmd = [\"/x\"]\n}\n",
    [
        2,
        10,
        "invalid image digest in base \"registry.local/app@sha256:abc\" | hint: a digest is sha256: followed by 64 lowercase hex digits"
    ]
);

case!(
    missing_copy_source,
    "image \"b\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n  copy {\n    src = \"dist/nope\"\n    dest = \"/app\"\n  }\n}\n",
    [
        5,
        11,
        "copy source \"dist/nope\" does not exist | hint: paths are relative to the spec file's directory; looked for DIR/dist/nope"
    ]
);

case!(
    relative_copy_destination,
    "image \"b\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n  copy {\n    src = \"bin/app\"\n    dest = \"app\"\n  }\n}\n",
    [
        6,
        12,
        "copy destination must be an absolute path, found \"app\" | hint: write \"/app\""
    ]
);

case!(
    scratch_without_cmd,
    "image \"b\" {\n  from = \"scratch\"\n}\n",
    [
        1,
        1,
        "image \"b\" has neither `cmd` nor `entrypoint` | hint: an image from scratch needs something to run: cmd = [\"/bin/app\"]"
    ]
);

case!(
    bad_owner,
    "image \"b\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n  copy {\n    src = \"bin/app\"\n    dest = \"/app\"\n    owner = \"root\"\n  }\n}\n",
    [
        7,
        13,
        "invalid owner \"root\": expected numeric UID:GID, like \"1000:1000\""
    ]
);

case!(
    health_path_relative,
    "service \"a\" {\n  image = image.app\n  port = 80\n  health {\n    http = \"healthz\"\n  }\n}\n",
    [
        5,
        12,
        "`http` must be a URL path starting with '/', found \"healthz\" | hint: write http = \"/healthz\""
    ]
);

case!(
    two_health_checks,
    "service \"a\" {\n  image = image.app\n  port = 80\n  health {\n    http = \"/healthz\"\n    tcp = true\n  }\n}\n",
    [
        6,
        5,
        "a health block takes one of `http`, `tcp` or `exec` | hint: keep one check per service"
    ]
);

// ---- rollouts ----------------------------------------------------------------------------------

const SVC: &str = "service \"a\" {\n  image = image.app\n  port = 80\n  rollout {\n";

fn rollout_case(body: &str, expected: &[(usize, usize, &str)]) {
    let spec = format!("{SVC}{body}  }}\n}}\n");
    let expected: Vec<String> = expected.iter().map(|(l, c, m)| at(*l, *c, m)).collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    check(true, &spec, &expected);
}

#[test]
fn unknown_strategy() {
    rollout_case(
        "    strategy = \"canery\"\n",
        &[(
            5,
            16,
            "invalid `strategy` \"canery\": expected \"rolling\" or \"blue_green\" or \"canary\" or \"recreate\" | hint: did you mean \"canary\"?",
        )],
    );
}

#[test]
fn canary_weights_not_increasing() {
    rollout_case(
        "    strategy = \"canary\"\n    step { weight = 50 }\n    step { weight = 50 }\n",
        &[(
            7,
            21,
            "canary weights must increase strictly, but 50 follows 50 | hint: each step sends a larger share of requests to the new release",
        )],
    );
}

#[test]
fn canary_weight_out_of_range() {
    rollout_case(
        "    strategy = \"canary\"\n    step { weight = 0 }\n    step { weight = 150 }\n",
        &[
            (6, 21, "`weight` must be between 1 and 100, found 0"),
            (7, 21, "`weight` must be between 1 and 100, found 150"),
        ],
    );
}

#[test]
fn canary_without_steps() {
    rollout_case(
        "    strategy = \"canary\"\n",
        &[(
            4,
            3,
            "strategy \"canary\" needs at least one step | hint: add step { weight = 10  pause = \"30s\" }",
        )],
    );
}

#[test]
fn knob_of_another_strategy() {
    rollout_case(
        "    strategy = \"blue_green\"\n    max_surge = 2\n",
        &[(
            6,
            5,
            "`max_surge` does not apply to strategy \"blue_green\" | hint: it is a knob of strategy \"rolling\"",
        )],
    );
}

#[test]
fn step_in_rolling() {
    rollout_case(
        "    step { weight = 10 }\n",
        &[(
            5,
            5,
            "`step` does not apply to strategy \"rolling\" | hint: steps belong to strategy \"canary\"",
        )],
    );
}

#[test]
fn rolling_that_cannot_progress() {
    rollout_case(
        "    max_surge = 0\n    max_unavailable = 0\n",
        &[(
            5,
            17,
            "`max_surge` and `max_unavailable` are both 0, so the rollout could never make progress | hint: allow at least one: max_surge = 1",
        )],
    );
}

#[test]
fn bad_percentage() {
    rollout_case(
        "    max_surge = \"150%\"\n",
        &[(
            5,
            17,
            "invalid `max_surge` \"150%\": expected a number or a percentage | hint: write max_surge = 1 or max_surge = \"25%\"",
        )],
    );
}

#[test]
fn analysis_without_thresholds() {
    rollout_case(
        "    analysis {\n      interval = \"5s\"\n    }\n",
        &[(
            5,
            5,
            "analysis judges nothing: set `max_error_rate` or `max_p99_latency` | hint: for example max_error_rate = 0.01",
        )],
    );
}

#[test]
fn error_rate_above_one() {
    rollout_case(
        "    analysis {\n      max_error_rate = 5\n    }\n",
        &[(6, 24, "`max_error_rate` must be between 0 and 1, found 5")],
    );
}

case!(
    preview_clashes_with_route,
    "service \"a\" {\n  image = image.app\n  port = 80\n  rollout {\n    strategy = \"blue_green\"\n    preview_listen = \"127.0.0.1:8080\"\n  }\n}\nroute \"web\" {\n  listen = \"0.0.0.0:8080\"\n  service = service.a\n}\n",
    [
        10,
        12,
        "listen address 0.0.0.0:8080 is already in use by this project | hint: it is also used at DIR/recast.hcl:14:22"
    ]
);

case!(
    two_routes_same_address,
    "service \"a\" {\n  image = image.app\n  port = 80\n}\nroute \"web\" {\n  listen = \"127.0.0.1:8080\"\n  service = service.a\n}\nroute \"api\" {\n  listen = \"127.0.0.1:8080\"\n  service = service.a\n}\n",
    [
        10,
        12,
        "listen address 127.0.0.1:8080 is already in use by this project | hint: it is also used at DIR/recast.hcl:14:12"
    ]
);

// ---- guard, webhook, volumes -------------------------------------------------------------------

case!(
    bad_on_drift,
    "guard {\n  on_drift = \"fix\"\n}\n",
    [
        2,
        14,
        "invalid `on_drift` \"fix\": expected \"replace\" or \"report\""
    ]
);

case!(
    two_guards,
    "guard {}\nguard {}\n",
    [
        2,
        1,
        "a project takes at most one guard block | hint: the first is at DIR/recast.hcl:9:1"
    ]
);

case!(
    registry_problems,
    "registry {\n  url = \"http://127.0.0.1:5000\"\n  insecure = \"yes\"\n  urls = \"x\"\n}\nregistry {\n  url = \"127.0.0.1:5000/team\"\n}\nregistry \"hub\" {\n  url = \"127.0.0.1:5000\"\n}\n",
    [
        2,
        9,
        "invalid registry url \"http://127.0.0.1:5000\": a registry url has no scheme | hint: write url = \"HOST[:PORT]/PREFIX\", such as \"registry.example.com/team\" (plain HTTP: insecure = true)";
        3,
        14,
        "`insecure` must be a bool (true or false), found a string";
        4,
        3,
        "unknown attribute `urls` in registry | hint: did you mean `url`?";
        6,
        1,
        "a project takes at most one registry block | hint: the first is at DIR/recast.hcl:9:1";
        9,
        10,
        "registry block takes no label";
    ]
);

case!(
    registry_without_url,
    "registry {\n  insecure = true\n}\n",
    [1, 1, "missing required attribute `url` in registry"]
);

case!(
    registry_url_with_a_tag,
    "registry {\n  url = \"registry.example.com/team:v1\"\n}\n",
    [
        2,
        9,
        "invalid registry url \"registry.example.com/team:v1\": a registry url names no tag: recast tags each image itself | hint: write url = \"HOST[:PORT]/PREFIX\", such as \"registry.example.com/team\" (plain HTTP: insecure = true)"
    ]
);

case!(
    registry_and_an_image_name_it_cannot_take,
    "image \"web-\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\nservice \"web\" {\n  image = image.web-\n  port = 80\n}\nregistry {\n  url = \"127.0.0.1:5000/team\"\n}\n",
    [
        1,
        7,
        "image \"web-\" cannot be pushed to registry 127.0.0.1:5000/team: \"web-\" is not a repository name component (lowercase letters and digits, separated by '.', '_', '__' or dashes) | hint: images are pushed as URL/IMAGE (127.0.0.1:5000/team/web-); rename the image"
    ]
);

case!(
    unknown_webhook_event,
    "webhook \"chat\" {\n  url = \"http://127.0.0.1:9000/hook\"\n  events = [\"rollout.strated\"]\n}\n",
    [
        3,
        13,
        "unknown webhook event \"rollout.strated\" | hint: did you mean `rollout.started`?"
    ]
);

case!(
    bad_webhook_url,
    "webhook \"chat\" {\n  url = \"ftp://x\"\n  events = [\"rollout.started\"]\n}\n",
    [
        2,
        9,
        "invalid webhook url \"ftp://x\": expected http:// or https:// and a host"
    ]
);

case!(
    route_timeout_zero,
    "service \"a\" {\n  image = image.app\n  port = 80\n}\nroute \"web\" {\n  listen = \"127.0.0.1:8080\"\n  service = service.a\n  timeout = \"0s\"\n}\n",
    [8, 13, "`timeout` must be more than 0s"]
);

case!(
    route_unknown_protocol,
    "service \"a\" {\n  image = image.app\n  port = 80\n}\nroute \"db\" {\n  listen = \"127.0.0.1:15432\"\n  service = service.a\n  protocol = \"tpc\"\n}\n",
    [
        8,
        14,
        "invalid `protocol` \"tpc\": expected \"http\" or \"tcp\" | hint: did you mean \"tcp\"?"
    ]
);

case!(
    timeout_on_a_tcp_route,
    "service \"a\" {\n  image = image.app\n  port = 80\n}\nroute \"db\" {\n  listen = \"127.0.0.1:15432\"\n  service = service.a\n  protocol = \"tcp\"\n  timeout = \"5s\"\n}\n",
    [
        9,
        3,
        "`timeout` is for HTTP routes: it bounds the wait for response headers | hint: remove it; a tcp route passes connections through for as long as they last"
    ]
);

case!(
    drain_timeout_over_an_hour,
    "service \"a\" {\n  image = image.app\n  port = 80\n  drain_timeout = \"2h\"\n}\n",
    [4, 19, "`drain_timeout` must be at most 1h"]
);

case!(
    drain_timeout_not_a_duration,
    "service \"a\" {\n  image = image.app\n  port = 80\n  drain_timeout = \"soon\"\n}\n",
    [
        4,
        19,
        "invalid duration \"soon\": expected numbers with units (ms, s, m, h, d), like \"250ms\" or \"1m30s\""
    ]
);

case!(
    volume_on_tmp,
    "service \"a\" {\n  image = image.app\n  port = 80\n  volume \"t\" { mount = \"/tmp\" }\n}\n",
    [
        4,
        24,
        "volume mount \"/tmp\" is not allowed: / is the image and /tmp is private"
    ]
);

case!(
    duplicate_volume_mount,
    "service \"a\" {\n  image = image.app\n  port = 80\n  volume \"x\" { mount = \"/data\" }\n  volume \"y\" { mount = \"/data\" }\n}\n",
    [
        5,
        24,
        "volume mount \"/data\" is already used by volume \"x\""
    ]
);

// ---- networks: protocol, allow_from, egress ---------------------------------------------------

/// Two services, "web" and "a"; `attrs` go into "a", whose first attribute line is 8 (after
/// `image` and `port`).
const NET: &str = "service \"web\" {\n  image = image.app\n  port = 80\n}\nservice \"a\" {\n  image = image.app\n  port = 80\n";

macro_rules! net_case {
    ($name:ident, $attrs:expr, [$($line:expr, $col:expr, $msg:expr);+ $(;)?]) => {
        #[test]
        fn $name() {
            let expected: Vec<String> = vec![$(at($line, $col, $msg)),+];
            let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
            check(true, &format!("{NET}{}}}\n", $attrs), &expected);
        }
    };
}

net_case!(
    service_protocol_unknown,
    "  protocol = \"udp\"\n",
    [
        8,
        14,
        "invalid `protocol` \"udp\": expected \"http\" or \"tcp\""
    ]
);

net_case!(
    allow_from_unknown_service_suggests_the_closest,
    "  allow_from = [service.web, service.wbe]\n",
    [8, 30, "unknown service `wbe` | hint: did you mean `web`?"]
);

net_case!(
    allow_from_unknown_service_lists_those_defined,
    "  allow_from = [service.database]\n",
    [
        8,
        17,
        "unknown service `database` | hint: defined services: web, a"
    ]
);

net_case!(
    allow_from_listed_twice,
    "  allow_from = [service.web, service.a, service.web]\n",
    [8, 41, "service `web` is listed twice in `allow_from`"]
);

net_case!(
    allow_from_not_a_list,
    "  allow_from = service.web\n",
    [
        8,
        16,
        "`allow_from` must be a list of service references, found a reference | hint: write a list: allow_from = [service.NAME]"
    ]
);

net_case!(
    allow_from_a_string,
    "  allow_from = \"web\"\n",
    [
        8,
        16,
        "`allow_from` must be a list of service references, found a string | hint: write allow_from = [service.NAME, …], or [] to let no service connect"
    ]
);

net_case!(
    allow_from_quoted_name_in_the_list,
    "  allow_from = [\"web\"]\n",
    [
        8,
        17,
        "`allow_from` must be a list of references like service.NAME, found a string in it | hint: write a reference without quotes: allow_from = [service.web]"
    ]
);

net_case!(
    allow_from_an_image,
    "  allow_from = [image.app]\n",
    [
        8,
        17,
        "`allow_from` must reference a service, found a reference to `image` | hint: write allow_from = [service.NAME]"
    ]
);

net_case!(
    egress_unknown_word_suggests,
    "  egress = \"al\"\n",
    [
        8,
        12,
        "invalid `egress` \"al\": expected \"none\", \"all\" or a list of destinations | hint: did you mean \"all\"?"
    ]
);

net_case!(
    egress_one_destination_needs_a_list,
    "  egress = \"10.0.0.0/8\"\n",
    [
        8,
        12,
        "invalid `egress` \"10.0.0.0/8\": expected \"none\", \"all\" or a list of destinations | hint: write a list: egress = [\"10.0.0.0/8\"]"
    ]
);

net_case!(
    egress_not_a_string_or_list,
    "  egress = false\n",
    [
        8,
        12,
        "`egress` must be a string or a list of strings, found a bool | hint: write egress = \"none\", \"all\" or [\"HOST[:PORT]\", …]"
    ]
);

net_case!(
    egress_network_with_host_bits,
    "  egress = [\"192.168.1.5\", \"10.1.2.3/8\"]\n",
    [
        8,
        28,
        "invalid egress destination \"10.1.2.3/8\": 10.1.2.3/8 has host bits set; write \"10.0.0.0/8\""
    ]
);

net_case!(
    every_bad_egress_entry_is_reported,
    "  egress = [\n    \"db.example.com:0\",\n    \"db_1.example.com\",\n    \"fd00::1:54321\",\n    \"10.0.0.0/33\",\n    443,\n  ]\n",
    [
        9,
        5,
        "invalid egress destination \"db.example.com:0\": port \"0\" must be 1-65535";
        10,
        5,
        "invalid egress destination \"db_1.example.com\": a host name has only letters, digits, '-' and '.'; expected an IP address, a CIDR network or a host name, optionally with :PORT, like \"10.0.0.0/8\" or \"db.example.com:5432\"";
        11,
        5,
        "invalid egress destination \"fd00::1:54321\": expected an IP address, a CIDR network or a host name, optionally with :PORT, like \"10.0.0.0/8\" or \"db.example.com:5432\"; an IPv6 address with a port is written [ADDR]:PORT";
        12,
        5,
        "invalid egress destination \"10.0.0.0/33\": prefix length \"33\" must be 0-32";
        13,
        5,
        "`egress` must be a list of strings, found a number in it"
    ]
);

net_case!(
    egress_listed_twice,
    "  egress = [\"db.example.com:5432\", \"10.0.0.0/8\", \"DB.example.com:5432\"]\n",
    [
        8,
        50,
        "egress destination \"DB.example.com:5432\" is listed twice"
    ]
);

net_case!(
    egress_on_the_host_network,
    "  network = \"host\"\n  egress = [\"10.0.0.0/8\"]\n",
    [
        9,
        3,
        "`egress` does not apply to a service with network = \"host\": its instances are not on the project network | hint: remove it, or use network = \"private\""
    ]
);

net_case!(
    egress_none_on_the_host_network,
    "  egress = []\n  network = \"host\"\n",
    [
        8,
        3,
        "`egress` does not apply to a service with network = \"host\": its instances are not on the project network | hint: remove it, or use network = \"private\""
    ]
);

net_case!(
    allow_from_on_the_host_network,
    "  network = \"host\"\n  allow_from = [service.web]\n  egress = \"all\"\n",
    [
        9,
        3,
        "`allow_from` does not apply to a service with network = \"host\": its instances are not on the project network | hint: remove it, or use network = \"private\""
    ]
);

#[test]
fn allow_from_names_a_service_of_another_file() {
    let dir = project(&[
        (
            "a.hcl",
            &format!(
                "{APP}service \"web\" {{\n  image = image.app\n  port = 80\n  allow_from = [service.api, service.ap]\n}}\n"
            ),
        ),
        (
            "b.hcl",
            "service \"api\" {\n  image = image.app\n  port = 81\n}\n",
        ),
    ]);
    assert_eq!(
        render(dir.path()),
        ["a.hcl:12:30: unknown service `ap` | hint: did you mean `api`?"]
    );
}

// ---- several problems and several files --------------------------------------------------------

#[test]
fn all_problems_are_reported_at_once() {
    let spec = "service \"a\" {\n  image = image.nope\n  port = \"x\"\n  instances = 0\n  colour = \"red\"\n}\n";
    let dir = project(&[("recast.hcl", &format!("{APP}{spec}"))]);
    assert_eq!(render(dir.path()).len(), 4, "{:?}", render(dir.path()));
}

#[test]
fn duplicate_across_files_names_both() {
    let dir = project(&[
        ("a.hcl", APP),
        (
            "b.hcl",
            "\nimage \"app\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\n",
        ),
    ]);
    assert_eq!(
        render(dir.path()),
        [
            "b.hcl:2:7: duplicate image \"app\" | hint: image \"app\" is already defined at DIR/a.hcl:1:7"
        ]
    );
}

#[test]
fn reference_across_files_resolves() {
    let dir = project(&[
        ("images.hcl", APP),
        (
            "services.hcl",
            "service \"a\" {\n  image = image.app\n  port = 80\n}\n",
        ),
    ]);
    assert_eq!(render(dir.path()), Vec::<String>::new());
}

#[test]
fn empty_directory_is_an_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let diags = recast_spec::load(dir.path()).expect_err("no spec");
    assert_eq!(diags.len(), 1);
    assert_eq!(
        diags.iter().next().map(|d| d.message.as_str()),
        Some("no spec files (*.hcl) in this directory")
    );
}

#[test]
fn rendered_error_shows_the_line_and_a_caret() {
    let dir = project(&[(
        "recast.hcl",
        "service \"a\" {\n  image = image.x\n  port = 80\n}\n",
    )]);
    let diags = recast_spec::load(dir.path()).expect_err("invalid");
    let text = diags.to_string();
    let file = dir.path().join("recast.hcl");
    assert_eq!(
        text,
        format!(
            "{}:2:11: error: unknown image `x`\n  |\n2 |   image = image.x\n  |           ^^^^^^^\n  hint: no image is defined; add image \"x\" {{ … }}\n1 error",
            file.display()
        )
    );
}

// ---- project identity, name limits, what an API caller may see (issue 10) ------------------

case!(
    project_name_invalid,
    "project = \"My Shop\"\n",
    [
        1,
        11,
        "invalid project name \"My Shop\" | hint: names use lowercase letters, digits, '-', '_' and '.', start with a letter or digit, and have at most 63 characters"
    ]
);

case!(
    project_name_not_a_string,
    "project = 42\n",
    [1, 11, "`project` must be a string, found a number"]
);

case!(
    project_name_too_long,
    &format!("project = \"{}\"\n", "p".repeat(64)),
    [
        1,
        11,
        &format!(
            "invalid project name \"{}\" | hint: names use lowercase letters, digits, '-', '_' and '.', start with a letter or digit, and have at most 63 characters",
            "p".repeat(64)
        )
    ]
);

#[test]
fn project_set_in_two_files_names_both_places() {
    let dir = project(&[
        ("a.hcl", &format!("project = \"shop\"\n{APP}")),
        ("b.hcl", "\n\nproject = \"shop\"\n"),
    ]);
    assert_eq!(
        render(dir.path()),
        [format!(
            "b.hcl:3:1: `project` is set more than once | hint: the project is already named \"shop\" at {}:1:1; set it in one file only",
            dir.path().join("a.hcl").display()
        )
        .replace(&dir.path().display().to_string(), "DIR")]
    );
}

case!(
    service_name_longer_than_an_instance_hostname_allows,
    &format!(
        "service \"{}\" {{\n  image = image.app\n  port = 80\n}}\n",
        "s".repeat(43)
    ),
    [
        1,
        9,
        &format!(
            "service name \"{}\" is 43 characters long, at most 42 are allowed | hint: instance ids and hostnames are NAME-rRELEASE-XXXXXXXX and must fit in 63 characters; shorten the name to 42 characters or fewer",
            "s".repeat(43)
        )
    ]
);

#[test]
fn service_name_of_the_longest_allowed_length_is_valid() {
    let name = "s".repeat(recast_spec::MAX_SERVICE_NAME);
    let dir = project(&[(
        "recast.hcl",
        &format!("{APP}service \"{name}\" {{\n  image = image.app\n  port = 80\n}}\n"),
    )]);
    assert_eq!(render(dir.path()), Vec::<String>::new());
    // Its instance ids fit in a hostname (63 characters) up to release 9,999,999,999.
    assert!(format!("{name}-r9999999999-0123abcd").len() <= 63);
}

case!(
    webhook_url_error_shows_no_credentials,
    "webhook \"w\" {\n  url = \"ftp://user:pass@host/x?token=SECRET\"\n  events = [\"rollout.started\"]\n}\n",
    [
        2,
        9,
        "invalid webhook url \"ftp://***@host/x?token=***\": expected http:// or https:// and a host"
    ]
);

#[test]
fn without_source_keeps_the_location_and_drops_the_content() {
    let dir = project(&[("recast.hcl", "root:$6$salt$hash:19000:0:99999:7:::\n")]);
    let diags = recast_spec::load(dir.path()).expect_err("not HCL");
    let text = diags.without_source().to_string();
    assert!(
        text.starts_with(&format!("{}:1:", dir.path().join("recast.hcl").display())),
        "{text}"
    );
    for secret in ["salt", "hash", "19000", "root"] {
        assert!(!text.contains(secret), "content echoed: {text}");
    }
}

#[test]
fn a_spec_path_that_is_not_a_regular_file_is_refused_without_reading_it() {
    let diags = recast_spec::load(std::path::Path::new("/dev/zero")).expect_err("a device");
    let text = diags.to_string();
    assert!(
        text.contains("/dev/zero") && text.contains("not a regular file"),
        "{text}"
    );
}

case!(
    run_with_shell_and_command,
    "image \"a\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n  run {\n    shell = \"true\"\n    command = [\"/bin/true\"]\n  }\n}\n",
    [
        6,
        5,
        "a run step takes one of `shell` and `command`, not both | hint: `shell = \"…\"` runs through /bin/sh -c; `command = [\"/bin/x\", \"arg\"]` runs directly"
    ]
);

case!(
    run_without_a_command,
    "image \"a\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n  run {\n    user = \"0\"\n  }\n}\n",
    [
        4,
        3,
        "a run step needs `shell` or `command` | hint: run { shell = \"apt-get update\" } or run { command = [\"/usr/sbin/useradd\", \"app\"] }"
    ]
);

case!(
    tmpfs_relative,
    "service \"a\" {\n  image = image.app\n  port = 80\n  tmpfs = [\"run\"]\n}\n",
    [4, 11, "tmpfs path \"run\" must be absolute"]
);

// ---- exclusive volumes and recreate -------------------------------------------------------------

case!(
    exclusive_volume_with_two_instances,
    "service \"db\" {\n  image = image.app\n  port = 5432\n  instances = 2\n  volume \"data\" {\n    mount = \"/data\"\n    exclusive = true\n  }\n}\n",
    [
        4,
        15,
        "`instances = 2` with exclusive volume \"data\": an exclusive volume allows one instance at a time | hint: set instances = 1, or drop `exclusive = true` if the software can share the volume"
    ]
);

case!(
    exclusive_volume_with_rolling,
    "service \"db\" {\n  image = image.app\n  port = 5432\n  volume \"data\" {\n    mount = \"/data\"\n    exclusive = true\n  }\n  rollout {\n    strategy = \"rolling\"\n  }\n}\n",
    [
        9,
        16,
        "strategy \"rolling\" would run two instances on exclusive volume \"data\" | hint: an exclusive volume rolls out by strategy \"recreate\" (the default for it)"
    ]
);

case!(
    exclusive_volume_with_rolling_knob,
    "service \"db\" {\n  image = image.app\n  port = 5432\n  volume \"data\" {\n    mount = \"/data\"\n    exclusive = true\n  }\n  rollout {\n    max_surge = 2\n  }\n}\n",
    [
        9,
        5,
        "`max_surge` does not apply to strategy \"recreate\" | hint: a service with exclusive volume \"data\" rolls out by strategy \"recreate\""
    ]
);

case!(
    recreate_with_rolling_knob,
    "service \"db\" {\n  image = image.app\n  port = 5432\n  rollout {\n    strategy = \"recreate\"\n    min_healthy_time = \"1s\"\n  }\n}\n",
    [
        6,
        5,
        "`min_healthy_time` does not apply to strategy \"recreate\" | hint: it is a knob of strategy \"rolling\""
    ]
);

case!(
    exclusive_not_a_bool,
    "service \"db\" {\n  image = image.app\n  port = 5432\n  volume \"data\" {\n    mount = \"/data\"\n    exclusive = \"yes\"\n  }\n}\n",
    [
        6,
        17,
        "`exclusive` must be a bool (true or false), found a string"
    ]
);

case!(
    secret_without_a_source,
    "secret \"db\" {\n}\n",
    [
        1,
        1,
        "secret \"db\" has no source | hint: write one of from_file = \"PATH\", from_env = \"NAME\", from_command = [\"CMD\", \"ARG\"]"
    ]
);

case!(
    secret_with_two_sources,
    "secret \"db\" {\n  from_env  = \"DB\"\n  from_file = \"db.txt\"\n}\n",
    [
        3,
        3,
        "secret \"db\" takes only one of from_file, from_env, from_command"
    ]
);

case!(
    undeclared_secret,
    "secret \"db_password\" {\n  from_env = \"DB\"\n}\nservice \"a\" {\n  image = image.app\n  port = 80\n  env = { PW = secret.db_pasword }\n}\n",
    [
        7,
        16,
        "unknown secret `db_pasword` | hint: did you mean `db_password`?"
    ]
);

case!(
    secret_inside_a_string,
    "secret \"db\" {\n  from_env = \"DB\"\n}\nservice \"a\" {\n  image = image.app\n  port = 80\n  env = { URL = \"pg://u:${secret.db}@h\" }\n}\n",
    [
        7,
        27,
        "only var.NAME can be used in an expression; secret.db is a reference | hint: a secret is used as a whole value (`env = { X = secret.db }`), never inside a string or an expression"
    ]
);

case!(
    secret_file_in_proc,
    "secret \"db\" {\n  from_env = \"DB\"\n}\nservice \"a\" {\n  image = image.app\n  port = 80\n  secret_file {\n    secret = secret.db\n    path   = \"/proc/x\"\n  }\n}\n",
    [9, 14, "a secret_file cannot be mounted at \"/proc/x\""]
);
