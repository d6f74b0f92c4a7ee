#!/usr/bin/env python3
"""Benchmark: service -> service traffic through recast's project network vs direct (issue 18).

The network is made as the runtime makes it (crates/recast-runtime/src/network.rs), in network
namespaces pinned in a temporary directory (`unshare --net=FILE`, so no /run/netns name is left
behind): a project namespace with the bridge `br0` (10.89.0.1/16) and the service addresses
10.89.1.1/32 (service "api", HTTP) and 10.89.3.1/32 (service "bulk", TCP) on it; an "api instance"
namespace (eth0 10.89.1.2/16) and a "client instance" namespace (eth0 10.89.2.2/16), each on an
*isolated* veth port of br0 with a default route via 10.89.0.1. The real data plane
(`recast dataplane --data-dir TMP`) is told, over its socket as the control plane does, to listen
inside the project namespace (`set_routes` for "bench#network" with `netns`) and to forward to
backends in the api instance's namespace (`target: netns`, 127.0.0.1:PORT there).

1. HTTP: wrk -t1 -c32 in the client namespace -> http://10.89.1.1:8080/ -> data plane -> nginx
   (1 worker, 1 KiB static file, as bench/proxy.py's backend) on 127.0.0.1:8080 in the api namespace.
   Anchor: wrk in the api namespace against the same nginx over loopback.
2. TCP bulk: iperf3 -n SIZE (one stream) from the client namespace -> 10.89.3.1:5201, a
   `protocol = "tcp"` internal listener -> iperf3 -s on 127.0.0.1:5201 in the api namespace.
   Anchor: the iperf3 client in the api namespace against the same server over loopback.

For context, not goals: the same traffic through nginx as the proxy (2 workers, upstream keep-alive
and the `stream` module, in the project namespace on 10.89.1.1:8081 / 10.89.3.1:5202, forwarding over
the bridge to 10.89.1.2), and the TCP transfer over the bridge alone (client -> an iperf3 server in the
project namespace, no proxy). Per run, the CPU the whole machine and the data plane used is counted, so
the cost per request / per GB can be compared; and the CPU other processes used during the run.

Each round runs direct, recast, nginx (HTTP, then TCP, then the bridge alone); medians of ROUNDS are
compared.

Usage: bench/network.py [SECONDS] [ROUNDS] [GIB]   (root; cargo build --release -p recast; Debian's
wrk, nginx, libnginx-mod-stream, iperf3, iproute2)
"""
import json, os, re, shutil, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy import RECAST, DataPlane, temp_paths  # noqa: E402

SECS = sys.argv[1] if len(sys.argv) > 1 else "5"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
GIB = sys.argv[3] if len(sys.argv) > 3 else "2"
HTTP_PORT, TCP_PORT = 8080, 5201
REF_HTTP_PORT, REF_TCP_PORT = 8081, 5202
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
API_ADDR, BULK_ADDR = "10.89.1.1", "10.89.3.1"


def ip(ns, script):
    """Run an `ip -batch` script inside namespace `ns`."""
    r = subprocess.run(["nsenter", f"--net={ns}", "--", "ip", "-batch", "-"], input=script, text=True, capture_output=True)
    if r.returncode != 0:
        sys.exit(f"ip in {ns} failed: {r.stderr.strip()}\nscript:\n{script}")


def netns(d, name, pinned):
    """A new network namespace pinned at d/ns/name, its loopback up."""
    os.makedirs(os.path.join(d, "ns"), exist_ok=True)
    path = os.path.join(d, "ns", name)
    open(path, "w").close()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True)
    pinned.append(path)
    ip(path, "link set lo up\n")
    return path


def instance(project, inst, addr, host_end):
    """Plug `inst` into the project's bridge as the runtime does (`Runtime::plug`)."""
    ip(project, f"link add {host_end} type veth peer name eth0 netns {inst}\n"
                f"link set {host_end} master br0\n"
                f"link set {host_end} type bridge_slave isolated on\n"
                f"link set {host_end} up\n")
    ip(inst, f"addr add {addr}/16 dev eth0\nlink set eth0 up\nroute add default via 10.89.0.1\n")


def wait_in(ns, host, port):
    """Until something accepts connections on host:port inside `ns` (10 s)."""
    code = ("import socket,sys,time\n"
            "for _ in range(500):\n"
            " try:\n"
            f"  socket.create_connection(('{host}',{port}),timeout=0.2).close(); sys.exit(0)\n"
            " except OSError: time.sleep(0.02)\n"
            "sys.exit(1)\n")
    if subprocess.run(["nsenter", f"--net={ns}", "--", sys.executable, "-c", code]).returncode != 0:
        sys.exit(f"nothing listens on {host}:{port} in {ns}")


