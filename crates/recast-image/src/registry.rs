//! The OCI distribution API client: push and pull, keeping manifest bytes exact.
//!
//! Plain HTTP is used for loopback registries (and when asked with `insecure`); everything else
//! is HTTPS. Bearer-token auth follows the registry's `WWW-Authenticate` challenge; credentials
//! come from `RECAST_REGISTRY_USER` / `RECAST_REGISTRY_PASSWORD`, else from the Docker config
//! file's `auths` entry for the registry's host, when a registry wants them; they are only ever
//! sent to that host.

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{self, Descriptor, Manifest};
use crate::progress::{Counted, Progress, Unwatched};
use crate::store::{Staging, Store};
use std::time::Duration;
use ureq::http::StatusCode;

/// `host[:port]/repo/path[:tag|@sha256:…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub host: String,
    pub repo: String,
    /// A tag or a digest.
    pub reference: String,
}

impl Remote {
    pub fn parse(s: &str) -> Result<Remote> {
        let s = s.strip_prefix("docker://").unwrap_or(s);
        let bad = |why: &str| {
            Error::msg(format!(
                "invalid registry reference \"{s}\": {why}\n  hint: write HOST[:PORT]/REPO[:TAG] or HOST[:PORT]/REPO@sha256:DIGEST"
            ))
        };
        let (host, rest) = s.split_once('/').ok_or_else(|| bad("no registry host"))?;
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad(
                "the first part must be a registry host, like 127.0.0.1:5000 or registry.example.com",
            ));
        }
        let (repo, reference) = if let Some((repo, d)) = rest.split_once('@') {
            if Digest::parse(d).is_none() {
                return Err(bad("the digest is not sha256: followed by 64 hex digits"));
            }
            (repo, d.to_string())
        } else {
            match rest.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => (repo, tag.to_string()),
                _ => (rest, "latest".to_string()),
            }
        };
        if repo.is_empty()
            || reference.is_empty()
            || repo
                .chars()
                .any(|c| c.is_ascii_uppercase() || c.is_whitespace())
        {
            return Err(bad("the repository must be lowercase and not empty"));
        }
        if !crate::store::valid_name(repo) || repo.contains(':') {
            return Err(bad(
                "the repository may hold only lowercase letters, digits, '.', '_', '-' and '/' between non-empty parts",
            ));
        }
        if !reference.starts_with("sha256:") && !crate::store::valid_tag(&reference) {
            return Err(bad(
                "a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
            ));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(bad("the registry host is not a valid host name"));
        }
        Ok(Remote {
            host: host.to_string(),
            repo: repo.to_string(),
            reference,
        })
    }

    /// The remote of a parsed reference: its digest when pinned, else its tag.
    pub fn from_reference(r: &recast_spec::reference::Reference) -> Remote {
        Remote {
            host: r.host.clone(),
            repo: r.repo.clone(),
            reference: r
                .digest
                .clone()
                .or_else(|| r.tag.clone())
                .unwrap_or_else(|| "latest".into()),
        }
    }

    /// Where the registry API of `host` answers: Docker Hub's API is not on `docker.io`.
    fn api_host(&self) -> &str {
        if self.host == recast_spec::reference::DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.host
        }
    }

    fn is_loopback(&self) -> bool {
        let h = self
            .host
            .rsplit_once(':')
            .map_or(self.host.as_str(), |(h, _)| h);
        h == "localhost" || h.starts_with("127.") || h == "[::1]"
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        write!(f, "{}/{}{sep}{}", self.host, self.repo, self.reference)
    }
}

/// Builds and sends one request, given the agent and the current `Authorization` value.
type MakeRequest<'a> = dyn Fn(
        &ureq::Agent,
        Option<&str>,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>
    + 'a;

pub struct Client {
    agent: ureq::Agent,
    base: String,
    remote: Remote,
    token: Option<String>,
}

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

