//! Project networks: how the instances of a project reach the other services of the project by
//! name, and the world outside when their `egress` allows.
//!
//! Each project has a network namespace of its own, pinned at `networks/<project>/netns`, with
//! a bridge `br0` (10.89.0.1/16). Service number S of the project (1–254, leased on first use
//! and kept while the network exists) has the address 10.89.S.1 on that bridge; its instances get
//! 10.89.S.N (N 2–254, leased per instance). An instance's `eth0` is one end of a veth pair
//! whose other end is an *isolated* port of the bridge: instances reach the project namespace
//! (the services' addresses, where the data plane listens) but never each other directly.
//! Names resolve through the instance's own `/etc/hosts`.
//!
//! Egress goes through `slirp4netns` on the project namespace (a `tap0` with NAT to the host's
//! network in user space, the host's loopback refused): the project namespace forwards and
//! masquerades onto it. An instance without egress has no route beyond its project network; an
//! allow-list is an nftables filter inside the instance's own namespace (the instance has no
//! `CAP_NET_ADMIN` to change it). Nothing is added to the host's own network configuration:
//! interfaces, addresses and rules live in namespaces that disappear with their instances and
//! their project network, so two data directories never collide.

use crate::{Error, Instance, InstanceSpec, Network, Result, Runtime, sys};
use recast_spec::{Destination, Egress};
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The project network's gateway: the bridge in the project namespace.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
/// Where a joined instance finds the names it resolves (bound read-only by the runtime).
pub const NAME_FILES: [&str; 2] = ["/etc/hosts", "/etc/resolv.conf"];
/// The bridge's own MAC address (locally administered), fixed for its whole life.
const BRIDGE_MAC: &str = "02:52:43:59:00:01";
/// The resolver `slirp4netns` answers on (forwarding to the host's), reached through the
/// project namespace's resolver on the gateway.
const RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// How long a host name of an egress allow-list may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How an instance joins its project's network.
#[derive(Debug, Clone)]
pub struct Attach {
    pub project: String,
    pub service: String,
    /// Names the instance resolves: every service of the project and its address.
    pub hosts: Vec<(String, Ipv4Addr)>,
    pub egress: Egress,
}

/// A project's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectNetwork {
    pub netns: PathBuf,
}

/// Project networks change one at a time (leases are read, then written).
static CHANGING: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    CHANGING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run `program args` inside the network namespace pinned at `netns` (`nsenter`), `stdin` fed
/// to it; an error carries what it said.
fn run_in(netns: &Path, program: &str, args: &[&str], stdin: &str, what: &str) -> Result<()> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("{what}: running nsenter {program}"), e))?;
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("{what}: waiting for {program}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let hint = if out.status.code() == Some(127) || err.contains("No such file") {
        format!(" (is {program} installed?)")
    } else {
        String::new()
    };
    Err(Error::msg(format!(
        "{what}: {program} failed{hint}: {}",
        err.trim()
    )))
}

impl Runtime {
    fn network_dir(&self, project: &str) -> Result<PathBuf> {
        self.data_dir
            .network(project)
            .map_err(|e| Error::msg(format!("the network of project {project:?}: {e}")))
    }

    /// The network of `project`, made when missing: its namespace with the bridge.
    pub fn network(&self, project: &str) -> Result<ProjectNetwork> {
        let _changing = lock();
        self.ensure_network(project)
    }

