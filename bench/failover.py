#!/usr/bin/env python3
"""Failover to a standby host after a machine dies (issue 15): time over KILLS kills.

Two hosts share one state: a throwaway PostgreSQL cluster (`initdb` as the postgres user into a
temporary directory, Unix socket only) and Debian's docker-registry on a loopback port. Each host is
a `recast server --state postgres://… --host-name host-a|host-b --standby-for all` on a data
directory of its own (the default lease time, 10 s, unless LEASE says otherwise). A project of
3 services × 2 instances (the static hello binary, health checks every 200 ms, one route each on a
loopback port, a `registry` block) is applied on host-a. Then KILLS times:

1. the host holding the project dies: SIGKILL, all at once, of its server, its data plane, its
   instances and its egress processes (nothing unmounted or cleaned: a machine losing power);
2. every route is polled every 25 ms (a new connection each, 0.5 s timeout) until each answers 200
   with its service's body again — served by the standby, the dead host's data plane being gone;
3. the dead host is started again (same name, same data directory): it must come back as a standby,
   hold nothing and remove its leftovers (instances, runc containers, mounts) before the next kill,
   which hits whichever host holds the project then. Each kill waits a random 0–2 s first (seeded,
   printed), so it lands anywhere in the holder's renewal period (lease time / 5).

Per kill it prints the failover time (kill → every route answers) and where it went: the lease's
remaining time at the kill (its `expires_ms` in the state), expiry → the standby took the lease (the
new lease's `expires_ms` − lease time, read while it changes hands), taken → serving (the lease's
`serving_ms`, set when the new holder has restored the project; the server logs the same as
"serving after X s"), serving → every route answers. "Start time" is expiry → every route answers.
Goal (the issue): serving again within lease + start time.

Everything started here — servers, data planes, instances (`recast destroy`, then `runc delete`
of whatever is left), egress processes, mounts under the data directories (`umount -l`), cgroups,
the registry and the cluster — is stopped and removed at the end, also on Ctrl-C or a failure.
Logs (with timestamps) are kept while it runs in the temporary directory it prints; BENCH_KEEP=1
keeps that directory (logs only, everything else still cleaned).

Usage: bench/failover.py [KILLS] [LEASE] [SEED]   (defaults 10, 10 s, the time; needs
cargo build --release -p recast; scripts/build-hello; PostgreSQL 15 server binaries in
/usr/lib/postgresql/15/bin or $BENCH_PG_BIN; docker-registry, runc, psql)
"""
import hashlib, json, os, random, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, free_port
from pg import PGBIN, Cluster, Interrupted, on_signal, run, shield, wait_until

RECAST = os.path.join(ROOT, "target/release/recast")
HELLO = os.path.join(ROOT, "examples/hello/dist/hello")
KILLS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
LEASE = float(sys.argv[2]) if len(sys.argv) > 2 else None  # None: the server's default (10 s)
SEED = int(sys.argv[3]) if len(sys.argv) > 3 else int(time.time())
LEASE_S = LEASE if LEASE is not None else 10.0
PROJECT = "failover"
SERVICES = ["web", "api", "admin"]
POLL = 0.025
VERBOSE = os.environ.get("BENCH_VERBOSE") == "1"


