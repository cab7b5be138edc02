//! Stage `lower`: the loaded layers in resolved order → the [`InstallPlan`] IR; output is a pure,
//! deterministic function of the project files and the deploy (no map-order iteration, no absolute
//! paths in the plan), and every decision about *what* runs is made here — rendering only decides
//! *how*.
//!
//! Per layer, steps are emitted in this order (reference §3.5, plus the kinds the original never
//! produced):
//! 1. `ShellHook` (`env:` / `path_append:`), scope `user-profile`.
//! 2. Package sections, selected as reference §1.3: the first distro tag (most specific first) that
//!    has a tag section wins and is installed with the primary format; otherwise every section of
//!    the target's formats, in format order. Per section: a `prepare` `SystemPackages` step (repo,
//!    key, copr, module set-up), `RepoChange` steps, the `install` step, and a `cleanup` step that
//!    re-disables coprs. An `aur:` section is a `Builder` (step 4), not a system install.
//! 3. `tasks:` in YAML order: `copy:` ⇒ `File` (payload carried in the bundle), others ⇒ `Task`.
//! 4. Builders, by builder name (`aur`, `cargo`, `npm`, `pixi`), venue `container-builder`.
//! 5. `service:` entries in YAML order.
//! 6. `ContainerOnly` entries (venue `skip`) for keys that mean nothing outside a container.
//!
//! Repositories — which part goes where (one rule, applied to every format): a repository whose
//! whole effect is one file we can write at compile time becomes a `RepoChange` carrying the file
//! path and full content (deb `url:` → `/etc/apt/sources.list.d/<name>.list`; rpm `url:` that is a
//! base URL → `/etc/yum.repos.d/<name>.repo`). Everything that needs the network or edits a shared
//! file stays in the `prepare` step, stripped of the parts a `RepoChange` already covers: deb
//! `key:` (dearmored to `signed_by`, default `/etc/apt/keyrings/<name>.gpg`) and `ppa:`; rpm
//! `gpgkey:` (`rpm --import`), `rpm:` release packages and `url:`s ending in `.repo` (downloaded
//! repo files); pac repos (a section appended to `/etc/pacman.conf`) and `keys:`. So a renderer
//! does exactly what the fields present in a step say.
//!
//! Gates: `prepare`, `RepoChange` and `cleanup` need `allow-repo-changes`; so does the `install`
//! step of a section that sets up repositories — its packages come from them, so installing
//! without them could only fail. Root `cmd:` tasks need `allow-root-tasks`; services need
//! `with-services`. A gated-off step stays in the plan with `skip` naming the flag.
//!
//! Reverse ops describe what undoes each step, whether or not it runs on this target; whoever
//! writes the ledger records them only for steps that ran. Candidates (packages that were already
//! installed, services that were already enabled) are filtered at run time by the scripts.
//!
//! A `copy:` whose source is absent from the layer directory lowers to a *skipped* `File` step
//! with a reason, not an error: the corpus layer `ov` copies `bin/ov`, a build artifact that is
//! git-ignored, and a plan must still be produced for it. A source that escapes the layer
//! directory (absolute, `..`, symlink out) is an error.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::layer::{
    normalise_dest, Layer, PackageSection, Repo, SectionKey, ServiceEntry, ServiceScope, Task,
    TaskVerb,
};
use crate::plan::{
    Action, BuilderKind, Deploy, Gate, Gates, InstallPlan, LayerPlan, Phase, ReverseKind,
    ReverseOp, RunAs, Scope, Skip, Step, Venue, FORMAT_VERSION,
};
use crate::project::Project;

#[path = "lower_convert.rs"]
mod convert;

