//! Stage `load`: the in-memory model of one `layer.yml` (schema v3 at 3e714536); every field the
//! original tool read is represented, and nothing here touches the file system or the target.
//!
//! These types are the *validated* form: `crate::layer_parse` turns YAML into them and rejects
//! anything that does not fit (unknown keys, wrong types, tasks with no or two verbs). Later stages
//! (`resolve`, `lower`) only read them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

pub use crate::entries::{Pos, Repo, ServiceEntry, ServiceOverrides, ServiceScope, Task, TaskVerb};

/// One layer: the directory `layers/<name>/` with its `layer.yml` and sibling files.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Layer {
    /// The layer's name: its directory's basename (the `name:` key is informational).
    pub name: String,
    /// The `layer.yml` this was read from.
    pub file: PathBuf,
    /// Where relative file references resolve: the layer directory, or `directory:` if given.
    pub source_dir: PathBuf,
    /// `description:` / `info:` / `status:` — free text, carried into the manifest only.
    pub description: Option<String>,
    /// `version:` — CalVer string copied into the ledger.
    pub version: Option<String>,
    /// `depends:` — layers that must be installed before this one (bare names; `@remote` refs kept verbatim).
    pub depends: Vec<String>,
    /// `layers:` — composition: these layers are spliced in at this position.
    pub layers: Vec<String>,
    /// `env:` in file order (values are strings; YAML scalars of other types are stringified).
    pub env: Vec<(String, String)>,
    /// `path_append:` entries, in order.
    pub path_append: Vec<String>,
    /// `vars:` — build-time values: substituted into the layer's task paths and URLs and exported
    /// to its `cmd:` tasks (see `lower::apply_vars`).
    pub vars: Vec<(String, String)>,
    /// `tasks:` in file order.
    pub tasks: Vec<Task>,
    /// `service:` entries in file order.
    pub services: Vec<ServiceEntry>,
    /// Package sections (format sections `rpm/deb/pac/aur` and distro-tag sections) in file order.
    /// Sections with no packages are dropped at parse time, as in the original.
    pub package_sections: Vec<PackageSection>,
    /// `secret_requires:` / `secret_accepts:` — names of credentials injected into task env.
    pub secrets: Vec<SecretSpec>,
    /// `artifacts:` — files pulled back to the operator after a deploy.
    pub artifacts: Vec<Artifact>,
    /// Keys that only mean something to a container build or runtime (`ports`, `volumes`, …), with a
    /// short summary of their value; lowered to `skip` entries so `ov plan` shows what was left out.
    pub container_only: Vec<ContainerOnlyKey>,
    /// Builder manifests found beside `layer.yml` (pixi/npm/cargo); `aur` comes from its section.
    pub builder_files: BuilderFiles,
    /// `tests:` — the layer's own declarative checks, in file order (run by `run.sh --test`).
    pub checks: Vec<Check>,
    /// Where a remote layer was read from (repository, ref, locked commit); `None`: the project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<crate::origin::RemoteSource>,
}

impl Layer {
    /// True when the layer does something by itself (the original's `HasContent`): a composing layer
    /// without content vanishes from the resolved order.
    pub fn has_content(&self) -> bool {
        !self.package_sections.is_empty()
            || !self.tasks.is_empty()
            || !self.env.is_empty()
            || !self.path_append.is_empty()
            || !self.services.is_empty()
            || self
                .container_only
                .iter()
                .any(ContainerOnlyKey::counts_as_content)
            || self.builder_files.any()
    }
}

/// Which sibling files trigger builders, and the unit-file glob the original looked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuilderFiles {
    /// `pixi.toml`, else `pyproject.toml`, else `environment.yml` (file name only).
    pub pixi_manifest: Option<String>,
    /// `pixi.lock` present (⇒ `pixi install --frozen`).
    pub pixi_lock: bool,
    /// `build.sh` present (run after the pixi install).
    pub build_script: bool,
    /// `package.json` present.
    pub npm: bool,
    /// `Cargo.toml` present (with `src/`).
    pub cargo: bool,
    /// `*.service` files beside `layer.yml` (sorted file names).
    pub unit_files: Vec<String>,
}

impl BuilderFiles {
    /// Whether any builder manifest or unit file is present.
    pub fn any(&self) -> bool {
        self.pixi_manifest.is_some() || self.npm || self.cargo || !self.unit_files.is_empty()
    }
}

/// What selects a package section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", content = "value", rename_all = "kebab-case")]
pub enum SectionKey {
    /// A package format declared by `build.yml` (`rpm`, `deb`, `pac`, `aur`).
    Format(String),
    /// Distro tags, e.g. `ubuntu:24.04` or `debian,ubuntu` (split on commas).
    Tags(Vec<String>),
}

