//! The layout table of docs/development.md is where a newcomer finds a file's room: every
//! source, test and bench file must be named there, and every path it names must exist.

use std::fs;
use std::path::{Path, PathBuf};

/// The text of the "Layout" section, up to the next heading.
fn layout_section() -> String {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/development.md"))
        .expect("docs/development.md");
    let start = doc.find("## Layout").expect("a Layout section");
    let rest = &doc[start + 1..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The words the section writes in backticks.
fn quoted(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn files_below(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_below(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// How the table names a file: `name.rs`, or the module name alone (scenario modules), or its
/// folder for a `main.rs` / `mod.rs`.
fn named(file: &Path, quoted: &[String]) -> bool {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
    let folder = file
        .parent()
        .and_then(|p| p.file_name())
        .map(|f| format!("{}/", f.to_string_lossy()))
        .unwrap_or_default();
    quoted.iter().any(|q| {
        let q = q.trim_end_matches("/");
        q == name
            || q == stem
            || q.ends_with(&format!("/{name}"))
            || ((name == "main.rs" || name == "mod.rs") && format!("{q}/").ends_with(&folder))
    })
}

#[test]
fn every_source_test_and_bench_file_has_a_row_and_every_named_path_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let section = layout_section();
    let quoted = quoted(&section);

    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        files_below(&root.join(dir), &mut files);
    }
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !named(f, &quoted))
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files the layout table of docs/development.md does not name: {missing:?}"
    );

    let stale: Vec<_> = quoted
        .iter()
        .filter(|q| {
            ["src/", "tests/", "benches/"]
                .iter()
                .any(|p| q.starts_with(p))
        })
        .filter(|q| !root.join(q.trim_end_matches('/')).exists())
        .collect();
    assert!(
        stale.is_empty(),
        "paths the layout table names that do not exist: {stale:?}"
    );
}
