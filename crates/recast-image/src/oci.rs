//! The OCI image format: media types, descriptors, manifests, indexes.
//!
//! Manifests and configs recast writes are canonical JSON: struct fields in a fixed order, maps
//! sorted (serde_json's map is ordered by key), no insignificant whitespace.

use crate::digest::Digest;
use crate::error::{Context, Corrupt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read};

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// recast's per-image file index (see `fileindex.rs`).
pub const FILE_INDEX: &str = "application/vnd.recast.file-index.v1+json";

/// Manifest annotation naming the file index blob.
pub const ANNOTATION_FILE_INDEX: &str = "dev.recast.file-index";
/// Index annotation: the name an image is known by in an OCI layout.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// The file index this manifest names, if any.
    pub fn file_index(&self) -> Option<Digest> {
        self.annotations
            .get(ANNOTATION_FILE_INDEX)
            .and_then(|d| Digest::parse(d))
    }
}

/// An image index (`index.json` of a layout, or a multi-platform list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

impl Default for Index {
    fn default() -> Index {
        Index {
            schema_version: 2,
            media_type: INDEX.to_string(),
            manifests: Vec::new(),
        }
    }
}

/// The platform this machine runs, in OCI terms.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        architecture: architecture.to_string(),
        os: "linux".to_string(),
        variant: None,
    }
}

/// Whether a layer media type is gzip-compressed.
pub fn is_gzip_layer(media_type: &str) -> bool {
    media_type.ends_with("+gzip") || media_type == DOCKER_LAYER_GZIP
}

/// The largest manifest or image index recast reads (containerd's limit).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The largest image config recast reads.
pub const MAX_CONFIG: u64 = 8 << 20;
/// The largest `index.json` of an OCI layout or archive, or `manifest.json` of a docker archive.
pub const MAX_ARCHIVE_INDEX: u64 = 4 << 20;
/// The largest `index.json` of the store itself (it grows with the number of images).
pub const MAX_STORE_INDEX: u64 = 64 << 20;
/// The largest file index blob (about a million entries).
pub const MAX_FILE_INDEX: u64 = 256 << 20;
/// The most recast reads of a registry's error body or token answer.
pub const MAX_ERROR_BODY: u64 = 64 << 10;
/// The largest answer of a token service.
pub const MAX_TOKEN_BODY: u64 = 1 << 20;

/// Read all of `r`, refusing more than `limit` bytes: reading stops at the limit, and the error
/// names `what` and the limit.
pub fn read_capped(r: impl Read, limit: u64, what: &str) -> crate::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .doing(|| format!("reading {what}"))?;
    if buf.len() as u64 > limit {
        return Err(too_large(what, limit));
    }
    Ok(buf)
}

/// The error for something larger than recast accepts.
pub fn too_large(what: &str, limit: u64) -> crate::Error {
    crate::Error::msg(format!(
        "{what} is larger than {}, the most recast accepts",
        human_limit(limit)
    ))
}

fn human_limit(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// Parse JSON of type `T`; when a `digest` field holds no valid digest, the error names the field.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
    kind: &str,
) -> crate::Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        let bad = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| bad_digest(&v, String::new()));
        match bad {
            Some((field, value)) => crate::Error::msg(format!(
                "{what} is not a valid {kind}: field {field} is {value}, not a digest (sha256: followed by 64 lowercase hex digits)"
            )),
            None => crate::Error::msg(format!("{what} is not a valid {kind}: {e}")),
        }
    })
}

/// The first field named `digest` (at any depth) whose value is not a valid digest.
fn bad_digest(v: &serde_json::Value, at: String) -> Option<(String, String)> {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(d) = m.get("digest")
                && d.as_str().and_then(Digest::parse).is_none()
            {
                let field = if at.is_empty() {
                    "digest".to_string()
                } else {
                    format!("{at}.digest")
                };
                let shown: String = d.to_string().chars().take(100).collect();
                return Some((field, shown));
            }
            m.iter().find_map(|(k, v)| {
                let at = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                bad_digest(v, at)
            })
        }
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| bad_digest(v, format!("{at}[{i}]"))),
        _ => None,
    }
}

/// Decompressed output a layer may always reach, whatever its compressed size.
pub const LAYER_FLOOR: u64 = 1 << 30;
/// Beyond the floor, a layer may expand to this many times its compressed size. Real layers
/// compress 2–10:1; only long runs of one byte (a bomb, or a huge zero-filled file) go beyond.
pub const LAYER_RATIO: u64 = 200;
/// Decompressed output no layer may exceed.
pub const LAYER_CAP: u64 = 64 << 30;

/// The most a layer of `compressed_size` bytes may decompress to:
/// `min(64 GiB, max(1 GiB, 200 × compressed_size))`.
pub fn layer_limit(compressed_size: u64) -> u64 {
    LAYER_FLOOR
        .max(compressed_size.saturating_mul(LAYER_RATIO))
        .min(LAYER_CAP)
}

