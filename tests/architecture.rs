//! The house's rules, checked on the source itself: no module imports in a circle (leaf types live
//! in leaf modules), and no SQL connection is touched outside `store/`. Comments and `#[cfg(test)]`
//! modules are not counted: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p
                .strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

/// The code of a file without comments and test modules.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn top(rel: &str) -> String {
    rel.split('/')
        .next()
        .unwrap()
        .trim_end_matches(".rs")
        .to_string()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut files,
    );
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in &files {
        let from = top(rel);
        if from == "lib" || from == "main" {
            continue;
        }
        let code = code(text);
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != from {
                g.entry(from.clone()).or_default().insert(name);
            }
        }
    }
    g
}

fn path_to(
    g: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in g.get(from).into_iter().flatten() {
        if next == to {
            return Some(vec![next.clone()]);
        }
        if seen.insert(next.clone())
            && let Some(mut rest) = path_to(g, next, to, seen)
        {
            rest.insert(0, next.clone());
            return Some(rest);
        }
    }
    None
}

#[test]
fn no_module_imports_in_a_circle() {
    let g = graph();
    assert!(g.len() > 10, "the scan found the modules: {g:?}");
    let mut cycles = Vec::new();
    for (from, tos) in &g {
        for to in tos {
            if let Some(back) = path_to(&g, to, from, &mut BTreeSet::new()) {
                cycles.push(format!("{from} -> {to} -> {}", back.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn only_the_store_touches_the_database_connection() {
    let mut files = Vec::new();
    sources(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut files,
    );
    let offenders: Vec<&str> = files
        .iter()
        .filter(|(rel, text)| !rel.starts_with("store/") && code(text).contains("connection()"))
        .map(|(rel, _)| rel.as_str())
        .collect();
    assert!(
        offenders.is_empty(),
        "connection() outside store/: {offenders:?}"
    );
}
