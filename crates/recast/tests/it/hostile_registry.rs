//! Hostile sources for `recast image pull`, `import` and `export` (issue 10, findings 4 and 7): a
//! fake registry on loopback, written here, serves endless manifests (with and without a
//! `Content-Length`), an endless error body whose 300-byte cut falls inside a multi-byte
//! character, and a gzip-bomb layer; crafted OCI archives carry invalid digests, names and sizes.
//! Each is refused with an error naming what and where, in bounded time and memory (the peak RSS
//! of the recast process is measured), and leaves the store as it was. The same fake registry
//! checks that credentials reach only the registry's own host, and a 300 MiB layer shows that
//! `export --format docker` streams.

use crate::stderr;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

// ---- running recast, measured -------------------------------------------------------------------

/// A finished recast process: its output, how long it ran, and its peak resident memory.
struct Run {
    out: Output,
    took: Duration,
    peak_mib: u64,
}

/// Run recast with a data directory, sampling its `VmHWM` (peak RSS) until it exits; killed
/// (and the test failed) after `deadline`. A data-segment limit of 2 GiB is a backstop, so a
/// regression that buffers a huge body fails instead of exhausting the machine.
fn run(data: &Path, args: &[&str], env: &[(&str, &str)], deadline: Duration) -> Run {
    let start = Instant::now();
    let mut child = Command::new("prlimit")
        .arg(format!("--data={}", 2u64 << 30))
        .arg(env!("CARGO_BIN_EXE_recast"))
        .args(args)
        .env("RECAST_DATA_DIR", data)
        .env_remove("RECAST_REGISTRY_USER")
        .env_remove("RECAST_REGISTRY_PASSWORD")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run recast under prlimit (util-linux)");
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out_t = pipe(Box::new(child.stdout.take().expect("stdout")));
    let err_t = pipe(Box::new(child.stderr.take().expect("stderr")));
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(kib) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("recast {args:?} still ran after {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let out = Output {
        status,
        stdout: out_t.join().expect("stdout"),
        stderr: err_t.join().expect("stderr"),
    };
    Run {
        out,
        took: start.elapsed(),
        peak_mib: peak_kib >> 10,
    }
}

fn ok_json(r: &Run) -> Value {
    assert!(r.out.status.success(), "recast failed: {}", stderr(&r.out));
    serde_json::from_slice(&r.out.stdout).expect("JSON on stdout")
}

/// What the store holds: `image ls --json`, its blobs, and any staging directories left.
fn store_state(data: &Path) -> (Value, Vec<String>) {
    let ls = ok_json(&run(
        data,
        &["image", "ls", "--json"],
        &[],
        Duration::from_secs(30),
    ));
    let mut blobs: Vec<String> = std::fs::read_dir(data.join("store/blobs/sha256"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    blobs.sort();
    let stages: Vec<_> = std::fs::read_dir(data.join("store/tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(stages.is_empty(), "staging left behind: {stages:?}");
    (ls, blobs)
}

// ---- images --------------------------------------------------------------------------------------

fn sha(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("tar");
    }
    b.into_inner().expect("tar")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// A gzip stream of `chunks` × 16 MiB of zeros (about 1000:1), built in milliseconds: after a
/// full flush the compressor starts over, so every chunk compresses to the same bytes. It has no
/// end: a reader that does not stop at a limit runs out of input after `chunks` × 16 MiB.
fn zero_bomb(chunks: usize) -> Vec<u8> {
    let zeros = vec![0u8; 16 << 20];
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let mut chunk = Vec::with_capacity(64 << 10);
    c.compress_vec(&zeros, &mut chunk, flate2::FlushCompress::Full)
        .expect("compress");
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for _ in 0..chunks {
        out.extend_from_slice(&chunk);
    }
    out
}

/// An image: manifest bytes and every blob by digest.
struct Image {
    manifest: Vec<u8>,
    blobs: BTreeMap<String, Vec<u8>>,
}

/// An image of `layers` (media type, blob, diff_id).
fn image(layers: Vec<(&str, Vec<u8>, String)>) -> Image {
    let config = serde_json::to_vec(&json!({
        "architecture": arch(),
        "os": "linux",
        "config": { "Cmd": ["/hello"] },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.2.clone()).collect::<Vec<_>>() },
    }))
    .expect("json");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": { "mediaType": CONFIG, "digest": sha(&config), "size": config.len() },
        "layers": layers.iter().map(|(m, b, _)| json!({ "mediaType": m, "digest": sha(b), "size": b.len() })).collect::<Vec<_>>(),
    }))
    .expect("json");
    let mut blobs = BTreeMap::new();
    blobs.insert(sha(&config), config);
    for (_, b, _) in layers {
        blobs.insert(sha(&b), b);
    }
    Image { manifest, blobs }
}