/// Why a layer could not be lowered. Every variant names the layer.
#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    /// A check of the layer's `tests:` cannot mean anything on any target.
    #[error(transparent)]
    Check(#[from] crate::lower_checks::CheckError),
    /// The order names a layer the project does not have.
    #[error("unknown layer `{layer}` in the resolved order")]
    UnknownLayer {
        /// The name.
        layer: String,
    },
    /// The layer directory is not inside the project root, so the plan cannot name it relatively.
    #[error("layer `{layer}`: its directory `{}` is outside the project root", dir.display())]
    SourceOutsideProject {
        /// The layer.
        layer: String,
        /// Its source directory.
        dir: PathBuf,
    },
    /// A `copy:` source that is absolute, climbs with `..`, or resolves outside the layer directory.
    #[error("layer `{layer}`: task at line {line}: `copy: {src}` must be a path inside the layer directory")]
    UnsafeCopySource {
        /// The layer.
        layer: String,
        /// Line of the task in `layer.yml`.
        line: u32,
        /// The source as written.
        src: String,
    },
    /// A `copy:` source that is a directory (list its files as separate `copy:` tasks).
    #[error("layer `{layer}`: task at line {line}: `copy: {src}` is a directory; copy its files one by one")]
    CopySourceNotFile {
        /// The layer.
        layer: String,
        /// Line of the task.
        line: u32,
        /// The source as written.
        src: String,
    },
    /// A task whose path on the target is relative (it would depend on a script's working
    /// directory).
    #[error("layer `{layer}`: task at line {line}: `{verb}` path `{path}` must be absolute or start with `~/` or `${{HOME}}`")]
    RelativeTarget {
        /// The layer.
        layer: String,
        /// Line of the task.
        line: u32,
        /// The task verb.
        verb: &'static str,
        /// The path as written.
        path: String,
    },
    /// A path a task writes to that holds `..` once the layer's `vars:` are applied (the parser
    /// refuses a `..` written in the path itself, with its position).
    #[error("layer `{layer}`: task at line {line}: `{field}` path `{path}` contains `..` once `vars:` are applied; {}", parent_dir_hint(.resolved.as_deref()))]
    ParentDirInTarget {
        /// The layer.
        layer: String,
        /// Line of the task.
        line: u32,
        /// The field: the verb (`mkdir`, `write`, `link`, `setcap`), `to` or `uninstall`.
        field: &'static str,
        /// The path with the variables applied.
        path: String,
        /// The path without `..`, when it can be spelled so.
        resolved: Option<String>,
    },
    /// A service entry that says neither how to run it nor which unit to use.
    #[error("layer `{layer}`: service `{service}` has neither `exec:` nor `use_packaged:`")]
    ServiceWithoutAction {
        /// The layer.
        layer: String,
        /// The service's `name:`.
        service: String,
    },
    /// A service entry with both `exec:` and `use_packaged:` (use `overrides.exec` instead).
    #[error("layer `{layer}`: service `{service}` has both `exec:` and `use_packaged:`; use `overrides: {{exec: …}}` to change a packaged unit's command")]
    ServiceWithBothActions {
        /// The layer.
        layer: String,
        /// The service's `name:`.
        service: String,
    },
    /// A unit name that systemd would not accept or that would escape the unit directory.
    #[error("layer `{layer}`: service `{service}`: invalid unit name `{unit}`")]
    InvalidUnitName {
        /// The layer.
        layer: String,
        /// The service's `name:`.
        service: String,
        /// The offending unit name.
        unit: String,
    },
    /// A repository entry that cannot be turned into set-up steps.
    #[error("layer `{layer}`: {format} repository `{repo}`: {reason}")]
    InvalidRepo {
        /// The layer.
        layer: String,
        /// The package format.
        format: String,
        /// The repo's `name:` (or `?`).
        repo: String,
        /// What is wrong.
        reason: String,
    },
    /// A tag section was selected but the target has no package format to install it with.
    #[error(
        "layer `{layer}`: the target distro declares no package format to install its packages"
    )]
    NoPackageFormat {
        /// The layer.
        layer: String,
    },
    /// An environment variable name that cannot be exported by a shell.
    #[error("layer `{layer}`: invalid environment variable name `{name}` in {context}")]
    InvalidEnvName {
        /// The layer.
        layer: String,
        /// The name.
        name: String,
        /// Where it was (`env:`, a task, a service).
        context: String,
    },
    /// A builder manifest that could not be read.
    #[error("layer `{layer}`: cannot read `{}`", path.display())]
    BuilderManifestRead {
        /// The layer.
        layer: String,
        /// The manifest.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The layer directory (or a part of it a step carries in the bundle) cannot be listed.
    #[error("layer `{layer}`: cannot list the files of `{}`", path.display())]
    LayerFiles {
        /// The layer.
        layer: String,
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A builder manifest (`package.json`, `Cargo.toml`) that does not have the expected shape.
    #[error("layer `{layer}`: invalid `{}`: {reason}", path.display())]
    BuilderManifestInvalid {
        /// The layer.
        layer: String,
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
        /// The JSON error, if parsing failed.
        #[source]
        source: Option<serde_json::Error>,
    },
}

fn parent_dir_hint(resolved: Option<&str>) -> String {
    match resolved {
        Some(r) => format!("change the variable so the path reads `{r}`"),
        None => "change the variable so the path has no `..`".to_string(),
    }
}

/// Lowers the layers of `order` (as produced by `resolve`) for `deploy` with `gates` open.
pub fn lower(
    project: &Project,
    deploy: Deploy,
    gates: Gates,
    order: &[String],
) -> Result<InstallPlan, LowerError> {
    let mut layers = Vec::with_capacity(order.len());
    for name in order {
        let layer = project
            .layers
            .get(name)
            .ok_or_else(|| LowerError::UnknownLayer {
                layer: name.clone(),
            })?;
        layers.push(lower_layer(project, &deploy, gates, name, layer)?);
    }
    // Checks last: a `service:` check names the unit whichever layer of the deploy sets it up.
    for i in 0..layers.len() {
        let checks = match project.layers.get(&layers[i].name) {
            Some(layer) => {
                crate::lower_checks::lower_checks(&deploy, &layers[i].name, &layer.checks, &layers)?
            }
            None => Vec::new(),
        };
        layers[i].checks = checks;
    }
    Ok(InstallPlan {
        format_version: FORMAT_VERSION,
        deploy,
        gates,
        layers,
    })
}

/// Builds a step, marking it skipped when its gate is closed (a step already skipped keeps its
/// own reason).
#[allow(clippy::too_many_arguments)]
fn step(
    gates: Gates,
    action: Action,
    scope: Scope,
    venue: Venue,
    phase: Phase,
    gate: Option<Gate>,
    skip: Option<Skip>,
    reverse: Vec<ReverseOp>,
) -> Step {
    let skip = skip.or_else(|| {
        gate.filter(|g| !gates.allows(*g)).map(|g| Skip {
            reason: format!("requires --{}", g.as_str()),
            enable_with: Some(g),
        })
    });
    Step {
        action,
        scope,
        venue,
        phase,
        gate,
        skip,
        reverse,
    }
}

fn rev(kind: ReverseKind, scope: Scope, targets: Vec<String>) -> ReverseOp {
    ReverseOp {
        kind,
        format: None,
        targets,
        scope,
        extra: BTreeMap::new(),
    }
}

fn rev_extra(
    kind: ReverseKind,
    scope: Scope,
    targets: Vec<String>,
    extra: &[(&str, &str)],
) -> ReverseOp {
    ReverseOp {
        extra: extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..rev(kind, scope, targets)
    }
}

fn lower_layer(
    project: &Project,
    deploy: &Deploy,
    gates: Gates,
    name: &str,
    layer: &Layer,
) -> Result<LayerPlan, LowerError> {
    let source = relative_source(&project.root, &layer.source_dir).ok_or_else(|| {
        LowerError::SourceOutsideProject {
            layer: name.to_string(),
            dir: layer.source_dir.clone(),
        }
    })?;
    let mut steps = Vec::new();

    // 1. Shell hook.
    if !layer.env.is_empty() || !layer.path_append.is_empty() {
        check_env_names(name, &layer.env, "`env:`")?;
        steps.push(step(
            gates,
            Action::ShellHook {
                env: layer.env.clone(),
                path_append: layer.path_append.clone(),
            },
            Scope::UserProfile,
            Venue::HostNative,
            Phase::Install,
            None,
            None,
            vec![rev_extra(
                ReverseKind::RemoveEnvdFile,
                Scope::UserProfile,
                vec![format!("${{HOME}}/.config/overthink/env.d/{name}.env")],
                &[("layer", name)],
            )],
        ));
    }

    // 2. Package sections (aur sections are collected for the builders).
    let mut aur_packages: Vec<String> = Vec::new();
    for (section, format) in select_sections(layer, &deploy.distro.tags, &deploy.distro.formats) {
        let format = match format {
            Some(f) => f,
            None => {
                return Err(LowerError::NoPackageFormat {
                    layer: name.to_string(),
                })
            }
        };
        if format == "aur" {
            aur_packages.extend(section.packages.iter().cloned());
            continue;
        }
        lower_section(gates, name, section, &format, &mut steps)?;
    }

    // 3. Tasks and files, in YAML order.
    for task in &layer.tasks {
        steps.push(lower_task(gates, name, layer, task)?);
    }

    // 4. Builders, by builder name.
    if !aur_packages.is_empty() {
        steps.push(step(
            gates,
            Action::Builder {
                builder: BuilderKind::Aur,
                manifest: None,
                packages: aur_packages.clone(),
                names: Vec::new(),
                crate_name: None,
                files: Vec::new(),
            },
            Scope::System,
            Venue::ContainerBuilder,
            Phase::Install,
            None,
            None,
            vec![ReverseOp {
                format: Some("pac".to_string()),
                ..rev(ReverseKind::PackageRemove, Scope::System, aur_packages)
            }],
        ));
    }
    let files = &layer.builder_files;
    let dir = &layer.source_dir;
    if files.cargo {
        // The installed binaries' names are only known after the build; `cargo install` records
        // them in `$CARGO_HOME/.crates.toml`, so there is no compile-time reverse op to offer.
        let crate_name = cargo_package_name(name, &dir.join("Cargo.toml"))?;
        let mut carried = vec!["Cargo.toml".to_string()];
        for extra in ["Cargo.lock", "build.rs"] {
            if dir.join(extra).is_file() {
                carried.push(extra.to_string());
            }
        }
        if dir.join("src").is_dir() {
            carried.extend(layer_files(name, dir, "src")?);
        }
        carried.sort();
        steps.push(builder_step(
            gates,
            BuilderKind::Cargo,
            "Cargo.toml",
            (Vec::new(), Vec::new()),
            Some(crate_name),
            carried,
            Vec::new(),
        ));
    }
    if files.npm {
        let (specs, names) = npm_dependencies(name, &dir.join("package.json"))?;
        let reverse = if names.is_empty() {
            Vec::new()
        } else {
            vec![rev(ReverseKind::NpmUninstallG, Scope::User, names.clone())]
        };
        steps.push(builder_step(
            gates,
            BuilderKind::Npm,
            "package.json",
            (specs, names),
            None,
            vec!["package.json".to_string()],
            reverse,
        ));
    }
    if let Some(manifest) = &files.pixi_manifest {
        // The original's pixi builder always installs into the `default` environment.
        let mut carried = vec![manifest.clone()];
        if files.pixi_lock {
            carried.push("pixi.lock".to_string());
        }
        if files.build_script {
            carried.push("build.sh".to_string());
        }
        carried.sort();
        steps.push(builder_step(
            gates,
            BuilderKind::Pixi,
            manifest,
            (Vec::new(), Vec::new()),
            None,
            carried,
            vec![rev_extra(
                ReverseKind::PixiEnvRemove,
                Scope::User,
                vec!["default".to_string()],
                &[("layer", name)],
            )],
        ));
    }

    // 5. Services.
    for service in &layer.services {
        steps.push(lower_service(gates, name, service)?);
    }

    // 6. What was left out.
    for key in &layer.container_only {
        steps.push(step(
            gates,
            Action::ContainerOnly {
                key: key.key.clone(),
            },
            Scope::System,
            Venue::Skip,
            Phase::Install,
            None,
            Some(Skip {
                reason: key.reason.clone(),
                enable_with: None,
            }),
            Vec::new(),
        ));
    }

    Ok(LayerPlan {
        name: name.to_string(),
        version: layer.version.clone(),
        source,
        steps,
        checks: Vec::new(),
    })
}

/// A file-triggered builder step (as the target user, in the builder venue); `packages` is the
/// pair (install specs, names).
fn builder_step(
    gates: Gates,
    builder: BuilderKind,
    manifest: &str,
    (packages, names): (Vec<String>, Vec<String>),
    crate_name: Option<String>,
    files: Vec<String>,
    reverse: Vec<ReverseOp>,
) -> Step {
    step(
        gates,
        Action::Builder {
            builder,
            manifest: Some(manifest.to_string()),
            packages,
            names,
            crate_name,
            files,
        },
        Scope::User,
        Venue::ContainerBuilder,
        Phase::Install,
        None,
        None,
        reverse,
    )
}

/// The regular files below `rel` of the layer directory `dir` (all of it for `""`), as paths
/// relative to `dir`, sorted. A symlink counts when it leads to a regular file.
fn layer_files(layer: &str, dir: &Path, rel: &str) -> Result<Vec<String>, LowerError> {
    let base = if rel.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(rel)
    };
    let files = crate::walk::list_files(&base).map_err(|source| LowerError::LayerFiles {
        layer: layer.to_string(),
        path: base.clone(),
        source,
    })?;
    Ok(files
        .into_iter()
        .filter(|(_, path)| std::fs::metadata(path).is_ok_and(|m| m.is_file()))
        .map(|(name, _)| {
            if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            }
        })
        .collect())
}

/// The layer directory relative to the project root, with `/` separators (`.` for the root).
fn relative_source(root: &Path, dir: &Path) -> Option<String> {
    let rel = dir.strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    })
}

/// Reference §1.3: the first tag with a tag section wins (rendered with the primary format, `None`
/// if the target has none); otherwise every section of each target format, in format order.
fn select_sections<'l>(
    layer: &'l Layer,
    tags: &[String],
    formats: &[String],
) -> Vec<(&'l PackageSection, Option<String>)> {
    for tag in tags {
        let hit = layer.package_sections.iter().find(|s| match &s.key {
            SectionKey::Tags(ts) => ts.iter().any(|t| t == tag),
            SectionKey::Format(_) => false,
        });
        if let Some(section) = hit {
            return vec![(section, formats.first().cloned())];
        }
    }
    let mut out = Vec::new();
    for format in formats {
        for section in &layer.package_sections {
            if matches!(&section.key, SectionKey::Format(f) if f == format) {
                out.push((section, Some(format.clone())));
            }
        }
    }
    out
}

