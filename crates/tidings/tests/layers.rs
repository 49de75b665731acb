//! The crate's two layers, checked from its sources: the connection layer
//! (`src/connections/`) names nothing of the hub layer (`src/hub/`), not
//! even through the shared modules it uses, and neither tree has an import
//! cycle among its modules.
//!
//! Imports are read from `crate::` paths (in `use` trees and inline);
//! names re-exported at the crate root are followed to their modules.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Every module of the crate by path (`connections::transport::http`; the
/// root is ""), with its source.
fn modules() -> anyhow::Result<BTreeMap<String, String>> {
    fn walk(
        dir: &Path,
        prefix: &[String],
        out: &mut BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if path.is_dir() {
                let mut inner = prefix.to_vec();
                inner.push(
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                        .to_owned(),
                );
                walk(&path, &inner, out)?;
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut module = prefix.to_vec();
                if name != "mod" && name != "lib" {
                    module.push(name);
                }
                out.insert(module.join("::"), fs::read_to_string(&path)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut out,
    )?;
    Ok(out)
}

/// The source without comments (doc links name items too, but are not
/// imports).
fn code(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into full paths.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            let path = tree.split(" as ").next().unwrap_or_default().trim();
            if !path.is_empty() {
                out.push(format!("{prefix}{path}"));
            }
        }
        Some(open) => {
            let head = &tree[..open];
            let body = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in body.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&body[start..i], &format!("{prefix}{head}"), out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&body[start..], &format!("{prefix}{head}"), out);
        }
    }
}

/// Every `crate::` path a module's code names.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let end = if after.starts_with('{') {
            // A use tree: up to its matching brace.
            let mut depth = 0;
            after
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(after.len(), |(i, _)| i + 1)
        } else {
            after
                .find(|c: char| {
                    !(c.is_alphanumeric()
                        || c == '_'
                        || c == ':'
                        || c == '{'
                        || c == '}'
                        || c == ','
                        || c == ' '
                        || c == '\n')
                })
                .unwrap_or(after.len())
        };
        let tree = &after[..end];
        // An inline path (`crate::a::b::f(...)`) stops at its first
        // non-path character; a `use` tree is whole.
        let tree = if tree.starts_with('{') {
            tree
        } else {
            tree.split([' ', '\n', ',']).next().unwrap_or_default()
        };
        expand(tree.trim_end_matches("::"), "", &mut out);
        rest = &after[end.min(after.len())..];
    }
    out
}

/// The module a path lands in: its longest prefix that is a module, with
/// names re-exported at the crate root followed.
fn resolve(
    path: &str,
    modules: &BTreeMap<String, String>,
    root: &BTreeMap<String, String>,
) -> Option<String> {
    let path = path.trim().trim_start_matches("self::");
    let first = path.split("::").next().unwrap_or_default();
    if !modules.contains_key(first)
        && let Some(full) = root.get(first)
    {
        let rest = path.strip_prefix(first).unwrap_or_default();
        return resolve(&format!("{full}{rest}"), modules, root);
    }
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|candidate| modules.contains_key(candidate))
}

/// The import graph: module → modules it names.
fn graph() -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let modules = modules()?;
    let mut root = BTreeMap::new();
    let lib = code(modules.get("").map(String::as_str).unwrap_or_default());
    for statement in lib.split(';') {
        if let Some(tree) = statement.trim().strip_prefix("pub use ") {
            let mut paths = Vec::new();
            expand(tree, "", &mut paths);
            for path in paths {
                let local = path.rsplit("::").next().unwrap_or_default().to_owned();
                root.insert(local, path);
            }
        }
    }
    let mut graph = BTreeMap::new();
    for (module, source) in &modules {
        let edges = crate_paths(&code(source))
            .iter()
            .filter_map(|path| resolve(path, &modules, &root))
            .filter(|target| target != module && !target.is_empty())
            .collect();
        graph.insert(module.clone(), edges);
    }
    Ok(graph)
}

fn in_tree(module: &str, tree: &str) -> bool {
    module == tree || module.starts_with(&format!("{tree}::"))
}

#[test]
fn the_connection_layer_names_nothing_of_the_hub_layer() -> anyhow::Result<()> {
    let graph = graph()?;
    assert!(graph.contains_key("connections::transport::websocket"));
    assert!(graph["hub::session"].contains("connections::handler"));
    // Everything the connection layer reaches, through any module.
    for start in graph.keys().filter(|m| in_tree(m, "connections")) {
        let mut seen = BTreeSet::new();
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((module, trail)) = stack.pop() {
            assert!(
                !in_tree(&module, "hub"),
                "the connection layer reaches the hub layer: {}",
                trail.join(" → ")
            );
            for next in graph.get(&module).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    let mut trail = trail.clone();
                    trail.push(next.clone());
                    stack.push((next.clone(), trail));
                }
            }
        }
    }
    Ok(())
}

/// A cycle among the modules of `tree`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>, tree: &str) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        tree: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph
            .get(module)
            .into_iter()
            .flatten()
            .filter(|m| in_tree(m, tree) && *m != tree)
        {
            if let Some(cycle) = visit(next, graph, tree, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .filter(|m| in_tree(m, tree) && *m != tree)
        .find_map(|m| visit(m, graph, tree, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_cycle_in_the_connection_layer() -> anyhow::Result<()> {
    let graph = graph()?;
    if let Some(cycle) = cycle(&graph, "connections") {
        panic!("import cycle: {}", cycle.join(" → "));
    }
    Ok(())
}

#[test]
fn no_import_cycle_in_the_hub_layer() -> anyhow::Result<()> {
    let graph = graph()?;
    if let Some(cycle) = cycle(&graph, "hub") {
        panic!("import cycle: {}", cycle.join(" → "));
    }
    Ok(())
}