impl Client {
    pub fn new(remote: &Remote, insecure: bool) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_global(Some(Duration::from_secs(600)))
            // A redirect (blob storage) keeps `Authorization` only on the registry's own host.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .build()
            .into();
        let scheme = if insecure || remote.is_loopback() {
            "http"
        } else {
            "https"
        };
        Client {
            agent,
            base: format!("{scheme}://{}", remote.api_host()),
            remote: remote.clone(),
            token: None,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.remote.repo)
    }

    fn net_err(&self, doing: &str, e: ureq::Error) -> Error {
        Error::msg(format!(
            "{doing} at registry {}: {e}\n  hint: is the registry running and reachable at {}?",
            self.remote.host, self.base
        ))
    }

    /// Send a request, answering one auth challenge if the registry asks.
    fn send(
        &mut self,
        doing: &str,
        make: &MakeRequest<'_>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let resp = make(&self.agent, self.token.as_deref()).map_err(|e| self.net_err(doing, e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.token = Some(self.authenticate(&challenge, doing)?);
        make(&self.agent, self.token.as_deref()).map_err(|e| self.net_err(doing, e))
    }

    /// Turn a `WWW-Authenticate` challenge into an `Authorization` header value.
    fn authenticate(&self, challenge: &str, doing: &str) -> Result<String> {
        let creds =
            credentials(&self.remote.host).map(|(u, p)| base64(format!("{u}:{p}").as_bytes()));
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return creds.map(|c| format!("Basic {c}")).ok_or_else(|| {
                let host = &self.remote.host;
                let config = docker_config_path().map_or_else(
                    || "~/.docker/config.json".into(),
                    |p| p.display().to_string(),
                );
                Error::msg(format!(
                    "{doing}: registry {host} wants a user name and password\n  hint: set RECAST_REGISTRY_USER and RECAST_REGISTRY_PASSWORD, or log in with `docker login {host}` (recast reads the auths of {config})"
                ))
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Error::msg(format!(
                "{doing}: registry {} refused access (401) with no usable challenge",
                self.remote.host
            )));
        }
        let param = |name: &str| {
            params.split(',').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_string())
            })
        };
        let realm = param("realm")
            .ok_or_else(|| Error::msg(format!("{doing}: registry auth challenge has no realm")))?;
        // Credentials go only to the registry's own host (over a scheme at least as safe): a
        // token service elsewhere is asked anonymously.
        // Docker Hub's token service is its own, fixed, HTTPS host.
        let hub_auth = self.remote.host == recast_spec::reference::DOCKER_HUB
            && realm.starts_with("https://auth.docker.io/");
        let creds = creds.filter(|_| hub_auth || same_host(&self.base, &realm));
        let mut url = realm.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        for k in ["service", "scope"] {
            if let Some(v) = param(k) {
                url.push_str(&format!("{sep}{k}={}", v.replace(' ', "%20")));
                sep = '&';
            }
        }
        let mut req = self.agent.get(&url);
        if let Some(c) = &creds {
            req = req.header("Authorization", &format!("Basic {c}"));
        }
        let resp = req
            .call()
            .map_err(|e| Error::msg(format!("{doing}: fetching a token from {realm}: {e}")))?;
        if !resp.status().is_success() {
            return Err(Error::msg(format!(
                "{doing}: the token service {realm} answered {}\n  hint: check RECAST_REGISTRY_USER and RECAST_REGISTRY_PASSWORD, or the registry's entry in the Docker config file",
                resp.status()
            )));
        }
        let bytes = oci::read_capped(
            resp.into_body().into_reader(),
            oci::MAX_TOKEN_BODY,
            &format!("{doing}: the answer of the token service {realm}"),
        )?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            Error::msg(format!(
                "{doing}: the token service {realm} sent invalid JSON: {e}"
            ))
        })?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| {
                Error::msg(format!("{doing}: the token service {realm} sent no token"))
            })?;
        Ok(format!("Bearer {token}"))
    }

    fn status_err(&self, doing: &str, resp: ureq::http::Response<ureq::Body>) -> Error {
        let status = resp.status();
        let detail = error_detail(resp.into_body().into_reader());
        Error::msg(format!(
            "{doing}: registry {} answered {status}{}{detail}",
            self.remote.host,
            if detail.is_empty() { "" } else { ": " }
        ))
    }

    fn has_blob(&mut self, d: &Digest) -> Result<bool> {
        let url = self.url(&format!("blobs/{d}"));
        let doing = format!("checking for blob {d}");
        let resp = self.send(&doing, &|a, auth| with_auth(a.head(&url), auth).call())?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_err(&doing, resp)),
        }
    }

    fn upload_blob(
        &mut self,
        d: &Digest,
        size: u64,
        open: &dyn Fn() -> std::io::Result<crate::store::VerifyingReader<std::fs::File>>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let doing = format!("uploading blob {d}");
        let start = self.url("blobs/uploads/");
        let resp = self.send(&doing, &|a, auth| {
            with_auth(a.post(&start), auth).send_empty()
        })?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_err(&doing, resp));
        }
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::msg(format!("{doing}: the registry gave no upload location")))?;
        let mut url = if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else {
            format!("{}{loc}", self.base)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={d}"));
        // An upload location on another host gets no credentials.
        let own = same_host(&self.base, &url);
        let resp = self.send(&doing, &|a, auth| {
            let mut r = Counted {
                inner: open().map_err(ureq::Error::Io)?,
                progress,
            };
            with_auth(a.put(&url), auth.filter(|_| own))
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", &size.to_string())
                .send(ureq::SendBody::from_reader(&mut r))
        })?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.status_err(&doing, resp));
        }
        Ok(())
    }
}