fn lower_section(
    gates: Gates,
    layer: &str,
    section: &PackageSection,
    format: &str,
    steps: &mut Vec<Step>,
) -> Result<(), LowerError> {
    let mut prepare_repos: Vec<Repo> = Vec::new();
    let mut prepare_reverse: Vec<ReverseOp> = Vec::new();
    let mut changes: Vec<(String, String)> = Vec::new();
    for repo in &section.repos {
        let split = split_repo(layer, format, repo)?;
        if let Some(r) = split.prepare {
            prepare_repos.push(r);
        }
        if let Some(file) = split.downloaded_file {
            prepare_reverse.push(rev_extra(
                ReverseKind::RemoveRepoFile,
                Scope::System,
                vec![file],
                &[("layer", layer), ("format", format)],
            ));
        }
        changes.extend(split.file);
    }
    for copr in &section.copr {
        prepare_reverse.push(rev(
            ReverseKind::CoprDisable,
            Scope::System,
            vec![copr.clone()],
        ));
    }
    let has_prepare = !prepare_repos.is_empty()
        || !section.keys.is_empty()
        || !section.copr.is_empty()
        || !section.modules.is_empty();
    let sets_up_repos = has_prepare || !changes.is_empty();
    let repo_gate = Some(Gate::AllowRepoChanges);

    let packages_action = |packages: Vec<String>, options: Vec<String>, exclude: Vec<String>| {
        Action::SystemPackages {
            format: format.to_string(),
            packages,
            options,
            repos: Vec::new(),
            keys: Vec::new(),
            copr: Vec::new(),
            modules: Vec::new(),
            exclude,
        }
    };

    if has_prepare {
        steps.push(step(
            gates,
            Action::SystemPackages {
                format: format.to_string(),
                packages: Vec::new(),
                options: Vec::new(),
                repos: prepare_repos.iter().map(crate::plan::Repo::from).collect(),
                keys: section.keys.clone(),
                copr: section.copr.clone(),
                modules: section.modules.clone(),
                exclude: Vec::new(),
            },
            Scope::System,
            Venue::HostNative,
            Phase::Prepare,
            repo_gate,
            None,
            prepare_reverse,
        ));
    }
    for (path, content) in changes {
        steps.push(step(
            gates,
            Action::RepoChange {
                format: format.to_string(),
                path: path.clone(),
                content,
            },
            Scope::System,
            Venue::HostNative,
            Phase::Prepare,
            repo_gate,
            None,
            vec![rev_extra(
                ReverseKind::RemoveRepoFile,
                Scope::System,
                vec![path],
                &[("layer", layer), ("format", format)],
            )],
        ));
    }
    steps.push(step(
        gates,
        packages_action(
            section.packages.clone(),
            section.options.clone(),
            section.exclude.clone(),
        ),
        Scope::System,
        Venue::HostNative,
        Phase::Install,
        if sets_up_repos { repo_gate } else { None },
        None,
        vec![ReverseOp {
            format: Some(format.to_string()),
            ..rev(
                ReverseKind::PackageRemove,
                Scope::System,
                section.packages.clone(),
            )
        }],
    ));
    if !section.copr.is_empty() {
        steps.push(step(
            gates,
            Action::SystemPackages {
                format: format.to_string(),
                packages: Vec::new(),
                options: Vec::new(),
                repos: Vec::new(),
                keys: Vec::new(),
                copr: section.copr.clone(),
                modules: Vec::new(),
                exclude: Vec::new(),
            },
            Scope::System,
            Venue::HostNative,
            Phase::Cleanup,
            repo_gate,
            None,
            Vec::new(),
        ));
    }
    Ok(())
}

/// How one repository entry splits between the prepare step and a repo file.
struct RepoSplit {
    /// What the prepare step still has to do for it.
    prepare: Option<Repo>,
    /// A repo file `(path, content)` written by a `RepoChange`.
    file: Option<(String, String)>,
    /// A repo file the prepare step downloads (rpm `.repo` URL), for its reverse op.
    downloaded_file: Option<String>,
}

fn split_repo(layer: &str, format: &str, repo: &Repo) -> Result<RepoSplit, LowerError> {
    let label = repo.name.clone().unwrap_or_else(|| "?".to_string());
    let bad = |reason: String| LowerError::InvalidRepo {
        layer: layer.to_string(),
        format: format.to_string(),
        repo: label.clone(),
        reason,
    };
    // Single-line fields end up inside repo files and command lines.
    for (field, value) in [
        ("name", &repo.name),
        ("url", &repo.url),
        ("gpgkey", &repo.gpgkey),
        ("gpgcheck", &repo.gpgcheck),
        ("rpm", &repo.rpm),
        ("key", &repo.key),
        ("signed_by", &repo.signed_by),
        ("suite", &repo.suite),
        ("components", &repo.components),
        ("ppa", &repo.ppa),
        ("server", &repo.server),
        ("siglevel", &repo.siglevel),
    ] {
        if let Some(v) = value {
            if v.is_empty() || v.chars().any(|c| c.is_control()) {
                return Err(bad(format!("`{field}:` must be a non-empty single line")));
            }
        }
    }
    let safe_name = || -> Result<String, LowerError> {
        match &repo.name {
            Some(n) if is_file_token(n) => Ok(n.clone()),
            Some(n) => Err(bad(format!(
                "`name: {n}` must be letters, digits, `.`, `_`, `-` (it names a file)"
            ))),
            None => Err(bad(
                "needs a `name:` (it names the repository or keyring file)".to_string(),
            )),
        }
    };
    let no_space = |field: &str, v: &Option<String>| -> Result<(), LowerError> {
        match v {
            Some(s) if s.contains(char::is_whitespace) => {
                Err(bad(format!("`{field}:` must not contain spaces")))
            }
            _ => Ok(()),
        }
    };
    match format {
        "deb" => {
            let mut file = None;
            let keyring = repo.signed_by.clone().or_else(|| {
                repo.key
                    .as_ref()
                    .and(repo.name.as_ref())
                    .map(|n| format!("/etc/apt/keyrings/{n}.gpg"))
            });
            if repo.key.is_some() && repo.signed_by.is_none() {
                safe_name()?;
            }
            if let Some(url) = &repo.url {
                let name = safe_name()?;
                no_space("url", &repo.url)?;
                no_space("suite", &repo.suite)?;
                no_space("signed_by", &repo.signed_by)?;
                let suite = repo.suite.as_deref().unwrap_or("stable");
                let mut line = String::from("deb ");
                if let Some(k) = &keyring {
                    line.push_str(&format!("[signed-by={k}] "));
                }
                line.push_str(&format!("{url} {suite}"));
                if suite != "/" {
                    line.push(' ');
                    line.push_str(repo.components.as_deref().unwrap_or("main"));
                }
                file = Some((
                    format!("/etc/apt/sources.list.d/{name}.list"),
                    format!("# managed by ov (layer {layer})\n{line}\n"),
                ));
            }
            let prepare = (repo.key.is_some() || repo.ppa.is_some()).then(|| Repo {
                name: repo.name.clone(),
                key: repo.key.clone(),
                signed_by: repo.key.as_ref().and(keyring),
                ppa: repo.ppa.clone(),
                ..Repo::default()
            });
            Ok(RepoSplit {
                prepare,
                file,
                downloaded_file: None,
            })
        }
        "rpm" => {
            let disabled = matches!(
                repo.gpgcheck
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("false" | "0" | "no")
            );
            match &repo.url {
                Some(url) if !url.ends_with(".repo") => {
                    let name = safe_name()?;
                    no_space("url", &repo.url)?;
                    no_space("gpgkey", &repo.gpgkey)?;
                    let mut content = format!(
                        "# managed by ov (layer {layer})\n[{name}]\nname={name}\nbaseurl={url}\nenabled=1\ngpgcheck={}\n",
                        if disabled { 0 } else { 1 }
                    );
                    if let Some(k) = &repo.gpgkey {
                        content.push_str(&format!("gpgkey={k}\n"));
                    }
                    let prepare = (repo.gpgkey.is_some() || repo.rpm.is_some()).then(|| Repo {
                        name: repo.name.clone(),
                        gpgkey: repo.gpgkey.clone(),
                        rpm: repo.rpm.clone(),
                        ..Repo::default()
                    });
                    Ok(RepoSplit {
                        prepare,
                        file: Some((format!("/etc/yum.repos.d/{name}.repo"), content)),
                        downloaded_file: None,
                    })
                }
                Some(url) => {
                    // A `.repo` file URL: dnf stores it under its own base name.
                    let base = url.rsplit('/').next().unwrap_or("");
                    if !is_file_token(base) {
                        return Err(bad(format!("cannot tell the file name of `{url}`")));
                    }
                    Ok(RepoSplit {
                        prepare: Some(repo.clone()),
                        file: None,
                        downloaded_file: Some(format!("/etc/yum.repos.d/{base}")),
                    })
                }
                None => Ok(RepoSplit {
                    prepare: (repo.gpgkey.is_some() || repo.rpm.is_some()).then(|| repo.clone()),
                    file: None,
                    downloaded_file: None,
                }),
            }
        }
        _ => Ok(RepoSplit {
            prepare: Some(repo.clone()),
            file: None,
            downloaded_file: None,
        }),
    }
}

