//! Stage `load`: one `layer.yml` (schema v3 at 3e714536) → the validated [`Layer`] model.
//! Invariant: every key is either understood or rejected with file, line, column, the source
//! line and, when a valid key is close, a "did you mean" — a typo never silently does nothing.
//!
//! The original accepted any unknown key inside `layer:` as a distro-tag section and dropped it
//! unless it had `packages:` (so `servics:` vanished). Here a key is valid only if it is a known
//! field, a package format from `build.yml`, or a tag made of distros from `build.yml`.

use std::collections::BTreeSet;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::layer::{
    normalise_dest, Artifact, ArtifactRewrite, BuilderFiles, Check, CheckProbe, CheckScope,
    ContainerOnlyKey, Layer, Matcher, PackageSection, ParentDirInPath, Pos, Repo, SecretSpec,
    SectionKey, ServiceEntry, ServiceOverrides, ServiceScope, Task, TaskVerb,
};
use crate::yaml::{self, Doc, Node, Value, YamlError, YamlErrorKind};

/// What `build.yml` contributes to layer parsing: which section keys are package formats and
/// which distro names may appear in tag sections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseContext {
    /// Package format names (`rpm`, `deb`, `pac`, `aur`, …).
    pub formats: BTreeSet<String>,
    /// Distro names (`archlinux`, `debian`, `fedora`, `ubuntu`, …).
    pub distros: BTreeSet<String>,
}

impl ParseContext {
    /// The formats and distros of the original's `build.yml` at 3e714536, for projects that have
    /// no `distros:` of their own (a bare `layers/` directory).
    pub fn builtin() -> ParseContext {
        let set = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        ParseContext {
            formats: set(&["aur", "deb", "pac", "rpm"]),
            distros: set(&["archlinux", "debian", "fedora", "ubuntu"]),
        }
    }
}

/// Why a layer could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read `{}`", path.display())]
    Read {
        /// The `layer.yml`.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The layer directory's name cannot be a layer name.
    #[error("`{}`: layer name `{name}` is not allowed (use letters, digits, `.`, `_`, `-`; not starting with `.`)", path.display())]
    InvalidName {
        /// The layer directory.
        path: PathBuf,
        /// The name as far as it could be read.
        name: String,
    },
    /// Not YAML we accept: syntax, duplicate keys, several documents, limits, tags.
    #[error("{0}")]
    Syntax(Box<YamlError>),
    /// Valid YAML that does not fit the layer schema.
    #[error("{0}")]
    Schema(Box<YamlError>),
}

impl LayerError {
    /// The file (or directory) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            LayerError::Read { path, .. } | LayerError::InvalidName { path, .. } => path,
            LayerError::Syntax(e) | LayerError::Schema(e) => &e.path,
        }
    }

    /// The located diagnostic, for errors about the file's contents.
    pub fn diagnostic(&self) -> Option<&YamlError> {
        match self {
            LayerError::Syntax(e) | LayerError::Schema(e) => Some(e),
            _ => None,
        }
    }
}

fn schema(e: YamlError) -> LayerError {
    LayerError::Schema(Box::new(e))
}

// ------------------------------------------------------------------------------------------
// Key tables: every key of schema v3 that the original read, per place

/// Keys inside `layer:` that this parser consumes.
const LAYER_KEYS: &[&str] = &[
    "name",
    "description",
    "info",
    "status",
    "version",
    "directory",
    "depends",
    "layers",
    "env",
    "path_append",
    "vars",
    "tasks",
    "service",
    "secret_requires",
    "secret_accepts",
    "artifacts",
    "tests",
];

/// Keys only a container build or runtime uses, with the reason shown by `ov plan`.
const CONTAINER_ONLY: &[(&str, &str)] = &[
    (
        "ports",
        "published container ports; on a host or VM services listen directly",
    ),
    ("route", "traefik route of the container runtime"),
    ("volumes", "named container volumes"),
    (
        "aliases",
        "host command aliases that exec into the container",
    ),
    (
        "extract",
        "copies paths out of another OCI image at image build",
    ),
    (
        "security",
        "container runtime privileges, devices, mounts and limits",
    ),
    ("libvirt", "libvirt XML for VM domains built from the image"),
    (
        "hooks",
        "hooks of the container workflow (`ov config` / `ov remove`)",
    ),
    (
        "port_relay",
        "socat relays from the container's eth0 to loopback",
    ),
    ("secrets", "container secrets mounted by the runtime"),
    ("data", "data staged into container volumes at image build"),
    ("env_provides", "environment injected into other containers"),
    (
        "env_requires",
        "environment contract between containers at run time",
    ),
    (
        "env_accepts",
        "environment contract between containers at run time",
    ),
    ("mcp_provides", "MCP server wiring between containers"),
    ("mcp_requires", "MCP server wiring between containers"),
    ("mcp_accepts", "MCP server wiring between containers"),
    ("engine", "required container engine"),
];

/// Keys every check may have, whatever its kind.
const CHECK_COMMON: &[&str] = &["id", "scope", "timeout", "exclude_distros"];

/// Check kinds (the key that names what is checked) and the fields each one takes.
const CHECK_KINDS: &[(&str, &[&str])] = &[
    ("file", &["exists", "mode", "filetype", "contains"]),
    (
        "command",
        &["exit_status", "stdout", "stderr", "in_container"],
    ),
    ("package", &["installed", "package_map"]),
    ("service", &["running", "enabled"]),
    ("addr", &["reachable"]),
    ("http", &["status", "method", "body", "allow_insecure"]),
    ("mcp", &["tool", "input", "stdout", "exit_status"]),
    ("k8s", &["cluster", "k8s_count", "stdout", "exit_status"]),
];

/// Kinds of the original's check vocabulary that no corpus layer uses and this compiler does not
/// implement: named, so the error says so instead of "unknown key".
const CHECK_KINDS_UNSUPPORTED: &[&str] = &[
    "port",
    "process",
    "dns",
    "user",
    "group",
    "interface",
    "kernel-param",
    "mount",
];

const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

const VERBS: &[&str] = &[
    "cmd", "mkdir", "copy", "write", "link", "download", "setcap", "build",
];

/// Task modifiers and the verbs they apply to (empty = every verb).
const MODIFIERS: &[(&str, &[&str])] = &[
    ("user", &[]),
    ("env", &[]),
    ("comment", &[]),
    ("uninstall", &[]),
    ("mode", &["mkdir", "copy", "write", "download"]),
    ("to", &["copy", "download", "link"]),
    ("target", &["link"]),
    ("content", &["write"]),
    ("extract", &["download"]),
    ("include", &["download"]),
    ("strip_components", &["download"]),
    ("caps", &["setcap"]),
];

const EXTRACT_KINDS: &[&str] = &["tar.gz", "tar.xz", "tar.zst", "zip", "sh", "none"];

const SERVICE_KEYS: &[&str] = &[
    "name",
    "use_packaged",
    "exec",
    "env",
    "restart",
    "working_directory",
    "user",
    "after",
    "before",
    "stdout",
    "stop_timeout",
    "scope",
    "enable",
    "overrides",
];

/// supervisord lifecycle keys, kept verbatim.
const SUPERVISORD_KEYS: &[&str] = &[
    "kind",
    "events",
    "auto_start",
    "start_retries",
    "start_secs",
    "stop_signal",
    "exit_codes",
    "priority",
];

const RESTART_VALUES: &[&str] = &["no", "on-failure", "always", "unless-stopped"];

const SECTION_FIELDS: &[&str] = &[
    "packages", "options", "repos", "keys", "copr", "modules", "exclude",
];

