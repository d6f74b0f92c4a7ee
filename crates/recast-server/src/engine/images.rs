//! Images where every host can get them: apply pushes each image it deploys to the project's
//! `registry`, and a server that lacks a release's image pulls it by digest before starting
//! an instance of it.
//!
//! An image is pushed once, by the tag `sha256-<hex of its digest>` (registries that clean up
//! untagged manifests keep it), and the registry must then serve it by its digest: the
//! manifest's bytes are never re-serialised, so the digest a registry reports is the store's.
//! The release records `HOST/PREFIX/IMAGE@sha256:…` ([`ImageSource`]).

use super::*;
use crate::record::ImageSource;
use recast_image::registry::{self, Remote};

/// What the engine keeps about images: each project's registry (from its last apply), and the
/// pulls in flight, one per digest.
#[derive(Default)]
pub(super) struct Images {
    registries: Mutex<HashMap<String, recast_spec::Registry>>,
    pulls: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// The tag an image is pushed under: derived from its digest, so pushing the same image again
/// changes nothing and two images never share a tag.
fn tag_of(digest: &Digest) -> String {
    format!("sha256-{}", digest.hex())
}

/// `msg` with the credentials it might carry hidden: URLs redacted, and the registry password
/// recast was given, should a registry echo it.
fn redact(msg: &str) -> String {
    let mut out = msg
        .split(' ')
        .map(|w| {
            if w.contains("://") {
                recast_spec::redact_url(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    if let Ok(p) = std::env::var("RECAST_REGISTRY_PASSWORD")
        && p.len() >= 4
    {
        out = out.replace(&p, "***");
    }
    out
}

/// Whether the store holds the whole image: its manifest, config and layers.
fn stored(store: &Store, digest: &Digest) -> bool {
    if !store.has_blob(digest) {
        return false;
    }
    match store.manifest(digest, "a release's image") {
        Ok(m) => {
            store.has_blob(&m.config.digest) && m.layers.iter().all(|l| store.has_blob(&l.digest))
        }
        Err(_) => false,
    }
}

impl Ctl {
    /// Push every image a service of `plan` deploys to the project's registry (none without a
    /// `registry` block); the first failure fails the apply, naming the registry and the image.
    /// Remembers the registry, so that the releases this apply records say where their image is.
    pub(super) async fn push_images(
        &self,
        apply: u64,
        project: &Project,
        name: &str,
        plan: &plan::Plan,
        built: &[build::Built],
    ) -> Result<(), String> {
        let Some(reg) = project.registry.clone() else {
            lock(&self.images.registries).remove(name);
            return Ok(());
        };
        let mut pushed: Vec<&str> = Vec::new();
        for sp in plan
            .services
            .iter()
            .filter(|s| matches!(s.action, Action::Create | Action::Update))
        {
            let img = project.services[&sp.service].image.as_str();
            if pushed.contains(&img) {
                continue;
            }
            pushed.push(img);
            let Some(b) = built.iter().find(|b| b.image == img) else {
                return Err(format!("image {img} was not built"));
            };
            let repository = reg.repository(img);
            let what = format!("pushing image {img} to registry {}", reg.url);
            let dest = Remote::parse(&format!("{repository}:{}", tag_of(&b.digest)))
                .map_err(|e| format!("{what}: {e}"))?;
            self.log(apply, format!("pushing image {img} to {repository}"));
            let (store, digest, image, insecure) = (
                self.store.clone(),
                b.digest.clone(),
                img.to_string(),
                reg.insecure,
            );
            let done = tokio::task::spawn_blocking(move || {
                let (desc, _) = store.resolve(&recast_image::ImageRef::Digest {
                    name: None,
                    digest: digest.clone(),
                })?;
                let pushed = registry::push(&store, &desc, &image, &dest, insecure)?;
                // Served by its digest, as a server that lacks it will ask for it.
                let by_digest = Remote {
                    reference: digest.to_string(),
                    ..dest
                };
                let served = registry::resolve(&by_digest, insecure)?;
                if served != digest {
                    return Err(recast_image::Error::msg(format!(
                        "the registry serves {by_digest} as {served}"
                    )));
                }
                Ok(pushed)
            })
            .await
            .map_err(|e| format!("{what}: {e}"))?
            .map_err(|e| redact(&format!("{what}: {e}")))?;
            self.log(
                apply,
                format!(
                    "image {img} is at {repository}@{} ({} blob(s) uploaded, {} already there)",
                    done.digest, done.blobs_uploaded, done.blobs_skipped
                ),
            );
        }
        lock(&self.images.registries).insert(name.to_string(), reg);
        Ok(())
    }

    /// Where a new release of `project` running `image` at `digest` can be pulled from: the
    /// registry its apply pushed to, if any.
    pub(super) fn image_source(
        &self,
        project: &str,
        image: &str,
        digest: &str,
    ) -> Option<ImageSource> {
        lock(&self.images.registries)
            .get(project)
            .map(|r| ImageSource {
                reference: format!("{}@{digest}", r.repository(image)),
                insecure: r.insecure,
            })
    }

    /// Make sure the store holds the image of `run`: nothing to do when it does; otherwise it
    /// is pulled by digest from the registry its release records (a release without one is
    /// left to the runtime, which names what is missing). Concurrent calls for one digest pull
    /// it once; the pulled manifest must have the recorded digest.
    pub(crate) async fn ensure_image(&self, run: &Run) -> Result<(), String> {
        let (store, digest) = (self.store.clone(), run.digest.clone());
        let have = move || {
            let (store, digest) = (store.clone(), digest.clone());
            tokio::task::spawn_blocking(move || stored(&store, &digest))
        };
        if have().await.map_err(|e| e.to_string())? {
            return Ok(());
        }
        let Some(source) = run.source.clone() else {
            return Ok(());
        };
        let what = format!(
            "pulling image {} of release {} from {}",
            run.image_name, run.number, source.reference
        );
        let remote = Remote::parse(&source.reference).map_err(|e| format!("{what}: {e}"))?;
        if remote.reference != run.digest.as_str() {
            return Err(format!(
                "{what}: the recorded reference does not name the release's digest {}",
                run.digest
            ));
        }
        let one = lock(&self.images.pulls)
            .entry(run.digest.clone())
            .or_default()
            .clone();
        let _pulling = one.lock().await;
        let result = async {
            // Another call may have pulled it while this one waited.
            if have().await.map_err(|e| e.to_string())? {
                return Ok(());
            }
            let (store, reference, insecure) = (
                self.store.clone(),
                source.reference.clone(),
                source.insecure,
            );
            let added = tokio::task::spawn_blocking(move || {
                recast_image::pull(&store, &reference, insecure)
            })
            .await
            .map_err(|e| format!("{what}: {e}"))?
            .map_err(|e| redact(&format!("{what}: {e}")))?;
            if added.digest != run.digest {
                return Err(format!(
                    "{what}: the registry sent {}, not {}",
                    added.digest, run.digest
                ));
            }
            tracing::info!(digest = %run.digest, "pulled image {} as {}", run.image_name, added.name);
            Ok(())
        }
        .await;
        lock(&self.images.pulls).remove(&run.digest);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::AtomicUsize;

    /// A one-image registry on a loopback port: answers `GET` of its manifest (slowly, so that
    /// concurrent pulls would overlap) and blobs, counting manifest requests.
    struct FakeRegistry {
        addr: String,
        manifest_gets: Arc<AtomicUsize>,
    }

    /// An image of one empty layer: (manifest digest, blobs by digest, manifest bytes).
    fn image() -> (Digest, HashMap<String, Vec<u8>>, Vec<u8>) {
        let layer = vec![0u8; 1024];
        let ld = Digest::of(&layer);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{ld}"]}}}}"#
        )
        .into_bytes();
        let cd = Digest::of(&config);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{ld}","size":{}}}]}}"#,
            recast_image::oci::MANIFEST,
            recast_image::oci::CONFIG,
            config.len(),
            recast_image::oci::LAYER_TAR,
            layer.len()
        )
        .into_bytes();
        let md = Digest::of(&manifest);
        let blobs = HashMap::from([(ld.to_string(), layer), (cd.to_string(), config)]);
        (md, blobs, manifest)
    }

    impl FakeRegistry {
        fn start(
            repo: &'static str,
            blobs: HashMap<String, Vec<u8>>,
            manifest: Vec<u8>,
        ) -> FakeRegistry {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("addr").to_string();
            let manifest_gets = Arc::new(AtomicUsize::new(0));
            let gets = manifest_gets.clone();
            let (blobs, manifest) = (Arc::new(blobs), Arc::new(manifest));
            std::thread::spawn(move || {
                for conn in l.incoming().flatten() {
                    let (blobs, manifest, gets) = (blobs.clone(), manifest.clone(), gets.clone());
                    std::thread::spawn(move || answer(conn, repo, &blobs, &manifest, &gets));
                }
            });
            FakeRegistry {
                addr,
                manifest_gets,
            }
        }
    }

    fn answer(
        mut conn: std::net::TcpStream,
        repo: &str,
        blobs: &HashMap<String, Vec<u8>>,
        manifest: &[u8],
        gets: &AtomicUsize,
    ) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut b).is_ok_and(|n| n == 1) {
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let path = head.split(' ').nth(1).unwrap_or("");
        let prefix = format!("/v2/{repo}/");
        let (status, kind, body): (&str, &str, &[u8]) = match path.strip_prefix(&prefix) {
            Some(p) if p.starts_with("manifests/") => {
                gets.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
                ("200 OK", recast_image::oci::MANIFEST, manifest)
            }
            Some(p) => match p.strip_prefix("blobs/").and_then(|d| blobs.get(d)) {
                Some(blob) => ("200 OK", "application/octet-stream", blob),
                None => ("404 Not Found", "text/plain", b"no such blob"),
            },
            None => ("404 Not Found", "text/plain", b"no such repository"),
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(body);
    }

    fn ctl(d: &Path) -> Arc<Ctl> {
        let store = Store::open(&d.join("store")).expect("store");
        let rt = Runtime::new(d, store.clone()).expect("runtime");
        let state = State::open(&d.join("state.db")).expect("state");
        let host = HostConfig::new(Some("test"), &[], LEASE_TIME).expect("host");
        Ctl::new(d, state, rt, store, "/bin/false".into(), host)
    }

    fn run(d: &Path, digest: &Digest, source: Option<ImageSource>) -> Run {
        let spec = d.join("recast.hcl");
        std::fs::write(
            &spec,
            "image \"app\" {\n  from = \"scratch\"\n  cmd = [\"/x\"]\n}\nservice \"app\" {\n  image = image.app\n  port = 8080\n}\n",
        )
        .expect("spec");
        let project = recast_spec::load(&spec).unwrap_or_else(|e| panic!("{e}"));
        Run {
            number: 1,
            digest: digest.clone(),
            image_name: "app:latest".into(),
            service: project.services["app"].clone(),
            source,
            secrets: BTreeMap::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_image_is_pulled_once_by_digest_however_many_ask() {
        let (digest, blobs, manifest) = image();
        let reg = FakeRegistry::start("team/app", blobs, manifest);
        let d = tempfile::tempdir().expect("tmp");
        let ctl = ctl(d.path());
        let source = ImageSource {
            reference: format!("{}/team/app@{digest}", reg.addr),
            insecure: true,
        };
        let run = run(d.path(), &digest, Some(source));
        assert!(!stored(&ctl.store, &digest));
        let (a, b, c, e) = tokio::join!(
            ctl.ensure_image(&run),
            ctl.ensure_image(&run),
            ctl.ensure_image(&run),
            ctl.ensure_image(&run)
        );
        for r in [a, b, c, e] {
            r.expect("pulled");
        }
        assert!(
            stored(&ctl.store, &digest),
            "the whole image is in the store"
        );
        assert_eq!(reg.manifest_gets.load(Ordering::SeqCst), 1, "one pull");
        assert!(lock(&ctl.images.pulls).is_empty(), "no pull left behind");
        // Present now: nothing is asked of the registry.
        ctl.ensure_image(&run).await.expect("present");
        assert_eq!(reg.manifest_gets.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pull_that_is_not_the_recorded_image_is_an_error_naming_it() {
        let (digest, blobs, manifest) = image();
        let reg = FakeRegistry::start("team/app", blobs, manifest);
        let d = tempfile::tempdir().expect("tmp");
        let ctl = ctl(d.path());
        // The registry's manifest is not the one the release recorded.
        let other = Digest::of(b"another image");
        let source = ImageSource {
            reference: format!("{}/team/app@{other}", reg.addr),
            insecure: true,
        };
        let e = ctl
            .ensure_image(&run(d.path(), &other, Some(source)))
            .await
            .expect_err("not the recorded image");
        assert!(
            e.starts_with(&format!(
                "pulling image app:latest of release 1 from {}/team/app@{other}: ",
                reg.addr
            )) && e.contains(&format!("digest is {digest}")),
            "{e}"
        );
        assert!(!stored(&ctl.store, &other) && !stored(&ctl.store, &digest));
        // A reference that names another digest than the release is refused before asking.
        let source = ImageSource {
            reference: format!("{}/team/app@{digest}", reg.addr),
            insecure: true,
        };
        let e = ctl
            .ensure_image(&run(d.path(), &other, Some(source)))
            .await
            .expect_err("inconsistent record");
        assert!(e.contains("does not name the release's digest"), "{e}");
        // Without a recorded registry the runtime is left to say what is missing.
        ctl.ensure_image(&run(d.path(), &other, None))
            .await
            .expect("nothing to pull from");
    }
}
