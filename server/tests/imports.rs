//! The server crate's arrows point one way: no file imports a file that imports it back,
//! directly or through others, and no top-level module imports one that imports it back.
//! (`mod x;` declarations are structure, not imports: a `mod.rs` may declare its children, but
//! not `use` one that `use`s it.)
//!
//! A plain reading of the sources: every `crate::…`, `super::…` and `self::…` path (in `use`
//! items, brace groups expanded, and inline) resolved to the file of the longest module prefix
//! that is a file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;
/// Import edges: file → file, and top-level module → top-level module.
type Edges = (BTreeSet<(PathBuf, PathBuf)>, BTreeSet<(String, String)>);

/// Module path → file, following `mod x;` from the crate root.
fn modules(root: &Path) -> BTreeMap<Module, PathBuf> {
    let mut map = BTreeMap::new();
    let mut todo = vec![(Vec::new(), root.to_path_buf())];
    while let Some((m, file)) = todo.pop() {
        let text = std::fs::read_to_string(&file).unwrap();
        // A `mod.rs`, `lib.rs` or `main.rs` owns its directory; `x.rs` owns `x/`.
        let stem = file.file_stem().unwrap().to_str().unwrap();
        let dir = if ["mod", "lib", "main"].contains(&stem) {
            file.parent().unwrap().to_path_buf()
        } else {
            file.with_extension("")
        };
        for line in text.lines() {
            let l = line.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
            if let Some(name) = l.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
                let f = [
                    dir.join(format!("{name}.rs")),
                    dir.join(name).join("mod.rs"),
                ]
                .into_iter()
                .find(|f| f.is_file());
                // `#[path]` modules (the tests' `common`) are outside this check.
                if let Some(f) = f {
                    let mut child = m.clone();
                    child.push(name.to_string());
                    todo.push((child, f));
                }
            }
        }
        map.insert(m, file);
    }
    map
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

/// Every `crate::`, `super::` or `self::` path in `text`.
fn paths(text: &str) -> Vec<String> {
    // Comments are not imports.
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        let Some(end) = after.find(';') else { break };
        if before.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
            out.extend(expand(&after[..end].replace(char::is_whitespace, "")));
        }
        rest = &after[end..];
    }
    for start in ["crate::", "super::", "self::"] {
        for (i, _) in code.match_indices(start) {
            if code[..i]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            {
                continue;
            }
            let p: String = code[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(p);
        }
    }
    out
}

/// The file-level and module-level import edges of the crate rooted at `root`.
fn edges(root: &Path) -> Edges {
    let mods = modules(root);
    let (mut files, mut tops) = (BTreeSet::new(), BTreeSet::new());
    for (m, file) in &mods {
        let text = std::fs::read_to_string(file).unwrap();
        // The unit tests at the end of a file are a module of their own (`super::` is the file).
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        for p in paths(text) {
            let mut segs = p.split("::").filter(|s| !s.is_empty());
            let mut at: Module = match segs.next() {
                Some("crate") => Vec::new(),
                Some("self") => m.clone(),
                Some("super") => m[..m.len().saturating_sub(1)].to_vec(),
                _ => continue,
            };
            for s in segs {
                if s == "super" {
                    at.pop();
                    continue;
                }
                let mut next = at.clone();
                next.push(s.to_string());
                if !mods.contains_key(&next) {
                    break;
                }
                at = next;
            }
            let target = &mods[&at];
            if target != file {
                files.insert((file.clone(), target.clone()));
            }
            if let (Some(a), Some(b)) = (m.first(), at.first())
                && a != b
            {
                tops.insert((a.clone(), b.clone()));
            }
        }
    }
    (files, tops)
}

/// A cycle in the graph, if there is one.
fn cycle<T: Ord + Clone + std::fmt::Debug>(edges: &BTreeSet<(T, T)>) -> Option<Vec<T>> {
    fn visit<T: Ord + Clone>(
        n: &T,
        edges: &BTreeSet<(T, T)>,
        path: &mut Vec<T>,
        done: &mut BTreeSet<T>,
    ) -> Option<Vec<T>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.clone());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.clone());
        for (_, b) in edges.iter().filter(|(a, _)| a == n) {
            if let Some(c) = visit(b, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .iter()
        .find_map(|(a, _)| visit(a, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_cycles_in_the_server_crate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (root, least) in [("src/lib.rs", 20), ("src/bin/headcount/main.rs", 1)] {
        let (files, tops) = edges(&dir.join(root));
        assert!(
            files.len() >= least,
            "{root}: the check found too few imports: {files:?}"
        );
        assert_eq!(cycle(&files), None, "{root}: a cycle between files");
        assert_eq!(cycle(&tops), None, "{root}: a cycle between modules");
    }
}

#[test]
fn the_check_finds_a_cycle() {
    let e: BTreeSet<(u8, u8)> = [(1, 2), (2, 3), (3, 1), (3, 4)].into();
    assert_eq!(cycle(&e), Some(vec![1, 2, 3, 1]));
    assert_eq!(
        expand("crate::a::{b, c::{d, e}}"),
        ["crate::a::b", "crate::a::c::d", "crate::a::c::e"]
    );
}
