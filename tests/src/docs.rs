//! The repository's Markdown as the docs test reads it: links outside code,
//! heading anchors as GitHub makes them, and the shell blocks marked to run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The line that marks the next ```sh block as one the docs test runs.
pub const RUN_MARK: &str = "<!-- docs test: runs -->";

/// Every Markdown page a user reads: README.md, docs/ (recursively) and the
/// catalog's schema.
pub fn markdown_pages() -> Vec<PathBuf> {
    let root = crate::workspace_root();
    let mut pages = vec![
        root.join("README.md"),
        root.join("token-service/providers/README.md"),
    ];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    pages.sort();
    pages
}

/// A link as written: its target and the line it is on.
#[derive(Debug)]
pub struct Link {
    pub target: String,
    pub line: usize,
}

/// Lines outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut in_fence = false;
    let mut prose = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence {
            prose.push((i + 1, line));
        }
    }
    prose
}

/// `[label](target)` links outside code blocks and inline code.
pub fn links(text: &str) -> Vec<Link> {
    let mut found = Vec::new();
    for (line_no, line) in prose_lines(text) {
        let mut in_code = false;
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '`' => in_code = !in_code,
                ']' if !in_code && chars.get(i + 1) == Some(&'(') => {
                    let rest: String = chars[i + 2..].iter().collect();
                    if let Some(end) = rest.find(')') {
                        let target = rest[..end].trim().to_string();
                        if !target.is_empty() && !target.contains(' ') {
                            found.push(Link {
                                target,
                                line: line_no,
                            });
                        }
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
    found
}

/// GitHub's anchor of a heading: lowercase, letters, digits, `-` and `_`
/// kept, spaces to `-`, everything else dropped.
pub fn slug(heading: &str) -> String {
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

/// The anchors of a page's headings, repeated ones numbered as GitHub does
/// (`metrics`, `metrics-1`, …).
pub fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The ```sh blocks right after a [`RUN_MARK`] line, with the line of the
/// mark.
pub fn marked_shell_blocks(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != RUN_MARK {
            continue;
        }
        let open = lines.get(i + 1).map(|l| l.trim());
        assert_eq!(
            open,
            Some("```sh"),
            "line {}: {RUN_MARK} must be followed by a ```sh block",
            i + 1
        );
        let body: Vec<&str> = lines[i + 2..]
            .iter()
            .take_while(|l| l.trim() != "```")
            .copied()
            .collect();
        blocks.push((i + 1, body.join("\n")));
    }
    blocks
}

/// A link target resolved against the page it is on: the file and the
/// anchor (None for external links).
pub fn resolve(page: &Path, target: &str) -> Option<(PathBuf, Option<String>)> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a.to_string())),
        None => (target, None),
    };
    let file = if path.is_empty() {
        page.to_path_buf()
    } else {
        page.parent().expect("a page has a folder").join(path)
    };
    Some((file, anchor))
}
