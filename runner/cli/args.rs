//! Stage `cli`, the command line as clap types: every subcommand, flag and help text of `ov`.
//! Invariant: nothing but clap derives here; [`super`] converts these into the commands' plain
//! option structs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::engine::ArgValueCompleter;

use super::complete;

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

    /// Print only the result and errors (no progress lines).
    #[arg(short = 'q', long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Print every line the steps print on the target (default: a line per layer and per step;
    /// the steps' whole output is kept in a log on the target, shown in part when a step fails).
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,

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
    /// Fetch remote layers into the repo cache and pin each ref's commit in `ov.lock`.
    #[command(long_about = FETCH_ABOUT)]
    Fetch(FetchArgs),
    /// Print the shell's completion hook (`source <(ov completions bash)`); it completes deploy
    /// and layer names of the project the shell is in.
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
    #[arg(add = ArgValueCompleter::new(complete::deploys))]
    pub deploy: String,
    /// Extra layers to deploy.
    #[arg(value_name = "LAYER", add = ArgValueCompleter::new(complete::layers))]
    pub layers: Vec<String>,
    /// Extra layer to deploy (repeatable).
    #[arg(long = "add-layer", value_name = "LAYER", add = ArgValueCompleter::new(complete::layers))]
    pub add_layer: Vec<String>,
    /// Distro tag of the target, e.g. `debian:12`, `archlinux`, `fedora:43`, `ubuntu:24.04`.
    #[arg(long, value_name = "TAG")]
    pub distro: Option<String>,
    #[command(flatten)]
    pub gates: GateArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// How remote layers (`github.com/<org>/<repo>/<path>[@<ref>]`) are fetched (shared by the
/// commands that compile).
#[derive(Debug, Args, Clone, Copy)]
pub struct RemoteArgs {
    /// Use only `ov.lock` and the repo cache; never run git (a missing repository is an error
    /// that says which `ov fetch` fills it).
    #[arg(long, conflicts_with = "update")]
    pub offline: bool,
    /// Fetch remote layer refs again and move `ov.lock` to where they point now.
    #[arg(long)]
    pub update: bool,
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
    /// Sign the bundle's SHA256SUMS (SHA256SUMS.sig, OpenSSH SSHSIG, namespace `ov-bundle`) with
    /// KEY: an unencrypted OpenSSH private key file, or a public key (.pub) whose private half
    /// is in ssh-agent (`SSH_AUTH_SOCK`).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
}

/// `ov compile`.
#[derive(Debug, Args)]
pub struct CompileArgs {
    #[command(flatten)]
    pub deploy: DeployArgs,
    #[command(flatten)]
    pub build: BuildArgs,
    /// Write the archive here (default: `./<name>.tar.gz`); a directory gets `<name>.tar.gz`.
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
    /// Hand the bundle over to another engine instead: `ansible DIR` (a playbook and a role
    /// that apply it to an inventory's hosts) or `cloud-init FILE` (`#cloud-config` user-data
    /// that applies it at first boot).
    #[arg(
        long,
        num_args = 2,
        value_names = ["ENGINE", "PATH"],
        conflicts_with_all = ["output", "out_dir"]
    )]
    pub emit: Option<Vec<String>>,
    /// With `--emit cloud-init`: the most bytes of user-data the cloud takes (default 16384,
    /// AWS EC2's limit; a `K` or `KiB` suffix multiplies by 1024). Plain user-data when it fits,
    /// else gzip-compressed when that fits, else an error.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "emit")]
    pub max_user_data: Option<u64>,
    /// With `--emit cloud-init`: the user-data carries no archive, only the first-boot script,
    /// which downloads it from URL (http or https) and applies it only if it matches the digest
    /// compiled in. The archive and its `.sha256` are written beside FILE, to be served there.
    /// A few KiB of user-data whatever the bundle's size: fits AWS EC2's 16 KiB.
    #[arg(long, value_name = "URL", requires = "emit")]
    pub bundle_url: Option<String>,
}

/// A size in bytes: digits, optionally followed by `K`/`KiB` (×1024) or `M`/`MiB` (×1048576).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let factor = match &t[digits.len()..] {
        "" => 1,
        "K" | "k" | "KiB" => 1024,
        "M" | "MiB" => 1024 * 1024,
        other => return Err(format!("unknown unit `{other}` (use bytes, K or M)")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("`{s}` is not a size (bytes, or a number with K or M)"))
}

/// `ov inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle archive, or an unpacked bundle (`compile --out-dir`, or extracted by hand).
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
    /// The bundle archive (its `.sha256` must be beside it), or an unpacked bundle: then every
    /// file is checked against SHA256SUMS (there is no archive digest).
    pub bundle: PathBuf,
    /// Also check SHA256SUMS.sig against this OpenSSH allowed_signers file (with the system
    /// `ssh-keygen -Y verify`, as run.sh does on the target): an unsigned bundle, or one signed
    /// by a key the file does not list for namespace `ov-bundle`, fails (exit 4).
    #[arg(long, value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,
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
    /// How long to wait for SSH to come up, in seconds [default: 120; 10 with `--inventory`].
    #[arg(long, value_name = "SECS")]
    pub wait_ssh: Option<u64>,
    /// One JSON object per line on stdout instead of the progress display.
    #[arg(long)]
    pub json: bool,
}

