//! Project networks (issue 18) with real runc: instances of a project get their own address on
//! the project's bridge, resolve the services' names, never reach each other directly, get a way
//! out only with egress, and leave nothing behind (leases, namespaces, the egress process).

use crate::{Fixture, fixture_as};
use recast_runtime::{Attach, GATEWAY, Instance, InstanceSpec};
use recast_spec::{Destination, Egress};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROJECT: &str = "p";
/// A destination outside the machine (TEST-NET-2) that no test traffic may reach: every
/// attempt to it must be refused inside the instance's own namespace.
const OUTSIDE: &str = "198.51.100.7";

/// A fixture whose image runs as root (so that "root inside cannot change its network" means
/// something), its data directory private as recast makes it.
fn network_fixture() -> Fixture {
    let f = fixture_as(None);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod the data directory");
    f
}

/// On a failed test, what it made is removed all the same: the instances, and the project's
/// network with its egress process (which would outlive the test).
struct CleanUp<'a>(&'a Fixture);

impl Drop for CleanUp<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for inst in self.0.rt.list() {
                let _ = self.0.rt.delete(&inst);
            }
            let _ = self.0.rt.remove_network(PROJECT);
        }
    }
}

/// How an instance of `service` joins project `p`: it resolves `a` and `b`.
fn attach(f: &Fixture, service: &str, egress: Egress) -> Attach {
    let hosts = ["a", "b"]
        .iter()
        .map(|s| {
            let addr =
                f.rt.service_address(PROJECT, s)
                    .unwrap_or_else(|e| panic!("the address of service {s}: {e}"));
            (s.to_string(), addr)
        })
        .collect();
    Attach {
        project: PROJECT.into(),
        service: service.into(),
        hosts,
        egress,
    }
}

fn spec(f: &Fixture, service: &str, egress: Egress, user_namespace: bool) -> InstanceSpec {
    let mut spec = f.spec(&[("MESSAGE", &format!("from-{service}"))]);
    spec.id = recast_runtime::new_id(service);
    spec.user_namespace = user_namespace;
    spec.attach = Some(attach(f, service, egress));
    spec
}

/// Run `script` (busybox sh, `$b` being busybox) in `inst`; (status, output).
fn sh(f: &Fixture, inst: &Instance, script: &str) -> (i32, String) {
    f.sh(inst, &format!("b=/bin/busybox; {script}"))
}

