//! `recast image …`: list, inspect, export, import, push, pull, remove and collect images.

use crate::output;
use clap::{Subcommand, ValueEnum};
use recast_image::archive::{self, Format};
use recast_image::fileindex::FileIndex;
use recast_image::oci;
use recast_image::registry::{self, Remote};
use recast_image::{ImageRef, Store};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the images in the store
    Ls {
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Show an image's manifest, config and layers
    Inspect {
        /// NAME[:TAG], NAME@sha256:DIGEST, or a digest
        reference: String,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Write an image to an archive that podman, skopeo and docker load
    Export {
        /// The image: NAME[:TAG], NAME@sha256:DIGEST, or a digest
        reference: String,
        /// The archive to write
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// The archive's format: oci (an OCI image layout in a tar) or docker (`docker load`)
        #[arg(long, value_enum, default_value_t = ExportFormat::Oci)]
        format: ExportFormat,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Add the images of an OCI archive or docker archive to the store
    Import {
        /// The archive: an OCI image layout tar or a docker archive
        file: PathBuf,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Push an image to a registry: HOST[:PORT]/REPO[:TAG]
    Push {
        /// The image in the store: NAME[:TAG], NAME@sha256:DIGEST, or a digest
        reference: String,
        /// Where: HOST[:PORT]/REPO[:TAG]
        destination: String,
        /// Use plain HTTP even for a registry that is not on loopback
        #[arg(long)]
        insecure: bool,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Pull an image from a registry: HOST[:PORT]/REPO[:TAG|@DIGEST]
    Pull {
        /// HOST[:PORT]/REPO[:TAG|@DIGEST]
        reference: String,
        /// Use plain HTTP even for a registry that is not on loopback
        #[arg(long)]
        insecure: bool,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Remove an image's name from the store (its blobs go at the next gc)
    Rm {
        /// NAME[:TAG] to remove
        reference: String,
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
    /// Delete every blob no image in the store uses
    Gc {
        /// Print the result as JSON on stdout (errors too: {"error": {"message", "hint"}})
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Oci,
    Docker,
}

pub fn run(data_dir: &Path, cmd: Command) -> anyhow::Result<ExitCode> {
    let store = output::store(data_dir)?;
    match cmd {
        Command::Ls { json } => ls(&store, json)?,
        Command::Inspect { reference, json } => inspect(&store, &reference, json)?,
        Command::Export {
            reference,
            output: out,
            format,
            json,
        } => {
            let (desc, name) = store.resolve(&ImageRef::parse(&reference)?)?;
            let fmt = match format {
                ExportFormat::Oci => Format::Oci,
                ExportFormat::Docker => Format::Docker,
            };
            let bar = crate::term::Bytes::new(&format!("exporting {name}"));
            let size = archive::export_with(&store, &desc, &name, fmt, &out, &bar)?;
            drop(bar);
            if json {
                output::json(&serde_json::json!({
                    "name": name, "digest": desc.digest, "file": out, "size": size,
                    "format": if fmt == Format::Oci { "oci" } else { "docker" },
                }))?;
            } else {
                output::line(&format!(
                    "exported {name} to {} ({})",
                    out.display(),
                    output::human_size(size)
                ))?;
            }
        }
        Command::Import { file, json } => {
            let added = recast_image::import(&store, &file)?;
            if json {
                output::json(&added)?;
            } else {
                for a in &added {
                    output::line(&format!("{}  {}", a.name, a.digest))?;
                }
            }
        }
        Command::Push {
            reference,
            destination,
            insecure,
            json,
        } => {
            let (desc, name) = store.resolve(&ImageRef::parse(&reference)?)?;
            let dest = Remote::parse(&destination)?;
            let bar = crate::term::Bytes::new(&format!("pushing {name}"));
            let pushed = registry::push_with(&store, &desc, &name, &dest, insecure, &bar)?;
            drop(bar);
            if json {
                output::json(&pushed)?;
            } else {
                output::line(&format!(
                    "pushed {name} to {} as {} ({} blobs uploaded, {} already there)",
                    pushed.destination, pushed.digest, pushed.blobs_uploaded, pushed.blobs_skipped
                ))?;
            }
        }
        Command::Pull {
            reference,
            insecure,
            json,
        } => {
            let bar = crate::term::Bytes::new(&format!("pulling {reference}"));
            let added = recast_image::pull_with(&store, &reference, insecure, &bar)?;
            drop(bar);
            if json {
                output::json(&added)?;
            } else {
                output::line(&format!("{}  {}", added.name, added.digest))?;
            }
        }
        Command::Rm { reference, json } => {
            let removed = store.remove(&ImageRef::parse(&reference)?)?;
            if json {
                output::json(&removed)?;
            } else {
                for r in &removed {
                    output::line(&format!("removed {}  {}", r.name, r.digest))?;
                }
            }
        }
        Command::Gc { json } => {
            let (n, bytes) = store.gc()?;
            if json {
                output::json(&serde_json::json!({ "blobs_removed": n, "bytes_freed": bytes }))?;
            } else {
                output::line(&format!(
                    "removed {n} unused blobs, freed {}",
                    output::human_size(bytes)
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ls(store: &Store, json: bool) -> anyhow::Result<()> {
    let images = store.list()?;
    if json {
        return output::json(&images);
    }
    output::line(&format!("{:<40} {:<71} {:>10}", "NAME", "DIGEST", "SIZE"))?;
    for i in &images {
        output::line(&format!(
            "{:<40} {:<71} {:>10}",
            i.name,
            i.digest.as_str(),
            output::human_size(i.size)
        ))?;
    }
    Ok(())
}

fn inspect(store: &Store, reference: &str, json: bool) -> anyhow::Result<()> {
    let (desc, name) = store.resolve(&ImageRef::parse(reference)?)?;
    let of = format!("image {name}");
    let manifest = store.manifest(&desc.digest, &of)?;
    let config = store.config(&manifest, &of)?;
    let files = match manifest.file_index() {
        Some(d) if store.has_blob(&d) => {
            let bytes = store.read_blob_capped(&d, "file index", &of, oci::MAX_FILE_INDEX)?;
            let fi: FileIndex = serde_json::from_slice(&bytes)?;
            Some(fi.entries.len())
        }
        _ => None,
    };
    let size =
        desc.size + manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
    if json {
        return output::json(&serde_json::json!({
            "name": name,
            "digest": desc.digest,
            "size": size,
            "manifest": manifest,
            "config": config,
            "file_index": manifest.file_index(),
            "files": files,
        }));
    }
    let c = &config["config"];
    output::line(&format!("name:        {name}"))?;
    output::line(&format!("digest:      {}", desc.digest))?;
    output::line(&format!("size:        {}", output::human_size(size)))?;
    output::line(&format!(
        "platform:    {}/{}",
        config["os"].as_str().unwrap_or("?"),
        config["architecture"].as_str().unwrap_or("?")
    ))?;
    output::line(&format!(
        "created:     {}",
        config["created"].as_str().unwrap_or("-")
    ))?;
    for (label, key) in [
        ("entrypoint:", "Entrypoint"),
        ("cmd:", "Cmd"),
        ("env:", "Env"),
    ] {
        if !c[key].is_null() {
            output::line(&format!("{label:<12} {}", c[key]))?;
        }
    }
    for (label, key) in [("workdir:", "WorkingDir"), ("user:", "User")] {
        if let Some(v) = c[key].as_str() {
            output::line(&format!("{label:<12} {v}"))?;
        }
    }
    output::line(&format!("config:      {}", manifest.config.digest))?;
    for (i, l) in manifest.layers.iter().enumerate() {
        output::line(&format!(
            "layer {:<5} {}  {}",
            i + 1,
            l.digest,
            output::human_size(l.size)
        ))?;
    }
    if let (Some(d), Some(n)) = (manifest.file_index(), files) {
        output::line(&format!("file index:  {d} ({n} entries)"))?;
    }
    Ok(())
}
