#!/usr/bin/env python3
"""Benchmark: the state in PostgreSQL against SQLite (issue 15), both in the same run.

1. `recast plan` of a spec of 1,000 services whose releases are recorded (a no-change plan that
   compares 1,000 current releases; 3 releases recorded per service). The state is written once
   into SQLite by `examples/seed` (releases recorded as `recast apply` records them, no
   instances started) and copied into PostgreSQL with `recast state migrate`, so both backends
   hold the identical rows. The plans of the two backends are timed alternately.
2. APPLIES applies of a small project (3 services: web ×2 behind a route, api, worker; each apply
   changes every service's environment, so every apply rolls out all three) on two real
   `recast server`s running side by side — one on SQLite (its data directory's state.db), one
   with `--state postgres://…` — alternately, while 4 keep-alive clients per route send
   requests the whole time. Time per apply (CLI start to exit) and failed requests.

PostgreSQL is a throwaway cluster started here: `initdb` as the postgres user into a temporary
directory, listening only on a Unix socket there, default settings (fsync and synchronous_commit
on: every commit waits for its WAL flush). `BENCH_PG_SYNC=off` starts it with
synchronous_commit = off instead (the durability of recast's SQLite, WAL with synchronous =
NORMAL: nothing is corrupted by a crash, the last commits may be lost).
Everything started here (servers, their instances through `recast destroy`, the data planes,
the cluster) is stopped and removed at the end, also on Ctrl-C or a failure.

Usage: bench/state.py [PLANS] [APPLIES]   (defaults 20 and 20; needs
cargo build --release -p recast && cargo build --release -p recast-server --example seed;
scripts/build-hello;
PostgreSQL 15 server binaries in /usr/lib/postgresql/15/bin or $BENCH_PG_BIN)
"""
import json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, free_port
from pg import PGBIN, Cluster, Interrupted, on_signal, run, shield, wait_until

RECAST = os.path.join(ROOT, "target/release/recast")
SEED = os.path.join(ROOT, "target/release/examples/seed")
HELLO = os.path.join(ROOT, "examples/hello/dist/hello")
PG_SYNC = os.environ.get("BENCH_PG_SYNC", "on")
PLANS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
APPLIES = int(sys.argv[2]) if len(sys.argv) > 2 else 20
N = 1000
HISTORY = 3  # releases recorded per service before the plan
VERBOSE = os.environ.get("BENCH_VERBOSE") == "1"


