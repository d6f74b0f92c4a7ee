//! The data directory's keyring for secrets: the key in `<data-dir>/secrets.key`
//! ([`DataDir::secrets_key`]) seals secret values for the state store and digests them.
//!
//! The file holds 32 random bytes `K` as 64 lowercase hex digits (mode 0600, owned by the
//! server's user). Two keys are derived from it with HMAC-SHA256: the digest key
//! (`"recast secret digest v1"`), which makes the keyed digest that tells a changed secret, and
//! the seal key (`"recast secret seal v1"`), a ChaCha20-Poly1305 key whose associated data is the
//! secret's name, so a sealed value cannot be moved to another name. The key's public id
//! (`key-` + 12 hex digits of an HMAC of a fixed label) is written in every sealed value, so a
//! value sealed on another host is told apart from one tampered with.
//!
//! Nothing here prints a value or the key: errors name the secret and the file.

use recast_api::DataDir;
use ring::{aead, hmac, rand};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The label of the digest key, HMAC'd with the file's key.
const DIGEST_LABEL: &[u8] = b"recast secret digest v1";
/// The label of the seal key.
const SEAL_LABEL: &[u8] = b"recast secret seal v1";
/// The label whose HMAC names the key in public.
const ID_LABEL: &[u8] = b"recast secret key id v1";
/// What a sealed value starts with: its format.
const VERSION: &str = "v1";
/// The most of the key file that is read.
const READ_LIMIT: u64 = 4096;
/// How long a reader waits for a key file another process has just created to be written whole.
const CREATING_WAIT: Duration = Duration::from_secs(1);
const NONCE_LEN: usize = aead::NONCE_LEN;

