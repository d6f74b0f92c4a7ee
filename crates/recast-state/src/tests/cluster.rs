//! A throwaway PostgreSQL cluster for one test: `initdb` into a temporary directory (trust
//! authentication, user `recast`), `postgres` listening only on a Unix socket in that directory.
//! Run as the `postgres` user when the tests run as root (initdb refuses root). Stopped (fast
//! shutdown) when dropped; `setpriv --pdeathsig INT` stops it too if the test process dies.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `setpriv` arguments that run a command as the cluster's owner.
    user: Vec<String>,
    child: Option<Child>,
}

/// The directory of `initdb` and `postgres`: `initdb` on PATH, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("initdb"))
            .find(|f| f.exists())
            .and_then(|f| std::fs::canonicalize(f).ok())
            .and_then(|f| f.parent().map(Path::to_path_buf))
    });
    if let Some(d) = on_path {
        return d;
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .filter(|d| d.join("initdb").exists())
        .expect("PostgreSQL's initdb: not on PATH nor in /usr/lib/postgresql/*/bin")
}

fn id_of(flag: &str, user: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, user]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `setpriv` arguments that run a command as the owner of a cluster in `dir` — the `postgres`
/// user (or `nobody`) when the tests run as root, who is given `dir` (initdb refuses root).
fn owner_of(dir: &Path) -> Vec<String> {
    if !rustix::process::geteuid().is_root() {
        return Vec::new();
    }
    let name = ["postgres", "nobody"]
        .into_iter()
        .find(|n| id_of("-u", n).is_some())
        .expect("a user to run PostgreSQL as (postgres or nobody)");
    let (uid, gid) = (id_of("-u", name), id_of("-g", name));
    std::os::unix::fs::chown(dir, uid, gid).expect("chown the cluster directory");
    vec![
        format!("--reuid={}", uid.unwrap_or(0)),
        format!("--regid={}", gid.unwrap_or(0)),
        "--clear-groups".into(),
    ]
}

/// `prog` from the PostgreSQL bin directory `bin`, as `user` (`owner_of`); it gets SIGINT if
/// the calling thread dies.
fn as_owner(bin: &Path, user: &[String], prog: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(user).arg("--pdeathsig=INT").arg(bin.join(prog));
    cmd
}

/// A new cluster in `data`: trust authentication, superuser `recast`.
fn initdb(bin: &Path, user: &[String], data: &Path) {
    run(
        as_owner(bin, user, "initdb")
            .arg("-D")
            .arg(data)
            .args(["-A", "trust", "-U", "recast", "--no-sync", "-E", "UTF8"])
            .arg("--no-locale"),
        "initdb",
    );
}

/// The server's settings (`-c` each): no TCP, no waiting for the disk — a test cluster holds
/// nothing worth a sync.
const SETTINGS: [&str; 4] = [
    "listen_addresses=",
    "fsync=off",
    "full_page_writes=off",
    "synchronous_commit=off",
];

impl Cluster {
    pub fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory for the cluster");
        let user = owner_of(dir.path());
        let mut c = Cluster {
            dir,
            bin: bin_dir(),
            user,
            child: None,
        };
        initdb(&c.bin, &c.user, &c.data());
        c.spawn();
        let sock = c.dir.path().to_owned();
        run(
            c.command("createdb")
                .arg("-h")
                .arg(&sock)
                .args(["-U", "recast", "recast"]),
            "createdb",
        );
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `prog` from the PostgreSQL bin directory, as the cluster's owner.
    fn command(&self, prog: &str) -> Command {
        as_owner(&self.bin, &self.user, prog)
    }

