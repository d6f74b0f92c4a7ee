#!/usr/bin/env python3
"""Benchmark: plan at scale (issue 5). `recast plan` on a spec of 1,000 services, recorded as
deployed (a no-change plan), against `terraform plan` on 1,000 `terraform_data` resources after
`terraform apply`, in the same run. Also times recast plan against empty state (1,000 creates).

Usage: bench/plan.py [RUNS]   (needs terraform; cargo build --release -p recast;
cargo build --release -p recast-server --example seed; scripts/build-hello)
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, timed

RECAST = os.path.join(ROOT, "target/release/recast")
SEED = os.path.join(ROOT, "target/release/examples/seed")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
N = 1000


def main():
    d = tempfile.mkdtemp(prefix="recast-bench-plan-")
    try:
        proj = os.path.join(d, "proj")
        os.makedirs(proj)
        hello = os.path.join(ROOT, "examples/hello/dist/hello")
        with open(os.path.join(proj, "recast.hcl"), "w") as f:
            f.write(f'image "app" {{\n  from = "scratch"\n  copy {{\n    src  = "{hello}"\n    dest = "/bin/hello"\n  }}\n  cmd = ["/bin/hello"]\n}}\n')
            for i in range(N):
                f.write(f'service "s{i}" {{\n  image = image.app\n  port  = 8080\n  env   = {{ MESSAGE = "value-{i}" }}\n}}\n')
        empty = dict(os.environ, RECAST_DATA_DIR=os.path.join(d, "empty"))
        seeded = dict(os.environ, RECAST_DATA_DIR=os.path.join(d, "seeded"))
        subprocess.run([SEED, proj, os.path.join(d, "seeded")], check=True)
        out = subprocess.run([RECAST, "plan", "-f", proj], env=seeded, capture_output=True, text=True, check=True).stdout
        assert out.startswith("project proj: no changes"), out[:200]
        timed([RECAST, "plan", "-f", proj], env=empty)  # builds the image once

        tf = os.path.join(d, "tf")
        os.makedirs(tf)
        rc = os.path.join(d, "terraformrc")
        with open(rc, "w") as f:
            f.write("disable_checkpoint = true\n")
        tenv = dict(os.environ, CHECKPOINT_DISABLE="1", TF_CLI_CONFIG_FILE=rc, TF_IN_AUTOMATION="1")
        with open(os.path.join(tf, "main.tf"), "w") as f:
            for i in range(N):
                f.write(f'resource "terraform_data" "r{i}" {{\n  input = "value-{i}"\n}}\n')
        subprocess.run(["terraform", "init", "-input=false"], cwd=tf, env=tenv, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["terraform", "apply", "-auto-approve", "-input=false", "-parallelism=100"], cwd=tf, env=tenv, check=True, stdout=subprocess.DEVNULL)

        r_nochange = [timed([RECAST, "plan", "-f", proj], env=seeded) for _ in range(RUNS)]
        r_create = [timed([RECAST, "plan", "-f", proj], env=empty) for _ in range(RUNS)]
        t_plan = [timed(["terraform", "plan", "-input=false"], cwd=tf, env=tenv) for _ in range(RUNS)]
        r, c, t = statistics.median(r_nochange), statistics.median(r_create), statistics.median(t_plan)
        print(f"plan at scale: {N} services vs {N} terraform_data resources, median of {RUNS}")
        print(f"  recast plan, no changes      {r*1000:8.1f} ms")
        print(f"  recast plan, {N} creates    {c*1000:8.1f} ms")
        print(f"  terraform plan, no changes   {t*1000:8.1f} ms")
        print(f"  terraform / recast           {t/r:8.1f}x   (goal >= 20x)")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
