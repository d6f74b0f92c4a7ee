//! Crafted layers against a real directory tree: whatever a layer says, no byte outside the
//! root changes. A canary directory beside the root is what an escape would hit.

use recast_root::{Root, unpack_layer};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[path = "support/rawtar.rs"]
mod rawtar;
use rawtar::{E, layer};

/// Everything under `dir` (not following links), except `skip`: path → kind, mode, size, content.
fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p == skip {
                continue;
            }
            let m = fs::symlink_metadata(&p).expect("lstat");
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).expect("readlink").display())
            } else {
                String::from_utf8_lossy(&fs::read(&p).expect("read")).into_owned()
            };
            out.insert(p, format!("{:o} {} {what}", m.mode(), m.nlink()));
        }
    }
    out
}

struct World {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    canary: PathBuf,
}

fn world() -> World {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().to_owned();
    let root = base.join("root");
    let canary = base.join("canary");
    fs::create_dir_all(canary.join("dir")).expect("mkdir");
    fs::write(canary.join("file"), "precious").expect("write");
    fs::write(canary.join("dir/file"), "precious too").expect("write");
    fs::create_dir(&root).expect("mkdir root");
    World {
        _tmp: tmp,
        base,
        root,
        canary,
    }
}

fn apply(w: &World, entries: &[E]) -> std::io::Result<()> {
    let root = Root::open(&w.root)?;
    unpack_layer(&root, &layer(entries)[..])
}

#[test]
fn crafted_layers_never_touch_the_host() {
    let w = world();
    let c = w.canary.display().to_string();
    let rel_c = format!("../../../../../../../..{c}");
    let before = snapshot(&w.base, &w.root);
    let cases: Vec<(&str, Vec<E>, bool)> = vec![
        // (what, layer, refused)
        (
            "absolute whiteout",
            vec![E::File(format!("{c}/.wh.file"), "")],
            false,
        ),
        (
            "`..` whiteout",
            vec![E::File("../canary/.wh.file".into(), "")],
            true,
        ),
        (
            "deep `..` whiteout",
            vec![E::File(format!("a/{rel_c}/.wh.file"), "")],
            true,
        ),
        (
            "whiteout through an absolute symlink",
            vec![
                E::Sym("y".into(), c.clone()),
                E::File("y/.wh.file".into(), ""),
            ],
            false,
        ),
        (
            "whiteout through a relative symlink",
            vec![
                E::Sym("z".into(), rel_c.clone()),
                E::File("z/.wh.dir".into(), ""),
            ],
            false,
        ),
        (
            "opaque directory through a symlink",
            vec![
                E::Sym("o".into(), c.clone()),
                E::File("o/.wh..wh..opq".into(), ""),
            ],
            false,
        ),
        (
            "opaque root",
            vec![E::File("/.wh..wh..opq".into(), "")],
            false,
        ),
        (
            "whiteout of `..`",
            vec![E::File("a/.wh..".into(), "")],
            true,
        ),
        ("`..` entry", vec![E::File("../escaped".into(), "x")], true),
        (
            "absolute entry",
            vec![E::File(format!("{c}/file"), "overwritten")],
            false,
        ),
        (
            "file through a symlinked parent",
            vec![
                E::Sym("p".into(), c.clone()),
                E::File("p/file".into(), "overwritten"),
            ],
            false,
        ),
        (
            "hard link to a host file",
            vec![E::Hard("h".into(), format!("{c}/dir/file"))],
            true,
        ),
        (
            "hard link through a symlink",
            vec![
                E::Sym("q".into(), c.clone()),
                E::Hard("h2".into(), "q/dir/file".into()),
            ],
            true,
        ),
        (
            "symlink replaced by a file",
            vec![
                E::Sym("s".into(), format!("{c}/file")),
                E::File("s".into(), "x"),
            ],
            false,
        ),
        ("device outside /dev", vec![E::Dev("mem".into())], true),
    ];
    for (what, entries, refused) in cases {
        let r = apply(&w, &entries);
        assert_eq!(r.is_err(), refused, "{what}: {r:?}");
        if let Err(e) = r {
            assert!(
                e.to_string().contains("entry"),
                "{what}: error names the entry: {e}"
            );
        }
        assert_eq!(
            snapshot(&w.base, &w.root),
            before,
            "{what}: the host changed"
        );
    }
    // What landed inside the root is where a container would see it.
    assert_eq!(
        fs::read(w.root.join(&c[1..]).join("file")).expect("in root"),
        b"overwritten"
    );
    assert_eq!(fs::read(w.root.join("s")).expect("file"), b"x");
}

