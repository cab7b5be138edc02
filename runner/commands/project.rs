//! Stage `runner`, the project side of a command: find the project, load it and resolve the
//! deploy once, then lower, render and bundle from that one load; or read a compiled bundle's
//! own description of its deploy.
//! Invariant: a command loads and resolves the project at most once; output files are written
//! atomically by the compiler's `bundle`.

use std::path::{Path, PathBuf};

use ov_compiler::bundle::{self, Bundle, BundleOptions};
use ov_compiler::deploy::DeployRequest;
use ov_compiler::plan::{Deploy, Gates, InstallPlan};
use ov_compiler::project::Project;
use ov_compiler::render::{self, Engine};
use ov_compiler::repo::{normalize_requests, RemoteError};

use crate::repos::{FetchMode, RepoError};

use crate::commands::error::{BundleReadError, CommandError};
use crate::target::deploy::{DeployArg, DeployTarget};

/// Which project, which deploy and which layers (the plain form of the shared deploy
/// arguments).
#[derive(Debug, Clone)]
pub struct Selection {
    /// `-C/--project`; `None`: `$OV_PROJECT`, else the first parent of the working directory
    /// with an `overthink.yml`.
    pub project: Option<PathBuf>,
    /// The deploy argument.
    pub deploy: DeployArg,
    /// Extra layers.
    pub add_layers: Vec<String>,
    /// `--distro TAG`.
    pub distro: Option<String>,
    /// Opt-ins from the command line (the deploy node's `install_opts` add to them).
    pub gates: Gates,
    /// Whether remote layers may be fetched (`--offline`, `--update`).
    pub fetch: FetchMode,
}

impl Selection {
    /// Only the deploy: no extra layers, the target's own distro, no opt-ins.
    pub fn deploy_only(project: Option<PathBuf>, deploy: DeployArg) -> Selection {
        Selection {
            project,
            deploy,
            add_layers: Vec::new(),
            distro: None,
            gates: Gates::default(),
            fetch: FetchMode::default(),
        }
    }

    /// The `ov fetch …` that fetches every remote layer this selection needs (said when
    /// `--offline` finds one missing).
    pub fn fetch_command(&self) -> String {
        let mut words = vec!["ov".to_string()];
        if let Some(dir) = &self.project {
            words.push("-C".to_string());
            words.push(dir.to_string_lossy().into_owned());
        }
        words.push("fetch".to_string());
        if let DeployArg::Name(name) = &self.deploy {
            words.push(name.clone());
        }
        // Only the remote ones: a plain layer name needs nothing fetched.
        for layer in self.add_layers.iter().filter(|l| l.contains('/')) {
            words.push("--add-layer".to_string());
            words.push(layer.clone());
        }
        if let Some(distro) = &self.distro {
            words.push("--distro".to_string());
            words.push(distro.clone());
        }
        command_line(&words)
    }

    /// The compiler's request. For `host` without `--distro`, the local machine's distro.
    pub fn request(&self) -> DeployRequest {
        let name = match &self.deploy {
            DeployArg::Bundle(path) => path.to_string_lossy().into_owned(),
            DeployArg::Name(name) => name.clone(),
        };
        let distro = match &self.distro {
            None if self.deploy.is_host() => host_distro(),
            given => given.clone(),
        };
        DeployRequest {
            name,
            add_layers: self.add_layers.clone(),
            distro,
            gates: self.gates,
            user: None,
        }
    }
}

/// How a bundle is compiled.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// `--templates DIR`.
    pub templates: Option<PathBuf>,
    /// `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: Option<u64>,
    /// `--sign KEY`: sign `SHA256SUMS` with this key (a private key file, or a public key whose
    /// private half is in ssh-agent).
    pub sign: Option<PathBuf>,
}

