//! Stage `lower`: the loaded layers in resolved order → the [`InstallPlan`] IR; output is a pure,
//! deterministic function of the project files and the deploy (no map-order iteration, no absolute
//! paths in the plan), and every decision about *what* runs is made here — rendering only decides
//! *how*. Lowering is also the last stage that looks at a layer directory: what a script needs
//! from it (the files a builder or a `/ctx` body takes, a crate's name, `package.json`'s
//! dependencies) is read here and carried in the plan.
//!
//! Per layer, steps are emitted in this order (the original's, plus the kinds it never produced):
//! 1. `ShellHook` (`env:` / `path_append:`), scope `user-profile`.
//! 2. Package sections, selected as the original did: the first distro tag (most specific first) that
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

mod builders;
pub mod checks;
#[cfg(test)]
pub(crate) mod fixture;
mod packages;
mod services;
mod tasks;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::layer::Layer;
use crate::plan::{
    Action, Deploy, Gate, Gates, InstallPlan, LayerOrigin, LayerPlan, Phase, ReverseKind,
    ReverseOp, Scope, Skip, Step, Venue, FORMAT_VERSION,
};
use crate::project::Project;

/// A place in a layer file (a task, a check): the file, and the line and column in it. Shown as
/// `FILE:LINE:COLUMN`, as the parser's errors are, so an editor or terminal can follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerAt {
    /// The layer's `layer.yml`.
    pub file: PathBuf,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

impl LayerAt {
    /// `pos` in `file`.
    pub fn new(file: &Path, pos: crate::entries::Pos) -> LayerAt {
        LayerAt {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
        }
    }

    /// The place of `task` in `layer`'s file.
    pub fn of(layer: &crate::layer::Layer, task: &crate::layer::Task) -> LayerAt {
        LayerAt::new(&layer.file, task.pos)
    }
}

