//! The OCI distribution API client: push and pull, keeping manifest bytes exact.
//!
//! Plain HTTP is used for loopback registries (and when asked with `insecure`); everything else
//! is HTTPS. Bearer-token auth follows the registry's `WWW-Authenticate` challenge; credentials
//! come from `RECAST_REGISTRY_USER` / `RECAST_REGISTRY_PASSWORD` when a registry wants them.

use crate::digest::Digest;
use crate::error::{Context, Error, Result};
use crate::oci::{self, Descriptor, Manifest};
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
        Ok(Remote {
            host: host.to_string(),
            repo: repo.to_string(),
            reference,
        })
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
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        let scheme = if insecure || remote.is_loopback() {
            "http"
        } else {
            "https"
        };
        Client {
            agent,
            base: format!("{scheme}://{}", remote.host),
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
        let creds = match (
            std::env::var("RECAST_REGISTRY_USER"),
            std::env::var("RECAST_REGISTRY_PASSWORD"),
        ) {
            (Ok(u), Ok(p)) => Some(base64(format!("{u}:{p}").as_bytes())),
            _ => None,
        };
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return creds.map(|c| format!("Basic {c}")).ok_or_else(|| {
                Error::msg(format!("{doing}: registry {} wants a user name and password\n  hint: set RECAST_REGISTRY_USER and RECAST_REGISTRY_PASSWORD", self.remote.host))
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
                "{doing}: the token service {realm} answered {}\n  hint: check RECAST_REGISTRY_USER and RECAST_REGISTRY_PASSWORD",
                resp.status()
            )));
        }
        let body: serde_json::Value = serde_json::from_reader(resp.into_body().into_reader())
            .map_err(|e| {
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
        let body = resp.into_body().read_to_string().unwrap_or_default();
        let detail = body.trim();
        let detail = if detail.len() > 300 {
            &detail[..300]
        } else {
            detail
        };
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

    fn upload_blob(&mut self, d: &Digest, bytes: &[u8]) -> Result<()> {
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
        let resp = self.send(&doing, &|a, auth| {
            with_auth(a.put(&url), auth)
                .header("Content-Type", "application/octet-stream")
                .send(bytes)
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
    let manifest_bytes = store.read_blob(&desc.digest, name)?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| Error::msg(format!("manifest of {name} is not valid: {e}")))?;
    let mut client = Client::new(dest, insecure);
    let mut blobs: Vec<Digest> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    blobs.push(manifest.config.digest.clone());
    if let Some(fi) = manifest.file_index()
        && store.has_blob(&fi)
    {
        blobs.push(fi);
    }
    let (mut uploaded, mut skipped) = (0, 0);
    for d in &blobs {
        if client.has_blob(d)? {
            skipped += 1;
            continue;
        }
        let bytes = store.read_blob(d, name)?;
        client.upload_blob(d, &bytes)?;
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
    let manifest: Manifest = serde_json::from_slice(&staging.read(&desc.digest, &src.to_string())?)
        .map_err(|e| Error::msg(format!("the manifest of {src} is not valid: {e}")))?;
    let mut blobs: Vec<(Digest, bool)> = manifest
        .layers
        .iter()
        .map(|l| (l.digest.clone(), true))
        .collect();
    blobs.push((manifest.config.digest.clone(), true));
    if let Some(fi) = manifest.file_index() {
        blobs.push((fi, false));
    }
    for (d, required) in blobs {
        if staging.has(&d) {
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
        let mut r = resp.into_body().into_reader();
        staging.put_reader(&mut r, Some(&d), &format!("blob {d} of {src}"))?;
    }
    Ok(desc)
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
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_body().into_reader(), &mut bytes)
        .doing(|| doing.clone())?;
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
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
