#!/usr/bin/env python3
"""Benchmarks of deploys (issue 5), against a real `recast server` and real containers:

1. 20 consecutive applies alternating v1/v2 (rolling, 3 instances) under constant load from 4
   keep-alive clients: failed requests (must be 0) and the median time per deploy.
2. Rollback: from `recast rollback` to all traffic on the previous release, warm (blue/green,
   previous colour still running; goal < 50 ms) and cold (rolling, previous release stopped, 3
   instances started again from the recorded digest; goal < 1 s). Reported both as the server
   measures it (command received -> routing table switched) and end to end from the CLI.

Usage: bench/deploy.py [APPLIES]   (needs: cargo build --release -p recast; scripts/build-hello)
"""
import json, os, shutil, socket, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, free_port

RECAST = os.path.join(ROOT, "target/release/recast")
APPLIES = int(sys.argv[1]) if len(sys.argv) > 1 else 20


SPEC = """
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
  instances = 3
  port      = 8080
  env       = {{ MESSAGE = "{msg}" }}
  health {{
    http     = "/healthz"
    interval = "200ms"
  }}
  rollout {{
    {rollout}
  }}
}}
route "web" {{
  listen  = "127.0.0.1:{port}"
  service = service.web
}}
"""


class Load:
    def __init__(self, port):
        self.port, self.stop, self.ok, self.failed = port, False, 0, []
        self.threads = [threading.Thread(target=self.run) for _ in range(4)]
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
                    body += s.recv(4096)
                if head.startswith(b"HTTP/1.1 200"):
                    self.ok += 1
                else:
                    self.failed.append(head.split(b"\r\n")[0].decode())
            except OSError as e:
                self.failed.append(str(e))
                s = None

    def finish(self):
        self.stop = True
        for t in self.threads:
            t.join()
        return self.ok, self.failed


def body(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data.split(b"\r\n\r\n", 1)[1].decode()
    except OSError:
        return ""


def main():
    d = tempfile.mkdtemp(prefix="recast-bench-deploy-")
    env = dict(os.environ, RECAST_DATA_DIR=os.path.join(d, "data"))
    server = subprocess.Popen([RECAST, "server"], env=env, stderr=subprocess.DEVNULL)
    proj = os.path.join(d, "proj")
    os.makedirs(proj)
    hello = os.path.join(ROOT, "examples/hello/dist/hello")
    port = free_port()

    def apply(msg, rollout):
        with open(os.path.join(proj, "recast.hcl"), "w") as f:
            f.write(SPEC.format(hello=hello, msg=msg, rollout=rollout, port=port))
        t = time.perf_counter()
        r = subprocess.run([RECAST, "apply", "--yes", "--json", "-f", proj], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"apply failed: {r.stdout} {r.stderr}")
        return time.perf_counter() - t

    def rollback():
        t = time.perf_counter()
        r = subprocess.run([RECAST, "rollback", "web", "--json"], env=env, capture_output=True, text=True, check=True)
        server_ms = json.loads(r.stdout)["switched_ms"]
        # End to end: until every response comes from v1 (10 in a row).
        while True:
            if all(body(port).startswith("v1 ") for _ in range(10)):
                break
        return server_ms, (time.perf_counter() - t) * 1000

    try:
        while not os.path.exists(os.path.join(d, "data/server.json")):
            time.sleep(0.05)
        rolling = 'strategy = "rolling"'
        apply("v1", rolling)
        load = Load(port)
        times = [apply("v2" if i % 2 == 0 else "v1", rolling) for i in range(APPLIES)]
        ok, failed = load.finish()
        print(f"deploys under load: {APPLIES} applies alternating v1/v2 (rolling, 3 instances), 4 keep-alive clients")
        print(f"  median per deploy {statistics.median(times)*1000:.0f} ms (min {min(times)*1000:.0f}, max {max(times)*1000:.0f})")
        print(f"  requests {ok}, failed {len(failed)}   (goal: 0 failed){'  first: ' + failed[0] if failed else ''}")

        # Warm rollback: blue/green keeps the previous colour running.
        bg = 'strategy = "blue_green"\n    auto_promote_after = "0s"\n    scale_down_delay = "10m"'
        apply("v1", bg)
        apply("v2", bg)
        warm = rollback()
        # Cold rollback: rolling stops the previous release; it starts again from its digest.
        apply("v1", rolling)
        apply("v2", rolling)
        cold = rollback()
        # A failing canary verdict: from the verdict to all traffic back on the stable release.
        analysis = 'analysis {\n      interval = "300ms"\n      min_requests = 10\n      max_error_rate = 0.05\n    }'
        canary = 'strategy = "canary"\n    step {\n      weight = 10\n      pause = "30s"\n    }\n    ' + analysis
        load = Load(port)
        apply("v1", canary)
        with open(os.path.join(proj, "recast.hcl"), "w") as f:
            f.write(SPEC.format(hello=hello, msg="v2", rollout=canary, port=port).replace('MESSAGE = "v2"', 'MESSAGE = "v2", FAIL_RATE = "0.5"'))
        r = subprocess.run([RECAST, "apply", "--yes", "--json", "-f", proj], env=env, capture_output=True, text=True)
        load.finish()
        back = [l["message"] for l in json.loads(r.stdout)["log"] if "all traffic back on release" in l["message"]]
        verdict_ms = float(back[0].split(" ms after")[0].split()[-1]) if back else float("nan")
        print("rollback: from `recast rollback` to all traffic on the previous release")
        print(f"  warm (blue/green, previous colour running)  server {warm[0]:7.2f} ms   end to end {warm[1]:7.1f} ms   (goal < 50 ms)")
        print(f"  cold (3 instances started from the digest)  server {cold[0]:7.2f} ms   end to end {cold[1]:7.1f} ms   (goal < 1000 ms)")
        print(f"  failing canary verdict -> 100% on stable    server {verdict_ms:7.2f} ms   (goal < 50 ms)")
    finally:
        subprocess.run([RECAST, "destroy", "--yes", "--volumes", "-f", proj], env=env, capture_output=True)
        server.terminate()
        server.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