/// A small, valid image with one gzip layer.
fn good_image() -> Image {
    let tar = tar_of(&[("hello", b"hello from a fake registry\n")]);
    image(vec![(LAYER_GZIP, gzip(&tar), sha(&tar))])
}

// ---- a fake registry -------------------------------------------------------------------------------

/// A request as the fake server saw it (header names lowercase).
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

enum Body {
    Bytes(Vec<u8>),
    /// `fill` repeated until the client goes away, announced with `length` (or not at all).
    Endless {
        length: Option<u64>,
        fill: Vec<u8>,
    },
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

fn resp(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    Resp {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: Body::Bytes(body),
    }
}

type Handler = dyn Fn(&Req) -> Resp + Send + Sync;

/// A tiny HTTP/1.1 server on `ip` (one thread per connection, `Connection: close`) that records
/// every request.
struct Server {
    addr: String,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    fn start(ip: &str, handler: Arc<Handler>) -> Server {
        let listener = TcpListener::bind((ip, 0)).expect("bind loopback");
        let addr = listener.local_addr().expect("addr").to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (h, log) = (Arc::clone(&handler), Arc::clone(&log2));
                std::thread::spawn(move || serve_one(conn, &*h, &log));
            }
        });
        Server { addr, log }
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().expect("log").clone()
    }
}

fn serve_one(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<Req>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut r = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let req = Req {
        method,
        path,
        headers,
    };
    log.lock().expect("log").push(req.clone());
    let res = handler(&req);
    let reason = match res.status {
        200 => "OK",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Whatever",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", res.status);
    for (k, v) in &res.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let mut w = conn;
    match res.body {
        Body::Bytes(b) => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
            let _ = w.write_all(head.as_bytes());
            if req.method != "HEAD" {
                let _ = w.write_all(&b);
            }
        }
        Body::Endless { length, fill } => {
            if let Some(n) = length {
                head.push_str(&format!("Content-Length: {n}\r\n"));
            }
            head.push_str("\r\n");
            if w.write_all(head.as_bytes()).is_err() {
                return;
            }
            let _ = w.set_write_timeout(Some(Duration::from_secs(30)));
            while w.write_all(&fill).is_ok() {}
        }
    }
}