/// A file-name-safe token: letters, digits, `.`, `_`, `-`, not starting with `.` or `-`.
fn is_file_token(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `user:` → who runs a task (reference §1.4).
fn run_as(user: Option<&str>) -> RunAs {
    match user.map(str::trim) {
        None | Some("" | "root" | "0" | "0:0") => RunAs::Root,
        Some("${USER}" | "$USER" | "${UID}" | "${UID}:${GID}") => RunAs::TargetUser,
        Some(other) => RunAs::Named(other.to_string()),
    }
}

fn lower_task(
    gates: Gates,
    layer_name: &str,
    layer: &Layer,
    task: &Task,
) -> Result<Step, LowerError> {
    let who = run_as(task.user.as_deref());
    let scope = if who == RunAs::Root {
        Scope::System
    } else {
        Scope::User
    };
    let rm = if scope == Scope::System {
        ReverseKind::RmFileSystem
    } else {
        ReverseKind::RmFileUser
    };
    check_env_names(
        layer_name,
        &task.env,
        &format!("the task at line {}", task.pos.line),
    )?;
    check_env_names(layer_name, &layer.vars, "`vars:`")?;
    let mut with_vars = apply_vars(task, &layer.vars);
    normalise_dests(layer_name, &mut with_vars)?;
    let mut ctx_files = None;
    if let TaskVerb::Cmd { body } = &mut with_vars.verb {
        let (resolved, uses_ctx) = resolve_ctx(body);
        if uses_ctx {
            // `/ctx/` was the whole layer directory in the original: carry all of it.
            *body = resolved;
            ctx_files = Some(layer_files(layer_name, &layer.source_dir, "")?);
        }
    }
    let task = &with_vars;
    let target_path = match &task.verb {
        TaskVerb::Copy { src, to } => Some(to.as_ref().unwrap_or(src)),
        TaskVerb::Mkdir { path }
        | TaskVerb::Write { path, .. }
        | TaskVerb::Link { path, .. }
        | TaskVerb::Setcap { path, .. } => Some(path),
        TaskVerb::Download { to, .. } => to.as_ref(),
        TaskVerb::Cmd { .. } | TaskVerb::Build { .. } => None,
    };
    if let Some(path) = target_path.filter(|p| !is_anchored(p)) {
        return Err(LowerError::RelativeTarget {
            layer: layer_name.to_string(),
            line: task.pos.line,
            verb: task.verb.name(),
            path: path.clone(),
        });
    }

    if let TaskVerb::Copy { src, to } = &task.verb {
        let dest = to.clone().unwrap_or_else(|| src.clone());
        let skip = copy_source_check(layer_name, layer, task, src)?;
        return Ok(step(
            gates,
            Action::File {
                source: src.clone(),
                dest: dest.clone(),
                mode: task.mode.clone().unwrap_or_else(|| "0644".to_string()),
                run_as: who,
            },
            scope,
            if skip.is_some() {
                Venue::Skip
            } else {
                Venue::HostNative
            },
            Phase::Install,
            None,
            skip,
            vec![rev(rm, scope, vec![dest])],
        ));
    }

    let (reverse, skip) = match &task.verb {
        TaskVerb::Write { path, .. } | TaskVerb::Link { path, .. } => {
            (vec![rev(rm, scope, vec![path.clone()])], None)
        }
        TaskVerb::Download {
            url, to, extract, ..
        } => {
            let targets = if !task.uninstall.is_empty() {
                task.uninstall.clone()
            } else if download_is_plain_file(url, extract.as_deref()) {
                to.iter().cloned().collect()
            } else {
                // An archive extracted into `to` (often a shared directory such as
                // `/usr/local/bin`): without `uninstall:` there is no safe list of files to
                // remove, and removing `to` itself could wipe unrelated files.
                Vec::new()
            };
            let reverse = if targets.is_empty() {
                Vec::new()
            } else {
                vec![rev(rm, scope, targets)]
            };
            (reverse, None)
        }
        TaskVerb::Build { .. } => (
            Vec::new(),
            Some(Skip {
                reason: "`build:` only places builders in a container build; nothing to do here"
                    .to_string(),
                enable_with: None,
            }),
        ),
        TaskVerb::Cmd { .. }
        | TaskVerb::Mkdir { .. }
        | TaskVerb::Setcap { .. }
        | TaskVerb::Copy { .. } => (Vec::new(), None),
    };
    let gate = (scope == Scope::System && matches!(task.verb, TaskVerb::Cmd { .. }))
        .then_some(Gate::AllowRootTasks);
    Ok(step(
        gates,
        Action::Task {
            task: crate::plan::Task::from(task),
            run_as: who,
            ctx_files,
        },
        scope,
        if skip.is_some() {
            Venue::Skip
        } else {
            Venue::HostNative
        },
        Phase::Install,
        gate,
        skip,
        reverse,
    ))
}

/// The task with the layer's `vars:` applied, as the original's container build saw it there
/// (`ENV K="v"` at the top of the layer's section): `${K}` / `$K` in the task's paths, link
/// targets, URLs and `uninstall:` entries become the value now, at compile time (so a reader of
/// the bundle sees the real URL), and a `cmd:` gets them exported, ahead of its own `env:` (which
/// wins on a clash). `write:` content and `cmd:` bodies are never rewritten: in the original they
/// were not substituted either — a body reads the exported variable itself.
fn apply_vars(task: &Task, vars: &[(String, String)]) -> Task {
    let mut task = task.clone();
    if vars.is_empty() {
        return task;
    }
    let sub = |s: &mut String| *s = substitute_vars(s, vars);
    match &mut task.verb {
        TaskVerb::Cmd { .. } => {
            let mut env = vars.to_vec();
            env.append(&mut task.env);
            task.env = env;
        }
        TaskVerb::Mkdir { path } | TaskVerb::Write { path, .. } | TaskVerb::Setcap { path, .. } => {
            sub(path)
        }
        TaskVerb::Copy { to, .. } => to.iter_mut().for_each(sub),
        TaskVerb::Link { path, target } => {
            sub(path);
            sub(target);
        }
        TaskVerb::Download { url, to, .. } => {
            sub(url);
            to.iter_mut().for_each(sub);
        }
        TaskVerb::Build { .. } => {}
    }
    task.uninstall.iter_mut().for_each(sub);
    task
}

/// Normalise the paths `task` writes to ([`normalise_dest`]) once `vars:` are applied: the parser
/// did so for the text as written, so a `..` found here came from a variable's value.
fn normalise_dests(layer: &str, task: &mut Task) -> Result<(), LowerError> {
    let line = task.pos.line;
    let verb = task.verb.name();
    let fix = |field: &'static str, path: &mut String| -> Result<(), LowerError> {
        match normalise_dest(path) {
            Ok(p) => {
                *path = p.into_owned();
                Ok(())
            }
            Err(e) => Err(LowerError::ParentDirInTarget {
                layer: layer.to_string(),
                line,
                field,
                path: path.clone(),
                resolved: e.resolved,
            }),
        }
    };
    match &mut task.verb {
        TaskVerb::Mkdir { path }
        | TaskVerb::Write { path, .. }
        | TaskVerb::Link { path, .. }
        | TaskVerb::Setcap { path, .. } => fix(verb, path)?,
        TaskVerb::Copy { to: Some(to), .. } | TaskVerb::Download { to: Some(to), .. } => {
            fix("to", to)?
        }
        TaskVerb::Copy { .. }
        | TaskVerb::Download { .. }
        | TaskVerb::Cmd { .. }
        | TaskVerb::Build { .. } => {}
    }
    for p in &mut task.uninstall {
        fix("uninstall", p)?;
    }
    Ok(())
}

/// `s` with each `${NAME}` and `$NAME` (not followed by a name character) of `vars` replaced by
/// its value; any other `$` text is left as written.
fn substitute_vars(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let hit = vars.iter().find_map(|(name, value)| {
            if let Some(tail) = after
                .strip_prefix('{')
                .and_then(|t| t.strip_prefix(name.as_str()))
                .and_then(|t| t.strip_prefix('}'))
            {
                return Some((value, tail));
            }
            let tail = after.strip_prefix(name.as_str())?;
            let boundary = !tail.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            boundary.then_some((value, tail))
        });
        match hit {
            Some((value, tail)) => {
                out.push_str(value);
                rest = tail;
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether a path on the target is anchored: absolute, or under the target user's home. A
/// relative path would depend on the working directory of a generated script (the original's
/// container build resolved it against `WORKDIR`, its host renderer against whatever directory
/// `ov` ran in), so it is refused rather than guessed.
fn is_anchored(path: &str) -> bool {
    path.starts_with('/')
        || path == "~"
        || path.starts_with("~/")
        || path.starts_with("${HOME}")
        || path.starts_with("$HOME")
}

/// Whether a download lands as a single file at `to` (extract `none`, explicit or by URL).
fn download_is_plain_file(url: &str, extract: Option<&str>) -> bool {
    match extract {
        Some(e) => e == "none",
        None => {
            let u = url.split(['?', '#']).next().unwrap_or(url);
            ![
                ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".zip", ".sh",
            ]
            .iter()
            .any(|ext| u.ends_with(ext))
        }
    }
}

/// Checks a `copy:` source: `Ok(None)` when it is a file inside the layer directory, `Ok(Some)`
/// (a skip) when it is absent, an error when it escapes the directory or is not a file.
fn copy_source_check(
    layer_name: &str,
    layer: &Layer,
    task: &Task,
    src: &str,
) -> Result<Option<Skip>, LowerError> {
    let unsafe_src = || LowerError::UnsafeCopySource {
        layer: layer_name.to_string(),
        line: task.pos.line,
        src: src.to_string(),
    };
    let rel = Path::new(src);
    if src.is_empty()
        || rel.is_absolute()
        || !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(unsafe_src());
    }
    let path = layer.source_dir.join(rel);
    match std::fs::symlink_metadata(&path) {
        Err(_) => Ok(Some(Skip {
            reason: format!(
                "source `{src}` is not in the layer directory (a build artifact that was not built?); the file is not installed"
            ),
            enable_with: None,
        })),
        Ok(_) => {
            // Follow symlinks, then insist the real file is still inside the layer directory.
            let (Ok(real), Ok(dir)) = (path.canonicalize(), layer.source_dir.canonicalize()) else {
                return Err(unsafe_src());
            };
            if !real.starts_with(&dir) {
                return Err(unsafe_src());
            }
            if !real.is_file() {
                return Err(LowerError::CopySourceNotFile {
                    layer: layer_name.to_string(),
                    line: task.pos.line,
                    src: src.to_string(),
                });
            }
            Ok(None)
        }
    }
}

/// Suffixes systemd knows; a `use_packaged` name without one gets `.service`.
const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".timer",
    ".target",
    ".path",
    ".mount",
    ".automount",
    ".swap",
    ".slice",
    ".scope",
    ".device",
];

/// A unit name that is safe as a file name in a unit directory.
fn is_unit_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.starts_with('-')
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-' | '\\'))
}