def kill(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def lease_of(cluster):
    """(host, token, expires_ms, serving_ms) of the project's lease, or None."""
    r = subprocess.run(["psql", "-h", cluster.dir, "-U", "recast", "-d", "recast", "-XAt", "-F", "|", "-c",
                        f"SELECT host, token, expires_ms, coalesce(serving_ms, 0) FROM leases WHERE project = '{PROJECT}'"],
                       capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return None
    host, token, expires, serving = r.stdout.strip().split("|")
    return host, int(token), int(expires), int(serving) or None


class Registry:
    """Debian's docker-registry on a free loopback port."""

    def __init__(self, base):
        self.dir = os.path.join(base, "registry")
        os.makedirs(self.dir)
        self.addr = f"127.0.0.1:{free_port()}"
        self.proc = None

    def start(self):
        config = os.path.join(self.dir, "config.yml")
        with open(config, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {self.dir}/data\n"
                    f"http:\n  addr: {self.addr}\n")
        self.proc = subprocess.Popen(["setpriv", "--pdeathsig=TERM", "docker-registry", "serve", config],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        host, port = self.addr.split(":")

        def up():
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(f"the registry on {self.addr}", up, 15, lambda: self.proc.poll() is None)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Host:
    """A `recast server` on a data directory of its own, one host among those sharing the state.
    Its stderr is read here: every line is timestamped (monotonic) into `lines` and its log."""

    def __init__(self, name, base, state):
        self.name, self.state = name, state
        self.data = os.path.join(base, name)
        self.logpath = os.path.join(base, f"{name}.log")
        self.env = {k: v for k, v in os.environ.items() if k not in ("RECAST_STATE", "RECAST_HOST_NAME")}
        self.env["RECAST_DATA_DIR"] = self.data
        self.proc = None
        self.lines = []  # (monotonic time, line)
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        os.makedirs(self.data, exist_ok=True)

    def start(self):
        try:
            os.remove(os.path.join(self.data, "server.json"))
        except FileNotFoundError:
            pass
        args = ["setpriv", "--pdeathsig=TERM", RECAST, "server", "--listen", "127.0.0.1:0", "--state", self.state,
                "--host-name", self.name, "--standby-for", "all"]
        if LEASE is not None:
            args += ["--lease-time", f"{LEASE:g}"]
        # Its own session: a terminal's Ctrl-C is for this script, which stops it in order.
        self.proc = subprocess.Popen(args, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        threading.Thread(target=self.read, args=(self.proc,), daemon=True).start()
        # server.json is written once it has registered, claimed its leases and recovered.
        answers = lambda: os.path.exists(os.path.join(self.data, "server.json")) and self.recast("status").returncode == 0
        wait_until(f"{self.name} answering (log {self.logpath})", answers, 60, lambda: self.proc.poll() is None)

    def read(self, proc):
        with open(self.logpath, "a") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} server pid {proc.pid} started\n")
            for raw in proc.stderr:
                now = time.monotonic()
                line = raw.decode(errors="replace").rstrip("\n")
                with self.lock:
                    self.lines.append((now, line))
                log.write(f"[{now - self.t0:9.3f}] {line}\n")
                log.flush()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def recast(self, *args, timeout=120):
        return subprocess.run([RECAST, *args], env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)

    def since(self, t, pattern):
        """Lines logged after monotonic time t that match the regex."""
        with self.lock:
            return [(at, l) for at, l in self.lines if at >= t and re.search(pattern, l)]

    def tail(self, n=40):
        try:
            with open(self.logpath) as f:
                server = f.read().splitlines()[-n:]
        except OSError:
            server = []
        try:
            with open(os.path.join(self.data, "dataplane.log"), errors="replace") as f:
                plane = f.read().splitlines()[-15:]
        except OSError:
            plane = []
        return f"--- {self.name} server log ({self.logpath}):\n" + "\n".join(server) + \
               f"\n--- {self.name} data plane log:\n" + "\n".join(plane)

    # What runs on this host, as its data directory says.

    def instance_ids(self):
        try:
            return sorted(n for n in os.listdir(os.path.join(self.data, "instances")) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def runc(self, *args):
        return subprocess.run(["runc", "--root", os.path.join(self.data, "runc"), *args], capture_output=True, text=True)

    def containers(self):
        """(id, status) of every container runc knows in this data directory."""
        r = self.runc("list", "--format", "json")
        if r.returncode != 0 or not r.stdout.strip() or r.stdout.strip() == "null":
            return []
        return [(c["id"], c["status"]) for c in json.loads(r.stdout)]

    def running(self):
        return sum(1 for _, s in self.containers() if s == "running")

    def data_plane_pids(self):
        """The data plane answering on this directory's socket, and any other `recast dataplane` of it."""
        pids = set()
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(os.path.join(self.data, "dataplane.sock"))
                s.sendall(b'{"op":"hello"}\n')
                pids.add(int(json.loads(s.makefile().readline())["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        me = os.fsencode(self.data)
        for p in os.listdir("/proc"):
            if p.isdigit():
                args = cmdline(p)
                if b"dataplane" in args and me in args:
                    pids.add(int(p))
        return sorted(pids)

    def egress_pids(self):
        pids = []
        nets = os.path.join(self.data, "networks")
        for n in os.listdir(nets) if os.path.isdir(nets) else []:
            pid = read_int(os.path.join(nets, n, "egress.pid"))
            # Only a live slirp4netns: never a process that took a recycled pid.
            if pid and any(a.endswith(b"slirp4netns") for a in cmdline(pid)[:1]):
                pids.append(pid)
        return pids

    def mounts(self):
        return mounts_under(self.data)

    def die(self):
        """The machine dies: SIGKILL of the server, its data plane, its instances and its egress
        processes, all at once (pids gathered first). Answers the monotonic and wall time of the kill."""
        planes = self.data_plane_pids()
        inits = [p for p in (read_int(os.path.join(self.data, "instances", i, "pid")) for i in self.instance_ids()) if p]
        egress = self.egress_pids()
        t, wall = time.monotonic(), time.time()
        kill(self.proc.pid)
        for pid in planes + inits + egress:
            kill(pid)
        self.proc.wait()
        # What an init's death did not take with it (runc kills every process of the container).
        for cid, status in self.containers():
            if status == "running":
                self.runc("kill", cid, "KILL")
        return t, wall


def mounts_under(d):
    """Mount points under directory d (deepest first), from /proc/self/mountinfo."""
    d = os.path.realpath(d).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split(" ")[4])
            if (point + "/").startswith(d):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


def spec(registry, ports):
    s = f'''image "hello" {{
  from = "scratch"
  copy {{
    src  = "{HELLO}"
    dest = "/bin/hello"
    mode = "0555"
  }}
  user = "65534:65534"
  cmd  = ["/bin/hello"]
}}

registry {{
  url      = "{registry}/{PROJECT}"
  insecure = true
}}
'''
    for name, port in zip(SERVICES, ports):
        s += f'''
service "{name}" {{
  image     = image.hello
  instances = 2
  port      = 8080
  env       = {{ MESSAGE = "{name}" }}
  health {{
    http     = "/healthz"
    interval = "200ms"
  }}
}}

route "{name}" {{
  listen  = "127.0.0.1:{port}"
  service = service.{name}
}}
'''
    return s


def answer(port):
    """The body of a 200 from the route on `port`, else None (refused, reset, timeout, another status)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(0.5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    if not data.startswith(b"HTTP/1.1 200"):
        return None
    return data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")


class LeaseWatch(threading.Thread):
    """Reads the project's lease row every 50 ms from `after` (monotonic) on, until a new token has
    `serving_ms`: when the standby took it (its first `expires_ms` − lease time) and when it served."""

    def __init__(self, cluster, old_token, after, to_mono):
        super().__init__(daemon=True)
        self.cluster, self.old, self.after, self.to_mono = cluster, old_token, after, to_mono
        self.taken = self.serving = self.holder = self.token = None
        self.stop = False

    def run(self):
        while not self.stop and time.monotonic() < self.after:
            time.sleep(0.01)
        while not self.stop:
            l = lease_of(self.cluster)
            if l and l[1] != self.old:
                host, token, expires, serving = l
                if self.token != token:  # first sight of the new lease: not renewed yet (renewals are lease/5 apart)
                    self.holder, self.token = host, token
                    self.taken = self.to_mono(expires / 1000 - LEASE_S)
                if serving:
                    self.serving = self.to_mono(serving / 1000)
                    return
            time.sleep(0.05)


def fmt(s):
    return f"{s:6.2f} s"


def main():
    for f, what in ((RECAST, "cargo build --release -p recast"), (HELLO, "scripts/build-hello")):
        if not os.path.exists(f):
            sys.exit(f"{f} is missing: run {what}")
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    rng = random.Random(SEED)
    base = tempfile.mkdtemp(prefix="recast-bench-failover-")
    cluster, registry, hosts = Cluster(), Registry(base), []
    print(f"failover: {KILLS} kills, lease time {LEASE_S:g} s{' (default)' if LEASE is None else ''}, seed {SEED}; "
          f"logs in {base}", flush=True)
    odd = []  # anything a user would call wrong, said at the end
    code = 0
    try:
        cluster.start()
        cluster.createdb("recast")
        registry.start()
        hosts = [Host("host-a", base, cluster.url()), Host("host-b", base, cluster.url())]
        for h in hosts:
            h.start()
        proj = os.path.join(base, PROJECT)
        os.makedirs(proj)
        ports = [free_port() for _ in SERVICES]
        with open(os.path.join(proj, "recast.hcl"), "w") as f:
            f.write(spec(registry.addr, ports))
        r = hosts[0].recast("apply", "--yes", "-f", proj, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"apply on host-a failed:\n{r.stdout}{r.stderr}\n{hosts[0].tail()}")
        routes = list(zip(SERVICES, ports))
        every = lambda: all(answer(p) == f"{n} from hello 0.1.0\n" for n, p in routes)
        wait_until("every route answering after the apply", every, 30)
        by_name = {h.name: h for h in hosts}
        rows = []
        for k in range(KILLS):
            lease = lease_of(cluster)
            if not lease or lease[0] not in by_name or not lease[3]:
                raise RuntimeError(f"before kill {k + 1}: the project's lease is {lease}, not held and serving")
            holder, old_token = by_name[lease[0]], lease[1]
            standby = next(h for h in hosts if h is not holder)
            if holder.running() != 6 or standby.running() != 0:
                odd.append(f"before kill {k + 1}: {holder.name} runs {holder.running()} instances (6 expected), "
                           f"{standby.name} runs {standby.running()} (0 expected)")
            if not every():
                raise RuntimeError(f"before kill {k + 1}: not every route answers")
            time.sleep(rng.uniform(0, LEASE_S / 5))

            t_kill, wall_kill = holder.die()
            to_mono = lambda wall: t_kill + (wall - wall_kill)
            # A renewal in flight when the server died may still commit: read the expiry a moment later.
            time.sleep(0.1)
            lease = lease_of(cluster)
            expiry = to_mono(lease[2] / 1000)
            if lease[1] != old_token:
                odd.append(f"kill {k + 1}: the lease changed hands within 0.1 s of the kill: {lease}")
            watch = LeaseWatch(cluster, old_token, expiry - 0.3, to_mono)
            watch.start()
            first = {}  # route → first 200 with its body after the kill
            early = []  # answers before the lease expired (a dead host must not serve)
            deadline = t_kill + LEASE_S + 90
            while len(first) < len(routes):
                tick = time.monotonic()
                for n, p in routes:
                    if n not in first and answer(p) == f"{n} from hello 0.1.0\n":
                        now = time.monotonic()
                        first[n] = now
                        if now < expiry:
                            early.append((n, now - t_kill))
                if time.monotonic() > deadline:
                    watch.stop = True
                    raise RuntimeError(f"kill {k + 1}: {standby.name} did not serve every route within "
                                       f"{deadline - t_kill:.0f} s (answered: {sorted(first)})\n{standby.tail()}")
                time.sleep(max(0.0, POLL - (time.monotonic() - tick)))
            t_all = max(first.values())
            watch.join(30)
            watch.stop = True
            lease = lease_of(cluster)
            line = standby.since(t_kill, rf"acting for project {PROJECT} \(from .*serving after")
            pulled = bool(standby.since(t_kill, r"pulled image"))
            if early:
                odd.append(f"kill {k + 1}: routes answered before the dead host's lease expired: {early}")
            if not lease or lease[0] != standby.name or lease[1] <= old_token:
                odd.append(f"kill {k + 1}: after the failover the lease is {lease}, not {standby.name}'s with a new token")
            if watch.taken is not None and watch.taken < expiry:
                odd.append(f"kill {k + 1}: {standby.name} took the lease {expiry - watch.taken:.3f} s before it expired")
            n_running = standby.running()
            if n_running != 6:
                odd.append(f"kill {k + 1}: {standby.name} runs {n_running} instances after the failover (6 expected)")
            row = {"kill": k + 1, "from": holder.name, "to": standby.name, "total": t_all - t_kill,
                   "lease_left": expiry - t_kill, "start": t_all - expiry, "pulled": pulled,
                   "taken": None if watch.taken is None else watch.taken - expiry,
                   "restore": None if watch.serving is None or watch.taken is None else watch.serving - watch.taken,
                   "routes": None if watch.serving is None else t_all - watch.serving,
                   "logged": float(re.search(r"serving after ([\d.]+) s", line[0][1]).group(1)) if line else None}
            rows.append(row)
            seg = lambda v: "   ?  " if v is None else f"{v:5.2f}"
            print(f"kill {k + 1:2}: {holder.name} → {standby.name}: serving again after {fmt(row['total'])}  "
                  f"(lease left {seg(row['lease_left'])} s; after expiry: taken {seg(row['taken'])}, "
                  f"restored {seg(row['restore'])} (log: {seg(row['logged'])}), routes {seg(row['routes'])} "
                  f"= start {seg(row['start'])} s){'  [image pulled]' if pulled else ''}", flush=True)

            # The dead machine comes back: a standby now, it removes what it left behind.
            t_back = time.monotonic()
            holder.start()
            started = time.monotonic() - t_back
            clean = lambda: not holder.instance_ids() and not holder.containers() and \
                not mounts_under(os.path.join(holder.data, "instances"))
            try:
                wait_until(f"{holder.name} removing its leftovers", clean, 30)
            except RuntimeError:
                odd.append(f"kill {k + 1}: {holder.name} back after {started:.1f} s still has instances "
                           f"{holder.instance_ids()}, containers {holder.containers()}, mounts "
                           f"{mounts_under(os.path.join(holder.data, 'instances'))}\n{holder.tail()}")
            left = time.monotonic() - t_back
            hj = json.loads(holder.recast("hosts", "--json").stdout or "{}")
            me = [h for h in hj.get("hosts", []) if h["name"] == holder.name]
            if not me or not me[0]["running"] or me[0]["projects"]:
                odd.append(f"kill {k + 1}: {holder.name} back is listed as {me}")
            nets = sorted(os.listdir(os.path.join(holder.data, "networks"))) if os.path.isdir(os.path.join(holder.data, "networks")) else []
            if VERBOSE:
                print(f"         {holder.name} back: answering after {started:.2f} s, leftovers gone after {left:.2f} s, "
                      f"networks dir: {nets}, data planes: {holder.data_plane_pids()}", flush=True)
            row["back"], row["clean"] = started, left

        tot = [r["total"] for r in rows]
        left = [r["lease_left"] for r in rows]
        start = [r["start"] for r in rows]
        med = lambda xs: statistics.median(xs) if xs else float("nan")
        some = lambda key: [r[key] for r in rows if r[key] is not None]
        print(f"\nfailover over {len(rows)} kills (kill -9 of the holding host with its data plane and instances; "
              f"3 services × 2 instances; lease {LEASE_S:g} s):")
        print(f"  failover time (kill → every route answers):  median {fmt(med(tot))}, max {fmt(max(tot))}, min {fmt(min(tot))}")
        print(f"  lease left at the kill:                      median {fmt(med(left))}, max {fmt(max(left))}")
        print(f"  start time (lease expiry → every route):     median {fmt(med(start))}, max {fmt(max(start))}")
        print(f"    of which expiry → standby takes the lease: median {fmt(med(some('taken')))}, max {fmt(max(some('taken'), default=float('nan')))}")
        print(f"    taken → project restored (serving_ms):     median {fmt(med(some('restore')))}, max {fmt(max(some('restore'), default=float('nan')))}")
        print(f"    restored → every route answers:            median {fmt(med(some('routes')))}, max {fmt(max(some('routes'), default=float('nan')))}")
        print(f"  killed host back (answering / leftovers gone): median {fmt(med([r['back'] for r in rows]))} / "
              f"{fmt(med([r['clean'] for r in rows]))}, max {fmt(max(r['back'] for r in rows))} / {fmt(max(r['clean'] for r in rows))}")
        beyond = [t - LEASE_S for t in tot]
        print(f"  beyond the lease time (failover − {LEASE_S:g} s):   median {fmt(med(beyond))}, max {fmt(max(beyond))}")
        with open("/proc/loadavg") as f:
            print(f"  load average at the end: {' '.join(f.read().split()[:3])}")
        if odd:
            print("\nODD:")
            for o in odd:
                print("  " + o)
    except (Interrupted, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"\nstopped: {e}", file=sys.stderr)
        for o in odd:
            print("  " + o, file=sys.stderr)
        code = 1
    finally:
        shield()
        cleanup(base, hosts, registry, cluster)
    sys.exit(code)


def cleanup(base, hosts, registry, cluster):
    """Everything this run started goes, whatever state it is in."""
    for h in hosts:
        try:
            if h.alive():
                h.recast("destroy", "--yes", "--volumes", "--all-projects", timeout=60)
        except Exception as e:  # keep stopping what can be stopped
            print(f"warning: {h.name}: destroy: {e}", file=sys.stderr)
    for h in hosts:
        if h.alive():
            h.proc.terminate()
            try:
                h.proc.wait(15)
            except subprocess.TimeoutExpired:
                h.proc.kill()
                h.proc.wait()
    for h in hosts:
        for pid in h.data_plane_pids():
            kill(pid)
        for cid, _ in h.containers():
            h.runc("kill", cid, "KILL")
            h.runc("delete", "--force", cid)
        for pid in h.egress_pids():
            kill(pid)
    for point in mounts_under(base):
        subprocess.run(["umount", "-l", point], capture_output=True)
    # The instances' cgroups (runc delete removed each instance's; the parent may remain).
    for h in hosts:
        parent = "recast-" + hashlib.sha256(os.fsencode(os.path.realpath(h.data))).hexdigest()[:12]
        roots = ["/sys/fs/cgroup"] + [os.path.join("/sys/fs/cgroup", c) for c in os.listdir("/sys/fs/cgroup")]
        for root in roots:
            top = os.path.join(root, parent)
            if os.path.isdir(top):
                for d, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass
    registry.stop()
    cluster.stop()
    if os.environ.get("BENCH_KEEP") == "1":
        for h in hosts:
            shutil.rmtree(h.data, ignore_errors=True)
        print(f"logs kept in {base}", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