/// `words` as one line a shell reads back as the same words (plain words stay plain).
pub fn command_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c));
            if plain {
                w.clone()
            } else {
                ov_compiler::shell::quote(w).unwrap_or_else(|_| w.clone())
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The local machine's distro tag from `/etc/os-release` (`ID:VERSION_ID`; the compiler maps
/// IDs such as `arch` to build.yml names).
pub fn host_distro() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
    };
    match (field("ID"), field("VERSION_ID")) {
        (Some(id), Some(v)) if !v.is_empty() => Some(format!("{id}:{v}")),
        (Some(id), _) => Some(id),
        _ => None,
    }
}

/// `-C DIR`, else `$OV_PROJECT`, else walk up from the working directory.
pub fn find_project(explicit: Option<&Path>) -> Result<PathBuf, CommandError> {
    let cwd = std::env::current_dir()?;
    let env = std::env::var_os("OV_PROJECT").map(PathBuf::from);
    Ok(ov_compiler::project::find_root(
        explicit,
        env.as_deref(),
        &cwd,
    )?)
}

/// A project loaded once, with the deploy resolved in it.
#[derive(Debug)]
pub struct Resolved {
    pub project: Project,
    pub deploy: Deploy,
    gates: Gates,
    requested: Vec<String>,
}

/// Load the project, resolve the selected deploy and add the remote layers it needs (fetched
/// into the repo cache and pinned in `ov.lock` unless `--offline`).
pub fn resolve(selection: &Selection) -> Result<Resolved, CommandError> {
    let root = find_project(selection.project.as_deref())?;
    let mut project = Project::load(&root)?;
    let (deploy, gates, requested) =
        ov_compiler::deploy::resolve_deploy(&project, &selection.request())?;
    let requested = remote_requests(&requested)?;
    crate::repos::prepare(
        &mut project,
        &requested,
        selection.fetch,
        &selection.fetch_command(),
    )?;
    Ok(Resolved {
        project,
        deploy,
        gates,
        requested,
    })
}

impl Resolved {
    /// Where the deploy goes.
    pub fn target(&self) -> DeployTarget {
        DeployTarget::of_deploy(&self.deploy, &self.project)
    }

    /// Resolve the layers and lower them into the plan.
    pub fn plan(&self) -> Result<InstallPlan, CommandError> {
        let order = ov_compiler::resolve::resolve(&self.project.layers, &self.requested)?;
        Ok(ov_compiler::lower::lower(
            &self.project,
            self.deploy.clone(),
            self.gates,
            &order,
        )?)
    }

    /// The plan, the template engine and the rendered scripts.
    fn render(
        &self,
        build: &BuildOptions,
    ) -> Result<(InstallPlan, Engine, render::Rendered), CommandError> {
        let plan = self.plan()?;
        let engine = Engine::new(build.templates.as_deref())?;
        let rendered = render::render(&plan, &self.project.root, &engine)?;
        Ok((plan, engine, rendered))
    }

    /// Plan, render and assemble the bundle in memory.
    pub fn compile(&self, build: &BuildOptions) -> Result<Bundle, CommandError> {
        // Asking git for the provenance takes a process (tens of ms in a large work tree): it
        // runs while the deploy is planned and rendered.
        let (git, rendered) = std::thread::scope(|s| {
            let git = s.spawn(|| crate::sign::git_state(&self.project.root));
            let rendered = self.render(build);
            (git.join().unwrap_or(None), rendered)
        });
        let (plan, engine, rendered) = rendered?;
        let signer = match &build.sign {
            Some(key) => Some(crate::sign::load_signer(key)?),
            None => None,
        };
        bundle::build_signed(
            &plan,
            &rendered,
            &engine,
            &BundleOptions {
                source_date_epoch: build.source_date_epoch,
                ov_version: env!("CARGO_PKG_VERSION").to_string(),
                git,
            },
            signer.as_deref(),
        )
        .map_err(CommandError::Build)
    }
}

