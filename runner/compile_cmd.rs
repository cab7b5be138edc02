//! Stage `cli` (compile side): `ov plan`, `ov compile`, `ov inspect`, `ov verify` as thin
//! functions over `ov-compiler` — load, resolve, lower, render, bundle — plus the lookup of a
//! deploy's target for the runner commands. Output files are written atomically by `bundle`.

use std::io::Write;
use std::path::{Path, PathBuf};

use ov_compiler::bundle::{self, BundleOptions};
use ov_compiler::deploy::DeployRequest;
use ov_compiler::plan::{Gate, InstallPlan, Step, TargetKind};
use ov_compiler::project::Project;
use ov_compiler::render::{self, Engine};

use crate::cli::Failure;
use crate::exit::Exit;

/// Where `ov compile` writes.
#[derive(Debug, Clone)]
pub enum Output {
    /// `./<name>.tar.gz` (for push: the cache directory).
    Default,
    /// `-o FILE`.
    Archive(PathBuf),
    /// `--out-dir DIR`: unpacked into `DIR/<name>/`.
    Unpacked(PathBuf),
}

/// Plain options of `ov compile` (and of the compile half of `ov push`).
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// `-C/--project`.
    pub project: Option<PathBuf>,
    /// The deploy and its layers.
    pub request: DeployRequest,
    /// `--templates DIR`.
    pub templates: Option<PathBuf>,
    /// `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: Option<u64>,
    /// Where to write.
    pub output: Output,
}

fn input<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> Failure {
    Failure::new(Exit::InvalidInput, e)
}

fn other<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> Failure {
    Failure::new(Exit::Other, e)
}

/// `-C DIR`, else `$OV_PROJECT`, else walk up from the working directory.
pub fn find_project(explicit: Option<&Path>) -> Result<PathBuf, Failure> {
    let cwd = std::env::current_dir().map_err(other)?;
    let env = std::env::var_os("OV_PROJECT").map(PathBuf::from);
    ov_compiler::project::find_root(explicit, env.as_deref(), &cwd).map_err(input)
}

/// For `host` without `--distro`: the local machine's distro tag from `/etc/os-release`
/// (`ID:VERSION_ID`; the compiler maps IDs such as `arch` to build.yml names).
fn with_host_distro(request: &DeployRequest) -> DeployRequest {
    let mut req = request.clone();
    if req.name == "host" && req.distro.is_none() {
        if let Ok(text) = std::fs::read_to_string("/etc/os-release") {
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")))
                    .map(|v| v.trim_matches('"').to_string())
            };
            req.distro = match (field("ID"), field("VERSION_ID")) {
                (Some(id), Some(v)) if !v.is_empty() => Some(format!("{id}:{v}")),
                (Some(id), _) => Some(id),
                _ => None,
            };
        }
    }
    req
}

/// Load the project and produce the plan for `request`.
pub fn plan(
    project: Option<&Path>,
    request: &DeployRequest,
) -> Result<(Project, InstallPlan), Failure> {
    let root = find_project(project)?;
    let project = Project::load(&root).map_err(input)?;
    let request = with_host_distro(request);
    let (deploy, gates, requested) =
        ov_compiler::deploy::resolve_deploy(&project, &request).map_err(input)?;
    let order = ov_compiler::resolve::resolve(&project.layers, &requested).map_err(input)?;
    let plan = ov_compiler::lower::lower(&project, deploy, gates, &order).map_err(input)?;
    Ok((project, plan))
}

/// `ov plan`.
pub fn run_plan(
    project: Option<&Path>,
    request: &DeployRequest,
    json: bool,
) -> Result<Exit, Failure> {
    let (_, plan) = plan(project, request)?;
    let text = if json {
        let mut s = serde_json::to_string_pretty(&plan).map_err(other)?;
        s.push('\n');
        s
    } else {
        summary(&plan)
    };
    emit(&text)?;
    Ok(Exit::Ok)
}

/// Write a command's output to stdout. A reader that went away (`ov plan … | head`) is not an
/// error of ours: like other Unix tools we stop quietly instead of printing `Broken pipe`.
fn emit(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(other(e)),
        _ => Ok(()),
    }
}

/// Compile to a bundle in memory.
pub fn build(opts: &CompileOptions) -> Result<bundle::Bundle, Failure> {
    let (project, plan) = plan(opts.project.as_deref(), &opts.request)?;
    let engine = Engine::new(opts.templates.as_deref()).map_err(input)?;
    let rendered = render::render(&plan, &project.root, &engine).map_err(input)?;
    bundle::build(
        &plan,
        &rendered,
        &engine,
        &BundleOptions {
            source_date_epoch: opts.source_date_epoch,
            ov_version: env!("CARGO_PKG_VERSION").to_string(),
        },
    )
    .map_err(input)
}

