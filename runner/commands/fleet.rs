//! Stage `runner`, commands on an inventory (`ov push|status|deploy del … --inventory FILE`):
//! select the hosts (`-l`), compile once per distinct distro, then run the single-host operation
//! on every selected host through the fleet pool, and end with the recap.
//! Invariants: the project is loaded once and each distinct bundle compiled once, before any
//! host is contacted; nothing read from the inventory reaches a shell (SSH options go into an
//! OpenSSH client config of the run's own, checked value by value); deploy.yml is not written
//! (the inventory is the record of where a fleet is).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::apply::push::{push_connected, PushError, PushOptions, PushOutcome, RunMode};
use crate::apply::teardown::{teardown, LayerAction, TeardownOptions};
use crate::bundle::{open_bundle, BundleInfo};
use crate::commands::project::{resolve, write_to_cache_in, BuildOptions, Selection};
use crate::commands::status::{differs, read_with};
use crate::commands::CommandError;
use crate::exit::Exit;
use crate::fleet::display::FleetDisplay;
use crate::fleet::{self, HostDone, HostResult, Limits};
use crate::inventory::{Inventory, SshTarget};
use crate::ssh::connect::WaitOptions;
use crate::ssh::endpoint::Target;
use crate::ssh::master::SshExecutor;
use crate::target::resolve::ConnectOptions;
use crate::ui::progress::{DisplayMode, Progress, Verbosity};

/// How long to wait for a fleet host's SSH by default: the machines of an inventory are up, so
/// a host that does not answer soon is down, and must not hold the recap up.
pub const FLEET_WAIT_SSH: Duration = Duration::from_secs(10);

/// The inventory side of a command (the plain form of `--inventory`, `-l`, `--forks`,
/// `--max-fail`).
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The inventory (a static INI/YAML file, or anything `ansible-inventory` reads).
    pub inventory: PathBuf,
    /// `-l PATTERN`, Ansible's host pattern; `None`: every host.
    pub limit: Option<String>,
    /// How many at once and when to stop.
    pub limits: Limits,
    /// The connection flags of the command line: defaults under each host's own variables.
    pub ssh: ConnectOptions,
    /// `--wait-ssh`.
    pub wait_ssh: Duration,
    /// `--json`.
    pub json: bool,
    /// `-q` / `-v`.
    pub verbosity: Verbosity,
}

/// The selected hosts, each resolved to where ov connects.
struct Hosts {
    names: Vec<String>,
    targets: Vec<(SshTarget, Target)>,
    /// Holds the OpenSSH client configs of hosts with SSH options, for the run's length.
    _configs: Option<tempfile::TempDir>,
}

impl Fleet {
    fn hosts(&self) -> Result<Hosts, CommandError> {
        let inventory = Inventory::load(&self.inventory)?;
        let selected = inventory.select(self.limit.as_deref())?;
        let mut configs: Option<tempfile::TempDir> = None;
        let mut names = Vec::new();
        let mut targets = Vec::new();
        for host in selected {
            let t = host.ssh_target()?;
            let ssh_config = if t.ssh_options.is_empty() {
                self.ssh.ssh_config.clone()
            } else {
                let dir = match &mut configs {
                    Some(d) => d,
                    None => {
                        configs.insert(tempfile::Builder::new().prefix("ov-fleet-ssh.").tempdir()?)
                    }
                };
                Some(write_ssh_config(
                    dir.path(),
                    targets.len(),
                    &t,
                    self.ssh.ssh_config.as_deref(),
                )?)
            };
            let target = Target {
                host: t.host.clone(),
                port: t.port.or(self.ssh.port),
                user: t.user.clone().or(self.ssh.user.clone()),
                identity: t.identity.clone().or(self.ssh.identity.clone()),
                known_hosts: self.ssh.known_hosts.clone(),
                ssh_config,
                vm: None,
            };
            names.push(t.name.clone());
            targets.push((t, target));
        }
        Ok(Hosts {
            names,
            targets,
            _configs: configs,
        })
    }

    /// Run `job(i, host, target, progress)` on every host, at most `forks` at once, and end with
    /// the recap of `what`.
    fn each<F>(&self, what: &str, hosts: &Hosts, job: F) -> Result<(), CommandError>
    where
        F: Fn(usize, &SshTarget, &Target, &mut dyn Progress) -> Result<HostDone, CommandError>
            + Sync,
    {
        let mut display =
            FleetDisplay::new(DisplayMode::detect(self.json), self.verbosity, &hosts.names);
        let results = fleet::run(&hosts.names, self.limits, &mut display, |i, progress| {
            let (t, target) = &hosts.targets[i];
            job(i, t, target, progress)
        });
        finish(&mut display, what, &results)
    }

