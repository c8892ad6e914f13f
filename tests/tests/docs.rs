//! The README and docs/ as a user reads them: every relative link and anchor
//! leads somewhere, the README stays short, and the shell blocks marked with
//! `<!-- docs test: runs -->` run as shown.

use authstamp_e2e::docs::{anchors, links, markdown_pages, marked_shell_blocks, resolve, slug};
use authstamp_e2e::{authstamp_bin, workspace_root};
use std::process::Command;

const README_MAX_LINES: usize = 250;

fn relative(path: &std::path::Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let root = workspace_root().canonicalize().expect("workspace root");
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in markdown_pages() {
        let text = std::fs::read_to_string(&page).expect("read page");
        for link in links(&text) {
            let Some((file, anchor)) = resolve(&page, &link.target) else {
                continue;
            };
            checked += 1;
            let at = format!("{}:{} ({})", relative(&page), link.line, link.target);
            let Ok(file) = file.canonicalize() else {
                broken.push(format!("{at}: no such file"));
                continue;
            };
            if !file.starts_with(&root) {
                broken.push(format!("{at}: outside the repository"));
                continue;
            }
            if let Some(anchor) = anchor {
                let target = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&target).contains(&anchor) {
                    broken.push(format!("{at}: no heading with anchor #{anchor}"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked > 30,
        "only {checked} relative links found: is the parser broken?"
    );
}

#[test]
fn the_readme_stays_short() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, at most {README_MAX_LINES}: move detail to docs/"
    );
}

#[test]
fn the_marked_shell_blocks_run_as_shown() {
    let bin_dir = authstamp_bin().parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    for page in markdown_pages() {
        let text = std::fs::read_to_string(&page).expect("read page");
        for (line, script) in marked_shell_blocks(&text) {
            let data_dir = tempfile::tempdir().expect("temp dir");
            let out = Command::new("bash")
                .args(["-euo", "pipefail", "-c", &script])
                .current_dir(workspace_root())
                .env("PATH", &path)
                .env("AUTHSTAMP_DATA_DIR", data_dir.path())
                .output()
                .expect("run bash");
            assert!(
                out.status.success(),
                "{}:{line}: the block failed ({}):\n{script}\nstdout:\n{}\nstderr:\n{}",
                relative(&page),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !out.stdout.is_empty(),
                "{}:{line}: the block printed nothing:\n{script}",
                relative(&page)
            );
            ran += 1;
        }
    }
    assert!(ran >= 2, "only {ran} marked blocks ran");
}

#[test]
fn the_parser_sees_links_outside_code_and_numbers_repeated_headings() {
    let page =
        "# Metrics\n## Metrics\n[a](b.md#x) `[c](d.md)`\n```\n[e](f.md)\n# not a heading\n```\n";
    let found: Vec<String> = links(page).into_iter().map(|l| l.target).collect();
    assert_eq!(found, ["b.md#x"]);
    assert_eq!(anchors(page), ["metrics", "metrics-1"]);
    assert_eq!(
        slug("What the filter costs: `make bench`"),
        "what-the-filter-costs-make-bench"
    );
    assert_eq!(
        slug("The filter's cache, coalescing and 401s"),
        "the-filters-cache-coalescing-and-401s"
    );
}

#[test]
fn every_makefile_target_describes_itself_and_no_comment_names_an_issue() {
    let makefile = std::fs::read_to_string(workspace_root().join("Makefile")).expect("Makefile");
    let mut undescribed = Vec::new();
    for (i, line) in makefile.lines().enumerate() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let is_rule = !name.is_empty()
            && !rest.starts_with('=')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
        if is_rule && !name.starts_with('.') && !rest.contains(" ## ") {
            undescribed.push(format!("line {}: {name}", i + 1));
        }
        assert!(
            !(line.trim_start().starts_with('#') && line.to_lowercase().contains("issue ")),
            "Makefile line {}: comments say what, not which issue: {line}",
            i + 1
        );
    }
    assert!(
        undescribed.is_empty(),
        "targets without a `## ` description (make help lists only those with one):\n{}",
        undescribed.join("\n")
    );
}

/// Not root and promtool missing: scripts/install-deps.sh stops at once
/// and names the one command that installs it.
#[test]
fn the_installer_prints_the_one_command_when_it_cannot_install() {
    let bin = tempfile::tempdir().expect("temp dir");
    let present = [
        "bash",
        "cargo",
        "rustup",
        "python3",
        "curl",
        "docker-compose",
        "openssl",
        "initdb",
        "node",
        "ls",
        "grep",
    ];
    for name in present {
        let found = Command::new("bash")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .expect("bash");
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        if !path.is_empty() {
            std::os::unix::fs::symlink(&path, bin.path().join(name)).expect("symlink");
        }
    }
    // Not root: `id -u` answers 1000.
    let id = bin.path().join("id");
    std::fs::write(&id, "#!/bin/sh\necho 1000\n").expect("fake id");
    Command::new("chmod")
        .arg("755")
        .arg(&id)
        .status()
        .expect("chmod");
    let out = Command::new(workspace_root().join("scripts/install-deps.sh"))
        .arg("test")
        .env("PATH", bin.path())
        .output()
        .expect("run the installer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("install with:")
            && stderr.contains("apt-get install -y")
            && stderr.contains("prometheus"),
        "{stderr}"
    );
}
