//! Stage `runner`, `ov push` and `ov deploy add`: compile the deploy (unless given a bundle) and
//! apply it on its target — over SSH, or locally for `host` — then print what was applied (and,
//! with `--verify`, what the layers' own checks said).
//! Invariant: the target's saved state changes only after a successful apply.

use serde_json::json;

use crate::apply::push::{
    push as push_remote, push_with, CheckReport, PushOptions, PushOutcome, PushReport, RunMode,
};
use crate::bundle::open_bundle;
use crate::commands::{
    connect_parts, local, with_display, CommandError, Delivery, Destination, OnTarget,
};
use crate::ui::progress::Display;

/// Plain options of `ov push` and `ov deploy add`.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// What to send, and where.
    pub delivery: Delivery,
    /// The flags of the push. What the deploy decides is filled in by [`run`]: `bundle` (the
    /// compiled or given archive), `templates` (as for the compile) and, when unset, `user` (the
    /// deploy's account).
    pub options: PushOptions,
}

/// `ov push`, `ov deploy add`.
pub fn run(req: &PushRequest) -> Result<(), CommandError> {
    let (bundle, target, common) = req.delivery.prepare()?;
    push(&PushCommand {
        common,
        options: PushOptions {
            bundle,
            user: req.options.user.clone().or(target.user),
            templates: req.delivery.build.templates.clone(),
            ..req.options.clone()
        },
    })
}

/// A push of a compiled bundle (`ov push`, `ov deploy add`, `ov test` once the bundle is there);
/// the options' `state` is filled in for a VM.
pub type PushCommand = OnTarget<PushOptions>;

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
    with_display(&cmd.common, |display| push_inner(cmd, display))
}

fn push_inner(cmd: &PushCommand, display: &mut Display) -> Result<(), CommandError> {
    let opts = &cmd.options;
    let outcome = match &cmd.common.destination {
        Destination::Local => {
            let bundle = open_bundle(&opts.bundle)?;
            let mut exec = local()?;
            if opts.dry_run {
                let text = format!(
                    "would run {} locally (as root via sudo -n unless already root): verify, extract under {}, run.sh",
                    bundle.path.display(),
                    crate::apply::push::REMOTE_BASE
                );
                println!("{text}");
                return Ok(());
            }
            PushOutcome::Done(Box::new(push_with(&mut exec, &bundle, opts, display)?))
        }
        Destination::Remote(c) => {
            let (target, state, wait) = connect_parts(&cmd.common, c)?;
            // Checks change nothing on the target, so they change nothing in deploy.yml either.
            let state = state.filter(|_| opts.mode != RunMode::Test);
            let opts = PushOptions {
                state,
                ..opts.clone()
            };
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
                if opts.mode == RunMode::Test {
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
                if opts.mode != RunMode::Test {
                    eprintln!("{}", summary_push(&r));
                }
                if let Some(c) = &r.checks {
                    eprintln!(
                        "checked {}: {} passed, {} failed, {} skipped",
                        r.target, c.pass, c.fail, c.skip
                    );
                }
            }
            if opts.mode.tests_run() {
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