/// The data directory's key for secrets: 32 random bytes, hex, in `<data-dir>/secrets.key`
/// (mode 0600).
pub struct Keyring {
    /// Keys the digests of secret values.
    mac: hmac::Key,
    /// Seals values (ChaCha20-Poly1305).
    aead: aead::LessSafeKey,
    /// `key-` + 12 hex digits: names the key without revealing it.
    id: String,
    /// The key file, for errors.
    path: PathBuf,
    rng: rand::SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Open the key file of `dir`, creating it when missing (`O_CREAT|O_EXCL`, mode 0600,
    /// written then fsynced). Processes creating it at once all end up with the one that was
    /// created first. Refused, with an error naming the file and what to do: a symlink or not a
    /// regular file, readable or writable by group or others, not owned by the current user, or
    /// content that is not 64 lowercase hex digits (and an optional newline).
    pub fn open(dir: &DataDir) -> Result<Keyring, String> {
        let path = dir.secrets_key();
        let key = match read_key(&path)? {
            Some(key) => key,
            None => match create_key(&path)? {
                Some(key) => key,
                // Another process created it first: use its key.
                None => read_key(&path)?.ok_or_else(|| {
                    format!(
                        "secrets key {}: it was created by another process and then removed; \
                         start again",
                        path.display()
                    )
                })?,
            },
        };
        Ok(Keyring::from_key(&key, path))
    }

    /// The keyring of key `k`, read from `path`.
    fn from_key(k: &[u8; 32], path: PathBuf) -> Keyring {
        let root = hmac::Key::new(hmac::HMAC_SHA256, k);
        let mac = hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&root, DIGEST_LABEL).as_ref());
        let seal = hmac::sign(&root, SEAL_LABEL);
        let aead = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::CHACHA20_POLY1305, seal.as_ref())
                .expect("an HMAC-SHA256 tag is a ChaCha20-Poly1305 key (32 bytes)"),
        );
        let id = format!("key-{}", &hex(hmac::sign(&root, ID_LABEL).as_ref())[..12]);
        Keyring {
            mac,
            aead,
            id,
            path,
            rng: rand::SystemRandom::new(),
        }
    }

    /// Short public id of the key: `key-` + the first 12 hex digits of an HMAC of a fixed label
    /// (it does not reveal the key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Keyed digest of a secret value, stored in state to tell a changed secret:
    /// `hmac-sha256:` + hex(HMAC-SHA256(digest key, name || 0x00 || value)). The same key, name
    /// and value give the same digest; it never reveals the value.
    pub fn digest(&self, name: &str, value: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.mac);
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(value);
        format!("hmac-sha256:{}", hex(ctx.sign().as_ref()))
    }

    /// Encrypt for storage: `v1:` + id + `:` + hex(nonce (12 random bytes) || ciphertext and
    /// tag), ChaCha20-Poly1305 with the secret's name as associated data (a sealed value cannot
    /// be moved to another name).
    pub fn seal(&self, name: &str, value: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::SecureRandom::fill(&self.rng, &mut nonce)
            .expect("the system's random source (getrandom) gives bytes");
        let mut out = Vec::with_capacity(NONCE_LEN + value.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(value);
        let mut body = out.split_off(NONCE_LEN);
        self.aead
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(name.as_bytes()),
                &mut body,
            )
            .expect("ChaCha20-Poly1305 seals any value smaller than 256 GiB");
        out.extend_from_slice(&body);
        format!("{VERSION}:{}:{}", self.id, hex(&out))
    }

    /// Decrypt a value [`Keyring::seal`] made for `name`. Errors name the secret, never a value:
    /// sealed under another key (with both key ids and the file to copy), malformed, or failed
    /// authentication (tampered with, or sealed for another name).
    pub fn open_sealed(&self, name: &str, sealed: &str) -> Result<Vec<u8>, String> {
        let malformed = |why: &str| {
            format!(
                "secret {name:?}: its sealed value is malformed ({why}; expected \
                 `{VERSION}:<key id>:<hex>`)"
            )
        };
        let mut parts = sealed.splitn(3, ':');
        let (Some(version), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not three fields"));
        };
        if version != VERSION {
            return Err(malformed("an unknown version"));
        }
        if id != self.id {
            let path = self.path.display();
            return Err(format!(
                "secret {name:?} was sealed under key {id:?}, but this server's key ({path}) is \
                 {:?}: every host that runs this project needs the same secrets.key: copy {path} \
                 from the host that sealed it",
                self.id
            ));
        }
        let bytes = unhex(body).ok_or_else(|| malformed("not lowercase hex"))?;
        if bytes.len() < NONCE_LEN + aead::CHACHA20_POLY1305.tag_len() {
            return Err(malformed("too short"));
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce =
            aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| malformed("a bad nonce"))?;
        let mut rest = rest.to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, aead::Aad::from(name.as_bytes()), &mut rest)
            .map_err(|_| {
                format!(
                    "secret {name:?} cannot be opened with key {:?}: it was tampered with or \
                     sealed for another name",
                    self.id
                )
            })?;
        let len = plain.len();
        rest.truncate(len);
        Ok(rest)
    }
}

/// The key in `path`, `None` when there is no such file.
fn read_key(path: &Path) -> Result<Option<[u8; 32]>, String> {
    let deadline = Instant::now() + CREATING_WAIT;
    loop {
        let file = match rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => {
                return Err(format!(
                    "secrets key {} is a symlink: it must be a regular file; put the key file \
                     itself there",
                    path.display()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "cannot open secrets key {}: {}",
                    path.display(),
                    std::io::Error::from(e)
                ));
            }
        };
        check_file(path, &file)?;
        let mut content = Vec::new();
        file.take(READ_LIMIT)
            .read_to_end(&mut content)
            .map_err(|e| format!("cannot read secrets key {}: {e}", path.display()))?;
        if let Some(key) = parse_key(&content) {
            return Ok(Some(key));
        }
        // Another process may have created the file and not yet written it: a start of hex
        // digits is waited for, briefly.
        let partial = content.len() < 64 && content.iter().all(|b| is_hex_digit(*b));
        if !partial || Instant::now() >= deadline {
            return Err(format!(
                "secrets key {} does not hold a key (64 lowercase hex digits): restore it from a \
                 backup or copy it from another host that runs this project; remove it only if \
                 no secret was ever sealed with it (a new key is then made)",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Refuse a key file anyone but its owner may read or change, or that is not ours.
fn check_file(path: &Path, file: &File) -> Result<(), String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat secrets key {}: {e}", path.display()))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(format!(
            "secrets key {} is {kind}, not a regular file: move it away and put the key file \
             there",
            path.display()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "secrets key {} has mode {mode:04o}: group and others may read or change it; run \
             `chmod 600 {}` (and consider the key exposed if others could read it)",
            path.display(),
            path.display()
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "secrets key {} is owned by uid {}, not by this server's user (uid {me}): run \
             `chown {me} {}`",
            path.display(),
            meta.uid(),
            path.display()
        ));
    }
    Ok(())
}

