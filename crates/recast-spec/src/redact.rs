//! Credentials in URLs (webhooks): redacted wherever a URL is shown or stored.
//!
//! `https://user:pass@host/path?api_key=k&channel=x` is shown as
//! `https://***@host/path?api_key=***&channel=x`: the whole user information, and the value of
//! every query (or fragment) parameter whose name looks like a credential.

/// Parameter names that carry credentials: a name containing any of these (case-insensitive).
const SECRET_PARAMS: &[&str] = &[
    "key", "token", "secret", "pass", "pwd", "sig", "auth", "cred", "session", "jwt",
];

/// Secrets shorter than this are not searched for in free text by [`redact_in`] (a one-letter
/// "secret" would blank out every word containing that letter).
const MIN_SECRET: usize = 4;

fn is_secret_param(name: &str) -> bool {
    let name = percent_decode(name).to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

/// The parts of a URL: `scheme://`, user information, the rest of the authority and path, the
/// query (without `?`) and the fragment (without `#`).
struct Parts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    host_path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

fn split(url: &str) -> Parts<'_> {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let auth_end = rest.find(['/', '\\']).unwrap_or(rest.len());
    let (userinfo, host_path) = match rest[..auth_end].rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    Parts {
        scheme,
        userinfo,
        host_path,
        query,
        fragment,
    }
}

/// `name=value` pairs of a query or fragment, with whether the value is a credential.
fn params(q: &str) -> impl Iterator<Item = (&str, Option<&str>, bool)> {
    q.split(['&', ';']).map(|kv| match kv.split_once('=') {
        Some((k, v)) => (k, Some(v), is_secret_param(k)),
        None => (kv, None, false),
    })
}

fn redact_params(q: &str) -> String {
    let mut out = String::new();
    for piece in q.split_inclusive(['&', ';']) {
        let (kv, sep) = match piece.strip_suffix(['&', ';']) {
            Some(kv) => (kv, &piece[kv.len()..]),
            None => (piece, ""),
        };
        match kv.split_once('=') {
            Some((k, v)) if is_secret_param(k) && !v.is_empty() => {
                out.push_str(k);
                out.push_str("=***");
            }
            _ => out.push_str(kv),
        }
        out.push_str(sep);
    }
    out
}

/// `url` with its credentials replaced by `***`: the user information (`user:pass@`) and the
/// values of query and fragment parameters named like credentials (`api_key`, `token`, `key`,
/// `secret`, `password`, `sig`, `auth`, …). Anything that is not a well-formed URL is redacted
/// as far as it can be read as one.
pub fn redact_url(url: &str) -> String {
    let p = split(url);
    let mut out = String::from(p.scheme);
    if p.userinfo.is_some() {
        out.push_str("***@");
    }
    out.push_str(p.host_path);
    if let Some(q) = p.query {
        out.push('?');
        out.push_str(&redact_params(q));
    }
    if let Some(f) = p.fragment {
        out.push('#');
        out.push_str(&redact_params(f));
    }
    out
}

/// `text` (an error message, a log line) with every appearance of `url` redacted, and every
/// credential of `url` (user information, password, credential parameter values, also
/// percent-decoded) replaced by `***` wherever else it appears.
pub fn redact_in(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    let p = split(url);
    let mut secrets: Vec<String> = Vec::new();
    if let Some(u) = p.userinfo {
        secrets.push(u.to_string());
        if let Some((_, pass)) = u.split_once(':') {
            secrets.push(pass.to_string());
        }
    }
    for q in [p.query, p.fragment].into_iter().flatten() {
        for (_, v, secret) in params(q) {
            if let (Some(v), true) = (v, secret) {
                secrets.push(v.to_string());
            }
        }
    }
    let decoded: Vec<String> = secrets.iter().map(|s| percent_decode(s)).collect();
    secrets.extend(decoded);
    secrets.retain(|s| s.chars().count() >= MIN_SECRET);
    // Longest first, so that a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets {
        out = out.replace(&s, "***");
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_information_and_credential_parameters_are_redacted() {
        assert_eq!(
            redact_url("https://user:pass@host.example/path?api_key=k1&channel=ops"),
            "https://***@host.example/path?api_key=***&channel=ops"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:9/hook?token=t&key=k;secret=s&password=p&sig=x#frag"),
            "http://127.0.0.1:9/hook?token=***&key=***;secret=***&password=***&sig=***#frag"
        );
        assert_eq!(
            redact_url("https://h/x?X-Amz-Signature=abc&Signature=d&access_token=e&authToken=f"),
            "https://h/x?X-Amz-Signature=***&Signature=***&access_token=***&authToken=***"
        );
        // Only user information: a user without password is still hidden.
        assert_eq!(redact_url("https://alice@h/x"), "https://***@h/x");
        // An '@' inside the password: the last '@' of the authority ends it.
        assert_eq!(redact_url("https://u:p@ss@h:8443/"), "https://***@h:8443/");
        // Fragments carrying tokens.
        assert_eq!(
            redact_url("https://h/cb#access_token=abc&state=1"),
            "https://h/cb#access_token=***&state=1"
        );
    }

    #[test]
    fn urls_without_credentials_are_unchanged() {
        for u in [
            "https://hooks.example.com/deploy",
            "http://127.0.0.1:8080/x?channel=ops&n=1",
            "https://h/users/@me",
            "http://[::1]:9000/",
            "not a url",
            "",
        ] {
            assert_eq!(redact_url(u), u);
        }
    }

    #[test]
    fn text_mentioning_the_url_or_its_secrets_is_redacted() {
        let url = "http://user:hunter2@127.0.0.1:9/hook?api_key=S3CRET%21";
        let msg = format!(
            "{url} answered 500; connecting as user:hunter2 with S3CRET! and S3CRET%21 failed"
        );
        let r = redact_in(&msg, url);
        assert_eq!(
            r,
            "http://***@127.0.0.1:9/hook?api_key=*** answered 500; connecting as *** with *** and *** failed"
        );
        for s in ["hunter2", "S3CRET"] {
            assert!(!r.contains(s), "{r}");
        }
        // Short values are not searched for in free text, but are still hidden in the URL.
        assert_eq!(
            redact_in("error at http://h/?key=ab: ab", "http://h/?key=ab"),
            "error at http://h/?key=***: ab"
        );
    }
}
