#!/usr/bin/env python3
"""Benchmark: recast build vs buildah on 2,000 files of 1 KiB plus one 20 MiB file (issue 3).

Measures, in the same run: recast's cold build (fresh data directory), recast's no-op rebuild,
and buildah (from scratch, copy, commit --timestamp 0 to an oci: directory, vfs storage, chroot
isolation) with a fresh and with an existing store. Prints medians and the ratios.

Usage: bench/build.py [RUNS]   (needs a release build: cargo build --release -p recast)
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, timed

RECAST = os.path.join(ROOT, "target/release/recast")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def make_context(d):
    data = os.path.join(d, "ctx/data")
    os.makedirs(data)
    for i in range(2000):
        with open(os.path.join(data, f"f{i:04}.txt"), "wb") as f:
            f.write(os.urandom(1024))
    with open(os.path.join(d, "ctx/big.bin"), "wb") as f:
        f.write(os.urandom(20 << 20))
    with open(os.path.join(d, "recast.hcl"), "w") as f:
        f.write('''image "bench" {
  from = "scratch"
  copy {
    src  = "ctx/data"
    dest = "/app/data"
  }
  copy {
    src  = "ctx/big.bin"
    dest = "/app/big.bin"
  }
  workdir = "/app"
  cmd     = ["/app/run"]
}
''')


def buildah(d, store):
    b = ["buildah", "--root", f"{store}/store", "--runroot", f"{store}/run", "--storage-driver", "vfs"]
    out = os.path.join(d, "oci-out")
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    ctr = subprocess.run(b + ["from", "--isolation", "chroot", "scratch"], check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(b + ["copy", ctr, f"{d}/ctx/data", "/app/data"], check=True, capture_output=True)
    subprocess.run(b + ["copy", ctr, f"{d}/ctx/big.bin", "/app/big.bin"], check=True, capture_output=True)
    subprocess.run(b + ["config", "--cmd", '["/app/run"]', "--workingdir", "/app", ctr], check=True, capture_output=True)
    subprocess.run(b + ["commit", "--quiet", "--timestamp", "0", ctr, f"oci:{out}:latest"], check=True, capture_output=True)
    elapsed = time.perf_counter() - t
    subprocess.run(b + ["rm", ctr], check=True, capture_output=True)
    return elapsed


def main():
    if not os.path.exists(RECAST):
        sys.exit("build recast first: cargo build --release -p recast")
    d = tempfile.mkdtemp(prefix="recast-bench-build-")
    try:
        make_context(d)
        cold, noop, b_fresh, b_warm = [], [], [], []
        warm_store = os.path.join(d, "buildah-warm")
        buildah(d, warm_store)  # populate the existing store once
        for i in range(RUNS):
            data = os.path.join(d, f"data{i}")
            env = dict(os.environ, RECAST_DATA_DIR=data)
            cold.append(timed([RECAST, "build", "-f", d], env=env))
            noop.append(timed([RECAST, "build", "-f", d], env=env))
            fresh = os.path.join(d, f"buildah-fresh{i}")
            b_fresh.append(buildah(d, fresh))
            shutil.rmtree(fresh, ignore_errors=True)
            b_warm.append(buildah(d, warm_store))
            shutil.rmtree(data, ignore_errors=True)
        m = {k: statistics.median(v) for k, v in
             dict(cold=cold, noop=noop, b_fresh=b_fresh, b_warm=b_warm).items()}
        print(f"build benchmark: 2,000 x 1 KiB + 20 MiB, median of {RUNS} runs")
        print(f"  recast cold build          {m['cold']*1000:8.1f} ms")
        print(f"  recast no-op rebuild       {m['noop']*1000:8.1f} ms   (goal < 50 ms)")
        print(f"  buildah, fresh store       {m['b_fresh']*1000:8.1f} ms")
        print(f"  buildah, existing store    {m['b_warm']*1000:8.1f} ms")
        print(f"  ratio cold / buildah fresh    {m['cold']/m['b_fresh']:.3f}x   (goal <= 0.2x)")
        print(f"  ratio cold / buildah existing {m['cold']/m['b_warm']:.3f}x   (goal <= 0.2x)")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