    fn ensure_network(&self, project: &str) -> Result<ProjectNetwork> {
        let dir = self.network_dir(project)?;
        let netns = dir.join("netns");
        if dir.join("ready").exists() && is_netns(&netns) {
            return Ok(ProjectNetwork { netns });
        }
        let what = format!("making the network of project {project}");
        for d in [self.data_dir.networks(), dir.clone()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(|e| Error::io(format!("{what}: creating {}", d.display()), e))?;
        }
        // A half-made one (a crash while making it), or one whose namespace is gone (a
        // reboot), is made again from nothing: its services get their addresses again (their
        // numbers are kept), its egress process is started again.
        stop_egress(&dir, &netns);
        let _ = fs::remove_file(dir.join("ready"));
        for e in fs::read_dir(dir.join("services"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "up") {
                let _ = fs::remove_file(e.path());
            }
        }
        sys::unmount(&netns).map_err(|e| Error::io(format!("{what}: unmounting"), e))?;
        let _ = fs::remove_file(&netns);
        sys::create_netns(&netns).map_err(|e| Error::io(what.clone(), e))?;
        // A bridge takes the lowest MAC address of its ports unless given one: as instances come
        // and go, its address would change under the neighbour caches of the others, and their
        // packets to the gateway and the services would go nowhere until those entries expire
        // (seconds). Each project namespace is its own link, so one fixed address serves all.
        let script = format!(
            "link add br0 address {BRIDGE_MAC} type bridge\naddr add {GATEWAY}/16 dev br0\nlink set br0 up\n"
        );
        run_in(&netns, "ip", &["-batch", "-"], &script, &what)?;
        fs::write(dir.join("ready"), b"")
            .map_err(|e| Error::io(format!("{what}: marking it ready"), e))?;
        Ok(ProjectNetwork { netns })
    }

    /// The address of `service` on its project's network (10.89.S.1), leased on first use.
    pub fn service_address(&self, project: &str, service: &str) -> Result<Ipv4Addr> {
        let _changing = lock();
        let net = self.ensure_network(project)?;
        let s = self.service_number(project, service)?;
        let addr = Ipv4Addr::new(10, 89, s, 1);
        let dir = self.network_dir(project)?;
        let marker = dir.join("services").join(format!("{service}.up"));
        if !marker.exists() {
            let what = format!("giving service {service} of project {project} its address");
            run_in(
                &net.netns,
                "ip",
                &["addr", "replace", &format!("{addr}/32"), "dev", "br0"],
                "",
                &what,
            )?;
            fs::write(&marker, b"").map_err(|e| Error::io(what, e))?;
        }
        Ok(addr)
    }

