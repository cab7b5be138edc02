//! Stage `runner`, commands: `ov push` (also `--verify` and `ov test`, which run the layers'
//! checks on the push channel), `ov deploy del` and `ov status` as plain functions of
//! plain option structs — target resolution (saved state, VM defaults), the progress display,
//! the final summary and the exit code. The clap layer only fills these structs.
//! Invariant: every path ends in exactly one [`Exit`], and errors are printed once, with their
//! causes, in the chosen output format.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::archive::open_bundle;
use crate::executor::{Executor, LocalExecutor};
use crate::exit::{Exit, HasExit};
use crate::ledger::{status, status_with, LayerMatch, StatusReport};
use crate::progress::{Display, DisplayMode, Progress};
use crate::push::{
    push, push_with, CheckReport, PushOptions, PushOutcome, PushReport, RunMode, StateTarget,
    TestFilter,
};
use crate::state::load_vm_state;
use crate::target::{resolve, ConnectOptions, Paths, Target};
use crate::teardown::{teardown, teardown_with, TeardownOptions, TeardownReport};
use crate::wait::{CloudInitOptions, WaitOptions};

/// Where a command goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// This machine (`host`): local executor, no SSH.
    Local,
    /// A VM or SSH host.
    Remote(ConnectOptions),
}

/// Options shared by the remote commands.
#[derive(Debug, Clone)]
pub struct Common {
    /// Deploy name (`vm:arch`, `host`, a node name): names the ledger records.
    pub deploy: String,
    /// Where.
    pub destination: Destination,
    /// `--wait-ssh SECS`.
    pub wait_ssh: Duration,
    /// `--json`.
    pub json: bool,
    /// Override of `~/.config/ov` / `~/.local/share/ov` (tests); `None`: from the environment.
    pub paths: Option<Paths>,
}

/// `ov push` / `ov deploy add` after compiling.
#[derive(Debug, Clone)]
pub struct PushCommand {
    /// Shared options.
    pub common: Common,
    /// The bundle archive.
    pub bundle: PathBuf,
    /// cloud-init handling.
    pub cloud_init: CloudInitOptions,
    /// `--keep`.
    pub keep: bool,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--no-wait` (lock).
    pub no_wait_lock: bool,
    /// `--force`.
    pub force: bool,
    /// `--user` (target account for run.sh).
    pub user: Option<String>,
    /// Apply (`ov push`), apply and check (`ov push --verify`) or only check (`ov test`).
    pub mode: RunMode,
    /// Which checks (`ov test --layer`, `--scope`).
    pub test: TestFilter,
    /// `--templates DIR` (it replaces the target-side scripts of `templates/remote/` too).
    pub templates: Option<PathBuf>,
}

/// `ov deploy del`.
#[derive(Debug, Clone)]
pub struct DelCommand {
    /// Shared options.
    pub common: Common,
    /// Only this deploy id.
    pub deploy_id: Option<String>,
    /// Ledger owner.
    pub user: Option<String>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--no-wait`.
    pub no_wait_lock: bool,
    /// `--purge`: also forget the VM's saved state.
    pub purge: bool,
}

/// `ov status`.
#[derive(Debug, Clone)]
pub struct StatusCommand {
    /// Shared options.
    pub common: Common,
    /// Compare with this bundle's manifest.
    pub bundle: Option<PathBuf>,
    /// Ledger owner.
    pub user: Option<String>,
}

/// An error from any stage, with its exit status.
type Failure = (Exit, String);

fn failure<E: std::error::Error + HasExit>(e: E) -> Failure {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(&format!("\n  caused by: {text}"));
        }
        src = s.source();
    }
    (e.exit(), msg)
}

fn report_failure(json: bool, (exit, msg): &Failure) {
    if json {
        println!(
            "{}",
            json!({"event": "error", "exit": exit.code(), "message": msg})
        );
    } else {
        eprintln!("error: {msg}");
    }
}