/// `ov compile`: write the archive (and `.sha256`) or the unpacked tree; print where and the digest.
pub fn run_compile(opts: &CompileOptions) -> Result<Exit, Failure> {
    let bundle = build(opts)?;
    match &opts.output {
        Output::Unpacked(dir) => {
            let top = bundle::write_unpacked(&bundle, dir).map_err(other)?;
            println!("wrote {} ({} files)", top.display(), bundle.files.len());
        }
        Output::Default | Output::Archive(_) => {
            let out = match &opts.output {
                Output::Archive(f) => f.clone(),
                _ => PathBuf::from(bundle.archive_name()),
            };
            // Like `--out-dir`, `-o` creates the directory it writes into.
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(other)?;
            }
            let (archive, sum) = bundle::write(&bundle, &out).map_err(other)?;
            println!("wrote {}", archive.display());
            println!("wrote {}", sum.display());
            println!(
                "sha256 {}",
                bundle.sha256_text().split_whitespace().next().unwrap_or("")
            );
        }
    }
    Ok(Exit::Ok)
}

/// Compile for a push: the archive goes to `$XDG_CACHE_HOME/ov/bundles/` (or `~/.cache/…`).
pub fn compile_to_cache(opts: &CompileOptions) -> Result<PathBuf, Failure> {
    let bundle = build(opts)?;
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or_else(|| other("neither `XDG_CACHE_HOME` nor `HOME` is set"))?
        .join("ov/bundles");
    std::fs::create_dir_all(&cache).map_err(other)?;
    let (archive, _) = bundle::write(&bundle, &cache.join(bundle.archive_name())).map_err(other)?;
    Ok(archive)
}

/// A bundle `ov inspect`, `ov verify` or `ov push` could not use, with the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} bundle `{}`", path.display())]
pub struct BundleFailure {
    /// `inspect`, `verify`, `push`.
    pub action: &'static str,
    /// The archive.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

fn bundle_failure(
    exit: Exit,
    action: &'static str,
    path: &Path,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Failure {
    Failure::new(
        exit,
        BundleFailure {
            action,
            path: path.to_path_buf(),
            source: source.into(),
        },
    )
}

/// Open a bundle archive for streaming (it is never read whole into memory).
fn open_archive(
    path: &Path,
    action: &'static str,
) -> Result<std::io::BufReader<std::fs::File>, Failure> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|e| bundle_failure(Exit::InvalidInput, action, path, e))
}

/// `ov inspect`: reads the manifest and, with `--script`, that one file (each within
/// `bundle_read::MAX_KEPT_BYTES`); refuses a bundle beyond the `bundle_read` limits (exit 3).
pub fn run_inspect(path: &Path, script: Option<&str>, json: bool) -> Result<Exit, Failure> {
    let archive = open_archive(path, "inspect")?;
    let inspection = ov_compiler::manifest::inspect(archive, script)
        .map_err(|e| bundle_failure(Exit::InvalidInput, "inspect", path, e))?;
    let text = match script {
        Some(p) => inspection.script(p).map(str::to_string).ok_or_else(|| {
            input(format!(
                "`{p}` is not a text file of this bundle; files: {}",
                inspection.paths().collect::<Vec<_>>().join(", ")
            ))
        })?,
        None if json => {
            let mut s = serde_json::to_string_pretty(&inspection.manifest).map_err(other)?;
            s.push('\n');
            s
        }
        // The listing is trimmed; a line printed to a terminal or a pipe ends in a newline.
        None => inspection.manifest.listing() + "\n",
    };
    emit(&text)?;
    Ok(Exit::Ok)
}

/// `ov verify`: exit 4 (integrity) on any mismatch, 3 when the files cannot be read or the
/// archive is beyond the `bundle_read` limits (a gzip bomb is refused before it is expanded).
pub fn run_verify(path: &Path) -> Result<Exit, Failure> {
    let archive = open_archive(path, "verify")?;
    let mut sum_path = path.as_os_str().to_owned();
    sum_path.push(".sha256");
    let sum_path = PathBuf::from(sum_path);
    let sum = std::fs::read_to_string(&sum_path).map_err(|e| {
        input(format!(
            "cannot read `{}` (the checksum file must sit beside the archive): {e}",
            sum_path.display()
        ))
    })?;
    let report = ov_compiler::manifest::verify_archive(archive, &sum).map_err(|e| {
        let exit = match &e {
            ov_compiler::manifest::VerifyError::Archive(a) if a.is_limit() => Exit::InvalidInput,
            _ => Exit::Integrity,
        };
        bundle_failure(exit, "verify", path, e)
    })?;
    println!(
        "ok: {} matches {}; {} files match SHA256SUMS",
        path.display(),
        sum_path.display(),
        report.files_checked
    );
    Ok(Exit::Ok)
}

/// What the runner needs to know about a deploy's target.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    /// Canonical deploy name (`vm:arch`, `host`).
    pub deploy: String,
    /// Ledger id.
    pub deploy_id: String,
    /// `host`: run locally.
    pub local: bool,
    /// VM entity name.
    pub vm: Option<String>,
    /// The VM spec's SSH user (or base user).
    pub ssh_user: Option<String>,
    /// The VM spec's SSH port.
    pub ssh_port: Option<u16>,
    /// The target account user-scope steps run as.
    pub user: Option<String>,
}

