//! Stage `plan`: the InstallPlan IR — the contract between lowering (`lower`) and rendering
//! (`render`); every step carries scope, venue, phase, gate and its reverse operations, and the
//! serialised form tags every step with an explicit `kind`.
//!
//! Path-like strings (`${HOME}/.local/bin`, `~/x`) are kept as written: they are resolved on the
//! target at run time by the rendered scripts, never on the machine that compiles.

use std::collections::BTreeMap;

pub use crate::origin::LayerOrigin;

use serde::Serialize;

pub use crate::entries::{
    download_extract, Pos, Repo, ServiceEntry, ServiceOverrides, ServiceScope, Task, TaskVerb,
};

/// Version of the plan/manifest format; bump on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

/// Who a step acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Runs as root.
    System,
    /// Runs as the target user, with that user's HOME.
    User,
    /// Edits the target user's shell profile (env.d + managed block); runs as the target user.
    UserProfile,
}

impl Scope {
    /// The kebab-case name used in plans, file names and progress lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::System => "system",
            Scope::User => "user",
            Scope::UserProfile => "user-profile",
        }
    }
}

/// Where a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Venue {
    /// Directly on the target.
    HostNative,
    /// Inside a builder toolchain on the target (pixi, npm, cargo, makepkg) as the target user.
    ContainerBuilder,
    /// Not run on this target; the step's `skip` says why.
    Skip,
}

impl Venue {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Venue::HostNative => "host-native",
            Venue::ContainerBuilder => "container-builder",
            Venue::Skip => "skip",
        }
    }
}

/// Ordering within a package section: repository set-up, install, and clean-up after install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Repository, key, copr and module set-up before an install.
    Prepare,
    /// The install itself (every non-package step is in this phase).
    Install,
    /// Undoing temporary set-up after an install (copr re-disable).
    Cleanup,
}

impl Phase {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Install => "install",
            Phase::Cleanup => "cleanup",
        }
    }
}

/// An opt-in a step needs before it runs; a gated-off step stays in the plan, marked skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// Adding repositories, keys, coprs or modules (`--allow-repo-changes`).
    AllowRepoChanges,
    /// Raw `cmd:` tasks as root (`--allow-root-tasks`).
    AllowRootTasks,
    /// Enabling or installing services (`--with-services`).
    WithServices,
}

impl Gate {
    /// The CLI flag without dashes, e.g. `with-services`.
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::AllowRepoChanges => "allow-repo-changes",
            Gate::AllowRootTasks => "allow-root-tasks",
            Gate::WithServices => "with-services",
        }
    }
}

/// The gates opened for one compile (CLI flags, pre-set by the deploy node's `install_opts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Gates {
    /// `--allow-repo-changes`.
    pub allow_repo_changes: bool,
    /// `--allow-root-tasks`.
    pub allow_root_tasks: bool,
    /// `--with-services`.
    pub with_services: bool,
}

impl Gates {
    /// Whether `gate` is open.
    pub fn allows(&self, gate: Gate) -> bool {
        match gate {
            Gate::AllowRepoChanges => self.allow_repo_changes,
            Gate::AllowRootTasks => self.allow_root_tasks,
            Gate::WithServices => self.with_services,
        }
    }
}

/// Why a step does not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skip {
    /// Human-readable reason, e.g. `requires --with-services` or `container-only key`.
    pub reason: String,
    /// The gate that would enable the step, when a gate is the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_with: Option<Gate>,
}

/// How the target is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TargetKind {
    /// A VM from the `vm:` map, reached over SSH.
    Vm {
        /// The VM entity name.
        vm: String,
    },
    /// The local machine.
    Host,
}

/// The distro of a target as far as package selection is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetDistro {
    /// Ordered tags, most specific first, e.g. `["ubuntu:24.04", "ubuntu", "debian"]`.
    pub tags: Vec<String>,
    /// Package formats in order; the first is the primary one (`pac`, `deb`, `rpm`; Arch adds `aur`).
    pub formats: Vec<String>,
}

