//! The documentation stands on its own: every relative link in README.md, ARCHITECTURE.md,
//! BENCHMARKS.md and docs/ leads to a file of the repository (and, with `#anchor`, to a
//! heading in it), and no link leaves the repository by a relative or absolute file path.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::harness::repo_root;

/// The Markdown files checked: the top-level documents and everything under docs/.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "BENCHMARKS.md"]
        .iter()
        .map(|f| root.join(f))
        .filter(|p| p.exists())
        .collect();
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("docs/ exists")
            .map(|e| e.expect("entry"))
        {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Markdown text without its fenced code blocks and inline code, where `[x](y)` is no link.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop `inline code` spans.
        let mut inside = false;
        for c in line.chars() {
            if c == '`' {
                inside = !inside;
            } else if !inside {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// The targets of inline links `[text](target)` and of reference definitions `[x]: target`.
fn links(text: &str) -> Vec<String> {
    let text = prose(text);
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            out.push(target.trim_matches(|c| c == '<' || c == '>').to_owned());
        }
    }
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(after) = line.strip_prefix('[')
            && let Some((_, target)) = after.split_once("]: ")
        {
            out.push(target.split_whitespace().next().unwrap_or("").to_owned());
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (a repeated heading gets `-1`, `-2`…).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let heading = heading.replace('`', "");
        let base = slug(&heading);
        let mut anchor = base.clone();
        let mut n = 0;
        while out.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        out.insert(anchor);
    }
    out
}

/// `path` with `.` and `..` resolved without the filesystem; `None` if it climbs above `/`.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// What is wrong with each broken link in the documents under `root`.
fn broken_links(root: &Path) -> Vec<String> {
    let root = root.canonicalize().expect("the repository");
    let mut broken = Vec::new();
    for doc in documents(&root) {
        let text = std::fs::read_to_string(&doc).expect("a document");
        let name = doc
            .strip_prefix(&root)
            .expect("in the repository")
            .display()
            .to_string();
        for target in links(&text) {
            if target.is_empty() {
                broken.push(format!("{name}: an empty link"));
                continue;
            }
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            if target.starts_with('/') || target.starts_with("file:") {
                broken.push(format!("{name}: `{target}` leaves the repository"));
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() {
                doc.clone()
            } else {
                match normalize(&doc.parent().expect("a folder").join(file)) {
                    Some(p) if p.starts_with(&root) => p,
                    _ => {
                        broken.push(format!("{name}: `{target}` leaves the repository"));
                        continue;
                    }
                }
            };
            if !path.exists() {
                broken.push(format!("{name}: `{target}`: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                let text = if path.is_file() {
                    std::fs::read_to_string(&path).unwrap_or_default()
                } else {
                    String::new()
                };
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{name}: `{target}`: no heading with this anchor"));
                }
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_documentation_resolves() {
    let broken = broken_links(&repo_root());
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_check_finds_what_it_should() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("docs")).expect("docs/");
    std::fs::write(
        dir.path().join("docs/a.md"),
        "# A title\n\n## Second `part`\n\n[ok](../README.md#top) [ok](#second-part) \
         [ok](https://example.com) `[code](nowhere.md)`\n\n[gone](b.md) [anchor](#nope) \
         [out](../../x.md) [abs](/etc/passwd)\n\n[ref]: missing.md\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("README.md"),
        "# Top\n[docs](docs/a.md#a-title) [beside](../elsewhere/SPEC.md)\n",
    )
    .expect("write");
    let broken = broken_links(dir.path());
    let expected = [
        "`b.md`: no such file",
        "`#nope`: no heading",
        "`../../x.md` leaves the repository",
        "`../elsewhere/SPEC.md` leaves the repository",
        "`/etc/passwd` leaves the repository",
        "`missing.md`: no such file",
    ];
    for e in expected {
        assert!(broken.iter().any(|b| b.contains(e)), "{e} in {broken:#?}");
    }
    assert_eq!(broken.len(), expected.len(), "{broken:#?}");
}
