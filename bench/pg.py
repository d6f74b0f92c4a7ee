"""What the PostgreSQL benchmarks share (`state.py`, `failover.py`): a throwaway cluster, running
commands, waiting with a deadline, and a clean-up that a second Ctrl-C cannot cut short."""
import os, pwd, shutil, signal, subprocess, tempfile, time

PGBIN = os.environ.get("BENCH_PG_BIN", "/usr/lib/postgresql/15/bin")


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def shield():
    """From here on, cleaning up: a second Ctrl-C must not cut it short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run(cmd, what, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{what}: {' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def wait_until(what, cond, timeout, alive=None, every=0.05):
    deadline = time.monotonic() + timeout
    while not cond():
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(every)


class Cluster:
    """A throwaway PostgreSQL cluster: owned by the postgres user, Unix socket only."""

    def __init__(self, settings=()):
        """`settings`: more `-c NAME=VALUE` for the server."""
        self.settings = [a for s in settings for a in ("-c", s)]
        self.dir = tempfile.mkdtemp(prefix="recast-bench-pg-")
        self.proc = None
        self.user = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.user = [f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "log")

    def cmd(self, prog, *args):
        return ["setpriv", *self.user, "--pdeathsig=INT", os.path.join(PGBIN, prog), *args]

    def start(self):
        run(self.cmd("initdb", "-D", self.data, "-A", "trust", "-U", "recast", "-E", "UTF8", "--no-locale", "--no-sync"), "initdb")
        settings = ["-c", "listen_addresses=", *self.settings]
        with open(self.log, "w") as log:
            # Its own session: a terminal's Ctrl-C is for this script, which stops it last.
            self.proc = subprocess.Popen(self.cmd("postgres", "-D", self.data, "-k", self.dir, *settings),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        ready = lambda: subprocess.run([os.path.join(PGBIN, "pg_isready"), "-h", self.dir, "-U", "recast", "-d", "postgres", "-q"]).returncode == 0
        wait_until(f"postgres ready (log {self.log})", ready, 30, lambda: self.proc.poll() is None)

    def createdb(self, name):
        run(self.cmd("createdb", "-h", self.dir, "-U", "recast", name), f"createdb {name}")

    def url(self, db="recast"):
        return f"postgres://recast@localhost/{db}?host={self.dir}"

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