impl TargetDistro {
    /// The primary package format.
    pub fn primary_format(&self) -> &str {
        self.formats.first().map(String::as_str).unwrap_or("")
    }
}

/// What is being deployed, where, and for whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deploy {
    /// The deploy's canonical name: `vm:<vm>` or `host`.
    pub name: String,
    /// Stable identifier of this deploy in the target's ledger (16 hex digits).
    pub id: String,
    /// How the target is reached.
    pub target: TargetKind,
    /// The target's distro.
    pub distro: TargetDistro,
    /// The account user-scope steps run as; `None` means "the user who runs the bundle" (`--user`).
    pub user: Option<String>,
    /// The layers that were asked for, before resolution.
    pub requested: Vec<String>,
}

/// The whole compiled deploy: ordered layers, each with ordered steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallPlan {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    pub deploy: Deploy,
    /// Gates opened for this compile.
    pub gates: Gates,
    /// Layers in install order (resolved, de-duplicated).
    pub layers: Vec<LayerPlan>,
}

/// One layer's steps, in emission order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerPlan {
    pub name: String,
    /// `version:` of the layer, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The layer directory relative to the project root (forward slashes); for a remote layer
    /// `host/org/repo/path@commit`.
    pub source: String,
    /// Where the layer came from: a project directory, or a repository at a locked commit
    /// (printed only for a remote layer; a local one's path is `source`).
    #[serde(skip_serializing_if = "LayerOrigin::is_local")]
    pub origin: LayerOrigin,
    /// Where payload files are read: a remote layer's directory in its checkout; `None`: `source`
    /// under the project root. Not part of the plan's text (it differs from machine to machine).
    #[serde(skip)]
    pub source_dir: Option<std::path::PathBuf>,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// The layer's own checks (`tests:`), lowered for this target, in file order; run by
    /// `run.sh --test`, never by an apply.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckPlan>,
}

impl LayerPlan {
    /// Where the layer came from (for provenance): its project directory, or its repository,
    /// ref and locked commit.
    pub fn origin(&self) -> &LayerOrigin {
        &self.origin
    }
}

/// One check of a layer, as the bundle runs it on this target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckPlan {
    /// The check's `id:` (a plain word).
    pub id: String,
    /// `build` or `deploy` (both are checked after an apply on a VM or host).
    pub scope: CheckWhen,
    /// How long one probe may take, in seconds.
    pub timeout_secs: u32,
    /// What is probed, with every compile-time variable substituted.
    #[serde(flatten)]
    pub probe: CheckSpec,
    /// Why the check does not run on this target, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
}

/// The `scope:` of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckWhen {
    /// What installing leaves (files, packages, commands).
    Build,
    /// What a running deploy shows (services, ports, endpoints).
    Deploy,
}

impl CheckWhen {
    /// `build` or `deploy`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckWhen::Build => "build",
            CheckWhen::Deploy => "deploy",
        }
    }
}

/// A test on text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TextTest {
    /// `contains` (literal) or `matches` (POSIX extended regular expression).
    pub op: TextOp,
    /// The text or expression.
    pub value: String,
}

/// How a [`TextTest`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TextOp {
    /// Literal substring.
    Contains,
    /// Extended regular expression, anywhere in the text.
    Matches,
}

impl TextOp {
    /// `contains` or `matches`.
    pub fn as_str(self) -> &'static str {
        match self {
            TextOp::Contains => "contains",
            TextOp::Matches => "matches",
        }
    }
}