    /// The number of `service` in its project's network (1–254), leased once and kept.
    fn service_number(&self, project: &str, service: &str) -> Result<u8> {
        let what = format!("numbering service {service} of project {project}");
        let file = self
            .data_dir
            .network_service(project, service)
            .map_err(|e| Error::msg(format!("{what}: {e}")))?;
        let dir = file.parent().unwrap_or(&file).to_path_buf();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(what.clone(), e))?;
        if let Some(n) = fs::read_to_string(&file)
            .ok()
            .and_then(|n| n.trim().parse::<u8>().ok())
        {
            return Ok(n);
        }
        let mut taken = [false; 256];
        for e in fs::read_dir(&dir)
            .map_err(|e| Error::io(what.clone(), e))?
            .flatten()
        {
            if let Some(n) = fs::read_to_string(e.path())
                .ok()
                .and_then(|n| n.trim().parse::<u8>().ok())
            {
                taken[n as usize] = true;
            }
        }
        let n = (1..=254u8).find(|n| !taken[*n as usize]).ok_or_else(|| {
            Error::msg(format!(
                "{what}: the project network holds at most 254 services"
            ))
        })?;
        fs::write(&file, n.to_string()).map_err(|e| Error::io(what, e))?;
        Ok(n)
    }

    /// Give instance `inst` its address on its project's network and the files of the names it
    /// resolves (`/etc/hosts`, with egress `/etc/resolv.conf`), returned as mounts; before its
    /// runtime spec is written.
    pub(crate) fn join(&self, inst: &mut Instance, at: &Attach) -> Result<Vec<(PathBuf, String)>> {
        let addr = {
            let _changing = lock();
            self.ensure_network(&at.project)?;
            let s = self.service_number(&at.project, &at.service)?;
            self.lease_address(&at.project, s, &inst.id)?
        };
        inst.address = Some(addr);
        inst.project_network = Some(at.project.clone());
        crate::save(inst)?;
        self.name_files(inst, addr, at)
    }

    /// Plug instance `inst` (joined, its namespace made, not yet running) into its project's
    /// network: `eth0` with its address, a route out if it has egress, its allow-list.
    pub(crate) fn plug(&self, inst: &Instance, at: &Attach) -> Result<()> {
        let _changing = lock();
        let net = self.ensure_network(&at.project)?;
        let what = format!(
            "joining instance {} to the network of project {}",
            inst.id, at.project
        );
        let addr = inst
            .address
            .ok_or_else(|| Error::msg(format!("{what}: it has no address")))?;
        // The bridge's end is named after the instance: an old instance's end may outlive it
        // for a moment (namespaces are torn down by the kernel in the background).
        let host_end = format!("r{}", &blake3::hash(inst.id.as_bytes()).to_hex()[..12]);
        let script = format!(
            "link add {host_end} type veth peer name eth0 netns {}\n\
             link set {host_end} master br0\n\
             link set {host_end} type bridge_slave isolated on\n\
             link set {host_end} up\n",
            inst.netns().display()
        );
        run_in(&net.netns, "ip", &["-batch", "-"], &script, &what)?;
        let mut inside = format!("addr add {addr}/16 dev eth0\nlink set eth0 up\n");
        if at.egress != Egress::None {
            self.ensure_egress(&at.project, &net)?;
            inside.push_str(&format!("route add default via {GATEWAY}\n"));
        }
        run_in(&inst.netns(), "ip", &["-batch", "-"], &inside, &what)?;
        if let Egress::Only(list) = &at.egress {
            let rules = allow_list_rules(list).map_err(|e| {
                Error::msg(format!("{what}: egress of service {}: {e}", at.service))
            })?;
            run_in(&inst.netns(), "nft", &["-f", "-"], &rules, &what)?;
        }
        Ok(())
    }

    /// `/etc/hosts` and `/etc/resolv.conf` of an instance on a project network.
    fn name_files(
        &self,
        inst: &Instance,
        addr: Ipv4Addr,
        at: &Attach,
    ) -> Result<Vec<(PathBuf, String)>> {
        let mut hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{addr}\t{}\n",
            inst.id
        );
        for (name, a) in &at.hosts {
            hosts.push_str(&format!("{a}\t{name}\n"));
        }
        // The data plane answers the service names on the gateway and passes other names on.
        let files = [
            ("hosts", hosts, NAME_FILES[0]),
            (
                "resolv.conf",
                format!("nameserver {GATEWAY}\n"),
                NAME_FILES[1],
            ),
        ];
        let mut mounts = Vec::new();
        for (name, text, at) in files {
            let p = inst.dir.join(name);
            fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o644)
                .open(&p)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
            mounts.push((p, at.to_string()));
        }
        Ok(mounts)
    }

    /// A free address 10.89.`service`.N for instance `id`, leased by creating its file.
    fn lease_address(&self, project: &str, service: u8, id: &str) -> Result<Ipv4Addr> {
        let dir = self.network_dir(project)?.join("addresses");
        let what = format!("finding an address for instance {id} in project {project}");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(what.clone(), e))?;
        for n in 2..=254u8 {
            let addr = Ipv4Addr::new(10, 89, service, n);
            match fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(dir.join(addr.to_string()))
            {
                Ok(mut f) => {
                    f.write_all(id.as_bytes())
                        .map_err(|e| Error::io(what.clone(), e))?;
                    return Ok(addr);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(what, e)),
            }
        }
        Err(Error::msg(format!(
            "{what}: a service has at most 253 instances on a project network"
        )))
    }

    /// Give an instance's address back (its instance is gone).
    pub(crate) fn release_address(&self, inst: &Instance) {
        if let (Some(project), Some(addr)) = (&inst.project_network, inst.address)
            && let Ok(dir) = self.network_dir(project)
        {
            let _changing = lock();
            let lease = dir.join("addresses").join(addr.to_string());
            if fs::read_to_string(&lease).is_ok_and(|id| id == inst.id) {
                let _ = fs::remove_file(lease);
            }
        }
    }

    /// Start `slirp4netns` on the project namespace (once; again if it died) and let the
    /// namespace forward and masquerade onto it.
    fn ensure_egress(&self, project: &str, net: &ProjectNetwork) -> Result<()> {
        let dir = self.network_dir(project)?;
        let pid_file = dir.join("egress.pid");
        if read_pid(&pid_file).is_some_and(|p| is_slirp(p, &net.netns)) {
            return Ok(());
        }
        let what = format!("giving project {project} a way out (egress)");
        let rules = "table ip recast {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"tap0\" masquerade\n }\n}\n";
        run_in(
            &net.netns,
            "sh",
            &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
            "",
            &what,
        )?;
        // Made afresh (a table left by an earlier egress process is replaced whole).
        let fresh = format!("add table ip recast\ndelete table ip recast\n{rules}");
        run_in(&net.netns, "nft", &["-f", "-"], &fresh, &what)?;
        let _ = run_in(&net.netns, "ip", &["link", "del", "tap0"], "", &what);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join("egress.log"))
            .map_err(|e| Error::io(format!("{what}: opening its log"), e))?;
        let child = Command::new("slirp4netns")
            .args(["--configure", "--mtu=65520", "--disable-host-loopback"])
            .args(["--netns-type=path"])
            .arg(&net.netns)
            .arg("tap0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| Error::io(what.clone(), e))?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::io(
                    format!("{what}: starting slirp4netns (is it installed?)"),
                    e,
                )
            })?;
        fs::write(&pid_file, child.id().to_string())
            .map_err(|e| Error::io(format!("{what}: writing {}", pid_file.display()), e))?;
        // Ready once tap0 has its address (slirp4netns configures it).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !has_global_address(&net.netns) {
            if Instant::now() > deadline || !is_slirp(child.id() as i32, &net.netns) {
                return Err(Error::msg(format!(
                    "{what}: slirp4netns did not bring tap0 up within 10s (see {})",
                    dir.join("egress.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Remove `project`'s network: the egress process, the namespace, the leases. Its
    /// instances must be gone (their ends of the bridge go with their namespaces).
    pub fn remove_network(&self, project: &str) -> Result<()> {
        let _changing = lock();
        let dir = self.network_dir(project)?;
        if !dir.exists() {
            return Ok(());
        }
        let netns = dir.join("netns");
        stop_egress(&dir, &netns);
        sys::unmount(&netns)
            .map_err(|e| Error::io(format!("unmounting {}", netns.display()), e))?;
        fs::remove_dir_all(&dir).map_err(|e| Error::io(format!("removing {}", dir.display()), e))
    }

    /// The projects that have a network in this data directory.
    pub fn networks(&self) -> Vec<String> {
        fs::read_dir(self.data_dir.networks())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Leases of instances that no longer exist are given back (after a crash).
    pub(crate) fn release_stale_addresses(&self) {
        let _changing = lock();
        for project in self.networks() {
            let Ok(dir) = self.network_dir(&project) else {
                continue;
            };
            for e in fs::read_dir(dir.join("addresses"))
                .into_iter()
                .flatten()
                .flatten()
            {
                // Gone at this moment: an instance has its directory before its lease, and loses
                // the lease before the directory.
                let gone = |id: &str| !self.data_dir.instance(id).is_ok_and(|d| d.exists());
                if fs::read_to_string(e.path()).is_ok_and(|id| gone(&id)) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Whether an instance of `spec` joins a project network.
pub(crate) fn joins(spec: &InstanceSpec) -> Option<&Attach> {
    spec.attach
        .as_ref()
        .filter(|_| spec.network == Network::Private)
}

fn read_pid(p: &Path) -> Option<i32> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live slirp4netns on the namespace pinned at `netns` (not a reused pid,
/// nor another project's or data directory's egress process after a reboot): one of its
/// arguments is that file, however the data directory was spelled when it started.
fn is_slirp(pid: i32, netns: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(want) = id(netns) else {
        return false;
    };
    let cwd = PathBuf::from(format!("/proc/{pid}/cwd"));
    sys::alive(pid)
        && fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let mut args = c.split(|b| *b == 0);
            args.next().is_some_and(|a| a.ends_with(b"slirp4netns"))
                && args.any(|a| {
                    !a.is_empty() && id(&cwd.join(std::ffi::OsStr::from_bytes(a))) == Some(want)
                })
        })
}

/// Stop the egress process of the network in `dir` (pinned at `netns`), if it runs.
fn stop_egress(dir: &Path, netns: &Path) {
    if let Some(pid) = read_pid(&dir.join("egress.pid")).filter(|p| is_slirp(*p, netns)) {
        let _ = sys::kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while sys::alive(pid) && Instant::now() < deadline {
            if let sys::Child::Exited(_) = sys::try_wait(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::try_wait(pid);
    }
}

/// Whether `p` is a pinned network namespace (a mount of one, not the empty file it is
/// mounted on, as after a reboot).
fn is_netns(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(p), fs::metadata("/proc/self/ns/net")) {
        (Ok(pin), Ok(ns)) => pin.dev() == ns.dev(),
        _ => false,
    }
}

fn has_global_address(netns: &Path) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "ip", "-4", "-o", "addr", "show", "dev", "tap0"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("inet "))
}

/// The nftables rules of an egress allow-list, inside the instance's namespace: loopback, the
/// project network, the resolver and the listed destinations; everything else is refused at
/// once (a TCP reset, an ICMP error), never left to time out.
fn allow_list_rules(list: &[Destination]) -> std::result::Result<String, String> {
    let mut rules = vec![
        "oifname \"lo\" accept".to_string(),
        "ct state established,related accept".into(),
        format!("ip daddr 10.89.0.0/16 accept"),
        format!("ip daddr {RESOLVER} meta l4proto {{ tcp, udp }} th dport 53 accept"),
    ];
    for d in list {
        let port = d
            .port
            .map(|p| format!(" meta l4proto {{ tcp, udp }} th dport {p}"))
            .unwrap_or_default();
        for net in destination_networks(&d.host)? {
            let family = if net.contains(':') { "ip6" } else { "ip" };
            rules.push(format!("{family} daddr {net}{port} accept"));
        }
    }
    rules.push("meta l4proto tcp reject with tcp reset".into());
    rules.push("reject".into());
    let body: String = rules.iter().map(|r| format!("  {r}\n")).collect();
    Ok(format!(
        "table inet recast {{\n chain out {{\n  type filter hook output priority filter; policy accept;\n{body} }}\n}}\n"
    ))
}

/// What `host` (an address, a network or a host name) stands for, as nftables networks.
fn destination_networks(host: &str) -> std::result::Result<Vec<String>, String> {
    if host.contains('/') || host.parse::<IpAddr>().is_ok() {
        return Ok(vec![host.to_string()]);
    }
    let name = host.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(
            (name.as_str(), 0)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>()),
        );
    });
    let addrs = rx
        .recv_timeout(RESOLVE_TIMEOUT)
        .map_err(|_| format!("host {host} did not resolve within {RESOLVE_TIMEOUT:?}"))?
        .map_err(|e| format!("host {host} does not resolve: {e}"))?;
    let mut nets: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    nets.sort();
    nets.dedup();
    if nets.is_empty() {
        return Err(format!("host {host} resolves to no address"));
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allow_list_accepts_what_it_lists_and_refuses_the_rest() {
        let list = vec![
            Destination {
                host: "10.213.0.2".into(),
                port: Some(8081),
            },
            Destination {
                host: "192.168.0.0/16".into(),
                port: None,
            },
        ];
        let rules = allow_list_rules(&list).expect("rules");
        assert!(
            rules.contains("ip daddr 10.213.0.2 meta l4proto { tcp, udp } th dport 8081 accept")
        );
        assert!(rules.contains("ip daddr 192.168.0.0/16 accept"));
        let accept = rules.find("192.168.0.0/16").expect("listed");
        let reject = rules.find("reject with tcp reset").expect("refused");
        assert!(accept < reject, "{rules}");
    }
}