/// Serve `images` by repository (tag `v1`), blobs by digest; `Some(resp)` from `special` wins.
fn registry_handler(
    images: BTreeMap<String, Image>,
    special: impl Fn(&Req) -> Option<Resp> + Send + Sync + 'static,
) -> Arc<Handler> {
    Arc::new(move |req: &Req| {
        if let Some(r) = special(req) {
            return r;
        }
        let Some(rest) = req.path.strip_prefix("/v2/") else {
            return resp(404, &[], b"{}".to_vec());
        };
        if let Some((repo, _)) = rest.split_once("/manifests/")
            && let Some(img) = images.get(repo)
        {
            return resp(200, &[("Content-Type", MANIFEST)], img.manifest.clone());
        }
        if let Some((repo, d)) = rest.split_once("/blobs/")
            && let Some(b) = images.get(repo).and_then(|i| i.blobs.get(d))
        {
            return resp(
                200,
                &[("Content-Type", "application/octet-stream")],
                b.clone(),
            );
        }
        resp(404, &[], br#"{"errors":[{"code":"NOT_FOUND"}]}"#.to_vec())
    })
}

// ---- tests -----------------------------------------------------------------------------------------

#[test]
fn a_hostile_registry_is_refused_in_bounded_time_and_memory_and_leaves_nothing() {
    let mut images = BTreeMap::new();
    images.insert("good".to_string(), good_image());
    // 320 × 16 MiB = 5 GiB of zeros in about 5 MB; its diff_id is never reached.
    let bomb = zero_bomb(320);
    images.insert(
        "bomb".to_string(),
        image(vec![(LAYER_GZIP, bomb, sha(b"never reached"))]),
    );
    // The 300-byte cut of this body falls inside a '€' (3 bytes), and the body never ends.
    let mut err_fill = "x".repeat(299).into_bytes();
    err_fill.extend("€".repeat(10_000).as_bytes());
    let special = move |req: &Req| -> Option<Resp> {
        let endless = |length, fill: &[u8]| Resp {
            status: 200,
            headers: vec![("Content-Type".into(), MANIFEST.into())],
            body: Body::Endless {
                length,
                fill: fill.to_vec(),
            },
        };
        match req.path.as_str() {
            "/v2/declared/manifests/v1" => Some(endless(Some(10 << 30), b"{\"layers\":[ ")),
            "/v2/undeclared/manifests/v1" => Some(endless(None, b"{\"layers\":[ ")),
            "/v2/errbody/manifests/v1" => Some(Resp {
                status: 500,
                headers: vec![],
                body: Body::Endless {
                    length: None,
                    fill: err_fill.clone(),
                },
            }),
            _ => None,
        }
    };
    let reg = Server::start("127.0.0.1", registry_handler(images, special));
    let data = tempfile::tempdir().expect("tmp");
    let d = data.path();

    let good = format!("{}/good:v1", reg.addr);
    let pulled = ok_json(&run(
        d,
        &["image", "pull", &good, "--json"],
        &[],
        Duration::from_secs(60),
    ));
    assert_eq!(pulled["name"], good.as_str());
    let before = store_state(d);
    assert_eq!(before.0.as_array().map(Vec::len), Some(1), "{}", before.0);

    let cases: [(&str, &[&str], Duration); 4] = [
        (
            "declared",
            &["manifest of", "/declared:v1", "larger than 4 MiB"],
            Duration::from_secs(15),
        ),
        (
            "undeclared",
            &["manifest of", "/undeclared:v1", "larger than 4 MiB"],
            Duration::from_secs(15),
        ),
        (
            "errbody",
            &["answered 500", &format!("{}€…", "x".repeat(299))],
            Duration::from_secs(15),
        ),
        (
            "bomb",
            &[
                "/bomb:v1",
                "decompresses to more than 1073741824 bytes",
                "decompression bomb",
            ],
            Duration::from_secs(60),
        ),
    ];
    for (repo, wants, limit) in cases {
        let r = run(
            d,
            &["image", "pull", &format!("{}/{repo}:v1", reg.addr)],
            &[],
            Duration::from_secs(300),
        );
        let err = stderr(&r.out);
        assert_eq!(r.out.status.code(), Some(1), "{repo}: {err}");
        assert!(!err.contains("panicked"), "{repo}: {err}");
        for w in wants {
            assert!(err.contains(w), "{repo}: the error lacks {w:?}: {err}");
        }
        assert!(err.len() < 2000, "{repo}: an error of {} bytes", err.len());
        assert!(r.took < limit, "{repo}: took {:?}", r.took);
        assert!(r.peak_mib < 100, "{repo}: peak RSS {} MiB", r.peak_mib);
        assert_eq!(store_state(d), before, "{repo} changed the store");
        eprintln!(
            "{repo}: refused in {:?}, peak RSS {} MiB",
            r.took, r.peak_mib
        );
    }
}

#[test]
fn credentials_reach_only_the_registry_host() {
    // 127.0.0.2 hosts a token service and blob storage: another host than 127.0.0.1.
    let stored: Arc<Mutex<BTreeMap<String, Vec<u8>>>> = Arc::default();
    let stored2 = Arc::clone(&stored);
    let elsewhere = Server::start(
        "127.0.0.2",
        Arc::new(move |req: &Req| {
            if req.path.starts_with("/token") {
                return resp(200, &[], br#"{"token":"away-token"}"#.to_vec());
            }
            let d = req.path.trim_start_matches("/storage/");
            match stored2.lock().expect("lock").get(d) {
                Some(b) => resp(200, &[], b.clone()),
                None => resp(404, &[], Vec::new()),
            }
        }),
    );
    let mut images = BTreeMap::new();
    images.insert("away".to_string(), good_image());
    let home = {
        let tar = tar_of(&[("home", b"home\n")]);
        image(vec![(LAYER_GZIP, gzip(&tar), sha(&tar))])
    };
    for img in [&images["away"], &home] {
        for (d, b) in &img.blobs {
            stored.lock().expect("lock").insert(d.clone(), b.clone());
        }
    }
    images.insert("home".to_string(), home);
    let basic = "Basic YWxpY2U6czNjcmV0"; // alice:s3cret
    let other = elsewhere.addr.clone();
    let own: Arc<Mutex<String>> = Arc::default();
    let own2 = Arc::clone(&own);
    let inner = registry_handler(images, |_| None);
    let reg = Server::start(
        "127.0.0.1",
        Arc::new(move |req: &Req| {
            if req.path.starts_with("/token") {
                // The registry's own token service checks the credentials.
                return if req.headers.get("authorization").map(String::as_str) == Some(basic) {
                    resp(200, &[], br#"{"token":"home-token"}"#.to_vec())
                } else {
                    resp(401, &[], Vec::new())
                };
            }
            let realm = if req.path.starts_with("/v2/away/") {
                format!("http://{other}/token")
            } else {
                format!("http://{}/token", own2.lock().expect("lock"))
            };
            let auth = req.headers.get("authorization").map(String::as_str);
            if !matches!(auth, Some("Bearer away-token" | "Bearer home-token")) {
                let challenge = format!(
                    "Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:x:pull\""
                );
                return resp(401, &[("WWW-Authenticate", &challenge)], Vec::new());
            }
            // Blobs live in storage on another host, as with S3-backed registries.
            if let Some((_, d)) = req.path.split_once("/blobs/") {
                let to = format!("http://{other}/storage/{d}");
                return resp(307, &[("Location", &to)], Vec::new());
            }
            inner(req)
        }),
    );
    *own.lock().expect("lock") = reg.addr.clone();
    let data = tempfile::tempdir().expect("tmp");
    let creds = [
        ("RECAST_REGISTRY_USER", "alice"),
        ("RECAST_REGISTRY_PASSWORD", "s3cret"),
    ];
    for repo in ["away", "home"] {
        let r = run(
            data.path(),
            &[
                "image",
                "pull",
                &format!("{}/{repo}:v1", reg.addr),
                "--json",
            ],
            &creds,
            Duration::from_secs(60),
        );
        ok_json(&r);
    }

    let away: Vec<Req> = elsewhere.requests();
    assert!(
        away.iter().any(|r| r.path.starts_with("/token")),
        "no token was asked for on the other host: {away:?}"
    );
    assert!(
        away.iter()
            .filter(|r| r.path.starts_with("/storage/"))
            .count()
            >= 4,
        "the blobs were not fetched from storage: {away:?}"
    );
    for r in &away {
        assert!(
            !r.headers.contains_key("authorization"),
            "{} {} on another host carried credentials: {:?}",
            r.method,
            r.path,
            r.headers
        );
    }
    let home_reqs = reg.requests();
    assert!(
        home_reqs.iter().any(|r| r.path.starts_with("/token")
            && r.headers.get("authorization").map(String::as_str) == Some(basic)),
        "the registry's own token service got no credentials: {home_reqs:?}"
    );
    for r in home_reqs.iter().filter(|r| r.path.starts_with("/v2/")) {
        if let Some(a) = r.headers.get("authorization") {
            assert!(a.starts_with("Bearer "), "{} carried {a}", r.path);
        }
    }
}

/// An OCI archive: `oci-layout`, `index.json` and the given blobs, under the given names.
fn oci_archive(to: &Path, index: &[u8], files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(to).expect("create"));
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Raw names: `append_data` would refuse `..`, which is what some cases need.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).expect("tar");
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", index);
    for (n, d) in files {
        add(n, d);
    }
    b.into_inner().expect("tar").flush().expect("flush");
}

fn blob_entries(img: &Image) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = img
        .blobs
        .iter()
        .map(|(d, b)| (format!("blobs/sha256/{}", &d[7..]), b.clone()))
        .collect();
    v.push((
        format!("blobs/sha256/{}", &sha(&img.manifest)[7..]),
        img.manifest.clone(),
    ));
    v
}

