//! Integration tests of the spec language: invalid specs with their exact errors, valid specs
//! with their exact model, and a mutation fuzzer.

mod fuzz;
mod invalid;
mod valid;

use std::path::Path;

/// A project directory with the given spec files and a build context (`bin/app`, `static/`).
pub fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("bin")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("static")).expect("mkdir");
    std::fs::write(dir.path().join("bin/app"), b"#!app").expect("write");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write spec");
    }
    dir
}

/// Every diagnostic as `file:line:col: message` plus ` | hint: …` when there is a hint.
pub fn render(dir: &Path) -> Vec<String> {
    match recast_spec::load(dir) {
        Ok(_) => Vec::new(),
        Err(diags) => diags
            .iter()
            .map(|d| {
                let file = d
                    .file
                    .file_name()
                    .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
                let mut s = format!("{file}:{}:{}: {}", d.line, d.column, d.message);
                if let Some(h) = &d.hint {
                    s.push_str(" | hint: ");
                    s.push_str(h);
                }
                s.replace(&dir.display().to_string(), "DIR")
            })
            .collect(),
    }
}
