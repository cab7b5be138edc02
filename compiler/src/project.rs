//! Stage `load`: find the project, merge `overthink.yml` with its includes, read distros, deploy
//! nodes and VM specs, and discover every layer. Invariant: the result is independent of
//! directory-listing order, and every value we consume was type-checked with a located error.
//!
//! Project-level files carry much we do not use (images, builders' Containerfile templates,
//! `inits:`, `cluster:` …): the top level is read leniently, but every entry we consume
//! (`distros:` entries, deploy nodes, the VM fields we read) is checked strictly, so a typo such
//! as `vm_sorce:` is an error instead of a silently different deploy.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Serialize;

use crate::layer::{Layers, Pos};
use crate::layer_parse::{load_layer_dir, LayerError, ParseContext};
use crate::yaml::{self, Doc, Node, Value, YamlError, YamlErrorKind};

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

/// One distro of `build.yml`, with inheritance applied (reference §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Distro {
    /// Its name (`archlinux`, `debian`, …).
    pub name: String,
    /// Package formats: the primary format first; builder-backed formats (`aur`) last.
    pub formats: Vec<String>,
    /// `inherits:` as written.
    pub inherits: Option<String>,
    /// The image's default user (`ubuntu` on Ubuntu cloud images).
    pub base_user: Option<BaseUser>,
}

/// `base_user:` of a distro.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseUser {
    /// Account name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// Where a deploy node installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeTarget {
    /// A VM reached over SSH (`target: vm`).
    Vm,
    /// The local machine (`target: host`).
    Host,
    /// A container (`target: pod`, legacy `container`).
    Pod,
    /// Kubernetes (`target: k8s`, legacy `kubernetes`).
    K8s,
}

/// One node of `deployments.images` (schema v3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployNode {
    /// The node's key.
    pub name: String,
    /// `target:`; when absent: `vm` if `vm_source` is set, `host` for a node named `host`,
    /// else `pod` (the original's default).
    pub target: NodeTarget,
    /// `vm_source:` — the VM entity under the top-level `vm:` map.
    pub vm_source: Option<String>,
    /// `add_layers:` in order.
    pub add_layers: Vec<String>,
    /// `install_opts:` — gates pre-set for this node.
    pub install_opts: InstallOpts,
    /// `children:`, by name.
    pub children: BTreeMap<String, DeployNode>,
}

/// `install_opts:` of a deploy node (CLI flags can add to these, never remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct InstallOpts {
    /// Enable services.
    pub with_services: bool,
    /// Allow repository changes.
    pub allow_repo_changes: bool,
    /// Allow root tasks.
    pub allow_root_tasks: bool,
    /// Skip steps this target cannot run (builders on a VM).
    pub skip_incompatible: bool,
    /// Verify after deploy.
    pub verify: bool,
}

/// The fields of a `vm:` entry that deploys read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VmSpec {
    /// The VM's key.
    pub name: String,
    /// `ssh.user`.
    pub ssh_user: Option<String>,
    /// `ssh.port`.
    pub ssh_port: Option<u16>,
    /// `ssh.key_source` (`auto|generate|none|<path>`).
    pub key_source: Option<String>,
    /// `source.kind` (`cloud_image|bootc`).
    pub source_kind: Option<String>,
    /// `source.base_user`.
    pub base_user: Option<String>,
    /// `source.distro`, a distro tag such as `debian:12`.
    pub distro: Option<String>,
}

/// The per-machine overlay `~/.config/ov/deploy.yml` (root key `images:`), read-only here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Overlay {
    /// The file.
    pub path: PathBuf,
    /// Entries by deploy name (`vm:arch`, `host`, …).
    pub images: BTreeMap<String, OverlayEntry>,
}

/// One overlay entry (only the fields `ov` reads; the runner keeps the rest when writing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OverlayEntry {
    /// `target:`.
    pub target: Option<String>,
    /// `vm_source:`.
    pub vm_source: Option<String>,
    /// `vm_state:`.
    pub vm_state: Option<VmState>,
    /// `add_layers:`.
    pub add_layers: Vec<String>,
}

