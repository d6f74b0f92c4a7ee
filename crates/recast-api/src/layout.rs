//! The layout of a recast data directory: every path under it is named here and nowhere else.
//!
//! ```text
//! <data-dir>/
//!   state.db                 the state store (recast-state)
//!   store/                   the content store of images (recast-image)
//!   cache/                   the build cache (see [`CacheDir`])
//!   server.json (+ .tmp)     where the running server listens, for the CLI
//!   server.lock              held (flock) by the running server
//!   token                    the API token (0600)
//!   secrets.key              the key that seals secrets in the state (0600, see
//!                            [`DataDir::secrets_key`])
//!   dataplane.sock           the data plane's control socket (0600); dataplane.log its output
//!   instances/<id>/          one instance: its record, overlay, logs, netns
//!   instances/.creating-<id>.<pid>  an instance being created by process <pid> (renamed to
//!                            `<id>` once recorded)
//!   runc/                    runc's state of instances
//!   runc-build/<id>          runc's state of a build step's container
//!   builds/<id>/             a build step's container; builds/<id>.<pid>.tar its layer
//!   layers/<hex>/            a layer unpacked in overlay format, for build steps
//!   rootfs/<hex>/            an image unpacked once, the lower layer of its instances
//!   volumes/<project>/<service>/<volume>/
//!   snapshots/<project>/<service>/<volume>/<release>-<time>/
//! ```
//!
//! Names that come from users or images (project, service, volume, instance and build ids) are
//! single path components: a method given one that is empty, `.`, `..` or holds a `/` (or a NUL)
//! refuses it with a [`BadName`] instead of building a path that leaves the directory. Digests
//! (`hex`) are checked by their type where they are made.

use std::path::{Path, PathBuf};

/// A name that cannot be one component of a path under the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadName {
    /// What the name names: "project", "service", "volume", "instance", "build".
    pub what: &'static str,
    pub name: String,
}

impl std::fmt::Display for BadName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} name {:?} cannot name a directory in the data directory (it is empty, `.`, `..` or holds a `/`)",
            self.what, self.name
        )
    }
}

impl std::error::Error for BadName {}

/// `name`, when it is one plain path component.
fn component<'a>(what: &'static str, name: &'a str) -> Result<&'a str, BadName> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(BadName {
            what,
            name: name.to_string(),
        });
    }
    Ok(name)
}