fn index_for(manifest: &[u8], digest: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST, "digest": digest, "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": name },
        }],
    }))
    .expect("json")
}

/// An image whose manifest is `edit`ed after the fact (so its digests can be anything).
fn crafted(edit: impl Fn(&mut Value)) -> Image {
    let mut img = good_image();
    let mut m: Value = serde_json::from_slice(&img.manifest).expect("json");
    edit(&mut m);
    img.manifest = serde_json::to_vec(&m).expect("json");
    img
}

/// A crafted archive: what it is, its index.json, its files, and what the error must say.
type Crafted = (&'static str, Vec<u8>, Vec<(String, Vec<u8>)>, Vec<String>);

#[test]
fn crafted_archives_with_bad_digests_names_and_sizes_are_refused_naming_the_field() {
    let upper = format!("sha256:{}", "AB".repeat(32));
    let cases: Vec<Crafted> = {
        let mut v = Vec::new();
        let mut add =
            |what: &'static str, img: Image, index: Option<Vec<u8>>, wants: Vec<String>| {
                let index = index
                    .unwrap_or_else(|| index_for(&img.manifest, &sha(&img.manifest), "evil:v1"));
                v.push((what, index, blob_entries(&img), wants));
            };
        add(
            "index digest with ..",
            good_image(),
            Some(index_for(b"", "sha256:../../etc/passwd", "evil:v1")),
            vec![
                "index.json".into(),
                "field manifests[0].digest".into(),
                "../../etc/passwd".into(),
            ],
        );
        add(
            "layer digest with ..",
            crafted(|m| m["layers"][0]["digest"] = json!("sha256:../../etc/passwd")),
            None,
            vec!["field layers[0].digest".into(), "../../etc/passwd".into()],
        );
        add(
            "uppercase config digest",
            crafted(|m| m["config"]["digest"] = json!(upper)),
            None,
            vec!["field config.digest".into(), upper.clone()],
        );
        add(
            "short layer digest",
            crafted(|m| m["layers"][0]["digest"] = json!("sha256:abc")),
            None,
            vec!["field layers[0].digest".into(), "sha256:abc".into()],
        );
        add(
            "layer size understated",
            crafted(|m| m["layers"][0]["size"] = json!(10)),
            None,
            vec!["descriptor says 10".into()],
        );
        add(
            "huge manifest",
            crafted(|m| m["annotations"] = json!({ "pad": "x".repeat(5 << 20) })),
            None,
            vec!["manifest sha256:".into(), "larger than 4 MiB".into()],
        );
        let img = good_image();
        add(
            "name with ..",
            good_image(),
            Some(index_for(
                &img.manifest,
                &sha(&img.manifest),
                "../../etc:passwd",
            )),
            vec![
                "\"../../etc:passwd\"".into(),
                "not a valid image name".into(),
            ],
        );
        v
    };
    let dir = tempfile::tempdir().expect("tmp");
    let data = tempfile::tempdir().expect("tmp");
    for (what, index, files, wants) in cases {
        let file = dir.path().join("crafted.tar");
        oci_archive(&file, &index, &files);
        let r = run(
            data.path(),
            &["image", "import", file.to_str().expect("utf8")],
            &[],
            Duration::from_secs(60),
        );
        let err = stderr(&r.out);
        assert_eq!(r.out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("crafted.tar"),
            "{what}: the error names no archive: {err}"
        );
        for w in &wants {
            assert!(
                err.contains(w.as_str()),
                "{what}: the error lacks {w:?}: {err}"
            );
        }
        let (ls, blobs) = store_state(data.path());
        assert_eq!(ls, json!([]), "{what}");
        assert!(blobs.is_empty(), "{what} left blobs: {blobs:?}");
    }

    // Image indexes nested 20 deep, each listing the next 1,000 times: refused, quickly.
    let img = good_image();
    let mut files = blob_entries(&img);
    let (mut child, mut child_media, mut child_len) =
        (sha(&img.manifest), MANIFEST.to_string(), img.manifest.len());
    for _ in 0..20 {
        let entry = json!({ "mediaType": child_media, "digest": child, "size": child_len });
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": vec![entry; 1000],
        }))
        .expect("json");
        child = sha(&index);
        child_media = "application/vnd.oci.image.index.v1+json".to_string();
        child_len = index.len();
        files.push((format!("blobs/sha256/{}", &child[7..]), index));
    }
    let top = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": child_media, "digest": child, "size": child_len }],
    }))
    .expect("json");
    let file = dir.path().join("crafted.tar");
    oci_archive(&file, &top, &files);
    let r = run(
        data.path(),
        &["image", "import", file.to_str().expect("utf8")],
        &[],
        Duration::from_secs(30),
    );
    let err = stderr(&r.out);
    assert_eq!(r.out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("crafted.tar nests image indexes more than 8 deep"),
        "{err}"
    );
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);

    // A blob entry whose name is not a digest.
    let img = good_image();
    let mut files = blob_entries(&img);
    files.push(("blobs/sha256/../../../../tmp/x".into(), b"x".to_vec()));
    let file = dir.path().join("crafted.tar");
    oci_archive(
        &file,
        &index_for(&img.manifest, &sha(&img.manifest), "ok:v1"),
        &files,
    );
    let r = run(
        data.path(),
        &["image", "import", file.to_str().expect("utf8")],
        &[],
        Duration::from_secs(60),
    );
    let err = stderr(&r.out);
    assert_eq!(r.out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("crafted.tar has a blob with an invalid name: blobs/sha256/../../../../tmp/x"),
        "{err}"
    );
}

