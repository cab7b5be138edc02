//! Stage `load`, layer discovery: every directory holding a `layer.yml` under the project's
//! `discover.layers` entries, loaded in parallel and returned by name, so the result does not
//! depend on directory-listing order; a name found twice is an error naming both places.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::layer::{Layers, Pos};
use crate::layer_parse::{load_layer_dir, ParseContext};
use crate::yaml::{Node, Value, YamlError, YamlErrorKind};

use super::files::{inside_project, relative_to, Entry, MAX_NESTING};
use super::{schema, unknown_key, ProjectError};

/// One `discover.layers` entry.
pub(super) struct ScanSpec {
    pub(super) path: PathBuf,
    pub(super) recursive: bool,
}

pub(super) fn discover_specs(
    root: &Path,
    discover: Option<Entry>,
) -> Result<Vec<ScanSpec>, ProjectError> {
    let default = || {
        vec![ScanSpec {
            path: root.join("layers"),
            recursive: true,
        }]
    };
    let Some(e) = discover else {
        return Ok(default());
    };
    let doc = e.doc();
    let Some(layers) = doc
        .map(e.value, "discover")
        .map_err(schema)?
        .iter()
        .find(|(k, _)| k.scalar_text() == Some("layers"))
        .map(|(_, v)| v)
    else {
        return Ok(default());
    };
    let items: Vec<&Node> = match &layers.value {
        Value::Seq(s) => s.iter().collect(),
        Value::Null => return Ok(default()),
        _ => vec![layers],
    };
    let mut out = Vec::new();
    for item in items {
        let (path, recursive, pos) = match &item.value {
            Value::Map(_) => {
                let mut path = None;
                let mut recursive = true;
                for (k, v) in doc.map(item, "discover.layers[]").map_err(schema)? {
                    let key = doc.key(k, "discover.layers[]").map_err(schema)?;
                    match key.as_str() {
                        "path" => {
                            path = Some(doc.string(v, "discover.layers[].path").map_err(schema)?)
                        }
                        "recursive" => {
                            recursive =
                                doc.bool(v, "discover.layers[].recursive").map_err(schema)?
                        }
                        _ => {
                            return Err(schema(unknown_key(
                                &doc,
                                k,
                                &key,
                                "discover.layers[]",
                                &["path", "recursive"],
                            )))
                        }
                    }
                }
                let Some(path) = path else {
                    return Err(schema(doc.error(
                        item.pos,
                        YamlErrorKind::MissingKey,
                        "`discover.layers[]` needs `path:`",
                    )));
                };
                (path, recursive, item.pos)
            }
            _ => (
                doc.string(item, "discover.layers[]").map_err(schema)?,
                true,
                item.pos,
            ),
        };
        let Some(dir) = inside_project(root, &root.join(&path)) else {
            return Err(schema(
                doc.error(
                    pos,
                    YamlErrorKind::Invalid,
                    format!("discover path `{path}` is outside the project"),
                )
                .with_hint(
                    "a layer is bundled by its path in the project: give a directory inside it",
                ),
            ));
        };
        if !dir.is_dir() {
            return Err(schema(doc.error(
                pos,
                YamlErrorKind::Invalid,
                format!("discover path `{}` is not a directory", dir.display()),
            )));
        }
        out.push(ScanSpec {
            path: dir,
            recursive,
        });
    }
    Ok(out)
}

/// Every directory holding a `layer.yml` under `base` (recursive: at any depth; else `base`
/// and its direct children), sorted. Hidden directories are skipped; symlinked directories are
/// followed once each (a loop cannot recurse forever).
pub(super) fn find_layer_dirs(base: &Path, recursive: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut visited = HashSet::new();
    let mut stack = vec![(base.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        // A directory is known by its device and inode: one `stat`, where `canonicalize` would
        // read every component of the path as a link (this loop sees every layer directory).
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if !visited.insert((meta.dev(), meta.ino())) {
            continue;
        }
        if dir.join("layer.yml").is_file() {
            out.push(dir.clone());
        }
        if depth >= MAX_NESTING || (!recursive && depth >= 1) {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.filter_map(Result::ok) {
            let hidden = entry
                .file_name()
                .to_str()
                .is_none_or(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            // The type from `readdir`; only a symlink needs a `stat` to see what it points at.
            let is_dir = match entry.file_type() {
                Ok(t) if t.is_symlink() => entry.path().is_dir(),
                Ok(t) => t.is_dir(),
                Err(_) => false,
            };
            if is_dir {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    out.sort();
    out
}

pub(super) fn load_layers(
    root: &Path,
    specs: &[ScanSpec],
    ctx: &ParseContext,
) -> Result<Layers, ProjectError> {
    // Discover paths in their written order, each sorted; a directory reached twice counts once.
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut listed = HashSet::new();
    for spec in specs {
        for d in find_layer_dirs(&spec.path, spec.recursive) {
            if listed.insert(d.clone()) {
                dirs.push(d);
            }
        }
    }
    let mut first_dir: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in &dirs {
        // Two layers may not share a name, whether or not they parse.
        if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
            if let Some(first) = first_dir.get(name) {
                return Err(duplicate_layer(root, name, first, dir));
            }
            first_dir.insert(name.to_string(), dir.clone());
        }
    }
    let mut layers = Layers::new();
    let mut errors = Vec::new();
    // Parsing ~170 YAML files is most of a whole-corpus compile, and each file is independent.
    for loaded in crate::par::map(&dirs, |dir| load_layer_dir(dir, ctx)) {
        match loaded {
            Ok(layer) => {
                layers.insert(layer.name.clone(), layer);
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(ProjectError::Layers(errors));
    }
    Ok(layers)
}

pub(super) fn duplicate_layer(
    root: &Path,
    name: &str,
    first: &Path,
    second: &Path,
) -> ProjectError {
    let file = second.join("layer.yml");
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    // Point at the `name:` line when there is one: it is what the reader will compare.
    let pos = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| {
            let col = l.find("name:")?;
            l[..col].trim().is_empty().then_some(Pos {
                line: i as u32 + 1,
                column: col as u32 + 1,
            })
        })
        .unwrap_or(Pos { line: 1, column: 1 });
    let diag = YamlError::at(
        &file,
        &text,
        pos,
        YamlErrorKind::Invalid,
        format!(
            "layer `{name}` is defined twice: `{}` and `{}`",
            relative_to(first, root).display(),
            relative_to(second, root).display()
        ),
    )
    .with_hint("a layer is named after its directory; rename one directory or narrow `discover:`");
    ProjectError::DuplicateLayer {
        name: name.to_string(),
        first: first.to_path_buf(),
        second: second.to_path_buf(),
        diag: Box::new(diag),
    }
}