/// What a check probes. Every probe only reads: none changes the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckSpec {
    /// A path, looked at as the target user.
    File {
        /// The path (`${HOME}`, `~/` resolved on the target).
        path: String,
        /// Whether it must exist (`false`: must not).
        exists: bool,
        /// Octal mode it must have.
        #[serde(skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
        /// `file`, `directory` or `symlink`.
        #[serde(skip_serializing_if = "Option::is_none")]
        filetype: Option<String>,
        /// Tests on its content.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        contains: Vec<TextTest>,
    },
    /// A shell command line run as the target user, in a login shell.
    Command {
        /// The command line.
        command: String,
        /// The exit status it must have.
        exit_status: i64,
        /// Tests on its standard output.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        stdout: Vec<TextTest>,
        /// Tests on its standard error.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        stderr: Vec<TextTest>,
    },
    /// A package, asked of the package manager of `format`.
    Package {
        /// `deb`, `rpm` or `pac`.
        format: String,
        /// The name on this distro (`package_map` applied).
        name: String,
        /// Whether it must be installed.
        installed: bool,
    },
    /// A systemd unit.
    Service {
        /// The unit, e.g. `ov-jupyter-jupyter.service`.
        unit: String,
        /// A unit of the target user's manager (`systemctl --user`).
        user: bool,
        /// Whether it must be active.
        #[serde(skip_serializing_if = "Option::is_none")]
        running: Option<bool>,
        /// Whether it must be enabled.
        #[serde(skip_serializing_if = "Option::is_none")]
        enabled: Option<bool>,
    },
    /// A TCP connection.
    Addr {
        /// Host name or address.
        host: String,
        port: u16,
        /// Whether it must connect (`false`: must be refused).
        reachable: bool,
    },
    /// An HTTP request (with `curl`, as the target user).
    Http {
        url: String,
        method: String,
        /// Status it must answer.
        status: u16,
        /// Tests on the body.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        body: Vec<TextTest>,
        /// Accept any TLS certificate.
        insecure: bool,
    },
    /// A kind that never runs outside the original's container runtime (`mcp`, `k8s`).
    Unsupported {
        /// The kind's key.
        what: String,
    },
}

impl CheckSpec {
    /// The kind's name in reports (`file`, `command`, …).
    pub fn kind(&self) -> &str {
        match self {
            CheckSpec::File { .. } => "file",
            CheckSpec::Command { .. } => "command",
            CheckSpec::Package { .. } => "package",
            CheckSpec::Service { .. } => "service",
            CheckSpec::Addr { .. } => "addr",
            CheckSpec::Http { .. } => "http",
            CheckSpec::Unsupported { what } => what,
        }
    }
}

/// One step of the IR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What the step does (serialised with a `kind` tag).
    #[serde(flatten)]
    pub action: Action,
    /// Who it acts for.
    pub scope: Scope,
    /// Where it runs.
    pub venue: Venue,
    /// Package-section phase (`install` for everything else).
    pub phase: Phase,
    /// The opt-in it needs, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// Set when the step will not run on this target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip: Option<Skip>,
    /// What undoes it, last-to-first at teardown. Ops whose effect is only known at run time (a
    /// package that was already installed, a service that was already enabled) are recorded as
    /// *candidates*; the rendered script records only what it really changed.
    pub reverse: Vec<ReverseOp>,
}

impl Step {
    /// A step acting for `scope`, run on the target itself in the install phase, with no gate
    /// and no skip; change the fields that differ.
    pub fn new(action: Action, scope: Scope, reverse: Vec<ReverseOp>) -> Step {
        Step {
            action,
            scope,
            venue: Venue::HostNative,
            phase: Phase::Install,
            gate: None,
            skip: None,
            reverse,
        }
    }

    /// The step kind's name as it appears in plans and manifests.
    pub fn kind(&self) -> &'static str {
        self.action.kind()
    }

    /// Whether the step, when it runs, runs code as root that is not ov's own helpers: a `cmd:`
    /// or `build:` as root, a downloaded script, a package transaction (maintainer scripts), a
    /// service started. Such code may change any directory, so what the guard of root's writes
    /// knew about directories before it no longer holds (the step script and run.sh look again).
    /// Unknown kinds count as root code: the guard then looks again, which is only slower.
    pub fn runs_root_code(&self) -> bool {
        use crate::entries::TaskVerb;
        if self.scope != Scope::System || self.skip.is_some() {
            return false;
        }
        match &self.action {
            Action::Task { task, run_as, .. } => match &task.verb {
                // (a named account may be root under another name: only the target user is surely not)
                TaskVerb::Cmd { .. } | TaskVerb::Build { .. } => *run_as != RunAs::TargetUser,
                TaskVerb::Download {
                    to, extract, url, ..
                } => to.is_none() || extract.as_deref() == Some("sh") || url.ends_with(".sh"),
                TaskVerb::Mkdir { .. }
                | TaskVerb::Copy { .. }
                | TaskVerb::Write { .. }
                | TaskVerb::Link { .. }
                | TaskVerb::Setcap { .. } => false,
            },
            Action::File { .. } | Action::RepoChange { .. } | Action::ShellHook { .. } => false,
            _ => true,
        }
    }
}