/// Target, state entry and wait options for a remote command.
fn connect_parts(
    common: &Common,
    opts: &ConnectOptions,
) -> Result<(Target, Option<StateTarget>, WaitOptions), Failure> {
    let paths = match &common.paths {
        Some(p) => p.clone(),
        None => Paths::from_env().map_err(failure)?,
    };
    let state_file = paths.deploy_state_file();
    let (saved, state) = match &opts.vm {
        Some(vm) => {
            let key = format!("vm:{vm}");
            let saved = load_vm_state(&state_file, &key).map_err(failure)?;
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
    let target = resolve(opts, saved.as_ref(), &paths).map_err(failure)?;
    let wait = WaitOptions {
        deadline: common.wait_ssh,
        ..WaitOptions::default()
    };
    Ok((target, state, wait))
}

fn local() -> Result<LocalExecutor, Failure> {
    LocalExecutor::new().map_err(failure)
}

fn summary_push(r: &PushReport) -> String {
    format!(
        "pushed to {}: {} layer(s) applied, {} already applied; the target records {} layer(s) for this deploy",
        r.target,
        r.applied,
        r.skipped,
        r.applied_layers.len()
    )
}

/// Run `body` with the progress display for `json`, close the display, and turn the outcome into
/// the exit status, printing a failure once.
fn with_display(json: bool, body: impl FnOnce(&mut Display) -> Result<(), Failure>) -> Exit {
    let mut display = Display::new(DisplayMode::detect(json));
    let result = body(&mut display);
    display.finish();
    match result {
        Ok(()) => Exit::Ok,
        Err(f) => {
            report_failure(json, &f);
            f.0
        }
    }
}

/// Run `ov push`; returns the exit status (everything is printed).
pub fn run_push(cmd: &PushCommand) -> Exit {
    with_display(cmd.common.json, |display| push_inner(cmd, display))
}

fn push_inner(cmd: &PushCommand, display: &mut Display) -> Result<(), Failure> {
    let opts_base = PushOptions {
        bundle: cmd.bundle.clone(),
        keep: cmd.keep,
        dry_run: cmd.dry_run,
        no_wait_lock: cmd.no_wait_lock,
        force: cmd.force,
        user: cmd.user.clone(),
        cloud_init: cmd.cloud_init.clone(),
        remote_base: crate::push::REMOTE_BASE.into(),
        state: None,
        mode: cmd.mode,
        test: cmd.test.clone(),
        templates: cmd.templates.clone(),
    };
    let outcome = match &cmd.common.destination {
        Destination::Local => {
            let bundle = open_bundle(&cmd.bundle).map_err(failure)?;
            let mut exec = local()?;
            if cmd.dry_run {
                let text = format!(
                    "would run {} locally (as root via sudo -n unless already root): verify, extract under {}, run.sh",
                    bundle.path.display(),
                    crate::push::REMOTE_BASE
                );
                println!("{text}");
                return Ok(());
            }
            PushOutcome::Done(Box::new(
                push_with(&mut exec, &bundle, &opts_base, display).map_err(failure)?,
            ))
        }
        Destination::Remote(c) => {
            let (target, state, wait) = connect_parts(&cmd.common, c)?;
            // Checks change nothing on the target, so they change nothing in deploy.yml either.
            let state = state.filter(|_| cmd.mode != RunMode::Test);
            let opts = PushOptions { state, ..opts_base };
            push(target, wait, &opts, display).map_err(failure)?
        }
    };
    display.finish();
    match outcome {
        PushOutcome::DryRun(plan) => {
            if cmd.common.json {
                println!(
                    "{}",
                    json!({"event": "dry-run", "target": plan.target, "remote_dir": plan.remote_dir,
                           "commands": plan.commands.iter().map(|(c, s)| json!({"command": c, "stdin": s})).collect::<Vec<_>>(),
                           "bootstrap": plan.bootstrap})
                );
            } else {
                print!("{}", plan.render());
            }
        }
        PushOutcome::Done(r) => {
            if cmd.common.json {
                let checks = r
                    .checks
                    .as_ref()
                    .map(|c| json!({"pass": c.pass, "fail": c.fail, "skip": c.skip}));
                if cmd.mode == RunMode::Test {
                    println!(
                        "{}",
                        json!({"event": "result", "target": r.target, "checks": checks,
                               "bundle_sha256": r.bundle_sha256})
                    );
                } else {
                    println!(
                        "{}",
                        json!({"event": "result", "target": r.target, "applied": r.applied,
                               "skipped": r.skipped, "applied_layers": r.applied_layers,
                               "bundle_sha256": r.bundle_sha256, "checks": checks,
                               "instance_id": r.state.as_ref().and_then(|s| s.instance_id.clone())})
                    );
                }
            } else {
                if cmd.mode != RunMode::Test {
                    eprintln!("{}", summary_push(&r));
                }
                if let Some(c) = &r.checks {
                    eprintln!(
                        "checked {}: {} passed, {} failed, {} skipped",
                        r.target, c.pass, c.fail, c.skip
                    );
                }
            }
            if cmd.mode.tests_run() {
                checks_outcome(&r.target, r.checks.as_ref())?;
            }
        }
    }
    Ok(())
}

/// A failed check is the command's failure (exit 9), naming the checks; checks that never
/// reported (a run.sh without `--test`) are one too.
fn checks_outcome(target: &str, checks: Option<&CheckReport>) -> Result<(), Failure> {
    let Some(c) = checks else {
        return Err((
            Exit::ChecksFailed,
            format!("the checks on {target} did not report a result"),
        ));
    };
    if c.fail == 0 {
        return Ok(());
    }
    let failed: Vec<String> = c
        .results
        .iter()
        .filter(|r| r.result != "pass" && r.result != "skip")
        .map(|r| format!("{}/{}: {}", r.layer, r.id, r.msg))
        .collect();
    Err((
        Exit::ChecksFailed,
        format!(
            "{} check(s) failed on {target}:\n  {}",
            c.fail,
            failed.join("\n  ")
        ),
    ))
}

/// Run `ov deploy del`.
pub fn run_del(cmd: &DelCommand) -> Exit {
    with_display(cmd.common.json, |display| del_inner(cmd, display))
}

fn del_inner(cmd: &DelCommand, display: &mut Display) -> Result<(), Failure> {
    let mut opts = TeardownOptions {
        name: cmd.common.deploy.clone(),
        deploy_id: cmd.deploy_id.clone(),
        user: cmd.user.clone(),
        dry_run: cmd.dry_run,
        no_wait_lock: cmd.no_wait_lock,
        state: None,
        purge: cmd.purge,
    };
    let report: TeardownReport = match &cmd.common.destination {
        Destination::Local => {
            let mut exec = local()?;
            teardown_with(&mut exec, &opts, display).map_err(failure)?
        }
        Destination::Remote(c) => {
            let (target, state, wait) = connect_parts(&cmd.common, c)?;
            opts.state = state;
            teardown(target, wait, &opts, display).map_err(failure)?
        }
    };
    display.finish();
    if let Some(plan) = &report.plan {
        if cmd.common.json {
            println!(
                "{}",
                json!({"event": "dry-run", "deploy_ids": plan.deploy_ids,
                       "actions": plan.actions.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
                       "script": plan.script})
            );
        } else {
            println!(
                "would tear down {} ({} layer action(s)):",
                plan.deploy_ids.join(", "),
                plan.actions.len()
            );
            for a in &plan.actions {
                match a {
                    crate::teardown::LayerAction::Undo { layer } => {
                        println!("  undo     {layer}")
                    }
                    crate::teardown::LayerAction::Release { layer, remaining } => {
                        println!(
                            "  release  {layer} (still used by {})",
                            remaining.join(", ")
                        )
                    }
                }
            }
            println!(
                "--- script (stdin of `sudo -n bash -s`) ---\n{}",
                plan.script
            );
        }
        return Ok(());
    }
    if cmd.common.json {
        println!(
            "{}",
            json!({"event": "result", "deploy_ids": report.deploy_ids, "undone": report.undone,
                   "released": report.released, "nothing_recorded": report.nothing_recorded})
        );
    } else if !report.nothing_recorded {
        eprintln!(
            "removed {}: {} layer(s) undone, {} still used by other deploys",
            report.deploy_ids.join(", "),
            report.undone.len(),
            report.released.len()
        );
    }
    Ok(())
}

/// Run `ov status`.
pub fn run_status(cmd: &StatusCommand) -> Exit {
    with_display(cmd.common.json, |display| status_inner(cmd, display))
}

fn status_inner(cmd: &StatusCommand, display: &mut dyn Progress) -> Result<(), Failure> {
    let bundle = match &cmd.bundle {
        Some(b) => Some(open_bundle(b).map_err(failure)?),
        None => None,
    };
    let report: StatusReport = match &cmd.common.destination {
        Destination::Local => {
            let mut exec = local()?;
            let r = status_with(&mut exec, cmd.user.as_deref(), bundle.as_ref());
            let _ = exec.close();
            r.map_err(failure)?
        }
        Destination::Remote(c) => {
            let (target, _, wait) = connect_parts(&cmd.common, c)?;
            status(target, wait, cmd.user.as_deref(), bundle.as_ref(), display).map_err(failure)?
        }
    };
    if cmd.common.json {
        println!(
            "{}",
            serde_json::to_string(&report).unwrap_or_else(|_| "{}".into())
        );
    } else {
        println!("{} — ledger {}", report.target, report.ledger);
        if report.layers.is_empty() {
            println!("  no layers recorded");
        }
        for l in &report.layers {
            println!(
                "  {:<28} {:<16} {}  by {}",
                l.layer,
                l.digest.chars().take(16).collect::<String>(),
                l.deployed_at,
                l.deployed_by.join(",")
            );
        }
        if !report.comparison.is_empty() {
            println!("compared with the bundle:");
            for (name, m) in &report.comparison {
                let what = match m {
                    LayerMatch::Applied => "applied".to_string(),
                    LayerMatch::Differs { recorded } => format!(
                        "differs (target has {})",
                        recorded.chars().take(16).collect::<String>()
                    ),
                    LayerMatch::Failed => "failed (fix and push again to resume)".to_string(),
                    LayerMatch::Missing => "not applied".to_string(),
                };
                println!("  {name:<28} {what}");
            }
            for e in &report.extra {
                println!("  {e:<28} recorded for this deploy but not in the bundle");
            }
        }
    }
    Ok(())
}