    /// The URL of database `recast`, through the socket directory.
    pub fn url(&self) -> String {
        format!(
            "postgres://recast@localhost/recast?host={}",
            self.dir.path().display()
        )
    }

    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("log")).expect("the server log");
        let data = self.data();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(self.dir.path())
            .args(SETTINGS.iter().flat_map(|c| ["-c", c]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(self.dir.path())
                .args(["-U", "recast", "-d", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready within 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Fast shutdown (every session ends), waiting until the server has exited.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            rustix::process::kill_process(pid, rustix::process::Signal::INT).ok();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().ok();
        child.wait().ok();
        panic!("postgres did not stop within 30 s: {}", self.log());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("postgres log:\n{}", self.log());
        }
        // A panic while unwinding would abort: stop without asserting.
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                rustix::process::kill_process(pid, rustix::process::Signal::INT).ok();
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// One cluster shared by every test process of a test run — the engine suite's PostgreSQL pass
/// (`RECAST_TEST_STATE=postgres`): nextest runs each test in a process of its own, and a
/// cluster per server would cost a second or more each. It lives in
/// `<tmp>/recast-test-pg-<pid of the test runner>`: the first test to get there initialises and
/// starts it under a lock (`pg_ctl`, which detaches it from the test), with a watcher that stops
/// it and removes the directory once the runner has exited. Each caller gets a database of its
/// own (`SharedDb`), dropped with it.
#[allow(dead_code)] // only the recast it-tests use it
pub struct Shared {
    dir: PathBuf,
    bin: PathBuf,
}

#[allow(dead_code)] // only the recast it-tests use it
impl Shared {
    pub fn get() -> Shared {
        let runner = rustix::process::getppid().map_or(0, |p| p.as_raw_pid());
        let dir = std::env::temp_dir().join(format!("recast-test-pg-{runner}"));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating the shared cluster's {}: {e}", dir.display()));
        let lock = std::fs::File::create(dir.join("lock"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join("lock").display()));
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .unwrap_or_else(|e| panic!("locking {}: {e}", dir.join("lock").display()));
        let s = Shared {
            dir,
            bin: bin_dir(),
        };
        if !s.ready() {
            s.start(runner);
        }
        s
    }

    /// Initialise the cluster (once: into `data.new`, renamed when complete, so a test killed
    /// half-way leaves nothing to trip over) and start it.
    fn start(&self, runner: i32) {
        let user = owner_of(&self.dir);
        let data = self.dir.join("data");
        if !data.exists() {
            let fresh = self.dir.join("data.new");
            std::fs::remove_dir_all(&fresh).ok();
            initdb(&self.bin, &user, &fresh);
            std::fs::rename(&fresh, &data).expect("rename the new cluster into place");
            self.watch(runner);
        }
        let mut opts = format!("-k {}", self.dir.display());
        for c in SETTINGS {
            opts.push_str(&format!(" -c {c}"));
        }
        run(
            as_owner(&self.bin, &user, "pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]),
            "pg_ctl start (the shared cluster)",
        );
    }

    /// A detached shell (in the background of a shell that exits at once, in a process group
    /// of its own) that, once the test runner `runner` has exited, stops the cluster (fast
    /// shutdown) and removes its directory.
    fn watch(&self, runner: i32) {
        use std::os::unix::process::CommandExt;
        let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
pid=$(head -n 1 "$2/data/postmaster.pid" 2>/dev/null) && kill -INT "$pid"
i=0; while [ -e "$2/data/postmaster.pid" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
rm -rf "$2""#;
        let status = Command::new("sh")
            .args(["-c", r#""$0" -c "$1" watch "$2" "$3" &"#, "sh", script])
            .arg(runner.to_string())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .status()
            .expect("start the shared cluster's watcher");
        assert!(status.success(), "the shared cluster's watcher: {status}");
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-U", "recast", "-d", "postgres", "-q"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A new, empty database of the caller's own.
    pub fn create_db(&self) -> SharedDb {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("t{}_{n}_{nanos}", std::process::id());
        run(
            Command::new(self.bin.join("createdb"))
                .arg("-h")
                .arg(&self.dir)
                .args(["-U", "recast", &name]),
            "createdb (the shared cluster)",
        );
        SharedDb {
            name,
            dir: self.dir.clone(),
            bin: self.bin.clone(),
        }
    }
}

/// A database of the shared cluster, dropped (best effort) when this is.
#[allow(dead_code)] // only the recast it-tests use it
pub struct SharedDb {
    name: String,
    dir: PathBuf,
    bin: PathBuf,
}

#[allow(dead_code)] // only the recast it-tests use it
impl SharedDb {
    /// Its URL, through the cluster's socket directory.
    pub fn url(&self) -> String {
        format!(
            "postgres://recast@localhost/{}?host={}",
            self.name,
            self.dir.display()
        )
    }

    /// Everything it holds, as `pg_dump` writes it (schema and rows, as SQL text).
    pub fn dump(&self) -> String {
        let out = Command::new(self.bin.join("pg_dump"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-U", "recast", &self.name])
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for SharedDb {
    fn drop(&mut self) {
        // `--force` ends sessions a killed server's pool may not have closed yet.
        Command::new(self.bin.join("dropdb"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-U", "recast", "--force", "--if-exists", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok();
    }
}