fn lower_service(gates: Gates, layer: &str, service: &ServiceEntry) -> Result<Step, LowerError> {
    let scope = match service.scope {
        ServiceScope::System => Scope::System,
        ServiceScope::User => Scope::User,
    };
    let unit_dir = match scope {
        Scope::System => "/etc/systemd/system".to_string(),
        _ => "${HOME}/.config/systemd/user".to_string(),
    };
    let invalid = |unit: &str| LowerError::InvalidUnitName {
        layer: layer.to_string(),
        service: service.name.clone(),
        unit: unit.to_string(),
    };
    check_env_names(layer, &service.env, &format!("service `{}`", service.name))?;
    if let Some(o) = &service.overrides {
        check_env_names(
            layer,
            &o.env,
            &format!("service `{}` overrides", service.name),
        )?;
    }
    match (&service.use_packaged, &service.exec) {
        (Some(_), Some(_)) => Err(LowerError::ServiceWithBothActions {
            layer: layer.to_string(),
            service: service.name.clone(),
        }),
        (None, None) => Err(LowerError::ServiceWithoutAction {
            layer: layer.to_string(),
            service: service.name.clone(),
        }),
        (Some(packaged), None) => {
            let unit = if UNIT_SUFFIXES.iter().any(|s| packaged.ends_with(s)) {
                packaged.clone()
            } else {
                format!("{packaged}.service")
            };
            if !is_unit_name(&unit) {
                return Err(invalid(&unit));
            }
            let mut reverse = Vec::new();
            if service.overrides.is_some() {
                reverse.push(rev_extra(
                    ReverseKind::RemoveDropin,
                    scope,
                    vec![format!("{unit_dir}/{unit}.d/ov-{layer}.conf")],
                    &[("layer", layer)],
                ));
            }
            if service.enable {
                // Teardown runs ops last-to-first: disable what we enabled, then re-enable it
                // if — and only if — the script found it enabled before (a run-time candidate).
                reverse.push(rev(ReverseKind::RestoreEnabled, scope, vec![unit.clone()]));
                reverse.push(rev(ReverseKind::ServiceDisable, scope, vec![unit.clone()]));
            }
            Ok(step(
                gates,
                Action::ServicePackaged {
                    unit,
                    enable: service.enable,
                    service: crate::plan::ServiceEntry::from(service),
                },
                scope,
                Venue::HostNative,
                Phase::Install,
                Some(Gate::WithServices),
                None,
                reverse,
            ))
        }
        (None, Some(_)) => {
            if !is_unit_name(layer) || !is_unit_name(&service.name) {
                return Err(invalid(&format!("ov-{layer}-{}.service", service.name)));
            }
            let unit = format!("ov-{layer}-{}.service", service.name);
            let mut reverse = vec![rev(
                ReverseKind::ServiceRemove,
                scope,
                vec![format!("{unit_dir}/{unit}")],
            )];
            if service.enable {
                reverse.push(rev(ReverseKind::ServiceDisable, scope, vec![unit.clone()]));
            }
            Ok(step(
                gates,
                Action::ServiceCustom {
                    unit,
                    service: crate::plan::ServiceEntry::from(service),
                },
                scope,
                Venue::HostNative,
                Phase::Install,
                Some(Gate::WithServices),
                None,
                reverse,
            ))
        }
    }
}

/// Environment variable names must be exportable by a POSIX shell.
fn check_env_names(layer: &str, env: &[(String, String)], context: &str) -> Result<(), LowerError> {
    for (name, _) in env {
        let mut chars = name.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(LowerError::InvalidEnvName {
                layer: layer.to_string(),
                name: name.clone(),
                context: context.to_string(),
            });
        }
    }
    Ok(())
}

