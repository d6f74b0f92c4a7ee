//! The data plane outlives the control plane (issue 14): under continuous keep-alive load through
//! a route, `kill -9` of `recast server` at random moments — idle, mid rolling update, mid canary,
//! around a blue/green switch — then a new server: no request fails, the live release's instances
//! are taken over as they are, and an interrupted rollout is rolled back and recorded so. An
//! instance that dies while no control plane runs leaves rotation on the data plane's own check.
//!
//! The kill moments come from a seeded generator; the seed is printed (`RECAST_TEST_SEED=<n>`
//! repeats a run).

use crate::deploy::{Load, Project, Server, body_now, ok, wait_for};
use crate::stdout;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

const INTERRUPTED: &str = "interrupted: the server stopped during the rollout";

/// splitmix64: enough randomness for kill moments, and repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Rng {
        let seed = std::env::var("RECAST_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(14)
            });
        eprintln!("{test}: seed {seed} (RECAST_TEST_SEED={seed} repeats it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration in `[lo, hi)` milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

/// One request to the data plane's control socket, as the control plane sends it.
fn data_plane(server: &Server, req: &str) -> serde_json::Value {
    let sock = server.data.join("dataplane.sock");
    let mut s = std::os::unix::net::UnixStream::connect(&sock)
        .unwrap_or_else(|e| panic!("the data plane at {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(format!("{req}\n").as_bytes())
        .expect("write to the data plane");
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("read from the data plane");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("data plane reply {line:?}: {e}"))
}

/// The routing table the data plane holds for service `web`: release → instance ids.
fn table(server: &Server) -> BTreeMap<i64, Vec<String>> {
    let config = data_plane(server, r#"{"op":"config"}"#);
    let svc = config["config"]["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap_or_else(|| panic!("the data plane has no service web: {config}"))
        .clone();
    svc["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            let mut ids: Vec<String> = g["backends"]
                .as_array()
                .expect("backends")
                .iter()
                .map(|b| b.as_str().expect("id").to_string())
                .collect();
            ids.sort();
            (g["release"].as_i64().expect("release"), ids)
        })
        .collect()
}

/// The data plane's key for service `web` (`project/web`).
fn web_key(server: &Server) -> String {
    let config = data_plane(server, r#"{"op":"config"}"#);
    config["config"]["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "web")
        .and_then(|s| s["key"].as_str())
        .expect("service web in the data plane")
        .to_string()
}

fn status(server: &Server, p: &Project) -> serde_json::Value {
    let out = server.rc(p.path(), &["status", "web", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn history(server: &Server, p: &Project) -> serde_json::Value {
    let out = server.rc(p.path(), &["history", "web", "--json"]);
    ok(&out);
    serde_json::from_slice(&out.stdout).expect("history json")
}

/// Instance ids of `release`, sorted (from the data directory: what runs, in rotation or not).
fn ids_of(server: &Server, release: i64) -> Vec<String> {
    let prefix = format!("web-r{release}-");
    server
        .instance_ids()
        .into_iter()
        .filter(|id| id.starts_with(&prefix))
        .collect()
}

/// Settled: no rollout, exactly 3 instances, all of the current release, active and healthy.
/// Returns the current release.
fn settled(server: &Server, p: &Project) -> Option<i64> {
    let st = status(server, p);
    let svc = &st["services"][0];
    let current = svc["current_release"].as_i64()?;
    let insts = svc["instances"].as_array()?;
    let all_serving = insts.len() == 3
        && insts.iter().all(|i| {
            i["release"].as_i64() == Some(current) && i["active"] == true && i["healthy"] == true
        });
    (svc["rollout"].is_null() && all_serving && server.instances() == 3).then_some(current)
}

/// `kill -9` the server, check that the route keeps serving with no control plane, start a new
/// server, wait until it has settled, and check what a user sees. `rollout` is the rollout under
/// way at the kill (from release, to release), if any. Returns the live release and whether the
/// kill interrupted the rollout, and the releases the data plane routed at the kill.
fn kill_and_restart(
    server: &mut Server,
    p: &Project,
    load: &Load,
    rollout: Option<(i64, i64)>,
    gone: Duration,
) -> (i64, bool, Vec<i64>) {
    server.kill9();
    // What the data plane routes now is exactly what the dead server last told it.
    let at_kill = table(server);
    assert!(!at_kill.is_empty(), "nothing in rotation at the kill");
    load.flowing(20);
    std::thread::sleep(gone);
    load.flowing(20);
    server.spawn();
    let mut live = None;
    wait_for("the new server to settle", 40, || {
        live = settled(server, p);
        live.is_some()
    });
    let live = live.expect("settled");
    let now = ids_of(server, live);
    // The live release's instances in rotation at the kill are still there, in rotation.
    if let Some(kept) = at_kill.get(&live) {
        for id in kept {
            assert!(
                now.contains(id),
                "instance {id} of live release {live} was replaced after the restart \
                 (in rotation at the kill: {at_kill:?}; now: {now:?})"
            );
        }
    }
    let in_table = table(server);
    assert_eq!(
        in_table.keys().collect::<Vec<_>>(),
        [&live],
        "the data plane routes only the live release after settling"
    );
    assert_eq!(
        in_table[&live], now,
        "the data plane routes the live instances"
    );
    // History: nothing left running; an interrupted rollout rolled back with the reason.
    let h = history(server, p);
    for r in h["rollouts"].as_array().expect("rollouts") {
        assert_ne!(r["state"], "running", "a rollout still running: {r}");
    }
    let mut interrupted = false;
    if let Some((old, n)) = rollout {
        let rel = h["releases"]
            .as_array()
            .expect("releases")
            .iter()
            .find(|r| r["number"].as_i64() == Some(n))
            .unwrap_or_else(|| panic!("release {n} is not in the history: {h}"))
            .clone();
        let rollout = h["rollouts"]
            .as_array()
            .expect("rollouts")
            .iter()
            .rfind(|r| r["to_release"].as_i64() == Some(n))
            .unwrap_or_else(|| panic!("no rollout to release {n}: {h}"))
            .clone();
        if live == n {
            assert_eq!(rel["outcome"], "succeeded", "{rel}");
            assert_eq!(rollout["state"], "succeeded", "{rollout}");
        } else {
            interrupted = true;
            assert_eq!(live, old, "the previously live release serves again");
            assert_eq!(rel["outcome"], "rolled_back", "{rel}");
            assert_eq!(rel["reason"], INTERRUPTED, "{rel}");
            assert_eq!(rollout["state"], "rolled_back", "{rollout}");
            assert!(
                ids_of(server, n).is_empty(),
                "the interrupted release's instances are gone"
            );
        }
    }
    (live, interrupted, at_kill.into_keys().collect())
}

fn body(n: i64) -> String {
    format!("v{n} from hello 0.1.0\n")
}

fn env(n: i64) -> String {
    format!(r#"MESSAGE = "v{n}""#)
}

/// Stop the load and require that every request succeeded.
fn no_failures(load: Load, what: &str) {
    let (n, failures, _) = load.finish();
    assert!(
        failures.is_empty(),
        "{what}: {} of {} requests failed: {:?}",
        failures.len(),
        n as usize + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(n > 200, "{what}: too little load to mean anything: {n}");
    eprintln!("{what}: {n} requests, none failed");
}

#[test]
fn killed_while_idle_the_routes_keep_serving_and_instances_are_kept() {
    let mut rng = Rng::seeded("idle");
    let mut server = Server::start();
    let p = Project::new();
    p.write(&env(1), r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let ids = ids_of(&server, 1);
    assert_eq!(ids.len(), 3);
    let dp = server.data_plane_pid().expect("a data plane");
    let load = Load::start(p.port);
    load.flowing(50);
    for _ in 0..3 {
        std::thread::sleep(rng.ms(0, 400));
        let gone = rng.ms(0, 800);
        let (live, _, _) = kill_and_restart(&mut server, &p, &load, None, gone);
        assert_eq!(live, 1);
        assert_eq!(ids_of(&server, 1), ids, "the live release was replaced");
    }
    assert_eq!(
        server.data_plane_pid(),
        Some(dp),
        "the data plane itself was restarted"
    );
    load.flowing(50);
    no_failures(load, "3 kills while idle");
    let h = history(&server, &p);
    assert_eq!(h["releases"].as_array().map(Vec::len), Some(1), "{h}");
    assert_eq!(h["releases"][0]["outcome"], "succeeded");
    assert_eq!(body_now(p.port), body(1));
}

#[test]
fn killed_mid_rolling_update_the_rollout_is_rolled_back_without_a_failed_request() {
    let mut rng = Rng::seeded("rolling");
    let mut server = Server::start();
    let p = Project::new();
    // Slow enough (3 instances one at a time, each watched for 500 ms) to be killed inside.
    let rollout = r#"strategy = "rolling"
    min_healthy_time = "500ms""#;
    p.write(&env(1), rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let load = Load::start(p.port);
    load.flowing(50);
    let mut live = 1;
    let mut interrupted = 0;
    for n in 2..=4 {
        p.write(&env(n), rollout, "");
        ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
        wait_for("the new release's first instance", 20, || {
            !ids_of(&server, n).is_empty()
        });
        std::thread::sleep(rng.ms(0, 2000));
        let (now, cut, _) =
            kill_and_restart(&mut server, &p, &load, Some((live, n)), rng.ms(0, 500));
        eprintln!(
            "rolling: kill during release {n}: {}",
            if cut {
                "interrupted, rolled back"
            } else {
                "after it finished"
            }
        );
        interrupted += usize::from(cut);
        live = now;
        assert_eq!(body_now(p.port), body(live));
    }
    load.flowing(50);
    no_failures(
        load,
        &format!("3 kills in rolling updates ({interrupted} interrupted)"),
    );
    assert_eq!(body_now(p.port), body(live));
}

#[test]
fn killed_as_the_last_old_instance_leaves_a_rolling_update_the_new_one_keeps_serving() {
    // The narrowest moment: every old instance is out of rotation, the rollout not yet recorded
    // as done. The new server rolls back to a release with no instance left; the new release's
    // instances serve until the old one runs again.
    let mut server = Server::start();
    let p = Project::new();
    let rollout = r#"strategy = "rolling""#;
    p.write(&env(1), rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let load = Load::start(p.port);
    load.flowing(50);
    let (mut live, mut hit) = (1, 0);
    for n in 2..=4 {
        p.write(&env(n), rollout, "");
        ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
        // Kill the moment the data plane routes only the new release and no old instance is left.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = table(&server);
            if t.len() == 1
                && t.get(&n).is_some_and(|ids| ids.len() == 3)
                && ids_of(&server, live).is_empty()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the rollout never switched: {t:?}"
            );
        }
        let (now, cut, _) =
            kill_and_restart(&mut server, &p, &load, Some((live, n)), Duration::ZERO);
        eprintln!(
            "last old instance: release {n}: {}",
            if cut {
                "interrupted, rolled back"
            } else {
                "recorded as done"
            }
        );
        hit += usize::from(cut);
        live = now;
        assert_eq!(body_now(p.port), body(live));
    }
    load.flowing(50);
    no_failures(
        load,
        &format!("3 kills as the last old instance left ({hit} interrupted)"),
    );
}

#[test]
fn killed_during_a_canary_pause_the_canary_is_rolled_back_and_the_stable_release_kept() {
    let mut rng = Rng::seeded("canary");
    let mut server = Server::start();
    let p = Project::new();
    let rollout =
        "strategy = \"canary\"\n    step {\n      weight = 50\n      pause  = \"20s\"\n    }";
    p.write(&env(1), rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let stable = ids_of(&server, 1);
    let load = Load::start(p.port);
    load.flowing(50);
    for n in 2..=3 {
        p.write(&env(n), rollout, "");
        ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
        wait_for("the canary's pause", 30, || {
            status(&server, &p)["services"][0]["rollout"]
                .as_str()
                .is_some_and(|r| r.contains("step 1/1"))
        });
        // The canary gets traffic before the kill.
        wait_for("traffic on the canary", 10, || {
            table(&server).get(&n).is_some_and(|ids| !ids.is_empty())
        });
        std::thread::sleep(rng.ms(0, 1500));
        let (live, cut, _) = kill_and_restart(&mut server, &p, &load, Some((1, n)), rng.ms(0, 500));
        assert!(cut, "the kill was during the pause");
        assert_eq!(live, 1);
        assert_eq!(
            ids_of(&server, 1),
            stable,
            "the stable release was replaced"
        );
        assert_eq!(body_now(p.port), body(1));
    }
    load.flowing(50);
    no_failures(load, "2 kills during canary pauses");
}

#[test]
fn killed_around_a_blue_green_switch_one_release_serves_and_no_request_fails() {
    let mut rng = Rng::seeded("blue_green");
    let mut server = Server::start();
    let p = Project::new();
    let rollout = r#"strategy = "blue_green"
    auto_promote_after = "300ms"
    scale_down_delay = "1s""#;
    p.write(&env(1), rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let load = Load::start(p.port);
    load.flowing(50);
    let mut kills = Vec::new();
    let mut live = 1;
    for n in 2..=6 {
        p.write(&env(n), rollout, "");
        ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
        // Green healthy and waiting its 300 ms — or switched already, when a status read took
        // longer than that window (a loaded machine): the kill then comes just after the switch.
        wait_for("green to be healthy", 20, || {
            let st = status(&server, &p);
            let svc = &st["services"][0];
            svc["rollout"]
                .as_str()
                .is_some_and(|r| r.contains("green healthy; promoting in"))
                || svc["current_release"].as_i64() == Some(n)
        });
        // The switch is at most 300 ms from here (status is read late): kill around it.
        let delay = rng.ms(0, 450);
        std::thread::sleep(delay);
        let (now, cut, routed) =
            kill_and_restart(&mut server, &p, &load, Some((live, n)), rng.ms(0, 500));
        kills.push(format!(
            "{delay:?}: routed {routed:?} at the kill, {}",
            if cut {
                "interrupted, rolled back"
            } else {
                "finished"
            }
        ));
        live = now;
        assert_eq!(body_now(p.port), body(live));
    }
    eprintln!("blue_green: kills after green was healthy: {kills:#?}");
    load.flowing(50);
    no_failures(load, "5 kills around blue/green switches");
}

#[test]
fn an_instance_killed_while_the_server_is_down_leaves_rotation_within_its_threshold() {
    let mut server = Server::start();
    let p = Project::new();
    p.write(&env(1), r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let ids = ids_of(&server, 1);
    let key = web_key(&server);
    let load = Load::start(p.port);
    load.flowing(50);
    server.kill9();
    load.flowing(50);

    // The spec's health check: interval 200 ms, unhealthy_threshold 2.
    let (interval, threshold) = (Duration::from_millis(200), 2);
    let bound = interval * threshold + interval + Duration::from_millis(300);
    let metrics = || {
        let m = data_plane(&server, &format!(r#"{{"op":"metrics","service":"{key}"}}"#));
        // `releases`: a list of [release, counters] pairs.
        m["releases"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r[0] == 1))
            .and_then(|r| r[1]["connect_failures"].as_u64())
            .unwrap_or_else(|| panic!("no connect_failures of release 1 in {m}"))
    };
    let (failures_before, attempts_before) = (load.failed(), metrics());
    let pid = std::fs::read_to_string(server.data.join("instances").join(&ids[1]).join("pid"))
        .expect("pid");
    let killed = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill")
            .success()
    );
    // Watch for twice the bound: when did a request last try (or fail on) the dead instance?
    let (mut last_attempt, mut last_failure) = (None, None);
    let (mut attempts, mut failures) = (attempts_before, failures_before);
    while killed.elapsed() < bound * 2 {
        let (a, f) = (metrics(), load.failed());
        if a > attempts {
            last_attempt = Some(killed.elapsed());
        }
        if f > failures {
            last_failure = Some(killed.elapsed());
        }
        (attempts, failures) = (a, f);
        std::thread::sleep(Duration::from_millis(10));
    }
    let tried = attempts - attempts_before;
    let failed = failures - failures_before;
    eprintln!(
        "dead instance: {tried} connects tried on it (each retried on another instance), \
         last {last_attempt:?} after the kill; {failed} requests failed, last {last_failure:?}; \
         bound {bound:?}"
    );
    assert!(
        last_attempt.is_none_or(|t| t <= bound),
        "requests still went to the dead instance {last_attempt:?} after the kill (bound {bound:?})"
    );
    assert!(
        last_failure.is_none_or(|t| t <= bound),
        "requests still failed {last_failure:?} after the kill (bound {bound:?})"
    );
    let log = std::fs::read_to_string(server.data.join("dataplane.log")).unwrap_or_default();
    assert!(
        log.contains(&format!(
            "instance {} of {key} refuses connections: out of rotation",
            ids[1]
        )),
        "{log}"
    );
    load.flowing(50);

    // A new server replaces the dead instance and keeps the other two.
    server.spawn();
    wait_for("the new server to settle", 40, || {
        settled(&server, &p) == Some(1)
    });
    let now = ids_of(&server, 1);
    assert!(!now.contains(&ids[1]), "the dead instance is still there");
    assert!(
        now.contains(&ids[0]) && now.contains(&ids[2]),
        "{ids:?} → {now:?}"
    );
    load.flowing(50);
    let (n, all_failures, _) = load.finish();
    eprintln!("failed requests (all while the dead instance was in rotation): {all_failures:?}");
    assert_eq!(
        all_failures.len(),
        failed,
        "requests failed outside the dead instance's window: {all_failures:?}"
    );
    assert!(n > 200, "{n}");
    let st = server.rc(p.path(), &["status", "web"]);
    assert_eq!(
        stdout(&st).matches("healthy in rotation").count(),
        3,
        "{}",
        stdout(&st)
    );
}
