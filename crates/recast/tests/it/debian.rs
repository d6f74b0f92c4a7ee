//! Debian fixtures for tests with stock software: the minbase bookworm root that
//! `scripts/test-fixtures` builds with mmdebstrap (as an OCI archive recast imports), and its
//! apt repository (nginx-light, postgresql-15, busybox and their dependencies), served on
//! loopback from the test process so that nothing a test does reaches the internet.
//!
//! - [`base_tarball`], [`base_tarball_sha256`], [`base_packages`]: the root filesystem as built.
//! - [`base_image_archive`]: an OCI archive (one uncompressed layer = the tarball, `PATH` set,
//!   `cmd = ["/bin/sh"]`, named `debian:12`), made once per tarball and shared by every test.
//! - [`AptRepo::serve`]: the repository over HTTP on a free `127.0.0.1` port until dropped;
//!   [`AptRepo::sources_line`] is the `sources.list` line for it.

use crate::{example, stderr, stdout};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The directory `scripts/test-fixtures` fills: `$RECAST_TEST_CACHE/debian-bookworm`.
pub fn fixtures_dir() -> PathBuf {
    let cache = std::env::var_os("RECAST_TEST_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/recast-test"), PathBuf::from);
    cache.join("debian-bookworm")
}

fn fixture(name: &str) -> PathBuf {
    let p = fixtures_dir().join(name);
    assert!(
        p.exists(),
        "the Debian test fixture {} is missing: run scripts/test-fixtures as root (./scripts/test \
         and `scripts/deps --test` run it) to build it, or set RECAST_TEST_CACHE to where it was built",
        p.display()
    );
    p
}

/// The minbase bookworm root filesystem (an uncompressed tar), as mmdebstrap wrote it.
pub fn base_tarball() -> PathBuf {
    fixture("base.tar")
}

/// The sha256 (hex) of [`base_tarball`], recorded when it was built.
pub fn base_tarball_sha256() -> String {
    let p = fixture("base.tar.sha256");
    let hex = fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .trim()
        .to_string();
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{} does not hold a sha256: {hex:?}",
        p.display()
    );
    hex
}

/// The packages of a fixture list (`base.packages`, `repo.packages`): `(name, version)`.
fn packages(list: &str) -> Vec<(String, String)> {
    let p = fixture(list);
    fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// The packages installed in [`base_tarball`]: `(name, version)`.
pub fn base_packages() -> Vec<(String, String)> {
    packages("base.packages")
}

/// The packages [`AptRepo`] offers: `(name, version)`.
pub fn repo_packages() -> Vec<(String, String)> {
    packages("repo.packages")
}

/// The repository directory (`*.deb`, `Packages`, `Packages.gz`, `Release`).
pub fn repo_dir() -> PathBuf {
    let dir = fixture("repo");
    fixture("repo/Release");
    dir
}

/// Where this test build caches derived fixtures (shared by the tests of a run, and by later runs
/// of the same target directory).
fn derived_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-fixtures");
    fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    d
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The Debian base as an OCI archive: one uncompressed layer (the tarball itself, so its digest
/// is the recorded sha256), `Env` PATH, `Cmd ["/bin/sh"]`, named `debian:12`. Built once per
/// tarball into the target directory, atomically, so concurrent tests share one file.
pub fn base_image_archive() -> PathBuf {
    let tarball = base_tarball();
    let hex = base_tarball_sha256();
    let out = derived_dir().join(format!("debian-12-{}.oci.tar", &hex[..16]));
    if out.exists() {
        return out;
    }
    let size = fs::metadata(&tarball)
        .unwrap_or_else(|e| panic!("reading {}: {e}", tarball.display()))
        .len();
    let layer = format!("sha256:{hex}");
    let config = serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
        "rootfs": { "type": "layers", "diff_ids": [layer] },
        "history": [{ "created": "2024-01-01T00:00:00Z", "created_by": "mmdebstrap --variant=minbase bookworm" }],
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", sha256_hex(&config)),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer,
            "size": size,
        }],
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256_hex(&manifest)),
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "debian:12" },
        }],
    })
    .to_string()
    .into_bytes();

    let tmp = tempfile::NamedTempFile::new_in(derived_dir()).expect("temporary archive");
    let mut b = tar::Builder::new(io::BufWriter::new(tmp.as_file()));
    let mut add = |path: &str, size: u64, data: &mut dyn Read| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(0);
        b.append_data(&mut h, path, data)
            .unwrap_or_else(|e| panic!("writing {path} into {}: {e}", out.display()));
    };
    add(
        "oci-layout",
        30,
        &mut &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
    );
    add("index.json", index.len() as u64, &mut &index[..]);
    let config_path = format!("blobs/sha256/{}", sha256_hex(&config));
    add(&config_path, config.len() as u64, &mut &config[..]);
    let manifest_path = format!("blobs/sha256/{}", sha256_hex(&manifest));
    add(&manifest_path, manifest.len() as u64, &mut &manifest[..]);
    let mut f = File::open(&tarball).unwrap_or_else(|e| panic!("{}: {e}", tarball.display()));
    add(&format!("blobs/sha256/{hex}"), size, &mut f);
    b.into_inner()
        .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
        .unwrap_or_else(|e| panic!("finishing {}: {e}", out.display()));
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", tmp.path().display()));
    tmp.persist(&out)
        .unwrap_or_else(|e| panic!("moving the archive to {}: {e}", out.display()));
    out
}