class Server:
    """A `recast server` on its own data directory, SQLite (state.db) or `--state URL`."""

    def __init__(self, name, data, state=None):
        self.name, self.data, self.state = name, data, state
        self.env = {k: v for k, v in os.environ.items() if k != "RECAST_STATE"}
        self.env["RECAST_DATA_DIR"] = data
        self.proc = None
        os.makedirs(data, exist_ok=True)

    def start(self):
        # Stopped (SIGTERM) if this script dies without cleaning up.
        args = ["setpriv", "--pdeathsig=TERM", RECAST, "server"] + (["--state", self.state] if self.state else [])
        log = open(os.path.join(self.data, "bench-server.log"), "a")
        self.proc = subprocess.Popen(args, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        answers = lambda: subprocess.run([RECAST, "status", "--json"], env=self.env, capture_output=True).returncode == 0
        wait_until(f"{self.name} server answering (log {self.data}/bench-server.log)", answers, 30, lambda: self.proc.poll() is None)

    def recast(self, *args):
        return subprocess.run([RECAST, *args], env=self.env, capture_output=True, text=True)

    def dataplanes(self):
        """Pids of the data plane processes of this data directory."""
        pids = []
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if b"dataplane" in args and os.fsencode(self.data) in args:
                pids.append(int(p))
        return pids

    def cleanup(self):
        """Destroy every project (instances, networks, routes), stop the server and its data plane."""
        try:
            if self.proc is None:
                return  # never started
            if self.proc.poll() is not None:
                self.start()  # the server died: a new one destroys what the old one left
            # Refused while an apply cut short by Ctrl-C is still running: try again for a while.
            deadline = time.monotonic() + 60
            while (r := self.recast("destroy", "--yes", "--volumes", "--all-projects")).returncode != 0:
                if time.monotonic() > deadline:
                    print(f"warning: {self.name}: recast destroy failed: {r.stdout}{r.stderr}", file=sys.stderr)
                    break
                time.sleep(1)
        except Exception as e:  # keep stopping what can be stopped
            print(f"warning: {self.name}: {e}", file=sys.stderr)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # The data plane exits 10 s after it has nothing configured; do not wait for that.
        for pid in self.dataplanes():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 35
        while self.dataplanes() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.dataplanes():
            print(f"warning: {self.name}: data plane {pid} still running; killing it", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)


class Load:
    """4 keep-alive clients on one route; every response that is not a 200 counts as failed."""

    def __init__(self, port):
        self.port, self.stop, self.ok, self.failed = port, False, 0, []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(4)]
        for t in self.threads:
            t.start()

    def run(self):
        s = None
        while not self.stop:
            try:
                if s is None:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise OSError("closed mid-response")
                    buf += chunk
                head, body = buf.split(b"\r\n\r\n", 1)
                n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
                while len(body) < n:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise OSError("closed mid-body")
                    body += chunk
                with self.lock:
                    if head.startswith(b"HTTP/1.1 200"):
                        self.ok += 1
                    else:
                        self.failed.append(head.split(b"\r\n")[0].decode())
                if b"connection: close" in head.lower():
                    s.close()
                    s = None
            except OSError as e:
                with self.lock:
                    self.failed.append(str(e))
                if s is not None:
                    s.close()
                s = None

    def finish(self):
        self.stop = True
        for t in self.threads:
            t.join(10)
        return self.ok, self.failed


def body(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data.split(b"\r\n\r\n", 1)[1].decode()


def plan_spec(path, rev):
    """1,000 services of one image; `rev` 0 is the spec the plans are timed on."""
    suffix = "" if rev == 0 else f"-r{rev}"
    with open(path, "w") as f:
        f.write(f'image "app" {{\n  from = "scratch"\n  copy {{\n    src  = "{HELLO}"\n    dest = "/bin/hello"\n  }}\n  cmd = ["/bin/hello"]\n}}\n')
        for i in range(N):
            f.write(f'service "s{i}" {{\n  image = image.app\n  port  = 8080\n  env   = {{ MESSAGE = "value-{i}{suffix}" }}\n}}\n')


APPLY_SPEC = """
image "web" {{
  from = "scratch"
  copy {{
    src  = "{hello}"
    dest = "/bin/hello"
    mode = "0555"
  }}
  cmd = ["/bin/hello"]
}}
service "web" {{
  image     = image.web
  instances = 2
  port      = 8080
  env       = {{ MESSAGE = "{msg}" }}
  health {{
    http     = "/healthz"
    interval = "200ms"
  }}
  rollout {{
    strategy = "rolling"
  }}
}}
service "api" {{
  image = image.web
  port  = 8080
  env   = {{ MESSAGE = "api {msg}" }}
  health {{
    http     = "/healthz"
    interval = "200ms"
  }}
}}
service "worker" {{
  image = image.web
  port  = 8080
  env   = {{ MESSAGE = "worker {msg}" }}
  health {{
    http     = "/healthz"
    interval = "200ms"
  }}
}}
route "web" {{
  listen  = "127.0.0.1:{port}"
  service = service.web
}}
"""


def ms(s):
    return f"{s * 1000:8.1f} ms"


def p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]


