//! Reproducible OCI images: the content store, the builder, archives and the registry client.
//!
//! Everything recast runs is an image in the store, named by the digest of its manifest. Images
//! are built reproducibly (`build`), read and written as layouts and archives (`archive`), and
//! moved to and from registries (`registry`). Every blob read is verified against its digest.

pub mod archive;
pub mod build;
pub mod digest;
mod dockerfile;
mod error;
pub mod fileindex;
mod layer;
pub mod lock;
pub mod oci;
pub mod progress;
pub mod registry;
pub mod step;
pub mod store;

pub use digest::Digest;
pub use error::{Error, Result};
pub use oci::layer_reader;
pub use store::{ImageRef, Store, StoredImage};

use oci::Descriptor;
use std::path::Path;

/// An image added to the store by `pull` or `import`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Added {
    pub name: String,
    pub digest: Digest,
}

/// Pull `reference` (`HOST/REPO[:TAG|@DIGEST]`) into the store, named as written.
pub fn pull(store: &Store, reference: &str, insecure: bool) -> Result<Added> {
    pull_with(store, reference, insecure, &progress::Unwatched)
}

/// [`pull`], telling `progress` the bytes downloaded.
pub fn pull_with(
    store: &Store,
    reference: &str,
    insecure: bool,
    progress: &dyn progress::Progress,
) -> Result<Added> {
    let remote = registry::Remote::parse(reference)?;
    let mut staging = store.stage()?;
    let desc = registry::pull_with(&mut staging, &remote, insecure, progress)?;
    archive::verify_layers(&staging, &desc, &remote.to_string())?;
    staging.commit()?;
    let name = format!("{}/{}", remote.host, remote.repo);
    let tag = if remote.reference.starts_with("sha256:") {
        None
    } else {
        Some(remote.reference.as_str())
    };
    store.name(&name, tag, &desc)?;
    Ok(Added {
        name: display_name(&name, tag, &desc),
        digest: desc.digest,
    })
}

/// Import every image of an OCI archive or docker archive.
pub fn import(store: &Store, file: &Path) -> Result<Vec<Added>> {
    let kind = archive::sniff(file)?;
    let mut staging = store.stage()?;
    let found = match kind {
        archive::Kind::Docker => archive::read_docker_archive(file, &mut staging)?,
        archive::Kind::Oci => archive::read_oci_archive(file, &mut staging)?,
    };
    let stem = file.file_stem().map_or_else(
        || "imported".to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let what = format!("{}", file.display());
    let mut resolved = Vec::new();
    let mut verified = std::collections::BTreeSet::new();
    for f in found {
        let desc = archive::platform_manifest(f.descriptor, &staging, &what)?;
        if verified.insert(desc.digest.clone()) {
            archive::verify_layers(&staging, &desc, &what)?;
        }
        let mut names = Vec::new();
        for n in &f.names {
            // A bare tag (as `skopeo copy … oci-archive:F:TAG` writes) is named after the file.
            let parsed = ImageRef::parse(n).ok();
            let (name, tag) = match parsed {
                Some(ImageRef::Tag { name, tag }) if n.contains(':') || n.contains('/') => {
                    (name, tag)
                }
                _ => (stem.clone(), n.clone()),
            };
            if !store::valid_name(&name) || !store::valid_tag(&tag) {
                let shown: String = n.chars().take(200).collect();
                return Err(Error::msg(format!(
                    "{what} names an image {shown:?} (in {}), which is not a valid image name\n  hint: names are [HOST[:PORT]/]PATH:TAG of letters, digits, '.', '_', '-'",
                    if kind == archive::Kind::Docker {
                        "RepoTags of manifest.json"
                    } else {
                        "the org.opencontainers.image.ref.name annotation of index.json"
                    }
                )));
            }
            names.push((name, tag));
        }
        if names.is_empty() {
            names.push((stem.clone(), "latest".to_string()));
        }
        resolved.push((desc, names));
    }
    staging.commit()?;
    let mut out = Vec::new();
    for (desc, names) in resolved {
        for (name, tag) in names {
            store.name(&name, Some(&tag), &desc)?;
            out.push(Added {
                name: format!("{name}:{tag}"),
                digest: desc.digest.clone(),
            });
        }
    }
    Ok(out)
}

fn display_name(name: &str, tag: Option<&str>, desc: &Descriptor) -> String {
    match tag {
        Some(t) => format!("{name}:{t}"),
        None => format!("{name}@{}", desc.digest),
    }
}

/// The file index of the image `digest`: the blob its manifest names, or (for images built
/// elsewhere) computed from its layers, each read through the verifying reader.
pub fn file_index(store: &Store, digest: &Digest, name: &str) -> Result<fileindex::FileIndex> {
    let of = format!("image {name}");
    let manifest = store.manifest(digest, &of)?;
    if let Some(d) = manifest.file_index()
        && store.has_blob(&d)
    {
        let bytes = store.read_blob_capped(&d, "file index", &of, oci::MAX_FILE_INDEX)?;
        return serde_json::from_slice(&bytes)
            .map_err(|e| Error::msg(format!("the file index of {of} is not valid: {e}")));
    }
    let mut layers = Vec::new();
    for l in &manifest.layers {
        let layer = format!("layer {} of {of}", l.digest);
        let r = layer_reader(
            store.open_blob(&l.digest, &of)?,
            &l.media_type,
            l.size,
            &layer,
        );
        layers.push(fileindex::FileIndex::of_tar(r, &layer)?);
    }
    Ok(fileindex::FileIndex::merge(&layers))
}
