#!/usr/bin/env python3
"""Benchmark: time from "create instance" to the first HTTP 200 from the example service (issue 4).

recast: `recast run hello --port P` (host network, read-only root, through runc), timed from the
command's start to the first 200 on 127.0.0.1:P. Anchor, in the same run: `podman run -d
--network=host --read-only` of the same image (loaded from recast's export), timed the same way.
Median of RUNS (default 20). Also reports the memory an instance costs.

Usage: bench/instance.py [RUNS]   (needs: cargo build --release -p recast; scripts/build-hello;
apt-get install podman runc)
"""
import os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, free_port

RECAST = os.path.join(ROOT, "target/release/recast")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 20


def wait_200(port, t0, deadline=10.0):
    while time.perf_counter() - t0 < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.0005)
    raise SystemExit(f"no HTTP 200 on port {port} within {deadline}s")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    if not os.path.exists(RECAST):
        sys.exit("build recast first: cargo build --release -p recast")
    d = tempfile.mkdtemp(prefix="recast-bench-instance-")
    env = dict(os.environ, RECAST_DATA_DIR=os.path.join(d, "data"))
    podman = ["podman", "--root", f"{d}/podman/root", "--runroot", f"{d}/podman/run", "--storage-driver", "vfs",
              "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
    try:
        subprocess.run([RECAST, "build", "-f", os.path.join(ROOT, "examples/hello")], env=env, check=True, stdout=subprocess.DEVNULL)
        archive = os.path.join(d, "hello.tar")
        subprocess.run([RECAST, "image", "export", "hello", "-o", archive], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(podman + ["load", "-i", archive], check=True, capture_output=True)
        # Warm both paths once (image unpack, page cache).
        rec, pod, mem = [], [], None
        for i in range(RUNS + 1):
            port = free_port()
            t0 = time.perf_counter()
            p = subprocess.Popen([RECAST, "run", "hello", "--port", str(port)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t = wait_200(port, t0)
            if i > 0:
                rec.append(t)
            if mem is None:
                inst = os.listdir(os.path.join(d, "data/instances"))[0]
                pid = int(open(os.path.join(d, "data/instances", inst, "pid")).read())
                mem = (rss_kb(pid), rss_kb(p.pid))
            p.send_signal(signal.SIGINT)
            p.wait()

            port = free_port()
            t0 = time.perf_counter()
            cid = subprocess.run(podman + ["run", "-d", "--network=host", "--read-only", "-e", f"PORT={port}",
                                           "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
                                           "localhost/hello:latest"], check=True, capture_output=True, text=True).stdout.strip()
            t = wait_200(port, t0)
            if i > 0:
                pod.append(t)
            subprocess.run(podman + ["rm", "-f", "-t", "0", cid], check=True, capture_output=True)
        r, q = statistics.median(rec), statistics.median(pod)
        print(f"instance start benchmark: create -> first HTTP 200, median of {RUNS}")
        print(f"  recast run (runc)          {r*1000:7.1f} ms   (goal < 60 ms)")
        print(f"  podman run --read-only     {q*1000:7.1f} ms")
        print(f"  ratio recast / podman        {r/q:.3f}x   (goal <= 0.3x)")
        print(f"  memory: the instance's app {mem[0]} KiB RSS; recast keeps no process per instance "
              f"(runc exits after start); the foreground `recast run` itself {mem[1]} KiB RSS")
    finally:
        subprocess.run(podman + ["rm", "-a", "-f", "-t", "0"], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