/// One package section with all the sub-fields the original's templates read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageSection {
    /// The key that selects it.
    pub key: SectionKey,
    /// Where the section's key stands, for messages.
    pub pos: Pos,
    pub packages: Vec<String>,
    /// `options:` — extra install flags.
    pub options: Vec<String>,
    pub repos: Vec<Repo>,
    /// `keys:` (pac) — keys to receive and locally sign.
    pub keys: Vec<String>,
    /// `copr:` (rpm) — `owner/project`.
    pub copr: Vec<String>,
    /// `modules:` (rpm) — `name:stream`.
    pub modules: Vec<String>,
    /// `exclude:` (rpm).
    pub exclude: Vec<String>,
}

impl PackageSection {
    /// A section selected by `key`, standing at `pos`, with nothing in it yet.
    pub fn empty(key: SectionKey, pos: Pos) -> PackageSection {
        PackageSection {
            key,
            pos,
            packages: Vec::new(),
            options: Vec::new(),
            repos: Vec::new(),
            keys: Vec::new(),
            copr: Vec::new(),
            modules: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

/// A credential the layer needs (`secret_requires`) or may use (`secret_accepts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretSpec {
    /// Environment variable name.
    pub name: String,
    /// Whether the layer cannot work without it.
    pub required: bool,
    /// Free text.
    pub description: Option<String>,
    /// Credential-store key (`ov/<svc>/<key>`).
    pub key: Option<String>,
    /// `default:` — the value used when an accepted (optional) secret is not set.
    pub default: Option<String>,
}

/// A file retrieved back to the operator after a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    pub name: String,
    /// `path:` on the target.
    pub path: String,
    /// `retrieve_to:` on the operator's machine.
    pub retrieve_to: Option<String>,
    pub mode: Option<String>,
    pub optional: bool,
    /// `rewrite:` — literal find/replace pairs applied to the retrieved file, in order.
    pub rewrite: Vec<ArtifactRewrite>,
}

/// One `rewrite:` entry of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactRewrite {
    /// Text to find (may contain `${VAR}` references expanded on the operator's side).
    pub find: String,
    /// Replacement text (same expansion).
    pub replace: String,
}

/// A key that only a container build or runtime uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerOnlyKey {
    /// The YAML key (`ports`, `volumes`, `security`, `route`, `libvirt`, …).
    pub key: String,
    /// Why it does not apply to a host or VM deploy.
    pub reason: String,
}

impl ContainerOnlyKey {
    /// Whether the original's `HasContent` counted this key (ports, route, volumes, aliases,
    /// extract, data, libvirt, port_relay): only those keep a composing layer in the resolved
    /// order. Checks, env contracts, security and the like do not.
    pub fn counts_as_content(&self) -> bool {
        matches!(
            self.key.as_str(),
            "ports"
                | "route"
                | "volumes"
                | "aliases"
                | "extract"
                | "data"
                | "libvirt"
                | "port_relay"
        )
    }
}

/// One entry of `tests:`: a declarative check of what the layer should have left on a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `id:` — unique within the layer; letters, digits, `.`, `_`, `-` (it travels in progress lines).
    pub id: String,
    /// `scope:` — `build` (what an image build leaves) or `deploy` (what a running deploy shows).
    pub scope: CheckScope,
    /// `timeout:` in seconds (`5s`, `2m`, `30`); `None` means the runtime's default.
    pub timeout_secs: Option<u32>,
    /// `exclude_distros:` — distro tags on which the check does not apply.
    pub exclude_distros: Vec<String>,
    /// What is checked.
    pub probe: CheckProbe,
    /// Where the entry stands, for messages.
    pub pos: Pos,
}

/// When a check is meant to hold (the original ran `build` checks against images and `deploy`
/// checks against running containers; on a VM or host both hold after an apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckScope {
    /// `scope: build`, also when `scope:` is absent.
    Build,
    /// `scope: deploy`.
    Deploy,
}

impl CheckScope {
    /// The name as written in `layer.yml`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckScope::Build => "build",
            CheckScope::Deploy => "deploy",
        }
    }
}

/// A test on text (a command's output, a file's content, a response body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", content = "value", rename_all = "lowercase")]
pub enum Matcher {
    /// `contains: TEXT` (also a bare string): TEXT occurs literally.
    Contains(String),
    /// `matches: RE`: the POSIX extended regular expression RE matches somewhere.
    Matches(String),
}

