//! Image references as Docker reads them: `debian:12` is `docker.io/library/debian:12`.
//!
//! The grammar and the normalisation are those of Docker's `distribution/reference`
//! (`ParseNormalizedNamed` followed by `TagNameOnly`): the first path component is a registry
//! host when it contains a `.` or a `:`, is `localhost`, or has an uppercase letter; otherwise
//! the host is `docker.io`, and a one-component repository on `docker.io` lives under
//! `library/`. A reference with neither tag nor digest means `:latest`. Only `sha256` digests
//! are accepted (the only algorithm recast stores).

use crate::values;

/// The registry host of references that name none.
pub const DOCKER_HUB: &str = "docker.io";

/// The longest repository name (`HOST/REPO`) Docker accepts.
const MAX_NAME: usize = 255;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    /// `docker.io`, `registry.example.com`, `127.0.0.1:5000`, `[::1]:5000`.
    pub host: String,
    /// `library/debian`, `team/app`.
    pub repo: String,
    /// `latest` when neither a tag nor a digest was written.
    pub tag: Option<String>,
    /// `sha256:` and 64 lowercase hex digits.
    pub digest: Option<String>,
}

impl Reference {
    /// `HOST/REPO[:TAG][@DIGEST]`: the one spelling of the reference (what lock entries and
    /// `base` blocks are keyed by).
    pub fn normalized(&self) -> String {
        let mut s = self.name();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// `HOST/REPO`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.host, self.repo)
    }

    /// Whether the reference names an exact manifest (`@sha256:…`) rather than a tag.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }

    /// The same repository pinned to `digest` (the tag dropped).
    pub fn pinned(&self, digest: &str) -> Reference {
        Reference {
            host: self.host.clone(),
            repo: self.repo.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.normalized())
    }
}

/// Parse `s` (`[HOST[:PORT]/]REPO[:TAG][@sha256:HEX]`, an optional `docker://` prefix) into a
/// normalised reference, or say what is wrong with it (a lowercase message without the input).
pub fn parse(s: &str) -> Result<Reference, String> {
    let s = s.strip_prefix("docker://").unwrap_or(s);
    if s.is_empty() {
        return Err("the reference is empty".into());
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            if !values::is_sha256_digest(d) {
                return Err(
                    "invalid digest: a digest is sha256: followed by 64 lowercase hex digits"
                        .into(),
                );
            }
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    // A tag follows the last ':' after the last '/' (a ':' before it is a host's port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let i = last_slash + i;
            (&rest[..i], Some(&rest[i + 1..]))
        }
        None => (rest, None),
    };
    if name.is_empty() {
        return Err("the repository name is empty".into());
    }
    if let Some(t) = tag
        && !is_tag(t)
    {
        return Err(format!(
            "invalid tag \"{t}\": a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ));
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "the repository name is longer than {MAX_NAME} characters"
        ));
    }
    let (host, path) = match name.split_once('/') {
        Some((first, path))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_string(), path.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    if !is_host(&host) {
        return Err(format!("invalid registry host \"{host}\""));
    }
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("the repository name must be lowercase".into());
    }
    if !path.split('/').all(is_path_component) {
        return Err(format!(
            "invalid repository name \"{path}\": components are lowercase letters and digits, separated by '.', '_', '__' or dashes, between single '/'"
        ));
    }
    if host == DOCKER_HUB && path.len() == 64 && path.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a repository name cannot be 64 hex digits (it reads as an image id)".into());
    }
    let host = if host == "index.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        host
    };
    let repo = if host == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, None) => Some("latest".to_string()),
        (None, Some(_)) => None,
    };
    Ok(Reference {
        host,
        repo,
        tag,
        digest,
    })
}

