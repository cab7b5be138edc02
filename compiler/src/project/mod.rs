//! Stage `load`: find the project, merge `overthink.yml` with its includes, read distros, deploy
//! nodes and VM specs, and discover every layer. Invariant: the result is independent of
//! directory-listing order, and every value we consume was type-checked with a located error.
//!
//! Project-level files carry much we do not use (images, builders' Containerfile templates,
//! `inits:`, `cluster:` …): the top level is read leniently, but every entry we consume
//! (`distros:` entries, deploy nodes, the VM fields we read) is checked strictly, so a typo such
//! as `vm_sorce:` is an error instead of a silently different deploy.

mod discover;
mod distros;
mod files;
mod nodes;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::layer::Layers;
use crate::layer_parse::{LayerError, ParseContext};
use crate::yaml::{self, Doc, Node, YamlError, YamlErrorKind};

use discover::{discover_specs, load_layers};
use distros::{builder_backed_formats, builtin_distros, resolve_distros};
use files::{merge, read_tree};
use nodes::{parse_node, parse_vm};

pub use distros::{BaseUser, Distro};
pub use nodes::{DeployNode, InstallOpts, NodeTarget, VmSpec};

/// A loaded project.
#[derive(Debug, Clone, Serialize)]
pub struct Project {
    /// The project directory (holds `overthink.yml` and/or `layers/`).
    pub root: PathBuf,
    /// Every discovered layer, by name.
    pub layers: Layers,
    /// Distros from `build.yml` (inheritance applied), by name.
    pub distros: BTreeMap<String, Distro>,
    /// Every package format any distro declares.
    pub format_names: BTreeSet<String>,
    /// `deployments.images` nodes, by name.
    pub deployments: BTreeMap<String, DeployNode>,
    /// The top-level `vm:` map.
    pub vms: BTreeMap<String, VmSpec>,
}

impl Project {
    /// Load the project at `root`: `overthink.yml` with its includes (if present), distros,
    /// deploy nodes, VM specs, and every layer under the discover paths (default `layers/`).
    pub fn load(root: &Path) -> Result<Project, ProjectError> {
        if !root.is_dir() {
            return Err(ProjectError::NotAProject {
                path: root.to_path_buf(),
            });
        }
        let config = root.join("overthink.yml");
        let mut files = Vec::new();
        if config.is_file() {
            read_tree(&config, 0, &mut Vec::new(), &mut HashSet::new(), &mut files)?;
        } else if !root.join("layers").is_dir() {
            return Err(ProjectError::NotAProject {
                path: root.to_path_buf(),
            });
        }
        let merged = merge(&files)?;

        let builder_formats = builder_backed_formats(&merged)?;
        let distros = if merged.distros.is_empty() {
            builtin_distros()
        } else {
            resolve_distros(&merged, &builder_formats)?
        };
        let format_names: BTreeSet<String> = distros
            .values()
            .flat_map(|d| d.formats.iter().cloned())
            .collect();
        let ctx = ParseContext {
            formats: format_names.clone(),
            distros: distros.keys().cloned().collect(),
        };

        let mut deployments = BTreeMap::new();
        for (name, e) in &merged.deployments {
            deployments.insert(name.clone(), parse_node(e.doc(), name, e.key, e.value, 0)?);
        }
        let mut vms = BTreeMap::new();
        for (name, e) in &merged.vms {
            vms.insert(name.clone(), parse_vm(e.doc(), name, e.value, &distros)?);
        }

        let scan = discover_specs(root, merged.discover)?;
        let layers = load_layers(root, &scan, &ctx)?;

        Ok(Project {
            root: root.to_path_buf(),
            layers,
            distros,
            format_names,
            deployments,
            vms,
        })
    }

    /// The format and distro names layer parsing validates section keys against.
    pub fn parse_context(&self) -> ParseContext {
        ParseContext {
            formats: self.format_names.clone(),
            distros: self.distros.keys().cloned().collect(),
        }
    }