/// The account a task runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "as", content = "name", rename_all = "kebab-case")]
pub enum RunAs {
    /// root (`user:` absent, `root`, `0`, `0:0`).
    Root,
    /// The deploy's target user (`${USER}`).
    TargetUser,
    /// Another named account or `uid[:gid]`, which must exist on the target.
    Named(String),
}

/// A builder toolchain run on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuilderKind {
    /// `pixi.toml` / `pyproject.toml` / `environment.yml`.
    Pixi,
    /// `package.json` (global npm install of its dependencies).
    Npm,
    /// `Cargo.toml` (`cargo install --path`).
    Cargo,
    /// An `aur:` section (makepkg / yay on an Arch target).
    Aur,
}

/// What a step does. Eight kinds run; `ContainerOnly` records a key that was left out and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub enum Action {
    /// Distro packages from one package section, in one phase.
    SystemPackages {
        /// `pac`, `deb` or `rpm`.
        format: String,
        /// Package names (install phase).
        packages: Vec<String>,
        /// Extra install flags.
        options: Vec<String>,
        /// Repositories (prepare phase).
        repos: Vec<Repo>,
        /// pac keys (prepare phase).
        keys: Vec<String>,
        /// rpm coprs (prepare: enable; cleanup: re-disable).
        copr: Vec<String>,
        /// rpm modules (prepare phase).
        modules: Vec<String>,
        /// rpm excludes (install phase).
        exclude: Vec<String>,
    },
    /// A repository file written by a package section.
    RepoChange {
        /// The package format it belongs to.
        format: String,
        /// Absolute path of the file on the target.
        path: String,
        /// Full file content.
        content: String,
    },
    /// One `tasks:` entry other than `copy:` (which is a [`Action::File`]).
    Task {
        /// The task with the layer's `vars:` applied; a `cmd:` body refers to the layer directory
        /// as `${OV_CTX}` (written `/ctx` in the layer).
        task: Task,
        /// Who runs it.
        run_as: RunAs,
        /// Set when a `cmd:` body refers to the layer directory: every file in it (paths relative
        /// to it, sorted), carried in the bundle under `files/<layer>/`.
        #[serde(skip_serializing_if = "Option::is_none")]
        ctx_files: Option<Vec<String>>,
    },
    /// A payload file from the layer directory, carried inside the bundle and installed on the target.
    File {
        /// Path relative to the layer's source directory.
        source: String,
        /// Destination path on the target (as written; resolved at run time).
        dest: String,
        /// Octal mode, e.g. `0644`.
        mode: String,
        /// Who owns it.
        run_as: RunAs,
    },
    /// `env:` / `path_append:` → `~/.config/overthink/env.d/<layer>.env` plus the managed block.
    ShellHook {
        /// Variables in file order.
        env: Vec<(String, String)>,
        /// PATH additions in order.
        path_append: Vec<String>,
    },
    /// A unit the distro already ships, enabled.
    ServicePackaged {
        /// Unit name with suffix, e.g. `sshd.service`.
        unit: String,
        enable: bool,
        /// The service entry (for overrides).
        service: ServiceEntry,
    },
    /// A custom service rendered as a systemd unit.
    ServiceCustom {
        /// Unit name, `ov-<layer>-<name>.service`.
        unit: String,
        /// The service entry.
        service: ServiceEntry,
    },
    /// A builder toolchain run as the target user.
    Builder {
        /// Which toolchain.
        builder: BuilderKind,
        /// The manifest file (relative to the layer directory), if file-triggered.
        #[serde(skip_serializing_if = "Option::is_none")]
        manifest: Option<String>,
        /// aur: package names; npm: install specs (`name` or `name@version`), in name order.
        packages: Vec<String>,
        /// npm: the package names of `packages` (what `npm uninstall -g` takes).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        names: Vec<String>,
        /// cargo: the crate's `[package] name`.
        #[serde(skip_serializing_if = "Option::is_none")]
        crate_name: Option<String>,
        /// Files of the layer directory the build reads (the manifest, lock file, build script,
        /// sources), relative to it, sorted; carried in the bundle under `files/<layer>/`.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        files: Vec<String>,
    },
    /// A key that only matters to containers; never runs (venue `skip`).
    ContainerOnly {
        /// The YAML key.
        key: String,
    },
}

