//! The layer rule of `src/lib.rs`, checked on the source text: every
//! top-level module of the crate imports only modules of a lower layer (or
//! itself), so the top-level module graph has no cycle. A reference is
//! `crate::<module>` (also inside `crate::{…}`) or `super::<module>` that
//! reaches the crate root; comments are skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module and its layer: a module may import only modules
/// of a strictly lower layer. A new module needs a row here.
const LAYERS: &[(&str, u32)] = &[
    // Entry points: the command line and `serve`.
    ("cli", 11),
    // Axum handlers, the route table, request logging, listeners.
    ("http", 10),
    // The operations: app state, refresh, journal, webhooks, keys, seed.
    ("service", 9),
    // The provider's token endpoint client.
    ("oauth", 8),
    ("metrics", 8),
    // The SQL of each table, one module per table.
    ("store", 7),
    // The provider catalog and its provider types.
    ("catalog", 6),
    ("discovery", 6),
    ("validate", 5),
    ("policy", 5),
    // The domain error (`http::error` answers it as JSON).
    ("error", 4),
    ("db", 3),
    ("config", 2),
    // Vault, key material, secret newtypes.
    ("crypto", 1),
    ("ratelimit", 0),
    ("template", 0),
    ("files", 0),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file below `src/`: `store/apps.rs` is
/// `["store", "apps"]`, `store/mod.rs` is `["store"]`, `lib.rs` is `[]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first names of the paths inside the braces that open `text`.
fn braced_heads(text: &str) -> Vec<String> {
    let mut depth = 0;
    let mut heads = Vec::new();
    let mut expect_head = true;
    for (i, c) in text.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    expect_head = true;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expect_head = true,
            c if depth == 1 && expect_head && (c.is_alphabetic() || c == '_') => {
                heads.push(ident_at(&text[i..]).to_owned());
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

/// The crate-root names `text` refers to: `crate::x…`, and `super::x`
/// that climbs to the root (second set; in an inline `mod tests` of a
/// top-level file `super::x` is that file's own item, so only top-level
/// module names of it count).
fn root_references(text: &str, path: &[String]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let before = rest[..at].chars().last();
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            if after.starts_with('{') {
                names.extend(braced_heads(after));
            } else {
                names.insert(ident_at(after).to_owned());
            }
        }
        rest = after;
    }
    // `super::` from a file directly below `src/` (or a `mod.rs` one level
    // down) names the crate root.
    let mut supers = BTreeSet::new();
    if path.len() == 1 {
        let mut rest = text;
        while let Some(at) = rest.find("super::") {
            let after = &rest[at + "super::".len()..];
            let name = ident_at(after);
            if !name.is_empty() && name != "super" {
                supers.insert(name.to_owned());
            }
            rest = after;
        }
    }
    names.remove("");
    (names, supers)
}

/// Top-level module -> the top-level modules it refers to.
fn module_graph() -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let root = src_dir();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(f.strip_prefix(&root).unwrap()).first().cloned())
        .collect();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        let path = module_path(rel);
        let text = without_comments(&std::fs::read_to_string(file).unwrap());
        let Some(top) = path.first() else {
            continue; // lib.rs and main.rs: declarations and the public paths only
        };
        let edges = graph.entry(top.clone()).or_default();
        let (names, supers) = root_references(&text, &path);
        edges.extend(supers.into_iter().filter(|n| n != top && tops.contains(n)));
        for name in names {
            if &name == top {
                continue;
            }
            if tops.contains(&name) {
                edges.insert(name);
            } else {
                problems.push(format!(
                    "{}: crate::{name} is not a top-level module; use the path \
                     of the module that defines it",
                    rel.display()
                ));
            }
        }
    }
    (graph, problems)
}

/// A cycle of the graph, if it has one, as `a -> b -> … -> a`.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn the_top_level_modules_have_no_import_cycle() {
    let (graph, _) = module_graph();
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn every_layer_imports_only_layers_below_it() {
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let (graph, mut problems) = module_graph();
    for (module, uses) in &graph {
        let Some(&own) = layers.get(module.as_str()) else {
            problems.push(format!("src/{module}: not in LAYERS of tests/layers.rs"));
            continue;
        };
        for used in uses {
            match layers.get(used.as_str()) {
                Some(&below) if below < own => {}
                Some(&above) => problems.push(format!(
                    "{module} (layer {own}) imports {used} (layer {above}), \
                     which is not below it"
                )),
                None => problems.push(format!("src/{used}: not in LAYERS of tests/layers.rs")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_references_and_cycles() {
    let text = "use crate::store::apps;\nuse crate::{db::Db, vault};\nlet x = $crate::no;";
    let (refs, _) = root_references(text, &["http".to_owned(), "x".to_owned()]);
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["db", "store", "vault"]
    );
    let (_, from_top) = root_references("use super::config;", &["cli".to_owned()]);
    assert!(from_top.contains("config"));
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "a"]);
}

/// The `crate::http::<module>` paths of `text`.
fn http_modules(text: &str) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::http::") {
        let after = &rest[at + "crate::http::".len()..];
        if after.starts_with('{') {
            modules.extend(braced_heads(after));
        } else {
            modules.insert(ident_at(after).to_owned());
        }
        rest = after;
    }
    modules
}

/// The commands call the operations in `service/`, which return the domain
/// error: no handler, extractor or `ApiError` between a command and its
/// answer. Only the process (`cli/serve.rs`) starts the HTTP listeners.
#[test]
fn commands_call_service_and_never_http_handlers() {
    let text = |rel: &str| without_comments(&std::fs::read_to_string(src_dir().join(rel)).unwrap());
    let commands = http_modules(&text("cli/mod.rs"));
    let allowed = BTreeSet::from(["logging", "server", "openapi"].map(String::from));
    assert!(
        commands.is_subset(&allowed),
        "cli/mod.rs reaches into http: {:?} (call service/ instead)",
        commands.difference(&allowed).collect::<Vec<_>>()
    );
    assert!(text("cli/mod.rs").contains("crate::service::connections::"));
    let mut files = Vec::new();
    rust_files(&src_dir().join("service"), &mut files);
    for file in files {
        let body = without_comments(&std::fs::read_to_string(&file).unwrap());
        assert!(
            !body.contains("ApiError") && !body.contains("axum::"),
            "{}: service/ returns the domain error and knows no HTTP",
            file.display()
        );
    }
}

/// Every SQL statement is in `store/` (one module per table), apart from
/// the pool's own in `db.rs` (schema migration, ping).
#[test]
fn every_sql_statement_is_under_store() {
    let root = src_dir();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let outside: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(root.join("store")) && !f.ends_with("db.rs"))
        .filter(|f| {
            let text = without_comments(&std::fs::read_to_string(f).unwrap());
            text.contains("sqlx::query")
        })
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(outside.is_empty(), "SQL outside store/: {outside:?}");
}
