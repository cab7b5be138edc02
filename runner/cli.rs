//! Stage `cli`: the command line (clap types stay in this file) converted into plain option
//! structs; the only place that prints compile-side errors and picks the process exit status.

use std::error::Error as StdError;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::commands::{self, Common, DelCommand, Destination, PushCommand, StatusCommand};
use crate::compile_cmd::{self, CompileOptions, Output};
use crate::exit::Exit;
use crate::push::{RunMode, TestFilter};
use crate::target::ConnectOptions;
use crate::wait::CloudInitOptions;

/// Compile overthink layers into a standalone, checksummed shell bundle and push it over SSH.
#[derive(Debug, Parser)]
#[command(
    name = "ov",
    version,
    about,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The project directory (holding `overthink.yml`); default: `$OV_PROJECT`, else the first
    /// parent of the working directory that has an `overthink.yml`.
    #[arg(short = 'C', long = "project", global = true, value_name = "DIR")]
    pub project: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the InstallPlan of a deploy: layers in order; per layer each step with kind, scope,
    /// venue, phase, gate and skip reason.
    Plan(PlanArgs),
    /// Compile a deploy into `<name>.tar.gz` and `<name>.tar.gz.sha256` (or an unpacked directory).
    Compile(CompileArgs),
    /// Show what a bundle holds: layers, scripts, skipped steps and why, gates, digests.
    Inspect(InspectArgs),
    /// Check a bundle: the archive against its `.sha256`, then every file against `SHA256SUMS`.
    Verify(VerifyArgs),
    /// Compile (unless given a bundle) and apply it to the target over SSH (or locally for `host`).
    Push(PushArgs),
    /// Run the layers' own checks (`tests:`) on the target over SSH (or locally for `host`):
    /// compile (unless given a bundle), upload, verify, `run.sh --test`; changes nothing.
    Test(TestArgs),
    /// Add or remove a deploy on its target.
    #[command(subcommand)]
    Deploy(DeployCommand),
    /// Show the layers recorded on the target and whether they match what would compile now.
    Status(StatusArgs),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `ov deploy …`.
#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Compile and push: `ov deploy add vm:arch ripgrep` = `ov push vm:arch --add-layer ripgrep`.
    Add(PushArgs),
    /// Tear the deploy down on its target, from the target's own ledger.
    Del(DelArgs),
}

/// What selects a deploy and its layers (shared by plan, compile, push, deploy add).
#[derive(Debug, Args, Clone)]
pub struct DeployArgs {
    /// `vm:<vm>`, a deploy node such as `arch-vm`, or `host`.
    pub deploy: String,
    /// Extra layers to deploy.
    #[arg(value_name = "LAYER")]
    pub layers: Vec<String>,
    /// Extra layer to deploy (repeatable).
    #[arg(long = "add-layer", value_name = "LAYER")]
    pub add_layer: Vec<String>,
    /// Distro tag of the target, e.g. `debian:12`, `archlinux`, `fedora:43`, `ubuntu:24.04`.
    #[arg(long, value_name = "TAG")]
    pub distro: Option<String>,
    #[command(flatten)]
    pub gates: GateArgs,
}

/// Opt-ins (the deploy node's `install_opts` pre-set them; the command line can only add).
#[derive(Debug, Args, Clone, Copy)]
pub struct GateArgs {
    /// Allow adding repositories, keys, coprs and modules.
    #[arg(long)]
    pub allow_repo_changes: bool,
    /// Allow raw `cmd:` tasks to run as root.
    #[arg(long)]
    pub allow_root_tasks: bool,
    /// Install and enable services.
    #[arg(long)]
    pub with_services: bool,
}

/// `ov plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub deploy: DeployArgs,
    /// Print the complete plan as JSON (every step tagged with its `kind`).
    #[arg(long)]
    pub json: bool,
}

/// How a bundle is compiled (shared by compile, push and deploy add).
#[derive(Debug, Args, Clone)]
pub struct BuildArgs {
    /// Replace built-in templates by files of the same name under DIR.
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// Timestamp for archive entries (default: `$SOURCE_DATE_EPOCH`, else a constant).
    #[arg(long, value_name = "SECS", env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<u64>,
}

