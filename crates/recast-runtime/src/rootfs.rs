//! Unpacking an image once into a shared, read-only root filesystem.
//!
//! `<data-dir>/rootfs/<manifest hex>/` holds the image's files; every layer is read through the
//! store's verifying reader, so a corrupted blob fails the unpack and nothing is used. The
//! directory appears (by rename) only once complete. Instances never write to it: each gets an
//! overlay whose lower layer it is.

use crate::{Error, Result};
use recast_image::oci::{self, Manifest};
use recast_image::{Digest, Store};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Mount points every instance needs; created at unpack so no instance has to.
const MOUNT_POINTS: &[&str] = &["proc", "dev", "sys", "tmp"];

/// The unpacked root filesystem of the image `digest`, unpacking it if needed.
pub fn ensure(store: &Store, data_dir: &Path, digest: &Digest, name: &str) -> Result<PathBuf> {
    let dir = data_dir.join("rootfs").join(digest.hex());
    // One unpack (or check) at a time in this process: instances of a release start in parallel.
    static UNPACK: Mutex<()> = Mutex::new(());
    let _one = UNPACK.lock().unwrap_or_else(|p| p.into_inner());
    if dir.join(".recast-unpacked").exists() {
        // Never start from a tampered copy: check it against the image's file index (metadata
        // first; anything touched since the unpack is hashed) and unpack again if it drifted.
        let index = recast_image::file_index(store, digest, name)?;
        let trusted = fs::metadata(dir.join(".recast-unpacked"))
            .and_then(|m| m.modified())
            .ok();
        let exclude: Vec<String> = MOUNT_POINTS.iter().map(|m| format!("/{m}")).collect();
        match recast_guard::scan(
            &dir.join("fs"),
            &index,
            &exclude,
            recast_guard::Mode::Metadata,
            trusted,
        ) {
            Ok((findings, _)) if findings.is_empty() => return Ok(dir.join("fs")),
            _ => {
                let stale = data_dir.join("rootfs").join(format!(
                    ".{}.stale{}",
                    digest.hex(),
                    std::process::id()
                ));
                fs::rename(&dir, &stale).map_err(|e| {
                    Error::io(format!("setting aside the drifted copy of image {name}"), e)
                })?;
                let _ = fs::remove_dir_all(&stale);
            }
        }
    }
    let of = format!("image {name}");
    let manifest: Manifest = store.manifest(digest, &of)?;
    let tmp = data_dir
        .join("rootfs")
        .join(format!(".{}.tmp{}", digest.hex(), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let result = (|| {
        let root = tmp.join("fs");
        fs::create_dir_all(&root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        for (i, l) in manifest.layers.iter().enumerate() {
            let r = store.open_blob(&l.digest, &of)?;
            let r: Box<dyn Read> = if oci::is_gzip_layer(&l.media_type) {
                Box::new(flate2::read::GzDecoder::new(r))
            } else {
                Box::new(r)
            };
            if let Err(e) = apply_layer(r, &root) {
                // A corrupted blob can break the tar before its digest is checked: say which.
                store.read_blob(&l.digest, &of)?;
                return Err(Error::msg(format!(
                    "unpacking layer {} ({}) of {of}: {e}",
                    i + 1,
                    l.digest
                )));
            }
        }
        for m in MOUNT_POINTS {
            let p = root.join(m);
            if !p.exists() {
                fs::create_dir(&p)
                    .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
                // runc gives a tmpfs the mode of the directory it covers: /tmp must be 1777.
                let mode = if *m == "tmp" { 0o1777 } else { 0o755 };
                fs::set_permissions(&p, fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io(format!("setting the mode of {}", p.display()), e))?;
            }
        }
        fs::write(tmp.join(".recast-unpacked"), digest.as_str())
            .map_err(|e| Error::io("marking the unpacked image".into(), e))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Another process unpacked it at the same time: use theirs.
        Err(_) if dir.join(".recast-unpacked").exists() => {
            let _ = fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            return Err(Error::io(
                format!("moving the unpacked image into {}", dir.display()),
                e,
            ));
        }
    }
    Ok(dir.join("fs"))
}

/// Apply one layer tar to `root`, with OCI whiteouts; owners and modes as the tar says.
fn apply_layer(r: impl Read, root: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(r);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = root.join(path.parent().unwrap_or(Path::new("")));
        if name == ".wh..wh..opq" {
            if let Ok(children) = fs::read_dir(&parent) {
                for c in children.flatten() {
                    remove(&c.path())?;
                }
            }
            continue;
        }
        if let Some(victim) = name.strip_prefix(".wh.") {
            remove(&parent.join(victim))?;
            continue;
        }
        // `unpack_in` refuses paths that escape `root`.
        entry.unpack_in(root)?;
    }
    // Drain the stream so the verifying reader checks the digest.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink())?;
    Ok(())
}

fn remove(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(_) => Ok(()),
    }
}