/// Check a `registry { url = … }` value: `HOST[:PORT]` and an optional path prefix of
/// repository components, with no scheme, tag or digest. Returns it without a trailing `/`, or
/// what is wrong with it (a lowercase message without the input).
pub fn registry_url(s: &str) -> Result<String, String> {
    if s.contains("://") {
        return Err("a registry url has no scheme".into());
    }
    let s = s.strip_suffix('/').unwrap_or(s);
    if s.is_empty() {
        return Err("the url is empty".into());
    }
    if s.split('/').next().is_some_and(|h| h.contains('@')) {
        return Err(
            "a registry url carries no credentials: recast reads RECAST_REGISTRY_USER and RECAST_REGISTRY_PASSWORD, or the Docker config"
                .into(),
        );
    }
    if s.contains('@') {
        return Err("a registry url names no digest: recast pushes each image by its own".into());
    }
    let (host, prefix) = match s.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if !is_host(host) {
        return Err(format!("invalid registry host \"{host}\""));
    }
    if !(host.contains(['.', ':']) || host == "localhost") {
        return Err(format!(
            "\"{host}\" does not read as a registry host: a host has a '.' or a port, or is localhost"
        ));
    }
    if let Some(p) = prefix {
        if p.contains(':') {
            return Err("a registry url names no tag: recast tags each image itself".into());
        }
        if p.chars().any(|c| c.is_ascii_uppercase()) {
            return Err("the path prefix must be lowercase".into());
        }
        if !p.split('/').all(is_path_component) {
            return Err(format!(
                "invalid path prefix \"{p}\": components are lowercase letters and digits, separated by '.', '_', '__' or dashes, between single '/'"
            ));
        }
    }
    // Room for at least a one-letter image name.
    if s.len() + 2 > MAX_NAME {
        return Err(format!(
            "the url is longer than {} characters",
            MAX_NAME - 2
        ));
    }
    Ok(s.to_string())
}