impl Action {
    /// The step kind's name (`SystemPackages`, `Task`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Action::SystemPackages { .. } => "SystemPackages",
            Action::RepoChange { .. } => "RepoChange",
            Action::Task { .. } => "Task",
            Action::File { .. } => "File",
            Action::ShellHook { .. } => "ShellHook",
            Action::ServicePackaged { .. } => "ServicePackaged",
            Action::ServiceCustom { .. } => "ServiceCustom",
            Action::Builder { .. } => "Builder",
            Action::ContainerOnly { .. } => "ContainerOnly",
        }
    }

    /// A one-line, human-readable description (for `ov plan`, manifests and `run.sh --list`).
    pub fn summary(&self) -> String {
        match self {
            Action::SystemPackages {
                format,
                packages,
                repos,
                keys,
                copr,
                modules,
                ..
            } => {
                let mut parts = Vec::new();
                if !packages.is_empty() {
                    parts.push(format!("{}: {}", format, packages.join(" ")));
                }
                if !repos.is_empty() {
                    let names: Vec<&str> = repos
                        .iter()
                        .map(|r| r.name.as_deref().unwrap_or("?"))
                        .collect();
                    parts.push(format!("repos {}", names.join(" ")));
                }
                if !keys.is_empty() {
                    parts.push(format!("keys {}", keys.join(" ")));
                }
                if !copr.is_empty() {
                    parts.push(format!("copr {}", copr.join(" ")));
                }
                if !modules.is_empty() {
                    parts.push(format!("modules {}", modules.join(" ")));
                }
                if parts.is_empty() {
                    format!("{format}: nothing")
                } else {
                    parts.join("; ")
                }
            }
            Action::RepoChange { path, .. } => format!("repo file {path}"),
            Action::Task { task, .. } => match &task.verb {
                TaskVerb::Cmd { body } => {
                    let first = body.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                    let mut short: String = first.trim().chars().take(48).collect();
                    if first.trim().chars().count() > 48 || body.trim().lines().count() > 1 {
                        short.push('…');
                    }
                    format!("cmd {short}")
                }
                TaskVerb::Mkdir { path } => format!("mkdir {path}"),
                TaskVerb::Copy { src, to } => {
                    format!("copy {src} -> {}", to.as_deref().unwrap_or(src))
                }
                TaskVerb::Write { path, .. } => format!("write {path}"),
                TaskVerb::Link { path, target } => format!("link {path} -> {target}"),
                TaskVerb::Download { url, .. } => format!("download {url}"),
                TaskVerb::Setcap { path, caps } if caps.is_empty() => format!("setcap -r {path}"),
                TaskVerb::Setcap { path, caps } => format!("setcap {caps} {path}"),
                TaskVerb::Build { what } => format!("build {what} (no-op)"),
            },
            Action::File {
                source, dest, mode, ..
            } => format!("file {source} -> {dest} ({mode})"),
            Action::ShellHook { env, path_append } => {
                let mut parts: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
                if !path_append.is_empty() {
                    parts.push(format!("PATH+={}", path_append.join(":")));
                }
                format!("env {}", parts.join(" "))
            }
            Action::ServicePackaged { unit, enable, .. } => {
                format!("{} {unit}", if *enable { "enable" } else { "configure" })
            }
            Action::ServiceCustom { unit, .. } => format!("unit {unit}"),
            Action::Builder {
                builder,
                manifest,
                packages,
                ..
            } => match manifest {
                Some(m) => format!("{builder:?} {m}").to_lowercase(),
                None => format!(
                    "{} {}",
                    format!("{builder:?}").to_lowercase(),
                    packages.join(" ")
                ),
            },
            Action::ContainerOnly { key } => format!("{key} (container-only)"),
        }
    }
}