/// `ov compile`.
#[derive(Debug, Args)]
pub struct CompileArgs {
    #[command(flatten)]
    pub deploy: DeployArgs,
    #[command(flatten)]
    pub build: BuildArgs,
    /// Write the archive here (default: `./<name>.tar.gz`).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        conflicts_with = "out_dir"
    )]
    pub output: Option<PathBuf>,
    /// Write the bundle unpacked into DIR/<name>/ instead of an archive.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// `ov inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle archive.
    pub bundle: PathBuf,
    /// Print one file of the bundle, e.g. `layers/01-ripgrep/01-system.sh`.
    #[arg(long, value_name = "PATH")]
    pub script: Option<String>,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `ov verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle archive (its `.sha256` must be beside it).
    pub bundle: PathBuf,
}

/// How to reach the target (shared by push, deploy add/del, status).
#[derive(Debug, Args, Clone)]
pub struct ConnectArgs {
    /// Target host (default for VMs: 127.0.0.1, where user-mode networking forwards the port).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// SSH port (default: the VM's `ssh.port`, else 2222).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Login user (default: saved state, else the VM's `ssh.user` or base user).
    #[arg(long = "ssh-user", value_name = "USER")]
    pub ssh_user: Option<String>,
    /// Private key (default: saved state, else `~/.local/share/ov/vm/ov-<vm>/id_ed25519`).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Use this OpenSSH client config (host alias, user, port, key come from it).
    #[arg(long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// known_hosts file (default: `~/.local/share/ov/vm/ov-<vm>/known_hosts`).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// How long to wait for SSH to come up, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub wait_ssh: u64,
    /// One JSON object per line on stdout instead of the progress display.
    #[arg(long)]
    pub json: bool,
}

/// `ov push` and `ov deploy add`.
#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub deploy: DeployArgs,
    #[command(flatten)]
    pub build: BuildArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Do not wait for cloud-init to finish.
    #[arg(long)]
    pub no_wait_cloud_init: bool,
    /// Go on even when cloud-init reports errors.
    #[arg(long)]
    pub ignore_cloud_init_errors: bool,
    /// How long to wait for cloud-init, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub wait_cloud_init: u64,
    /// Keep the uploaded bundle under /var/lib/overthink/work/ on the target.
    #[arg(long)]
    pub keep: bool,
    /// Print what would be sent and run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Fail at once (exit 8) when another run holds the target's lock.
    #[arg(long)]
    pub no_wait: bool,
    /// Re-run layers even when the target records them as applied.
    #[arg(long)]
    pub force: bool,
    /// The account user-scope steps run as (default: the deploy's user).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// After a successful apply, run the layers' own checks on the same connection (exit 9 if
    /// one fails).
    #[arg(long)]
    pub verify: bool,
}

/// `ov test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub deploy: DeployArgs,
    #[command(flatten)]
    pub build: BuildArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Only the checks of LAYER (repeatable; default: every layer of the bundle).
    #[arg(long = "layer", value_name = "LAYER")]
    pub only: Vec<String>,
    /// Only the checks of this scope (default: both).
    #[arg(long, value_parser = ["build", "deploy"])]
    pub scope: Option<String>,
    /// The account the checks run as (default: the deploy's user).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Do not wait for cloud-init to finish.
    #[arg(long)]
    pub no_wait_cloud_init: bool,
}

/// `ov deploy del`.
#[derive(Debug, Args)]
pub struct DelArgs {
    /// `vm:<vm>`, a deploy node, or `host`.
    pub deploy: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Also forget the VM's saved state in `~/.config/ov/deploy.yml`.
    #[arg(long)]
    pub purge: bool,
    /// Print what would be torn down; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Fail at once when another run holds the target's lock.
    #[arg(long)]
    pub no_wait: bool,
    /// Owner of the ledger on the target (default: the deploy's user).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

/// `ov status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub deploy: DeployArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Owner of the ledger on the target (default: the deploy's user).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

/// Parse the process arguments, run, and turn the outcome into an exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return ExitCode::from(code.code());
        }
    };
    match run(cli) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(failure) => {
            print_error(failure.error.as_ref());
            ExitCode::from(failure.exit.code())
        }
    }
}

/// An error on its way out, with the exit status it maps to.
#[derive(Debug)]
pub struct Failure {
    /// The error chain to print.
    pub error: Box<dyn StdError + Send + Sync>,
    /// The process exit status.
    pub exit: Exit,
}

impl Failure {
    /// Wrap `error` with `exit`.
    pub fn new(exit: Exit, error: impl Into<Box<dyn StdError + Send + Sync>>) -> Failure {
        Failure {
            error: error.into(),
            exit,
        }
    }
}

fn run(cli: Cli) -> Result<Exit, Failure> {
    let project = cli.project;
    match cli.command {
        Command::Plan(args) => {
            compile_cmd::run_plan(project.as_deref(), &deploy_request(&args.deploy), args.json)
        }
        Command::Compile(args) => {
            let output = match (args.out_dir, args.output) {
                (Some(dir), _) => Output::Unpacked(dir),
                (None, Some(file)) => Output::Archive(file),
                (None, None) => Output::Default,
            };
            compile_cmd::run_compile(&CompileOptions {
                project,
                request: deploy_request(&args.deploy),
                templates: args.build.templates,
                source_date_epoch: args.build.source_date_epoch,
                output,
            })
        }
        Command::Inspect(args) => {
            compile_cmd::run_inspect(&args.bundle, args.script.as_deref(), args.json)
        }
        Command::Verify(args) => compile_cmd::run_verify(&args.bundle),
        Command::Push(args) | Command::Deploy(DeployCommand::Add(args)) => push(project, args),
        Command::Test(args) => test(project, args),
        Command::Deploy(DeployCommand::Del(args)) => {
            let target = compile_cmd::target_of(project.as_deref(), &args.deploy)?;
            Ok(commands::run_del(&DelCommand {
                common: common(&target, &args.connect),
                deploy_id: Some(target.deploy_id.clone()),
                user: args.user.or(target.user.clone()),
                dry_run: args.dry_run,
                no_wait_lock: args.no_wait,
                purge: args.purge,
            }))
        }
        Command::Status(args) => {
            let target = compile_cmd::target_of(project.as_deref(), &args.deploy.deploy)?;
            // Compare with what the project would compile now, when it compiles.
            let bundle = compile_cmd::compile_to_cache(&CompileOptions {
                project,
                request: deploy_request(&args.deploy),
                templates: None,
                source_date_epoch: None,
                output: Output::Default,
            })
            .ok();
            Ok(commands::run_status(&StatusCommand {
                common: common(&target, &args.connect),
                bundle,
                user: args.user.or(target.user.clone()),
            }))
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ov", &mut std::io::stdout());
            Ok(Exit::Ok)
        }
    }
}