/// Sub-fields each known format's templates read in the original; other formats and tag
/// sections (rendered with whatever the target's primary format is) may use all of them.
fn section_fields_for(format: &str) -> Option<&'static [&'static str]> {
    match format {
        "rpm" => Some(&["packages", "options", "repos", "copr", "modules", "exclude"]),
        "deb" => Some(&["packages", "options", "repos"]),
        "pac" => Some(&["packages", "options", "repos", "keys"]),
        "aur" => Some(&["packages", "options"]),
        _ => None,
    }
}

const REPO_KEYS: &[&str] = &[
    "name",
    "url",
    "gpgkey",
    "gpgcheck",
    "rpm",
    "key",
    "signed_by",
    "suite",
    "components",
    "ppa",
    "server",
    "siglevel",
];

fn repo_keys_for(format: &str) -> Option<&'static [&'static str]> {
    match format {
        "rpm" => Some(&["name", "url", "gpgkey", "gpgcheck", "rpm"]),
        "deb" => Some(&[
            "name",
            "url",
            "key",
            "signed_by",
            "suite",
            "components",
            "ppa",
        ]),
        "pac" => Some(&["name", "server", "siglevel", "key"]),
        _ => None,
    }
}

/// Hints for keys people plausibly write that never existed (or moved) in schema v3.
fn known_mistake(key: &str) -> Option<&'static str> {
    Some(match key {
        "packages" | "repos" | "options" | "keys" | "copr" | "modules" | "exclude" => {
            "package fields belong inside a package section, e.g. `rpm:` / `deb:` / `pac:` with `packages:`"
        }
        "services" => "the key is `service` (singular), a list of entries",
        "system_services" => "`system_services` was retired; list units under `service:` with `use_packaged:`",
        "builders" | "builder" => {
            "builders are triggered by sibling files (`pixi.toml`, `package.json`, `Cargo.toml`) or an `aur:` section, not by a key"
        }
        "requires" | "require" | "depend" => "prerequisites are listed under `depends:`",
        "from" => "`from:` only applies to inline layers in overthink.yml",
        _ => return None,
    })
}

// ------------------------------------------------------------------------------------------
// Entry points

/// Parse the text of one `layer.yml`. `name` is the layer's name (its directory's basename);
/// `file` is used for messages and to anchor relative paths. Builder files are not scanned
/// here (see [`load_layer_dir`]), so this function touches no file system.
pub fn parse_layer(
    name: &str,
    file: &Path,
    text: &str,
    ctx: &ParseContext,
) -> Result<Layer, LayerError> {
    let root = yaml::parse_node(file, text).map_err(|mut e| {
        if e.kind == YamlErrorKind::MultipleDocuments {
            e.message = "layer.yml holds more than one YAML document".into();
            e.hint = Some(
                "a layer file is one `layer:` mapping; multi-document bundles belong in overthink.yml"
                    .into(),
            );
        }
        LayerError::Syntax(Box::new(e))
    })?;
    let doc = Doc::new(file, text);
    let layer_dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut layer = Layer {
        name: name.to_string(),
        file: file.to_path_buf(),
        source_dir: layer_dir.clone(),
        ..Layer::default()
    };
    let body = match &root.value {
        // An empty or comment-only file is an empty layer, as in the original.
        Value::Null => return Ok(layer),
        Value::Map(entries) => unwrap_layer(&doc, entries)?,
        _ => {
            return Err(schema(doc.error(
                root.pos,
                YamlErrorKind::WrongType,
                format!(
                    "expected a mapping with a single `layer:` key, found {}",
                    root.type_name()
                ),
            )))
        }
    };
    let Some(body) = body else {
        return Ok(layer);
    };
    let entries = doc.map(body, "layer").map_err(schema)?;
    let p = Parser {
        doc,
        ctx,
        layer: name,
    };
    p.fill_layer(&mut layer, entries, &layer_dir)
        .map_err(schema)?;
    Ok(layer)
}

/// Find the builder manifests and unit files beside a `layer.yml`: the first of `pixi.toml`,
/// `pyproject.toml`, `environment.yml`; `package.json`; `Cargo.toml` with `src/`. Missing or
/// unreadable directories simply have none.
pub fn scan_builder_files(dir: &Path) -> BuilderFiles {
    // One directory read instead of a `stat` per candidate name: the entry's type comes from
    // `readdir` itself; only symlinks are followed (a linked file or `src` still counts).
    let mut files: BTreeSet<String> = BTreeSet::new();
    let mut has_src_dir = false;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(mut kind) = entry.file_type() else {
            continue;
        };
        if kind.is_symlink() {
            match std::fs::metadata(entry.path()) {
                Ok(meta) => kind = meta.file_type(),
                Err(_) => continue,
            }
        }
        if kind.is_file() {
            files.insert(name);
        } else if kind.is_dir() && name == "src" {
            has_src_dir = true;
        }
    }
    let file = |n: &str| files.contains(n);
    BuilderFiles {
        pixi_manifest: ["pixi.toml", "pyproject.toml", "environment.yml"]
            .into_iter()
            .find(|n| file(n))
            .map(str::to_string),
        pixi_lock: file("pixi.lock"),
        build_script: file("build.sh"),
        npm: file("package.json"),
        cargo: file("Cargo.toml") && has_src_dir,
        // Sorted, since the set is.
        unit_files: files
            .iter()
            .filter(|n| n.ends_with(".service") && n.len() > ".service".len())
            .cloned()
            .collect(),
    }
}

/// Load `dir/layer.yml` as the layer named after `dir`, with its builder files.
pub fn load_layer_dir(dir: &Path, ctx: &ParseContext) -> Result<Layer, LayerError> {
    let name = match dir.file_name().and_then(|n| n.to_str()) {
        Some(n) if valid_layer_name(n) => n.to_string(),
        other => {
            return Err(LayerError::InvalidName {
                path: dir.to_path_buf(),
                name: other
                    .map(str::to_string)
                    .unwrap_or_else(|| dir.to_string_lossy().into_owned()),
            })
        }
    };
    let file = dir.join("layer.yml");
    let text = crate::yaml::read_utf8(&file).map_err(|source| LayerError::Read {
        path: file.clone(),
        source,
    })?;
    let mut layer = parse_layer(&name, &file, &text, ctx)?;
    layer.builder_files = scan_builder_files(&layer.source_dir);
    Ok(layer)
}

/// Layer names become directory and file names in the bundle and on the target.
pub fn valid_layer_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The `layer:` value of the top-level mapping, or the reason there is none we accept.
fn unwrap_layer<'n>(
    doc: &Doc,
    entries: &'n [(Node, Node)],
) -> Result<Option<&'n Node>, LayerError> {
    let Some((_, body)) = entries
        .iter()
        .find(|(k, _)| k.scalar_text() == Some("layer"))
    else {
        let first = entries.first().map(|(k, _)| k);
        let pos = first.map(|k| k.pos).unwrap_or(Pos { line: 1, column: 1 });
        if let Some(k) = first.filter(|k| k.scalar_text() == Some("candy")) {
            return Err(schema(
                doc.error(
                    k.pos,
                    YamlErrorKind::UnknownKey,
                    "unknown top-level key `candy`",
                )
                .with_hint("`candy:` is a later schema; schema v3 wraps a layer in `layer:`"),
            ));
        }
        return Err(schema(
            doc.error(
                pos,
                YamlErrorKind::Invalid,
                "legacy flat layer.yml form: the keys are not wrapped in `layer:`",
            )
            .with_hint("wrap the contents in `layer:` (add `layer:` as the first line and indent everything under it)"),
        ));
    };
    let others: Vec<&Node> = entries
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.scalar_text() != Some("layer"))
        .collect();
    if let Some(first) = others.first() {
        let names: Vec<String> = others
            .iter()
            .map(|k| format!("`{}`", k.scalar_text().unwrap_or("?")))
            .collect();
        return Err(schema(
            doc.error(
                first.pos,
                YamlErrorKind::Invalid,
                format!(
                    "`layer:` wrapper present together with other top-level keys {}",
                    names.join(", ")
                ),
            )
            .with_hint("move these keys inside `layer:` or remove them; a layer file has exactly one top-level key"),
        ));
    }
    Ok(if body.is_null() { None } else { Some(body) })
}