/// A recast data directory (`--data-dir`, `RECAST_DATA_DIR`): the one place its paths are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The name prefix, under [`DataDir::instances`], of an instance being created.
    pub const CREATING_PREFIX: &'static str = ".creating-";
    /// The file in an unpacked image's directory ([`DataDir::rootfs_marker`]).
    pub const UNPACKED_MARKER: &'static str = ".recast-unpacked";

    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `state.db`: the state store.
    pub fn state_db(&self) -> PathBuf {
        self.root.join("state.db")
    }

    /// `store/`: the content store of images.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// `cache/`: the build cache.
    pub fn cache(&self) -> CacheDir {
        CacheDir::new(self.root.join("cache"))
    }

    /// `server.json`: the running server's address and process.
    pub fn server_info(&self) -> PathBuf {
        self.root.join("server.json")
    }

    /// `server.json.tmp`: `server.json` being written (renamed into place).
    pub fn server_info_tmp(&self) -> PathBuf {
        self.root.join("server.json.tmp")
    }

    /// `server.lock`: locked by the running server for as long as it lives.
    pub fn server_lock(&self) -> PathBuf {
        self.root.join("server.lock")
    }

    /// `token`: the API token.
    pub fn token(&self) -> PathBuf {
        self.root.join("token")
    }

    /// `secrets.key`: the key that seals secrets kept in the state (0600, 64 hex digits). Every
    /// host that runs the same projects on the same state needs the same file.
    pub fn secrets_key(&self) -> PathBuf {
        self.root.join("secrets.key")
    }

    /// `dataplane.sock`: the data plane's control socket (0600).
    pub fn dataplane_socket(&self) -> PathBuf {
        self.root.join("dataplane.sock")
    }

    /// `dataplane.sock.<pid>`: a data plane's socket before it takes the name.
    pub fn dataplane_socket_tmp(&self, pid: u32) -> PathBuf {
        self.root.join(format!("dataplane.sock.{pid}"))
    }

    /// `dataplane.log`: what the data plane says (its stdout and stderr).
    pub fn dataplane_log(&self) -> PathBuf {
        self.root.join("dataplane.log")
    }

    /// `instances/`: one directory per instance.
    pub fn instances(&self) -> PathBuf {
        self.root.join("instances")
    }

    /// `instances/<id>/`.
    pub fn instance(&self, id: &str) -> Result<PathBuf, BadName> {
        Ok(self.instances().join(component("instance", id)?))
    }

    /// `instances/.creating-<id>.<pid>/`: the instance `id` while process `pid` creates it.
    /// The creator's pid follows a `.`: a directory whose creator died before it wrote the record
    /// is known as garbage by its name alone.
    pub fn creating_instance(&self, id: &str, pid: u32) -> Result<PathBuf, BadName> {
        let id = component("instance", id)?;
        Ok(self
            .instances()
            .join(format!("{}{id}.{pid}", DataDir::CREATING_PREFIX)))
    }

    /// `host-id`: a random id of this data directory, so that a server starting again on it is
    /// known as the successor of the one before (not another server under the same host name).
    pub fn host_id(&self) -> PathBuf {
        self.root.join("host-id")
    }

    /// `runc/`: runc's state (`--root`) of instances.
    pub fn runc_root(&self) -> PathBuf {
        self.root.join("runc")
    }

    /// `runc-build/`: runc's state (`--root`) of build steps.
    pub fn build_runc_root(&self) -> PathBuf {
        self.root.join("runc-build")
    }

    /// `runc-build/<id>`: runc's state of the build step container `id`.
    pub fn build_runc_state(&self, id: &str) -> Result<PathBuf, BadName> {
        Ok(self.build_runc_root().join(component("build", id)?))
    }

    /// `builds/`: build step containers and their layers.
    pub fn builds(&self) -> PathBuf {
        self.root.join("builds")
    }

    /// `builds/<id>/`: the container of build step `id`.
    pub fn build(&self, id: &str) -> Result<PathBuf, BadName> {
        Ok(self.builds().join(component("build", id)?))
    }

    /// `builds/<id>.<pid>.tar`: the layer build step `id` of process `pid` made.
    pub fn build_layer(&self, id: &str, pid: u32) -> Result<PathBuf, BadName> {
        let id = component("build", id)?;
        Ok(self.builds().join(format!("{id}.{pid}.tar")))
    }

    /// `layers/`: layers unpacked in overlay format, shared by build steps.
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// `layers/<hex>/`: the layer of digest `hex`.
    pub fn layer(&self, hex: &str) -> PathBuf {
        debug_assert!(component("layer", hex).is_ok(), "layer digest {hex:?}");
        self.layers().join(hex)
    }

    /// `layers/.<hex>.tmp<pid>/`: the layer `hex` being unpacked by process `pid`.
    pub fn layer_tmp(&self, hex: &str, pid: u32) -> PathBuf {
        self.layers().join(format!(".{hex}.tmp{pid}"))
    }

    /// `rootfs/`: images unpacked once, the lower layers of instances.
    pub fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    /// `rootfs/<hex>/`: the image of manifest digest `hex`, unpacked.
    pub fn rootfs(&self, hex: &str) -> PathBuf {
        debug_assert!(component("image", hex).is_ok(), "image digest {hex:?}");
        self.rootfs_dir().join(hex)
    }

    /// `rootfs/<hex>/.recast-unpacked`: present once the unpack is complete; its time is when.
    pub fn rootfs_marker(&self, hex: &str) -> PathBuf {
        self.rootfs(hex).join(DataDir::UNPACKED_MARKER)
    }

    /// `rootfs/.<hex>.tmp<pid>/`: the image `hex` being unpacked by process `pid`.
    pub fn rootfs_tmp(&self, hex: &str, pid: u32) -> PathBuf {
        self.rootfs_dir().join(format!(".{hex}.tmp{pid}"))
    }

    /// `rootfs/.<hex>.stale<pid>/`: a drifted copy of image `hex`, set aside to be removed.
    pub fn rootfs_stale(&self, hex: &str, pid: u32) -> PathBuf {
        self.rootfs_dir().join(format!(".{hex}.stale{pid}"))
    }

    /// `networks/`: one directory per project network.
    pub fn networks(&self) -> PathBuf {
        self.root.join("networks")
    }

    /// `networks/<project>/`: the project's network (its namespace pin, address leases, the
    /// egress process).
    pub fn network(&self, project: &str) -> Result<PathBuf, BadName> {
        Ok(self.networks().join(component("project", project)?))
    }

    /// `networks/<project>/services/<service>`: the service's number on its project's network.
    pub fn network_service(&self, project: &str, service: &str) -> Result<PathBuf, BadName> {
        Ok(self
            .network(project)?
            .join("services")
            .join(component("service", service)?))
    }

    /// `volumes/`: the volumes of every service.
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    /// `volumes/<project>/<service>/`: the volumes of one service.
    pub fn service_volumes(&self, project: &str, service: &str) -> Result<PathBuf, BadName> {
        Ok(self
            .volumes()
            .join(component("project", project)?)
            .join(component("service", service)?))
    }

    /// `volumes/<project>/<service>/<volume>/`.
    pub fn volume(&self, project: &str, service: &str, volume: &str) -> Result<PathBuf, BadName> {
        Ok(self
            .service_volumes(project, service)?
            .join(component("volume", volume)?))
    }

    /// `snapshots/<project>/<service>/<volume>/`: the snapshots of one volume, each
    /// `<release>-<time>[-<n>]/`.
    pub fn snapshots(
        &self,
        project: &str,
        service: &str,
        volume: &str,
    ) -> Result<PathBuf, BadName> {
        Ok(self
            .root
            .join("snapshots")
            .join(component("project", project)?)
            .join(component("service", service)?)
            .join(component("volume", volume)?))
    }

    /// The directories only root may enter (mode 0700), which the runtime creates.
    pub fn private_dirs(&self) -> [PathBuf; 4] {
        [
            self.instances(),
            self.rootfs_dir(),
            self.volumes(),
            self.runc_root(),
        ]
    }
}

