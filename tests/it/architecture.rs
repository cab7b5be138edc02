//! Architecture: the module graph of each crate (`runner/`, `compiler/src/`) has no cycle, at
//! the level of files and at the level of rooms (top-level modules), so data flows one way; and
//! no shell script text is written in the runner's Rust outside its tests.
//! Invariant: a `use` of another module of the same crate is an edge; a parent declaring or
//! re-exporting its children is structure, not an edge from parent to child.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Module → the modules it uses.
type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

/// One module: its path (`ssh::connect`, `""` for the crate root) and its non-test source.
struct Module {
    path: Vec<String>,
    file: PathBuf,
    text: String,
}

/// Every module file below `root` (`lib.rs` is the crate root; `x/mod.rs` is module `x`).
fn modules(root: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read source dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(root).expect("under root");
            let mut path: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
                path.pop();
            }
            if path == ["main"] {
                continue; // the binary: it uses the library by its crate name
            }
            out.push(Module {
                path,
                text: non_test_code(&std::fs::read_to_string(&p).expect("read source")),
                file: p,
            });
        }
    }
    out
}

/// The source without comments and without the `#[cfg(test)]` module (kept at a file's end).
fn non_test_code(src: &str) -> String {
    let code = src.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a `use` tree names: `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or("").trim().to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.extend(
                    expand(&inner[start..i])
                        .into_iter()
                        .map(|s| format!("{prefix}{s}")),
                );
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inner[start..].trim().is_empty() {
        out.extend(
            expand(&inner[start..])
                .into_iter()
                .map(|s| format!("{prefix}{s}")),
        );
    }
    out
}

/// Every path that `text` names from the crate's own modules: `use` trees (with braces) and
/// inline `crate::`/`super::` paths.
fn named_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // `use` items start a line (`use`, `pub use`, `pub(crate) use`) and end at `;`.
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let item = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .find_map(|k| t.strip_prefix(k).map(|_| k.len()));
        if let Some(k) = item {
            let start = offset + (line.len() - t.len()) + k;
            let end = text[start..].find(';').map_or(text.len(), |e| start + e);
            out.extend(expand(&text[start..end]));
        }
        offset += line.len();
    }
    for prefix in ["crate::", "super::"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            out.push(tail[..end].to_string());
            rest = &rest[i + prefix.len()..];
        }
    }
    out
}

/// The module of the crate a path names from `from`, the deepest that exists.
fn resolve(path: &str, from: &[String], known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let (mut base, rest): (Vec<String>, &[&str]) = match segs.first().copied() {
        Some("crate") => (Vec::new(), &segs[1..]),
        Some("self") => (from.to_vec(), &segs[1..]),
        Some("super") => {
            let mut b = from.to_vec();
            let mut n = 0;
            while segs.get(n) == Some(&"super") {
                b.pop();
                n += 1;
            }
            (b, &segs[n..])
        }
        // A bare path in a `use` is a child of this module when one has that name.
        Some(first) if known.contains(&[from, &[first.to_string()]].concat()) => {
            (from.to_vec(), &segs[..])
        }
        _ => return None,
    };
    for s in rest {
        let mut next = base.clone();
        next.push(s.to_string());
        if !known.contains(&next) {
            break;
        }
        base = next;
    }
    Some(base)
}

/// Edges `module → module it uses`, without a parent's edges to its own descendants.
fn graph(root: &Path) -> Graph {
    let mods = modules(root);
    let known: BTreeSet<Vec<String>> = mods.iter().map(|m| m.path.clone()).collect();
    let mut edges: Graph = BTreeMap::new();
    for m in &mods {
        let e = edges.entry(m.path.clone()).or_default();
        for p in named_paths(&m.text) {
            if let Some(to) = resolve(&p, &m.path, &known) {
                if to != m.path && !to.starts_with(&m.path) {
                    e.insert(to);
                }
            }
        }
    }
    edges
}

/// A cycle of `edges`, if there is one, as the names along it.
fn find_cycle(edges: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &Vec<String>,
        edges: &Graph,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c: Vec<String> = stack[at..].iter().map(|p| p.join("::")).collect();
                    c.push(m.join("::"));
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The same graph between rooms (a module's first segment).
fn rooms(edges: &Graph) -> Graph {
    let room = |p: &Vec<String>| p.iter().take(1).cloned().collect::<Vec<_>>();
    let mut out: Graph = BTreeMap::new();
    for (from, tos) in edges {
        let e = out.entry(room(from)).or_default();
        for to in tos {
            if room(to) != room(from) && !room(to).is_empty() {
                e.insert(room(to));
            }
        }
    }
    out
}

fn assert_acyclic(root: &Path) {
    let edges = graph(root);
    assert!(edges.len() > 3, "no modules found under {}", root.display());
    if let Some(c) = find_cycle(&edges) {
        panic!(
            "import cycle between modules of {}: {}",
            root.display(),
            c.join(" → ")
        );
    }
    if let Some(c) = find_cycle(&rooms(&edges)) {
        panic!(
            "import cycle between rooms of {}: {}",
            root.display(),
            c.join(" → ")
        );
    }
}

#[test]
fn the_runner_has_no_import_cycle() {
    assert_acyclic(&repo().join("runner"));
}

#[test]
fn the_compiler_has_no_import_cycle() {
    assert_acyclic(&repo().join("compiler/src"));
}

/// The checker itself finds a cycle, through a brace group and through `super::`.
#[test]
fn the_cycle_check_finds_a_cycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = |p: &str, s: &str| {
        let f = dir.path().join(p);
        std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
        std::fs::write(f, s).expect("write");
    };
    w("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n");
    w("a.rs", "use crate::{b::X, c};\n");
    w("b.rs", "pub struct X;\n");
    w("c.rs", "pub fn f() {}\n");
    w("d/mod.rs", "pub mod e;\npub use e::Y;\n");
    w("d/e.rs", "pub struct Y;\nfn g() { crate::a::h(); }\n");
    let edges = graph(dir.path());
    assert_eq!(find_cycle(&edges), None, "{edges:?}");
    w(
        "b.rs",
        "pub struct X;\n#[cfg(test)]\nmod t { use crate::a; }\n",
    );
    let edges = graph(dir.path());
    assert_eq!(find_cycle(&edges), None, "a test module's use is no edge");
    w(
        "c.rs",
        "pub fn f() {}\n// crate::d::e in a comment\nfn k() { super::d::e::z(); }\n",
    );
    w("a.rs", "use crate::{b::X, c};\n");
    w("d/e.rs", "pub struct Y;\nuse crate::{a::h};\n");
    let edges = graph(dir.path());
    let c = find_cycle(&edges).expect("a → c → d::e → a");
    assert_eq!(c.first(), c.last(), "{c:?}");
    assert!(c.contains(&"d::e".to_string()), "{c:?}");
    assert!(find_cycle(&rooms(&edges)).is_some());
}

/// Shell that runs on a target is a template (`templates/`), rendered with the quoting
/// formatter: no script text is assembled in the runner's Rust.
#[test]
fn no_shell_script_text_in_the_runner() {
    let markers = [
        "set -e", "set -u", "; then", "; do\n", "\nfi", "\ndone", "$(", "#!/bin/",
    ];
    let mut found = Vec::new();
    for m in modules(&repo().join("runner")) {
        for marker in markers {
            if m.text.contains(marker) {
                found.push(format!("{}: `{}`", m.file.display(), marker.trim()));
            }
        }
    }
    assert!(found.is_empty(), "shell text in the runner: {found:#?}");
}