// ---- the loopback apt repository --------------------------------------------------------------

/// Most connections served at once (apt opens one or two); more are refused with 503.
const MAX_CONNECTIONS: usize = 32;
/// Longest request head accepted.
const MAX_HEAD: usize = 16 << 10;
/// An idle keep-alive connection is closed after this.
const IDLE: Duration = Duration::from_secs(30);

/// A directory served read-only over HTTP/1.1 (GET and HEAD, keep-alive, pipelining) on a free
/// `127.0.0.1` port, from threads of the test process; stopped when dropped.
pub struct AptRepo {
    /// `http://127.0.0.1:PORT/`
    pub url: String,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
    log: Arc<Mutex<Vec<String>>>,
    accept: Option<JoinHandle<()>>,
}

impl AptRepo {
    /// Serve the fixtures' apt repository ([`repo_dir`]).
    pub fn serve() -> AptRepo {
        AptRepo::serve_dir(&repo_dir())
    }

    /// Serve any directory.
    pub fn serve_dir(root: &Path) -> AptRepo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for the apt repo");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let accept = {
            let (root, stop, conns, log) =
                (root.to_path_buf(), stop.clone(), conns.clone(), log.clone());
            std::thread::Builder::new()
                .name(format!("apt-repo-{}", addr.port()))
                .spawn(move || accept_loop(listener, root, stop, conns, log))
                .expect("spawn the apt repo thread")
        };
        AptRepo {
            url: format!("http://{addr}/"),
            addr,
            stop,
            conns,
            log,
            accept: Some(accept),
        }
    }

    /// The `sources.list` line for this repository.
    pub fn sources_line(&self) -> String {
        format!("deb [trusted=yes] {} ./", self.url)
    }

    /// Every request answered so far, as `"METHOD /path STATUS"`.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for AptRepo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, then end every open connection (a reader blocked on an idle
        // keep-alive connection returns at once).
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for s in self.conns.lock().expect("conns").values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    root: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
    log: Arc<Mutex<Vec<String>>>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let next = AtomicU64::new(0);
    for s in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut s) = s else { continue };
        let _ = s.set_read_timeout(Some(IDLE));
        let _ = s.set_write_timeout(Some(IDLE));
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = s.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            continue;
        }
        let id = next.fetch_add(1, Ordering::SeqCst);
        if let Ok(c) = s.try_clone() {
            conns.lock().expect("conns").insert(id, c);
        }
        let (root, conns, log, active, stop) = (
            root.clone(),
            conns.clone(),
            log.clone(),
            active.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let _ = serve_connection(s, &root, &log, &stop);
            conns.lock().expect("conns").remove(&id);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Answer the requests of one connection in order until it closes, asks to close, errs or idles.
fn serve_connection(
    s: TcpStream,
    root: &Path,
    log: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = io::BufWriter::new(s);
    loop {
        let Some(head) = read_head(&mut r)? else {
            return Ok(());
        };
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut lines = head.split("\r\n");
        let request = lines.next().unwrap_or_default();
        let mut parts = request.split(' ');
        let (method, target, version) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let mut close = version != "HTTP/1.1";
        let mut has_body = false;
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                close = true;
            }
            if (k.eq_ignore_ascii_case("content-length") && v != "0")
                || k.eq_ignore_ascii_case("transfer-encoding")
            {
                has_body = true;
            }
        }
        let status = if !version.starts_with("HTTP/1.") || has_body {
            close = true;
            respond(&mut w, 400, "Bad Request", None, false, true)?;
            400
        } else if method != "GET" && method != "HEAD" {
            respond(&mut w, 405, "Method Not Allowed", None, false, close)?;
            405
        } else {
            match resolve(root, target).and_then(|p| File::open(p).ok()) {
                Some(f) if f.metadata().is_ok_and(|m| m.is_file()) => {
                    respond(&mut w, 200, "OK", Some(f), method == "HEAD", close)?;
                    200
                }
                _ => {
                    respond(&mut w, 404, "Not Found", None, method == "HEAD", close)?;
                    404
                }
            }
        };
        log.lock()
            .expect("log")
            .push(format!("{method} {target} {status}"));
        if close {
            return Ok(());
        }
    }
}

