#!/usr/bin/env python3
"""Benchmark: drift scan of 10,000 files (~500 MB) — recast's full-content scan vs
`aide --check` (sha256, num_workers 2), same tree, same run, page cache warm (issue 7).
Also reports recast's metadata-only scan.

Usage: bench/drift.py [RUNS]   (needs aide; cargo build --release -p recast-guard --example scan)
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT

SCAN = os.path.join(ROOT, "target/release/examples/scan")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3


def main():
    d = tempfile.mkdtemp(prefix="recast-bench-drift-")
    try:
        tree = os.path.join(d, "tree")
        for i in range(10000):
            sub = os.path.join(tree, f"d{i // 100:03}")
            os.makedirs(sub, exist_ok=True)
            with open(os.path.join(sub, f"f{i:05}"), "wb") as f:
                f.write(os.urandom(52_400))
        conf = os.path.join(d, "aide.conf")
        with open(conf, "w") as f:
            f.write(f"database_in=file:{d}/aide.db\ndatabase_out=file:{d}/aide.db.new\ngzip_dbout=no\nreport_url=stdout\n"
                    f"num_workers=2\nG = p+i+n+u+g+s+m+c+sha256\n{tree} G\n")
        subprocess.run(["aide", f"--config={conf}", "--init"], check=True, capture_output=True)
        os.rename(f"{d}/aide.db.new", f"{d}/aide.db")
        subprocess.run(["cat"] + [os.path.join(dp, fn) for dp, _, fns in os.walk(tree) for fn in fns][:1], capture_output=True)
        aide = []
        for _ in range(RUNS):
            t = time.perf_counter()
            r = subprocess.run(["aide", f"--config={conf}", "--check", "-W", "2"], capture_output=True, text=True)
            aide.append(time.perf_counter() - t)
            if r.returncode != 0:
                sys.exit(f"aide found differences on a clean tree: {r.stdout[:500]}")
        out = subprocess.run([SCAN, tree, str(RUNS)], capture_output=True, text=True, check=True).stdout.split()
        full, meta, entries = float(out[0]) / 1000, float(out[1]) / 1000, out[2]
        a = statistics.median(aide)
        print(f"drift scan: {entries} entries, 10,000 files, 524 MB, page cache warm, median of {RUNS}")
        print(f"  aide --check (sha256, 2 workers)   {a*1000:8.1f} ms")
        print(f"  recast full-content scan (BLAKE3)  {full*1000:8.1f} ms")
        print(f"  recast metadata scan               {meta*1000:8.1f} ms")
        print(f"  aide / recast full                 {a/full:8.1f}x   (goal >= 10x)")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