/// Whether `url/image` (a checked [`registry_url`] and an image name) is a repository name a
/// registry accepts; otherwise why not.
pub fn registry_repository(url: &str, image: &str) -> Result<(), String> {
    if !is_path_component(image) {
        return Err(format!(
            "\"{image}\" is not a repository name component (lowercase letters and digits, separated by '.', '_', '__' or dashes)"
        ));
    }
    if url.len() + 1 + image.len() > MAX_NAME {
        return Err(format!(
            "the repository name {url}/{image} is longer than {MAX_NAME} characters"
        ));
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(t: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    t.len() <= 128
        && t.bytes().next().is_some_and(ok)
        && t.bytes().all(|b| ok(b) || b == b'.' || b == b'-')
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        let sep = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let s = &c[sep..i];
        if !(s == "." || s == "_" || s == "__" || s.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
}

/// `domain-name | IPv4 | '[' IPv6 ']'`, with an optional `:PORT`.
fn is_host(h: &str) -> bool {
    let (name, port) = if let Some(v6) = h.strip_prefix('[') {
        let Some((addr, rest)) = v6.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match rest {
            "" => return true,
            r => match r.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return false,
            },
        }
    } else {
        match h.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (h, None),
        }
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if name.is_empty() {
        return h.starts_with('[');
    }
    name.split('.').all(|c| {
        let b = c.as_bytes();
        !b.is_empty()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_urls_are_a_host_and_a_prefix() {
        for (url, want) in [
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("127.0.0.1:5000/team", "127.0.0.1:5000/team"),
            ("registry.example.com/a/b-c/", "registry.example.com/a/b-c"),
            ("localhost/x", "localhost/x"),
            ("[::1]:5000/team", "[::1]:5000/team"),
        ] {
            assert_eq!(registry_url(url).as_deref(), Ok(want), "{url}");
        }
        for (url, why) in [
            ("http://127.0.0.1:5000", "a registry url has no scheme"),
            ("", "the url is empty"),
            ("team/app", "\"team\" does not read as a registry host"),
            ("127.0.0.1:5000/team:1", "a registry url names no tag"),
            (
                "127.0.0.1:5000/team@sha256:00",
                "a registry url names no digest",
            ),
            ("127.0.0.1:5000/Team", "the path prefix must be lowercase"),
            ("127.0.0.1:5000//team", "invalid path prefix"),
            ("127.0.0.1:port", "invalid registry host"),
            (
                "me:pw@127.0.0.1:5000/x",
                "a registry url carries no credentials",
            ),
        ] {
            let e = registry_url(url).expect_err(url);
            assert!(e.starts_with(why), "{url}: {e}");
        }
        assert!(registry_repository("127.0.0.1:5000/team", "web").is_ok());
        assert!(registry_repository("127.0.0.1:5000/team", "web-").is_err());
        assert!(registry_repository(&"a".repeat(250), "web-app").is_err());
    }

    const D: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    /// Docker's own cases (`distribution/reference` normalize_test.go and reference_test.go):
    /// what is written, and its normalised form.
    #[test]
    fn valid_references_normalise_as_docker_does() {
        let d = D;
        let cases: Vec<(String, String)> = [
            ("debian", "docker.io/library/debian:latest"),
            ("debian:12", "docker.io/library/debian:12"),
            ("library/debian", "docker.io/library/debian:latest"),
            ("docker/docker", "docker.io/docker/docker:latest"),
            ("team/app", "docker.io/team/app:latest"),
            ("docker.io/debian", "docker.io/library/debian:latest"),
            ("docker.io/library/debian:12", "docker.io/library/debian:12"),
            ("docker.io/docker/docker", "docker.io/docker/docker:latest"),
            ("index.docker.io/debian", "docker.io/library/debian:latest"),
            (
                "index.docker.io/docker/docker",
                "docker.io/docker/docker:latest",
            ),
            ("docker://debian:12", "docker.io/library/debian:12"),
            ("localhost/debian", "localhost/debian:latest"),
            ("localhost:5000/debian:1", "localhost:5000/debian:1"),
            ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000/team/app:v1"),
            ("[::1]:5000/app", "[::1]:5000/app:latest"),
            ("[2001:db8::1]/app", "[2001:db8::1]/app:latest"),
            ("foo.com/bar", "foo.com/bar:latest"),
            ("foo.com:8080/bar", "foo.com:8080/bar:latest"),
            ("foo/foo_bar.com:8080", "docker.io/foo/foo_bar.com:8080"),
            (
                "sub-dom1.foo.com/bar/baz/quux",
                "sub-dom1.foo.com/bar/baz/quux:latest",
            ),
            (
                "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
                "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
            ),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com",
                "b.gcr.io/test.example.com/my-app:test.example.com",
            ),
            (
                "xn--n3h.com/myimage:xn--n3h.com",
                "xn--n3h.com/myimage:xn--n3h.com",
            ),
            ("Docker/docker", "Docker/docker:latest"),
            ("a__b/c--d/e.f", "docker.io/a__b/c--d/e.f:latest"),
            ("a", "docker.io/library/a:latest"),
            ("debian:_1.2-rc", "docker.io/library/debian:_1.2-rc"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .chain([
            (
                format!("debian@{d}"),
                format!("docker.io/library/debian@{d}"),
            ),
            (
                format!("debian:12@{d}"),
                format!("docker.io/library/debian:12@{d}"),
            ),
            (
                format!("127.0.0.1:5000/app@{d}"),
                format!("127.0.0.1:5000/app@{d}"),
            ),
            (
                format!("a:{}", "t".repeat(128)),
                format!("docker.io/library/a:{}", "t".repeat(128)),
            ),
        ])
        .collect();
        for (input, want) in &cases {
            match parse(input) {
                Ok(r) => assert_eq!(&r.normalized(), want, "{input}"),
                Err(e) => panic!("{input} should be valid: {e}"),
            }
        }
        let r = parse("localhost:5000/team/app:v1").expect("valid");
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.tag.as_deref(), r.digest),
            ("localhost:5000", "team/app", Some("v1"), None)
        );
        assert!(parse(&format!("debian@{d}")).expect("valid").is_pinned());
        assert_eq!(
            parse("debian:12").expect("valid").pinned(d).normalized(),
            format!("docker.io/library/debian@{d}")
        );
    }

    #[test]
    fn invalid_references_are_refused() {
        let hex64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a";
        let cases: Vec<String> = [
            "",
            ":justtag",
            "@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "repo@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "validname@invaliddigest:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "Uppercase:tag",
            "docker.io/docker/Docker",
            "docker///docker",
            "aa/asdf$$^/aa",
            "foo_bar.com:8080/app",
            "-foo/bar",
            "foo/-bar",
            "a___b",
            "a.-b",
            "a/",
            "/a",
            "debian:",
            "debian:.x",
            "debian:-x",
            "debian:a/b",
            "foo.com:port/bar",
            "[::1/app",
            "[zz]:5000/app",
            "debian:1 2",
            "debian::1",
            "a:b:c",
            hex64,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("a:{}", "t".repeat(129)), format!("{}/a", "h".repeat(256))])
        .collect();
        for input in &cases {
            if let Ok(r) = parse(input) {
                panic!("{input:?} should be invalid, parsed as {r}");
            }
        }
        assert_eq!(
            parse("Uppercase:tag").expect_err("invalid"),
            "the repository name must be lowercase"
        );
        assert!(
            parse(&format!("team/{hex64}")).is_ok(),
            "only a bare hex name reads as an id"
        );
    }
}
