//! Stage `runner`, `ov push` and `ov deploy add`: compile the deploy (unless given a bundle) and
//! apply it on its target — over SSH, or locally for `host` — then print what was applied (and,
//! with `--verify`, what the layers' own checks said).
//! Invariant: the target's saved state changes only after a successful apply.

use std::path::PathBuf;

use serde_json::json;

use crate::archive::open_bundle;
use crate::commands::project::{bundle_and_target, BuildOptions, Selection};
use crate::commands::{
    connect_parts, local, with_display, CommandError, Common, Connection, Destination,
};
use crate::push::{
    push as push_remote, push_with, CheckReport, PushOptions, PushOutcome, PushReport, RunMode,
    TestFilter,
};
use crate::target::cloud_init::CloudInitOptions;
use crate::ui::progress::Display;

/// Plain options of `ov push` and `ov deploy add`.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// `-C/--project`.
    pub project: Option<PathBuf>,
    /// The deploy (or bundle) and its layers.
    pub selection: Selection,
    /// How the bundle is compiled.
    pub build: BuildOptions,
    /// How to reach the target.
    pub connection: Connection,
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
    /// `--user`.
    pub user: Option<String>,
    /// `--verify`: run the layers' checks after the apply.
    pub verify: bool,
}

/// `ov push`, `ov deploy add`.
pub fn run(req: &PushRequest) -> Result<(), CommandError> {
    let (bundle, target) = bundle_and_target(req.project.as_deref(), &req.selection, &req.build)?;
    push(&PushCommand {
        cloud_init: req.cloud_init.clone(),
        keep: req.keep,
        dry_run: req.dry_run,
        no_wait_lock: req.no_wait_lock,
        force: req.force,
        user: req.user.clone().or(target.user.clone()),
        mode: if req.verify {
            RunMode::ApplyThenTest
        } else {
            RunMode::Apply
        },
        ..PushCommand::new(req.connection.common(&target), bundle)
    })
}

/// A push of a compiled bundle (`ov push`, `ov deploy add`, `ov test` once the bundle is there).
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
}

impl PushCommand {
    /// Apply `bundle` with the defaults of `ov push`.
    pub fn new(common: Common, bundle: PathBuf) -> PushCommand {
        PushCommand {
            common,
            bundle,
            cloud_init: CloudInitOptions::default(),
            keep: false,
            dry_run: false,
            no_wait_lock: false,
            force: false,
            user: None,
            mode: RunMode::Apply,
            test: TestFilter::default(),
        }
    }
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

/// Push a compiled bundle (also for `ov test`); prints the outcome, returns the failure.
pub fn push(cmd: &PushCommand) -> Result<(), CommandError> {
    with_display(cmd.common.json, |display| push_inner(cmd, display))
}

fn push_inner(cmd: &PushCommand, display: &mut Display) -> Result<(), CommandError> {
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
    };
    let outcome = match &cmd.common.destination {
        Destination::Local => {
            let bundle = open_bundle(&cmd.bundle)?;
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
            PushOutcome::Done(Box::new(push_with(
                &mut exec, &bundle, &opts_base, display,
            )?))
        }
        Destination::Remote(c) => {
            let (target, state, wait) = connect_parts(&cmd.common, c)?;
            // Checks change nothing on the target, so they change nothing in deploy.yml either.
            let state = state.filter(|_| cmd.mode != RunMode::Test);
            let opts = PushOptions { state, ..opts_base };
            push_remote(target, wait, &opts, display)?
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
fn checks_outcome(target: &str, checks: Option<&CheckReport>) -> Result<(), CommandError> {
    let Some(c) = checks else {
        return Err(CommandError::ChecksSilent {
            target: target.to_string(),
        });
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
    Err(CommandError::ChecksFailed {
        target: target.to_string(),
        failed,
    })
}