def bench_plan(d, cluster):
    proj = os.path.join(d, "plan", "proj")
    os.makedirs(proj)
    spec = os.path.join(proj, "recast.hcl")
    lite_dir, pg_dir = os.path.join(d, "plan", "sqlite"), os.path.join(d, "plan", "pg")
    # HISTORY releases per service, the last one the spec's: a no-change plan.
    for rev in list(range(HISTORY - 1, 0, -1)) + [0]:
        plan_spec(spec, rev)
        run([SEED, proj, lite_dir], "seeding the SQLite state")
    cluster.createdb("plan")
    url = cluster.url("plan")
    base = {k: v for k, v in os.environ.items() if k != "RECAST_STATE"}
    lite = dict(base, RECAST_DATA_DIR=lite_dir)
    pg = dict(base, RECAST_DATA_DIR=pg_dir, RECAST_STATE=url)
    out = run([RECAST, "state", "migrate", "--from", "sqlite:" + os.path.join(lite_dir, "state.db"), "--to", url, "--json"],
              "copying the state into PostgreSQL", env=lite)
    copied = json.loads(out)
    # The first plan on each side also builds the image (stat cache) into its data directory.
    plans = {}
    for name, env in (("sqlite", lite), ("postgres", pg)):
        p = json.loads(run([RECAST, "plan", "--json", "-f", proj], f"recast plan on {name}", env=env))
        unchanged = [s for s in p["services"] if s["action"] == "unchanged" and s["current_release"] == HISTORY]
        if len(unchanged) != N or p["routes"]:
            raise RuntimeError(f"plan on {name}: expected {N} unchanged services at release {HISTORY}, got {len(unchanged)}")
        plans[name] = p
    if plans["sqlite"] != plans["postgres"]:
        raise RuntimeError("the plans on SQLite and PostgreSQL differ")
    t = {"sqlite": [], "postgres": []}
    cmd = [RECAST, "plan", "-f", proj]
    for i in range(PLANS):
        order = (("sqlite", lite), ("postgres", pg)) if i % 2 == 0 else (("postgres", pg), ("sqlite", lite))
        for name, env in order:
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t[name].append(time.perf_counter() - t0)
    if VERBOSE:
        for name, xs in t.items():
            print(f"  {name}: " + " ".join(f"{x*1000:.1f}" for x in xs))
    return t, copied


def bench_apply(d, cluster):
    cluster.createdb("apply")
    servers = [Server("sqlite", os.path.join(d, "apply", "sqlite")),
               Server("postgres", os.path.join(d, "apply", "pg"), cluster.url("apply"))]
    loads = []
    try:
        ports, projs = {}, {}
        for s in servers:
            s.start()
            ports[s.name] = free_port()
            projs[s.name] = os.path.join(d, "apply", s.name + "-spec", "proj")
            os.makedirs(projs[s.name])

        def apply(s, msg):
            with open(os.path.join(projs[s.name], "recast.hcl"), "w") as f:
                f.write(APPLY_SPEC.format(hello=HELLO, msg=msg, port=ports[s.name]))
            t0 = time.perf_counter()
            r = s.recast("apply", "--yes", "--json", "-f", projs[s.name])
            took = time.perf_counter() - t0
            if r.returncode != 0:
                raise RuntimeError(f"apply {msg} on {s.name} failed: {r.stdout}{r.stderr}")
            return took

        for s in servers:
            apply(s, "v0")
        loads = [Load(ports[s.name]) for s in servers]
        times = {s.name: [] for s in servers}
        for i in range(APPLIES):
            for s in (servers if i % 2 == 0 else servers[::-1]):
                times[s.name].append(apply(s, f"v{i + 1}"))
        results = {}
        for s, load in zip(servers, loads):
            ok, failed = load.finish()
            results[s.name] = (ok, failed)
        loads = []
        # What the servers did: the last release serves, every release is recorded where it should be.
        for s in servers:
            got = body(ports[s.name])
            if not got.startswith(f"v{APPLIES} "):
                raise RuntimeError(f"{s.name}: the route answers {got!r}, not release v{APPLIES}")
            n = len(json.loads(s.recast("history", "web", "--json").stdout)["releases"])
            if n != APPLIES + 1:
                raise RuntimeError(f"{s.name}: history of web holds {n} releases, not {APPLIES + 1}")
        if os.path.exists(os.path.join(servers[1].data, "state.db")):
            raise RuntimeError("the PostgreSQL server wrote a state.db")
        return times, results
    finally:
        shield()
        for load in loads:
            load.finish()
        for s in servers:
            s.cleanup()