/// The head of the next request (request line and headers, without the blank line), or `None`
/// when the peer closed between requests.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .by_ref()
            .take((MAX_HEAD - head.len()) as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if head.len() + n > MAX_HEAD {
            return Err(io::Error::other("request head too long"));
        }
        if line == b"\r\n" || line == b"\n" {
            if head.is_empty() {
                continue; // a stray blank line between requests
            }
            return Ok(Some(String::from_utf8_lossy(&head).trim_end().to_string()));
        }
        head.extend_from_slice(&line);
    }
}

/// The file a request target names inside `root`: the path decoded, `.` and empty segments
/// dropped, `..` refused.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    let path = path.strip_prefix('/')?;
    let decoded = percent_decode(path)?;
    let mut p = root.to_path_buf();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s if s.contains('\0') => return None,
            s => p.push(s),
        }
    }
    p.strip_prefix(root)
        .ok()?
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(p)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn respond(
    w: &mut impl Write,
    code: u16,
    reason: &str,
    file: Option<File>,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let len = match &file {
        Some(f) => f.metadata()?.len(),
        None => 0,
    };
    let kind = if file.is_some() {
        "application/octet-stream"
    } else {
        "text/plain"
    };
    write!(
        w,
        "HTTP/1.1 {code} {reason}\r\nContent-Length: {len}\r\nContent-Type: {kind}\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )?;
    if let (Some(mut f), false) = (file, head_only) {
        let n = io::copy(&mut f, w)?;
        if n != len {
            return Err(io::Error::other("the file changed while it was served"));
        }
    }
    w.flush()
}

// ---- tests ------------------------------------------------------------------------------------

/// Send `raw` (one or more requests) on a new connection and read `n` responses:
/// `(status, headers, body)`.
fn exchange(addr: SocketAddr, raw: &str, n: usize) -> Vec<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).expect("connect to the apt repo");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(raw.as_bytes()).expect("send");
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    for (i, head_only) in raw
        .split("\r\n\r\n")
        .filter(|q| !q.is_empty())
        .map(|q| q.starts_with("HEAD "))
        .enumerate()
        .take(n)
    {
        let head = read_head(&mut r)
            .expect("read a response")
            .unwrap_or_else(|| panic!("the connection closed before response {i}"));
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head}"));
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length in {head}"));
        let mut body = vec![0; if head_only { 0 } else { len }];
        r.read_exact(&mut body).expect("read the body");
        out.push((status, head, body));
    }
    out
}

