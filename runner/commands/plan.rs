//! Stage `runner`, `ov plan`: print the InstallPlan of a deploy — as JSON, or as a summary with a
//! header and per layer one line per step and check.
//! Invariant: reads the project only; writes nothing but stdout (and, like every compile, the
//! repo cache and `ov.lock` when a remote layer must be fetched, unless `--offline`).

use ov_compiler::batch::package_batches;
use ov_compiler::plan::{Gate, InstallPlan, Step};

use crate::commands::project::{resolve, Selection};
use crate::commands::{emit, json_text, CommandError};

/// Plain options of `ov plan`.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The project, the deploy and its layers.
    pub selection: Selection,
    /// `--json`.
    pub json: bool,
}

/// `ov plan`.
pub fn run(opts: &PlanOptions) -> Result<(), CommandError> {
    let plan = resolve(&opts.selection)?.plan()?;
    let text = if opts.json {
        json_text(&plan)?
    } else {
        summary(&plan)
    };
    emit(&text)
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
    let batches = package_batches(plan);
    if !batches.is_empty() {
        s.push_str("\npackage transactions shared by layers (when every layer runs):\n");
        for b in &batches {
            s.push_str(&format!("    {}\n", b.describe()));
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