fn with_auth<B>(req: ureq::RequestBuilder<B>, auth: Option<&str>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => req.header("Authorization", a),
        None => req,
    }
}

/// What a push did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pushed {
    pub destination: String,
    pub digest: Digest,
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
}

/// Push the stored image `desc` to `dest`, skipping blobs the registry already has.
pub fn push(
    store: &Store,
    desc: &Descriptor,
    name: &str,
    dest: &Remote,
    insecure: bool,
) -> Result<Pushed> {
    push_with(store, desc, name, dest, insecure, &Unwatched)
}

/// [`push`], telling `progress` the bytes of every blob (those the registry has count at once).
pub fn push_with(
    store: &Store,
    desc: &Descriptor,
    name: &str,
    dest: &Remote,
    insecure: bool,
    progress: &dyn Progress,
) -> Result<Pushed> {
    let manifest_bytes =
        store.read_blob_capped(&desc.digest, "manifest", name, oci::MAX_MANIFEST)?;
    let manifest: Manifest = oci::parse_json(
        &manifest_bytes,
        &format!("manifest of {name}"),
        "OCI manifest",
    )?;
    let mut client = Client::new(dest, insecure);
    let mut blobs: Vec<Digest> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    blobs.push(manifest.config.digest.clone());
    if let Some(fi) = manifest.file_index()
        && store.has_blob(&fi)
    {
        blobs.push(fi);
    }
    let size_of = |d: &Digest| {
        std::fs::metadata(store.blob_path(d))
            .map(|m| m.len())
            .map_err(|e| Error::msg(format!("blob {d} of {name} is missing from the store: {e}")))
    };
    let mut total = 0;
    for d in &blobs {
        total += size_of(d)?;
    }
    progress.total(total);
    let (mut uploaded, mut skipped) = (0, 0);
    for d in &blobs {
        let size = size_of(d)?;
        if client.has_blob(d)? {
            progress.advance(size);
            skipped += 1;
            continue;
        }
        // Streamed from the store (verified on the way), never held in memory.
        let open = || {
            store
                .open_blob(d, name)
                .map_err(|e| std::io::Error::other(e.to_string()))
        };
        client.upload_blob(d, size, &open, progress)?;
        uploaded += 1;
    }
    let media = if manifest.media_type.is_empty() {
        desc.media_type.clone()
    } else {
        manifest.media_type.clone()
    };
    let doing = format!("uploading the manifest of {name}");
    let url = client.url(&format!("manifests/{}", dest.reference));
    let resp = client.send(&doing, &|a, auth| {
        with_auth(a.put(&url), auth)
            .header("Content-Type", &media)
            .send(&manifest_bytes[..])
    })?;
    if resp.status() != StatusCode::CREATED {
        return Err(client.status_err(&doing, resp));
    }
    if let Some(got) = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        && got != desc.digest.as_str()
    {
        return Err(Error::msg(format!(
            "{doing}: the registry stored the manifest as {got}, not {}",
            desc.digest
        )));
    }
    Ok(Pushed {
        destination: dest.to_string(),
        digest: desc.digest.clone(),
        blobs_uploaded: uploaded,
        blobs_skipped: skipped,
    })
}

/// Pull `src` into `staging`: the manifest for this platform, its config and layers (and the
/// file index, when the registry has it). Returns the manifest descriptor.
pub fn pull(staging: &mut Staging<'_>, src: &Remote, insecure: bool) -> Result<Descriptor> {
    pull_with(staging, src, insecure, &Unwatched)
}