/// A writer that hashes what goes through it.
struct Tee<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn export_as_docker_streams_a_300_mib_layer() {
    const SIZE: u64 = 300 << 20;
    // A gzip layer holding one 300 MiB file of zeros, and its diff_id.
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(Tee {
        inner: gz,
        hash: Sha256::new(),
    });
    let mut h = tar::Header::new_ustar();
    h.set_size(SIZE);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, "big", std::io::repeat(0).take(SIZE))
        .expect("tar");
    let tee = b.into_inner().expect("tar");
    let diff_id = format!(
        "sha256:{}",
        tee.hash
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let layer = tee.inner.finish().expect("gzip");
    let img = image(vec![(LAYER_GZIP, layer, diff_id)]);
    let dir = tempfile::tempdir().expect("tmp");
    let data = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("big.tar");
    oci_archive(
        &file,
        &index_for(&img.manifest, &sha(&img.manifest), "big:v1"),
        &blob_entries(&img),
    );
    ok_json(&run(
        data.path(),
        &["image", "import", file.to_str().expect("utf8"), "--json"],
        &[],
        Duration::from_secs(120),
    ));

    let out = dir.path().join("docker.tar");
    let r = run(
        data.path(),
        &[
            "image",
            "export",
            "big:v1",
            "--format",
            "docker",
            "-o",
            out.to_str().expect("utf8"),
            "--json",
        ],
        &[],
        Duration::from_secs(120),
    );
    let exported = ok_json(&r);
    assert!(exported["size"].as_u64().unwrap_or(0) > SIZE, "{exported}");
    assert!(
        r.peak_mib < 100,
        "exporting a 300 MiB layer took {} MiB of memory",
        r.peak_mib
    );
    eprintln!("export: {:?}, peak RSS {} MiB", r.took, r.peak_mib);

    // The archive is right: importing it checks every layer against the config's diff_ids.
    let data2 = tempfile::tempdir().expect("tmp");
    let back = ok_json(&run(
        data2.path(),
        &["image", "import", out.to_str().expect("utf8"), "--json"],
        &[],
        Duration::from_secs(120),
    ));
    assert_eq!(back[0]["name"], "big:v1", "{back}");
}