/// What all layers of an image may decompress to together: one floor for the image, not one
/// per layer (many tiny gzip layers must not add up to many floors).
pub fn image_limit(layers: &[Descriptor]) -> u64 {
    let compressed = layers
        .iter()
        .map(|l| l.size)
        .fold(0u64, u64::saturating_add);
    LAYER_FLOOR
        .saturating_add(compressed.saturating_mul(LAYER_RATIO))
        .min(LAYER_CAP)
}

/// `r`, failing with an error naming `what` once the bytes read through every reader sharing
/// `left` exceed what was in it (see [`image_limit`]).
pub fn budgeted<'a>(
    r: impl Read + 'a,
    left: &'a std::cell::Cell<u64>,
    what: &str,
) -> impl Read + 'a {
    struct Budgeted<'a, R> {
        inner: R,
        left: &'a std::cell::Cell<u64>,
        what: String,
    }
    impl<R: Read> Read for Budgeted<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            match self.left.get().checked_sub(n as u64) {
                Some(rest) => {
                    self.left.set(rest);
                    Ok(n)
                }
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} expands beyond what its image may hold (a decompression bomb?)",
                        self.what
                    ),
                )),
            }
        }
    }
    Budgeted {
        inner: r,
        left,
        what: what.to_string(),
    }
}

/// A reader of a layer's tar stream: gzip layers are decompressed, and guarded against
/// decompression bombs. Once the output exceeds [`layer_limit`]`(compressed_size)`, or the
/// compressed input runs past `compressed_size`, the reader fails with an error naming `what`.
/// `compressed_size` is the layer's size as its descriptor states it (the store verifies it).
pub fn layer_reader<'a>(
    r: impl Read + 'a,
    media_type: &str,
    compressed_size: u64,
    what: &str,
) -> Box<dyn Read + 'a> {
    if !is_gzip_layer(media_type) {
        return Box::new(r);
    }
    let what = what.to_string();
    let input = SizedInput {
        inner: r,
        read: 0,
        declared: compressed_size,
        what: what.clone(),
    };
    Box::new(BombGuard {
        inner: flate2::read::MultiGzDecoder::new(input),
        out: 0,
        limit: layer_limit(compressed_size),
        what,
    })
}

/// Fails once more than `declared` bytes came through (0: no declared size).
struct SizedInput<R> {
    inner: R,
    read: u64,
    declared: u64,
    what: String,
}

impl<R: Read> Read for SizedInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.declared > 0 && self.read > self.declared {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Corrupt(format!(
                    "{} is larger than its descriptor says ({} bytes)",
                    self.what, self.declared
                )),
            ));
        }
        Ok(n)
    }
}

/// Fails once the decompressed output exceeds `limit`. Every gzip member is read (as Go's gzip
/// reader does, so layers mean what they mean to docker and containerd), and at the end the
/// input is read to its end, so that a verifying reader underneath checks the digest.
struct BombGuard<R> {
    inner: flate2::read::MultiGzDecoder<SizedInput<R>>,
    out: u64,
    limit: u64,
    what: String,
}

impl<R: Read> Read for BombGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.out >= self.limit {
            // Never hand out more than the limit: check whether anything is left first.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? != 0 {
                return Err(self.too_big());
            }
            io::copy(self.inner.get_mut(), &mut io::sink())?;
            return Ok(0);
        }
        let room = usize::try_from(self.limit - self.out).unwrap_or(usize::MAX);
        let len = buf.len().min(room);
        let n = self.inner.read(&mut buf[..len])?;
        if n == 0 {
            io::copy(self.inner.get_mut(), &mut io::sink())?;
        }
        self.out += n as u64;
        Ok(n)
    }
}

impl<R> BombGuard<R> {
    fn too_big(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            Corrupt(format!(
                "{} decompresses to more than {} bytes (limit: max(1 GiB, {}× its compressed size), at most 64 GiB): refusing a possible decompression bomb",
                self.what, self.limit, LAYER_RATIO
            )),
        )
    }
}