/// The kinds of reverse operation recorded in the ledger (the original's 15, same spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReverseKind {
    /// Remove packages the step installed.
    PackageRemove,
    /// `cargo uninstall`.
    CargoUninstall,
    /// `npm uninstall -g`.
    NpmUninstallG,
    /// Remove a pixi environment.
    PixiEnvRemove,
    /// Remove files as root.
    RmFileSystem,
    /// Remove files as the target user.
    RmFileUser,
    /// Remove a directory tree.
    RmDirRecursive,
    /// `systemctl disable --now`.
    ServiceDisable,
    /// Remove a unit file.
    ServiceRemove,
    /// Remove a drop-in.
    RemoveDropin,
    /// Re-enable a unit that was enabled before.
    RestoreEnabled,
    /// Strip the managed profile block (done once, when no layer remains).
    RemoveManagedBlock,
    /// Remove the layer's env.d file.
    RemoveEnvdFile,
    /// Remove a repository file.
    RemoveRepoFile,
    /// `dnf copr disable`.
    CoprDisable,
}

/// One reverse operation, as stored in the target's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReverseOp {
    /// What to do.
    pub kind: ReverseKind,
    /// Package format (package-remove).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Paths, packages, units or coprs.
    pub targets: Vec<String>,
    /// Who performs it.
    pub scope: Scope,
    /// Extra details (`layer`, `format`, …).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::{Pos, Task, TaskVerb};

    fn task(verb: TaskVerb, run_as: RunAs) -> Action {
        let task = Task {
            verb,
            user: None,
            mode: None,
            env: vec![],
            comment: None,
            uninstall: vec![],
            pos: Pos { line: 1, column: 1 },
        };
        Action::Task {
            task,
            run_as,
            ctx_files: None,
        }
    }

    /// Which steps the guard of root's writes must not trust its table past: root's own code
    /// (commands, builds, downloaded scripts, package transactions), not ov's helpers, not code
    /// of the target user, not a user-scope or skipped step.
    #[test]
    fn root_code_is_code_root_runs_that_is_not_ovs_own() {
        let cmd = || TaskVerb::Cmd {
            body: "true".into(),
        };
        let write = TaskVerb::Write {
            path: "/etc/x".into(),
            content: String::new(),
        };
        let packages = Action::SystemPackages {
            format: "deb".into(),
            packages: vec!["jq".into()],
            options: vec![],
            repos: vec![],
            keys: vec![],
            copr: vec![],
            modules: vec![],
            exclude: vec![],
        };
        let script = TaskVerb::Download {
            url: "https://example.org/install.sh".into(),
            to: None,
            extract: None,
            include: vec![],
            strip_components: None,
        };
        let archive = TaskVerb::Download {
            url: "https://example.org/tool.tar.gz".into(),
            to: Some("/opt/tool".into()),
            extract: None,
            include: vec![],
            strip_components: None,
        };
        let system = |action| Step::new(action, Scope::System, vec![]);
        assert!(system(task(cmd(), RunAs::Root)).runs_root_code());
        assert!(system(task(cmd(), RunAs::Named("toor".into()))).runs_root_code());
        assert!(system(packages.clone()).runs_root_code());
        assert!(system(task(script, RunAs::Root)).runs_root_code());
        assert!(!system(task(cmd(), RunAs::TargetUser)).runs_root_code());
        assert!(!system(task(write, RunAs::Root)).runs_root_code());
        assert!(!system(task(archive, RunAs::Root)).runs_root_code());
        assert!(!Step::new(task(cmd(), RunAs::Root), Scope::User, vec![]).runs_root_code());
        let mut skipped = system(packages);
        skipped.skip = Some(Skip {
            reason: "container-only".into(),
            enable_with: None,
        });
        assert!(!skipped.runs_root_code());
    }
}