/// The kind of a check and its kind-specific fields, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckProbe {
    /// `file: PATH` with `exists`, `mode`, `filetype`, `contains`.
    File {
        /// The path (may use `${HOME}`, `~/`).
        path: String,
        /// `exists:` (default true).
        exists: bool,
        /// `mode:` — octal string.
        mode: Option<String>,
        /// `filetype:` — `file`, `directory` or `symlink`.
        filetype: Option<String>,
        /// `contains:` — tests on the content.
        contains: Vec<Matcher>,
    },
    /// `command: SHELL` with `exit_status`, `stdout`, `stderr`, `in_container`.
    Command {
        /// The shell command line (code, like a `cmd:` body).
        command: String,
        /// `exit_status:` (default 0).
        exit_status: i64,
        /// `stdout:` tests.
        stdout: Vec<Matcher>,
        /// `stderr:` tests.
        stderr: Vec<Matcher>,
        /// `in_container:` as written.
        in_container: Option<bool>,
    },
    /// `package: NAME` with `installed` and a per-distro `package_map`.
    Package {
        /// The package name.
        name: String,
        /// `installed:` (default true).
        installed: bool,
        /// `package_map:` — distro tag → name, in file order.
        package_map: Vec<(String, String)>,
    },
    /// `service: NAME` with `running`, `enabled`.
    Service {
        /// The service name (a `service:` entry of a layer, or a unit).
        name: String,
        running: Option<bool>,
        enabled: Option<bool>,
    },
    /// `addr: HOST:PORT` with `reachable` (default true).
    Addr {
        /// `host:port`.
        addr: String,
        reachable: bool,
    },
    /// `http: URL` with `status`, `method`, `body`, `allow_insecure`.
    Http {
        url: String,
        /// `status:` (default 200).
        status: u16,
        /// `method:` (default GET).
        method: String,
        /// `body:` tests.
        body: Vec<Matcher>,
        /// `allow_insecure:` — accept any TLS certificate.
        allow_insecure: bool,
    },
    /// `mcp: VERB` — talks to an MCP server through the container runtime's wiring.
    Mcp {
        /// `ping`, `list-tools`, `call`.
        verb: String,
    },
    /// `k8s: VERB` with `cluster:` — queries a Kubernetes cluster through `ov`'s kubeconfig.
    K8s {
        /// `wait-nodes`, `storageclass`, …
        verb: String,
    },
}

impl CheckProbe {
    /// The kind's key (`file`, `command`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            CheckProbe::File { .. } => "file",
            CheckProbe::Command { .. } => "command",
            CheckProbe::Package { .. } => "package",
            CheckProbe::Service { .. } => "service",
            CheckProbe::Addr { .. } => "addr",
            CheckProbe::Http { .. } => "http",
            CheckProbe::Mcp { .. } => "mcp",
            CheckProbe::K8s { .. } => "k8s",
        }
    }
}

/// A map of layer name to layer, ordered by name (the resolver's lexicographic queue relies on it).
pub type Layers = BTreeMap<String, Layer>;

/// A destination path (`mkdir:`, `write:`, `link:`, `setcap:`, `copy`/`download` `to:`,
/// `uninstall:`) with `..` in it: what it resolves to lexically, when that stays below its anchor
/// (`/`, `~`, `${HOME}`, `$HOME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentDirInPath {
    /// The path without `..`, if it can be spelled so without climbing above its anchor.
    pub resolved: Option<String>,
}

/// A path a step writes to on the target, spelled one way. `.` components and empty ones (`//`,
/// a trailing `/`) are dropped: they name the same file, and the plan, the scripts and the
/// ledger's record of created directories then carry one spelling. `..` is refused: it would be
/// resolved on the target through whatever symlinks are there, and the runtime would record a
/// directory the layer did not make.
pub fn normalise_dest(path: &str) -> Result<std::borrow::Cow<'_, str>, ParentDirInPath> {
    let absolute = path.starts_with('/');
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        let anchored = !absolute && matches!(parts.first(), Some(&("~" | "${HOME}" | "$HOME")));
        let floor = usize::from(anchored);
        let mut stack: Vec<&str> = Vec::new();
        let mut climbs = false;
        for c in &parts {
            if *c == ".." {
                if stack.len() > floor {
                    stack.pop();
                } else {
                    climbs = true;
                }
            } else {
                stack.push(c);
            }
        }
        let resolved = (!climbs && stack.len() > floor)
            .then(|| format!("{}{}", if absolute { "/" } else { "" }, stack.join("/")));
        return Err(ParentDirInPath { resolved });
    }
    let joined = format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"));
    Ok(if joined == path || (joined.is_empty() && !absolute) {
        std::borrow::Cow::Borrowed(path)
    } else {
        std::borrow::Cow::Owned(joined)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_paths_are_normalised_and_parent_dirs_refused() {
        for (given, want) in [
            ("/etc/foo", "/etc/foo"),
            ("/etc//foo/", "/etc/foo"),
            ("/etc/./foo/.", "/etc/foo"),
            ("~/./.config//x", "~/.config/x"),
            ("${HOME}/a/", "${HOME}/a"),
            ("/", "/"),
            ("//", "/"),
            ("~", "~"),
            ("~/", "~"),
            // Relative paths are left for `lower` to refuse as written.
            (".", "."),
            ("rel/./x", "rel/x"),
        ] {
            assert_eq!(normalise_dest(given).as_deref(), Ok(want), "{given}");
        }
        for (given, resolved) in [
            ("/etc/../root/.ssh/x", Some("/root/.ssh/x")),
            ("~/.config/../.bashrc", Some("~/.bashrc")),
            ("${HOME}/../other/x", None),
            ("/../etc", None),
            ("/a/..", None),
            ("/a/b/..", Some("/a")),
        ] {
            assert_eq!(
                normalise_dest(given),
                Err(ParentDirInPath {
                    resolved: resolved.map(str::to_string)
                }),
                "{given}"
            );
        }
    }
}
