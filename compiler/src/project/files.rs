//! Stage `load`, project files: `overthink.yml` and, depth-first, every file it includes, with
//! the root keys we consume merged first-definition-wins; the order of includes, never of a
//! directory listing, decides.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::yaml::{self, Doc, Node, Value, YamlErrorKind};

use super::{schema, ProjectError};

/// How deep `includes:` may nest (as in the original).
pub(super) const MAX_INCLUDE_DEPTH: usize = 8;
/// How deep `children:` and discovery may nest.
pub(super) const MAX_NESTING: usize = 32;

/// One project-level file and its documents.
pub(super) struct SourceFile {
    pub(super) path: PathBuf,
    pub(super) text: String,
    pub(super) docs: Vec<Node>,
}

impl SourceFile {
    pub(super) fn doc(&self) -> Doc<'_> {
        Doc::new(&self.path, &self.text)
    }
}

/// A merged entry: which file it came from and its key and value nodes.
#[derive(Clone, Copy)]
pub(super) struct Entry<'a> {
    pub(super) file: &'a SourceFile,
    pub(super) key: &'a Node,
    pub(super) value: &'a Node,
}

impl Entry<'_> {
    pub(super) fn doc(&self) -> Doc<'_> {
        self.file.doc()
    }
}

/// The root keys we consume, merged over all files (first definition wins, per entity).
#[derive(Default)]
pub(super) struct Merged<'a> {
    pub(super) discover: Option<Entry<'a>>,
    pub(super) distros: IndexMap<String, Entry<'a>>,
    pub(super) builders: IndexMap<String, Entry<'a>>,
    pub(super) deployments: IndexMap<String, Entry<'a>>,
    pub(super) vms: IndexMap<String, Entry<'a>>,
}

/// Read `path` and, depth-first, every file it includes, in merge order (the including file
/// before its includes). `stack` holds the canonical paths being read, for cycle detection.
pub(super) fn read_tree(
    path: &Path,
    depth: usize,
    stack: &mut Vec<(PathBuf, PathBuf)>,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<SourceFile>,
) -> Result<(), ProjectError> {
    let text = yaml::read_utf8(path).map_err(|source| ProjectError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let docs = yaml::parse_stream(path, &text).map_err(|e| ProjectError::Syntax(Box::new(e)))?;
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    seen.insert(canonical.clone());
    stack.push((canonical, path.to_path_buf()));
    let file = SourceFile {
        path: path.to_path_buf(),
        text,
        docs,
    };
    let includes = includes_of(&file)?;
    out.push(file);
    let base = path.parent().unwrap_or(Path::new(""));
    let file_idx = out.len() - 1;
    for (inc, node) in includes {
        let doc = out[file_idx].doc();
        let child = normalize(&base.join(&inc));
        if child.file_name().is_some_and(|n| n == "vms.yml") {
            return Err(schema(
                doc.error(
                    node.pos,
                    YamlErrorKind::Invalid,
                    "`vms.yml` is no longer accepted",
                )
                .with_hint("VM entities live under the `vm:` key in deploy.yml"),
            ));
        }
        // The project is the directory of overthink.yml: an include outside it would read (and
        // quote, in errors) any file the user can read — a cloned project is untrusted input.
        let root = stack[0].1.parent().unwrap_or(Path::new(""));
        if inside_project(root, &base.join(&inc)).is_none() {
            return Err(schema(
                doc.error(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!("included file `{inc}` is outside the project"),
                )
                .with_hint("a project's files live in the directory of its overthink.yml"),
            ));
        }
        if !child.is_file() {
            let what = if child.exists() {
                "is not a regular file"
            } else {
                "does not exist"
            };
            return Err(schema(doc.error(
                node.pos,
                YamlErrorKind::Invalid,
                format!(
                    "included file `{inc}` {what} (looked for `{}`)",
                    child.display()
                ),
            )));
        }
        let child_canonical = child.canonicalize().unwrap_or_else(|_| child.clone());
        if let Some(at) = stack.iter().position(|(c, _)| *c == child_canonical) {
            let mut chain: Vec<PathBuf> = stack[at..].iter().map(|(_, p)| p.clone()).collect();
            chain.push(child.clone());
            // Shown relative to the project root (the first file's directory).
            let root = stack[0].1.parent().unwrap_or(Path::new(""));
            let shown = chain
                .iter()
                .map(|p| format!("`{}`", relative_to(p, root).display()))
                .collect::<Vec<_>>()
                .join(" → ");
            let diag = doc
                .error(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!("include cycle: {shown}"),
                )
                .with_hint(
                    "remove one of these includes; each file may be included once along a chain",
                );
            return Err(ProjectError::IncludeCycle {
                chain,
                diag: Box::new(diag),
            });
        }
        if depth + 1 > MAX_INCLUDE_DEPTH {
            return Err(schema(doc.error(
                node.pos,
                YamlErrorKind::Invalid,
                format!("includes nest deeper than {MAX_INCLUDE_DEPTH} levels"),
            )));
        }
        // A file included twice along different branches is merged once (first wins anyway).
        if seen.contains(&child_canonical) {
            continue;
        }
        read_tree(&child, depth + 1, stack, seen, out)?;
    }
    stack.pop();
    Ok(())
}

/// `path` (under `root`, as `root.join(…)` spells it) as a path of the project at `root`, without
/// `.` or `..`; `None` when it leaves the project (another absolute path, or climbing out with
/// `..`). A layer or project file outside could not be bundled by its path in the project, and
/// reading it would read whatever is there — `discover: /` walked the whole file system. Lexical,
/// as the bundle's naming is: a symlink in the project may still lead elsewhere.
pub(super) fn inside_project(root: &Path, path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut dir = root.to_path_buf();
    for c in path.strip_prefix(root).ok()?.components() {
        match c {
            Component::Normal(part) => dir.push(part),
            Component::CurDir => {}
            Component::ParentDir if dir != root => {
                dir.pop();
            }
            _ => return None,
        }
    }
    Some(dir)
}

/// `a/b/../c` → `a/c`, without touching the file system (the path may not exist yet, and
/// symlinks are not ours to resolve for display).
pub(super) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

pub(super) fn relative_to<'p>(p: &'p Path, root: &Path) -> &'p Path {
    p.strip_prefix(root).unwrap_or(p)
}

