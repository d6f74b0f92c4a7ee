#!/usr/bin/env python3
"""Benchmark: the guard's cost on a fleet of 20 instances of a stock daemon (busybox httpd
started through `sh -c "exec ..."`) with `scan_interval = "1s"` (issue 12).

Prints the server's CPU share while idle (from /proc/<server pid>/stat over SECONDS), the
scheduled scans' time per instance (the server's `recast_guard_scan_seconds_total` and
`recast_guard_scans_total` metrics), and the per-instance times of `recast drift` (metadata)
and `recast drift --full` on the same fleet.

Usage: bench/guard.py [SECONDS]   (needs cargo build --release -p recast, runc, busybox-static)
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, free_port

RECAST = os.environ.get("RECAST", os.path.join(ROOT, "target/release/recast"))
SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
N = 20

SPEC = """
image "httpd" {{
  from = "scratch"
  copy {{
    src  = "busybox"
    dest = "/bin/busybox"
    mode = "0755"
  }}
  copy {{
    src  = "www"
    dest = "/www"
  }}
  cmd = ["/bin/busybox", "sh", "-c", "exec /bin/busybox httpd -f -p 8080 -h /www"]
}}

service "httpd" {{
  image     = image.httpd
  instances = {n}
  port      = 8080
}}

guard {{
  scan_interval = "1s"
  on_drift      = "replace"
}}
"""


def rc(data, cwd, *args):
    env = dict(os.environ, RECAST_DATA_DIR=data)
    return subprocess.run([RECAST, *args], cwd=cwd, env=env, capture_output=True, text=True)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def guard_metrics(data):
    info = json.load(open(os.path.join(data, "server.json")))
    token = open(os.path.join(data, "token")).read().strip()
    req = urllib.request.Request(f"http://{info['addr']}/metrics", headers={"Authorization": f"Bearer {token}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    get = lambda name: sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + "{"))
    return get("recast_guard_scans_total"), get("recast_guard_scan_seconds_total")


def drift(data, cwd, *extra):
    t = time.perf_counter()
    r = rc(data, cwd, "drift", "--json", *extra)
    wall = time.perf_counter() - t
    v = json.loads(r.stdout)
    if v["drifted"]:
        sys.exit(f"drift on a clean fleet: {r.stdout[:800]}")
    per = [i["scan"]["micros"] / 1000 for i in v["instances"]]
    return wall, per, v["instances"][0]["scan"]


def main():
    busybox = shutil.which("busybox") or sys.exit("busybox (static) is not installed")
    d = tempfile.mkdtemp(prefix="recast-bench-guard-")
    data, proj = os.path.join(d, "data"), os.path.join(d, "proj")
    os.makedirs(os.path.join(proj, "www"))
    shutil.copy(busybox, os.path.join(proj, "busybox"))
    with open(os.path.join(proj, "www/index.html"), "w") as f:
        f.write("ok\n")
    with open(os.path.join(proj, "recast.hcl"), "w") as f:
        f.write(SPEC.format(n=N))
    env = dict(os.environ, RECAST_DATA_DIR=data)
    server = subprocess.Popen([RECAST, "server", "--listen", "127.0.0.1:0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(os.path.join(data, "server.json")):
            time.sleep(0.05)
        r = rc(data, proj, "apply", "--yes")
        if r.returncode:
            sys.exit(f"apply failed: {r.stderr}")
        time.sleep(5)  # every instance healthy, the first scans done
        ids0 = rc(data, proj, "status", "--json").stdout
        s0, t0, c0, w0 = *guard_metrics(data), cpu_seconds(server.pid), time.perf_counter()
        time.sleep(SECONDS)
        s1, t1, c1, w1 = *guard_metrics(data), cpu_seconds(server.pid), time.perf_counter()
        wall = w1 - w0
        scans, scan_s = s1 - s0, t1 - t0
        meta_wall, meta, stats = drift(data, proj)
        full_wall, full, full_stats = drift(data, proj, "--full")
        ids1 = [i["id"] for s in json.loads(rc(data, proj, "status", "--json").stdout)["services"] for i in s["instances"]]
        same = sorted(ids1) == sorted(i["id"] for s in json.loads(ids0)["services"] for i in s["instances"])
        print(f"fleet: {N} instances of busybox httpd (sh -c exec), scan_interval 1s, {wall:.1f} s idle")
        print(f"  image: {stats['entries']} entries; processes per instance: {stats['processes']}")
        print(f"  server CPU while idle:        {100 * (c1 - c0) / wall:.2f}% of a core   (goal < 1%)")
        print(f"  guard scans in that time:     {scans:.0f} ({scans / wall:.1f}/s), "
              f"{100 * scan_s / wall:.2f}% of the wall time scanning")
        print(f"  scheduled scan per instance:  {1000 * scan_s / max(scans, 1):.3f} ms   (goal < 5 ms)")
        print(f"  recast drift (metadata):      {meta_wall * 1000:.0f} ms for the fleet, "
              f"median {statistics.median(meta):.3f} ms per instance, {stats['hashed']} files hashed")
        print(f"  recast drift --full:          {full_wall * 1000:.0f} ms for the fleet, "
              f"median {statistics.median(full):.3f} ms per instance, {full_stats['hashed']} files "
              f"({full_stats['bytes_hashed'] / 1e6:.1f} MB) hashed each")
        print(f"  replacements while idle:      {'none' if same else 'SOME (instance ids changed)'}")
    finally:
        rc(data, proj, "destroy", "--yes", "--volumes")
        server.kill()
        server.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