/// Many targets at once: the hosts of an Ansible inventory (push, status, deploy del).
#[derive(Debug, Args, Clone)]
pub struct FleetArgs {
    /// Every host of this Ansible inventory (a static INI or YAML file; with `ansible-inventory`
    /// installed, anything Ansible reads): hosts, ports, login users and keys come from its
    /// `ansible_*` variables, the account from `ov_user`, the distro from `ov_distro`.
    #[arg(long, value_name = "FILE", conflicts_with = "host")]
    pub inventory: Option<PathBuf>,
    /// Only the hosts this Ansible host pattern selects (`web*`, `a:b`, `a:&b`, `a:!b`, `~regex`).
    #[arg(
        short = 'l',
        long = "limit",
        value_name = "PATTERN",
        requires = "inventory"
    )]
    pub limit: Option<String>,
    /// Work on at most N hosts at once.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    pub forks: u16,
    /// Start no more hosts once N have failed (default: go on with every host).
    #[arg(long, value_name = "N", requires = "inventory", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_fail: Option<u16>,
}

/// What push and test send, and where (shared by push, deploy add, test).
#[derive(Debug, Args)]
pub struct DeliveryArgs {
    #[command(flatten)]
    pub deploy: DeployArgs,
    #[command(flatten)]
    pub build: BuildArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `ov push` and `ov deploy add`.
#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
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
    /// Run on a distro the bundle was not compiled for (the target's preflight refuses
    /// otherwise: its package names and package manager may not fit).
    #[arg(long)]
    pub force_distro: bool,
    /// The account user-scope steps run as (default: the deploy's user).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// After a successful apply, run the layers' own checks on the same connection (exit 9 if
    /// one fails).
    #[arg(long, conflicts_with_all = ["check", "diff"])]
    pub verify: bool,
    /// Apply nothing: say per layer and step what a run would change on the target
    /// (`run.sh --check`); exit 10 if anything would.
    #[arg(long)]
    pub check: bool,
    /// With `--check`: show how each file on the target differs from the bundle's.
    #[arg(long)]
    pub diff: bool,
    /// Refuse, before connecting, a bundle that is not signed (no `--sign KEY` for the compile,
    /// or a given bundle without SHA256SUMS.sig).
    #[arg(long)]
    pub require_signature: bool,
}

/// `ov test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub delivery: DeliveryArgs,
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

/// The long help of `ov fetch`.
const FETCH_ABOUT: &str = "\
Fetch remote layers into the repo cache and pin each ref's commit in `ov.lock`.

A remote layer is named `<host>/<org>/<repo>/<path to layer>[@<ref>]` on the command line and
`@<host>/<org>/<repo>/<path to layer>[:<ref>]` in `depends:`/`layers:`/`add_layers:`; no ref
means the default branch. ov runs the system `git` to fetch `https://<host>/<org>/<repo>.git`
shallowly into the repo cache ($OV_REPO_CACHE, default ~/.cache/ov/repos), resolves each ref to
a commit and records it in `ov.lock` in the project (commit that file). Later compiles use the
locked commit, even when the tag moves upstream, until `--update`. `ov compile`, `plan` and
`push` fetch what is missing themselves unless `--offline`.

Without a deploy, every remote layer the project's layers and deploy nodes name is fetched.

Mirrors, private hosts and tests redirect the URL with git's own rewriting, e.g.
  git config --global url.\"file:///srv/mirror/\".insteadOf https://github.com/
git runs with a clean environment except HOME, GIT_CONFIG_GLOBAL, XDG_CONFIG_HOME, the ssh
agent and proxy settings, so such settings in the user's git config apply.";

/// `ov fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Only what this deploy needs (`vm:<vm>`, a deploy node, or `host`); default: every remote
    /// layer the project names.
    #[arg(add = ArgValueCompleter::new(complete::deploys))]
    pub deploy: Option<String>,
    /// Extra layers, as for `ov push` (after the deploy).
    #[arg(value_name = "LAYER", requires = "deploy")]
    pub layers: Vec<String>,
    /// Extra layer (repeatable), e.g. `github.com/team/configs/layers/sshkeys@v1`.
    #[arg(long = "add-layer", value_name = "LAYER")]
    pub add_layer: Vec<String>,
    /// Distro tag of the target, when the deploy does not say.
    #[arg(long, value_name = "TAG")]
    pub distro: Option<String>,
    /// Fetch every ref again and move `ov.lock` to where it points now.
    #[arg(long)]
    pub update: bool,
}

/// `ov deploy del`.
#[derive(Debug, Args)]
pub struct DelArgs {
    /// `vm:<vm>`, a deploy node, or `host`.
    #[arg(add = ArgValueCompleter::new(complete::deploys))]
    pub deploy: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
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
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Owner of the ledger on the target (default: the deploy's user).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Exit 10 when the target differs from what the project compiles now.
    #[arg(long)]
    pub exit_code: bool,
}
