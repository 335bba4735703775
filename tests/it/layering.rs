//! The shape of the code, checked: modules depend on each other in one direction (no module
//! imports from a module that imports it, directly or through others), and no `impl` block
//! grows past what a reader holds at once. Read from the sources as text: `use` lines and
//! qualified paths (`crate::a::b`, `super::x`, a child module's name), outside comments and
//! test modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest `impl` block allowed, in lines.
const MAX_IMPL_LINES: usize = 400;

/// Every `.rs` file under `src/`, test-only files left out.
fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.to_string_lossy().ends_with("tests.rs")
            {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out.sort();
    out
}

/// `src/guard/queue.rs` → `["guard", "queue"]`; `src/guard/mod.rs` → `["guard"]`; the crate
/// root (`lib.rs`, `main.rs`) → `[]`.
fn module_of(path: &Path) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rel = path.strip_prefix(&src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its `#[cfg(test)]` module (by
/// convention the last item of a file).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Paths the code names that may lead to another module: those starting with `crate`,
/// `super`, `self` or a child module's name. A `use` group is read item by item
/// (`super::{rule::Rule, Verdict}` names `super::rule::Rule` and `super::Verdict`).
fn named_paths(code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let after_path_char = i > 0 && (is_ident(bytes[i - 1]) || bytes[i - 1] == b':');
        if after_path_char || !is_ident(bytes[i]) {
            i += 1;
            continue;
        }
        let (segments, end) = path_at(code, i);
        let head = segments[0].as_str();
        if matches!(head, "crate" | "super" | "self") || children.contains(head) {
            expand(code, segments, end, &mut out);
        }
        i = end.max(i + 1);
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The identifiers of the path starting at `at`, and where it ends (before any `::{`).
fn path_at(code: &str, mut at: usize) -> (Vec<String>, usize) {
    let bytes = code.as_bytes();
    let mut segments = Vec::new();
    loop {
        let start = at;
        while at < bytes.len() && is_ident(bytes[at]) {
            at += 1;
        }
        segments.push(code[start..at].to_string());
        let more = code[at..].starts_with("::") && bytes.get(at + 2).is_some_and(|&b| is_ident(b));
        if !more {
            return (segments, at);
        }
        at += 2;
    }
}

/// Push `prefix`, or, when a `::{ ... }` group follows it at `end`, each item of the group.
fn expand(code: &str, prefix: Vec<String>, end: usize, out: &mut Vec<Vec<String>>) {
    if !code[end..].starts_with("::{") {
        if prefix.len() > 1 || code[end..].starts_with("::") {
            out.push(prefix);
        }
        return;
    }
    let bytes = code.as_bytes();
    let (mut depth, mut at, mut item) = (0usize, end + 3, end + 3);
    while at < bytes.len() {
        match bytes[at] {
            b'{' => depth += 1,
            b'}' if depth > 0 => depth -= 1,
            b'}' | b',' if depth == 0 => {
                let start = item + code[item..at].len() - code[item..at].trim_start().len();
                if bytes.get(start).is_some_and(|&b| is_ident(b)) {
                    let (segments, inner_end) = path_at(code, start);
                    expand(code, [prefix.clone(), segments].concat(), inner_end, out);
                }
                if bytes[at] == b'}' {
                    return;
                }
                item = at + 1;
            }
            _ => {}
        }
        at += 1;
    }
}

/// The module a path written in `module` lands in: its longest prefix that is a module.
fn resolve(
    module: &[String],
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let supers = path.iter().take_while(|s| *s == "super").count();
    let mut full: Vec<String> = match path[0].as_str() {
        "crate" => path[1..].to_vec(),
        "super" => [
            &module[..module.len().saturating_sub(supers)],
            &path[supers..],
        ]
        .concat(),
        "self" => [module, &path[1..]].concat(),
        _ => [module, path].concat(),
    };
    while !full.is_empty() {
        if modules.contains(&full) {
            return Some(full);
        }
        full.pop();
    }
    None
}

/// Module → the modules it names, the crate root left out (it only declares modules).
fn dependencies() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files: Vec<(Vec<String>, String)> = sources()
        .iter()
        .map(|p| (module_of(p), code_of(&std::fs::read_to_string(p).unwrap())))
        .collect();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut deps = BTreeMap::new();
    for (module, code) in &files {
        if module.is_empty() {
            continue;
        }
        let children: BTreeSet<String> = modules
            .iter()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            .map(|m| m.last().unwrap().clone())
            .collect();
        let targets: BTreeSet<Vec<String>> = named_paths(code, &children)
            .iter()
            .filter_map(|p| resolve(module, p, &modules))
            .filter(|t| t != module && !t.is_empty())
            .collect();
        deps.insert(module.clone(), targets);
    }
    deps
}

/// A cycle in `deps`, if there is one, as the modules along it.
fn find_cycle(deps: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        at: &Vec<String>,
        deps: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(from) = path.iter().position(|m| m == at) {
            let mut cycle: Vec<String> = path[from..].iter().map(|m| m.join("::")).collect();
            cycle.push(at.join("::"));
            return Some(cycle);
        }
        if !done.insert(at.clone()) {
            return None;
        }
        path.push(at.clone());
        for next in deps.get(at).into_iter().flatten() {
            if let Some(cycle) = visit(next, deps, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    deps.keys()
        .find_map(|m| visit(m, deps, &mut Vec::new(), &mut done))
}

#[test]
fn modules_depend_on_each_other_in_one_direction() {
    let deps = dependencies();
    assert!(deps.len() > 20, "the sources were not found: {deps:?}");
    let verdicts = vec!["session".to_string(), "verdicts".to_string()];
    assert!(
        deps[&verdicts].contains(&vec!["pipeline".to_string()]),
        "the reader misses imports: {:?}",
        deps[&verdicts]
    );
    if let Some(cycle) = find_cycle(&deps) {
        panic!("modules import each other: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    // The check above can fail: a graph with a loop through three modules is caught.
    let m = |s: &str| vec![s.to_string()];
    let deps = BTreeMap::from([
        (m("a"), BTreeSet::from([m("b")])),
        (m("b"), BTreeSet::from([m("c")])),
        (m("c"), BTreeSet::from([m("a")])),
    ]);
    assert_eq!(find_cycle(&deps).unwrap(), ["a", "b", "c", "a"]);
    let children = BTreeSet::from(["queue".to_string()]);
    let paths = named_paths(
        "use super::{rule::{Rule, Mode}, Verdict};\nlet q = queue::Depths::new();",
        &children,
    );
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        [
            "super::rule::Rule",
            "super::rule::Mode",
            "super::Verdict",
            "queue::Depths::new"
        ]
    );
}

#[test]
fn no_impl_block_is_longer_than_a_reader_holds() {
    let mut long = Vec::new();
    for path in sources() {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut open: Option<(usize, &str)> = None;
        for (n, line) in text.lines().enumerate() {
            match open {
                None if line.starts_with("impl") && line.trim_end().ends_with('{') => {
                    open = Some((n, line))
                }
                Some((start, head)) if line == "}" => {
                    if n - start + 1 > MAX_IMPL_LINES {
                        long.push(format!(
                            "{}:{} {head} ({} lines)",
                            path.display(),
                            start + 1,
                            n - start + 1
                        ));
                    }
                    open = None;
                }
                _ => {}
            }
        }
    }
    assert!(
        long.is_empty(),
        "impl blocks over {MAX_IMPL_LINES} lines: {long:#?}"
    );
}