// ------------------------------------------------------------------------------------------
// The walker

struct Parser<'a> {
    doc: Doc<'a>,
    ctx: &'a ParseContext,
    /// The layer's name, for messages.
    layer: &'a str,
}

type R<T> = Result<T, YamlError>;

impl Parser<'_> {
    fn err(&self, pos: Pos, kind: YamlErrorKind, msg: impl Into<String>) -> YamlError {
        self.doc.error(pos, kind, msg)
    }

    fn unknown_key(&self, key_node: &Node, key: &str, ctx: &str, valid: &[&str]) -> YamlError {
        let e = self.err(
            key_node.pos,
            YamlErrorKind::UnknownKey,
            format!("unknown key `{key}` in `{ctx}`"),
        );
        if let Some(s) = yaml::suggest(key, valid.iter().copied()) {
            e.with_hint(format!("did you mean `{s}`?"))
        } else {
            let mut valid: Vec<&str> = valid.to_vec();
            valid.sort_unstable();
            e.with_hint(format!(
                "valid keys here: {}",
                valid
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }

    /// A mapping's entries as (key text, key node, value node); non-text keys are errors.
    fn entries<'n>(&self, node: &'n Node, what: &str) -> R<Vec<(String, &'n Node, &'n Node)>> {
        self.doc
            .map(node, what)?
            .iter()
            .map(|(k, v)| Ok((self.doc.key(k, what)?, k, v)))
            .collect()
    }

    fn fill_layer(&self, layer: &mut Layer, entries: &[(Node, Node)], layer_dir: &Path) -> R<()> {
        let mut description = None;
        let mut info = None;
        let mut status = None;
        for (k, v) in entries {
            let key = self.doc.key(k, "layer")?;
            let what = format!("layer.{key}");
            match key.as_str() {
                "name" => {
                    self.doc.string(v, &what)?;
                }
                "description" => description = self.doc.opt_string(v, &what)?,
                "info" => info = self.doc.opt_string(v, &what)?,
                "status" => status = self.doc.opt_string(v, &what)?,
                "version" => layer.version = self.doc.opt_string(v, &what)?,
                "directory" => {
                    if let Some(dir) = self.doc.opt_string(v, &what)? {
                        self.relative_path(v, &dir, &what)?;
                        layer.source_dir = layer_dir.join(dir);
                    }
                }
                "depends" => layer.depends = self.layer_refs(v, &what)?,
                "layers" => layer.layers = self.layer_refs(v, &what)?,
                "env" => layer.env = self.env_map(v, &what)?,
                "path_append" => layer.path_append = self.non_empty_strings(v, &what)?,
                "vars" => layer.vars = self.env_map(v, &what)?,
                "tasks" => {
                    for (i, t) in self.doc.seq(v, &what)?.iter().enumerate() {
                        layer
                            .tasks
                            .push(self.task(t, &format!("layer.tasks[{i}]"))?);
                    }
                }
                "service" => {
                    for (i, s) in self.doc.seq(v, &what)?.iter().enumerate() {
                        layer
                            .services
                            .push(self.service(s, &format!("layer.service[{i}]"))?);
                    }
                }
                "secret_requires" | "secret_accepts" => {
                    let required = key == "secret_requires";
                    for (i, s) in self.doc.seq(v, &what)?.iter().enumerate() {
                        layer
                            .secrets
                            .push(self.secret(s, required, &format!("{what}[{i}]"))?);
                    }
                }
                "tests" => {
                    for (i, c) in self.doc.seq(v, &what)?.iter().enumerate() {
                        let check = self.check(c, &format!("{what}[{i}]"))?;
                        if let Some(first) = layer.checks.iter().find(|x| x.id == check.id) {
                            return Err(self
                                .err(
                                    c.pos,
                                    YamlErrorKind::Invalid,
                                    format!(
                                        "check id `{}` is used twice in `layer.tests` (first at line {})",
                                        check.id, first.pos.line
                                    ),
                                )
                                .with_hint("give every check of a layer its own `id:`"));
                        }
                        layer.checks.push(check);
                    }
                }
                "artifacts" => {
                    for (i, a) in self.doc.seq(v, &what)?.iter().enumerate() {
                        layer
                            .artifacts
                            .push(self.artifact(a, &format!("{what}[{i}]"))?);
                    }
                }
                _ => {
                    if let Some((_, reason)) = CONTAINER_ONLY.iter().find(|(c, _)| *c == key) {
                        if !is_empty_value(v) {
                            layer.container_only.push(ContainerOnlyKey {
                                key: key.clone(),
                                reason: (*reason).to_string(),
                            });
                        }
                    } else if let Some(section_key) = self.section_key(k, &key)? {
                        if let Some(section) = self.section(k, v, section_key, &what)? {
                            layer.package_sections.push(section);
                        }
                    } else {
                        return Err(self.unknown_layer_key(k, &key));
                    }
                }
            }
        }
        layer.description = description.or(info).or(status);
        Ok(())
    }

    fn unknown_layer_key(&self, k: &Node, key: &str) -> YamlError {
        let e = self.err(
            k.pos,
            YamlErrorKind::UnknownKey,
            format!("unknown key `{key}` in `layer`"),
        );
        if let Some(hint) = known_mistake(key) {
            return e.with_hint(hint);
        }
        let candidates: Vec<&str> = LAYER_KEYS
            .iter()
            .copied()
            .chain(CONTAINER_ONLY.iter().map(|(c, _)| *c))
            .chain(self.ctx.formats.iter().map(String::as_str))
            .chain(self.ctx.distros.iter().map(String::as_str))
            .collect();
        match yaml::suggest(key, candidates) {
            Some(s) => e.with_hint(format!("did you mean `{s}`?")),
            None => e.with_hint(format!(
                "a key inside `layer:` is a layer field, a package format ({}) or a distro tag such as `{}`",
                self.ctx
                    .formats
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.ctx
                    .distros
                    .iter()
                    .next()
                    .map(|d| format!("{d}:<version>"))
                    .unwrap_or_else(|| "<distro>:<version>".into())
            )),
        }
    }

    /// Classify a non-field key: a format, a valid distro tag list, or `None` (unknown). A key
    /// that is shaped like a tag but names an unknown distro is an error of its own.
    fn section_key(&self, k: &Node, key: &str) -> R<Option<SectionKey>> {
        if self.ctx.formats.contains(key) {
            return Ok(Some(SectionKey::Format(key.to_string())));
        }
        let tag_shaped = key.contains(':') || key.contains(',');
        let mut tags = Vec::new();
        for part in key.split(',') {
            let part = part.trim();
            let (distro, version) = match part.split_once(':') {
                Some((d, v)) => (d, Some(v)),
                None => (part, None),
            };
            let version_ok = version.is_none_or(|v| {
                !v.is_empty()
                    && v.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '~')
                    })
            });
            if !self.ctx.distros.contains(distro) || !version_ok {
                if !tag_shaped {
                    return Ok(None);
                }
                let e = self.err(
                    k.pos,
                    YamlErrorKind::UnknownKey,
                    if !self.ctx.distros.contains(distro) {
                        format!("unknown distro `{distro}` in section key `{key}`")
                    } else {
                        format!("malformed distro tag `{part}` in section key `{key}`")
                    },
                );
                let known = self
                    .ctx
                    .distros
                    .iter()
                    .map(|d| format!("`{d}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let hint = match yaml::suggest(distro, self.ctx.distros.iter().map(String::as_str)) {
                    Some(s) if s != distro => {
                        let fixed = match version {
                            Some(v) => format!("{s}:{v}"),
                            None => s.to_string(),
                        };
                        format!("did you mean `{fixed}`? (distros from build.yml: {known})")
                    }
                    _ => format!(
                        "a tag is `<distro>` or `<distro>:<version>`, comma-separated; distros from build.yml: {known}"
                    ),
                };
                return Err(e.with_hint(hint));
            }
            tags.push(part.to_string());
        }
        Ok(Some(SectionKey::Tags(tags)))
    }

    fn section(
        &self,
        k: &Node,
        v: &Node,
        key: SectionKey,
        what: &str,
    ) -> R<Option<PackageSection>> {
        let format_name = match &key {
            SectionKey::Format(f) => Some(f.clone()),
            SectionKey::Tags(_) => None,
        };
        let format = format_name.as_deref();
        let allowed = format
            .and_then(section_fields_for)
            .unwrap_or(SECTION_FIELDS);
        let mut s = PackageSection::empty(key, k.pos);
        let fields = self.entries(v, what).map_err(|e| {
            e.with_hint(format!(
                "a package section is a mapping, e.g. `{}: {{packages: [a, b]}}`",
                what.trim_start_matches("layer.")
            ))
        })?;
        for (field, fk, fv) in fields {
            let fwhat = format!("{what}.{field}");
            if !allowed.contains(&field.as_str()) {
                if let (Some(f), true) = (format, SECTION_FIELDS.contains(&field.as_str())) {
                    return Err(self
                        .err(
                            fk.pos,
                            YamlErrorKind::UnknownKey,
                            format!("`{field}` does not apply to a `{f}` section"),
                        )
                        .with_hint(format!(
                            "`{f}` sections take {}",
                            allowed
                                .iter()
                                .map(|a| format!("`{a}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                }
                return Err(self.unknown_key(fk, &field, what, allowed));
            }
            match field.as_str() {
                "packages" => s.packages = self.words(fv, &fwhat)?,
                "options" => s.options = self.non_empty_strings(fv, &fwhat)?,
                "keys" => s.keys = self.words(fv, &fwhat)?,
                "copr" => s.copr = self.words(fv, &fwhat)?,
                "modules" => s.modules = self.words(fv, &fwhat)?,
                "exclude" => s.exclude = self.non_empty_strings(fv, &fwhat)?,
                "repos" => {
                    for (i, r) in self.doc.seq(fv, &fwhat)?.iter().enumerate() {
                        s.repos
                            .push(self.repo(r, format, &format!("{fwhat}[{i}]"))?);
                    }
                }
                _ => return Err(self.unknown_key(fk, &field, what, allowed)),
            }
        }
        // A section with no packages installs nothing; authors use an empty one as an explicit
        // "nothing on this distro" marker (the original dropped it too).
        Ok(if s.packages.is_empty() { None } else { Some(s) })
    }

    fn repo(&self, node: &Node, format: Option<&str>, what: &str) -> R<Repo> {
        let allowed = format.and_then(repo_keys_for).unwrap_or(REPO_KEYS);
        let mut r = Repo::default();
        if !matches!(node.value, Value::Map(_)) {
            return Err(self.doc.wrong_type(node, "a mapping", what));
        }
        for (key, k, v) in self.entries(node, what)? {
            if !allowed.contains(&key.as_str()) {
                return Err(self.unknown_key(k, &key, what, allowed));
            }
            let value = self.doc.opt_string(v, &format!("{what}.{key}"))?;
            let slot = match key.as_str() {
                "name" => &mut r.name,
                "url" => &mut r.url,
                "gpgkey" => &mut r.gpgkey,
                "gpgcheck" => &mut r.gpgcheck,
                "rpm" => &mut r.rpm,
                "key" => &mut r.key,
                "signed_by" => &mut r.signed_by,
                "suite" => &mut r.suite,
                "components" => &mut r.components,
                "ppa" => &mut r.ppa,
                "server" => &mut r.server,
                "siglevel" => &mut r.siglevel,
                _ => return Err(self.unknown_key(k, &key, what, allowed)),
            };
            *slot = value;
        }
        Ok(r)
    }

    fn task(&self, node: &Node, what: &str) -> R<Task> {
        if !matches!(node.value, Value::Map(_)) {
            return Err(self
                .doc
                .wrong_type(node, "a mapping with one verb", what)
                .with_hint(
                "a task looks like `- cmd: ...` or `- mkdir: ...` with modifiers such as `user:`",
            ));
        }
        let entries = self.entries(node, what)?;
        // Find the verb first so modifier checks can name it.
        let mut verb: Option<(&str, &Node)> = None;
        for (key, k, v) in &entries {
            if let Some(vb) = VERBS.iter().find(|vb| **vb == key.as_str()) {
                if let Some((first, _)) = verb {
                    return Err(self
                        .err(
                            k.pos,
                            YamlErrorKind::Invalid,
                            format!("task `{what}` has two verbs, `{first}` and `{vb}`"),
                        )
                        .with_hint(
                            "a task does exactly one thing; split it into two list entries",
                        ));
                }
                verb = Some((vb, v));
            }
        }
        let Some((verb_name, verb_value)) = verb else {
            let e = self.err(
                node.pos,
                YamlErrorKind::Invalid,
                format!("task `{what}` has no verb"),
            );
            // A misspelt verb is the likely cause.
            let typo = entries.iter().find_map(|(key, _, _)| {
                yaml::suggest(key, VERBS.iter().copied()).filter(|s| s != key)
            });
            return Err(match typo {
                Some(s) => e.with_hint(format!(
                    "did you mean `{s}`? a task needs exactly one of {}",
                    verb_list()
                )),
                None => e.with_hint(format!("add exactly one of {}", verb_list())),
            });
        };
        let mut t = Task {
            verb: TaskVerb::Build {
                what: String::new(),
            },
            user: None,
            mode: None,
            env: Vec::new(),
            comment: None,
            uninstall: Vec::new(),
            pos: node.pos,
        };
        let mut to = None;
        let mut target = None;
        let mut content = None;
        let mut extract = None;
        let mut include = Vec::new();
        let mut strip_components = None;
        let mut caps = None;
        for (key, k, v) in &entries {
            let key = key.as_str();
            if VERBS.contains(&key) {
                continue;
            }
            let fwhat = format!("{what}.{key}");
            let Some((_, verbs)) = MODIFIERS.iter().find(|(m, _)| *m == key) else {
                let valid: Vec<&str> = VERBS
                    .iter()
                    .copied()
                    .chain(MODIFIERS.iter().map(|(m, _)| *m))
                    .collect();
                return Err(self.unknown_key(k, key, what, &valid));
            };
            if !verbs.is_empty() && !verbs.contains(&verb_name) {
                return Err(self
                    .err(
                        k.pos,
                        YamlErrorKind::Invalid,
                        format!("`{key}` does not apply to a `{verb_name}` task"),
                    )
                    .with_hint(format!(
                        "`{key}` is used with {}",
                        verbs
                            .iter()
                            .map(|v| format!("`{v}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
            }
            match key {
                "user" => t.user = self.doc.opt_string(v, &fwhat)?.filter(|u| !u.is_empty()),
                "env" => t.env = self.env_map(v, &fwhat)?,
                "comment" => t.comment = self.doc.opt_string(v, &fwhat)?,
                "uninstall" => {
                    let items = self.non_empty_strings(v, &fwhat)?;
                    let nodes = self.doc.seq(v, &fwhat)?;
                    t.uninstall = items
                        .into_iter()
                        .zip(nodes)
                        .enumerate()
                        .map(|(i, (p, n))| self.dest_path(n, p, &format!("{fwhat}[{i}]")))
                        .collect::<R<_>>()?;
                }
                "mode" => t.mode = Some(self.mode(v, &fwhat)?),
                // `to:` is where `copy` and `download` write; for `link` it is the link's target.
                "to" if verb_name == "link" => to = Some(self.non_empty(v, &fwhat)?),
                "to" => to = Some(self.dest_path(v, self.non_empty(v, &fwhat)?, &fwhat)?),
                "target" => target = Some(self.non_empty(v, &fwhat)?),
                "content" => {
                    content = Some(if v.is_null() {
                        String::new()
                    } else {
                        self.doc.string(v, &fwhat)?
                    })
                }
                "extract" => extract = Some(self.choice(v, &fwhat, EXTRACT_KINDS)?),
                "include" => include = self.non_empty_strings(v, &fwhat)?,
                "strip_components" => strip_components = Some(self.doc.uint::<u32>(v, &fwhat)?),
                "caps" => {
                    caps = Some(if v.is_null() {
                        String::new()
                    } else {
                        self.doc.string(v, &fwhat)?
                    })
                }
                _ => return Err(self.unknown_key(k, key, what, VERBS)),
            }
        }
        let vwhat = format!("{what}.{verb_name}");
        let arg = self.non_empty(verb_value, &vwhat)?;
        let arg = match verb_name {
            "mkdir" | "write" | "link" | "setcap" => self.dest_path(verb_value, arg, &vwhat)?,
            _ => arg,
        };
        t.verb = match verb_name {
            "cmd" => TaskVerb::Cmd { body: arg },
            "mkdir" => TaskVerb::Mkdir { path: arg },
            "copy" => {
                self.relative_path(verb_value, &arg, &vwhat)?;
                TaskVerb::Copy { src: arg, to }
            }
            "write" => {
                let Some(content) = content else {
                    return Err(self.missing(node, "write", "content"));
                };
                TaskVerb::Write { path: arg, content }
            }
            "link" => {
                let target = match (target, to) {
                    (Some(_), Some(_)) => {
                        let k = entries
                            .iter()
                            .find(|(k, _, _)| k == "to")
                            .map(|(_, k, _)| *k);
                        return Err(self
                            .err(
                                k.map_or(node.pos, |k| k.pos),
                                YamlErrorKind::Invalid,
                                "`link` task has both `target` and `to`",
                            )
                            .with_hint("keep `target:` (what the link points to)"));
                    }
                    (Some(t), None) | (None, Some(t)) => t,
                    (None, None) => return Err(self.missing(node, "link", "target")),
                };
                TaskVerb::Link { path: arg, target }
            }
            "download" => TaskVerb::Download {
                url: arg,
                to,
                extract,
                include,
                strip_components,
            },
            "setcap" => TaskVerb::Setcap {
                path: arg,
                caps: caps.unwrap_or_default(),
            },
            // `verb_name` comes from VERBS; `build` is the one left.
            _ => TaskVerb::Build { what: arg },
        };
        Ok(t)
    }

    fn missing(&self, node: &Node, verb: &str, key: &str) -> YamlError {
        self.err(
            node.pos,
            YamlErrorKind::MissingKey,
            format!("`{verb}` task needs `{key}:`"),
        )
    }

    fn service(&self, node: &Node, what: &str) -> R<ServiceEntry> {
        if !matches!(node.value, Value::Map(_)) {
            return Err(self.doc.wrong_type(node, "a mapping", what));
        }
        let mut s = ServiceEntry {
            pos: node.pos,
            ..ServiceEntry::default()
        };
        let mut name = None;
        for (key, k, v) in self.entries(node, what)? {
            let fwhat = format!("{what}.{key}");
            if SUPERVISORD_KEYS.contains(&key.as_str()) {
                if let Some(text) = self.doc.opt_string(v, &fwhat)? {
                    s.supervisord.push((key, text));
                }
                continue;
            }
            match key.as_str() {
                "name" => name = Some(self.unit_word(v, &fwhat)?),
                "use_packaged" => s.use_packaged = Some(self.unit_word(v, &fwhat)?),
                "exec" => s.exec = Some(self.non_empty(v, &fwhat)?),
                "env" => s.env = self.env_map(v, &fwhat)?,
                "restart" => s.restart = Some(self.choice(v, &fwhat, RESTART_VALUES)?),
                "working_directory" => s.working_directory = self.doc.opt_string(v, &fwhat)?,
                "user" => s.user = self.doc.opt_string(v, &fwhat)?,
                "after" => s.after = self.one_or_many(v, &fwhat)?,
                "before" => s.before = self.one_or_many(v, &fwhat)?,
                "stdout" => s.stdout = self.doc.opt_string(v, &fwhat)?,
                "stop_timeout" => s.stop_timeout = self.doc.opt_string(v, &fwhat)?,
                "scope" => {
                    s.scope = match self.choice(v, &fwhat, &["system", "user"])?.as_str() {
                        "user" => ServiceScope::User,
                        _ => ServiceScope::System,
                    }
                }
                "enable" => s.enable = self.doc.bool(v, &fwhat)?,
                "overrides" => s.overrides = Some(self.overrides(v, &fwhat)?),
                _ => {
                    let valid: Vec<&str> = SERVICE_KEYS
                        .iter()
                        .chain(SUPERVISORD_KEYS)
                        .copied()
                        .collect();
                    return Err(self.unknown_key(k, &key, what, &valid));
                }
            }
        }
        let Some(name) = name else {
            return Err(self.err(
                node.pos,
                YamlErrorKind::MissingKey,
                format!("service entry `{what}` needs `name:`"),
            ));
        };
        match (&s.use_packaged, &s.exec) {
            (Some(_), Some(_)) => {
                return Err(self
                    .err(node.pos, YamlErrorKind::Invalid, format!("service `{name}` has both `use_packaged` and `exec`"))
                    .with_hint("`use_packaged` enables a unit the distro ships; `exec` defines a new one — pick one"))
            }
            (None, None) => {
                return Err(self
                    .err(node.pos, YamlErrorKind::MissingKey, format!("service `{name}` has neither `exec` nor `use_packaged`"))
                    .with_hint("add `exec:` (a command to run as a new unit) or `use_packaged:` (a unit the distro ships)"))
            }
            _ => {}
        }
        s.name = name;
        Ok(s)
    }

    fn check(&self, node: &Node, what: &str) -> R<Check> {
        if !matches!(node.value, Value::Map(_)) {
            return Err(self
                .doc
                .wrong_type(node, "a mapping with `id:` and one kind", what)
                .with_hint(
                    "a check looks like `- id: x-binary` / `  file: /usr/bin/x` / `  exists: true`",
                ));
        }
        let entries = self.entries(node, what)?;
        let mut kind: Option<(&str, &Node, &[&str])> = None;
        for (key, k, v) in &entries {
            if CHECK_KINDS_UNSUPPORTED.contains(&key.as_str()) {
                return Err(self
                    .err(
                        k.pos,
                        YamlErrorKind::Invalid,
                        format!("check kind `{key}` is not supported by this `ov`"),
                    )
                    .with_hint(format!("supported kinds: {}", check_kind_list())));
            }
            if let Some((name, fields)) = CHECK_KINDS.iter().find(|(n, _)| *n == key.as_str()) {
                if let Some((first, _, _)) = kind {
                    return Err(self
                        .err(
                            k.pos,
                            YamlErrorKind::Invalid,
                            format!("check `{what}` has two kinds, `{first}` and `{name}`"),
                        )
                        .with_hint("a check tests one thing; split it into two list entries"));
                }
                kind = Some((name, v, fields));
            }
        }
        let Some((kind_name, kind_value, fields)) = kind else {
            let e = self.err(
                node.pos,
                YamlErrorKind::MissingKey,
                format!("check `{what}` has no kind"),
            );
            let typo = entries.iter().find_map(|(key, _, _)| {
                yaml::suggest(key, CHECK_KINDS.iter().map(|(n, _)| *n)).filter(|s| s != key)
            });
            return Err(match typo {
                Some(s) => e.with_hint(format!(
                    "did you mean `{s}`? a check needs exactly one of {}",
                    check_kind_list()
                )),
                None => e.with_hint(format!("add exactly one of {}", check_kind_list())),
            });
        };
        let mut id = None;
        let mut scope = CheckScope::Build;
        let mut timeout_secs = None;
        let mut exclude_distros = Vec::new();
        let (mut exists, mut mode, mut filetype) = (None, None, None);
        let (mut contains, mut stdout, mut stderr, mut body) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut exit_status, mut in_container) = (None, None);
        let (mut installed, mut package_map) = (None, Vec::new());
        let (mut running, mut enabled, mut reachable) = (None, None, None);
        let (mut status, mut method, mut allow_insecure) = (None, None, None);
        for (key, k, v) in &entries {
            let key = key.as_str();
            if key == kind_name {
                continue;
            }
            let fwhat = format!("{what}.{key}");
            if !CHECK_COMMON.contains(&key) && !fields.contains(&key) {
                if let Some((other, _)) = CHECK_KINDS
                    .iter()
                    .find(|(_, f)| f.contains(&key))
                    .filter(|_| !CHECK_KINDS.iter().any(|(n, _)| *n == key))
                {
                    return Err(self
                        .err(
                            k.pos,
                            YamlErrorKind::Invalid,
                            format!("`{key}` does not apply to a `{kind_name}` check"),
                        )
                        .with_hint(format!(
                            "`{key}` belongs to `{other}` checks; `{kind_name}` checks take {}",
                            quoted_list(fields)
                        )));
                }
                let valid: Vec<&str> = CHECK_COMMON.iter().chain(fields.iter()).copied().collect();
                return Err(self.unknown_key(k, key, what, &valid));
            }
            match key {
                "id" => id = Some(self.check_id(v, &fwhat)?),
                "scope" => {
                    scope = match self.choice(v, &fwhat, &["build", "deploy"])?.as_str() {
                        "deploy" => CheckScope::Deploy,
                        _ => CheckScope::Build,
                    }
                }
                "timeout" => timeout_secs = Some(self.duration_secs(v, &fwhat)?),
                "exclude_distros" => exclude_distros = self.words(v, &fwhat)?,
                "exists" => exists = Some(self.doc.bool(v, &fwhat)?),
                "mode" => mode = Some(self.mode(v, &fwhat)?),
                "filetype" => {
                    filetype = Some(self.choice(v, &fwhat, &["file", "directory", "symlink"])?)
                }
                "contains" => contains = self.matchers(v, &fwhat)?,
                "stdout" => stdout = self.matchers(v, &fwhat)?,
                "stderr" => stderr = self.matchers(v, &fwhat)?,
                "body" => body = self.matchers(v, &fwhat)?,
                "exit_status" => exit_status = Some(i64::from(self.doc.uint::<u8>(v, &fwhat)?)),
                "in_container" => in_container = Some(self.doc.bool(v, &fwhat)?),
                "installed" => installed = Some(self.doc.bool(v, &fwhat)?),
                "package_map" => {
                    for (tag, k2, name) in self.entries(v, &fwhat)? {
                        let nwhat = format!("{fwhat}.{tag}");
                        let distro = tag.split(':').next().unwrap_or_default();
                        if !self.ctx.distros.contains(distro) {
                            return Err(self
                                .err(
                                    k2.pos,
                                    YamlErrorKind::UnknownKey,
                                    format!("unknown distro `{distro}` in `{fwhat}`"),
                                )
                                .with_hint(format!(
                                    "a key is `<distro>` or `<distro>:<version>`; distros from build.yml: {}",
                                    self.ctx
                                        .distros
                                        .iter()
                                        .map(|d| format!("`{d}`"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )));
                        }
                        package_map.push((tag.clone(), self.package_word(name, &nwhat)?));
                    }
                }
                "running" => running = Some(self.doc.bool(v, &fwhat)?),
                "enabled" => enabled = Some(self.doc.bool(v, &fwhat)?),
                "reachable" => reachable = Some(self.doc.bool(v, &fwhat)?),
                "status" => status = Some(self.doc.uint::<u16>(v, &fwhat)?),
                "method" => method = Some(self.choice(v, &fwhat, HTTP_METHODS)?),
                "allow_insecure" => allow_insecure = Some(self.doc.bool(v, &fwhat)?),
                // mcp/k8s fields: such checks never run on a VM or host; their values are
                // accepted as written and not kept.
                "tool" | "input" | "cluster" | "k8s_count" => {
                    if matches!(v.value, Value::Seq(_) | Value::Map(_)) {
                        return Err(self.doc.wrong_type(v, "a single value", &fwhat));
                    }
                }
                _ => return Err(self.unknown_key(k, key, what, CHECK_COMMON)),
            }
        }
        let Some(id) = id else {
            return Err(self
                .err(
                    node.pos,
                    YamlErrorKind::MissingKey,
                    format!("check `{what}` needs `id:`"),
                )
                .with_hint("name the check, e.g. `id: ripgrep-binary`; reports use it"));
        };
        let kwhat = format!("{what}.{kind_name}");
        let probe = match kind_name {
            "file" => CheckProbe::File {
                path: self.non_empty(kind_value, &kwhat)?,
                exists: exists.unwrap_or(true),
                mode,
                filetype,
                contains,
            },
            "command" => CheckProbe::Command {
                command: self.non_empty(kind_value, &kwhat)?,
                exit_status: exit_status.unwrap_or(0),
                stdout,
                stderr,
                in_container,
            },
            "package" => CheckProbe::Package {
                name: self.package_word(kind_value, &kwhat)?,
                installed: installed.unwrap_or(true),
                package_map,
            },
            "service" => CheckProbe::Service {
                name: self.unit_word(kind_value, &kwhat)?,
                running,
                enabled,
            },
            "addr" => CheckProbe::Addr {
                addr: self.non_empty(kind_value, &kwhat)?,
                reachable: reachable.unwrap_or(true),
            },
            "http" => CheckProbe::Http {
                url: self.non_empty(kind_value, &kwhat)?,
                status: status.unwrap_or(200),
                method: method.unwrap_or_else(|| "GET".into()),
                body,
                allow_insecure: allow_insecure.unwrap_or(false),
            },
            "mcp" => CheckProbe::Mcp {
                verb: self.non_empty(kind_value, &kwhat)?,
            },
            _ => CheckProbe::K8s {
                verb: self.non_empty(kind_value, &kwhat)?,
            },
        };
        Ok(Check {
            id,
            scope,
            timeout_secs,
            exclude_distros,
            probe,
            pos: node.pos,
        })
    }

    /// A check id travels in progress lines (`id=…`) and reports: a plain word.
    fn check_id(&self, node: &Node, what: &str) -> R<String> {
        let s = self.non_empty(node, what)?;
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(self
                .err(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!("`{s}` is not a valid check id for `{what}`"),
                )
                .with_hint("use letters, digits, `.`, `_`, `-`"));
        }
        Ok(s)
    }

    /// A package name: one word.
    fn package_word(&self, node: &Node, what: &str) -> R<String> {
        let s = self.non_empty(node, what)?;
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) || s.starts_with('-') {
            return Err(self
                .err(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!("`{s}` in `{what}` is not a package name"),
                )
                .with_hint("one package name, without spaces, not starting with `-`"));
        }
        Ok(s)
    }

    /// `5s`, `2m`, `1h` or a whole number of seconds, at most one day.
    fn duration_secs(&self, node: &Node, what: &str) -> R<u32> {
        let text = self.doc.string(node, what)?;
        let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => text.split_at(i),
            None => (text.as_str(), "s"),
        };
        let factor = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => 0,
        };
        match digits.parse::<u32>().ok().map(|n| n.saturating_mul(factor)) {
            Some(secs) if factor > 0 && (1..=86_400).contains(&secs) => Ok(secs),
            _ => Err(self
                .err(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!("`{what}` must be a duration such as `5s` or `2m`, found `{text}`"),
                )
                .with_hint("a whole number followed by `s`, `m` or `h`, between 1s and 24h")),
        }
    }

    /// Text tests: a string (`contains`), a mapping with `contains:` and/or `matches:`, or a
    /// list of those.
    fn matchers(&self, node: &Node, what: &str) -> R<Vec<Matcher>> {
        let mut out = Vec::new();
        let one = |n: &Node, out: &mut Vec<Matcher>| -> R<()> {
            match &n.value {
                Value::Map(_) => {
                    for (key, k, v) in self.entries(n, what)? {
                        let mwhat = format!("{what}.{key}");
                        match key.as_str() {
                            "contains" => out.push(Matcher::Contains(self.non_empty(v, &mwhat)?)),
                            "matches" => out.push(Matcher::Matches(self.non_empty(v, &mwhat)?)),
                            _ => {
                                return Err(self.unknown_key(
                                    k,
                                    &key,
                                    what,
                                    &["contains", "matches"],
                                ))
                            }
                        }
                    }
                    Ok(())
                }
                Value::Seq(_) | Value::Null => Err(self.doc.wrong_type(
                    n,
                    "text or a mapping with `contains:` / `matches:`",
                    what,
                )),
                _ => {
                    out.push(Matcher::Contains(self.non_empty(n, what)?));
                    Ok(())
                }
            }
        };
        match &node.value {
            Value::Seq(items) => {
                for n in items {
                    one(n, &mut out)?;
                }
            }
            _ => one(node, &mut out)?,
        }
        Ok(out)
    }

    fn overrides(&self, node: &Node, what: &str) -> R<ServiceOverrides> {
        let mut o = ServiceOverrides::default();
        for (key, k, v) in self.entries(node, what)? {
            let fwhat = format!("{what}.{key}");
            match key.as_str() {
                "env" => o.env = self.env_map(v, &fwhat)?,
                "after" => o.after = self.one_or_many(v, &fwhat)?,
                "exec" => o.exec = Some(self.non_empty(v, &fwhat)?),
                _ => return Err(self.unknown_key(k, &key, what, &["env", "after", "exec"])),
            }
        }
        Ok(o)
    }

    fn secret(&self, node: &Node, required: bool, what: &str) -> R<SecretSpec> {
        if !matches!(node.value, Value::Map(_)) {
            return Err(self.doc.wrong_type(node, "a mapping", what));
        }
        let mut name = None;
        let mut s = SecretSpec {
            name: String::new(),
            required,
            description: None,
            key: None,
            default: None,
        };
        for (key, k, v) in self.entries(node, what)? {
            let fwhat = format!("{what}.{key}");
            match key.as_str() {
                "name" => name = Some(self.env_name(v, &fwhat)?),
                "description" => s.description = self.doc.opt_string(v, &fwhat)?,
                "key" => s.key = self.doc.opt_string(v, &fwhat)?,
                "default" => s.default = self.doc.opt_string(v, &fwhat)?,
                _ => {
                    return Err(self.unknown_key(
                        k,
                        &key,
                        what,
                        &["name", "description", "key", "default"],
                    ))
                }
            }
        }
        s.name = name.ok_or_else(|| {
            self.err(
                node.pos,
                YamlErrorKind::MissingKey,
                format!("secret entry `{what}` needs `name:`"),
            )
        })?;
        Ok(s)
    }

    fn artifact(&self, node: &Node, what: &str) -> R<Artifact> {
        if !matches!(node.value, Value::Map(_)) {
            return Err(self.doc.wrong_type(node, "a mapping", what));
        }
        let (mut name, mut path) = (None, None);
        let mut a = Artifact {
            name: String::new(),
            path: String::new(),
            retrieve_to: None,
            mode: None,
            optional: false,
            rewrite: Vec::new(),
        };
        for (key, k, v) in self.entries(node, what)? {
            let fwhat = format!("{what}.{key}");
            match key.as_str() {
                "name" => name = Some(self.non_empty(v, &fwhat)?),
                "path" => path = Some(self.non_empty(v, &fwhat)?),
                "retrieve_to" => a.retrieve_to = self.doc.opt_string(v, &fwhat)?,
                "mode" => a.mode = Some(self.mode(v, &fwhat)?),
                "optional" => a.optional = self.doc.bool(v, &fwhat)?,
                "rewrite" => {
                    for (i, r) in self.doc.seq(v, &fwhat)?.iter().enumerate() {
                        a.rewrite.push(self.rewrite(r, &format!("{fwhat}[{i}]"))?);
                    }
                }
                _ => {
                    return Err(self.unknown_key(
                        k,
                        &key,
                        what,
                        &["name", "path", "retrieve_to", "mode", "optional", "rewrite"],
                    ))
                }
            }
        }
        a.name = name.ok_or_else(|| {
            self.err(
                node.pos,
                YamlErrorKind::MissingKey,
                format!("artifact `{what}` needs `name:`"),
            )
        })?;
        a.path = path.ok_or_else(|| {
            self.err(
                node.pos,
                YamlErrorKind::MissingKey,
                format!("artifact `{}` needs `path:`", a.name),
            )
        })?;
        Ok(a)
    }

    fn rewrite(&self, node: &Node, what: &str) -> R<ArtifactRewrite> {
        if !matches!(node.value, Value::Map(_)) {
            return Err(self.doc.wrong_type(node, "a mapping", what));
        }
        let (mut find, mut replace) = (None, None);
        for (key, k, v) in self.entries(node, what)? {
            let fwhat = format!("{what}.{key}");
            match key.as_str() {
                "find" => find = Some(self.non_empty(v, &fwhat)?),
                "replace" => {
                    replace = Some(if v.is_null() {
                        String::new()
                    } else {
                        self.doc.string(v, &fwhat)?
                    })
                }
                _ => return Err(self.unknown_key(k, &key, what, &["find", "replace"])),
            }
        }
        match (find, replace) {
            (Some(find), Some(replace)) => Ok(ArtifactRewrite { find, replace }),
            _ => Err(self.err(
                node.pos,
                YamlErrorKind::MissingKey,
                format!("`{what}` needs both `find:` and `replace:`"),
            )),
        }
    }

    // --------------------------------------------------------------------------------------
    // Value helpers

    fn non_empty(&self, node: &Node, what: &str) -> R<String> {
        let s = self.doc.string(node, what)?;
        if s.trim().is_empty() {
            return Err(self.err(
                node.pos,
                YamlErrorKind::Invalid,
                format!("`{what}` is empty"),
            ));
        }
        self.no_nul(node, &s, what)?;
        Ok(s)
    }

    fn no_nul(&self, node: &Node, s: &str, what: &str) -> R<()> {
        if s.contains('\0') {
            return Err(self.err(
                node.pos,
                YamlErrorKind::Invalid,
                format!("`{what}` contains a NUL byte"),
            ));
        }
        Ok(())
    }

    fn non_empty_strings(&self, node: &Node, what: &str) -> R<Vec<String>> {
        let items = self.doc.seq(node, what).map_err(|e| {
            e.with_hint(format!(
                "write a list, e.g. `{}: [a, b]`",
                what.rsplit('.').next().unwrap_or(what)
            ))
        })?;
        items
            .iter()
            .map(|n| self.non_empty(n, &format!("{what}[]")))
            .collect()
    }

    /// Names that reach the command line as one argument each (packages, copr projects, keys):
    /// whitespace would silently turn into a different argument list.
    fn words(&self, node: &Node, what: &str) -> R<Vec<String>> {
        let items = self.non_empty_strings(node, what)?;
        for (item, n) in items.iter().zip(self.doc.seq(node, what)?) {
            if item.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self
                    .err(
                        n.pos,
                        YamlErrorKind::Invalid,
                        format!("`{item}` in `{what}` contains whitespace"),
                    )
                    .with_hint("list one name per entry"));
            }
        }
        Ok(items)
    }

    fn layer_refs(&self, node: &Node, what: &str) -> R<Vec<String>> {
        let items = self.non_empty_strings(node, what)?;
        for (item, n) in items.iter().zip(self.doc.seq(node, what)?) {
            let ok = if let Some(remote) = item.strip_prefix('@') {
                !remote.is_empty() && !remote.chars().any(|c| c.is_whitespace() || c.is_control())
            } else {
                valid_layer_name(item)
            };
            if !ok {
                return Err(self
                    .err(n.pos, YamlErrorKind::Invalid, format!("`{item}` in `{what}` is not a layer name"))
                    .with_hint("a layer name is its directory name (letters, digits, `.`, `_`, `-`), or a remote ref `@host/org/repo/path[:version]`"));
            }
        }
        Ok(items)
    }

    fn one_or_many(&self, node: &Node, what: &str) -> R<Vec<String>> {
        match node.value {
            Value::Seq(_) | Value::Null => self.non_empty_strings(node, what),
            _ => Ok(vec![self.non_empty(node, what)?]),
        }
    }

    fn env_name(&self, node: &Node, what: &str) -> R<String> {
        let s = self.doc.string(node, what)?;
        if !valid_env_name(&s) {
            return Err(self
                .err(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!("`{s}` is not a valid environment variable name"),
                )
                .with_hint("use letters, digits and `_`, not starting with a digit"));
        }
        Ok(s)
    }

    /// `env:`-style maps: names must be shell variable names; values are any scalar, as written.
    fn env_map(&self, node: &Node, what: &str) -> R<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (key, k, v) in self.entries(node, what)? {
            if !valid_env_name(&key) {
                return Err(self
                    .err(
                        k.pos,
                        YamlErrorKind::Invalid,
                        format!("`{key}` in `{what}` is not a valid environment variable name"),
                    )
                    .with_hint("use letters, digits and `_`, not starting with a digit"));
            }
            let value = match &v.value {
                Value::Null => String::new(),
                Value::Seq(_) | Value::Map(_) => {
                    return Err(self
                        .doc
                        .wrong_type(v, "a single value", &format!("{what}.{key}")))
                }
                _ => self.doc.string(v, &format!("{what}.{key}"))?,
            };
            self.no_nul(v, &value, what)?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// A file mode: a quoted octal string of 3 or 4 digits. An unquoted number is refused
    /// because YAML 1.2 reads `0755` as decimal 755, which is not what anyone means.
    fn mode(&self, node: &Node, what: &str) -> R<String> {
        match &node.value {
            Value::Str(s) => {
                let ok =
                    (3..=4).contains(&s.len()) && s.bytes().all(|b| (b'0'..=b'7').contains(&b));
                if ok {
                    Ok(s.clone())
                } else {
                    Err(self
                        .err(
                            node.pos,
                            YamlErrorKind::Invalid,
                            format!("`{what}` must be an octal file mode, found `{s}`"),
                        )
                        .with_hint("write three or four octal digits, e.g. `mode: \"0755\"`"))
                }
            }
            Value::Int(_) | Value::Float(_) => {
                let raw = node.scalar_text().unwrap_or_default();
                Err(self
                    .err(node.pos, YamlErrorKind::WrongType, format!("`{what}` must be a quoted octal string, found the number `{raw}`"))
                    .with_hint(format!("write `mode: \"{raw}\"`; unquoted, YAML 1.2 reads {raw} as a decimal number")))
            }
            _ => Err(self
                .doc
                .wrong_type(node, "a quoted octal string such as \"0755\"", what)),
        }
    }

    fn choice(&self, node: &Node, what: &str, allowed: &[&str]) -> R<String> {
        let s = self.doc.string(node, what)?;
        if allowed.contains(&s.as_str()) {
            return Ok(s);
        }
        let e = self.err(
            node.pos,
            YamlErrorKind::Invalid,
            format!(
                "`{what}` must be one of {}, found `{s}`",
                quoted_list(allowed)
            ),
        );
        Err(match yaml::suggest(&s, allowed.iter().copied()) {
            Some(m) => e.with_hint(format!("did you mean `{m}`?")),
            None => e,
        })
    }

    /// Unit and service names end up in file names: keep them to a safe alphabet.
    fn unit_word(&self, node: &Node, what: &str) -> R<String> {
        let s = self.non_empty(node, what)?;
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':' | '\\'))
            || s.starts_with('.')
        {
            return Err(self
                .err(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!("`{s}` is not a valid unit name for `{what}`"),
                )
                .with_hint("use letters, digits, `.`, `_`, `-`, `@`"));
        }
        Ok(s)
    }

    /// A path a step writes to on the target, normalised by [`normalise_dest`]: `.` and empty
    /// components dropped, `..` refused here, where the error can point at the text.
    fn dest_path(&self, node: &Node, path: String, what: &str) -> R<String> {
        match normalise_dest(&path) {
            Ok(p) => Ok(p.into_owned()),
            Err(ParentDirInPath { resolved }) => {
                let e = self.err(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!(
                        "layer `{}`: `{what}` must not contain `..`, found `{path}`",
                        self.layer
                    ),
                );
                let why = "`..` is resolved on the target, through its symlinks, so what is written, recorded and later removed would not be the path named here";
                Err(e.with_hint(match resolved {
                    Some(r) => format!("write the path it means without `..`: `{r}` ({why})"),
                    None => format!(
                        "write the path without `..`, below `/`, `~/` or `${{HOME}}` ({why})"
                    ),
                }))
            }
        }
    }

    /// Paths that must stay inside the layer directory: no absolute paths, no `..`. Layer files
    /// are untrusted; a `copy:` of `/etc/shadow` must not pull the compiling machine's file into a
    /// bundle.
    fn relative_path(&self, node: &Node, p: &str, what: &str) -> R<()> {
        let path = Path::new(p);
        let escapes = path.is_absolute()
            || path.components().any(|c| {
                matches!(
                    c,
                    Component::ParentDir | Component::RootDir | Component::Prefix(_)
                )
            });
        if escapes {
            return Err(self
                .err(
                    node.pos,
                    YamlErrorKind::Invalid,
                    format!("`{what}` must be a path inside the layer directory, found `{p}`"),
                )
                .with_hint("use a relative path without `..`"));
        }
        Ok(())
    }
}

fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_empty_value(v: &Node) -> bool {
    match &v.value {
        Value::Null => true,
        Value::Seq(s) => s.is_empty(),
        Value::Map(m) => m.is_empty(),
        Value::Str(s) => s.is_empty(),
        _ => false,
    }
}

fn check_kind_list() -> String {
    CHECK_KINDS
        .iter()
        .map(|(n, _)| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn verb_list() -> String {
    quoted_list(VERBS)
}

fn quoted_list(xs: &[&str]) -> String {
    xs.iter()
        .map(|x| format!("`{x}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
