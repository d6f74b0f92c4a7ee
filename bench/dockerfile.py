#!/usr/bin/env python3
"""Benchmark: a multi-stage Dockerfile built by recast and by buildah bud (issue 11).

The same Dockerfile and context for both, in the same run: stage 1 is Debian's static busybox
(COPY) and five RUN steps of shell commands (install the applets and make directories, generate
files, checksum them, create a user and its directories, archive the output); stage 2 copies
stage 1's output (COPY --from) and 2,000 small files of the context onto scratch. No registry.

Measured (medians over RUNS):
  - cold build: recast with a fresh data directory; buildah bud --layers with a fresh store
    (vfs storage, runc isolation, host network), and without --layers (no intermediate images,
    bud's default; cannot be cached);
  - fully cached rebuild: the same build again on the same data directory / store;
  - the overhead of one no-op RUN step for recast: a Dockerfile of N `RUN true #i` steps built
    cold, minus the same Dockerfile without them, divided by N.
Prints a table with the ratios and the goals, and exits 0: it reports, it does not fail.

Usage: python3 bench/dockerfile.py [RUNS]
  (needs cargo build --release -p recast, Debian's buildah and busybox-static)
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT

RECAST = os.path.join(ROOT, "target/release/recast")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
FILES = 2000
NOOP_STEPS = 20  # RUN true steps in the overhead measurement

SETUP = ('RUN ["/bin/busybox", "sh", "-c", "mkdir -p /usr/bin /sbin /usr/sbin /tmp /out /etc '
         '&& chmod 1777 /tmp && /bin/busybox --install -s"]')

DOCKERFILE = f"""# recast bench: multi-stage, five RUN steps, a COPY of {FILES} files
FROM scratch AS build
COPY busybox /bin/busybox
{SETUP}
RUN mkdir -p /out/gen && for i in $(seq 1 200); do echo "line $i of the generated file" > /out/gen/f$i.txt; done
RUN cd /out/gen && find . -type f | sort | xargs sha256sum > /out/SHA256SUMS && wc -l < /out/SHA256SUMS > /out/count
RUN printf 'root:x:0:0:root:/root:/bin/sh\\napp:x:1000:1000:app:/home/app:/bin/sh\\n' > /etc/passwd \\
 && printf 'root:x:0:\\napp:x:1000:\\n' > /etc/group && mkdir -p /home/app /var/lib/app /var/log/app \\
 && chown -R app:app /home/app /var/lib/app /var/log/app && chmod 750 /var/lib/app && id app > /out/user
RUN tar -C /out -cf /out/gen.tar gen && gzip -9 /out/gen.tar && rm -r /out/gen && ls /out > /out/listing