/// Requested layers with the command line's remote form (`github.com/o/r/path@ref`) in the
/// resolver's (`@github.com/o/r/path:ref`).
pub fn remote_requests(requested: &[String]) -> Result<Vec<String>, CommandError> {
    normalize_requests(requested).map_err(|source| {
        CommandError::from(RepoError::Remote(RemoteError::BadRef {
            required_by: None,
            source,
        }))
    })
}

/// Write a bundle for a push into `$XDG_CACHE_HOME/ov/bundles/` (or `~/.cache/…`).
pub fn write_to_cache(bundle: &Bundle) -> Result<PathBuf, CommandError> {
    write_to_cache_in(bundle, "")
}

/// [`write_to_cache`] into the cache's subdirectory `sub` (bundles of one deploy compiled for
/// several distros share a file name).
pub fn write_to_cache_in(bundle: &Bundle, sub: &str) -> Result<PathBuf, CommandError> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or(CommandError::NoCacheDir)?
        .join("ov/bundles")
        .join(sub);
    std::fs::create_dir_all(&cache)?;
    let (archive, _) =
        bundle::write(bundle, &cache.join(bundle.archive_name())).map_err(CommandError::Write)?;
    Ok(archive)
}

/// A bundle's error for `action` (`inspect`, `verify`, `push`).
pub fn bundle_error(
    action: &'static str,
    path: &Path,
    source: impl Into<BundleReadError>,
) -> CommandError {
    CommandError::Bundle {
        action,
        path: path.to_path_buf(),
        source: source.into(),
    }
}

/// Open a bundle archive for streaming (it is never read whole into memory).
pub fn open_archive(
    path: &Path,
    action: &'static str,
) -> Result<std::io::BufReader<std::fs::File>, CommandError> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|e| bundle_error(action, path, e))
}

/// The bundle a push sends, perhaps still to be compiled: a command can start connecting to the
/// target while the deploy compiles.
#[derive(Debug)]
pub enum PendingBundle {
    /// An archive that exists.
    Ready(PathBuf),
    /// The deploy, resolved, to compile into the cache.
    Compile(Box<Resolved>, BuildOptions),
}

impl PendingBundle {
    /// The archive, compiled first if need be.
    pub fn finish(self) -> Result<PathBuf, CommandError> {
        match self {
            PendingBundle::Ready(path) => Ok(path),
            PendingBundle::Compile(resolved, build) => write_to_cache(&resolved.compile(&build)?),
        }
    }
}

/// The bundle a push or test sends and its target: an existing bundle as it is (its manifest
/// names the deploy; the project, when there is one, adds the VM's SSH settings), or the
/// selected deploy compiled into the cache.
pub fn bundle_and_target(
    selection: &Selection,
    build: &BuildOptions,
) -> Result<(PathBuf, DeployTarget), CommandError> {
    let (pending, target) = pending_bundle_and_target(selection, build)?;
    Ok((pending.finish()?, target))
}

/// [`bundle_and_target`], with the compile left to do: the target is known once the project is
/// loaded and the deploy resolved.
pub fn pending_bundle_and_target(
    selection: &Selection,
    build: &BuildOptions,
) -> Result<(PendingBundle, DeployTarget), CommandError> {
    match &selection.deploy {
        DeployArg::Bundle(path) => {
            let archive = open_archive(path, "push")?;
            let manifest = ov_compiler::manifest::inspect(archive, None)
                .map_err(|e| bundle_error("push", path, e))?
                .manifest;
            let loaded = find_project(selection.project.as_deref())
                .ok()
                .and_then(|root| Project::load(&root).ok());
            let target = DeployTarget::of_manifest(&manifest.deploy, loaded.as_ref());
            Ok((PendingBundle::Ready(path.clone()), target))
        }
        DeployArg::Name(_) => {
            let resolved = resolve(selection)?;
            let target = resolved.target();
            Ok((
                PendingBundle::Compile(Box::new(resolved), build.clone()),
                target,
            ))
        }
    }
}