    fn wait(&self) -> WaitOptions {
        WaitOptions {
            deadline: self.wait_ssh,
            ..WaitOptions::default()
        }
    }
}

/// An OpenSSH client config holding a host's SSH options (`ansible_ssh_common_args`), then the
/// user's own configs, as ssh would read them without `-F` (the first value of an option wins).
fn write_ssh_config(
    dir: &Path,
    n: usize,
    t: &SshTarget,
    base: Option<&Path>,
) -> Result<PathBuf, CommandError> {
    let mut text = String::from("# written by ov for one fleet run\n");
    for (k, v) in &t.ssh_options {
        // The inventory checked the names; a value is one token of the config's syntax.
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| !c.is_control() && c != '"' && c != '#' && c != '\\')
        };
        if !plain(k) || !k.chars().all(|c| c.is_ascii_alphanumeric()) || !plain(v) {
            return Err(CommandError::Io(std::io::Error::other(format!(
                "host `{}`: the ssh option `{k}={v}` cannot be written to an OpenSSH config",
                t.name
            ))));
        }
        text.push_str(&format!("{k} \"{v}\"\n"));
    }
    match base {
        Some(b) => text.push_str(&format!("Include \"{}\"\n", b.display())),
        None => text.push_str("Include ~/.ssh/config\nInclude /etc/ssh/ssh_config\n"),
    }
    let path = dir.join(format!("host-{n}.config"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The distro a host's bundle is compiled for: its `ov_distro`, else the command line's, else
/// the deploy's own.
fn distro_of(t: &SshTarget, selection: &Selection) -> Option<String> {
    t.ov_distro.clone().or(selection.distro.clone())
}

/// The bundles of a fleet run: one per distinct distro.
struct Bundles {
    /// Each distinct bundle, verified.
    bundles: Vec<BundleInfo>,
    /// Per host (in the hosts' order), the index of its bundle.
    of_host: Vec<usize>,
    /// The deploy's own account (the default `--user`).
    deploy_user: Option<String>,
}

impl Bundles {
    fn of(&self, host: usize) -> &BundleInfo {
        &self.bundles[self.of_host[host]]
    }
}

/// Compile the deploy once per distinct distro of `hosts`; per host, the bundle it gets.
fn compile_per_distro(
    selection: &Selection,
    build: &BuildOptions,
    hosts: &Hosts,
) -> Result<Bundles, CommandError> {
    let mut by_distro: BTreeMap<Option<String>, usize> = BTreeMap::new();
    let mut bundles = Vec::new();
    let mut of_host = Vec::new();
    let mut deploy_user = None;
    for (t, _) in &hosts.targets {
        let distro = distro_of(t, selection);
        let i = match by_distro.get(&distro) {
            Some(i) => *i,
            None => {
                let sel = Selection {
                    distro: distro.clone(),
                    ..selection.clone()
                };
                let resolved = resolve(&sel)?;
                deploy_user = resolved.deploy.user.clone();
                let bundle = resolved.compile(build)?;
                // One directory per distro: two bundles of one deploy share a file name.
                let sub = format!(
                    "fleet/{}",
                    distro
                        .as_deref()
                        .unwrap_or("default")
                        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "-")
                );
                let path = write_to_cache_in(&bundle, &sub)?;
                bundles.push(open_bundle(&path)?);
                by_distro.insert(distro, bundles.len() - 1);
                bundles.len() - 1
            }
        };
        of_host.push(i);
    }
    Ok(Bundles {
        bundles,
        of_host,
        deploy_user,
    })
}

/// The end of a fleet command: the recap, and exit 11 when a host did not succeed.
fn finish(
    display: &mut FleetDisplay,
    what: &str,
    results: &[HostResult],
) -> Result<(), CommandError> {
    display.recap(what, results);
    match fleet::exit_of(results) {
        Exit::Ok => Ok(()),
        _ => Err(CommandError::HostsFailed {
            failed: results.iter().filter(|r| r.state.failed()).count(),
            total: results.len(),
        }),
    }
}

/// `ov push DEPLOY --inventory FILE`: the deploy's bundle (per distro) on every selected host.
pub fn push(
    fleet: &Fleet,
    selection: &Selection,
    build: &BuildOptions,
    options: &PushOptions,
) -> Result<(), CommandError> {
    let hosts = fleet.hosts()?;
    let b = compile_per_distro(selection, build, &hosts)?;
    let wait = fleet.wait();
    fleet.each("push", &hosts, |i, t, target, progress| {
        let bundle = b.of(i);
        let opts = PushOptions {
            bundle: bundle.path.clone(),
            user: account(t, options.user.as_deref(), &b.deploy_user),
            state: None,
            ..options.clone()
        };
        let exec = SshExecutor::connect(target.clone(), wait.clone(), progress)
            .map_err(PushError::from)?;
        let report = match push_connected(exec, target, bundle, &opts, progress)? {
            PushOutcome::Done(r) => r,
            PushOutcome::DryRun(_) => unreachable!("a fleet push is never a dry run"),
        };
        Ok(match opts.mode {
            RunMode::Check { .. } => {
                let n = report.changed.unwrap_or(0);
                HostDone {
                    changed: n > 0,
                    summary: if n > 0 {
                        format!("a run would change {n} layer(s)")
                    } else {
                        "a run would change nothing".into()
                    },
                    json: json!({"changed": n}),
                }
            }
            _ => HostDone {
                changed: report.applied > 0,
                summary: format!(
                    "{} applied, {} already applied",
                    report.applied, report.skipped
                ),
                json: json!({"applied": report.applied, "skipped": report.skipped,
                             "applied_layers": report.applied_layers,
                             "bundle_sha256": report.bundle_sha256}),
            },
        })
    })
}

/// `ov status DEPLOY --inventory FILE`: per host, whether it holds what the project compiles
/// now (a host that differs is reported, not failed, unless `exit_code`).
pub fn status(
    fleet: &Fleet,
    selection: &Selection,
    user: Option<&str>,
    exit_code: bool,
) -> Result<(), CommandError> {
    let hosts = fleet.hosts()?;
    let b = compile_per_distro(selection, &BuildOptions::default(), &hosts)?;
    let wait = fleet.wait();
    fleet.each("status", &hosts, |i, t, target, progress| {
        let user = account(t, user, &b.deploy_user);
        let mut exec = SshExecutor::connect(target.clone(), wait.clone(), progress)
            .map_err(PushError::from)?;
        let (report, changed) = read_with(&mut exec, user.as_deref(), Some(b.of(i)), progress)?;
        let recorded = report.layers.len();
        match differs(&report, true, changed.unwrap_or(0)) {
            Ok(()) => Ok(HostDone {
                changed: false,
                summary: format!("up to date ({recorded} layer(s) recorded)"),
                json: json!({"differs": false, "recorded": recorded}),
            }),
            Err(CommandError::Differs { what }) if !exit_code => Ok(HostDone {
                changed: true,
                summary: format!("differs: {what}"),
                json: json!({"differs": true, "what": what, "recorded": recorded}),
            }),
            Err(e) => Err(e),
        }
    })
}

/// `ov deploy del DEPLOY --inventory FILE`: tear the deploy down on every selected host, each
/// from its own ledger.
pub fn del(
    fleet: &Fleet,
    selection: &Selection,
    options: &TeardownOptions,
) -> Result<(), CommandError> {
    let hosts = fleet.hosts()?;
    let deploy = resolve(selection)?.target();
    let wait = fleet.wait();
    fleet.each("deploy del", &hosts, |_, t, target, progress| {
        let opts = TeardownOptions {
            name: deploy.name.clone(),
            deploy_id: Some(deploy.id.clone()),
            user: account(t, options.user.as_deref(), &deploy.user),
            state: None,
            ..options.clone()
        };
        let r = teardown(target.clone(), wait.clone(), &opts, progress)?;
        if let Some(plan) = &r.plan {
            let layers: Vec<String> = plan
                .actions
                .iter()
                .map(|a| match a {
                    LayerAction::Undo { layer } => format!("undo {layer}"),
                    LayerAction::Release { layer, .. } => format!("keep {layer}"),
                })
                .collect();
            return Ok(HostDone {
                changed: !plan.actions.is_empty(),
                summary: format!("would {}", layers.join(", ")),
                json: json!({"dry_run": true, "actions": layers}),
            });
        }
        Ok(HostDone {
            changed: !r.undone.is_empty(),
            summary: if r.nothing_recorded {
                "nothing recorded for this deploy".into()
            } else {
                format!(
                    "{} layer(s) undone, {} still used by other deploys",
                    r.undone.len(),
                    r.released.len()
                )
            },
            json: json!({"undone": r.undone, "released": r.released,
                         "nothing_recorded": r.nothing_recorded}),
        })
    })
}

/// The account a host's bundle is for: its `ov_user`, else the command line's `--user`, else the
/// deploy's.
fn account(t: &SshTarget, given: Option<&str>, deploy: &Option<String>) -> Option<String> {
    t.ov_user
        .clone()
        .or(given.map(str::to_string))
        .or(deploy.clone())
}