/// Canonical JSON bytes of a value.
pub fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain data to a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// RFC 3339 UTC time for seconds since the epoch (no external time crate needed).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn layers_of_an_image_share_one_decompression_budget() {
        let layers: Vec<Descriptor> = (0..3)
            .map(|i| Descriptor::new(LAYER_TAR_GZIP, Digest::of(&[i]), 1000))
            .collect();
        assert_eq!(image_limit(&layers), LAYER_FLOOR + 3000 * LAYER_RATIO);
        let left = std::cell::Cell::new(10);
        let mut out = Vec::new();
        budgeted(&b"123456"[..], &left, "layer 1")
            .read_to_end(&mut out)
            .expect("fits");
        let e = budgeted(&b"123456"[..], &left, "layer 2")
            .read_to_end(&mut out)
            .expect_err("the second layer passes the image's budget");
        assert!(e.to_string().contains("layer 2 expands beyond"), "{e}");
    }

    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    /// A gzip stream of `chunks` × 16 MiB of zeros (about 1000:1), built in milliseconds: after
    /// a full flush the compressor starts over, so every chunk compresses to the same bytes.
    fn zero_bomb(chunks: usize) -> Vec<u8> {
        let zeros = vec![0u8; 16 << 20];
        let deflate = |flush| {
            let mut c = flate2::Compress::new(flate2::Compression::best(), false);
            let mut out = Vec::with_capacity(64 << 10);
            c.compress_vec(&zeros, &mut out, flush).expect("compress");
            out
        };
        let chunk = deflate(flate2::FlushCompress::Full);
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        for _ in 0..chunks {
            out.extend_from_slice(&chunk);
        }
        out
    }

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).expect("tar");
        }
        b.into_inner().expect("tar")
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn a_gzip_bomb_is_refused_early() {
        // 256 chunks = 4 GiB of zeros in about 4 MB.
        let bomb = zero_bomb(256);
        assert!(bomb.len() < 8 << 20, "bomb is {} bytes", bomb.len());
        let start = Instant::now();
        let mut r = layer_reader(
            &bomb[..],
            LAYER_TAR_GZIP,
            bomb.len() as u64,
            "layer sha256:bomb",
        );
        let mut out = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        let err = loop {
            match r.read(&mut buf) {
                Ok(0) => panic!("the bomb was read to its end ({out} bytes)"),
                Ok(n) => out += n as u64,
                Err(e) => break e,
            }
        };
        assert!(
            out <= layer_limit(bomb.len() as u64),
            "{out} bytes came out"
        );
        assert_eq!(layer_limit(bomb.len() as u64), 1 << 30);
        let msg = err.to_string();
        assert!(
            msg.contains("layer sha256:bomb") && msg.contains("decompression bomb"),
            "{msg}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn real_layers_pass_and_the_blob_is_read_to_its_end() {
        let mut data = Vec::new();
        for i in 0..200_000u32 {
            data.extend_from_slice(format!("line {i} of a text file\n").as_bytes());
        }
        let tar = tar_of(&[("etc/a", data.clone()), ("zeros", vec![0; 8 << 20])]);
        // Two gzip members, as concatenating compressors write: both are read (as Go's gzip
        // reader does), to the end of the blob (so a verifying reader sees its end).
        let half = tar.len() / 2;
        let mut gz = gzip(&tar[..half]);
        gz.extend_from_slice(&gzip(&tar[half..]));
        let size = gz.len() as u64;
        struct Counting<'a>(&'a [u8], usize);
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1 += n;
                Ok(n)
            }
        }
        let mut src = Counting(&gz, 0);
        let mut out = Vec::new();
        layer_reader(&mut src, LAYER_TAR_GZIP, size, "layer x")
            .read_to_end(&mut out)
            .expect("a real layer decompresses");
        assert_eq!(out, tar);
        assert_eq!(src.1, gz.len());
        // An uncompressed layer passes through.
        let mut out = Vec::new();
        layer_reader(&tar[..], LAYER_TAR, tar.len() as u64, "layer y")
            .read_to_end(&mut out)
            .expect("read");
        assert_eq!(out, tar);
        // A compressed layer longer than its descriptor says is refused.
        let err = layer_reader(&gz[..], LAYER_TAR_GZIP, size / 2, "layer z")
            .read_to_end(&mut Vec::new())
            .expect_err("larger than declared");
        assert!(
            err.to_string()
                .contains("layer z is larger than its descriptor says"),
            "{err}"
        );
    }

    #[test]
    fn the_limit_follows_the_compressed_size() {
        assert_eq!(layer_limit(0), 1 << 30);
        assert_eq!(layer_limit(10 << 20), 2000 << 20);
        assert_eq!(layer_limit(1 << 40), 64 << 30);
    }

    #[test]
    fn capped_reads_stop_at_the_limit() {
        let endless = io::repeat(b'x');
        let err = read_capped(endless, 4 << 20, "manifest m").expect_err("too large");
        assert_eq!(
            err.to_string(),
            "manifest m is larger than 4 MiB, the most recast accepts"
        );
        assert_eq!(read_capped(&b"{}"[..], 2, "m").expect("fits"), b"{}");
    }

    #[test]
    fn invalid_digests_are_named_by_field() {
        let hex = "a".repeat(64);
        for (bad, field) in [
            ("sha256:../../etc/passwd", "layers[1].digest"),
            (
                &format!("sha256:{}", hex.to_uppercase()),
                "layers[1].digest",
            ),
            ("sha256:abc", "layers[1].digest"),
        ] {
            let m = format!(
                r#"{{"schemaVersion":2,"config":{{"mediaType":"{CONFIG}","digest":"sha256:{hex}","size":1}},"layers":[{{"mediaType":"{LAYER_TAR}","digest":"sha256:{hex}","size":1}},{{"mediaType":"{LAYER_TAR}","digest":"{bad}","size":1}}]}}"#
            );
            let err = parse_json::<Manifest>(m.as_bytes(), "manifest M", "OCI manifest")
                .expect_err("invalid");
            let msg = err.to_string();
            assert!(
                msg.starts_with("manifest M is not a valid OCI manifest: field ")
                    && msg.contains(field)
                    && msg.contains(bad),
                "{msg}"
            );
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_790_000_000), "2026-09-21T14:13:20Z");
    }
}