/// Run `script` in `inst` until it succeeds, within `secs` seconds; its output.
fn sh_until_ok(f: &Fixture, inst: &Instance, script: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (code, out) = sh(f, inst, script);
        if code == 0 {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "`{script}` in instance {} still fails after {secs}s (status {code}): {out}",
            inst.id
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run `program args` in the network namespace pinned at `netns`; its output (it must succeed).
fn run_in(netns: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("nsenter {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {}: {}",
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The address recast gave `inst`, checked to be 10.89.S.N in service `service_addr`'s block.
fn address_in(inst: &Instance, service_addr: Ipv4Addr) -> Ipv4Addr {
    let addr = inst
        .address
        .unwrap_or_else(|| panic!("instance {} has no address", inst.id));
    let [x, y, s, n] = addr.octets();
    let [_, _, want_s, one] = service_addr.octets();
    assert_eq!(
        (x, y, s, one),
        (10, 89, want_s, 1),
        "instance {} has {addr}, service address {service_addr}",
        inst.id
    );
    assert!((2..=254).contains(&n), "instance {}: {addr}", inst.id);
    addr
}

/// An HTTP server (busybox httpd, a child of this test) in the project's namespace on every
/// address there (the services' addresses included), answering `page`. Stopped when dropped.
struct ProjectServer {
    child: Child,
    _www: tempfile::TempDir,
}

impl ProjectServer {
    fn start(netns: &Path, port: u16, page: &str) -> ProjectServer {
        let www = tempfile::tempdir().expect("tmp");
        std::fs::write(www.path().join("index.html"), page).expect("page");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args([
                "--",
                "busybox",
                "httpd",
                "-f",
                "-p",
                &port.to_string(),
                "-h",
            ])
            .arg(www.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox httpd in the project namespace");
        ProjectServer { child, _www: www }
    }
}

impl Drop for ProjectServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes whose command line mentions `text`: (pid, command line).
fn processes_with(text: &str) -> Vec<(String, String)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let c = std::fs::read(e.path().join("cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(text)
                .then(|| (e.file_name().to_string_lossy().into_owned(), c))
        })
        .collect()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Delete `insts` (checking each is gone), then the project's network, and check that nothing
/// of either is left: leases, the network directory, the egress process, namespace mounts.
fn delete_all_and_check_nothing_left(f: &Fixture, insts: &[&Instance]) {
    let net = f.dir.path().join("networks").join(PROJECT);
    for inst in insts {
        f.delete_and_check_gone(inst);
    }
    let leases = files_in(&net.join("addresses"));
    assert!(
        leases.is_empty(),
        "leases left after their instances were deleted: {leases:?}"
    );
    f.rt.remove_network(PROJECT)
        .unwrap_or_else(|e| panic!("removing the network of {PROJECT}: {e}"));
    assert!(!net.exists(), "{} is left", net.display());
    assert!(f.rt.networks().is_empty(), "{:?}", f.rt.networks());
    let data = f.dir.path().to_string_lossy().into_owned();
    let left = processes_with(&data);
    assert!(left.is_empty(), "processes left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&data)).collect();
    assert!(left.is_empty(), "mounts left: {left:#?}");
    // Removing it again (nothing there) is not an error.
    f.rt.remove_network(PROJECT)
        .unwrap_or_else(|e| panic!("removing a removed network: {e}"));
}

#[test]
fn network_instances_have_their_address_resolve_names_and_never_reach_each_other() {
    let f = network_fixture();
    let _clean_up = CleanUp(&f);
    let (addr_a, addr_b) = (
        f.rt.service_address(PROJECT, "a").expect("address of a"),
        f.rt.service_address(PROJECT, "b").expect("address of b"),
    );
    assert_ne!(addr_a, addr_b);
    // Leased once, kept.
    assert_eq!(
        f.rt.service_address(PROJECT, "a").expect("address of a"),
        addr_a
    );
    let a = f.start(&spec(&f, "a", Egress::None, true));
    let b = f.start(&spec(&f, "b", Egress::None, false));
    let ip_a = address_in(&a, addr_a);
    let ip_b = address_in(&b, addr_b);

    for (inst, ip) in [(&a, ip_a), (&b, ip_b)] {
        // eth0 with its address on the project's /16, and no way out (egress none).
        let (code, out) = sh(&f, inst, "$b ip addr show dev eth0 && $b ip route");
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("inet {ip}/16")), "{}: {out}", inst.id);
        assert!(!out.contains("default"), "{}: {out}", inst.id);
        // The names of the project's services, and its own, in a read-only /etc/hosts.
        let (code, hosts) = sh(&f, inst, "$b cat /etc/hosts");
        assert_eq!(code, 0, "{hosts}");
        let lines: Vec<Vec<&str>> = hosts
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        for (addr, name) in [(addr_a, "a"), (addr_b, "b"), (ip, inst.id.as_str())] {
            assert!(
                lines.contains(&vec![&*addr.to_string(), name]),
                "{}: /etc/hosts has no `{addr} {name}`:\n{hosts}",
                inst.id
            );
        }
        let (code, out) = sh(&f, inst, "echo '10.0.0.1 a' >> /etc/hosts");
        assert_ne!(code, 0, "{}: /etc/hosts is writable: {out}", inst.id);
        // Root inside cannot change its network.
        let (code, out) = sh(&f, inst, "$b ip addr add 10.89.250.9/16 dev eth0");
        assert_ne!(
            code, 0,
            "{}: root inside changed its address: {out}",
            inst.id
        );
    }

    // B's app answers on its address from inside B (it listens on 0.0.0.0)...
    let (code, out) = sh(&f, &b, &format!("$b wget -q -O - http://{ip_b}:8080/"));
    assert_eq!(
        (code, out.as_str()),
        (0, "from-b from hello 0.1.0\n"),
        "B from inside B"
    );
    // ...but A never reaches it directly: the bridge's ports are isolated.
    let started = Instant::now();
    let (code, out) = sh(
        &f,
        &a,
        &format!("$b timeout 3 $b wget -q -O - http://{ip_b}:8080/"),
    );
    assert!(
        code != 0 && !out.contains("from-b"),
        "A reached B's address {ip_b} directly (status {code}): {out}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));

    // Both reach the project's namespace by the services' names (where the data plane listens).
    let net = f.rt.network(PROJECT).expect("the project network");
    let server = ProjectServer::start(&net.netns, 9000, "project namespace\n");
    for (inst, name) in [(&a, "b"), (&b, "a"), (&a, "a")] {
        let out = sh_until_ok(
            &f,
            inst,
            &format!("$b timeout 3 $b wget -q -O - http://{name}:9000/"),
            10,
        );
        assert_eq!(out, "project namespace\n", "{} to {name}", inst.id);
    }
    drop(server);

    delete_all_and_check_nothing_left(&f, &[&a, &b]);
}

#[test]
fn network_egress_all_has_a_way_out_none_has_no_route_and_a_list_is_filtered() {
    let f = network_fixture();
    let _clean_up = CleanUp(&f);
    let all = f.start(&spec(&f, "a", Egress::All, false));
    let none = f.start(&spec(&f, "b", Egress::None, false));
    let only = f.start(&spec(
        &f,
        "b",
        Egress::Only(vec![Destination {
            host: "10.0.0.0/8".into(),
            port: None,
        }]),
        true,
    ));
    let net = f.rt.network(PROJECT).expect("the project network");
    let default = format!("default via {GATEWAY}");
    for (inst, way_out) in [(&all, true), (&none, false), (&only, true)] {
        let (code, routes) = sh(&f, inst, "$b ip route");
        assert_eq!(code, 0, "{routes}");
        assert_eq!(
            routes.contains(&default),
            way_out,
            "{}: routes:\n{routes}",
            inst.id
        );
        let rules = run_in(&inst.netns(), "nft", &["list", "ruleset"]);
        let filtered = std::ptr::eq(inst, &only);
        assert_eq!(
            rules.contains("table inet recast"),
            filtered,
            "{}: ruleset:\n{rules}",
            inst.id
        );
        if filtered {
            assert!(rules.contains("10.0.0.0/8"), "{rules}");
        }
    }

    // The way out: slirp4netns on the project's namespace (tap0), masqueraded onto.
    let dir = f.dir.path().join("networks").join(PROJECT);
    let pid: i32 = std::fs::read_to_string(dir.join("egress.pid"))
        .expect("egress.pid")
        .trim()
        .parse()
        .expect("a pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the egress process");
    assert!(
        String::from_utf8_lossy(&cmdline).starts_with("slirp4netns\0"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    let tap = run_in(
        &net.netns,
        "ip",
        &["-4", "-o", "addr", "show", "dev", "tap0"],
    );
    assert!(tap.contains("inet "), "tap0: {tap}");
    let nat = run_in(&net.netns, "nft", &["list", "table", "ip", "recast"]);
    assert!(nat.contains("masquerade"), "{nat}");

    // Nothing outside is tried: without egress there is no route; outside the allow-list a
    // connection is refused at once, in the instance's own namespace.
    let get_outside = format!("$b timeout 5 $b wget -q -O - http://{OUTSIDE}/");
    for (inst, why) in [
        (&none, "Network is unreachable"),
        (&only, "Connection refused"),
    ] {
        let started = Instant::now();
        let (code, out) = sh(&f, inst, &get_outside);
        assert!(
            code != 0 && out.contains(why),
            "{}: {OUTSIDE} (status {code}): {out}",
            inst.id
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{}: refused only after {:?}",
            inst.id,
            started.elapsed()
        );
    }
    // Root inside cannot lift its allow-list or its routes.
    let (code, out) = sh(&f, &only, "$b ip route del default");
    assert_ne!(code, 0, "root inside removed its route: {out}");
    // The project network itself stays reachable under an allow-list.
    let server = ProjectServer::start(&net.netns, 9000, "project namespace\n");
    for inst in [&all, &none, &only] {
        let out = sh_until_ok(&f, inst, "$b timeout 3 $b wget -q -O - http://a:9000/", 10);
        assert_eq!(out, "project namespace\n", "{}", inst.id);
    }
    drop(server);

    delete_all_and_check_nothing_left(&f, &[&all, &none, &only]);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "the egress process {pid} still runs"
    );
}

#[test]
fn network_a_lease_is_given_back_with_its_instance_and_a_stale_one_by_recovery() {
    let f = network_fixture();
    let _clean_up = CleanUp(&f);
    let addr_a = f.rt.service_address(PROJECT, "a").expect("address of a");
    let first = f.start(&spec(&f, "a", Egress::None, false));
    let ip = address_in(&first, addr_a);
    let addresses = f
        .dir
        .path()
        .join("networks")
        .join(PROJECT)
        .join("addresses");
    let lease = addresses.join(ip.to_string());
    assert_eq!(
        std::fs::read_to_string(&lease).expect("the lease"),
        first.id,
        "the lease names its instance"
    );
    // Deleted, its address is free for the next instance. The bridge keeps its own address as
    // its ports come and go (else the others' neighbour caches would point nowhere for seconds).
    let netns = f.dir.path().join("networks").join(PROJECT).join("netns");
    let bridge_mac = || {
        let line = run_in(&netns, "ip", &["-br", "link", "show", "br0"]);
        line.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string()
    };
    let mac = bridge_mac();
    f.delete_and_check_gone(&first);
    assert!(!lease.exists(), "the lease of a deleted instance is kept");
    assert_eq!(
        bridge_mac(),
        mac,
        "the bridge's address changed with its ports"
    );
    let live = f.start(&spec(&f, "a", Egress::None, false));
    assert_eq!(address_in(&live, addr_a), ip, "the address was not reused");
    assert_eq!(
        bridge_mac(),
        mac,
        "the bridge's address changed with its ports"
    );

    // A crash left the lease of an instance that no longer exists.
    let [_, _, s, _] = addr_a.octets();
    let stale = addresses.join(Ipv4Addr::new(10, 89, s, 200).to_string());
    std::fs::write(&stale, "a-00000000").expect("a stale lease");
    let r = f.rt.recover(|_| true).expect("recover");
    assert_eq!(
        r.running.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [live.id.as_str()]
    );
    assert!(!stale.exists(), "the stale lease {} stays", stale.display());
    assert_eq!(
        std::fs::read_to_string(&lease).expect("the live lease"),
        live.id,
        "recovery took a live instance's lease"
    );
    // The live instance keeps its address and its network.
    let (code, out) = sh(&f, &live, "$b ip addr show dev eth0");
    assert!(code == 0 && out.contains(&format!("inet {ip}/16")), "{out}");

    delete_all_and_check_nothing_left(&f, &[&live]);
}

/// The slirp4netns process of project `p`'s egress (its pid file's).
fn egress_pid(f: &Fixture) -> i32 {
    let p = f
        .dir
        .path()
        .join("networks")
        .join(PROJECT)
        .join("egress.pid");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

#[test]
fn network_whose_namespace_is_gone_after_a_reboot_is_made_again() {
    let f = network_fixture();
    let _clean_up = CleanUp(&f);
    let addr_a = f.rt.service_address(PROJECT, "a").expect("address of a");
    let first = f.start(&spec(&f, "a", Egress::All, false));
    let old_egress = egress_pid(&f);
    f.delete_and_check_gone(&first);
    // A reboot: the namespace (and what lived in it) is gone, the files are kept.
    let pin = f.dir.path().join("networks").join(PROJECT).join("netns");
    let out = Command::new("umount")
        .arg("--lazy")
        .arg(&pin)
        .output()
        .expect("umount");
    assert!(out.status.success(), "{out:?}");

    let inst = f.start(&spec(&f, "a", Egress::All, false));
    let ip = address_in(&inst, addr_a);
    let (code, out) = sh(&f, &inst, "$b ip addr show dev eth0 && $b ip route");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("inet {ip}/16")), "{out}");
    assert!(out.contains(&format!("default via {GATEWAY}")), "{out}");
    // The service keeps its address, and it is there again; the way out is there again.
    assert_eq!(
        f.rt.service_address(PROJECT, "a").expect("address of a"),
        addr_a
    );
    let net = f.rt.network(PROJECT).expect("the project network");
    let server = ProjectServer::start(&net.netns, 9000, "project namespace\n");
    let out = sh_until_ok(&f, &inst, "$b timeout 3 $b wget -q -O - http://a:9000/", 10);
    assert_eq!(out, "project namespace\n");
    drop(server);
    let tap = run_in(
        &net.netns,
        "ip",
        &["-4", "-o", "addr", "show", "dev", "tap0"],
    );
    assert!(tap.contains("inet "), "tap0: {tap}");
    let egress = egress_pid(&f);
    assert!(running(egress), "no egress process");
    assert!(
        !running(old_egress) || egress == old_egress,
        "the egress process of the namespace that is gone still runs"
    );

    delete_all_and_check_nothing_left(&f, &[&inst]);
}