#[test]
fn the_apt_repo_serves_its_index_and_debs_over_loopback_http() {
    let repo = AptRepo::serve();
    assert!(repo.url.starts_with("http://127.0.0.1:"), "{}", repo.url);
    let dir = repo_dir();
    let packages = fs::read(dir.join("Packages")).expect("Packages");
    let index = String::from_utf8_lossy(&packages).into_owned();
    for (name, _) in repo_packages() {
        assert!(
            index.contains(&format!("Package: {name}\n")),
            "Packages lacks {name}"
        );
    }
    for want in ["nginx-light", "postgresql-15", "busybox"] {
        assert!(
            repo_packages().iter().any(|(n, _)| n == want),
            "the repository lacks {want}"
        );
        assert!(
            !base_packages().iter().any(|(n, _)| n == want),
            "the base already has {want}"
        );
    }
    // A .deb as the index names it (`Filename: ./busybox_….deb`), as apt asks for it ('+'
    // percent-encoded), and the index, pipelined on one keep-alive connection.
    let deb = index
        .lines()
        .find_map(|l| l.strip_prefix("Filename: ./busybox_"))
        .map(|rest| format!("busybox_{rest}"))
        .expect("busybox in Packages");
    let deb_len = fs::metadata(dir.join(&deb)).expect("the .deb").len() as usize;
    let encoded = deb.replace('+', "%2b");
    let raw = format!(
        "GET /./Packages HTTP/1.1\r\nHost: x\r\n\r\n\
         HEAD /./{encoded} HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /{encoded} HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /../Packages HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /nothing.deb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let r = exchange(repo.addr, &raw, 5);
    assert_eq!(r[0].0, 200, "{}", r[0].1);
    assert_eq!(r[0].2, packages, "GET Packages returns the file");
    assert_eq!(r[1].0, 200, "{}", r[1].1);
    assert!(
        r[1].1.contains(&format!("Content-Length: {deb_len}")),
        "HEAD {deb}: {}",
        r[1].1
    );
    assert_eq!(r[2].0, 200, "{}", r[2].1);
    assert_eq!(r[2].2.len(), deb_len, "GET {deb} returns the whole file");
    assert_eq!(r[2].2, fs::read(dir.join(&deb)).expect("the .deb"));
    assert_eq!(r[3].0, 404, "a path out of the repository is refused");
    assert_eq!(r[4].0, 404, "a missing file is 404");
    assert!(r[4].1.contains("Connection: close"), "{}", r[4].1);
    let log = repo.requests();
    assert_eq!(log.len(), 5, "{log:?}");
    assert_eq!(log[0], "GET /./Packages 200");
    let addr = repo.addr;
    drop(repo);
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "the repository still listens on {addr} after drop"
    );
}