/// [`pull`], telling `progress` the bytes of the layers and config (those already stored count
/// at once).
pub fn pull_with(
    staging: &mut Staging<'_>,
    src: &Remote,
    insecure: bool,
    progress: &dyn Progress,
) -> Result<Descriptor> {
    let mut client = Client::new(src, insecure);
    let (bytes, media) = fetch_manifest(&mut client, &src.reference)?;
    let d = Digest::of(&bytes);
    if src.reference.starts_with("sha256:") && d.as_str() != src.reference {
        return Err(Error::msg(format!(
            "registry {} sent a manifest for {src} whose digest is {d}",
            src.host
        )));
    }
    let staged = staging.put(&bytes)?;
    let mut desc = Descriptor::new(&media, staged.digest, staged.size);
    if media == oci::INDEX || media == oci::DOCKER_MANIFEST_LIST {
        desc = crate::archive::platform_manifest(desc, staging, &format!("image index of {src}"))?;
        let (bytes, media) = fetch_manifest(&mut client, desc.digest.as_str())?;
        if Digest::of(&bytes) != desc.digest {
            return Err(Error::msg(format!(
                "registry {} sent a manifest whose digest is not {}",
                src.host, desc.digest
            )));
        }
        staging.put(&bytes)?;
        desc.media_type = media;
    }
    let bytes = staging.read(
        &desc.digest,
        "manifest",
        &src.to_string(),
        oci::MAX_MANIFEST,
    )?;
    let manifest: Manifest =
        oci::parse_json(&bytes, &format!("the manifest of {src}"), "OCI manifest")?;
    if manifest.config.size > oci::MAX_CONFIG {
        return Err(oci::too_large(
            &format!("config {} of {src}", manifest.config.digest),
            oci::MAX_CONFIG,
        ));
    }
    // (digest, size the descriptor states, required)
    let mut blobs: Vec<(Digest, Option<u64>, bool)> = manifest
        .layers
        .iter()
        .map(|l| (l.digest.clone(), Some(l.size), true))
        .collect();
    blobs.push((
        manifest.config.digest.clone(),
        Some(manifest.config.size),
        true,
    ));
    if let Some(fi) = manifest.file_index() {
        blobs.push((fi, None, false));
    }
    progress.total(blobs.iter().filter_map(|b| b.1).sum());
    for (d, size, required) in blobs {
        if staging.has(&d) {
            progress.advance(size.unwrap_or(0));
            continue;
        }
        let doing = format!("downloading blob {d} of {src}");
        let url = client.url(&format!("blobs/{d}"));
        let resp = client.send(&doing, &|a, auth| with_auth(a.get(&url), auth).call())?;
        if resp.status() == StatusCode::NOT_FOUND && !required {
            continue;
        }
        if resp.status() != StatusCode::OK {
            return Err(client.status_err(&doing, resp));
        }
        let what = format!("blob {d} of {src}");
        let mut r = Counted {
            inner: resp.into_body().into_reader(),
            progress,
        };
        match size {
            Some(size) => {
                staging.put_sized(&mut r, &d, size, &what)?;
            }
            None => {
                // The file index: no descriptor states its size.
                let mut r = std::io::Read::take(r, oci::MAX_FILE_INDEX + 1);
                let (_, n) = staging.put_reader(&mut r, Some(&d), &what)?;
                if n > oci::MAX_FILE_INDEX {
                    return Err(oci::too_large(&what, oci::MAX_FILE_INDEX));
                }
            }
        }
    }
    Ok(desc)
}