/// The build cache (`<data-dir>/cache/`, or a directory a caller chose): what it remembers
/// between builds, each file written whole (by rename) so a reader never sees half of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDir {
    root: PathBuf,
}

impl CacheDir {
    pub fn new(root: impl Into<PathBuf>) -> CacheDir {
        CacheDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `stat-cache`: file hashes by size, times, inode and device.
    pub fn stat_cache(&self) -> PathBuf {
        self.root.join("stat-cache")
    }

    /// `layers/`: copy-step layers by their key.
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// `layers/<key hex>`: the layer digest and size of one copy step.
    pub fn layer(&self, key: &str) -> PathBuf {
        debug_assert!(component("layer key", key).is_ok(), "layer key {key:?}");
        self.layers().join(key)
    }

    /// `steps/`: run-step layers by their key.
    pub fn steps(&self) -> PathBuf {
        self.root.join("steps")
    }

    /// `steps/<key hex>`: the layer digest and size of one run step.
    pub fn step(&self, key: &str) -> PathBuf {
        debug_assert!(component("step key", key).is_ok(), "step key {key:?}");
        self.steps().join(key)
    }

    /// `layer-index/<hex>`: the file index of a base layer.
    pub fn layer_index(&self, hex: &str) -> PathBuf {
        debug_assert!(component("layer", hex).is_ok(), "layer digest {hex:?}");
        self.root.join("layer-index").join(hex)
    }

    /// `<kind>/` (`added`, `roots`): trees unpacked once, by key.
    pub fn unpacked(&self, kind: &str) -> PathBuf {
        debug_assert!(matches!(kind, "added" | "roots"), "unpacked kind {kind:?}");
        self.root.join(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> DataDir {
        DataDir::new("/var/lib/recast")
    }

    #[test]
    fn paths_are_the_ones_on_disk() {
        let d = d();
        let p = |s: &str| PathBuf::from(format!("/var/lib/recast/{s}"));
        assert_eq!(d.state_db(), p("state.db"));
        assert_eq!(d.store(), p("store"));
        assert_eq!(d.cache().root(), p("cache"));
        assert_eq!(d.server_info(), p("server.json"));
        assert_eq!(d.server_info_tmp(), p("server.json.tmp"));
        assert_eq!(d.server_lock(), p("server.lock"));
        assert_eq!(d.token(), p("token"));
        assert_eq!(d.secrets_key(), p("secrets.key"));
        assert_eq!(
            d.instance("web-r1-0a1b2c3d").expect("a valid name"),
            p("instances/web-r1-0a1b2c3d")
        );
        assert_eq!(
            d.creating_instance("web-r1-0a1b2c3d", 42)
                .expect("a valid name"),
            p("instances/.creating-web-r1-0a1b2c3d.42")
        );
        assert_eq!(d.runc_root(), p("runc"));
        assert_eq!(d.build_runc_root(), p("runc-build"));
        assert_eq!(
            d.build_runc_state("build-1").expect("a valid name"),
            p("runc-build/build-1")
        );
        assert_eq!(
            d.build("build-1").expect("a valid name"),
            p("builds/build-1")
        );
        assert_eq!(
            d.build_layer("build-1", 42).expect("a valid name"),
            p("builds/build-1.42.tar")
        );
        assert_eq!(d.layer("ab12"), p("layers/ab12"));
        assert_eq!(d.layer_tmp("ab12", 42), p("layers/.ab12.tmp42"));
        assert_eq!(d.rootfs("ab12"), p("rootfs/ab12"));
        assert_eq!(d.rootfs_marker("ab12"), p("rootfs/ab12/.recast-unpacked"));
        assert_eq!(d.rootfs_tmp("ab12", 42), p("rootfs/.ab12.tmp42"));
        assert_eq!(d.rootfs_stale("ab12", 42), p("rootfs/.ab12.stale42"));
        assert_eq!(
            d.service_volumes("shop", "db").expect("a valid name"),
            p("volumes/shop/db")
        );
        assert_eq!(
            d.volume("shop", "db", "data").expect("a valid name"),
            p("volumes/shop/db/data")
        );
        assert_eq!(
            d.snapshots("shop", "db", "data").expect("a valid name"),
            p("snapshots/shop/db/data")
        );
        assert_eq!(
            d.private_dirs(),
            [p("instances"), p("rootfs"), p("volumes"), p("runc")]
        );
        let c = d.cache();
        assert_eq!(c.stat_cache(), p("cache/stat-cache"));
        assert_eq!(c.layer("k1"), p("cache/layers/k1"));
        assert_eq!(c.step("k1"), p("cache/steps/k1"));
        assert_eq!(c.layer_index("ab12"), p("cache/layer-index/ab12"));
        assert_eq!(c.unpacked("roots"), p("cache/roots"));
    }

    #[test]
    fn names_cannot_leave_the_directory() {
        let d = d();
        for bad in ["", ".", "..", "a/b", "../etc", "/etc", "a\0b"] {
            let e = d.volume("shop", "db", bad).expect_err("refused");
            assert_eq!((e.what, e.name.as_str()), ("volume", bad));
            assert_eq!(
                d.volume(bad, "db", "data").expect_err("refused").what,
                "project"
            );
            assert_eq!(
                d.volume("shop", bad, "data").expect_err("refused").what,
                "service"
            );
            assert_eq!(
                d.service_volumes(bad, "db").expect_err("refused").what,
                "project"
            );
            assert_eq!(
                d.snapshots("shop", "db", bad).expect_err("refused").what,
                "volume"
            );
            assert_eq!(
                d.snapshots("shop", bad, "x").expect_err("refused").what,
                "service"
            );
            assert_eq!(d.instance(bad).expect_err("refused").what, "instance");
            assert_eq!(
                d.creating_instance(bad, 1).expect_err("refused").what,
                "instance"
            );
            assert_eq!(d.build(bad).expect_err("refused").what, "build");
            assert_eq!(d.build_layer(bad, 1).expect_err("refused").what, "build");
            assert_eq!(d.build_runc_state(bad).expect_err("refused").what, "build");
        }
        // Dots inside a name are fine: only whole `.` and `..` climb.
        assert!(d.volume("my.project", "db..1", ".hidden").is_ok());
        let msg = d.instance("..").expect_err("refused").to_string();
        assert!(msg.contains("instance name \"..\""), "{msg}");
    }
}
