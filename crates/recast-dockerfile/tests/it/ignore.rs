//! `.dockerignore` semantics and COPY wildcard sources, on real directories.

use std::path::{Path, PathBuf};

use recast_dockerfile::{Ignore, glob};

fn ignore(text: &str) -> Ignore {
    Ignore::parse(Path::new(".dockerignore"), text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn dockerignore_table() {
    // (patterns, path, is_dir, ignored)
    let cases: &[(&str, &str, bool, bool)] = &[
        ("*.md", "README.md", false, true),
        ("*.md", "docs/README.md", false, false),
        ("**/*.md", "docs/deep/README.md", false, true),
        ("**/*.md", "README.md", false, true),
        ("docs/**", "docs/a/b", false, true),
        ("docs/**", "docs", true, false),
        ("docs/**/x", "docs/x", false, true),
        ("docs/**/x", "docs/a/b/x", false, true),
        ("a**b", "ab", false, true),
        ("a**b", "a/c/b", false, true),
        ("a**b", "acb", false, false),
        ("**", "anything/at/all", false, true),
        // A directory pattern excludes everything below it.
        ("node_modules", "node_modules/x/index.js", false, true),
        ("node_modules", "node_modules", true, true),
        ("node_modules/", "node_modules/x", false, true),
        // Cleaned: leading `/`, `./`, `..` resolved, trailing `/`.
        ("/build", "build/out", false, true),
        ("./build/../dist//", "dist/app", false, true),
        // `?`, classes, negated classes, escapes.
        ("file?.txt", "file1.txt", false, true),
        ("file?.txt", "file10.txt", false, false),
        ("log[0-9]", "log7", false, true),
        ("log[^0-9]", "log7", false, false),
        ("log[^0-9]", "logx", false, true),
        ("\\*star", "*star", false, true),
        ("\\*star", "xstar", false, false),
        ("?", "a/b", false, true),
        // Comments and blank lines; `#` only at the start of a line.
        ("# *.go\n\n  \nmain.go", "main.go", false, true),
        ("# *.go\n", "x.go", false, false),
        // Exceptions, last match wins.
        ("*.md\n!README.md", "README.md", false, false),
        ("*.md\n!README.md", "CHANGES.md", false, true),
        ("*.md\n!README.md\nREADME*", "README.md", false, true),
        ("*\n!src", "src/main.rs", false, false),
        ("*\n!src", "target", true, true),
        ("*\n!src", "target/debug/x", false, true),
        // Re-including a file inside an excluded directory: the directory is walked.
        ("docs\n!docs/keep.md", "docs/keep.md", false, false),
        ("docs\n!docs/keep.md", "docs/other.md", false, true),
        ("docs\n!docs/keep.md", "docs", true, false),
        ("docs\n!docs/*/keep.md", "docs/a", true, false),
        ("docs\n!**/keep.md", "docs", true, false),
        ("docs\n!other/keep.md", "docs", true, true),
        // An exception of a parent re-includes what is below it.
        ("a/b\n!a", "a/b/c", false, false),
        // The context root is never ignored.
        ("*", ".", true, false),
    ];
    let mut failures = Vec::new();
    for (patterns, path, is_dir, want) in cases {
        let got = ignore(patterns).is_ignored(path, *is_dir);
        if got != *want {
            failures.push(format!(
                "{patterns:?} {path:?} dir={is_dir}: want {want}, got {got}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn patterns_are_cleaned() {
    assert_eq!(
        ignore("/a/\n ! ./b/../c \n**/x/").patterns(),
        ["a", "!c", "**/x"]
    );
}

#[test]
fn bad_patterns_are_located_errors() {
    let err = Ignore::parse(Path::new(".dockerignore"), "ok\n  [a-\n!\nx\\\n")
        .err()
        .map(|e| {
            e.iter()
                .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
                .collect::<Vec<_>>()
        });
    assert_eq!(
        err,
        Some(vec![
            "2:3: invalid pattern `[a-`: unterminated `[` character class".to_string(),
            "3:1: `!` excludes nothing".to_string(),
            "4:1: invalid pattern `x\\`: a trailing `\\` escapes nothing".to_string(),
        ])
    );
}

/// A context: a/ (1.txt 2.txt b.md sub/3.txt), site/index.html, .git/config, top.txt.
fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    for f in [
        "a/1.txt",
        "a/2.txt",
        "a/b.md",
        "a/sub/3.txt",
        "site/index.html",
        ".git/config",
        "top.txt",
    ] {
        let p = dir.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap_or(dir.path()))
            .unwrap_or_else(|e| panic!("mkdir: {e}"));
        std::fs::write(&p, f).unwrap_or_else(|e| panic!("write: {e}"));
    }
    dir
}

fn paths(v: &[&str]) -> Vec<PathBuf> {
    v.iter().map(PathBuf::from).collect()
}

#[test]
fn glob_matches_per_segment_sorted() {
    let ctx = context();
    let c = ctx.path();
    let ok = |p: &str| glob(c, p).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(ok("a/*.txt"), paths(&["a/1.txt", "a/2.txt"]));
    assert_eq!(ok("*/*.txt"), paths(&["a/1.txt", "a/2.txt"]));
    assert_eq!(ok("a/?.txt"), paths(&["a/1.txt", "a/2.txt"]));
    assert_eq!(ok("a/[2-9].txt"), paths(&["a/2.txt"]));
    assert_eq!(ok("*"), paths(&[".git", "a", "site", "top.txt"]));
    assert_eq!(ok("a/*/3.txt"), paths(&["a/sub/3.txt"]));
    assert_eq!(ok("site/"), paths(&["site"]));
    assert_eq!(ok("/top.txt"), paths(&["top.txt"]));
    assert_eq!(ok("./a/../top.txt"), paths(&["top.txt"]));
    assert_eq!(ok("."), paths(&["."]));
    assert_eq!(
        glob(c, "a/*.go").map_err(|e| e.to_string()),
        Err("no file in the build context matches `a/*.go`".into())
    );
    assert_eq!(
        glob(c, "missing.txt").map_err(|e| e.to_string()),
        Err("`missing.txt` does not exist in the build context".into())
    );
    assert_eq!(
        glob(c, "../etc/passwd").map_err(|e| e.to_string()),
        Err("`../etc/passwd` is outside the build context".into())
    );
    assert_eq!(
        glob(c, "a/../../x").map_err(|e| e.to_string()),
        Err("`a/../../x` is outside the build context".into())
    );
}

#[test]
fn glob_leaves_out_ignored_paths() {
    let ctx = context();
    let c = ctx.path();
    std::fs::write(
        c.join(".dockerignore"),
        "**/*.md\n.git\na/sub\n!a/sub/3.txt\n",
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    let ig = Ignore::load(c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ig.glob(c, "a/*").map_err(|e| e.to_string()),
        Ok(paths(&["a/1.txt", "a/2.txt", "a/sub"]))
    );
    assert_eq!(
        ig.glob(c, "*").map_err(|e| e.to_string()),
        Ok(paths(&[".dockerignore", "a", "site", "top.txt"]))
    );
    assert_eq!(
        ig.glob(c, "a/b.md").map_err(|e| e.to_string()),
        Err("`a/b.md` is excluded from the build context by .dockerignore".into())
    );
    assert_eq!(
        ig.glob(c, "*/*/3.txt").map_err(|e| e.to_string()),
        Ok(paths(&["a/sub/3.txt"]))
    );
}

#[test]
fn glob_refuses_a_symlink_out_of_the_context() {
    let ctx = context();
    let outside = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    std::fs::write(outside.path().join("secret"), "s").unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(outside.path(), ctx.path().join("out"))
        .unwrap_or_else(|e| panic!("symlink: {e}"));
    assert_eq!(
        glob(ctx.path(), "out/secret").map_err(|e| e.to_string()),
        Err("`out/secret` leaves the build context through a symbolic link".into())
    );
    // A source that is itself a link out of the context is followed when copied: refused too.
    assert_eq!(
        glob(ctx.path(), "out").map_err(|e| e.to_string()),
        Err("`out` leaves the build context through a symbolic link".into())
    );
    // A link that stays inside the context is fine.
    std::fs::create_dir(ctx.path().join("real")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("real", ctx.path().join("current"))
        .unwrap_or_else(|e| panic!("symlink: {e}"));
    assert_eq!(
        glob(ctx.path(), "current").map_err(|e| e.to_string()),
        Ok(paths(&["current"]))
    );
}

#[test]
fn a_dockerfile_specific_ignore_file_wins() {
    let ctx = context();
    let c = ctx.path();
    std::fs::write(c.join(".dockerignore"), "a\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(c.join("app.Dockerfile.dockerignore"), "site\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let ig = Ignore::load_for(c, &c.join("app.Dockerfile")).unwrap_or_else(|e| panic!("{e}"));
    assert!(ig.is_ignored("site/index.html", false));
    assert!(!ig.is_ignored("a/1.txt", false));
    let ig = Ignore::load_for(c, &c.join("Dockerfile")).unwrap_or_else(|e| panic!("{e}"));
    assert!(ig.is_ignored("a/1.txt", false));
    let none = Ignore::load(&c.join("site")).unwrap_or_else(|e| panic!("{e}"));
    assert!(!none.is_ignored("anything", false));
}
