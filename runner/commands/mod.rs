//! Stage `runner`, the commands room: one file per subcommand, each a thin function of a plain
//! option struct (the cli room fills them; nothing here knows clap). A command resolves its
//! deploy once ([`project`]), reaches the target through the target and ssh rooms, shows
//! progress through the ui room and ends in `Ok` or one [`CommandError`] that carries its exit
//! status.
//! Invariant: the progress display is closed before a command returns, so the caller prints
//! the error (if any) after it, once.

pub mod compile;
pub mod deploy_del;
pub mod error;
pub mod fetch;
pub mod fleet;
pub mod inspect;
pub mod plan;
pub mod project;
pub mod push;
pub mod status;
pub mod test;
pub mod verify;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub use error::CommandError;

use crate::apply::push::StateTarget;
use crate::commands::project::{
    bundle_and_target, pending_bundle_and_target, BuildOptions, PendingBundle, Selection,
};
use crate::ssh::connect::WaitOptions;
use crate::ssh::endpoint::Target;
use crate::ssh::exec::LocalExecutor;
use crate::target::deploy::{state_key, DeployTarget, Machine};
use crate::target::resolve::{resolve, ConnectOptions, Paths};
use crate::target::state::load_vm_state;
use crate::ui::progress::{Display, DisplayMode, Verbosity};

/// Where a command goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// This machine (`host`): local executor, no SSH.
    Local,
    /// A VM or SSH host.
    Remote(Box<ConnectOptions>),
}

/// Options shared by the remote commands.
#[derive(Debug, Clone)]
pub struct Common {
    /// Where.
    pub destination: Destination,
    /// `--wait-ssh SECS`.
    pub wait_ssh: Duration,
    /// `--json`.
    pub json: bool,
    /// `-q` / `-v`.
    pub verbosity: Verbosity,
    /// Override of `~/.config/ov` / `~/.local/share/ov` (tests); `None`: from the environment.
    pub paths: Option<Paths>,
}

/// A command on a resolved target: the shared options and the command's own.
#[derive(Debug, Clone)]
pub struct OnTarget<O> {
    /// Where, and how to report.
    pub common: Common,
    /// What to do there.
    pub options: O,
}

/// How to reach the target, as the user gave it (the plain form of the connection arguments).
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// The SSH settings of the command line (the VM and its spec are filled in per target).
    pub ssh: ConnectOptions,
    /// `--wait-ssh SECS`.
    pub wait_ssh: Duration,
    /// `--json`: JSON lines on stdout instead of the progress display.
    pub json: bool,
    /// `-q` / `-v`: how much the progress display says.
    pub verbosity: Verbosity,
}

impl Connection {
    /// The shared options of a command on `target`: the local machine for `host`, else SSH
    /// with the VM spec's settings under the command line's.
    pub fn common(&self, target: &DeployTarget) -> Common {
        let destination = match &target.machine {
            Machine::Host => Destination::Local,
            Machine::Vm {
                vm,
                ssh_host,
                ssh_user,
                ssh_port,
            } => Destination::Remote(Box::new(ConnectOptions {
                vm: Some(vm.clone()),
                spec_host: ssh_host.clone(),
                spec_user: ssh_user.clone(),
                spec_port: *ssh_port,
                ..self.ssh.clone()
            })),
        };
        Common {
            destination,
            wait_ssh: self.wait_ssh,
            json: self.json,
            verbosity: self.verbosity,
            paths: None,
        }
    }
}

/// What `ov push` and `ov test` send, and where: the deploy (compiled now) or a bundle, and how to
/// reach its target.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The project, the deploy (or bundle) and its layers.
    pub selection: Selection,
    /// How the bundle is compiled.
    pub build: BuildOptions,
    /// How to reach the target.
    pub connection: Connection,
}

impl Delivery {
    /// The bundle to send, its target and the command's shared options for it.
    fn prepare(&self) -> Result<(PathBuf, DeployTarget, Common), CommandError> {
        let (bundle, target) = bundle_and_target(&self.selection, &self.build)?;
        let common = self.connection.common(&target);
        Ok((bundle, target, common))
    }

    /// [`Delivery::prepare`] with the compile left to do (see [`PendingBundle`]).
    fn prepare_pending(&self) -> Result<(PendingBundle, DeployTarget, Common), CommandError> {
        let (bundle, target) = pending_bundle_and_target(&self.selection, &self.build)?;
        let common = self.connection.common(&target);
        Ok((bundle, target, common))
    }
}

impl Common {
    /// The VM's saved state (`None`: not a VM, or never pushed).
    fn saved(&self) -> Result<Option<crate::target::state::VmState>, CommandError> {
        let Destination::Remote(c) = &self.destination else {
            return Ok(None);
        };
        let Some(vm) = &c.vm else {
            return Ok(None);
        };
        let paths = match &self.paths {
            Some(p) => p.clone(),
            None => Paths::from_env()?,
        };
        Ok(load_vm_state(&paths.deploy_state_file(), &state_key(vm))?)
    }

    /// Act where the last successful push went, for the account it ran for (`ov status`,
    /// `ov deploy del`): the connection follows the saved host, and the account is `given`, else
    /// the saved one, else `default` (the deploy's).
    fn follow_saved(
        &mut self,
        given: Option<String>,
        default: Option<String>,
    ) -> Result<Option<String>, CommandError> {
        if let Destination::Remote(c) = &mut self.destination {
            c.follow_saved = true;
        }
        let saved = self.saved()?.and_then(|s| s.user);
        Ok(given.or(saved).or(default))
    }
}

/// Target, state entry and wait options for a remote command.
fn connect_parts(
    common: &Common,
    opts: &ConnectOptions,
) -> Result<(Target, Option<StateTarget>, WaitOptions), CommandError> {
    let paths = match &common.paths {
        Some(p) => p.clone(),
        None => Paths::from_env()?,
    };
    let state_file = paths.deploy_state_file();
    let (saved, state) = match &opts.vm {
        Some(vm) => {
            let key = state_key(vm);
            let saved = load_vm_state(&state_file, &key)?;
            (
                saved,
                Some(StateTarget {
                    file: state_file,
                    key,
                    vm: vm.clone(),
                }),
            )
        }
        None => (None, None),
    };
    let target = resolve(opts, saved.as_ref(), &paths)?;
    let wait = WaitOptions {
        deadline: common.wait_ssh,
        ..WaitOptions::default()
    };
    Ok((target, state, wait))
}

fn local() -> Result<LocalExecutor, CommandError> {
    Ok(LocalExecutor::new()?)
}

/// Run `body` with the progress display of `common` (`--json`, `-q`/`-v`) and close the display
/// before returning.
fn with_display<T>(
    common: &Common,
    body: impl FnOnce(&mut Display) -> Result<T, CommandError>,
) -> Result<T, CommandError> {
    let mut display = Display::with_verbosity(DisplayMode::detect(common.json), common.verbosity);
    let result = body(&mut display);
    display.finish();
    result
}

/// Write a command's output to stdout. A reader that went away (`ov plan … | head`) is not an
/// error of ours: like other Unix tools we stop quietly instead of printing `Broken pipe`.
fn emit(text: &str) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    let text = crate::ui::term::safe(text);
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Pretty JSON with a final newline.
fn json_text(value: &impl serde::Serialize) -> Result<String, CommandError> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    Ok(s)
}