/// Look a deploy name up in the project.
pub fn target_of(project: Option<&Path>, name: &str) -> Result<TargetInfo, Failure> {
    let root = find_project(project)?;
    let project = Project::load(&root).map_err(input)?;
    let request = with_host_distro(&DeployRequest {
        name: name.to_string(),
        add_layers: Vec::new(),
        distro: None,
        gates: Default::default(),
        user: None,
    });
    let (deploy, _, _) = ov_compiler::deploy::resolve_deploy(&project, &request).map_err(input)?;
    Ok(info(
        Some(&project),
        &deploy.name,
        &deploy.id,
        &deploy.target,
        deploy.user.clone(),
    ))
}

fn info(
    project: Option<&Project>,
    name: &str,
    id: &str,
    target: &TargetKind,
    user: Option<String>,
) -> TargetInfo {
    match target {
        TargetKind::Host => TargetInfo {
            deploy: name.to_string(),
            deploy_id: id.to_string(),
            local: true,
            vm: None,
            ssh_user: None,
            ssh_port: None,
            user,
        },
        TargetKind::Vm { vm } => {
            let spec = project.and_then(|p| p.vms.get(vm));
            TargetInfo {
                deploy: name.to_string(),
                deploy_id: id.to_string(),
                local: false,
                vm: Some(vm.clone()),
                ssh_user: spec.and_then(|s| s.ssh_user.clone().or_else(|| s.base_user.clone())),
                ssh_port: spec.and_then(|s| s.ssh_port),
                user,
            }
        }
    }
}

/// The target of an existing bundle, from its manifest (and the project's VM spec when there is a
/// project).
pub fn target_of_bundle(project: Option<&Path>, path: &Path) -> Result<TargetInfo, Failure> {
    let archive = open_archive(path, "push")?;
    let manifest = ov_compiler::manifest::inspect(archive, None)
        .map_err(|e| bundle_failure(Exit::InvalidInput, "push", path, e))?
        .manifest;
    let d = &manifest.deploy;
    let target = match d.name.strip_prefix("vm:") {
        Some(vm) => TargetKind::Vm { vm: vm.to_string() },
        None => TargetKind::Host,
    };
    let loaded = find_project(project)
        .ok()
        .and_then(|root| Project::load(&root).ok());
    Ok(info(
        loaded.as_ref(),
        &d.name,
        &d.id,
        &target,
        d.user.clone(),
    ))
}

/// The readable form of a plan: a header, then per layer one line per step.
pub fn summary(plan: &InstallPlan) -> String {
    let d = &plan.deploy;
    let mut s = String::new();
    s.push_str(&format!("deploy  {} (id {})\n", d.name, d.id));
    s.push_str(&format!(
        "distro  {} (formats: {})\n",
        d.distro.tags.join(", "),
        d.distro.formats.join(", ")
    ));
    s.push_str(&format!(
        "user    {}\n",
        d.user
            .as_deref()
            .unwrap_or("(the user who runs the bundle)")
    ));
    let gates: Vec<&str> = [
        Gate::AllowRepoChanges,
        Gate::AllowRootTasks,
        Gate::WithServices,
    ]
    .into_iter()
    .filter(|g| plan.gates.allows(*g))
    .map(|g| g.as_str())
    .collect();
    s.push_str(&format!(
        "gates   {}\n",
        if gates.is_empty() {
            "none".to_string()
        } else {
            gates.join(", ")
        }
    ));
    let names: Vec<&str> = plan.layers.iter().map(|l| l.name.as_str()).collect();
    s.push_str(&format!("layers  {}: {}\n", names.len(), names.join(", ")));
    for (i, layer) in plan.layers.iter().enumerate() {
        s.push_str(&format!("\n{:>2}. {}\n", i + 1, layer.name));
        if layer.steps.is_empty() {
            s.push_str("    (no steps for this target)\n");
        }
        for step in &layer.steps {
            s.push_str(&step_line(step));
        }
        for c in &layer.checks {
            s.push_str(&format!(
                "    {:<15} {:<12} {} ({})",
                "check",
                c.scope.as_str(),
                c.id,
                c.probe.kind()
            ));
            if let Some(why) = &c.skip {
                s.push_str(&format!("  [skip: {why}]"));
            }
            s.push('\n');
        }
    }
    s
}

fn step_line(step: &Step) -> String {
    let mut line = format!(
        "    {:<15} {:<12} {:<17} {:<8} {}",
        step.kind(),
        step.scope.as_str(),
        step.venue.as_str(),
        step.phase.as_str(),
        step.action.summary()
    );
    if let Some(skip) = &step.skip {
        line.push_str(&format!("  [skipped: {}]", skip.reason));
    } else if let Some(gate) = step.gate {
        line.push_str(&format!("  [gate: {} open]", gate.as_str()));
    }
    line.push('\n');
    line
}