impl std::fmt::Display for LayerAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Why a layer could not be lowered. Every variant names the layer.
#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    /// A check of the layer's `tests:` cannot mean anything on any target.
    #[error(transparent)]
    Check(#[from] checks::CheckError),
    /// The order names a layer the project does not have.
    #[error("unknown layer `{layer}` in the resolved order")]
    UnknownLayer { layer: String },
    /// The layer directory is not inside the project root, so the plan cannot name it relatively.
    #[error("layer `{layer}`: its directory `{}` is outside the project root", dir.display())]
    SourceOutsideProject {
        layer: String,
        /// Its source directory.
        dir: PathBuf,
    },
    /// A `copy:` source that is absolute, climbs with `..`, or resolves outside the layer directory.
    #[error("{at}: layer `{layer}`: `copy: {src}` must be a path inside the layer directory")]
    UnsafeCopySource {
        layer: String,
        /// Where the task is.
        at: LayerAt,
        /// The source as written.
        src: String,
    },
    /// A `copy:` source that is a directory (list its files as separate `copy:` tasks).
    #[error("{at}: layer `{layer}`: `copy: {src}` is a directory; copy its files one by one")]
    CopySourceNotFile {
        layer: String,
        /// Where the task is.
        at: LayerAt,
        /// The source as written.
        src: String,
    },
    /// A task whose path on the target is relative (it would depend on a script's working
    /// directory).
    #[error("{at}: layer `{layer}`: `{field}` path `{path}` must be absolute or start with `~/` or `${{HOME}}`")]
    RelativeTarget {
        layer: String,
        /// Where the task is.
        at: LayerAt,
        /// The field holding the path: `to` where the task has one, else the verb.
        field: &'static str,
        /// The path as written.
        path: String,
    },
    /// A path a task writes to that holds `..` once the layer's `vars:` are applied (the parser
    /// refuses a `..` written in the path itself, with its position).
    #[error("{at}: layer `{layer}`: `{field}` path `{path}` contains `..` once `vars:` are applied; {}", parent_dir_hint(.resolved.as_deref()))]
    ParentDirInTarget {
        layer: String,
        /// Where the task is.
        at: LayerAt,
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
        layer: String,
        /// The service's `name:`.
        service: String,
    },
    /// A service entry with both `exec:` and `use_packaged:` (use `overrides.exec` instead).
    #[error("layer `{layer}`: service `{service}` has both `exec:` and `use_packaged:`; use `overrides: {{exec: …}}` to change a packaged unit's command")]
    ServiceWithBothActions {
        layer: String,
        /// The service's `name:`.
        service: String,
    },
    /// A unit name that systemd would not accept or that would escape the unit directory.
    #[error("layer `{layer}`: service `{service}`: invalid unit name `{unit}`")]
    InvalidUnitName {
        layer: String,
        /// The service's `name:`.
        service: String,
        unit: String,
    },
    /// A repository entry that cannot be turned into set-up steps.
    #[error("layer `{layer}`: {format} repository `{repo}`: {reason}")]
    InvalidRepo {
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
    NoPackageFormat { layer: String },
    /// An environment variable name that cannot be exported by a shell.
    #[error("layer `{layer}`: invalid environment variable name `{name}` in {context}")]
    InvalidEnvName {
        layer: String,
        name: String,
        /// Where it was (`env:`, a task, a service).
        context: String,
    },
    /// A builder manifest that could not be read.
    #[error("layer `{layer}`: cannot read `{}`", path.display())]
    BuilderManifestRead {
        layer: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The layer directory (or a part of it a step carries in the bundle) cannot be listed.
    #[error("layer `{layer}`: cannot list the files of `{}`", path.display())]
    LayerFiles {
        layer: String,
        /// The directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A builder manifest (`package.json`, `Cargo.toml`) that does not have the expected shape.
    #[error("layer `{layer}`: invalid `{}`: {reason}", path.display())]
    BuilderManifestInvalid {
        layer: String,
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
            Some(layer) => checks::lower_checks(
                &deploy,
                &layers[i].name,
                &layer.file,
                &layer.checks,
                &layers,
            )?,
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

/// A step acting for `scope`, run on the target itself in the install phase, with no gate; the
/// methods below change what differs.
fn step(action: Action, scope: Scope, reverse: Vec<ReverseOp>) -> Step {
    Step::new(action, scope, reverse)
}

impl Step {
    /// In package-section phase `phase`.
    fn in_phase(self, phase: Phase) -> Step {
        Step { phase, ..self }
    }

    /// Run inside a builder toolchain (pixi, npm, cargo, makepkg).
    fn in_builder(self) -> Step {
        Step {
            venue: Venue::ContainerBuilder,
            ..self
        }
    }

    /// Not run on this target, for `skip`'s reason (venue `skip`); `None` changes nothing.
    fn skipped(self, skip: Option<Skip>) -> Step {
        match skip {
            Some(skip) => Step {
                venue: Venue::Skip,
                skip: Some(skip),
                ..self
            },
            None => self,
        }
    }

    /// Needs `gate`, and is skipped naming the flag when `gates` keeps it closed (a step already
    /// skipped keeps its own reason).
    fn gated(self, gate: Option<Gate>, gates: Gates) -> Step {
        let skip = self.skip.or_else(|| {
            gate.filter(|g| !gates.allows(*g)).map(|g| Skip {
                reason: format!("requires --{}", g.as_str()),
                enable_with: Some(g),
            })
        });
        Step { gate, skip, ..self }
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
    let (source, origin, source_dir) = match &layer.remote {
        // A remote layer lives in its checkout, read from there; `directory:` may move it inside.
        Some(src) => (
            src.source_text(),
            src.origin(),
            Some(layer.source_dir.clone()),
        ),
        None => {
            let source = relative_source(&project.root, &layer.source_dir).ok_or_else(|| {
                LowerError::SourceOutsideProject {
                    layer: name.to_string(),
                    dir: layer.source_dir.clone(),
                }
            })?;
            let origin = LayerOrigin::Local {
                path: source.clone(),
            };
            (source, origin, None)
        }
    };
    let mut steps = Vec::new();

    // 1. Shell hook.
    if !layer.env.is_empty() || !layer.path_append.is_empty() {
        check_env_names(name, &layer.env, "`env:`")?;
        steps.push(step(
            Action::ShellHook {
                env: layer.env.clone(),
                path_append: layer.path_append.clone(),
            },
            Scope::UserProfile,
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
    for (section, format) in
        packages::select_sections(layer, &deploy.distro.tags, &deploy.distro.formats)
    {
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
        packages::lower_section(gates, name, section, &format, &mut steps)?;
    }

    // 3. Tasks and files, in YAML order.
    for task in &layer.tasks {
        steps.push(tasks::lower_task(gates, name, layer, task)?);
    }

    // 4. Builders, by builder name.
    steps.extend(builders::lower_builders(name, layer, aur_packages)?);

    // 5. Services.
    for service in &layer.services {
        steps.push(services::lower_service(gates, name, service)?);
    }

    // 6. What was left out.
    for key in &layer.container_only {
        steps.push(
            step(
                Action::ContainerOnly {
                    key: key.key.clone(),
                },
                Scope::System,
                Vec::new(),
            )
            .skipped(Some(Skip {
                reason: key.reason.clone(),
                enable_with: None,
            })),
        );
    }

    Ok(LayerPlan {
        name: name.to_string(),
        version: layer.version.clone(),
        source,
        origin,
        source_dir,
        steps,
        checks: Vec::new(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{BuilderFiles, ContainerOnlyKey, ServiceEntry, TaskVerb};
    use crate::lower::fixture::*;
    use crate::plan::BuilderKind;

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
        let builder_step = |kind: BuilderKind| {
            lp.steps
                .iter()
                .find(|s| matches!(&s.action, Action::Builder { builder, .. } if *builder == kind))
                .unwrap()
        };
        let aur = builder_step(BuilderKind::Aur);
        assert_eq!(
            (aur.scope, aur.venue),
            (Scope::System, Venue::ContainerBuilder)
        );
        let npm = builder_step(BuilderKind::Npm);
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

        let mut l = named("bad");
        l.env = vec![("A B".into(), "x".into())];
        let err = lower_alone(l, &[]).unwrap_err();
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
}
