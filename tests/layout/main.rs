//! The house rules the layout must keep, checked on every test run:
//! - the node agent links no Kubernetes or JSON-schema crate;
//! - no production source file is over 600 lines;
//! - no module imports one that imports it back (a module and its own submodules count as one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Source roots of the crates that ship (tests, benches and test helpers aside).
const PRODUCTION_ROOTS: &[&str] = &[
    "protocol/src",
    "mqtt/src",
    "crds/src",
    "controller/src",
    "controller/core/src",
    "controller/compress/src",
    "node-agent/src",
];

const MAX_LINES: usize = 600;

#[test]
fn the_agent_links_no_kubernetes_and_no_schema_crates() {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "edgefleet-agent",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}"])
        .current_dir(workspace())
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    let crates: BTreeSet<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(crates.contains("rumqttc"), "not the agent's tree:\n{tree}");
    let forbidden: Vec<&&str> = crates
        .iter()
        .filter(|name| {
            name.starts_with("kube")
                || name.starts_with("k8s-openapi")
                || name.starts_with("jsonschema")
                || name.starts_with("schemars")
        })
        .collect();
    assert!(
        forbidden.is_empty(),
        "edgefleet-agent links {forbidden:?}; devices must not carry the control plane"
    );
}

#[test]
fn no_production_file_is_over_the_limit() {
    let mut too_long = Vec::new();
    for root in PRODUCTION_ROOTS {
        for file in rust_files(&workspace().join(root)) {
            if is_test_only(&file) {
                continue;
            }
            let lines = std::fs::read_to_string(&file)
                .expect("readable")
                .lines()
                .count();
            if lines > MAX_LINES {
                too_long.push(format!("{} ({lines} lines)", file.display()));
            }
        }
    }
    assert!(
        too_long.is_empty(),
        "split these files (at most {MAX_LINES} lines each): {too_long:#?}"
    );
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mut circles = Vec::new();
    for root in PRODUCTION_ROOTS {
        let files = module_graph(&workspace().join(root));
        // each file, and each top-level module with everything under it
        for graph in [files.clone(), top_level(&files)] {
            for (from, targets) in &graph {
                for to in targets {
                    if from < to && graph.get(to).is_some_and(|back| back.contains(from)) {
                        circles.push(format!("{root}: {} <-> {}", from.join("::"), to.join("::")));
                    }
                }
            }
        }
    }
    assert!(circles.is_empty(), "module circles: {circles:#?}");
}

/// The graph between top-level modules (`serve`, `install`, …), each standing for its files.
fn top_level(
    graph: &BTreeMap<ModulePath, BTreeSet<ModulePath>>,
) -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
    let head = |m: &ModulePath| m.iter().take(1).cloned().collect::<ModulePath>();
    let mut top: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
    for (from, targets) in graph {
        let entry = top.entry(head(from)).or_default();
        entry.extend(targets.iter().map(head).filter(|t| *t != head(from)));
    }
    top
}

/// The checker's own rules, on a made-up crate.
#[test]
fn the_circle_check_sees_crate_super_and_grouped_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("serve")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "mod serve;\nmod offload;\n").expect("write");
    std::fs::write(
        src.join("offload.rs"),
        "use crate::{tensor, serve::infer::Request};\n",
    )
    .expect("write");
    std::fs::write(src.join("serve/mod.rs"), "mod infer;\n").expect("write");
    std::fs::write(
        src.join("serve/infer.rs"),
        "use super::State;\nuse super::super::offload::Marker;\n#[cfg(test)]\nuse crate::tensor;\n",
    )
    .expect("write");
    std::fs::write(src.join("tensor.rs"), "").expect("write");
    let graph = module_graph(src);
    let path = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        graph[&path("offload")],
        BTreeSet::from([path("tensor"), path("serve::infer")])
    );
    // `super::State` is the parent (containment, not an import); test-only code is ignored
    assert_eq!(
        graph[&path("serve::infer")],
        BTreeSet::from([path("offload")])
    );
}

type ModulePath = Vec<String>;

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn is_test_only(file: &Path) -> bool {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "tests.rs"
        || name == "testutil.rs"
        || file.components().any(|c| c.as_os_str() == "tests")
}

/// The module a file defines, relative to the crate root; `None` for binary roots.
fn module_of(src: &Path, file: &Path) -> Option<ModulePath> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") || parts == ["main"] {
        return None;
    }
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    Some(parts)
}

/// Module → modules it names through `crate::`, `super::` or `self::` paths, ancestors and
/// descendants left out (they are one unit), test code left out.
fn module_graph(src: &Path) -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
    let files: Vec<(PathBuf, ModulePath)> = rust_files(src)
        .into_iter()
        .filter(|f| !is_test_only(f))
        .filter_map(|f| module_of(src, &f).map(|m| (f, m)))
        .collect();
    let modules: BTreeSet<ModulePath> = files.iter().map(|(_, m)| m.clone()).collect();
    let mut graph = BTreeMap::new();
    for (file, module) in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut targets = BTreeSet::new();
        for path in paths_in(code) {
            let Some(resolved) = resolve(module, &path, &modules) else {
                continue;
            };
            let related = resolved.starts_with(module) || module.starts_with(&resolved);
            if !related {
                targets.insert(resolved);
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// Every `crate::…`, `super::…` and `self::…` path, with `{a, b::c}` groups expanded.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            let boundary =
                at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
            if !boundary || (at >= 2 && &code[at - 2..at] == "::") {
                continue;
            }
            let head = start.trim_end_matches("::").to_string();
            expand(&code[at + start.len()..], vec![head], &mut paths);
        }
    }
    paths
}

fn expand(rest: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    let mut rest = rest;
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut end = group.len();
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let mut depth = 0;
            let mut item_start = 0;
            let inner = &group[..end];
            for (i, c) in inner.char_indices().chain([(inner.len(), ',')]) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(inner[item_start..i].trim(), path.clone(), out);
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        let ident_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if ident_len == 0 {
            break;
        }
        path.push(rest[..ident_len].to_string());
        rest = &rest[ident_len..];
        match rest.strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    out.push(path);
}

/// The deepest existing module a path names, seen from `module`.
fn resolve(
    module: &ModulePath,
    path: &[String],
    modules: &BTreeSet<ModulePath>,
) -> Option<ModulePath> {
    let mut base: ModulePath = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("self") => {
            base = module.clone();
            rest = &path[1..];
        }
        Some("super") => {
            base = module.clone();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut resolved = base.clone();
    for segment in rest {
        let mut next = resolved.clone();
        next.push(segment.clone());
        if modules.contains(&next) {
            resolved = next;
        } else {
            break;
        }
    }
    Some(resolved)
}
