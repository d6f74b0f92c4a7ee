//! Stateful services: `recreate` rollouts (every old instance stops before the new release
//! starts), exclusive volumes (never two instances on one), and their snapshots.
//!
//! A snapshot is a copy of an exclusive volume on the same filesystem (`cp --reflink=auto -a`,
//! so a copy-on-write filesystem shares the blocks), taken while no instance runs on it, each
//! time the volume changes hands (a recreate rollout, a stop-first rollback, a restore), under
//! `<data-dir>/snapshots/<project>/<service>/<volume>/<release>-<time>/` and recorded in the
//! state store. The volume's content is the application's (untrusted): the copy never follows a
//! symbolic link (`cp -a` copies links as links), and the copy is made under a `.partial` name
//! and renamed into place only once complete.

use super::{Ctl, Run, Svc};
use crate::ServerError;
use recast_state::{Release, ReleaseOutcome, Snapshot};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Snapshots kept per volume; older ones are deleted after a new one is taken.
pub const KEEP_SNAPSHOTS: usize = 5;

// What `recast volume ls` lists, what a rollback would restore, what a restore did: the API's types.
pub use recast_api::v1::{RestorePlan, VolumeInfo, VolumeRestored};

impl Ctl {
    fn volume_dir(&self, svc: &Svc, volume: &str) -> Result<PathBuf, String> {
        self.data_dir
            .volume(&svc.project, &svc.name, volume)
            .map_err(|e| e.to_string())
    }

    /// Retire instances (out of rotation, drained, stopped, deleted) and record it.
    pub(super) async fn stop_all(self: &Arc<Self>, svc: &Arc<Svc>, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let list = ids.join(", ");
        self.retire(svc, ids).await;
        self.event(
            svc,
            "instance.stopped",
            &format!("instance(s) {list} stopped"),
        );
    }

