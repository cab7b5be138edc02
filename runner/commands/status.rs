//! Stage `runner`, `ov status`: the layers the target's ledger records and whether they match
//! what the project would compile now.
//! Invariant: changes nothing, locally or on the target; a project that does not compile only
//! drops the comparison.

use std::path::PathBuf;

use crate::apply::push::{push_with, PushError, PushOptions, RunMode};
use crate::bundle::{open_bundle, BundleInfo};
use crate::commands::project::{resolve, write_to_cache, BuildOptions, Selection};
use crate::commands::{
    connect_parts, local, with_display, CommandError, Common, Connection, Destination,
};
use crate::ssh::exec::Executor;
use crate::ssh::master::SshExecutor;
use crate::target::ledger::{status as read_status, status_with, LayerMatch, StatusReport};
use crate::ui::progress::{Event, Progress};
use crate::ui::term::say;

/// Plain options of `ov status`.
#[derive(Debug, Clone)]
pub struct StatusRequest {
    /// The project, the deploy and its layers.
    pub selection: Selection,
    /// How to reach the target.
    pub connection: Connection,
    /// `--user`.
    pub user: Option<String>,
    /// `--exit-code`: fail (exit 10) when the target differs from the compiled bundle.
    pub exit_code: bool,
}

/// `ov status`.
pub fn run(req: &StatusRequest) -> Result<(), CommandError> {
    let resolved = resolve(&req.selection)?;
    let target = resolved.target();
    // Compare with what the project would compile now, when it compiles.
    let bundle = resolved
        .compile(&BuildOptions::default())
        .and_then(|b| write_to_cache(&b))
        .ok();
    let mut common = req.connection.common(&target);
    let user = common.follow_saved(req.user.clone(), target.user)?;
    status(&StatusCommand {
        common,
        bundle,
        user,
        exit_code: req.exit_code,
    })
}

/// `ov status` once the bundle to compare with is compiled.
#[derive(Debug, Clone)]
pub struct StatusCommand {
    /// Shared options.
    pub common: Common,
    /// Compare with this bundle's manifest.
    pub bundle: Option<PathBuf>,
    /// Ledger owner.
    pub user: Option<String>,
    /// `--exit-code`.
    pub exit_code: bool,
}

/// Read the target's ledger and print it, compared with the bundle when there is one.
pub fn status(cmd: &StatusCommand) -> Result<(), CommandError> {
    with_display(&cmd.common, |display| status_inner(cmd, display))
}

/// The target's ledger compared with `bundle`, and — with a bundle — how many layers a run would
/// change (the bundle's check mode on the same connection: files changed since they were deployed
/// among them); the executor is closed after.
pub fn read_with(
    exec: &mut dyn Executor,
    user: Option<&str>,
    bundle: Option<&BundleInfo>,
    display: &mut dyn Progress,
) -> Result<(StatusReport, Option<u64>), CommandError> {
    let r = status_with(exec, user, bundle);
    let changed = match (&r, bundle) {
        (Ok(_), Some(b)) => {
            let opts = PushOptions {
                mode: RunMode::Check { diff: false },
                user: user.map(str::to_string),
                ..PushOptions::new(b.path.clone())
            };
            // The comparison of files is extra: a bundle whose run.sh has no check mode, or a
            // check that fails, leaves the status as the ledger says it, with a note.
            match push_with(exec, b, &opts, display) {
                Ok(r) => r.changed,
                Err(e) => {
                    display.event(&Event::Note {
                        msg: format!(
                            "note: the target's files were not compared with the bundle: {e}"
                        ),
                    });
                    None
                }
            }
        }
        _ => None,
    };
    let _ = exec.close();
    Ok((r?, changed))
}

fn status_inner(cmd: &StatusCommand, display: &mut dyn Progress) -> Result<(), CommandError> {
    let bundle = match &cmd.bundle {
        Some(b) => Some(open_bundle(b)?),
        None => None,
    };
    let (report, changed): (StatusReport, Option<u64>) = match &cmd.common.destination {
        Destination::Local => {
            read_with(&mut local()?, cmd.user.as_deref(), bundle.as_ref(), display)?
        }
        Destination::Remote(c) if bundle.is_some() => {
            let (target, _, wait) = connect_parts(&cmd.common, c)?;
            let mut exec = SshExecutor::connect(target, wait, display).map_err(PushError::from)?;
            read_with(&mut exec, cmd.user.as_deref(), bundle.as_ref(), display)?
        }
        Destination::Remote(c) => {
            let (target, _, wait) = connect_parts(&cmd.common, c)?;
            (
                read_status(target, wait, cmd.user.as_deref(), bundle.as_ref(), display)?,
                None,
            )
        }
    };
    if cmd.common.json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        if let (Some(obj), Some(n)) = (v.as_object_mut(), changed) {
            obj.insert("changed".into(), n.into());
        }
        println!("{v}");
    } else {
        say(&format!("{} — ledger {}", report.target, report.ledger));
        if report.layers.is_empty() {
            say("  no layers recorded");
        }
        for l in &report.layers {
            say(&format!(
                "  {:<28} {:<16} {}  by {}",
                l.layer,
                l.digest.chars().take(16).collect::<String>(),
                l.deployed_at,
                l.deployed_by.join(",")
            ));
        }
        if !report.comparison.is_empty() {
            say("compared with the bundle:");
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
                say(&format!("  {name:<28} {what}"));
            }
            for e in &report.extra {
                say(&format!(
                    "  {e:<28} recorded for this deploy but not in the bundle"
                ));
            }
        }
        match changed {
            Some(0) => say("the target's files: as the bundle installs them"),
            Some(n) => say(&format!(
                "the target's files: a run would change {n} layer(s) (the `change` lines above; `ov push --check --diff` shows how)"
            )),
            None => {}
        }
    }
    if cmd.exit_code {
        differs(&report, bundle.is_some(), changed.unwrap_or(0))?;
    }
    Ok(())
}

/// `--exit-code`: an error (exit 10) naming what differs, unless the target holds every layer
/// of the bundle as compiled and nothing more.
pub fn differs(report: &StatusReport, compared: bool, changed: u64) -> Result<(), CommandError> {
    if !compared {
        return Err(CommandError::Differs {
            what: "nothing to compare with (the project does not compile now)".into(),
        });
    }
    let mut what: Vec<String> = report
        .comparison
        .iter()
        .filter_map(|(name, m)| match m {
            LayerMatch::Applied => None,
            LayerMatch::Differs { .. } => Some(format!("`{name}` applied with other content")),
            LayerMatch::Failed => Some(format!("`{name}` failed")),
            LayerMatch::Missing => Some(format!("`{name}` not applied")),
        })
        .collect();
    what.extend(
        report
            .extra
            .iter()
            .map(|e| format!("`{e}` recorded but no longer in the deploy")),
    );
    if changed > 0 {
        what.push(format!(
            "a run would change {changed} layer(s) on the target (files changed since deployed among them; `ov push --check --diff` shows how)"
        ));
    }
    if what.is_empty() {
        Ok(())
    } else {
        Err(CommandError::Differs {
            what: what.join(", "),
        })
    }
}
