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

impl Cluster {
    pub fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory for the cluster");
        let mut user = Vec::new();
        if rustix::process::geteuid().is_root() {
            let name = ["postgres", "nobody"]
                .into_iter()
                .find(|n| id_of("-u", n).is_some())
                .expect("a user to run PostgreSQL as (postgres or nobody)");
            let (uid, gid) = (id_of("-u", name), id_of("-g", name));
            std::os::unix::fs::chown(dir.path(), uid, gid).expect("chown the cluster directory");
            user = vec![
                format!("--reuid={}", uid.unwrap_or(0)),
                format!("--regid={}", gid.unwrap_or(0)),
                "--clear-groups".into(),
            ];
        }
        let mut c = Cluster {
            dir,
            bin: bin_dir(),
            user,
            child: None,
        };
        let data = c.data();
        run(
            c.command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "recast", "--no-sync", "-E", "UTF8"])
                .arg("--no-locale"),
            "initdb",
        );
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
        let mut cmd = Command::new("setpriv");
        cmd.args(&self.user)
            .arg("--pdeathsig=INT")
            .arg(self.bin.join(prog));
        cmd
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
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "synchronous_commit=off"])
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