def wrk(ns, url):
    out = subprocess.run(["nsenter", f"--net={ns}", "--", "wrk", "-t1", "-c32", f"-d{SECS}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return rps, p99, (int(errors.group(1)) if errors else 0), (sock.group(1) if sock else "none")


def iperf(ns, host, port=TCP_PORT):
    """GB/s (10^9 bytes) the receiver got from one stream of GIB GiB, with what iperf3 said."""
    r = subprocess.run(["nsenter", f"--net={ns}", "--", "iperf3", "-c", host, "-p", str(port), "-n", f"{GIB}G", "-J"],
                       capture_output=True, text=True)
    j = json.loads(r.stdout)
    if "error" in j:
        log = os.path.join(os.path.dirname(os.path.dirname(ns)), "iperf3.log")
        sys.exit(f"iperf3 to {host}:{port} in {ns}: {j['error']}\nits servers said:\n{open(log).read()}")
    end = j["end"]
    return end["sum_received"]["bits_per_second"] / 8e9, end


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def busy_jiffies():
    """CPU ticks spent so far by the whole machine (all cores, user + system)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # all but idle and iowait


def tree_ticks(roots):
    """CPU ticks so far of `roots` and all their descendants (exited children reaped by them
    count in their cutime/cstime)."""
    procs = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                procs[int(pid)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
            except (OSError, IndexError, ValueError):
                pass
    seen, todo, total = set(), list(roots), 0
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in procs:
            continue
        seen.add(pid)
        total += procs[pid][1]
        todo.extend(c for c, (ppid, _) in procs.items() if ppid == pid)
    return total


def running_builds():
    """Compilers and test runners running right now (they share the 2 cores)."""
    out = subprocess.run(["ps", "-eo", "comm="], capture_output=True, text=True).stdout.split()
    return sorted({c for c in out if c in ("cargo", "rustc", "cargo-nextest", "clippy-driver", "cc", "ld")})


def main():
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    if not os.path.exists(RECAST):
        sys.exit("build it first: cargo build --release -p recast")
    for tool in ("wrk", "nginx", "iperf3", "ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (apt-get install wrk nginx iperf3 iproute2 util-linux)")
    if not os.path.exists(STREAM_MODULE):
        sys.exit(f"{STREAM_MODULE} is missing (apt-get install libnginx-mod-stream)")
    d = tempfile.mkdtemp(prefix="recast-bench-network-")
    procs, pinned, plane = [], [], None
    try:
        os.chmod(d, 0o755)  # nginx workers run as nobody
        project = netns(d, "project", pinned)
        api = netns(d, "api", pinned)
        client = netns(d, "client", pinned)
        ip(project, f"link add br0 type bridge\naddr add 10.89.0.1/16 dev br0\nlink set br0 up\n"
                    f"addr replace {API_ADDR}/32 dev br0\naddr replace {BULK_ADDR}/32 dev br0\n")
        instance(project, api, "10.89.1.2", "rbenchapi")
        instance(project, client, "10.89.2.2", "rbenchclient")

        os.makedirs(f"{d}/www", mode=0o755)
        with open(f"{d}/www/index.html", "wb") as f:
            f.write(b"x" * 1024)
        conf = f"""worker_processes 1;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000; {temp_paths(d, "api")}
  server {{ listen 127.0.0.1:{HTTP_PORT}; listen 10.89.1.2:{HTTP_PORT}; location / {{ root {d}/www; }} }} }}"""
        os.makedirs(f"{d}/api", exist_ok=True)
        with open(f"{d}/api/nginx.conf", "w") as f:
            f.write(f"pid {d}/api/nginx.pid;\nerror_log {d}/api/error.log;\n" + conf)
        procs.append(subprocess.Popen(["nsenter", f"--net={api}", "--", "nginx", "-p", f"{d}/api", "-c", f"{d}/api/nginx.conf", "-g", "daemon off;"]))
        iperf_log = open(f"{d}/iperf3.log", "wb")
        procs.append(subprocess.Popen(["nsenter", f"--net={api}", "--", "iperf3", "-s", "-B", "127.0.0.1", "-p", str(TCP_PORT)],
                                      stdout=iperf_log, stderr=iperf_log))
        # Not a comparison target, a breakdown: the same path through veth and bridge, no proxy.
        procs.append(subprocess.Popen(["nsenter", f"--net={project}", "--", "iperf3", "-s", "-B", "10.89.0.1", "-p", str(TCP_PORT)],
                                      stdout=iperf_log, stderr=iperf_log))
        # The reference proxy: nginx (2 workers, as bench/proxy.py's) in the project namespace, where
        # recast's data plane listens, forwarding over the bridge to the api instance's address.
        procs.append(subprocess.Popen(["nsenter", f"--net={api}", "--", "iperf3", "-s", "-B", "10.89.1.2", "-p", str(TCP_PORT)],
                                      stdout=iperf_log, stderr=iperf_log))
        os.makedirs(f"{d}/ref", exist_ok=True)
        with open(f"{d}/ref/nginx.conf", "w") as f:
            f.write(f"""load_module {STREAM_MODULE};