/// `package.json` `dependencies` → install specs (`name@version`, bare name for `*`/empty) and the
/// names (for `npm uninstall -g`), in name order.
fn npm_dependencies(layer: &str, path: &Path) -> Result<(Vec<String>, Vec<String>), LowerError> {
    let text = std::fs::read_to_string(path).map_err(|source| LowerError::BuilderManifestRead {
        layer: layer.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let invalid =
        |reason: String, source: Option<serde_json::Error>| LowerError::BuilderManifestInvalid {
            layer: layer.to_string(),
            path: path.to_path_buf(),
            reason,
            source,
        };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid("not valid JSON".to_string(), Some(e)))?;
    let Some(deps) = value.get("dependencies") else {
        return Ok((Vec::new(), Vec::new()));
    };
    let Some(deps) = deps.as_object() else {
        return Err(invalid("`dependencies` is not an object".to_string(), None));
    };
    let mut sorted: Vec<(&String, &serde_json::Value)> = deps.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut specs = Vec::new();
    let mut names = Vec::new();
    for (name, version) in sorted {
        let Some(version) = version.as_str() else {
            return Err(invalid(
                format!("version of `{name}` is not a string"),
                None,
            ));
        };
        // A leading `-` would be read as an npm option.
        if name.is_empty() || name.starts_with('-') || name.chars().any(char::is_whitespace) {
            return Err(invalid(format!("bad package name `{name}`"), None));
        }
        if version.chars().any(char::is_control) {
            return Err(invalid(format!("bad version of `{name}`"), None));
        }
        specs.push(match version.trim() {
            "" | "*" => name.clone(),
            v => format!("{name}@{v}"),
        });
        names.push(name.clone());
    }
    Ok((specs, names))
}

/// `[package] name` of a Cargo.toml (a line scan: the only value needed, and no TOML crate).
fn cargo_package_name(layer: &str, path: &Path) -> Result<String, LowerError> {
    let text = std::fs::read_to_string(path).map_err(|source| LowerError::BuilderManifestRead {
        layer: layer.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if in_package {
            if let Some((key, value)) = line.split_once('=') {
                if key.trim() == "name" {
                    let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
                    return Ok(value.to_string());
                }
            }
        }
    }
    Err(LowerError::BuilderManifestInvalid {
        layer: layer.to_string(),
        path: path.to_path_buf(),
        reason: "no `name` in its `[package]` table".to_string(),
        source: None,
    })
}

/// Replace `/ctx` references (the layer directory, in the original's container builds) by
/// `${OV_CTX}`, the layer's payload directory in the bundle. Only a `/ctx` that starts a path
/// (after a blank, quote, `=`, `:` or an operator) and ends one is replaced, so `/srv/ctx/` stays.
fn resolve_ctx(body: &str) -> (String, bool) {
    let mut out = String::with_capacity(body.len());
    let mut used = false;
    let mut prev: Option<char> = None;
    let mut rest = body;
    while !rest.is_empty() {
        let starts = rest.starts_with("/ctx")
            && prev.is_none_or(|p| p.is_whitespace() || "\"'=:;|&(<>`".contains(p))
            && rest[4..]
                .chars()
                .next()
                .is_none_or(|c| c == '/' || c.is_whitespace() || "\"';|&)<>`".contains(c));
        if starts {
            out.push_str("${OV_CTX}");
            used = true;
            rest = &rest[4..];
            prev = Some('x');
            continue;
        }
        let ch = rest.chars().next().unwrap_or_default();
        out.push(ch);
        prev = Some(ch);
        rest = &rest[ch.len_utf8()..];
    }
    (out, used)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::layer::{BuilderFiles, ContainerOnlyKey, Pos, ServiceOverrides};
    use crate::plan::{TargetDistro, TargetKind};

    struct Fixture {
        dir: tempfile::TempDir,
        project: Project,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let project = Project {
                root: dir.path().to_path_buf(),
                layers: Default::default(),
                distros: Default::default(),
                format_names: BTreeSet::new(),
                deployments: Default::default(),
                vms: Default::default(),
            };
            Fixture { dir, project }
        }

        /// Adds a layer whose directory holds `files` (relative path, content).
        fn add(&mut self, mut layer: Layer, files: &[(&str, &str)]) {
            let ldir = self.dir.path().join("layers").join(&layer.name);
            std::fs::create_dir_all(&ldir).unwrap();
            for (rel, content) in files {
                let p = ldir.join(rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, content).unwrap();
            }
            layer.file = ldir.join("layer.yml");
            layer.source_dir = ldir;
            self.project.layers.insert(layer.name.clone(), layer);
        }

        fn lower(
            &self,
            distro: (&[&str], &[&str]),
            gates: Gates,
            order: &[&str],
        ) -> Result<InstallPlan, LowerError> {
            let deploy = Deploy {
                name: "vm:test".into(),
                id: "0123456789abcdef".into(),
                target: TargetKind::Vm { vm: "test".into() },
                distro: TargetDistro {
                    tags: distro.0.iter().map(|s| s.to_string()).collect(),
                    formats: distro.1.iter().map(|s| s.to_string()).collect(),
                },
                user: Some("op".into()),
                requested: order.iter().map(|s| s.to_string()).collect(),
            };
            let order: Vec<String> = order.iter().map(|s| s.to_string()).collect();
            lower(&self.project, deploy, gates, &order)
        }
    }

    const ARCH: (&[&str], &[&str]) = (&["archlinux"], &["pac", "aur"]);
    const DEBIAN: (&[&str], &[&str]) = (&["debian:12", "debian"], &["deb"]);
    const UBUNTU: (&[&str], &[&str]) = (&["ubuntu:24.04", "ubuntu", "debian"], &["deb"]);
    const FEDORA: (&[&str], &[&str]) = (&["fedora:43", "fedora"], &["rpm"]);

    const ALL: Gates = Gates {
        allow_repo_changes: true,
        allow_root_tasks: true,
        with_services: true,
    };

    fn section(key: SectionKey, packages: &[&str]) -> PackageSection {
        PackageSection {
            key,
            pos: Pos::default(),
            packages: packages.iter().map(|s| s.to_string()).collect(),
            options: vec![],
            repos: vec![],
            keys: vec![],
            copr: vec![],
            modules: vec![],
            exclude: vec![],
        }
    }

    fn fmt(f: &str) -> SectionKey {
        SectionKey::Format(f.to_string())
    }

    #[test]
    fn vars_fill_paths_and_urls_and_reach_cmd_as_env() {
        let vars = vec![
            ("V".to_string(), "v1.2".to_string()),
            ("VERSION".to_string(), "9".to_string()),
        ];
        assert_eq!(
            substitute_vars("a/${V}/b-$V-$VERSION/${VERSION}x/$VX/${W}/$", &vars),
            "a/v1.2/b-v1.2-9/9x/$VX/${W}/$"
        );
        // Runtime names and anything unknown stay for the target (or stay literal).
        assert_eq!(
            substitute_vars("${HOME}/$(id -u)", &vars),
            "${HOME}/$(id -u)"
        );

        let dl = task(
            TaskVerb::Download {
                url: "https://example.org/${V}/t_${V}_${ARCH}.tgz".into(),
                to: Some("/opt/t-${V}".into()),
                extract: None,
                include: vec![],
                strip_components: None,
            },
            None,
        );
        let TaskVerb::Download { url, to, .. } = apply_vars(&dl, &vars).verb else {
            panic!("verb changed")
        };
        assert_eq!(url, "https://example.org/v1.2/t_v1.2_${ARCH}.tgz");
        assert_eq!(to.as_deref(), Some("/opt/t-v1.2"));

        let mut cmd = task(
            TaskVerb::Cmd {
                body: "echo ${V}".into(),
            },
            None,
        );
        cmd.env = vec![("V".into(), "own".into())];
        let out = apply_vars(&cmd, &vars);
        // The body is untouched; the vars come first so the task's own `env:` wins.
        assert_eq!(
            out.verb,
            TaskVerb::Cmd {
                body: "echo ${V}".into()
            }
        );
        let names: Vec<(&str, &str)> = out
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(names, [("V", "v1.2"), ("VERSION", "9"), ("V", "own")]);

        let write = task(
            TaskVerb::Write {
                path: "/etc/${V}.conf".into(),
                content: "${V}".into(),
            },
            None,
        );
        assert_eq!(
            apply_vars(&write, &vars).verb,
            TaskVerb::Write {
                path: "/etc/v1.2.conf".into(),
                content: "${V}".into()
            }
        );
    }

    fn task(verb: TaskVerb, user: Option<&str>) -> Task {
        Task {
            verb,
            user: user.map(str::to_string),
            mode: None,
            env: vec![],
            comment: None,
            uninstall: vec![],
            pos: Pos { line: 7, column: 5 },
        }
    }

    fn named(name: &str) -> Layer {
        Layer {
            name: name.to_string(),
            ..Layer::default()
        }
    }

    fn kinds(lp: &LayerPlan) -> Vec<String> {
        lp.steps
            .iter()
            .map(|s| format!("{}/{}", s.kind(), s.phase.as_str()))
            .collect()
    }

    #[test]
    fn emission_order_is_hook_packages_tasks_builders_services_container_only() {
        let mut fx = Fixture::new();
        let mut l = named("full");
        l.env = vec![("A".into(), "1".into())];
        l.package_sections = vec![
            section(fmt("pac"), &["jq"]),
            section(fmt("aur"), &["yay-bin"]),
        ];
        l.tasks = vec![
            task(
                TaskVerb::Mkdir {
                    path: "${HOME}/x".into(),
                },
                Some("${USER}"),
            ),
            task(
                TaskVerb::Copy {
                    src: "f.txt".into(),
                    to: Some("/etc/f.txt".into()),
                },
                Some("root"),
            ),
        ];
        l.builder_files = BuilderFiles {
            pixi_manifest: Some("pixi.toml".into()),
            npm: true,
            ..BuilderFiles::default()
        };
        l.services = vec![ServiceEntry {
            name: "d".into(),
            exec: Some("/usr/bin/d".into()),
            enable: true,
            ..ServiceEntry::default()
        }];
        l.container_only = vec![ContainerOnlyKey {
            key: "ports".into(),
            reason: "container port mapping".into(),
        }];
        fx.add(
            l,
            &[
                ("f.txt", "x"),
                ("package.json", r#"{"dependencies":{"b":"*","a":"1.0"}}"#),
                ("pixi.toml", ""),
            ],
        );
        let plan = fx.lower(ARCH, ALL, &["full"]).unwrap();
        let lp = &plan.layers[0];
        assert_eq!(
            kinds(lp),
            [
                "ShellHook/install",
                "SystemPackages/install",
                "Task/install",
                "File/install",
                "Builder/install",
                "Builder/install",
                "Builder/install",
                "ServiceCustom/install",
                "ContainerOnly/install",
            ]
        );
        let builders: Vec<BuilderKind> = lp
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Builder { builder, .. } => Some(*builder),
                _ => None,
            })
            .collect();
        assert_eq!(
            builders,
            [BuilderKind::Aur, BuilderKind::Npm, BuilderKind::Pixi]
        );
        let aur = lp
            .steps
            .iter()
            .find(|s| {
                matches!(
                    s.action,
                    Action::Builder {
                        builder: BuilderKind::Aur,
                        ..
                    }
                )
            })
            .unwrap();
        assert_eq!(
            (aur.scope, aur.venue),
            (Scope::System, Venue::ContainerBuilder)
        );
        let npm = lp
            .steps
            .iter()
            .find(|s| {
                matches!(
                    s.action,
                    Action::Builder {
                        builder: BuilderKind::Npm,
                        ..
                    }
                )
            })
            .unwrap();
        assert_eq!(
            npm.action,
            Action::Builder {
                builder: BuilderKind::Npm,
                manifest: Some("package.json".into()),
                packages: vec!["a@1.0".into(), "b".into()],
                names: vec!["a".into(), "b".into()],
                crate_name: None,
                files: vec!["package.json".into()],
            }
        );
        assert_eq!(npm.reverse[0].targets, ["a", "b"]);
        assert_eq!(npm.scope, Scope::User);
        let co = lp.steps.last().unwrap();
        assert_eq!(co.venue, Venue::Skip);
        assert_eq!(co.skip.as_ref().unwrap().reason, "container port mapping");
        assert_eq!(lp.source, "layers/full");
    }

    #[test]
    fn first_matching_tag_section_wins_with_primary_format() {
        let mut fx = Fixture::new();
        let mut l = named("nodejs");
        let mut tag = section(SectionKey::Tags(vec!["ubuntu:24.04".into()]), &["nodejs"]);
        tag.repos = vec![Repo {
            name: Some("nodesource".into()),
            url: Some("https://deb.nodesource.com/node_20.x".into()),
            key: Some("https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key".into()),
            suite: Some("nodistro".into()),
            components: Some("main".into()),
            ..Repo::default()
        }];
        l.package_sections = vec![
            section(fmt("rpm"), &["nodejs", "npm"]),
            section(fmt("deb"), &["nodejs", "npm"]),
            tag,
            section(fmt("pac"), &["nodejs", "npm"]),
        ];
        fx.add(l, &[]);

        // Debian: no tag matches ⇒ the deb format section.
        let plan = fx.lower(DEBIAN, Gates::default(), &["nodejs"]).unwrap();
        assert_eq!(kinds(&plan.layers[0]), ["SystemPackages/install"]);
        assert!(plan.layers[0].steps[0].skip.is_none());

        // Ubuntu 24.04: the tag section, split into key set-up, list file and install.
        let plan = fx.lower(UBUNTU, Gates::default(), &["nodejs"]).unwrap();
        let steps = &plan.layers[0].steps;
        assert_eq!(
            kinds(&plan.layers[0]),
            [
                "SystemPackages/prepare",
                "RepoChange/prepare",
                "SystemPackages/install"
            ]
        );
        let Action::SystemPackages {
            repos,
            format,
            packages,
            ..
        } = &steps[0].action
        else {
            panic!()
        };
        assert_eq!(format, "deb");
        assert!(packages.is_empty());
        assert_eq!(
            repos,
            &[crate::plan::Repo {
                name: Some("nodesource".into()),
                key: Some("https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key".into()),
                signed_by: Some("/etc/apt/keyrings/nodesource.gpg".into()),
                ..crate::plan::Repo::default()
            }]
        );
        assert_eq!(
            steps[1].action,
            Action::RepoChange {
                format: "deb".into(),
                path: "/etc/apt/sources.list.d/nodesource.list".into(),
                content: "# managed by ov (layer nodejs)\ndeb [signed-by=/etc/apt/keyrings/nodesource.gpg] https://deb.nodesource.com/node_20.x nodistro main\n".into(),
            }
        );
        assert_eq!(steps[1].reverse[0].kind, ReverseKind::RemoveRepoFile);
        // Without the gate all three are skipped, naming the flag.
        for s in steps {
            let skip = s.skip.as_ref().unwrap();
            assert_eq!(skip.reason, "requires --allow-repo-changes");
            assert_eq!(skip.enable_with, Some(Gate::AllowRepoChanges));
            assert_eq!(s.venue, Venue::HostNative);
        }
        let plan = fx.lower(UBUNTU, ALL, &["nodejs"]).unwrap();
        assert!(plan.layers[0].steps.iter().all(|s| s.skip.is_none()));

        // Arch: pac only; Fedora: rpm only.
        let plan = fx.lower(ARCH, ALL, &["nodejs"]).unwrap();
        assert!(
            matches!(&plan.layers[0].steps[0].action, Action::SystemPackages { format, .. } if format == "pac")
        );
        let plan = fx.lower(FEDORA, ALL, &["nodejs"]).unwrap();
        assert!(
            matches!(&plan.layers[0].steps[0].action, Action::SystemPackages { format, .. } if format == "rpm")
        );
    }

    #[test]
    fn aur_section_is_nothing_on_a_non_arch_target() {
        let mut fx = Fixture::new();
        let mut l = named("aurish");
        l.package_sections = vec![section(fmt("aur"), &["yay-bin"])];
        fx.add(l, &[]);
        let plan = fx.lower(DEBIAN, ALL, &["aurish"]).unwrap();
        assert!(plan.layers[0].steps.is_empty());
        let plan = fx.lower(ARCH, ALL, &["aurish"]).unwrap();
        assert_eq!(kinds(&plan.layers[0]), ["Builder/install"]);
        assert_eq!(
            plan.layers[0].steps[0].reverse[0].format.as_deref(),
            Some("pac")
        );
    }

    #[test]
    fn rpm_repos_copr_and_modules() {
        let mut fx = Fixture::new();
        let mut l = named("rpmy");
        let mut s = section(fmt("rpm"), &["code", "ffmpeg"]);
        s.repos = vec![
            Repo {
                name: Some("code".into()),
                url: Some("https://packages.microsoft.com/yumrepos/vscode".into()),
                gpgkey: Some("https://packages.microsoft.com/keys/microsoft.asc".into()),
                ..Repo::default()
            },
            Repo {
                name: Some("fedora-multimedia".into()),
                url: Some("https://negativo17.org/repos/fedora-multimedia.repo".into()),
                ..Repo::default()
            },
            Repo {
                name: Some("remi".into()),
                rpm: Some("https://rpms.remirepo.net/fedora/remi-release-43.rpm".into()),
                ..Repo::default()
            },
        ];
        s.copr = vec!["che/nerd-fonts".into()];
        s.modules = vec!["valkey:remi-9.0".into()];
        s.exclude = vec!["*-debuginfo".into()];
        l.package_sections = vec![s];
        fx.add(l, &[]);
        let plan = fx.lower(FEDORA, Gates::default(), &["rpmy"]).unwrap();
        let lp = &plan.layers[0];
        assert_eq!(
            kinds(lp),
            [
                "SystemPackages/prepare",
                "RepoChange/prepare",
                "SystemPackages/install",
                "SystemPackages/cleanup"
            ]
        );
        let Action::SystemPackages {
            repos,
            copr,
            modules,
            ..
        } = &lp.steps[0].action
        else {
            panic!()
        };
        assert_eq!(repos.len(), 3);
        assert_eq!(repos[0].url, None, "the base URL went into the repo file");
        assert_eq!(
            repos[1].url.as_deref(),
            Some("https://negativo17.org/repos/fedora-multimedia.repo")
        );
        assert_eq!(copr, &["che/nerd-fonts"]);
        assert_eq!(modules, &["valkey:remi-9.0"]);
        let rev_kinds: Vec<(ReverseKind, Vec<String>)> = lp.steps[0]
            .reverse
            .iter()
            .map(|r| (r.kind, r.targets.clone()))
            .collect();
        assert_eq!(
            rev_kinds,
            [
                (
                    ReverseKind::RemoveRepoFile,
                    vec!["/etc/yum.repos.d/fedora-multimedia.repo".to_string()]
                ),
                (ReverseKind::CoprDisable, vec!["che/nerd-fonts".to_string()]),
            ]
        );
        let Action::RepoChange { path, content, .. } = &lp.steps[1].action else {
            panic!()
        };
        assert_eq!(path, "/etc/yum.repos.d/code.repo");
        assert_eq!(
            content,
            "# managed by ov (layer rpmy)\n[code]\nname=code\nbaseurl=https://packages.microsoft.com/yumrepos/vscode\nenabled=1\ngpgcheck=1\ngpgkey=https://packages.microsoft.com/keys/microsoft.asc\n"
        );
        let Action::SystemPackages {
            packages,
            exclude,
            repos,
            ..
        } = &lp.steps[2].action
        else {
            panic!()
        };
        assert_eq!(packages, &["code", "ffmpeg"]);
        assert_eq!(exclude, &["*-debuginfo"]);
        assert!(repos.is_empty());
        assert_eq!(lp.steps[2].gate, Some(Gate::AllowRepoChanges));
        assert_eq!(lp.steps[2].reverse[0].kind, ReverseKind::PackageRemove);
        assert_eq!(lp.steps[2].reverse[0].targets, ["code", "ffmpeg"]);
        assert!(lp.steps.iter().all(|s| s.skip.is_some()));
    }

    #[test]
    fn plain_sections_are_ungated() {
        let mut fx = Fixture::new();
        let mut l = named("rg");
        l.package_sections = vec![section(fmt("deb"), &["ripgrep"])];
        fx.add(l, &[]);
        let plan = fx.lower(DEBIAN, Gates::default(), &["rg"]).unwrap();
        let s = &plan.layers[0].steps[0];
        assert_eq!((s.gate, s.skip.is_none()), (None, true));
    }

    #[test]
    fn bad_repo_names_are_rejected() {
        let mut fx = Fixture::new();
        let mut l = named("evil");
        let mut s = section(fmt("deb"), &["x"]);
        s.repos = vec![Repo {
            name: Some("../../etc/passwd".into()),
            url: Some("https://e.example".into()),
            ..Repo::default()
        }];
        l.package_sections = vec![s];
        fx.add(l, &[]);
        let err = fx.lower(DEBIAN, ALL, &["evil"]).unwrap_err();
        assert!(matches!(err, LowerError::InvalidRepo { .. }), "{err}");
        assert!(
            err.to_string().starts_with("layer `evil`: deb repository"),
            "{err}"
        );
    }

    #[test]
    fn tasks_run_as_scope_gate_and_reverse() {
        type Row = (Scope, Option<Gate>, bool, Vec<(ReverseKind, Vec<String>)>);
        let mut fx = Fixture::new();
        let mut l = named("t");
        let mut dl_plain = task(
            TaskVerb::Download {
                url: "https://e.example/tool".into(),
                to: Some("/usr/local/bin/tool".into()),
                extract: None,
                include: vec![],
                strip_components: None,
            },
            Some("root"),
        );
        dl_plain.mode = Some("0755".into());
        let dl_archive = task(
            TaskVerb::Download {
                url: "https://e.example/t.tar.gz".into(),
                to: Some("/usr/local/bin".into()),
                extract: None,
                include: vec![],
                strip_components: None,
            },
            None,
        );
        let mut dl_listed = dl_archive.clone();
        dl_listed.uninstall = vec!["/usr/local/bin/uv".into(), "/usr/local/bin/uvx".into()];
        l.tasks = vec![
            task(
                TaskVerb::Cmd {
                    body: "echo hi".into(),
                },
                None,
            ),
            task(
                TaskVerb::Cmd {
                    body: "echo me".into(),
                },
                Some("${USER}"),
            ),
            task(
                TaskVerb::Mkdir {
                    path: "/opt/x".into(),
                },
                Some("0:0"),
            ),
            task(
                TaskVerb::Write {
                    path: "${HOME}/.x".into(),
                    content: "c".into(),
                },
                Some("${USER}"),
            ),
            task(
                TaskVerb::Link {
                    path: "/usr/bin/x".into(),
                    target: "/opt/x".into(),
                },
                Some("root"),
            ),
            task(
                TaskVerb::Setcap {
                    path: "/usr/bin/sway".into(),
                    caps: "".into(),
                },
                None,
            ),
            dl_plain,
            dl_archive,
            dl_listed,
            task(TaskVerb::Cmd { body: "id".into() }, Some("postgres")),
            task(TaskVerb::Build { what: "all".into() }, Some("${USER}")),
        ];
        fx.add(l, &[]);
        let plan = fx.lower(DEBIAN, Gates::default(), &["t"]).unwrap();
        let s = &plan.layers[0].steps;
        let summary: Vec<Row> = s
            .iter()
            .map(|s| {
                (
                    s.scope,
                    s.gate,
                    s.skip.is_some(),
                    s.reverse
                        .iter()
                        .map(|r| (r.kind, r.targets.clone()))
                        .collect(),
                )
            })
            .collect();
        use ReverseKind::*;
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            summary,
            vec![
                (Scope::System, Some(Gate::AllowRootTasks), true, vec![]),
                (Scope::User, None, false, vec![]),
                (Scope::System, None, false, vec![]),
                (
                    Scope::User,
                    None,
                    false,
                    vec![(RmFileUser, v(&["${HOME}/.x"]))]
                ),
                (
                    Scope::System,
                    None,
                    false,
                    vec![(RmFileSystem, v(&["/usr/bin/x"]))]
                ),
                (Scope::System, None, false, vec![]),
                (
                    Scope::System,
                    None,
                    false,
                    vec![(RmFileSystem, v(&["/usr/local/bin/tool"]))]
                ),
                (Scope::System, None, false, vec![]),
                (
                    Scope::System,
                    None,
                    false,
                    vec![(
                        RmFileSystem,
                        v(&["/usr/local/bin/uv", "/usr/local/bin/uvx"])
                    )]
                ),
                (Scope::User, None, false, vec![]),
                (Scope::User, None, true, vec![]),
            ]
        );
        let run_as: Vec<RunAs> = s
            .iter()
            .map(|s| match &s.action {
                Action::Task { run_as, .. } => run_as.clone(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(run_as[0], RunAs::Root);
        assert_eq!(run_as[1], RunAs::TargetUser);
        assert_eq!(run_as[9], RunAs::Named("postgres".into()));
        assert_eq!(s[10].venue, Venue::Skip);
        assert_eq!(
            s[0].skip.as_ref().unwrap().enable_with,
            Some(Gate::AllowRootTasks)
        );
    }

    #[test]
    fn copy_becomes_a_file_or_a_skip_or_an_error() {
        let mut fx = Fixture::new();
        let mut l = named("c");
        let mut exec = task(
            TaskVerb::Copy {
                src: "bin/tool".into(),
                to: Some("/usr/local/bin/tool".into()),
            },
            Some("root"),
        );
        exec.mode = Some("0755".into());
        l.tasks = vec![
            exec,
            task(
                TaskVerb::Copy {
                    src: "conf".into(),
                    to: Some("~/.conf".into()),
                },
                Some("${USER}"),
            ),
            task(
                TaskVerb::Copy {
                    src: "bin/ov".into(),
                    to: Some("/usr/local/bin/ov".into()),
                },
                Some("root"),
            ),
        ];
        fx.add(l, &[("bin/tool", "#!/bin/sh\n"), ("conf", "x")]);
        let plan = fx.lower(ARCH, Gates::default(), &["c"]).unwrap();
        let s = &plan.layers[0].steps;
        assert_eq!(
            s[0].action,
            Action::File {
                source: "bin/tool".into(),
                dest: "/usr/local/bin/tool".into(),
                mode: "0755".into(),
                run_as: RunAs::Root
            }
        );
        assert_eq!((s[0].scope, s[0].venue), (Scope::System, Venue::HostNative));
        assert_eq!(s[0].reverse[0].kind, ReverseKind::RmFileSystem);
        assert_eq!(
            s[1].action,
            Action::File {
                source: "conf".into(),
                dest: "~/.conf".into(),
                mode: "0644".into(),
                run_as: RunAs::TargetUser
            }
        );
        assert_eq!(s[1].reverse[0].kind, ReverseKind::RmFileUser);
        assert_eq!(s[2].venue, Venue::Skip);
        assert!(s[2]
            .skip
            .as_ref()
            .unwrap()
            .reason
            .contains("`bin/ov` is not in the layer directory"));

        for bad in ["../secret", "/etc/shadow", "a/../../b"] {
            let mut fx = Fixture::new();
            let mut l = named("c");
            l.tasks = vec![task(
                TaskVerb::Copy {
                    src: bad.into(),
                    to: Some("/x".into()),
                },
                None,
            )];
            fx.add(l, &[]);
            let err = fx.lower(ARCH, ALL, &["c"]).unwrap_err();
            assert!(
                matches!(err, LowerError::UnsafeCopySource { line: 7, .. }),
                "{bad}: {err}"
            );
        }

        let mut fx = Fixture::new();
        let mut l = named("c");
        l.tasks = vec![task(
            TaskVerb::Copy {
                src: "d".into(),
                to: Some("/x".into()),
            },
            None,
        )];
        fx.add(l, &[("d/inner", "x")]);
        let err = fx.lower(ARCH, ALL, &["c"]).unwrap_err();
        assert!(matches!(err, LowerError::CopySourceNotFile { .. }), "{err}");
    }

    #[test]
    fn relative_target_paths_are_refused() {
        for verb in [
            TaskVerb::Copy {
                src: "conf".into(),
                to: None,
            },
            TaskVerb::Mkdir {
                path: "data".into(),
            },
            TaskVerb::Write {
                path: "x.conf".into(),
                content: String::new(),
            },
            TaskVerb::Link {
                path: "bin/x".into(),
                target: "/opt/x".into(),
            },
        ] {
            let mut fx = Fixture::new();
            let mut l = named("rel");
            l.tasks = vec![task(verb, Some("${USER}"))];
            fx.add(l, &[("conf", "x")]);
            let err = fx.lower(ARCH, ALL, &["rel"]).unwrap_err();
            assert!(
                matches!(err, LowerError::RelativeTarget { line: 7, .. }),
                "{err}"
            );
        }
        // A relative link *target* is fine: it is resolved against the link's directory.
        let mut fx = Fixture::new();
        let mut l = named("rel");
        l.tasks = vec![task(
            TaskVerb::Link {
                path: "~/bin/x".into(),
                target: "x-wrapper".into(),
            },
            Some("${USER}"),
        )];
        fx.add(l, &[]);
        assert!(fx.lower(ARCH, ALL, &["rel"]).is_ok());
    }

    #[test]
    fn a_parent_dir_from_vars_is_refused_and_dots_are_normalised() {
        let lower_one = |verb: TaskVerb, uninstall: &[&str]| {
            let mut fx = Fixture::new();
            let mut l = named("v");
            l.vars = vec![
                ("UP".into(), "/opt/app/..".into()),
                ("DIR".into(), "/opt/app/".into()),
            ];
            let mut t = task(verb, None);
            t.uninstall = uninstall.iter().map(|u| u.to_string()).collect();
            l.tasks = vec![t];
            fx.add(l, &[]);
            fx.lower(ARCH, ALL, &["v"])
        };
        let err = lower_one(
            TaskVerb::Write {
                path: "${UP}/etc/x".into(),
                content: String::new(),
            },
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(&err, LowerError::ParentDirInTarget { line: 7, field: "write", path, resolved: Some(r), .. }
                if path == "/opt/app/../etc/x" && r == "/opt/etc/x"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("change the variable so the path reads `/opt/etc/x`"),
            "{err}"
        );
        let err = lower_one(
            TaskVerb::Download {
                url: "https://example.org/x.tar.gz".into(),
                to: Some("${DIR}".into()),
                extract: None,
                include: vec![],
                strip_components: None,
            },
            &["${UP}/../bin/x"],
        )
        .unwrap_err();
        assert!(
            matches!(
                &err,
                LowerError::ParentDirInTarget {
                    field: "uninstall",
                    ..
                }
            ),
            "{err}"
        );
        // `${DIR}/./y/` reads `/opt/app//./y/` and lowers to `/opt/app/y`.
        let plan = lower_one(
            TaskVerb::Mkdir {
                path: "${DIR}/./y/".into(),
            },
            &[],
        )
        .expect("lowers");
        let Action::Task { task, .. } = &plan.layers[0].steps[0].action else {
            panic!("{:?}", plan.layers[0].steps[0].action)
        };
        assert_eq!(
            task.verb,
            crate::plan::TaskVerb::Mkdir {
                path: "/opt/app/y".into()
            }
        );
    }

    #[cfg(unix)]
    #[test]
    fn copy_through_a_symlink_out_of_the_layer_is_rejected() {
        let mut fx = Fixture::new();
        let mut l = named("c");
        l.tasks = vec![task(
            TaskVerb::Copy {
                src: "link".into(),
                to: Some("/x".into()),
            },
            None,
        )];
        fx.add(l, &[]);
        let outside = fx.dir.path().join("outside");
        std::fs::write(&outside, "secret").unwrap();
        std::os::unix::fs::symlink(&outside, fx.dir.path().join("layers/c/link")).unwrap();
        let err = fx.lower(ARCH, ALL, &["c"]).unwrap_err();
        assert!(matches!(err, LowerError::UnsafeCopySource { .. }), "{err}");
    }

    #[test]
    fn services_packaged_and_custom() {
        let mut fx = Fixture::new();
        let mut l = named("svc");
        l.services = vec![
            ServiceEntry {
                name: "qga".into(),
                use_packaged: Some("qemu-guest-agent".into()),
                enable: true,
                ..ServiceEntry::default()
            },
            ServiceEntry {
                name: "sock".into(),
                use_packaged: Some("docker.socket".into()),
                enable: false,
                scope: ServiceScope::User,
                overrides: Some(ServiceOverrides::default()),
                ..ServiceEntry::default()
            },
            ServiceEntry {
                name: "web".into(),
                exec: Some("/usr/bin/web".into()),
                enable: true,
                ..ServiceEntry::default()
            },
        ];
        fx.add(l, &[]);
        let plan = fx.lower(FEDORA, Gates::default(), &["svc"]).unwrap();
        let s = &plan.layers[0].steps;
        assert!(
            matches!(&s[0].action, Action::ServicePackaged { unit, enable: true, .. } if unit == "qemu-guest-agent.service")
        );
        assert!(
            matches!(&s[1].action, Action::ServicePackaged { unit, .. } if unit == "docker.socket")
        );
        assert!(
            matches!(&s[2].action, Action::ServiceCustom { unit, .. } if unit == "ov-svc-web.service")
        );
        let revs: Vec<Vec<(ReverseKind, Vec<String>)>> = s
            .iter()
            .map(|s| {
                s.reverse
                    .iter()
                    .map(|r| (r.kind, r.targets.clone()))
                    .collect()
            })
            .collect();
        use ReverseKind::*;
        assert_eq!(
            revs,
            vec![
                vec![
                    (RestoreEnabled, vec!["qemu-guest-agent.service".to_string()]),
                    (ServiceDisable, vec!["qemu-guest-agent.service".to_string()]),
                ],
                vec![(
                    RemoveDropin,
                    vec!["${HOME}/.config/systemd/user/docker.socket.d/ov-svc.conf".to_string()]
                )],
                vec![
                    (
                        ServiceRemove,
                        vec!["/etc/systemd/system/ov-svc-web.service".to_string()]
                    ),
                    (ServiceDisable, vec!["ov-svc-web.service".to_string()]),
                ],
            ]
        );
        assert_eq!(s[1].scope, Scope::User);
        for st in s {
            assert_eq!(st.gate, Some(Gate::WithServices));
            assert_eq!(st.skip.as_ref().unwrap().reason, "requires --with-services");
        }
    }

    #[test]
    fn service_errors() {
        for (entry, want) in [
            (
                ServiceEntry {
                    name: "x".into(),
                    ..ServiceEntry::default()
                },
                "neither",
            ),
            (
                ServiceEntry {
                    name: "x".into(),
                    exec: Some("a".into()),
                    use_packaged: Some("b".into()),
                    ..ServiceEntry::default()
                },
                "both",
            ),
            (
                ServiceEntry {
                    name: "x".into(),
                    use_packaged: Some("../../evil".into()),
                    ..ServiceEntry::default()
                },
                "invalid unit name",
            ),
            (
                ServiceEntry {
                    name: "a/b".into(),
                    exec: Some("x".into()),
                    ..ServiceEntry::default()
                },
                "invalid unit name",
            ),
        ] {
            let mut fx = Fixture::new();
            let mut l = named("s");
            l.services = vec![entry];
            fx.add(l, &[]);
            let err = fx.lower(ARCH, ALL, &["s"]).unwrap_err().to_string();
            assert!(err.starts_with("layer `s`: service"), "{err}");
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn shell_hook_and_env_names() {
        let mut fx = Fixture::new();
        let mut l = named("rust");
        l.path_append = vec!["~/.cargo/bin".into()];
        fx.add(l, &[]);
        let plan = fx.lower(ARCH, Gates::default(), &["rust"]).unwrap();
        let s = &plan.layers[0].steps[0];
        assert_eq!((s.scope, s.venue), (Scope::UserProfile, Venue::HostNative));
        assert_eq!(s.reverse[0].kind, ReverseKind::RemoveEnvdFile);
        assert_eq!(
            s.reverse[0].targets,
            ["${HOME}/.config/overthink/env.d/rust.env"]
        );

        let mut fx = Fixture::new();
        let mut l = named("bad");
        l.env = vec![("A B".into(), "x".into())];
        fx.add(l, &[]);
        let err = fx.lower(ARCH, ALL, &["bad"]).unwrap_err();
        assert!(matches!(err, LowerError::InvalidEnvName { .. }), "{err}");
    }

    #[test]
    fn unknown_layer_and_outside_source_are_errors() {
        let mut fx = Fixture::new();
        assert!(matches!(
            fx.lower(ARCH, ALL, &["nope"]).unwrap_err(),
            LowerError::UnknownLayer { .. }
        ));
        let mut l = named("far");
        l.env = vec![("A".into(), "1".into())];
        fx.add(l, &[]);
        fx.project.layers.get_mut("far").unwrap().source_dir = PathBuf::from("/somewhere/else");
        assert!(matches!(
            fx.lower(ARCH, ALL, &["far"]).unwrap_err(),
            LowerError::SourceOutsideProject { .. }
        ));
    }

    #[test]
    fn invalid_package_json_is_an_error_naming_the_layer() {
        let mut fx = Fixture::new();
        let mut l = named("npmx");
        l.builder_files.npm = true;
        fx.add(
            l,
            &[("package.json", r#"{"dependencies":{"--global-style":"1"}}"#)],
        );
        let err = fx.lower(ARCH, ALL, &["npmx"]).unwrap_err().to_string();
        assert!(err.starts_with("layer `npmx`: invalid"), "{err}");
    }
}
