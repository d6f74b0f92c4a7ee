//! Image tests: an image's `test` block run against a throwaway instance.

use crate::health::{self, http_get};
use crate::{Instance, InstanceSpec, Network, Runtime, new_id};
use recast_image::Digest;
use recast_spec::{Health, HealthCheck, HttpTest, Image, ImageTest};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub image: String,
    pub digest: String,
    /// No test block: nothing was run.
    pub skipped: bool,
    pub passed: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub checks: Vec<Check>,
    pub duration_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub passed: bool,
    pub detail: String,
}

/// Run `image`'s test block (built as `digest`) in a throwaway instance, then remove it.
/// `tmpfs`: the scratch directories the services running this image get (see
/// [`recast_spec::Project::tmpfs_of_image`]).
pub fn test_image(rt: &Runtime, image: &Image, digest: &Digest, tmpfs: &[String]) -> Outcome {
    let t0 = Instant::now();
    let mut o = Outcome {
        image: image.name.clone(),
        digest: digest.to_string(),
        skipped: image.test.is_none(),
        passed: true,
        reason: None,
        checks: Vec::new(),
        duration_ms: 0,
    };
    if let Some(test) = &image.test
        && let Err(reason) = run_checks(rt, image, digest, test, tmpfs, &mut o.checks)
    {
        o.passed = false;
        o.reason = Some(reason);
    }
    o.duration_ms = t0.elapsed().as_millis() as u64;
    o
}

/// Start the test instance, run the checks against it (each recorded in `checks`), then stop
/// and remove it; the error is the first failure, with the instance's last output.
fn run_checks(
    rt: &Runtime,
    image: &Image,
    digest: &Digest,
    test: &ImageTest,
    tmpfs: &[String],
    checks: &mut Vec<Check>,
) -> Result<(), String> {
    let spec = InstanceSpec {
        id: new_id(&format!("test-{}", image.name)),
        image: digest.clone(),
        image_name: format!("{}:latest", image.name),
        env: Default::default(),
        secret_env: Default::default(),
        secret_files: Vec::new(),
        port: test.port,
        network: Network::Private,
        volumes: Vec::new(),
        volume_scope: String::new(),
        memory: None,
        cpus: None,
        user_namespace: false,
        tmpfs: tmpfs.to_vec(),
        owner: "test".into(),
        stop_signal: None,
        stop_timeout: Duration::from_secs(5),
        attach: None,
    };
    let deadline = Instant::now() + test.timeout;
    let inst = rt
        .start(&spec)
        .map_err(|e| format!("the test instance did not start: {e}"))?;
    let result = (|| {
        let ready = Health {
            check: HealthCheck::Tcp,
            interval: Duration::from_millis(5),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: u32::MAX,
            start_period: Duration::ZERO,
        };
        health::wait_healthy(rt, &inst, &ready, deadline)
            .map_err(|e| format!("port {} never accepted connections: {e}", test.port))?;
        let mut failed = None;
        let mut record = |c: Check| {
            if !c.passed && failed.is_none() {
                failed = Some(c.detail.clone());
            }
            checks.push(c);
        };
        for h in &test.http {
            record(http_check(rt, &inst, h, deadline));
        }
        if let Some(cmd) = &test.command {
            record(command_check(rt, &inst, cmd, deadline));
        }
        failed.map_or(Ok(()), Err)
    })()
    .map_err(|reason| with_output(&inst, reason));
    rt.stop_gracefully(&inst);
    if let Err(e) = rt.delete(&inst) {
        return Err(format!("cleaning up the test instance: {e}"));
    }
    result
}

/// Time left before `deadline`, at least 100 ms so a last check still gets a chance.
fn time_left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100))
}

/// Check `GET h.path` against the instance: its status, and its body when `h` expects one.
fn http_check(rt: &Runtime, inst: &Instance, h: &HttpTest, deadline: Instant) -> Check {
    let name = format!("GET {}", h.path);
    let (passed, detail) = match http_get(rt, inst, &h.path, time_left(deadline)) {
        Ok((status, _)) if status != h.expect_status => (
            false,
            format!("{name} answered {status}, expected {}", h.expect_status),
        ),
        Ok((_, body)) => match &h.expect_body {
            Some(want) if !body.contains(want.as_str()) => (
                false,
                format!(
                    "{name}: the body does not contain {want:?} (it is {:?})",
                    truncate(&body)
                ),
            ),
            _ => (true, format!("{name} answered {}", h.expect_status)),
        },
        Err(e) => (false, format!("{name}: {e}")),
    };
    Check {
        check: name,
        passed,
        detail,
    }
}

/// Check that the test command exits with status 0 in the instance.
fn command_check(rt: &Runtime, inst: &Instance, cmd: &[String], deadline: Instant) -> Check {
    let name = format!("command {cmd:?}");
    let (passed, detail) = match rt.exec(inst, cmd, time_left(deadline)) {
        Ok((0, _)) => (true, format!("{name} exited with status 0")),
        Ok((code, out)) => (
            false,
            format!("{name} exited with status {code}: {}", truncate(out.trim())),
        ),
        Err(e) => (false, format!("{name}: {e}")),
    };
    Check {
        check: name,
        passed,
        detail,
    }
}

/// `reason` followed by the last lines the instance wrote, so a failed test says why the
/// program failed (nginx's `[emerg] open() … failed`, say).
fn with_output(inst: &Instance, reason: String) -> String {
    match inst.last_output() {
        Some(out) if !reason.contains("its last output") => {
            format!("{reason}; its last output:\n{out}")
        }
        _ => reason,
    }
}

fn truncate(s: &str) -> String {
    if s.len() > 200 {
        format!("{}…", &s[..s.floor_char_boundary(200)])
    } else {
        s.to_string()
    }
}