pid {d}/ref/nginx.pid;
error_log {d}/ref/error.log;
worker_processes 2;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000; {temp_paths(d, "ref")}
  upstream api {{ server 10.89.1.2:{HTTP_PORT}; keepalive 64; }}
  server {{ listen {API_ADDR}:{REF_HTTP_PORT};
    location / {{ proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
stream {{ server {{ listen {BULK_ADDR}:{REF_TCP_PORT}; proxy_pass 10.89.1.2:{TCP_PORT}; }} }}
""")
        procs.append(subprocess.Popen(["nsenter", f"--net={project}", "--", "nginx", "-p", f"{d}/ref", "-c", f"{d}/ref/nginx.conf", "-g", "daemon off;"]))
        wait_in(api, "127.0.0.1", HTTP_PORT)
        wait_in(api, "127.0.0.1", TCP_PORT)
        wait_in(project, "10.89.0.1", TCP_PORT)
        wait_in(client, API_ADDR, REF_HTTP_PORT)
        wait_in(client, BULK_ADDR, REF_TCP_PORT)

        os.makedirs(f"{d}/recast", mode=0o700)
        plane = DataPlane(f"{d}/recast")
        # The data plane's liveness check connects to each backend every interval; iperf3's server
        # takes any connection for a client's (and logs an error), so "bulk" is checked rarely.
        for name, port, every in (("api", HTTP_PORT, 1000), ("bulk", TCP_PORT, 600_000)):
            liveness = {"interval_ms": every, "timeout_ms": 500, "threshold": 3}
            plane.ask({"op": "set_service", "service": {
                "key": f"bench/{name}", "name": name,
                "backends": [{"id": f"{name}-1", "release": 1, "target": {"kind": "netns", "path": api}, "port": port}],
                "groups": [{"release": 1, "weight": None, "backends": [f"{name}-1"]}],
                "unavailable": None, "sticky": False, "liveness": liveness}})
        plane.ask({"op": "set_routes", "project": "bench#network", "routes": [
            {"key": "bench/api@network", "listen": f"{API_ADDR}:{HTTP_PORT}", "service": "bench/api",
             "timeout_ms": 30000, "protocol": "http", "netns": project, "allow": None},
            {"key": "bench/bulk@network", "listen": f"{BULK_ADDR}:{TCP_PORT}", "service": "bench/bulk",
             "timeout_ms": 30000, "protocol": "tcp", "netns": project, "allow": None}]})
        wait_in(client, API_ADDR, HTTP_PORT)
        wait_in(client, BULK_ADDR, TCP_PORT)

        direct_url, recast_url = f"http://127.0.0.1:{HTTP_PORT}/", f"http://{API_ADDR}:{HTTP_PORT}/"
        wrk(client, recast_url)  # warm up
        wrk(api, direct_url)
        others = running_builds()
        hz = os.sysconf("SC_CLK_TCK")
        roots = [os.getpid()]  # wrk and iperf3 clients are reaped by this process
        roots += [plane.proc.pid] + [p.pid for p in procs]
        w0, m0, t_start = busy_jiffies(), tree_ticks(roots), time.perf_counter()
        runs = {k: [] for k in ("http direct", "http recast", "http nginx", "tcp direct", "tcp recast", "tcp nginx", "tcp bridge")}

        def measure(kind, fn, *args):
            """Run one measurement; keep its result, the cores the machine and the data plane used."""
            t0, w, c = time.perf_counter(), busy_jiffies(), cpu_ticks(plane.proc.pid)
            r = fn(*args)
            dt = time.perf_counter() - t0
            runs[kind].append((r, (busy_jiffies() - w) / hz / dt, (cpu_ticks(plane.proc.pid) - c) / hz / dt))

        for _ in range(ROUNDS):
            measure("http direct", wrk, api, direct_url)
            measure("http recast", wrk, client, recast_url)
            measure("http nginx", wrk, client, f"http://{API_ADDR}:{REF_HTTP_PORT}/")
            measure("tcp direct", iperf, api, "127.0.0.1")
            measure("tcp recast", iperf, client, BULK_ADDR)
            measure("tcp nginx", iperf, client, BULK_ADDR, REF_TCP_PORT)
            measure("tcp bridge", iperf, client, "10.89.0.1")
        other_load = ((busy_jiffies() - w0) - (tree_ticks(roots) - m0)) / hz / (time.perf_counter() - t_start)
        others = sorted(set(others + running_builds()))

        med = lambda xs: sorted(xs)[len(xs) // 2]
        m = {k: {"rate": med([r[0][0] for r in v]), "cores": med([r[1] for r in v]), "plane": med([r[2] for r in v]),
                 # CPU of the whole machine per unit of work, median of the runs' own ratios
                 "cost": med([r[1] / r[0][0] for r in v])} for k, v in runs.items()}
        print(f"internal network benchmark: {ROUNDS} rounds (medians), recast dataplane process, project network as the runtime makes it")
        print(f"  HTTP, wrk -t1 -c32 -d{SECS}s, 1 KiB static file (nginx, 1 worker)")
        for k, label in (("http direct", "direct (one netns, loopback)"), ("http recast", "client -> 10.89.1.1 -> api"),
                         ("http nginx", "reference: nginx proxy")):
            x, v = m[k], runs[k]
            print(f"    {label:<40} {x['rate']:>9.0f} req/s   p99 {med([r[0][1] for r in v]):6.2f} ms   "
                  f"non-2xx {sum(r[0][2] for r in v)}   socket errors {v[-1][0][3]}   "
                  f"machine {x['cores']:.2f} cores, {x['cost'] * 1e6:.0f} us CPU/request")
        d_, r_ = m["http direct"], m["http recast"]
        print(f"    data plane during recast runs: {r_['plane']:.2f} cores, {r_['plane'] / r_['rate'] * 1e6:.0f} us CPU/request")
        print(f"    recast / direct requests/s   {r_['rate'] / d_['rate']:.3f}x   (goal >= 0.8x)")
        print(f"    recast / direct p99          {med([r[0][1] for r in runs['http recast']]) / med([r[0][1] for r in runs['http direct']]):.3f}x")
        print(f"    nginx / direct requests/s    {m['http nginx']['rate'] / d_['rate']:.3f}x   (reference)")
        print(f"  TCP bulk, iperf3 one stream, {GIB} GiB per run")
        for k, label in (("tcp direct", "direct (one netns, loopback)"), ("tcp recast", "client -> 10.89.3.1 -> api"),
                         ("tcp nginx", "reference: nginx stream proxy"),
                         ("tcp bridge", "breakdown: bridge only, no proxy")):
            x = m[k]
            print(f"    {label:<40} {x['rate']:>6.2f} GB/s   machine {x['cores']:.2f} cores, {x['cost']:.2f} CPU-s/GB")
        d_, r_ = m["tcp direct"], m["tcp recast"]
        print(f"    data plane during recast runs: {r_['plane']:.2f} cores, {r_['plane'] / r_['rate']:.2f} CPU-s/GB")
        print(f"    recast / direct throughput   {r_['rate'] / d_['rate']:.3f}x   (goal >= 0.9x)")
        print(f"    nginx / direct throughput    {m['tcp nginx']['rate'] / d_['rate']:.3f}x   (reference)")
        if os.environ.get("BENCH_VERBOSE"):
            for k, v in runs.items():
                print(f"  {k} runs (rate/machine cores/data plane cores): "
                      + "  ".join(f"{r[0][0]:.{0 if k.startswith('http') else 2}f}/{r[1]:.2f}/{r[2]:.2f}" for r in v))
        print(f"  CPU used by other processes during the run: {other_load:.2f} cores on average"
              + (f" (running at start or end: {', '.join(others)})" if others else ""))
    finally:
        if plane is not None:
            plane.stop()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for path in reversed(pinned):
            subprocess.run(["umount", path], stderr=subprocess.DEVNULL)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