/// The bundle a push or test sends and its target: `path/to/x.tar.gz` is an existing bundle;
/// anything else names a deploy, compiled into the cache.
fn bundle_and_target(
    project: Option<PathBuf>,
    deploy: &DeployArgs,
    build: &BuildArgs,
) -> Result<(PathBuf, compile_cmd::TargetInfo), Failure> {
    if deploy.deploy.ends_with(".tar.gz") {
        let bundle = PathBuf::from(&deploy.deploy);
        let target = compile_cmd::target_of_bundle(project.as_deref(), &bundle)?;
        Ok((bundle, target))
    } else {
        let target = compile_cmd::target_of(project.as_deref(), &deploy.deploy)?;
        let bundle = compile_cmd::compile_to_cache(&CompileOptions {
            project,
            request: deploy_request(deploy),
            templates: build.templates.clone(),
            source_date_epoch: build.source_date_epoch,
            output: Output::Default,
        })?;
        Ok((bundle, target))
    }
}

fn test(project: Option<PathBuf>, args: TestArgs) -> Result<Exit, Failure> {
    let (bundle, target) = bundle_and_target(project, &args.deploy, &args.build)?;
    Ok(commands::run_push(&PushCommand {
        common: common(&target, &args.connect),
        bundle,
        cloud_init: CloudInitOptions {
            wait: !args.no_wait_cloud_init,
            ..CloudInitOptions::default()
        },
        keep: false,
        dry_run: false,
        no_wait_lock: false,
        force: false,
        user: args.user.or(target.user),
        mode: RunMode::Test,
        test: TestFilter {
            layers: args.only,
            scope: args.scope,
        },
        templates: args.build.templates,
    }))
}

fn push(project: Option<PathBuf>, args: PushArgs) -> Result<Exit, Failure> {
    let (bundle, target) = bundle_and_target(project, &args.deploy, &args.build)?;
    Ok(commands::run_push(&PushCommand {
        common: common(&target, &args.connect),
        bundle,
        cloud_init: CloudInitOptions {
            wait: !args.no_wait_cloud_init,
            deadline: Duration::from_secs(args.wait_cloud_init),
            ignore_errors: args.ignore_cloud_init_errors,
            ..CloudInitOptions::default()
        },
        keep: args.keep,
        dry_run: args.dry_run,
        no_wait_lock: args.no_wait,
        force: args.force,
        user: args.user.or(target.user),
        mode: if args.verify {
            RunMode::ApplyThenTest
        } else {
            RunMode::Apply
        },
        test: TestFilter::default(),
        templates: args.build.templates,
    }))
}

fn common(target: &compile_cmd::TargetInfo, c: &ConnectArgs) -> Common {
    let destination = if target.local {
        Destination::Local
    } else {
        Destination::Remote(ConnectOptions {
            vm: target.vm.clone(),
            host: c.host.clone(),
            port: c.port,
            user: c.ssh_user.clone(),
            identity: c.identity.clone(),
            ssh_config: c.ssh_config.clone(),
            known_hosts: c.known_hosts.clone(),
            spec_user: target.ssh_user.clone(),
            spec_port: target.ssh_port,
        })
    };
    Common {
        deploy: target.deploy.clone(),
        destination,
        wait_ssh: Duration::from_secs(c.wait_ssh),
        json: c.json,
        paths: None,
    }
}

/// Convert the shared deploy arguments into the compiler's plain request.
pub fn deploy_request(args: &DeployArgs) -> ov_compiler::deploy::DeployRequest {
    let mut add_layers = args.layers.clone();
    add_layers.extend(args.add_layer.iter().cloned());
    ov_compiler::deploy::DeployRequest {
        name: args.deploy.clone(),
        add_layers,
        distro: args.distro.clone(),
        gates: ov_compiler::plan::Gates {
            allow_repo_changes: args.gates.allow_repo_changes,
            allow_root_tasks: args.gates.allow_root_tasks,
            with_services: args.gates.with_services,
        },
        user: None,
    }
}

/// Print `error: …` and one `caused by: …` per source, as cargo and uv do. Multi-line messages
/// (located YAML errors with their source line) are printed as they are.
pub fn print_error(error: &(dyn StdError + 'static)) {
    eprintln!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
}
