//! Stage `runner`, `ov push` and `ov deploy add`: compile the deploy (unless given a bundle) and
//! apply it on its target — over SSH, or locally for `host` — then print what was applied (and,
//! with `--verify`, what the layers' own checks said).
//! Invariant: the target's saved state changes only after a successful apply.

use serde_json::json;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::apply::push::{
    push as push_remote, push_connected, push_with, CheckReport, PushError, PushOptions,
    PushOutcome, PushReport, RunMode, StateTarget,
};
use crate::bundle::open_bundle;
use crate::commands::project::PendingBundle;
use crate::commands::{
    connect_parts, local, with_display, CommandError, Delivery, Destination, OnTarget,
};
use crate::ssh::connect::WaitOptions;
use crate::ssh::endpoint::Target;
use crate::ssh::master::SshExecutor;
use crate::ui::progress::Display;

/// Plain options of `ov push` and `ov deploy add`.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// What to send, and where.
    pub delivery: Delivery,
    /// `--require-signature`: refuse an unsigned bundle before connecting.
    pub require_signature: bool,
    /// The flags of the push. What the deploy decides is filled in by [`run`]: `bundle` (the
    /// compiled or given archive), `templates` (as for the compile) and, when unset, `user` (the
    /// deploy's account).
    pub options: PushOptions,
}

/// `ov push`, `ov deploy add`.
pub fn run(req: &PushRequest) -> Result<(), CommandError> {
    let (pending, target, common) = req.delivery.prepare_pending()?;
    if req.require_signature {
        require_signature(&pending)?;
    }
    let options = PushOptions {
        user: req.options.user.clone().or(target.user),
        templates: req.delivery.build.templates.clone(),
        ..req.options.clone()
    };
    match (pending, &common.destination) {
        // Connecting takes longer than compiling: the deploy compiles while the master connects.
        (PendingBundle::Compile(resolved, build), Destination::Remote(c)) if !options.dry_run => {
            let connect = connect_parts(&common, c)?;
            let json = common.json;
            with_display(&common, |display| {
                let pending = PendingBundle::Compile(resolved, build);
                let mode = options.mode;
                let r = compile_while_connecting(pending, connect, options, display)?;
                display.finish();
                report(json, mode, r)
            })
        }
        (pending, _) => push(&PushCommand {
            common,
            options: PushOptions {
                bundle: pending.finish()?,
                ..options
            },
        }),
    }
}

/// `--require-signature`: the compile must sign (`--sign KEY`), a given bundle must carry
/// `SHA256SUMS.sig`; checked here, before any connection is opened. Whether the signature is
/// one the target accepts is the target's policy (run.sh), or `ov verify --allowed-signers`.
fn require_signature(pending: &PendingBundle) -> Result<(), CommandError> {
    match pending {
        PendingBundle::Compile(resolved, build) => match build.sign {
            Some(_) => Ok(()),
            None => Err(CommandError::Unsigned {
                what: format!("the compile of deploy {}", resolved.deploy.name),
            }),
        },
        PendingBundle::Ready(path) => {
            let archive = crate::commands::project::open_archive(path, "push")?;
            let inspection = ov_compiler::manifest::inspect(archive, None)
                .map_err(|e| crate::commands::project::bundle_error("push", path, e))?;
            if inspection.paths().any(|p| p == ov_compiler::sign::SIG_FILE) {
                Ok(())
            } else {
                Err(CommandError::Unsigned {
                    what: path.display().to_string(),
                })
            }
        }
    }
}

/// Compile (and verify) the bundle on a thread of its own while this one opens the master to the
/// target; then push. A failed compile is the error (the master, if it came up, is closed), and
/// makes the connect give up rather than wait for a target that does not answer.
fn compile_while_connecting(
    pending: PendingBundle,
    (target, state, wait): (Target, Option<StateTarget>, WaitOptions),
    options: PushOptions,
    display: &mut Display,
) -> Result<PushReport, CommandError> {
    let give_up = Arc::new(AtomicBool::new(false));
    let wait = WaitOptions {
        give_up: Some(give_up.clone()),
        ..wait
    };
    std::thread::scope(|s| {
        let compiling = s.spawn(|| {
            let bundle = pending.finish().and_then(|path| Ok(open_bundle(&path)?));
            if bundle.is_err() {
                give_up.store(true, Ordering::SeqCst);
            }
            bundle
        });
        let connected = SshExecutor::connect(target.clone(), wait, display);
        let bundle = match compiling.join() {
            Ok(bundle) => bundle?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let exec = connected.map_err(PushError::from)?;
        let options = PushOptions {
            bundle: bundle.path.clone(),
            // Checks change nothing on the target, so they change nothing in deploy.yml either.
            state: state.filter(|_| options.mode.applies()),
            ..options
        };
        match push_connected(exec, &target, &bundle, &options, display)? {
            PushOutcome::Done(r) => Ok(*r),
            PushOutcome::DryRun(_) => unreachable!("a dry run connects to nothing"),
        }
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
            let state = state.filter(|_| opts.mode.applies());
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
        PushOutcome::Done(r) => report(cmd.common.json, opts.mode, *r)?,
    }
    Ok(())
}

/// Print what a finished push (or `ov test`) did; a failed or silent check is the failure.
fn report(json: bool, mode: RunMode, r: PushReport) -> Result<(), CommandError> {
    if mode.checks_changes() {
        return check_outcome(json, &r);
    }
    if json {
        let checks = r
            .checks
            .as_ref()
            .map(|c| json!({"pass": c.pass, "fail": c.fail, "skip": c.skip}));
        if mode == RunMode::Test {
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
        if mode != RunMode::Test {
            eprintln!("{}", summary_push(&r));
        }
        if let Some(c) = &r.checks {
            eprintln!(
                "checked {}: {} passed, {} failed, {} skipped",
                r.target, c.pass, c.fail, c.skip
            );
        }
    }
    if mode.tests_run() {
        checks_outcome(&r.target, r.checks.as_ref())?;
    }
    Ok(())
}

/// `ov push --check`: how many layers a run would change; any is the command's failure (exit 10),
/// as `run.sh --check` exits 10.
fn check_outcome(json: bool, r: &PushReport) -> Result<(), CommandError> {
    let changed = r.changed.unwrap_or(0);
    if json {
        println!(
            "{}",
            json!({"event": "result", "target": r.target, "changed": changed,
                   "bundle_sha256": r.bundle_sha256})
        );
    } else if changed == 0 {
        eprintln!("{}: a run would change nothing", r.target);
    }
    if changed == 0 {
        return Ok(());
    }
    Err(CommandError::Differs {
        what: format!("a run would change {changed} layer(s) on {}", r.target),
    })
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
