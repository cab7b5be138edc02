//! Stage `runner`, `ov status`: the layers the target's ledger records and whether they match
//! what the project would compile now.
//! Invariant: changes nothing, locally or on the target; a project that does not compile only
//! drops the comparison.

use std::path::PathBuf;

use crate::bundle::open_bundle;
use crate::commands::project::{resolve, write_to_cache, BuildOptions, Selection};
use crate::commands::{
    connect_parts, local, with_display, CommandError, Common, Connection, Destination,
};
use crate::ssh::exec::Executor;
use crate::target::ledger::{status as read_status, status_with, LayerMatch, StatusReport};
use crate::ui::progress::Progress;

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
    status(&StatusCommand {
        common: req.connection.common(&target),
        bundle,
        user: req.user.clone().or(target.user),
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

fn status_inner(cmd: &StatusCommand, display: &mut dyn Progress) -> Result<(), CommandError> {
    let bundle = match &cmd.bundle {
        Some(b) => Some(open_bundle(b)?),
        None => None,
    };
    let report: StatusReport = match &cmd.common.destination {
        Destination::Local => {
            let mut exec = local()?;
            let r = status_with(&mut exec, cmd.user.as_deref(), bundle.as_ref());
            let _ = exec.close();
            r?
        }
        Destination::Remote(c) => {
            let (target, _, wait) = connect_parts(&cmd.common, c)?;
            read_status(target, wait, cmd.user.as_deref(), bundle.as_ref(), display)?
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
    if cmd.exit_code {
        differs(&report, bundle.is_some())?;
    }
    Ok(())
}

/// `--exit-code`: an error (exit 10) naming what differs, unless the target holds every layer
/// of the bundle as compiled and nothing more.
fn differs(report: &StatusReport, compared: bool) -> Result<(), CommandError> {
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
    if what.is_empty() {
        Ok(())
    } else {
        Err(CommandError::Differs {
            what: what.join(", "),
        })
    }
}
