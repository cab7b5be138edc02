//! Stage `runner`, `ov deploy del`: tear a deploy down on its target, from the target's own
//! ledger (and with `--purge`, forget the VM's saved state).
//! Invariant: what is undone is decided on the target from its records, never from the project.

use serde_json::json;

use crate::apply::teardown::{
    teardown, teardown_with, LayerAction, TeardownOptions, TeardownPlan, TeardownReport,
};
use crate::commands::project::{resolve, Selection};
use crate::commands::{
    connect_parts, local, with_display, CommandError, Connection, Destination, OnTarget,
};
use crate::ui::progress::Display;

/// Plain options of `ov deploy del`.
#[derive(Debug, Clone)]
pub struct DelRequest {
    /// The project and the deploy (no layers: the target's ledger names them).
    pub selection: Selection,
    /// How to reach the target.
    pub connection: Connection,
    /// The flags of the teardown. What the deploy decides is filled in by [`run`]: `name`,
    /// `deploy_id` and, when unset, `user` (the deploy's account).
    pub options: TeardownOptions,
}

/// `ov deploy del`.
pub fn run(req: &DelRequest) -> Result<(), CommandError> {
    let target = resolve(&req.selection)?.target();
    let mut common = req.connection.common(&target);
    let user = common.follow_saved(req.options.user.clone(), target.user)?;
    del(&DelCommand {
        common,
        options: TeardownOptions {
            name: target.name,
            deploy_id: Some(target.id),
            user,
            ..req.options.clone()
        },
    })
}

/// A teardown of a resolved deploy; the options' `state` is filled in for a VM.
pub type DelCommand = OnTarget<TeardownOptions>;

/// Tear the deploy down on its target from the target's own ledger.
pub fn del(cmd: &DelCommand) -> Result<(), CommandError> {
    with_display(&cmd.common, |display| del_inner(cmd, display))
}

fn del_inner(cmd: &DelCommand, display: &mut Display) -> Result<(), CommandError> {
    let mut opts = cmd.options.clone();
    let report: TeardownReport = match &cmd.common.destination {
        Destination::Local => {
            let mut exec = local()?;
            teardown_with(&mut exec, &opts, display)?
        }
        Destination::Remote(c) => {
            let (target, state, wait) = connect_parts(&cmd.common, c)?;
            opts.state = state;
            teardown(target, wait, &opts, display)?
        }
    };
    display.finish();
    if let Some(plan) = &report.plan {
        if cmd.common.json {
            println!(
                "{}",
                json!({"event": "dry-run", "deploy_ids": plan.deploy_ids,
                       "actions": plan.actions.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
                       "layers": plan.actions.iter().map(|a| match a {
                           LayerAction::Undo { layer } => json!({"layer": layer, "action": "undo",
                               "reverse": plan.reverse.get(layer).cloned().unwrap_or_default()}),
                           LayerAction::Release { layer, remaining } => json!({"layer": layer,
                               "action": "release", "remaining": remaining}),
                       }).collect::<Vec<_>>(),
                       "script": plan.script})
            );
        } else {
            print!("{}", dry_run_text(plan));
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
        display.finish();
        eprintln!(
            "removed {}: {} layer(s) undone, {} still used by other deploys",
            report.deploy_ids.join(", "),
            report.undone.len(),
            report.released.len()
        );
    }
    Ok(())
}

/// `ov deploy del --dry-run` in words: per layer, in the order they would go, what its undo
/// reverses (or which deploys keep it).
fn dry_run_text(plan: &TeardownPlan) -> String {
    let mut s = format!(
        "would remove deploy {} ({} layer(s), last installed first):\n",
        plan.deploy_ids.join(", "),
        plan.actions.len()
    );
    for a in &plan.actions {
        match a {
            LayerAction::Undo { layer } => {
                s.push_str(&format!("  undo {layer}\n"));
                let ops = plan.reverse.get(layer).cloned().unwrap_or_default();
                if ops.is_empty() {
                    s.push_str("      (it recorded nothing to reverse; its records go)\n");
                }
                for op in ops {
                    s.push_str(&format!("      {op}\n"));
                }
            }
            LayerAction::Release { layer, remaining } => s.push_str(&format!(
                "  keep {layer}: still used by {}; only this deploy is taken off its record\n",
                remaining.join(", ")
            )),
        }
    }
    s
}
