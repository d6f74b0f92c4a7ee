#!/usr/bin/env python3
"""Benchmark: requests/s and p99 through a recast route vs nginx, same backend, same run (issues 5, 6, 14).

Backend: nginx (1 worker) serving a 1 KiB static file on 127.0.0.1. Anchor: nginx with 2 workers
as a reverse proxy with upstream keep-alive (the ANCHORS.md recipe). recast: the real data plane
process, `recast dataplane --data-dir TMP` (what `recast server` starts and users' routes run in),
configured over its socket like the control plane does: a service whose backend is the same nginx
backend on the host, and a route to it. Also a 10/90 canary: a second service with two releases
(weights 10 and 90), each with its own backend, both on the same nginx port; issue 6's goal is that
it keeps >= 0.95x of the single route. Load: wrk -t1 -c32 -dSECONDS.

The targets are measured in turn, ROUNDS times (default 5), and medians are compared, because on a shared
2-core machine one run of one target against one run of another is mostly noise.

Usage: bench/proxy.py [SECONDS] [ROUNDS]   (needs nginx and wrk from Debian;
cargo build --release -p recast)
"""
import json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, free_port

RECAST = os.path.join(ROOT, "target/release/recast")
SECS = sys.argv[1] if len(sys.argv) > 1 else "5"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5


def wait(p):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listens on {p}")


def nginx(d, name, conf):
    os.makedirs(f"{d}/{name}", exist_ok=True)
    path = f"{d}/{name}/nginx.conf"
    with open(path, "w") as f:
        f.write(f"pid {d}/{name}/nginx.pid;\nerror_log {d}/{name}/error.log;\n" + conf)
    return subprocess.Popen(["nginx", "-p", f"{d}/{name}", "-c", path, "-g", "daemon off;"])


def temp_paths(d, name):
    return " ".join(f"{k}_temp_path {d}/{name}/{k};" for k in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])


def wrk(p):
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{SECS}s", "--latency", f"http://127.0.0.1:{p}/"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return rps, p99, (int(errors.group(1)) if errors else 0), (sock.group(1) if sock else "none")


class DataPlane:
    """A `recast dataplane` process on its own data directory, told what to serve over its socket."""

    def __init__(self, data_dir):
        self.sock_path = os.path.join(data_dir, "dataplane.sock")
        self.log = open(os.path.join(data_dir, "bench-dataplane.log"), "wb")
        self.proc = subprocess.Popen([RECAST, "--data-dir", data_dir, "dataplane"], stdout=self.log, stderr=self.log)
        for _ in range(500):
            if self.proc.poll() is not None:
                sys.exit(f"recast dataplane exited with {self.proc.returncode}; see {self.log.name}")
            try:
                self.conn = socket.socket(socket.AF_UNIX)
                self.conn.connect(self.sock_path)
                break
            except OSError:
                self.conn.close()
                time.sleep(0.02)
        else:
            sys.exit(f"recast dataplane never listened on {self.sock_path}")
        self.reader = self.conn.makefile("rb")

    def ask(self, msg):
        self.conn.sendall(json.dumps(msg).encode() + b"\n")
        reply = json.loads(self.reader.readline())
        if reply.get("reply") == "error" or reply.get("failed"):
            sys.exit(f"the data plane refused {msg['op']}: {reply}")
        return reply

    def service(self, key, backend_port, releases):
        """`releases`: [(release, weight or None)], each with one backend on the host's `backend_port`."""
        backends = [{"id": f"{key}-r{r}", "release": r, "target": {"kind": "host"}, "port": backend_port} for r, _ in releases]
        groups = [{"release": r, "weight": w, "backends": [f"{key}-r{r}"]} for r, w in releases]
        self.ask({"op": "set_service", "service": {
            "key": key, "name": key.split("/")[-1], "backends": backends, "groups": groups,
            "unavailable": None, "sticky": False,
            "liveness": {"interval_ms": 1000, "timeout_ms": 500, "threshold": 3}}})

    def routes(self, project, routes):
        """`routes`: [(key, port, service key)]."""
        self.ask({"op": "set_routes", "project": project, "routes": [
            {"key": k, "listen": f"127.0.0.1:{p}", "service": s, "timeout_ms": 30000} for k, p, s in routes]})

    def stop(self):
        self.conn.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def main():
    if not os.path.exists(RECAST):
        sys.exit("build it first: cargo build --release -p recast")
    d = tempfile.mkdtemp(prefix="recast-bench-proxy-")
    procs, plane = [], None
    try:
        backend, via_nginx, via_recast, via_canary = free_port(), free_port(), free_port(), free_port()
        os.chmod(d, 0o755)  # nginx workers run as nobody
        os.makedirs(f"{d}/www", mode=0o755)
        with open(f"{d}/www/index.html", "wb") as f:
            f.write(b"x" * 1024)
        procs.append(nginx(d, "backend", f"""worker_processes 1;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000; {temp_paths(d, "backend")}
  server {{ listen 127.0.0.1:{backend}; location / {{ root {d}/www; }} }} }}"""))
        procs.append(nginx(d, "proxy", f"""worker_processes 2;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000; {temp_paths(d, "proxy")}
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{via_nginx};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}"""))
        wait(backend)
        os.makedirs(f"{d}/recast", mode=0o700)
        plane = DataPlane(f"{d}/recast")
        plane.service("bench/web", backend, [(1, None)])
        plane.service("bench/canary", backend, [(1, 10), (2, 90)])
        plane.routes("bench", [("bench/web", via_recast, "bench/web"), ("bench/canary", via_canary, "bench/canary")])
        for p in (via_nginx, via_recast, via_canary):
            wait(p)
        wrk(via_recast)  # warm up
        targets = [("direct backend", backend), ("nginx proxy", via_nginx), ("recast route", via_recast), ("recast 10/90 canary", via_canary)]
        runs = {name: [] for name, _ in targets}
        for _ in range(ROUNDS):
            for name, p in targets:
                runs[name].append(wrk(p))
        med = lambda xs: sorted(xs)[len(xs) // 2]
        results = {name: (med([r[0] for r in rs]), med([r[1] for r in rs]), sum(r[2] for r in rs), rs[-1][3]) for name, rs in runs.items()}
        print(f"proxy benchmark: wrk -t1 -c32 -d{SECS}s x {ROUNDS} rounds (medians), 1 KiB static backend (nginx, 1 worker), recast dataplane process")
        for name, (rps, p99, non2xx, sock) in results.items():
            print(f"  {name:<22} {rps:>10.0f} req/s   p99 {p99:6.2f} ms   non-2xx {non2xx}   socket errors {sock}")
        if os.environ.get("BENCH_VERBOSE"):
            for name, rs in runs.items():
                print(f"  {name:<22} runs: " + "  ".join(f"{r[0]:.0f}/{r[1]:.2f}" for r in rs))
        n, r, c = results["nginx proxy"], results["recast route"], results["recast 10/90 canary"]
        print(f"  recast / nginx requests/s  {r[0]/n[0]:.3f}x   (goal >= 1.0x)")
        print(f"  recast / nginx p99         {r[1]/n[1]:.3f}x   (goal <= 1.0x)")
        print(f"  canary / single route      {c[0]/r[0]:.3f}x   (goal >= 0.95x)")
    finally:
        if plane is not None:
            plane.stop()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