FROM scratch
COPY --from=build /out /app/out
COPY files /app/files
WORKDIR /app
CMD ["/app/run"]
"""


def noop_dockerfile(n):
    steps = "".join(f"RUN true # no-op step {i}\n" for i in range(n))
    return f"FROM scratch\nCOPY busybox /bin/busybox\n{SETUP}\n{steps}"


SPEC = 'image "bench" {\n  dockerfile = "Dockerfile"\n}\n'


def make_context(ctx, dockerfile, files):
    os.makedirs(ctx)
    shutil.copy("/bin/busybox", os.path.join(ctx, "busybox"))
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(dockerfile)
    with open(os.path.join(ctx, "recast.hcl"), "w") as f:
        f.write(SPEC)
    if files:
        # a deterministic tree: 20 directories of 5 subdirectories of 20 files, 200-1,200 bytes
        for i in range(FILES):
            d = os.path.join(ctx, "files", f"d{i % 20:02}", f"s{i // 20 % 5}")
            os.makedirs(d, exist_ok=True)
            body = (f"file {i}\n" * (20 + i % 100)).encode()
            with open(os.path.join(d, f"f{i:04}.txt"), "wb") as f:
                f.write(body)


def run(cmd, **kw):
    """Seconds a command takes; on failure, its output and exit."""
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    elapsed = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return elapsed


def recast(ctx, data):
    return run([RECAST, "build", "-f", os.path.join(ctx, "recast.hcl")],
               env=dict(os.environ, RECAST_DATA_DIR=data))


def buildah(ctx, store, layers=True):
    return run(["buildah", "--root", f"{store}/store", "--runroot", f"{store}/run",
                "--storage-driver", "vfs", "bud", "--isolation", "oci", "--network", "host",
                f"--layers={str(layers).lower()}", "--quiet", "-t", "bench", ctx])


def rm(path):
    """Remove a tree buildah or recast wrote (vfs layers may hold read-only directories)."""
    subprocess.run(["rm", "-rf", path], check=False)


def main():
    if not os.path.exists(RECAST):
        sys.exit("build recast first: cargo build --release -p recast")
    for tool in ("buildah", "runc"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y --no-install-recommends buildah runc")
    if not os.path.exists("/bin/busybox"):
        sys.exit("/bin/busybox is missing: apt-get install -y busybox-static")
    d = tempfile.mkdtemp(prefix="recast-bench-dockerfile-")
    try:
        ctx = os.path.join(d, "ctx")
        make_context(ctx, DOCKERFILE, True)
        noop = os.path.join(d, "noop")
        make_context(noop, noop_dockerfile(NOOP_STEPS), False)
        base = os.path.join(d, "base")
        make_context(base, noop_dockerfile(0), False)
        # warm-up (page cache, binaries), not counted
        recast(ctx, os.path.join(d, "warm-recast"))
        buildah(ctx, os.path.join(d, "warm-buildah"))
        rm(os.path.join(d, "warm-recast"))
        rm(os.path.join(d, "warm-buildah"))
        r_cold, r_cached, b_cold, b_cached, b_plain, steps, step_base = [], [], [], [], [], [], []
        for i in range(RUNS):
            data, store = os.path.join(d, f"recast{i}"), os.path.join(d, f"buildah{i}")
            r_cold.append(recast(ctx, data))
            r_cached.append(recast(ctx, data))
            b_cold.append(buildah(ctx, store))
            b_cached.append(buildah(ctx, store))
            rm(data)
            rm(store)
            b_plain.append(buildah(ctx, store, layers=False))
            rm(store)
            steps.append(recast(noop, os.path.join(d, f"noop{i}")))
            step_base.append(recast(base, os.path.join(d, f"base{i}")))
            rm(os.path.join(d, f"noop{i}"))
            rm(os.path.join(d, f"base{i}"))
        med = statistics.median
        m = dict(r_cold=med(r_cold), r_cached=med(r_cached), b_cold=med(b_cold),
                 b_cached=med(b_cached), b_plain=med(b_plain), steps=med(steps), step_base=med(step_base))
        per_step = (m["steps"] - m["step_base"]) / NOOP_STEPS
        cold, cached = m["r_cold"] / m["b_cold"], m["r_cached"] / m["b_cached"]
        plain = m["r_cold"] / m["b_plain"]
        ms = lambda s: f"{s * 1000:9.1f} ms"
        ok = lambda c: "met" if c else "MISSED"
        print(f"Dockerfile benchmark: multi-stage, 5 RUN steps, COPY of {FILES:,} files; median of {RUNS} runs")
        print(f"  recast cold build (fresh data dir)     {ms(m['r_cold'])}")
        print(f"  recast fully cached rebuild            {ms(m['r_cached'])}")
        print(f"  buildah bud --layers, fresh store      {ms(m['b_cold'])}")
        print(f"  buildah bud --layers, cached rebuild   {ms(m['b_cached'])}")
        print(f"  buildah bud (no --layers), fresh store {ms(m['b_plain'])}")
        print(f"  recast, {NOOP_STEPS} no-op RUN steps cold        {ms(m['steps'])}")
        print(f"  recast, same without them              {ms(m['step_base'])}")
        print(f"  cold / buildah cold          {cold:7.3f}x   (goal <= 0.5x: {ok(cold <= 0.5)})")
        print(f"  cold / buildah no --layers   {plain:7.3f}x   (goal <= 0.5x: {ok(plain <= 0.5)})")
        print(f"  cached / buildah cached      {cached:7.3f}x   (goal <= 0.05x: {ok(cached <= 0.05)})")
        print(f"  overhead of a no-op RUN step {per_step * 1000:7.1f} ms  (goal < 50 ms: {ok(per_step < 0.05)})")
        print("  all runs (ms): " + "; ".join(
            f"{k} " + " ".join(f"{x * 1000:.0f}" for x in v) for k, v in
            dict(recast_cold=r_cold, recast_cached=r_cached, buildah_cold=b_cold,
                 buildah_cached=b_cached, buildah_plain=b_plain, noop_steps=steps, noop_base=step_base).items()))
    finally:
        rm(d)


if __name__ == "__main__":
    main()