#[test]
fn apt_installs_the_fixture_packages_from_the_loopback_repo_onto_the_base() {
    // Debian's apt (the host's, bookworm's too) resolves nginx-light, postgresql-15 and busybox
    // against the base's dpkg status and downloads every missing package from the loopback
    // repository: the repository is complete and apt can use it.
    let repo = AptRepo::serve();
    let t = tempfile::tempdir().expect("tmp");
    let d = t.path();
    let mut base = tar::Archive::new(File::open(base_tarball()).expect("base tarball"));
    let mut found = false;
    for e in base.entries().expect("read base.tar") {
        let mut e = e.expect("entry of base.tar");
        if e.path().expect("path").as_ref() == Path::new("./var/lib/dpkg/status") {
            e.unpack(d.join("status")).expect("extract the dpkg status");
            found = true;
            break;
        }
    }
    assert!(found, "base.tar has no ./var/lib/dpkg/status");
    for sub in ["lists/partial", "cache/archives/partial", "parts", "prefs"] {
        fs::create_dir_all(d.join(sub)).expect("mkdir");
    }
    fs::write(d.join("sources.list"), format!("{}\n", repo.sources_line())).expect("sources");
    let apt = |args: &[&str]| {
        let o = Command::new("apt-get")
            .args([
                "-q",
                "-o",
                &format!("Dir::Etc::SourceList={}", d.join("sources.list").display()),
                "-o",
                &format!("Dir::Etc::SourceParts={}", d.join("parts").display()),
                "-o",
                &format!("Dir::Etc::PreferencesParts={}", d.join("prefs").display()),
                "-o",
                "Dir::Etc::Preferences=/dev/null",
                "-o",
                &format!("Dir::State::Lists={}", d.join("lists").display()),
                "-o",
                &format!("Dir::State::status={}", d.join("status").display()),
                "-o",
                &format!("Dir::Cache={}", d.join("cache").display()),
                "-o",
                "Debug::NoLocking=1",
                "-o",
                "Acquire::Languages=none",
            ])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("run apt-get");
        assert!(
            o.status.success(),
            "apt-get {args:?} failed: {}{}\nrequests: {:?}",
            stdout(&o),
            stderr(&o),
            repo.requests()
        );
        o
    };
    apt(&["update"]);
    let o = apt(&[
        "install",
        "--download-only",
        "--no-install-recommends",
        "-y",
        "nginx-light",
        "postgresql-15",
        "busybox",
    ]);
    let mut got: Vec<String> = fs::read_dir(d.join("cache/archives"))
        .expect("archives")
        .filter_map(|e| {
            let n = e.ok()?.file_name().to_string_lossy().into_owned();
            Some(n.split('_').next()?.to_string()).filter(|_| n.ends_with(".deb"))
        })
        .collect();
    got.sort();
    let mut want: Vec<String> = repo_packages().into_iter().map(|(n, _)| n).collect();
    want.sort();
    assert_eq!(
        got,
        want,
        "apt downloaded exactly the repository's packages\n{}",
        stdout(&o)
    );
    assert!(
        repo.requests().iter().all(|r| !r.ends_with(" 404")
            || r.contains("InRelease")
            || r.contains("Release.gpg")
            || r.contains("Packages.xz")
            || r.contains("Translation")),
        "unexpected misses: {:?}",
        repo.requests()
    );
}

#[test]
fn recast_builds_and_tests_an_image_on_the_debian_base() {
    let archive = base_image_archive();
    let data = tempfile::tempdir().expect("tmp");
    let rc = |cwd: &Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_recast"))
            .args(args)
            .current_dir(cwd)
            .env("RECAST_DATA_DIR", data.path())
            .output()
            .expect("run recast")
    };
    // The archive imports as debian:12, its layer being the tarball as built.
    let out = rc(
        data.path(),
        &[
            "image",
            "import",
            archive.to_str().expect("utf-8 path"),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["name"], "debian:12", "{v}");
    let out = rc(data.path(), &["image", "inspect", "debian:12", "--json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains(&base_tarball_sha256()),
        "inspect names the tarball's digest: {}",
        stdout(&out)
    );

    // An image built on it (the static example server copied in, so the test instance listens)
    // whose test command runs Debian's own shell, dpkg and apt inside.
    let p = tempfile::tempdir().expect("tmp");
    fs::create_dir_all(p.path().join("dist")).expect("mkdir");
    fs::copy(example().join("dist/hello"), p.path().join("dist/hello")).expect("copy hello");
    fs::write(
        p.path().join("recast.hcl"),
        format!(
            r#"
image "deb" {{
  from = "oci-archive:{}"
  copy {{
    src  = "dist/hello"
    dest = "/usr/local/bin/hello"
    mode = "0555"
  }}
  cmd = ["/usr/local/bin/hello"]
  test {{
    command = ["/bin/sh", "-c", "test -x /usr/bin/apt-get && dpkg-query -W apt dpkg >/dev/null && apt-get --version | grep -q '^apt ' && ! grep -q . /etc/apt/sources.list"]
    timeout = "60s"
  }}
}}
"#,
            archive.display()
        ),
    )
    .expect("spec");
    let out = rc(p.path(), &["test", "--json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["passed"], true, "{v}");
    assert_eq!(v[0]["checks"].as_array().map(Vec::len), Some(1), "{v}");
}