def main():
    for f, how in ((RECAST, "cargo build --release -p recast"), (SEED, "cargo build --release -p recast-server --example seed"),
                   (HELLO, "scripts/build-hello"), (os.path.join(PGBIN, "postgres"), "PostgreSQL 15 (or set BENCH_PG_BIN)")):
        if not os.path.exists(f):
            sys.exit(f"missing {f}: {how}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    d = tempfile.mkdtemp(prefix="recast-bench-state-")
    cluster = Cluster([f"synchronous_commit={PG_SYNC}"])
    try:
        cluster.start()
        plan_t, copied = bench_plan(d, cluster)
        apply_t, served = bench_apply(d, cluster)
    except Interrupted as e:
        sys.exit(f"interrupted ({e}); cleaned up")
    finally:
        shield()
        cluster.stop()
        shutil.rmtree(d, ignore_errors=True)
        if os.path.exists(d):
            print(f"warning: {d} could not be removed (mounts left: "
                  f"{[l.split()[4] for l in open('/proc/self/mountinfo') if d in l]})", file=sys.stderr)

    sync = "synchronous_commit on" if PG_SYNC == "on" else f"synchronous_commit {PG_SYNC}"
    print(f"state backends: SQLite (WAL, synchronous NORMAL) vs PostgreSQL 15 (Unix socket, {sync}), same run")
    rows = copied.get("rows", "?")
    print(f"recast plan, {N} services with {HISTORY} recorded releases each ({rows} rows copied by `recast state migrate`), "
          f"no changes; {PLANS} plans per backend, alternating")
    ps, pp = plan_t["sqlite"], plan_t["postgres"]
    print(f"  SQLite      median {ms(statistics.median(ps))}   p90 {ms(p90(ps))}")
    print(f"  PostgreSQL  median {ms(statistics.median(pp))}   p90 {ms(p90(pp))}")
    r_plan = statistics.median(pp) / statistics.median(ps)
    print(f"  PostgreSQL / SQLite (median) {r_plan:6.2f}x   p90 {p90(pp) / p90(ps):6.2f}x   goal <= 2x: {'met' if r_plan <= 2 else 'MISSED'}")
    print(f"{APPLIES} applies per backend of 3 services (web x2 behind a route, api, worker; every service rolls out), "
          f"two servers side by side, alternating, 4 keep-alive clients per route")
    for name, label in (("sqlite", "SQLite    "), ("postgres", "PostgreSQL")):
        ts = apply_t[name]
        ok, failed = served[name]
        first = f"  first: {failed[0]}" if failed else ""
        print(f"  {label}  median {ms(statistics.median(ts))}   max {ms(max(ts))}   requests {ok}, failed {len(failed)}{first}")
    r_apply = statistics.median(apply_t["postgres"]) / statistics.median(apply_t["sqlite"])
    r_max = max(apply_t["postgres"]) / max(apply_t["sqlite"])
    print(f"  PostgreSQL / SQLite (median) {r_apply:6.2f}x   max {r_max:6.2f}x   goal <= 2x: {'met' if r_apply <= 2 else 'MISSED'}")
    failed = sum(len(f) for _, f in served.values())
    print(f"goal (PostgreSQL within 2x of SQLite, no failed request): "
          f"{'met' if r_plan <= 2 and r_apply <= 2 and failed == 0 else 'NOT met'}")


if __name__ == "__main__":
    main()