/// A registry's error body for people: at most [`oci::MAX_ERROR_BODY`] bytes are read, and at
/// most 300 characters shown (cut on a character boundary).
fn error_detail(r: impl std::io::Read) -> String {
    let mut bytes = Vec::new();
    let _ =
        std::io::Read::read_to_end(&mut std::io::Read::take(r, oci::MAX_ERROR_BODY), &mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Whether `url` is on the same host as `base` (`scheme://host[:port]`), with a scheme at least
/// as safe (no credentials from HTTPS to plain HTTP).
fn same_host(base: &str, url: &str) -> bool {
    fn split(u: &str) -> Option<(String, String)> {
        let (scheme, rest) = u.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split_once(']')?.0
        } else {
            authority.split(':').next()?
        };
        Some((scheme.to_ascii_lowercase(), host.to_ascii_lowercase()))
    }
    match (split(base), split(url)) {
        (Some((bs, bh)), Some((us, uh))) => bh == uh && (bs == us || us == "https"),
        _ => false,
    }
}

/// The manifest digest a tag (or digest) of `remote` names now: what the registry reports for
/// a `HEAD` of the manifest (`Docker-Content-Digest`), else the digest of the manifest a `GET`
/// returns. For a multi-platform image this is the digest of its index, as Docker records it.
pub fn resolve(remote: &Remote, insecure: bool) -> Result<Digest> {
    let mut client = Client::new(remote, insecure);
    let doing = format!("resolving {remote}");
    let url = client.url(&format!("manifests/{}", remote.reference));
    let resp = client.send(&doing, &|a, auth| {
        with_auth(a.head(&url), auth)
            .header("Accept", ACCEPT)
            .call()
    })?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(Error::msg(format!(
            "{doing}: registry {} has no manifest {}:{}",
            remote.host, remote.repo, remote.reference
        )));
    }
    let reported = (resp.status() == StatusCode::OK)
        .then(|| {
            resp.headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(Digest::parse)
        })
        .flatten();
    if let Some(d) = reported {
        return Ok(d);
    }
    // No HEAD support, or no digest header: fetch the manifest and hash it.
    let (bytes, _) = fetch_manifest(&mut client, &remote.reference)?;
    Ok(Digest::of(&bytes))
}

/// The user name and password for `host`: `RECAST_REGISTRY_USER` / `RECAST_REGISTRY_PASSWORD`
/// when both are set, else the Docker config file's `auths` entry for that host.
fn credentials(host: &str) -> Option<(String, String)> {
    if let (Ok(u), Ok(p)) = (
        std::env::var("RECAST_REGISTRY_USER"),
        std::env::var("RECAST_REGISTRY_PASSWORD"),
    ) {
        return Some((u, p));
    }
    let path = docker_config_path()?;
    // A config file is small; never read a device or a huge file.
    let f = std::fs::File::open(&path).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, 1 << 20), &mut bytes).ok()?;
    docker_config_auth(&bytes, host)
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
fn docker_config_path() -> Option<std::path::PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) if !d.is_empty() => Some(std::path::PathBuf::from(d).join("config.json")),
        _ => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| std::path::PathBuf::from(h).join(".docker/config.json")),
    }
}

/// The credentials a Docker config file (`{"auths": {KEY: {"auth": base64(user:pass)} or
/// {"username", "password"}}}`) holds for `host`. Keys are a host with or without port, scheme
/// and path (`https://index.docker.io/v1/` is Docker Hub); only a key naming exactly `host`
/// (Docker Hub's aliases counted as one) matches.
fn docker_config_auth(config: &[u8], host: &str) -> Option<(String, String)> {
    fn key_host(k: &str) -> String {
        let k = k
            .strip_prefix("https://")
            .or_else(|| k.strip_prefix("http://"))
            .unwrap_or(k);
        let h = k.split('/').next().unwrap_or("").to_ascii_lowercase();
        match h.as_str() {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
                recast_spec::reference::DOCKER_HUB.to_string()
            }
            _ => h,
        }
    }
    let v: serde_json::Value = serde_json::from_slice(config).ok()?;
    let want = key_host(host);
    let auths = v.get("auths")?.as_object()?;
    let entry = auths
        .iter()
        .find(|(k, _)| key_host(k) == want)
        .map(|(_, e)| e)?;
    if let Some(a) = entry.get("auth").and_then(|a| a.as_str())
        && !a.is_empty()
    {
        let decoded = String::from_utf8(unbase64(a)?).ok()?;
        let (u, p) = decoded.split_once(':')?;
        return Some((u.to_string(), p.to_string()));
    }
    let u = entry.get("username")?.as_str()?;
    let p = entry.get("password")?.as_str()?;
    Some((u.to_string(), p.to_string()))
}