/// The `includes:` entries of a file (from every document), with their nodes for messages.
pub(super) fn includes_of(file: &SourceFile) -> Result<Vec<(String, Node)>, ProjectError> {
    let doc = file.doc();
    let mut out = Vec::new();
    for root in &file.docs {
        let Some(node) = root.get("includes") else {
            continue;
        };
        for item in doc.seq(node, "includes").map_err(schema)? {
            let s = doc.string(item, "includes[]").map_err(schema)?;
            if s.trim().is_empty() {
                return Err(schema(doc.error(
                    item.pos,
                    YamlErrorKind::Invalid,
                    "empty entry in `includes`",
                )));
            }
            out.push((s, item.clone()));
        }
    }
    Ok(out)
}

/// Merge the root keys of every document of every file, first definition winning per entity.
pub(super) fn merge(files: &[SourceFile]) -> Result<Merged<'_>, ProjectError> {
    let mut m = Merged::default();
    for file in files {
        let doc = file.doc();
        for root in &file.docs {
            let entries = match &root.value {
                Value::Map(e) => e,
                Value::Null => continue,
                _ => {
                    return Err(schema(doc.wrong_type(root, "a mapping", "document root")));
                }
            };
            for (k, v) in entries {
                let key = doc.key(k, "document root").map_err(schema)?;
                match key.as_str() {
                    "version" => check_version(&doc, v)?,
                    "discover" => {
                        m.discover.get_or_insert(Entry {
                            file,
                            key: k,
                            value: v,
                        });
                    }
                    "distros" => add_entities(&doc, file, v, "distros", &mut m.distros)?,
                    "builders" => add_entities(&doc, file, v, "builders", &mut m.builders)?,
                    "vm" => add_entities(&doc, file, v, "vm", &mut m.vms)?,
                    "deployments" => {
                        for (dk, dv) in doc.map(v, "deployments").map_err(schema)? {
                            if dk.scalar_text() == Some("images") {
                                add_entities(
                                    &doc,
                                    file,
                                    dv,
                                    "deployments.images",
                                    &mut m.deployments,
                                )?;
                            }
                        }
                    }
                    "layers" if !v.is_null() => {
                        return Err(schema(
                            doc.error(
                                k.pos,
                                YamlErrorKind::Invalid,
                                "inline `layers:` entries in project files are not supported",
                            )
                            .with_hint("put each layer in its own directory `layers/<name>/layer.yml`; `discover:` finds them"),
                        ));
                    }
                    "layer" => {
                        return Err(schema(
                            doc.error(
                                k.pos,
                                YamlErrorKind::Invalid,
                                "kind-keyed `layer:` documents in project files are not supported",
                            )
                            .with_hint("put the layer in `layers/<name>/layer.yml`"),
                        ));
                    }
                    // images, defaults, builders' templates, inits, cluster, … are not ours.
                    _ => {}
                }
            }
        }
    }
    Ok(m)
}

pub(super) fn check_version(doc: &Doc, v: &Node) -> Result<(), ProjectError> {
    if v.is_null() {
        return Ok(());
    }
    let n: u32 = doc.uint(v, "version").map_err(schema)?;
    if !(2..=3).contains(&n) {
        return Err(schema(
            doc.error(
                v.pos,
                YamlErrorKind::Invalid,
                format!("unsupported project file version {n}"),
            )
            .with_hint("`ov` reads the overthink schema v3 (`version: 2` in overthink.yml, `version: 3` in deploy.yml)"),
        ));
    }
    Ok(())
}

pub(super) fn add_entities<'a>(
    doc: &Doc,
    file: &'a SourceFile,
    node: &'a Node,
    what: &str,
    into: &mut IndexMap<String, Entry<'a>>,
) -> Result<(), ProjectError> {
    for (k, v) in doc.map(node, what).map_err(schema)? {
        let name = doc.key(k, what).map_err(schema)?;
        into.entry(name).or_insert(Entry {
            file,
            key: k,
            value: v,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::inside_project;
    use std::path::{Path, PathBuf};

    #[test]
    fn a_discover_path_stays_in_the_project_or_is_refused() {
        let root = Path::new("/p/proj");
        let ok = |p: &str, want: &str| {
            assert_eq!(
                inside_project(root, &root.join(p)),
                Some(PathBuf::from(want)),
                "{p}"
            )
        };
        ok("layers", "/p/proj/layers");
        ok("./layers/", "/p/proj/layers");
        ok("layers/../more/x", "/p/proj/more/x");
        ok("/p/proj/layers", "/p/proj/layers");
        ok(".", "/p/proj");
        for out in [
            "/",
            "/etc",
            "..",
            "../proj/layers",
            "layers/../..",
            "/p/projects/layers",
        ] {
            assert_eq!(inside_project(root, &root.join(out)), None, "{out}");
        }
    }
}