/// `vm_state:` of an overlay entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VmState {
    /// Stable id of the VM instance.
    pub instance_id: Option<String>,
    /// SSH user of the last deploy.
    pub ssh_user: Option<String>,
    /// SSH key of the last deploy.
    pub ssh_key_path: Option<String>,
    /// Time of the last deploy.
    pub last_deploy: Option<String>,
    /// Digest of the last bundle pushed.
    pub bundle_sha256: Option<String>,
    /// SSH port of the last deploy.
    pub ssh_port: Option<u16>,
    /// Layers applied by the last deploy.
    pub applied_layers: Vec<String>,
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
        /// The file.
        path: PathBuf,
        /// The I/O error.
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
        /// The layer name.
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

fn join_errors(errors: &[LayerError]) -> String {
    let mut out = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n\n");
    if errors.len() > 1 {
        out.push_str(&format!("\n\n{} layers failed to load", errors.len()));
    }
    out
}

fn schema(e: YamlError) -> ProjectError {
    ProjectError::Schema(Box::new(e))
}

/// How deep `includes:` may nest (as in the original).
const MAX_INCLUDE_DEPTH: usize = 8;
/// How deep `children:` and discovery may nest.
const MAX_NESTING: usize = 32;

// ------------------------------------------------------------------------------------------
// Finding the root

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

// ------------------------------------------------------------------------------------------
// Reading and merging project files

/// One project-level file and its documents.
struct SourceFile {
    path: PathBuf,
    text: String,
    docs: Vec<Node>,
}

impl SourceFile {
    fn doc(&self) -> Doc<'_> {
        Doc::new(&self.path, &self.text)
    }
}

/// A merged entry: which file it came from and its key and value nodes.
#[derive(Clone, Copy)]
struct Entry<'a> {
    file: &'a SourceFile,
    key: &'a Node,
    value: &'a Node,
}

impl Entry<'_> {
    fn doc(&self) -> Doc<'_> {
        self.file.doc()
    }
}

/// The root keys we consume, merged over all files (first definition wins, per entity).
#[derive(Default)]
struct Merged<'a> {
    discover: Option<Entry<'a>>,
    distros: IndexMap<String, Entry<'a>>,
    builders: IndexMap<String, Entry<'a>>,
    deployments: IndexMap<String, Entry<'a>>,
    vms: IndexMap<String, Entry<'a>>,
}