/// Standard base64 (padding optional); `None` when it is not base64.
fn unbase64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.trim().trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn fetch_manifest(client: &mut Client, reference: &str) -> Result<(Vec<u8>, String)> {
    let doing = format!(
        "fetching the manifest of {}/{}:{reference}",
        client.remote.host, client.remote.repo
    );
    let url = client.url(&format!("manifests/{reference}"));
    let resp = client.send(&doing, &|a, auth| {
        with_auth(a.get(&url), auth).header("Accept", ACCEPT).call()
    })?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(Error::msg(format!("{doing}: not found in the registry")));
    }
    if resp.status() != StatusCode::OK {
        return Err(client.status_err(&doing, resp));
    }
    let media = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(oci::MANIFEST)
        .to_string();
    let what = format!(
        "the manifest of {}/{}:{reference}",
        client.remote.host, client.remote.repo
    );
    let declared = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > oci::MAX_MANIFEST) {
        return Err(oci::too_large(&what, oci::MAX_MANIFEST));
    }
    let bytes = oci::read_capped(resp.into_body().into_reader(), oci::MAX_MANIFEST, &what)?;
    Ok((bytes, media))
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Remote::parse("127.0.0.1:5000/team/hello:v1").expect("valid");
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "team/hello", "v1")
        );
        assert_eq!(
            Remote::parse("localhost:5000/hello")
                .expect("valid")
                .reference,
            "latest"
        );
        assert!(Remote::parse("hello:v1").is_err());
        assert!(Remote::parse("r.io/hello@sha256:12").is_err());
        assert!(Remote::parse("r.io/hello:../../x").is_err());
        assert!(Remote::parse("r.io/../hello:v1").is_err());
        assert!(Remote::parse("r.io/hello:v1?x=1").is_err());
        assert!(Remote::parse("[::1]:5000/hello:v1").is_ok());
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
        for s in [&b""[..], b"a", b"ab", b"abc", b"user:p@ss:w\xffrd"] {
            assert_eq!(unbase64(&base64(s)).as_deref(), Some(s));
        }
        assert_eq!(unbase64("YWI").as_deref(), Some(&b"ab"[..]));
        assert_eq!(unbase64("a b"), None);
    }

    #[test]
    fn docker_config_credentials_match_only_their_host() {
        let config = br#"{
            "auths": {
                "https://index.docker.io/v1/": { "auth": "aHViOmh1YnBhc3M=" },
                "127.0.0.1:5000": { "auth": "YWxpY2U6czNjcjN0OndpdGg6Y29sb25z" },
                "http://registry.example.com/v2/": { "username": "bob", "password": "pw" },
                "empty.example.com": {}
            },
            "credsStore": "desktop"
        }"#;
        let get = |h: &str| docker_config_auth(config, h);
        let pair = |u: &str, p: &str| Some((u.to_string(), p.to_string()));
        assert_eq!(get("docker.io"), pair("hub", "hubpass"));
        assert_eq!(get("127.0.0.1:5000"), pair("alice", "s3cr3t:with:colons"));
        assert_eq!(get("registry.example.com"), pair("bob", "pw"));
        assert_eq!(get("REGISTRY.example.com"), pair("bob", "pw"));
        for other in [
            "127.0.0.1:5001",
            "127.0.0.1",
            "example.com",
            "registry.example.com:443",
            "empty.example.com",
        ] {
            assert_eq!(get(other), None, "{other}");
        }
        assert_eq!(docker_config_auth(b"not json", "docker.io"), None);
        assert_eq!(docker_config_auth(b"{}", "docker.io"), None);
    }

    #[test]
    fn error_bodies_are_cut_on_a_character_boundary() {
        // 299 ASCII bytes, then multi-byte characters across the 300-character cut and beyond.
        let body = format!("{}{}", "x".repeat(299), "é€😀".repeat(40_000));
        let detail = error_detail(body.as_bytes());
        assert_eq!(detail.chars().count(), 301);
        assert!(detail.starts_with(&"x".repeat(299)) && detail.ends_with("é…"));
        // Only the first 64 KiB are read; a body cut inside a character reads as U+FFFD.
        let detail = error_detail(std::io::repeat(0xe2));
        assert!(detail.chars().all(|c| c == '\u{fffd}' || c == '…'));
    }

    #[test]
    fn credentials_stay_on_the_registry_host() {
        assert!(same_host(
            "http://127.0.0.1:5000",
            "http://127.0.0.1:5001/token"
        ));
        assert!(same_host("https://R.io", "https://r.io/token?x=1"));
        assert!(same_host("http://r.io", "https://r.io/token"));
        assert!(!same_host(
            "http://127.0.0.1:5000",
            "http://127.0.0.2:5000/token"
        ));
        assert!(!same_host("https://r.io", "http://r.io/token"));
        assert!(!same_host("https://r.io", "https://r.io.evil.com/token"));
        assert!(!same_host("https://r.io", "https://r.io@evil.com/token"));
        assert!(!same_host("https://r.io", "token"));
    }
}
