//! Build-step layers round trip through a real overlay mount: a layer unpacked in overlay
//! format is a lower directory, a step changes the merged view, the upper directory is written
//! as a layer, and applying base + that layer gives exactly the merged view.

#[path = "support/rawtar.rs"]
mod rawtar;

use rawtar::{E, layer};
use recast_root::{Root, unpack_layer, unpack_layer_as_overlay, write_diff};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let what = if m.is_dir() {
                stack.push(p.clone());
                String::new()
            } else if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).expect("link").display())
            } else {
                String::from_utf8_lossy(&fs::read(&p).expect("read")).into_owned()
            };
            let rel = p.strip_prefix(dir).expect("inside").to_owned();
            out.insert(
                rel,
                format!("{:o} {}:{} {what}", m.mode(), m.uid(), m.gid()),
            );
        }
    }
    out
}

fn sh(script: &str, dir: &Path) {
    let o = Command::new("sh")
        .args(["-euc", script])
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn an_overlay_upper_becomes_the_layer_that_reproduces_the_merged_view() {
    let t = tempfile::tempdir().expect("tmp");
    let [lower, upper, work, merged, flat] =
        ["lower", "upper", "work", "merged", "flat"].map(|d| {
            let p = t.path().join(d);
            fs::create_dir(&p).expect("mkdir");
            p
        });
    let base = layer(&[
        E::Dir("etc".into()),
        E::File("etc/keep".into(), "keep"),
        E::File("etc/change".into(), "old"),
        E::File("etc/remove".into(), "bye"),
        E::Dir("var".into()),
        E::Dir("var/cache".into()),
        E::File("var/cache/a".into(), "a"),
        E::File("var/cache/b".into(), "b"),
        E::Dir("gone".into()),
        E::File("gone/x".into(), "x"),
    ]);
    // A lower layer that itself carries whiteouts, in overlay format.
    let second = layer(&[
        E::File("etc/.wh.keep".into(), ""),
        E::File("etc/keep2".into(), "k2"),
    ]);
    let lower2 = t.path().join("lower2");
    fs::create_dir(&lower2).expect("mkdir");
    unpack_layer_as_overlay(&Root::open(&lower).expect("root"), &base[..]).expect("base");
    unpack_layer_as_overlay(&Root::open(&lower2).expect("root"), &second[..]).expect("second");
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={},redirect_dir=off,metacopy=off",
        lower2.display(),
        lower.display(),
        upper.display(),
        work.display()
    );
    let m = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .output()
        .expect("mount");
    assert!(
        m.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&m.stderr)
    );
    assert!(
        !merged.join("etc/keep").exists(),
        "the lower whiteout hides the file"
    );
    // What a build step does.
    sh(
        "echo new > etc/change; rm etc/remove; echo hi > etc/added; rm -rf var/cache; \
         mkdir var/cache; echo c > var/cache/c; rm -rf gone; ln -s /etc/added link; \
         ln etc/added etc/hard; mkdir -p usr/local/bin; chmod 4755 etc/added; chown 7:8 etc/change",
        &merged,
    );
    let want = tree(&merged);
    let mut tar = Vec::new();
    let stats = write_diff(&upper, 0, &[], &mut tar);
    let _ = Command::new("umount").arg(&merged).status();
    let stats = stats.expect("diff");
    assert!(
        stats.whiteouts >= 3,
        "remove, gone and the opaque cache: {stats:?}"
    );
    let root = Root::open(&flat).expect("root");
    unpack_layer(&root, &base[..]).expect("base");
    unpack_layer(&root, &second[..]).expect("second");
    unpack_layer(&root, &tar[..]).expect("diff");
    assert_eq!(tree(&flat), want);
    // The same upper gives the same bytes: the layer is reproducible.
    let mut again = Vec::new();
    write_diff(&upper, 0, &[], &mut again).expect("diff");
    assert_eq!(again, tar);
}