#[test]
fn whiteouts_and_overwrites_behave_as_oci_says() {
    let w = world();
    apply(
        &w,
        &[
            E::Dir("etc".into()),
            E::File("etc/a".into(), "a"),
            E::File("etc/b".into(), "b"),
            E::Dir("var".into()),
            E::File("var/old".into(), "old"),
            E::Dev("dev/null".into()),
            E::Setuid("bin/su".into()),
        ],
    )
    .expect("base layer");
    apply(
        &w,
        &[
            E::File("etc/.wh.a".into(), ""),
            E::File("var/new".into(), "new"),
            E::File("var/.wh..wh..opq".into(), ""),
            E::Hard("etc/b2".into(), "/etc/b".into()),
        ],
    )
    .expect("upper layer");
    assert!(!w.root.join("etc/a").exists(), "whiteout deletes");
    assert_eq!(fs::read(w.root.join("etc/b2")).expect("link"), b"b");
    assert!(
        !w.root.join("var/old").exists(),
        "opaque hides the lower layer"
    );
    assert!(
        w.root.join("var/new").exists(),
        "but not the same layer's entries"
    );
    assert!(
        !w.root.join("dev/null").exists(),
        "devices under /dev are runc's"
    );
    let m = fs::metadata(w.root.join("bin/su")).expect("setuid file");
    assert_eq!(
        m.permissions().mode() & 0o7777,
        0o4755,
        "modes are the image's"
    );
}

#[test]
fn read_file_stays_inside_and_is_bounded() {
    let w = world();
    apply(
        &w,
        &[
            E::Sym("etc".into(), c_of(&w)),
            E::Sym("passwd".into(), "/dev/zero".into()),
            E::File("big".into(), "0123456789"),
            E::Dir("d".into()),
        ],
    )
    .expect("layer");
    let root = Root::open(&w.root).expect("root");
    // `etc -> <canary>` resolves inside the root, where there is no such file.
    assert!(root.read_file("/etc/file", 100).is_err());
    // A link to a device is not followed out of the root: /dev/zero does not exist in it.
    assert!(root.read_file("/passwd", 100).is_err());
    let e = root.read_file("/big", 5).expect_err("bounded");
    assert!(e.to_string().contains("larger than 5 bytes"), "{e}");
    let e = root.read_file("/d", 5).expect_err("a directory");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert_eq!(root.read_file("big", 10).expect("fits"), b"0123456789");
}

fn c_of(w: &World) -> String {
    w.canary.display().to_string()
}

/// Seeded fuzzing: random layers built from escape-prone pieces, applied in sequence; none may
/// change anything outside the root or panic.
#[test]
fn fuzzed_layers_never_escape() {
    let w = world();
    let c = c_of(&w);
    let names = [
        "a",
        "b",
        "y",
        "..",
        ".",
        ".wh.a",
        ".wh.y",
        ".wh..wh..opq",
        ".wh..",
        "dev",
        &c[1..],
    ];
    let targets = [
        c.clone(),
        format!("{c}/file"),
        "../../../../canary".to_string(),
        "/".into(),
        "a".into(),
        "..".into(),
        "/y/a".into(),
        "/proc/self/root".into(),
    ];
    let before = snapshot(&w.base, &w.root);
    let mut seed: u64 = 0x5eed_cafe_f00d_0001;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for round in 0..400 {
        let mut entries = Vec::new();
        for _ in 0..1 + next(10) {
            let depth = 1 + next(3);
            let mut p = String::new();
            if next(4) == 0 {
                p.push('/');
            }
            for i in 0..depth {
                if i > 0 {
                    p.push('/');
                }
                p.push_str(names[next(names.len())]);
            }
            let t = targets[next(targets.len())].clone();
            entries.push(match next(6) {
                0 => E::Dir(p),
                1 | 2 => E::File(p, "fuzz"),
                3 => E::Sym(p, t),
                4 => E::Hard(p, t),
                _ => E::Dev(p),
            });
        }
        let _ = apply(&w, &entries);
        assert_eq!(
            snapshot(&w.base, &w.root),
            before,
            "round {round} changed the host: {entries:?}"
        );
    }
}
