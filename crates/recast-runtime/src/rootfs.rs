//! Unpacking an image once into a shared, read-only root filesystem.
//!
//! `<data-dir>/rootfs/<manifest hex>/` holds the image's files; every layer is read through the
//! store's verifying reader, so a corrupted blob fails the unpack and nothing is used. The
//! directory appears (by rename) only once complete. Instances never write to it: each gets an
//! overlay whose lower layer it is.

use crate::{Error, Result};
use recast_api::DataDir;
use recast_image::oci::{self, Manifest};
use recast_image::{Digest, Store};
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;

/// Mount points every instance needs; created at unpack so no instance has to.
const MOUNT_POINTS: &[&str] = &["proc", "dev", "sys", "tmp"];

/// The unpacked root filesystem of the image `digest`, unpacking it if needed.
pub fn ensure(store: &Store, data_dir: &DataDir, digest: &Digest, name: &str) -> Result<PathBuf> {
    let dir = data_dir.rootfs(digest.hex());
    // One unpack (or check) at a time in this process: instances of a release start in parallel.
    static UNPACK: Mutex<()> = Mutex::new(());
    let _one = UNPACK.lock().unwrap_or_else(|p| p.into_inner());
    let marker = data_dir.rootfs_marker(digest.hex());
    if marker.exists() {
        // Never start from a tampered copy: check it against the image's file index (metadata
        // first; anything touched since the unpack is hashed) and unpack again if it drifted.
        let index = recast_image::file_index(store, digest, name)?;
        let trusted = fs::metadata(&marker).and_then(|m| m.modified()).ok();
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
                let stale = data_dir.rootfs_stale(digest.hex(), std::process::id());
                fs::rename(&dir, &stale).map_err(|e| {
                    Error::io(format!("setting aside the drifted copy of image {name}"), e)
                })?;
                let _ = fs::remove_dir_all(&stale);
            }
        }
    }
    let of = format!("image {name}");
    let manifest: Manifest = store.manifest(digest, &of)?;
    let tmp = data_dir.rootfs_tmp(digest.hex(), std::process::id());
    let _ = fs::remove_dir_all(&tmp);
    let result = (|| {
        let root = tmp.join("fs");
        fs::create_dir_all(&root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let image_root = recast_root::Root::open(&root)
            .map_err(|e| Error::io(format!("opening {}", root.display()), e))?;
        let left = std::cell::Cell::new(oci::image_limit(&manifest.layers));
        for (i, l) in manifest.layers.iter().enumerate() {
            let what = format!("layer {} ({}) of {of}", i + 1, l.digest);
            let r = store.open_blob(&l.digest, &of)?;
            let r = oci::budgeted(
                oci::layer_reader(r, &l.media_type, l.size, &what),
                &left,
                &what,
            );
            if let Err(e) = recast_root::unpack_layer(&image_root, r) {
                // A corrupted blob can break the tar before its digest is checked: say which.
                store.verify_blob(&l.digest, &of)?;
                return Err(Error::msg(format!("unpacking {what}: {e}")));
            }
        }
        for m in MOUNT_POINTS {
            // runc gives a tmpfs the mode of the directory it covers: /tmp must be 1777.
            let mode = if *m == "tmp" { 0o1777 } else { 0o755 };
            let made = match image_root.kind(m) {
                Ok(None) => image_root.create_dir(m, mode),
                Ok(Some(recast_root::FileType::Directory)) => Ok(()),
                Ok(Some(_)) => Err(std::io::Error::other("it is not a directory")),
                Err(e) => Err(e),
            };
            made.map_err(|e| Error::msg(format!("{of}: /{m}, where instances mount, {e}")))?;
        }
        // File times come from a coarse clock (one tick is up to 10 ms): the marker's time must
        // be a later tick than every unpacked file's ctime, or scans, which trust files changed
        // before the marker, would hash those files on every scan.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(tmp.join(DataDir::UNPACKED_MARKER), digest.as_str())
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
        Err(_) if marker.exists() => {
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

#[cfg(test)]
mod tests {
    use crate::spec::resolve_user;
    use std::fs;

    /// The image's account files are read inside its root: a link to a host file or a device
    /// resolves inside the image, and an oversized file is refused, not read (finding 2).
    #[test]
    fn account_files_are_read_inside_the_root_and_bounded() {
        let host = tempfile::tempdir().expect("tmp");
        let leak = host.path().join("passwd");
        fs::write(&leak, "nobody:x:65534:65534::/leaked-home:/bin/sh\n").expect("write");
        let root = tempfile::tempdir().expect("tmp");
        fs::create_dir(root.path().join("etc")).expect("mkdir");
        std::os::unix::fs::symlink(&leak, root.path().join("etc/passwd")).expect("link");
        assert_eq!(
            resolve_user("65534", root.path()),
            Ok((65534, 65534, "/".into())),
            "the host file is not the image's"
        );
        assert!(resolve_user("nobody", root.path()).is_err());

        fs::remove_file(root.path().join("etc/passwd")).expect("rm");
        std::os::unix::fs::symlink("/dev/zero", root.path().join("etc/passwd")).expect("link");
        assert_eq!(resolve_user("0", root.path()), Ok((0, 0, "/".into())));

        fs::remove_file(root.path().join("etc/passwd")).expect("rm");
        fs::write(root.path().join("etc/passwd"), vec![b'#'; 5 << 20]).expect("big");
        let e = resolve_user("0", root.path()).expect_err("oversized");
        assert!(e.contains("/etc/passwd is larger than"), "{e}");

        fs::write(
            root.path().join("etc/passwd"),
            "app:x:100:101::/home/app:/bin/sh\n",
        )
        .expect("write");
        fs::write(root.path().join("etc/group"), "staff:x:50:\n").expect("write");
        assert_eq!(
            resolve_user("app:staff", root.path()),
            Ok((100, 50, "/home/app".into()))
        );
        assert_eq!(
            resolve_user("app", root.path()),
            Ok((100, 101, "/home/app".into()))
        );
    }
}