    /// Copy every exclusive volume of `service` that exists and no instance runs on. The
    /// caller stopped the instances (it holds the service's `busy` lock).
    pub(super) async fn snapshot_volumes(
        &self,
        svc: &Svc,
        service: &recast_spec::Service,
        before_release: i64,
        of_release: Option<i64>,
    ) -> Result<Vec<Snapshot>, String> {
        let running = svc.ids(|l| l.exited.is_none());
        if !running.is_empty() {
            return Err(format!(
                "cannot snapshot the volumes of {} while instance(s) {} run",
                svc.name,
                running.join(", ")
            ));
        }
        let mut out = Vec::new();
        for v in service.exclusive_volumes() {
            let src = self.volume_dir(svc, &v.name)?;
            if !src.exists() {
                continue;
            }
            let time = recast_image::oci::rfc3339(super::now_ms() / 1000).replace([':', '-'], "");
            let dir = self
                .data_dir
                .snapshots(&svc.project, &svc.name, &v.name)
                .map_err(|e| e.to_string())?;
            let mut dst = dir.join(format!("{before_release}-{time}"));
            let mut k = 1;
            while dst.exists() {
                k += 1;
                dst = dir.join(format!("{before_release}-{time}-{k}"));
            }
            let (s2, d2) = (src.clone(), dst.clone());
            tokio::task::spawn_blocking(move || copy_tree(&s2, &d2))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("snapshot of volume {}: {e}", v.name))?;
            let snap = self
                .state
                .add_snapshot(
                    &svc.project,
                    &svc.name,
                    &v.name,
                    before_release,
                    of_release,
                    &dst.to_string_lossy(),
                )
                .map_err(|e| e.to_string())?;
            self.event(
                svc,
                "volume.snapshot",
                &format!(
                    "volume {} copied to {} before release {before_release}",
                    v.name,
                    dst.display()
                ),
            );
            if let Err(e) = self.prune_snapshots(svc, &v.name).await {
                // The copy is taken and recorded: an old copy left behind is reported, and
                // pruned with the next one.
                self.failed(
                    svc,
                    "volume.prune_failed",
                    &format!("pruning old snapshots of volume {}: {e}", v.name),
                );
            }
            out.push(snap);
        }
        Ok(out)
    }

    /// Keep the newest [`KEEP_SNAPSHOTS`] snapshots of a volume.
    async fn prune_snapshots(&self, svc: &Svc, volume: &str) -> Result<(), ServerError> {
        let all: Vec<Snapshot> = self
            .state
            .snapshots(&svc.project, &svc.name)?
            .into_iter()
            .filter(|s| s.volume == volume)
            .collect();
        let excess = all.len().saturating_sub(KEEP_SNAPSHOTS);
        for s in all.into_iter().take(excess) {
            self.drop_snapshot(&s).await?;
        }
        Ok(())
    }

    /// Delete a snapshot's copy, then its record (a copy that cannot be deleted keeps its
    /// record, so it is never left behind unlisted).
    async fn drop_snapshot(&self, s: &Snapshot) -> Result<(), ServerError> {
        let p = PathBuf::from(&s.path);
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
        .map_err(|e| ServerError::Internal(format!("deleting snapshot {}: {e}", s.path)))?;
        removed.map_err(|e| ServerError::Internal(format!("deleting snapshot {}: {e}", s.path)))?;
        self.state.remove_snapshot(s.id)?;
        Ok(())
    }

    /// Every snapshot of a service, files and records (`destroy --volumes`).
    pub(super) async fn drop_snapshots(&self, svc: &Svc) -> Result<(), ServerError> {
        for s in self.state.snapshots(&svc.project, &svc.name)? {
            self.drop_snapshot(&s).await?;
        }
        Ok(())
    }

    /// Replace an instance of a service that stops first (recreate, exclusive volumes): the old
    /// one is drained and stopped before the new one starts, so two never share a volume.
    pub(crate) async fn replace_stopping_first(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        id: &str,
        why: &str,
        run: &Run,
        active: bool,
    ) -> Result<String, String> {
        self.stop_all(svc, vec![id.to_string()]).await;
        let deadline = Instant::now() + run.service.rollout.progress_deadline;
        if svc.count(run.number, |l| l.active && l.healthy) == 0 {
            svc.set_unavailable(Some(format!(
                "instance {id} is being replaced ({why}; the service runs one instance at a time); retry shortly"
            )));
        }
        let started = async {
            let new = self.start_instance(svc, run).await?;
            if let Err(e) = self.wait_healthy(svc, &new, deadline).await {
                self.retire(svc, vec![new]).await;
                return Err(e);
            }
            Ok(new)
        }
        .await;
        svc.set_unavailable(None);
        let new = started?;
        if active {
            svc.set_active(std::slice::from_ref(&new), true);
        }
        self.event(
            svc,
            "instance.replaced",
            &format!("instance {id} replaced by {new} ({why}; stopped first)"),
        );
        Ok(new)
    }

    /// The release a rollback leaves and the one it goes to.
    pub(super) fn rollback_target(
        &self,
        svc: &Svc,
        to: Option<i64>,
    ) -> Result<(Release, Release), ServerError> {
        let cur = self
            .state
            .current(&svc.project, &svc.name)?
            .ok_or_else(|| {
                ServerError::Conflict(format!("service {} has no live release", svc.name))
            })?;
        let history = self.state.releases(&svc.project, &svc.name)?;
        let target = match to {
            Some(n) => history.iter().find(|r| r.number == n).ok_or_else(|| {
                ServerError::NotFound(format!("service {} has no release {n}", svc.name))
            })?,
            None => history
                .iter()
                .rev()
                .find(|r| r.number < cur.number && r.outcome == ReleaseOutcome::Succeeded)
                .ok_or_else(|| {
                    ServerError::Conflict("there is no earlier good release to go back to".into())
                })?,
        };
        if target.number == cur.number {
            return Err(ServerError::Conflict(format!(
                "release {} is already live",
                cur.number
            )));
        }
        Ok((cur.clone(), target.clone()))
    }

    /// The snapshots a rollback to `target` would restore: per exclusive volume, the newest copy
    /// of the data as `target` left it (taken when its instances had stopped).
    pub fn restore_plan(&self, svc: &Svc, to: Option<i64>) -> Result<RestorePlan, ServerError> {
        let (cur, target) = self.rollback_target(svc, to)?;
        let run = Run::from_row(&target).map_err(ServerError::Internal)?;
        let all = self.state.snapshots(&svc.project, &svc.name)?;
        let mut snapshots = Vec::new();
        let mut missing = Vec::new();
        for v in run.service.exclusive_volumes() {
            match all
                .iter()
                .rev()
                .find(|s| s.volume == v.name && s.of_release == Some(target.number))
            {
                Some(s) => snapshots.push(s.clone()),
                None => missing.push(v.name.clone()),
            }
        }
        let missing = if run.service.exclusive_volumes().next().is_none() {
            Some(format!(
                "release {} of {} has no exclusive volume",
                target.number, svc.name
            ))
        } else if !missing.is_empty() {
            Some(format!(
                "no snapshot holds release {}'s data of volume(s) {}",
                target.number,
                missing.join(", ")
            ))
        } else {
            None
        };
        Ok(RestorePlan {
            from: cur.number,
            to: target.number,
            snapshots,
            missing,
        })
    }

    /// Rollback of a service that stops first: stop the live release, restore the volumes
    /// when asked, start the target. If the target fails, the release it left starts again.
    pub(super) async fn rollback_stopping_first(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        cur: &Release,
        run: &Run,
        restore: Option<RestorePlan>,
        t0: Instant,
    ) -> Result<super::RollbackResult, String> {
        if let Some(p) = &restore
            && let Some(m) = &p.missing
        {
            return Err(format!(
                "cannot restore volumes: {m}\n  hint: `recast volume snapshots {}` lists the snapshots; roll back without --restore-volumes to keep the volumes as they are",
                svc.name
            ));
        }
        svc.set_unavailable(Some(format!(
            "rolling back from release {} to release {} (stopped first); retry shortly",
            cur.number, run.number
        )));
        let result = self
            .rollback_stopping_first_inner(svc, cur, run, restore, t0)
            .await;
        svc.set_unavailable(None);
        result
    }

    async fn rollback_stopping_first_inner(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        cur: &Release,
        run: &Run,
        restore: Option<RestorePlan>,
        t0: Instant,
    ) -> Result<super::RollbackResult, String> {
        let all = svc.ids(|_| true);
        self.stop_all(svc, all).await;
        let prepared = async {
            // The data as the release it leaves wrote it, so going back again can restore it.
            if let Ok(cur_run) = Run::from_row(cur) {
                self.snapshot_volumes(svc, &cur_run.service, run.number, Some(cur.number))
                    .await?;
            }
            if let Some(p) = &restore {
                for s in &p.snapshots {
                    self.restore_snapshot(svc, s).await?;
                }
            }
            Ok::<(), String>(())
        }
        .await;
        if let Err(e) = prepared {
            self.start_again(svc, cur).await;
            return Err(format!("{e}; release {} runs again", cur.number));
        }
        let n = run.service.instances as usize;
        let deadline = Instant::now() + run.service.rollout.progress_deadline;
        let ids = match self.start_healthy(svc, run, n, deadline).await {
            Ok(ids) => ids,
            Err(e) => {
                // Back to the release that was live, so the service does not stay down.
                self.start_again(svc, cur).await;
                return Err(format!(
                    "release {} did not start: {e}; release {} runs again",
                    run.number, cur.number
                ));
            }
        };
        self.event(
            svc,
            "instance.started",
            &format!(
                "instance(s) {} of release {} started",
                ids.join(", "),
                run.number
            ),
        );
        svc.set_active(&ids, true);
        let switched_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let note = if restore.is_some() {
            " (volumes restored)"
        } else {
            ""
        };
        self.record_rollback(svc, cur.number, run.number, note);
        Ok(super::RollbackResult {
            service: svc.name.clone(),
            from: cur.number,
            to: run.number,
            warm: false,
            switched_ms,
            restored: restore.map(|p| p.snapshots).unwrap_or_default(),
        })
    }

    /// Start a release's instances again after a stop-first operation failed half-way.
    async fn start_again(self: &Arc<Self>, svc: &Arc<Svc>, rel: &Release) {
        let Ok(back) = Run::from_row(rel) else {
            return;
        };
        let deadline = Instant::now() + back.service.rollout.progress_deadline;
        let want = back.service.instances as usize;
        let have = svc.count(back.number, |l| l.exited.is_none());
        if let Ok(ids) = self
            .start_healthy(svc, &back, want.saturating_sub(have), deadline)
            .await
        {
            svc.set_active(&ids, true);
        }
    }

    /// Replace a volume's content with a snapshot's (no instance may run on it).
    async fn restore_snapshot(&self, svc: &Svc, s: &Snapshot) -> Result<(), String> {
        let vol = self.volume_dir(svc, &s.volume)?;
        let snap = PathBuf::from(&s.path);
        tokio::task::spawn_blocking(move || replace_content(&vol, &snap))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("restoring volume {} from {}: {e}", s.volume, s.path))?;
        self.event(
            svc,
            "volume.restored",
            &format!("volume {} restored from {}", s.volume, s.path),
        );
        Ok(())
    }

    /// `recast volume restore`: stop the service's instances, replace the volume's content with
    /// the snapshot, start the live release again. Downtime by design; the caller confirmed.
    pub async fn restore_volume(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        volume: &str,
        snapshot: &str,
    ) -> Result<VolumeRestored, ServerError> {
        let _busy = svc.busy.lock().await;
        let all = self.state.snapshots(&svc.project, &svc.name)?;
        let snap = all
            .iter()
            .find(|s| {
                s.volume == volume
                    && (s.id.to_string() == snapshot
                        || Path::new(&s.path).file_name().is_some_and(|f| f == snapshot))
            })
            .cloned()
            .ok_or_else(|| {
                ServerError::NotFound(format!(
                    "volume {volume} of {} has no snapshot {snapshot}\n  hint: `recast volume snapshots {}` lists them",
                    svc.name, svc.name
                ))
            })?;
        let cur = self.state.current(&svc.project, &svc.name)?;
        let run = cur
            .as_ref()
            .map(Run::from_row)
            .transpose()
            .map_err(ServerError::Internal)?;
        let stopped = svc.ids(|_| true);
        let n_stopped = stopped.len();
        svc.set_unavailable(Some(format!(
            "volume {volume} is being restored from a snapshot; retry shortly"
        )));
        let result = self
            .restore_volume_inner(svc, &snap, stopped, run.as_ref())
            .await;
        svc.set_unavailable(None);
        let started = result.map_err(ServerError::Runtime)?;
        Ok(VolumeRestored {
            service: svc.name.clone(),
            volume: volume.to_string(),
            snapshot: snap,
            stopped: n_stopped,
            started,
        })
    }

    async fn restore_volume_inner(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        snap: &Snapshot,
        stopped: Vec<String>,
        run: Option<&Run>,
    ) -> Result<Vec<String>, String> {
        let volume = &snap.volume;
        self.stop_all(svc, stopped).await;
        let prepared = async {
            if let Some(run) = run {
                // What is replaced stays restorable.
                self.snapshot_volumes(svc, &run.service, run.number, Some(run.number))
                    .await?;
            }
            self.restore_snapshot(svc, snap).await
        }
        .await;
        if let Err(e) = prepared {
            if let Ok(Some(cur)) = self.state.current(&svc.project, &svc.name) {
                self.start_again(svc, &cur).await;
            }
            return Err(format!(
                "{e}; the volume is unchanged and the service runs again"
            ));
        }
        let mut started = Vec::new();
        if let Some(run) = run {
            let deadline = Instant::now() + run.service.rollout.progress_deadline;
            started = self
                .start_healthy(svc, run, run.service.instances as usize, deadline)
                .await
                .map_err(|e| {
                    format!(
                        "volume {volume} restored, but release {} did not start again: {e}",
                        run.number
                    )
                })?;
            svc.set_active(&started, true);
        }
        Ok(started)
    }

    /// Volumes of deployed services (all, or `service`'s).
    pub fn volumes(&self, only: Option<&Svc>) -> Result<Vec<VolumeInfo>, ServerError> {
        let mut out = Vec::new();
        for svc in self.all_svcs() {
            if only.is_some_and(|o| o.project != svc.project || o.name != svc.name) {
                continue;
            }
            let Some(cur) = self.state.current(&svc.project, &svc.name)? else {
                continue;
            };
            let run = Run::from_row(&cur).map_err(|e| {
                ServerError::Internal(format!(
                    "release {} of {}/{}: {e}",
                    cur.number, svc.project, svc.name
                ))
            })?;
            let snaps = self.state.snapshots(&svc.project, &svc.name)?;
            for v in &run.service.volumes {
                // Spec names are checked names: every volume has a path.
                let Ok(path) = self.volume_dir(&svc, &v.name) else {
                    continue;
                };
                let mine: Vec<&Snapshot> = snaps.iter().filter(|s| s.volume == v.name).collect();
                out.push(VolumeInfo {
                    project: svc.project.clone(),
                    service: svc.name.clone(),
                    volume: v.name.clone(),
                    mount: v.mount.clone(),
                    exclusive: v.exclusive,
                    path: path.to_string_lossy().into(),
                    snapshots: mine.len(),
                    last_snapshot_ms: mine.last().map(|s| s.created_ms),
                });
            }
        }
        Ok(out)
    }
}