    /// A deploy node by dotted path (`arch-vm.arch-host` walks `children:`).
    pub fn node(&self, path: &str) -> Option<&DeployNode> {
        let mut parts = path.split('.');
        let mut node = self.deployments.get(parts.next()?)?;
        for part in parts {
            node = node.children.get(part)?;
        }
        Some(node)
    }
}

/// Why a project could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// Walking up found no project.
    #[error("no `overthink.yml` or `layers/` found in `{}` or any parent directory", start.display())]
    NotFound {
        /// Where the search started.
        start: PathBuf,
    },
    /// An explicitly named directory is not a project.
    #[error("`{}` is not an ov project: it holds neither `overthink.yml` nor `layers/`", path.display())]
    NotAProject {
        /// The directory.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A project file is not YAML we accept.
    #[error("{0}")]
    Syntax(Box<YamlError>),
    /// A project file does not fit the schema where we consume it.
    #[error("{0}")]
    Schema(Box<YamlError>),
    /// `includes:` loop back to a file already being read.
    #[error("{diag}")]
    IncludeCycle {
        /// The files of the loop, the first repeated at the end.
        chain: Vec<PathBuf>,
        /// Where the closing include stands.
        diag: Box<YamlError>,
    },
    /// Two layer directories share a name.
    #[error("{diag}")]
    DuplicateLayer {
        name: String,
        /// The first directory (in sorted discovery order).
        first: PathBuf,
        /// The second directory.
        second: PathBuf,
        /// Points at the second directory's `layer.yml`.
        diag: Box<YamlError>,
    },
    /// One or more layers failed to parse (all of them are reported).
    #[error("{}", join_errors(.0))]
    Layers(Vec<LayerError>),
}

pub(super) fn join_errors(errors: &[LayerError]) -> String {
    // Each with its causes (why a file could not be read), which this one message carries.
    let mut out = errors
        .iter()
        .map(|e| crate::errors::with_causes(e))
        .collect::<Vec<_>>()
        .join("\n\n");
    if errors.len() > 1 {
        out.push_str(&format!("\n\n{} layers failed to load", errors.len()));
    }
    out
}

pub(super) fn schema(e: YamlError) -> ProjectError {
    ProjectError::Schema(Box::new(e))
}

/// Find the project root: `explicit` (`-C/--project`), else `env` (`$OV_PROJECT`), else the
/// nearest ancestor of `cwd` holding `overthink.yml`, else the nearest holding `layers/`.
/// Relative paths are taken relative to `cwd`.
pub fn find_root(
    explicit: Option<&Path>,
    env: Option<&Path>,
    cwd: &Path,
) -> Result<PathBuf, ProjectError> {
    if let Some(dir) = explicit.or(env) {
        let dir = cwd.join(dir);
        // `-C path/to/overthink.yml` names the file; take its directory.
        let dir = if dir.is_file() && dir.file_name().is_some_and(|n| n == "overthink.yml") {
            dir.parent().map(Path::to_path_buf).unwrap_or(dir)
        } else {
            dir
        };
        if is_project_dir(&dir) {
            return Ok(dir);
        }
        return Err(ProjectError::NotAProject { path: dir });
    }
    if let Some(found) = cwd.ancestors().find(|d| d.join("overthink.yml").is_file()) {
        return Ok(found.to_path_buf());
    }
    if let Some(found) = cwd.ancestors().find(|d| d.join("layers").is_dir()) {
        return Ok(found.to_path_buf());
    }
    Err(ProjectError::NotFound {
        start: cwd.to_path_buf(),
    })
}

fn is_project_dir(dir: &Path) -> bool {
    dir.join("overthink.yml").is_file() || dir.join("layers").is_dir()
}

pub(super) fn unknown_key(doc: &Doc, k: &Node, key: &str, what: &str, valid: &[&str]) -> YamlError {
    let e = doc.error(
        k.pos,
        YamlErrorKind::UnknownKey,
        format!("unknown key `{key}` in `{what}`"),
    );
    match yaml::suggest(key, valid.iter().copied()) {
        Some(s) => e.with_hint(format!("did you mean `{s}`?")),
        None => {
            let mut v = valid.to_vec();
            v.sort_unstable();
            e.with_hint(format!(
                "valid keys here: {}",
                v.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
}
