#!/usr/bin/env python3
"""Control-plane kills under load (issue 14), against a real `recast server` and real containers.

A service of 3 instances (rolling) behind a route on loopback, 4 keep-alive clients hitting it the
whole time. KILLS times: `kill -9` the server at a random moment, start a new one, wait until it has
taken over (its API answers `recast status`). Every 4th kill lands at a random moment inside a
rolling apply (`--detach`), which the new server rolls back. Prints the failed requests, the total,
and the longest gap between two successful responses (from any client, and within one client).
Goal: 0 failed, longest gap < 50 ms.

Usage: bench/dataplane.py [KILLS] [SEED]   (needs: cargo build --release -p recast; scripts/build-hello)
"""
import json, os, random, shutil, socket, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, free_port
from deploy import SPEC

RECAST = os.path.join(ROOT, "target/release/recast")
KILLS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
SEED = int(sys.argv[2]) if len(sys.argv) > 2 else int(time.time())
BASELINE = 5.0


class Load:
    """4 keep-alive clients; every success is timed, so the gaps between them are known."""

    def __init__(self, port):
        self.port, self.stop, self.ok, self.failed = port, False, 0, []
        self.lock = threading.Lock()
        self.last_any = None  # the last success from any client
        self.gap_any = 0.0  # longest time with no success from any client
        self.gap_one = 0.0  # longest time between two successes of one client
        self.gap_one_at = 0.0  # when it ended
        self.since = 0.0  # gaps that start earlier are not counted
        self.long = []  # (start, length) of every gap of one client over 50 ms
        self.threads = [threading.Thread(target=self.run) for _ in range(4)]
        for t in self.threads:
            t.start()

    def success(self, last_mine):
        now = time.perf_counter()
        with self.lock:
            self.ok += 1
            if self.last_any is not None and self.last_any >= self.since:
                self.gap_any = max(self.gap_any, now - self.last_any)
            self.last_any = now
            if last_mine is not None and last_mine >= self.since and now - last_mine > 0.05:
                self.long.append((last_mine, now - last_mine))
            if last_mine is not None and last_mine >= self.since and now - last_mine > self.gap_one:
                self.gap_one, self.gap_one_at = now - last_mine, now
        return now

    def run(self):
        s, mine = None, None
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
                    mine = self.success(mine)
                else:
                    with self.lock:
                        self.failed.append(head.split(b"\r\n")[0].decode())
            except OSError as e:
                with self.lock:
                    self.failed.append(str(e))
                s = None

    def measure(self):
        """The gaps so far, then start counting afresh."""
        with self.lock:
            gaps = (self.gap_any, self.gap_one, self.gap_one_at)
            self.gap_any = self.gap_one = 0.0
            self.since = time.perf_counter()
            self.long = []
        return gaps

    def finish(self):
        self.stop = True
        for t in self.threads:
            t.join()
        return self.ok, self.failed


def data_plane_pid(data):
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(os.path.join(data, "dataplane.sock"))
            s.sendall(b'{"op":"hello"}\n')
            line = s.makefile().readline()
            return json.loads(line)["pid"]
    except (OSError, ValueError, KeyError):
        return None


def main():
    rng = random.Random(SEED)
    d = tempfile.mkdtemp(prefix="recast-bench-dataplane-")
    data = os.path.join(d, "data")
    env = dict(os.environ, RECAST_DATA_DIR=data)
    proj = os.path.join(d, "proj")
    os.makedirs(proj)
    hello = os.path.join(ROOT, "examples/hello/dist/hello")
    port = free_port()
    rolling = 'strategy = "rolling"\n    min_healthy_time = "300ms"'

    def start():
        try:
            os.remove(os.path.join(data, "server.json"))
        except FileNotFoundError:
            pass
        t = time.perf_counter()
        server = subprocess.Popen([RECAST, "server", "--listen", "127.0.0.1:0"], env=env, stderr=subprocess.DEVNULL)
        while subprocess.run([RECAST, "status"], env=env, capture_output=True).returncode != 0:
            if server.poll() is not None:
                sys.exit(f"the server exited: {server.returncode}")
            time.sleep(0.01)
        return server, time.perf_counter() - t

    def apply(msg, detach=False):
        with open(os.path.join(proj, "recast.hcl"), "w") as f:
            f.write(SPEC.format(hello=hello, msg=msg, rollout=rolling, port=port))
        r = subprocess.run([RECAST, "apply", "--yes", "-f", proj] + (["--detach"] if detach else []),
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"apply failed: {r.stdout} {r.stderr}")

    server, _ = start()
    load = None
    try:
        apply("v1")
        dp = data_plane_pid(data)
        load = Load(port)
        time.sleep(0.5)
        load.measure()
        # The clients' own noise floor: as long with no kill.
        time.sleep(BASELINE)
        base_any, base_one, _ = load.measure()
        takeover, mid, msg = [], 0, "v1"
        events = []  # (time, what) to place the longest gap
        for i in range(KILLS):
            if i % 4 == 3:
                msg = "v2" if msg == "v1" else "v1"
                events.append((time.perf_counter(), "apply started"))
                apply(msg, detach=True)
                time.sleep(rng.uniform(0.0, 1.5))
                mid += 1
            else:
                time.sleep(rng.uniform(0.05, 0.6))
            events.append((time.perf_counter(), "kill -9"))
            server.kill()
            server.wait()
            time.sleep(rng.uniform(0.0, 0.3))
            events.append((time.perf_counter(), "new server started"))
            server, took = start()
            events.append((time.perf_counter(), "new server answered"))
            takeover.append(took)
        time.sleep(1.0)
        ok, failed = load.finish()
        long = list(load.long)
        gap_any, gap_one, gap_one_at = load.measure()
        if os.environ.get("BENCH_VERBOSE"):
            for start, n in long:
                b = [(start - t, w) for t, w in events if t <= start]
                print(f"  gap {n*1000:.0f} ms, {b[-1][0]*1000:.0f} ms after '{b[-1][1]}'" if b else f"  gap {n*1000:.0f} ms")
        gap_start = gap_one_at - gap_one
        before = [(gap_start - t, what) for t, what in events if t <= gap_start]
        where = f"{before[-1][0]*1000:.0f} ms after '{before[-1][1]}'" if before else "before the first kill"
        load = None
        same_dp = data_plane_pid(data) == dp
        print(f"control-plane kills under load: {KILLS} x kill -9 of `recast server` at random moments "
              f"(seed {SEED}), {mid} of them inside a rolling apply; 3 instances, 4 keep-alive clients")
        print(f"  requests {ok}, failed {len(failed)}   (goal: 0 failed){'  first: ' + failed[0] if failed else ''}")
        print(f"  longest gap between two successful responses: from any client {gap_any*1000:.1f} ms, "
              f"within one client {gap_one*1000:.1f} ms, starting {where}   (goal < 50 ms)")
        print(f"  the same with no kill, {BASELINE:.0f} s before the first: from any client {base_any*1000:.1f} ms, "
              f"within one client {base_one*1000:.1f} ms")
        print(f"  new server answers `recast status` after: median {statistics.median(takeover)*1000:.0f} ms, "
              f"max {max(takeover)*1000:.0f} ms; data plane kept throughout: {'yes' if same_dp else 'NO'}")
    finally:
        if load is not None:
            load.finish()
        subprocess.run([RECAST, "destroy", "--yes", "--volumes", "-f", proj], env=env, capture_output=True)
        server.kill()
        server.wait()
        pid = data_plane_pid(data)
        if pid:
            os.kill(pid, 9)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