/// Read `path` and, depth-first, every file it includes, in merge order (the including file
/// before its includes). `stack` holds the canonical paths being read, for cycle detection.
fn read_tree(
    path: &Path,
    depth: usize,
    stack: &mut Vec<(PathBuf, PathBuf)>,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<SourceFile>,
) -> Result<(), ProjectError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProjectError::Read {
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
        if !child.is_file() {
            return Err(schema(doc.error(
                node.pos,
                YamlErrorKind::Invalid,
                format!(
                    "included file `{inc}` does not exist (looked for `{}`)",
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

/// `a/b/../c` → `a/c`, without touching the file system (the path may not exist yet, and
/// symlinks are not ours to resolve for display).
fn normalize(p: &Path) -> PathBuf {
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

fn relative_to<'p>(p: &'p Path, root: &Path) -> &'p Path {
    p.strip_prefix(root).unwrap_or(p)
}

/// The `includes:` entries of a file (from every document), with their nodes for messages.
fn includes_of(file: &SourceFile) -> Result<Vec<(String, Node)>, ProjectError> {
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
fn merge(files: &[SourceFile]) -> Result<Merged<'_>, ProjectError> {
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

fn check_version(doc: &Doc, v: &Node) -> Result<(), ProjectError> {
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

fn add_entities<'a>(
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

// ------------------------------------------------------------------------------------------
// Loading

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

/// Formats a builder stage produces (`builders.<x>.detect_config`); `aur` always is one.
fn builder_backed_formats(m: &Merged) -> Result<BTreeSet<String>, ProjectError> {
    let mut out = BTreeSet::from(["aur".to_string()]);
    for (name, e) in &m.builders {
        let doc = e.doc();
        if let Some(dc) = e.value.get("detect_config") {
            if let Some(f) = doc
                .opt_string(dc, &format!("builders.{name}.detect_config"))
                .map_err(schema)?
            {
                out.insert(f);
            }
        }
    }
    Ok(out)
}

/// The distros of the original's `build.yml` at 3e714536, for projects without `distros:`.
fn builtin_distros() -> BTreeMap<String, Distro> {
    let d = |name: &str, formats: &[&str], inherits: Option<&str>, base_user: Option<BaseUser>| {
        (
            name.to_string(),
            Distro {
                name: name.to_string(),
                formats: formats.iter().map(|s| s.to_string()).collect(),
                inherits: inherits.map(str::to_string),
                base_user,
            },
        )
    };
    BTreeMap::from([
        d("archlinux", &["pac", "aur"], None, None),
        d("debian", &["deb"], None, None),
        d("fedora", &["rpm"], None, None),
        d(
            "ubuntu",
            &["deb"],
            Some("debian"),
            Some(BaseUser {
                name: "ubuntu".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/ubuntu".into(),
            }),
        ),
    ])
}

const DISTRO_KEYS: &[&str] = &[
    "inherits",
    "bootstrap",
    "workarounds",
    "formats",
    "base_user",
];
const BASE_USER_KEYS: &[&str] = &["name", "uid", "gid", "home"];

/// A distro entry as written, before inheritance.
struct RawDistro<'a> {
    entry: Entry<'a>,
    inherits: Option<(String, &'a Node)>,
    formats: Vec<String>,
    base_user: Option<BaseUser>,
}

fn resolve_distros(
    m: &Merged,
    builder_formats: &BTreeSet<String>,
) -> Result<BTreeMap<String, Distro>, ProjectError> {
    let mut raw: IndexMap<String, RawDistro> = IndexMap::new();
    for (name, e) in &m.distros {
        let doc = e.doc();
        let what = format!("distros.{name}");
        if name.is_empty() || name.contains([':', ',', ' ']) {
            return Err(schema(doc.error(
                e.key.pos,
                YamlErrorKind::Invalid,
                format!(
                    "`{name}` cannot be a distro name (it is used in `<distro>:<version>` tags)"
                ),
            )));
        }
        let mut r = RawDistro {
            entry: *e,
            inherits: None,
            formats: Vec::new(),
            base_user: None,
        };
        for (k, v) in doc.map(e.value, &what).map_err(schema)? {
            let key = doc.key(k, &what).map_err(schema)?;
            let kwhat = format!("{what}.{key}");
            match key.as_str() {
                "inherits" => {
                    r.inherits = doc.opt_string(v, &kwhat).map_err(schema)?.map(|s| (s, v));
                }
                "formats" => {
                    for (fk, fv) in doc.map(v, &kwhat).map_err(schema)? {
                        let f = doc.key(fk, &kwhat).map_err(schema)?;
                        if !matches!(fv.value, Value::Map(_) | Value::Null) {
                            return Err(schema(doc.wrong_type(
                                fv,
                                "a mapping",
                                &format!("{kwhat}.{f}"),
                            )));
                        }
                        r.formats.push(f);
                    }
                }
                "base_user" => r.base_user = Some(parse_base_user(&doc, v, &kwhat)?),
                // Containerfile-only; kept lenient.
                "bootstrap" | "workarounds" => {}
                _ => return Err(schema(unknown_key(&doc, k, &key, &what, DISTRO_KEYS))),
            }
        }
        raw.insert(name.clone(), r);
    }
    let mut out = BTreeMap::new();
    for (name, r) in &raw {
        // Walk up the chain: formats and base_user come from the nearest distro that has them.
        let mut formats = r.formats.clone();
        let mut base_user = r.base_user.clone();
        let mut chain = vec![name.as_str()];
        let mut cur = r;
        while let Some((parent, node)) = &cur.inherits {
            let doc = cur.entry.doc();
            let Some(p) = raw.get(parent) else {
                let e = doc.error(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!(
                        "distro `{}` inherits unknown distro `{parent}`",
                        chain[chain.len() - 1]
                    ),
                );
                let e = match yaml::suggest(parent, raw.keys().map(String::as_str)) {
                    Some(s) => e.with_hint(format!("did you mean `{s}`?")),
                    None => e,
                };
                return Err(schema(e));
            };
            if chain.contains(&parent.as_str()) || chain.len() > 10 {
                chain.push(parent);
                return Err(schema(doc.error(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!("distro inheritance cycle: {}", chain.join(" → ")),
                )));
            }
            chain.push(parent);
            if formats.is_empty() {
                formats = p.formats.clone();
            }
            if base_user.is_none() {
                base_user = p.base_user.clone();
            }
            cur = p;
        }
        // Primary format first; formats built by a builder stage (aur) after the others.
        let (mut plain, built): (Vec<String>, Vec<String>) = formats
            .into_iter()
            .partition(|f| !builder_formats.contains(f));
        plain.extend(built);
        out.insert(
            name.clone(),
            Distro {
                name: name.clone(),
                formats: plain,
                inherits: r.inherits.as_ref().map(|(s, _)| s.clone()),
                base_user,
            },
        );
    }
    Ok(out)
}

fn parse_base_user(doc: &Doc, node: &Node, what: &str) -> Result<BaseUser, ProjectError> {
    let mut name = None;
    let mut home = None;
    let (mut uid, mut gid) = (None, None);
    for (k, v) in doc.map(node, what).map_err(schema)? {
        let key = doc.key(k, what).map_err(schema)?;
        let kwhat = format!("{what}.{key}");
        match key.as_str() {
            "name" => name = Some(doc.string(v, &kwhat).map_err(schema)?),
            "home" => home = Some(doc.string(v, &kwhat).map_err(schema)?),
            "uid" => uid = Some(doc.uint::<u32>(v, &kwhat).map_err(schema)?),
            "gid" => gid = Some(doc.uint::<u32>(v, &kwhat).map_err(schema)?),
            _ => return Err(schema(unknown_key(doc, k, &key, what, BASE_USER_KEYS))),
        }
    }
    match (name, uid, gid, home) {
        (Some(name), Some(uid), Some(gid), Some(home)) => Ok(BaseUser {
            name,
            uid,
            gid,
            home,
        }),
        _ => Err(schema(doc.error(
            node.pos,
            YamlErrorKind::MissingKey,
            format!("`{what}` needs `name`, `uid`, `gid` and `home`"),
        ))),
    }
}

/// Deploy-node keys we read, and keys of the schema we accept without using them here.
const NODE_KEYS: &[&str] = &[
    "target",
    "vm_source",
    "add_layers",
    "install_opts",
    "children",
];
const NODE_KEYS_ACCEPTED: &[&str] = &[
    "image",
    "version",
    "disposable",
    "lifecycle",
    "env",
    "tests",
    "ports",
    "vm_state",
];
const INSTALL_OPTS_KEYS: &[&str] = &[
    "with_services",
    "allow_repo_changes",
    "allow_root_tasks",
    "skip_incompatible",
    "verify",
    "builder_image",
];

fn parse_node(
    doc: Doc,
    name: &str,
    key: &Node,
    node: &Node,
    depth: usize,
) -> Result<DeployNode, ProjectError> {
    let what = format!("deployments.images.{name}");
    if name.is_empty() || name.contains('.') {
        return Err(schema(
            doc.error(
                key.pos,
                YamlErrorKind::Invalid,
                format!("`{name}` cannot be a deploy node name"),
            )
            .with_hint("`.` separates the levels of a node path (`parent.child`)"),
        ));
    }
    if depth > MAX_NESTING {
        return Err(schema(doc.error(
            node.pos,
            YamlErrorKind::Limit,
            "deploy nodes nest too deeply",
        )));
    }
    let mut target = None;
    let mut n = DeployNode {
        name: name.to_string(),
        target: NodeTarget::Pod,
        vm_source: None,
        add_layers: Vec::new(),
        install_opts: InstallOpts::default(),
        children: BTreeMap::new(),
    };
    for (k, v) in doc.map(node, &what).map_err(schema)? {
        let key = doc.key(k, &what).map_err(schema)?;
        let kwhat = format!("{what}.{key}");
        match key.as_str() {
            "target" => {
                let t = doc.string(v, &kwhat).map_err(schema)?;
                target = Some(match t.as_str() {
                    "vm" => NodeTarget::Vm,
                    "host" => NodeTarget::Host,
                    "pod" | "container" => NodeTarget::Pod,
                    "k8s" | "kubernetes" => NodeTarget::K8s,
                    _ => {
                        return Err(schema(doc.error(
                            v.pos,
                            YamlErrorKind::Invalid,
                            format!(
                                "`{kwhat}` must be one of `vm`, `host`, `pod`, `k8s`, found `{t}`"
                            ),
                        )))
                    }
                });
            }
            "vm_source" => n.vm_source = doc.opt_string(v, &kwhat).map_err(schema)?,
            "add_layers" => n.add_layers = non_empty_list(&doc, v, &kwhat)?,
            "install_opts" => n.install_opts = parse_install_opts(&doc, v, &kwhat)?,
            "children" => {
                for (ck, cv) in doc.map(v, &kwhat).map_err(schema)? {
                    let cname = doc.key(ck, &kwhat).map_err(schema)?;
                    let child = parse_node(doc, &cname, ck, cv, depth + 1)?;
                    n.children.insert(cname, child);
                }
            }
            k2 if NODE_KEYS_ACCEPTED.contains(&k2) => {}
            _ => {
                let valid: Vec<&str> = NODE_KEYS
                    .iter()
                    .chain(NODE_KEYS_ACCEPTED)
                    .copied()
                    .collect();
                return Err(schema(unknown_key(&doc, k, &key, &what, &valid)));
            }
        }
    }
    n.target = target.unwrap_or(if n.vm_source.is_some() {
        NodeTarget::Vm
    } else if name == "host" {
        NodeTarget::Host
    } else {
        NodeTarget::Pod
    });
    if n.target == NodeTarget::Vm && n.vm_source.is_none() && depth == 0 {
        return Err(schema(
            doc.error(
                node.pos,
                YamlErrorKind::MissingKey,
                format!("`{what}` has `target: vm` but no `vm_source`"),
            )
            .with_hint("name the VM entity (a key of the top-level `vm:` map) with `vm_source:`"),
        ));
    }
    Ok(n)
}

fn parse_install_opts(doc: &Doc, node: &Node, what: &str) -> Result<InstallOpts, ProjectError> {
    let mut o = InstallOpts::default();
    for (k, v) in doc.map(node, what).map_err(schema)? {
        let key = doc.key(k, what).map_err(schema)?;
        let kwhat = format!("{what}.{key}");
        let slot = match key.as_str() {
            "with_services" => &mut o.with_services,
            "allow_repo_changes" => &mut o.allow_repo_changes,
            "allow_root_tasks" => &mut o.allow_root_tasks,
            "skip_incompatible" => &mut o.skip_incompatible,
            "verify" => &mut o.verify,
            // Accepted for compatibility; the builder image never reached the compiler.
            "builder_image" => {
                doc.opt_string(v, &kwhat).map_err(schema)?;
                continue;
            }
            _ => return Err(schema(unknown_key(doc, k, &key, what, INSTALL_OPTS_KEYS))),
        };
        *slot = doc.bool(v, &kwhat).map_err(schema)?;
    }
    Ok(o)
}

const VM_KEYS: &[&str] = &[
    "source",
    "disk_size",
    "ram",
    "cpus",
    "machine",
    "firmware",
    "network",
    "ssh",
    "cloud_init",
    "libvirt",
    "disposable",
    "lifecycle",
];
const VM_SSH_KEYS: &[&str] = &["user", "port", "key_source", "key_injection"];
const VM_SOURCE_KEYS: &[&str] = &[
    "kind",
    "url",
    "checksum",
    "cache",
    "base_user",
    "distro",
    "image",
    "transport",
    "rootfs",
    "root_size",
    "kernel_args",
];

fn parse_vm(
    doc: Doc,
    name: &str,
    node: &Node,
    distros: &BTreeMap<String, Distro>,
) -> Result<VmSpec, ProjectError> {
    let what = format!("vm.{name}");
    let mut spec = VmSpec {
        name: name.to_string(),
        ..VmSpec::default()
    };
    for (k, v) in doc.map(node, &what).map_err(schema)? {
        let key = doc.key(k, &what).map_err(schema)?;
        let kwhat = format!("{what}.{key}");
        match key.as_str() {
            "ssh" => {
                for (sk, sv) in doc.map(v, &kwhat).map_err(schema)? {
                    let skey = doc.key(sk, &kwhat).map_err(schema)?;
                    let swhat = format!("{kwhat}.{skey}");
                    match skey.as_str() {
                        "user" => spec.ssh_user = doc.opt_string(sv, &swhat).map_err(schema)?,
                        "port" => spec.ssh_port = Some(port(&doc, sv, &swhat)?),
                        "key_source" => {
                            spec.key_source = doc.opt_string(sv, &swhat).map_err(schema)?
                        }
                        "key_injection" => {}
                        _ => return Err(schema(unknown_key(&doc, sk, &skey, &kwhat, VM_SSH_KEYS))),
                    }
                }
            }
            "source" => {
                for (sk, sv) in doc.map(v, &kwhat).map_err(schema)? {
                    let skey = doc.key(sk, &kwhat).map_err(schema)?;
                    let swhat = format!("{kwhat}.{skey}");
                    match skey.as_str() {
                        "kind" => spec.source_kind = doc.opt_string(sv, &swhat).map_err(schema)?,
                        "base_user" => {
                            spec.base_user = doc.opt_string(sv, &swhat).map_err(schema)?
                        }
                        "distro" => {
                            let tag = doc.string(sv, &swhat).map_err(schema)?;
                            let base = tag.split(':').next().unwrap_or_default();
                            if !distros.contains_key(base) {
                                let e = doc.error(
                                    sv.pos,
                                    YamlErrorKind::Invalid,
                                    format!("unknown distro `{base}` in `{swhat}`"),
                                );
                                let e =
                                    match yaml::suggest(base, distros.keys().map(String::as_str)) {
                                        Some(s) => e.with_hint(format!("did you mean `{s}`?")),
                                        None => e.with_hint(format!(
                                            "distros from build.yml: {}",
                                            distros
                                                .keys()
                                                .map(|d| format!("`{d}`"))
                                                .collect::<Vec<_>>()
                                                .join(", ")
                                        )),
                                    };
                                return Err(schema(e));
                            }
                            spec.distro = Some(tag);
                        }
                        k2 if VM_SOURCE_KEYS.contains(&k2) => {}
                        _ => {
                            return Err(schema(unknown_key(
                                &doc,
                                sk,
                                &skey,
                                &kwhat,
                                VM_SOURCE_KEYS,
                            )))
                        }
                    }
                }
            }
            k2 if VM_KEYS.contains(&k2) => {}
            _ => return Err(schema(unknown_key(&doc, k, &key, &what, VM_KEYS))),
        }
    }
    Ok(spec)
}

fn port(doc: &Doc, node: &Node, what: &str) -> Result<u16, ProjectError> {
    let p: u16 = doc.uint(node, what).map_err(schema)?;
    if p == 0 {
        return Err(schema(doc.error(
            node.pos,
            YamlErrorKind::Invalid,
            format!("`{what}` cannot be 0"),
        )));
    }
    Ok(p)
}

fn non_empty_list(doc: &Doc, node: &Node, what: &str) -> Result<Vec<String>, ProjectError> {
    let items = doc.string_list(node, what).map_err(schema)?;
    if let Some((_, n)) = items
        .iter()
        .zip(doc.seq(node, what).map_err(schema)?)
        .find(|(s, _)| s.trim().is_empty())
    {
        return Err(schema(doc.error(
            n.pos,
            YamlErrorKind::Invalid,
            format!("empty entry in `{what}`"),
        )));
    }
    Ok(items)
}

fn unknown_key(doc: &Doc, k: &Node, key: &str, what: &str, valid: &[&str]) -> YamlError {
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

// ------------------------------------------------------------------------------------------
// Discovery

/// One `discover.layers` entry.
struct ScanSpec {
    path: PathBuf,
    recursive: bool,
}

fn discover_specs(root: &Path, discover: Option<Entry>) -> Result<Vec<ScanSpec>, ProjectError> {
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
        let dir = root.join(&path);
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
fn find_layer_dirs(base: &Path, recursive: bool) -> Vec<PathBuf> {
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

fn load_layers(
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

fn duplicate_layer(root: &Path, name: &str, first: &Path, second: &Path) -> ProjectError {
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

// ------------------------------------------------------------------------------------------
// The per-machine overlay

/// Read the per-machine overlay (`~/.config/ov/deploy.yml`). A missing file is `Ok(None)`.
/// Fields `ov` reads are type-checked; everything else is left for the writer to preserve.
pub fn load_overlay(path: &Path) -> Result<Option<Overlay>, ProjectError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ProjectError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let root = yaml::parse_node(path, &text).map_err(|e| ProjectError::Syntax(Box::new(e)))?;
    let doc = Doc::new(path, &text);
    let mut overlay = Overlay {
        path: path.to_path_buf(),
        images: BTreeMap::new(),
    };
    for (k, v) in doc.map(&root, "document root").map_err(schema)? {
        if k.scalar_text() != Some("images") {
            continue;
        }
        for (ek, ev) in doc.map(v, "images").map_err(schema)? {
            let name = doc.key(ek, "images").map_err(schema)?;
            let what = format!("images.{name}");
            let mut entry = OverlayEntry::default();
            for (fk, fv) in doc.map(ev, &what).map_err(schema)? {
                let key = doc.key(fk, &what).map_err(schema)?;
                let fwhat = format!("{what}.{key}");
                match key.as_str() {
                    "target" => entry.target = doc.opt_string(fv, &fwhat).map_err(schema)?,
                    "vm_source" => entry.vm_source = doc.opt_string(fv, &fwhat).map_err(schema)?,
                    "add_layers" => {
                        entry.add_layers = doc.string_list(fv, &fwhat).map_err(schema)?
                    }
                    "vm_state" if !fv.is_null() => {
                        entry.vm_state = Some(parse_vm_state(&doc, fv, &fwhat)?)
                    }
                    // Other fields belong to the VM tooling; the writer keeps them.
                    _ => {}
                }
            }
            overlay.images.insert(name, entry);
        }
    }
    Ok(Some(overlay))
}

fn parse_vm_state(doc: &Doc, node: &Node, what: &str) -> Result<VmState, ProjectError> {
    let mut s = VmState::default();
    for (k, v) in doc.map(node, what).map_err(schema)? {
        let key = doc.key(k, what).map_err(schema)?;
        let kwhat = format!("{what}.{key}");
        let slot = match key.as_str() {
            "instance_id" => &mut s.instance_id,
            "ssh_user" => &mut s.ssh_user,
            "ssh_key_path" => &mut s.ssh_key_path,
            "last_deploy" => &mut s.last_deploy,
            "bundle_sha256" => &mut s.bundle_sha256,
            "ssh_port" => {
                s.ssh_port = if v.is_null() {
                    None
                } else {
                    Some(port(doc, v, &kwhat)?)
                };
                continue;
            }
            "applied_layers" => {
                s.applied_layers = doc.string_list(v, &kwhat).map_err(schema)?;
                continue;
            }
            // backend, key_injection_resolved, disk_path, … belong to the VM tooling.
            _ => continue,
        };
        *slot = doc.opt_string(v, &kwhat).map_err(schema)?;
    }
    Ok(s)
}