/// Copy a directory tree to `dst` (which must not exist) on the same filesystem: reflinks where
/// the filesystem has them, owners, modes, times and extended attributes kept, symbolic links
/// copied as links (never followed), hard links kept. Written under `<dst>.partial` and renamed.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", src.display()));
    }
    let parent = dst
        .parent()
        .ok_or_else(|| format!("{} has no parent", dst.display()))?;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let mut partial = dst.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    }
    let out = std::process::Command::new("cp")
        .args(["--reflink=auto", "-a", "--no-target-directory", "--"])
        .arg(src)
        .arg(&partial)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running cp: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        let err = String::from_utf8_lossy(&out.stderr);
        let err: String = err.chars().take(500).collect();
        return Err(format!(
            "cp {} {} failed ({}): {}",
            src.display(),
            partial.display(),
            out.status,
            err.trim()
        ));
    }
    std::fs::rename(&partial, dst).map_err(|e| {
        let _ = std::fs::remove_dir_all(&partial);
        format!("renaming {} to {}: {e}", partial.display(), dst.display())
    })
}

/// Make `volume` hold exactly what `snapshot` holds: a copy of the snapshot is made beside the
/// volume, then swapped in by renames; the old content is deleted (without following links).
pub fn replace_content(volume: &Path, snapshot: &Path) -> Result<(), String> {
    let name = volume
        .file_name()
        .ok_or_else(|| format!("{} has no name", volume.display()))?
        .to_string_lossy()
        .to_string();
    let parent = volume
        .parent()
        .ok_or_else(|| format!("{} has no parent", volume.display()))?;
    let incoming = parent.join(format!(".{name}.restore"));
    let outgoing = parent.join(format!(".{name}.replaced"));
    for p in [&incoming, &outgoing] {
        if std::fs::symlink_metadata(p).is_ok() {
            std::fs::remove_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    copy_tree(snapshot, &incoming)?;
    let had = std::fs::symlink_metadata(volume).is_ok();
    if had {
        std::fs::rename(volume, &outgoing)
            .map_err(|e| format!("moving {} aside: {e}", volume.display()))?;
    }
    std::fs::rename(&incoming, volume).map_err(|e| {
        if had {
            let _ = std::fs::rename(&outgoing, volume);
        }
        format!("moving the restored copy into {}: {e}", volume.display())
    })?;
    if had {
        std::fs::remove_dir_all(&outgoing).map_err(|e| format!("{}: {e}", outgoing.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    #[test]
    fn a_copy_keeps_modes_owners_and_links_and_never_follows_them() {
        let tmp = tempfile::tempdir().expect("tmp");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), "host file").expect("write");
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(vol.join("base/1")).expect("mkdir");
        std::fs::write(vol.join("base/1/table"), "rows").expect("write");
        std::fs::set_permissions(vol.join("base"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        std::os::unix::fs::chown(vol.join("base/1/table"), Some(1234), Some(4321)).expect("chown");
        symlink(&outside, vol.join("escape")).expect("symlink");
        symlink("base/1/table", vol.join("rel")).expect("symlink");
        std::fs::hard_link(vol.join("base/1/table"), vol.join("hard")).expect("link");
        let snap = tmp.path().join("snaps/data/2-x");
        copy_tree(&vol, &snap).expect("copy");
        assert!(!tmp.path().join("snaps/data/2-x.partial").exists());
        assert_eq!(
            std::fs::read_to_string(snap.join("base/1/table")).expect("read"),
            "rows"
        );
        let m = std::fs::metadata(snap.join("base/1/table")).expect("stat");
        assert_eq!((m.uid(), m.gid()), (1234, 4321));
        assert_eq!(
            std::fs::metadata(snap.join("base")).expect("stat").mode() & 0o7777,
            0o700
        );
        // Links stay links: the host directory they name is not copied.
        let l = std::fs::symlink_metadata(snap.join("escape")).expect("lstat");
        assert!(l.file_type().is_symlink());
        assert_eq!(
            std::fs::read_link(snap.join("escape")).expect("readlink"),
            outside
        );
        assert!(std::fs::read_link(snap.join("rel")).is_ok());
        let (a, b) = (
            std::fs::metadata(snap.join("hard")).expect("stat"),
            std::fs::metadata(snap.join("base/1/table")).expect("stat"),
        );
        assert_eq!(a.ino(), b.ino(), "hard links stay linked");
        // The copy is independent of the volume.
        std::fs::write(vol.join("base/1/table"), "changed").expect("write");
        assert_eq!(
            std::fs::read_to_string(snap.join("base/1/table")).expect("read"),
            "rows"
        );
        // Restore: the volume holds exactly the snapshot again; the host file is untouched.
        std::fs::write(vol.join("new-file"), "x").expect("write");
        replace_content(&vol, &snap).expect("restore");
        assert_eq!(
            std::fs::read_to_string(vol.join("base/1/table")).expect("read"),
            "rows"
        );
        assert!(!vol.join("new-file").exists());
        assert!(!tmp.path().join(".vol.restore").exists());
        assert!(!tmp.path().join(".vol.replaced").exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).expect("read"),
            "host file"
        );
        // A volume that is itself a link is refused.
        let fake = tmp.path().join("fake");
        symlink(&outside, &fake).expect("symlink");
        assert!(copy_tree(&fake, &tmp.path().join("snaps/fake")).is_err());
    }
}