/// Create the key file with a new key; `None` when another process created it first.
fn create_key(path: &Path) -> Result<Option<[u8; 32]>, String> {
    let fd = match rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => fd,
        Err(Errno::EXIST) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot create secrets key {}: {}",
                path.display(),
                std::io::Error::from(e)
            ));
        }
    };
    let mut key = [0u8; 32];
    let written = rand::SecureRandom::fill(&rand::SystemRandom::new(), &mut key)
        .map_err(|_| "the system's random source (getrandom) failed".to_string())
        .and_then(|()| {
            // The umask only takes bits away: make it exactly 0600.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600))
                .map_err(|e| std::io::Error::from(e).to_string())?;
            let mut file = File::from(fd);
            file.write_all(format!("{}\n", hex(&key)).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        // Ours, and never whole: nobody can have used it.
        let _ = std::fs::remove_file(path);
        return Err(format!("cannot write secrets key {}: {e}", path.display()));
    }
    // The name is durable too.
    if let Some(parent) = path.parent()
        && let Ok(d) = File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(Some(key))
}

/// 64 lowercase hex digits and an optional newline.
fn parse_key(content: &[u8]) -> Option<[u8; 32]> {
    let digits = content.strip_suffix(b"\n").unwrap_or(content);
    let bytes = unhex(std::str::from_utf8(digits).ok()?)?;
    bytes.try_into().ok()
}

fn is_hex_digit(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'f')
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// The bytes of lowercase hex `s`.
fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) || !s.iter().all(|b| is_hex_digit(*b)) {
        return None;
    }
    let val = |b: u8| if b <= b'9' { b - b'0' } else { b - b'a' + 10 };
    Some(s.chunks(2).map(|p| val(p[0]) << 4 | val(p[1])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const MARKER: &str = "s3cr3t-MARKER";

    fn tmp() -> (tempfile::TempDir, DataDir) {
        let t = tempfile::tempdir().expect("a temporary directory");
        let d = DataDir::new(t.path());
        (t, d)
    }

    fn keyring(d: &DataDir) -> Keyring {
        Keyring::open(d).expect("the keyring opens")
    }

    #[test]
    fn sealed_create_then_reopen_is_the_same_key() {
        let (_t, d) = tmp();
        assert!(!d.secrets_key().exists());
        let a = keyring(&d);
        let content = std::fs::read_to_string(d.secrets_key()).expect("the key file");
        assert_eq!(content.len(), 65, "64 hex digits and a newline");
        assert!(parse_key(content.as_bytes()).is_some());
        let b = keyring(&d);
        assert_eq!(a.id(), b.id());
        assert!(
            a.id().starts_with("key-") && a.id().len() == 16,
            "{}",
            a.id()
        );
        assert_eq!(a.digest("db_password", b"x"), b.digest("db_password", b"x"));
        let sealed = a.seal("db_password", MARKER.as_bytes());
        assert_eq!(
            b.open_sealed("db_password", &sealed).expect("opens"),
            MARKER.as_bytes()
        );
        // The key does not show in Debug, nor its id reveal it.
        let dbg = format!("{a:?}");
        assert!(dbg.contains(a.id()), "{dbg}");
        assert!(!dbg.contains(&content[..16]), "{dbg}");
        assert!(!content.contains(&a.id()["key-".len()..]));
    }

    #[test]
    fn sealed_keys_of_two_directories_differ() {
        let (_t1, d1) = tmp();
        let (_t2, d2) = tmp();
        let (a, b) = (keyring(&d1), keyring(&d2));
        assert_ne!(a.id(), b.id());
        assert_ne!(a.digest("api", b"v"), b.digest("api", b"v"));
    }

    #[test]
    fn sealed_round_trip_and_fresh_nonces() {
        let (_t, d) = tmp();
        let k = keyring(&d);
        for value in [&b""[..], b"x", MARKER.as_bytes(), &[0u8, 255, 10, 13][..]] {
            let s = k.seal("token", value);
            assert!(s.starts_with(&format!("v1:{}:", k.id())), "{s}");
            assert_eq!(k.open_sealed("token", &s).expect("opens"), value);
        }
        assert_ne!(k.seal("token", b"same"), k.seal("token", b"same"));
    }

    #[test]
    fn sealed_under_another_key_names_both_ids() {
        let (_t1, d1) = tmp();
        let (_t2, d2) = tmp();
        let (a, b) = (keyring(&d1), keyring(&d2));
        let s = a.seal("db_password", MARKER.as_bytes());
        let e = b.open_sealed("db_password", &s).expect_err("another key");
        assert!(e.contains(a.id()) && e.contains(b.id()), "{e}");
        assert!(e.contains("db_password"), "{e}");
        assert!(e.contains("same secrets.key"), "{e}");
        assert!(e.contains(&d2.secrets_key().display().to_string()), "{e}");
        assert!(!e.contains(MARKER), "{e}");
    }

    #[test]
    fn sealed_tampered_value_fails() {
        let (_t, d) = tmp();
        let k = keyring(&d);
        let s = k.seal("db_password", MARKER.as_bytes());
        let prefix = format!("v1:{}:", k.id()).len();
        // Flip every position of the body in turn: nonce, ciphertext, tag.
        for i in prefix..s.len() {
            let mut t = s.clone().into_bytes();
            t[i] = if t[i] == b'0' { b'1' } else { b'0' };
            let t = String::from_utf8(t).expect("hex");
            let e = k.open_sealed("db_password", &t).expect_err("tampered");
            assert!(e.contains("tampered with"), "{e}");
            assert!(e.contains("db_password") && !e.contains(MARKER), "{e}");
        }
    }

    #[test]
    fn sealed_for_one_name_does_not_open_as_another() {
        let (_t, d) = tmp();
        let k = keyring(&d);
        let s = k.seal("a", MARKER.as_bytes());
        let e = k.open_sealed("b", &s).expect_err("another name");
        assert!(
            e.contains("sealed for another name") && e.contains("\"b\""),
            "{e}"
        );
    }

    #[test]
    fn sealed_malformed_values_fail_naming_the_secret() {
        let (_t, d) = tmp();
        let k = keyring(&d);
        let id = k.id().to_string();
        for bad in [
            String::new(),
            "v1".into(),
            format!("v2:{id}:00"),
            format!("v1:{id}:zz"),
            format!("v1:{id}:abc"),
            format!("v1:{id}:00ff"),
        ] {
            let e = k.open_sealed("api", &bad).expect_err("malformed");
            assert!(
                e.contains("\"api\"") && e.contains("malformed"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn sealed_digest_is_stable_and_keyed_by_name_and_value() {
        let (_t, d) = tmp();
        let k = keyring(&d);
        let x = k.digest("a", b"v");
        assert!(x.starts_with("hmac-sha256:") && x.len() == 12 + 64, "{x}");
        assert_eq!(x, k.digest("a", b"v"));
        assert_ne!(x, k.digest("b", b"v"));
        assert_ne!(x, k.digest("a", b"w"));
        // The name and value are kept apart.
        assert_ne!(k.digest("ab", b"c"), k.digest("a", b"bc"));
    }

    #[test]
    fn sealed_texts_do_not_hold_the_value() {
        let (_t, d) = tmp();
        let k = keyring(&d);
        let hex_marker = hex(MARKER.as_bytes());
        for s in [
            k.seal("db_password", MARKER.as_bytes()),
            k.digest("db_password", MARKER.as_bytes()),
        ] {
            assert!(!s.contains(MARKER) && !s.contains(&hex_marker), "{s}");
        }
    }

    #[test]
    fn sealed_key_file_is_created_0600() {
        let (_t, d) = tmp();
        keyring(&d);
        let meta = std::fs::symlink_metadata(d.secrets_key()).expect("the key file");
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    }

    #[test]
    fn sealed_key_file_readable_by_others_is_refused() {
        let (_t, d) = tmp();
        let id = keyring(&d).id().to_string();
        let path = d.secrets_key();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Keyring::open(&d).expect_err("0644 is refused");
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        // The fix the error gives works, and the key is the same.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(keyring(&d).id(), id);
    }

    #[test]
    fn sealed_key_file_of_another_user_is_refused() {
        let (_t, d) = tmp();
        keyring(&d);
        let path = d.secrets_key();
        // Tests run as root, which may give the file away.
        std::os::unix::fs::chown(&path, Some(65534), None).expect("chown (tests run as root)");
        let e = Keyring::open(&d).expect_err("another owner is refused");
        assert!(e.contains("uid 65534") && e.contains("chown"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn sealed_symlinked_key_file_is_refused() {
        let (_t, d) = tmp();
        let (_t2, other) = tmp();
        keyring(&other);
        std::os::unix::fs::symlink(other.secrets_key(), d.secrets_key()).expect("symlink");
        let e = Keyring::open(&d).expect_err("a symlink is refused");
        assert!(e.contains("symlink"), "{e}");
        assert!(e.contains(&d.secrets_key().display().to_string()), "{e}");
        // A dangling one is not followed to create a file elsewhere either.
        let (_t3, d3) = tmp();
        let target = d3.root().join("elsewhere");
        std::os::unix::fs::symlink(&target, d3.secrets_key()).expect("symlink");
        Keyring::open(&d3).expect_err("a dangling symlink is refused");
        assert!(!target.exists(), "nothing was created through the symlink");
    }

    #[test]
    fn sealed_key_path_that_is_a_directory_is_refused() {
        let (_t, d) = tmp();
        std::fs::create_dir(d.secrets_key()).expect("mkdir");
        let e = Keyring::open(&d).expect_err("a directory is refused");
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn sealed_key_file_with_bad_content_is_refused() {
        let good = "0123456789abcdef".repeat(4);
        for bad in [
            "zz".to_string(),
            "0123456789ABCDEF".repeat(4),
            format!("{good}00"),
            format!("{good}\n\n"),
            format!(" {good}"),
            "x".repeat(10_000),
            // A start of a key, which a creator might still be writing: waited for, then refused.
            good[..20].to_string(),
            String::new(),
        ] {
            let (_t, d) = tmp();
            let path = d.secrets_key();
            std::fs::write(&path, &bad).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            let e = Keyring::open(&d).expect_err("bad content is refused");
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains("64 lowercase hex digits"), "{e}");
            assert!(
                bad.len() < 4 || !e.contains(&bad),
                "the content is not shown: {e}"
            );
            assert_eq!(
                std::fs::read_to_string(&path).expect("read"),
                bad,
                "left as it was"
            );
        }
        // Without the newline is fine.
        let (_t, d) = tmp();
        std::fs::write(d.secrets_key(), &good).expect("write");
        std::fs::set_permissions(d.secrets_key(), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        keyring(&d);
    }

    #[test]
    fn sealed_concurrent_creators_agree_on_one_key() {
        for _ in 0..20 {
            let (_t, d) = tmp();
            let barrier = std::sync::Barrier::new(4);
            let ids: Vec<String> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            let k = keyring(&d);
                            (k.id().to_string(), k.digest("n", b"v"))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        let (id, digest) = h.join().expect("the thread ends");
                        format!("{id} {digest}")
                    })
                    .collect()
            });
            assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
            assert_eq!(keyring(&d).id(), ids[0].split(' ').next().expect("an id"));
        }
    }
}
