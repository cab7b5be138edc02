//! Stage `runner`, teardown (`ov deploy del`): undo a deploy on the target from its ledger alone
//! — layers in reverse install order; a layer another deploy still uses only loses this deploy
//! from its `deployed_by`; an unused layer runs its stored `undo.sh` and loses its records; the
//! shell managed block goes when no layer is left.
//! Invariants: one teardown — the bundle runtime's own `undo.sh`, kept by `run.sh` in root's
//! ledger (`/var/lib/overthink/installed/<user>/`), does the work under the ledger lock; nothing
//! in the user's home is ever run as root; a failed undo keeps that layer's records so a second
//! `del` can retry. One channel to read, one per deploy to undo.

use crate::apply::push::StateTarget;
use crate::exit::{Exit, HasExit};
use crate::ssh::connect::WaitOptions;
use crate::ssh::endpoint::Target;
use crate::ssh::error::ConnectError;
use crate::ssh::exec::{join, As, ExecError, Executor, Input, Request, Sink};
use crate::ssh::master::SshExecutor;
use crate::target::ledger::{read_ledger, LayerRecord, Ledger, LedgerError};
use crate::target::state::{load_vm_state, remove_entry, save_vm_state, StateError, VmState};
use crate::ui::progress::{Event, Progress, ProgressLine, RunEvent, Stream};
use serde_json::Value;

/// The fence lines of the shell managed block in the user's profile (docs/bundle-runtime.md).
pub const BLOCK_BEGIN: &str = "# overthink:begin (managed by ov; do not edit inside this block)";
/// End fence.
pub const BLOCK_END: &str = "# overthink:end";

/// Options of `ov deploy del`.
#[derive(Debug, Clone, Default)]
pub struct TeardownOptions {
    /// Deploy name or target as recorded (`vm:arch`, `host`).
    pub name: String,
    /// Only this deploy id (default: every deploy recorded for `name`).
    pub deploy_id: Option<String>,
    /// Owner of the ledger (default: the login user).
    pub user: Option<String>,
    /// Show the plan and the script; change nothing.
    pub dry_run: bool,
    /// Refuse instead of waiting when the ledger is locked.
    pub no_wait_lock: bool,
    /// Update deploy.yml afterwards.
    pub state: Option<StateTarget>,
    /// Remove the deploy.yml entry instead of keeping it (`--purge`).
    pub purge: bool,
    /// Show every line the undo scripts print (`-v`); otherwise only a failed layer's.
    pub verbose: bool,
}

/// What happens to one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerAction {
    /// Still used by other deploys: drop our id only.
    Release {
        layer: String,
        /// The deploys that keep it.
        remaining: Vec<String>,
    },
    /// No other user: run its undo script and remove its records.
    Undo { layer: String },
}

/// The computed teardown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeardownPlan {
    /// Deploy ids being removed.
    pub deploy_ids: Vec<String>,
    /// Actions in execution order.
    pub actions: Vec<LayerAction>,
    /// The commands that perform them (as root), one per deploy.
    pub script: String,
    /// Per layer to undo, what its undo reverses, in words, in the order it runs them
    /// ([`reverse_ops_text`]).
    pub reverse: std::collections::BTreeMap<String, Vec<String>>,
}

/// What a layer's undo reverses, in words, from its ledger record: its reverse operations
/// last-to-first (the order its `undo.sh` runs them), then the empty directories it made.
pub fn reverse_ops_text(rec: &LayerRecord) -> Vec<String> {
    let list = |v: &Value| -> String {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let mut out: Vec<String> = Vec::new();
    let ops = rec
        .extra
        .get("reverse_ops")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for op in ops.iter().rev() {
        let kind = op["kind"].as_str().unwrap_or("?");
        let targets = list(&op["targets"]);
        let as_user = op["scope"].as_str().is_some_and(|s| s.starts_with("user"));
        let text = match kind {
            "package-remove" => format!(
                "remove packages {targets}{} (with the dependencies they pulled in that nothing else needs)",
                op["format"]
                    .as_str()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default()
            ),
            "cargo-uninstall" => format!("cargo uninstall {targets}"),
            "npm-uninstall-g" => format!("npm uninstall -g {targets}"),
            "pixi-env-remove" => format!("remove the pixi environment {targets}"),
            "rm-file-system" | "rm-file-user" => format!(
                "remove {targets}{} (or put back what it replaced)",
                if as_user { " as the user" } else { "" }
            ),
            "rm-dir-recursive" => format!("remove the directory tree {targets}"),
            "service-disable" => format!("disable and stop {targets}"),
            "service-remove" => format!("remove the unit file {targets}"),
            "remove-dropin" => format!("remove the drop-in {targets}"),
            "restore-enabled" => format!("enable {targets} again (it was enabled before)"),
            "remove-managed-block" => {
                "strip the managed block from ~/.profile and ~/.bashrc (when no layer is left)"
                    .to_string()
            }
            "remove-envd-file" => format!("remove the env.d file {targets}"),
            "remove-repo-file" => format!("remove the repository file {targets}"),
            "copr-disable" => format!("disable the copr {targets}"),
            other => format!("{other} {targets}"),
        };
        if !out.contains(&text) {
            out.push(text);
        }
    }
    for (key, who) in [("created_dirs", ""), ("user_created_dirs", " as the user")] {
        let dirs = rec.extra.get(key).map(list).unwrap_or_default();
        if !dirs.is_empty() {
            out.push(format!(
                "remove the directories it made{who}, if empty: {dirs}"
            ));
        }
    }
    out
}

/// What a teardown did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeardownReport {
    /// Deploy ids removed.
    pub deploy_ids: Vec<String>,
    /// Layers undone.
    pub undone: Vec<String>,
    /// Layers released (still used elsewhere).
    pub released: Vec<String>,
    /// Layers whose undo failed, with the status.
    pub failed: Vec<(String, i64)>,
    /// Nothing was recorded for the name.
    pub nothing_recorded: bool,
    /// The dry-run plan, when asked.
    pub plan: Option<TeardownPlan>,
    /// Which script did the work.
    pub script: Option<TeardownScript>,
}

/// Which teardown script ran on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeardownScript {
    /// The bundle runtime's own `undo.sh`, kept in root's ledger by `run.sh`: the same code that
    /// wrote the records.
    Ledger,
}

/// Why a teardown failed.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    /// No connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A command could not run.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Reading the ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Another run holds the lock.
    #[error("the ledger on {target} is locked by another run")]
    Locked { target: String },
    /// Records name the deploy, but root's ledger holds no `undo.sh` to tear it down with.
    #[error("the ledger of `{user}` on {target} records the deploy but holds no `undo.sh` (`{dir}/undo.sh`); run the bundle's own `undo.sh --user {user}` on the target")]
    NoUndoScript {
        target: String,
        /// The account.
        user: String,
        /// Root's ledger directory.
        dir: String,
    },
    /// Some undo scripts failed.
    #[error("teardown on {target} is incomplete: {}; their records are kept so `ov deploy del` can retry", .failed.iter().map(|(l, s)| format!("`{l}` (status {s})")).collect::<Vec<_>>().join(", "))]
    Incomplete {
        target: String,
        /// Layers and statuses.
        failed: Vec<(String, i64)>,
        /// What did succeed.
        report: Box<TeardownReport>,
    },
    /// The script failed otherwise.
    #[error("teardown on {target} failed with status {status}: {stderr}")]
    Failed {
        target: String,
        status: i32,
        /// stderr tail.
        stderr: String,
    },
    /// Saving the state failed.
    #[error(transparent)]
    State(#[from] StateError),
}

impl HasExit for TeardownError {
    fn exit(&self) -> Exit {
        match self {
            TeardownError::Connect(e) => e.exit(),
            TeardownError::Exec(e) => e.exit(),
            TeardownError::Ledger(e) => e.exit(),
            TeardownError::Locked { .. } => Exit::Locked,
            TeardownError::NoUndoScript { .. } => Exit::InvalidInput,
            TeardownError::Incomplete { .. } => Exit::RemoteStep,
            TeardownError::Failed { .. } => Exit::Other,
            TeardownError::State(e) => e.exit(),
        }
    }
}

/// Compute the plan from a ledger. `None` when nothing is recorded for the name/id; an error when
/// a deploy id cannot be passed to the target (it holds a NUL byte).
pub fn plan(
    ledger: &Ledger,
    user: &str,
    opts: &TeardownOptions,
) -> Result<Option<TeardownPlan>, TeardownError> {
    let ids: Vec<String> = match &opts.deploy_id {
        Some(id) => vec![id.clone()],
        None => ledger
            .deploys_for(&opts.name)
            .iter()
            .map(|d| d.deploy_id.clone())
            .collect(),
    };
    let ids: Vec<String> = ids
        .into_iter()
        .filter(|id| {
            ledger.deploys.contains_key(id)
                || ledger
                    .layers
                    .values()
                    .any(|r| r.deployed_by.iter().any(|x| x == id))
        })
        .collect();
    if ids.is_empty() {
        return Ok(None);
    }

    // Layers to visit, in reverse install order: the deploy records' order first (latest
    // deploy's layers first), then layers that name a deploy but are missing from its record
    // (a run that failed before writing it).
    let mut order: Vec<String> = Vec::new();
    for id in &ids {
        let mut ls: Vec<String> = ledger
            .deploys
            .get(id)
            .map(|d| d.layers.clone())
            .unwrap_or_default();
        for r in ledger.layers.values() {
            if r.deployed_by.iter().any(|x| x == id) && !ls.contains(&r.layer) {
                ls.push(r.layer.clone());
            }
        }
        for l in ls.into_iter().rev() {
            if !order.contains(&l) {
                order.push(l);
            }
        }
    }

    let mut actions = Vec::new();
    let mut reverse = std::collections::BTreeMap::new();
    for layer in &order {
        let Some(rec) = ledger.layers.get(layer) else {
            continue;
        };
        if !rec.deployed_by.iter().any(|x| ids.contains(x)) {
            continue;
        }
        let remaining: Vec<String> = rec
            .deployed_by
            .iter()
            .filter(|x| !ids.contains(x))
            .cloned()
            .collect();
        if remaining.is_empty() {
            reverse.insert(layer.clone(), reverse_ops_text(rec));
            actions.push(LayerAction::Undo {
                layer: layer.clone(),
            });
        } else {
            actions.push(LayerAction::Release {
                layer: layer.clone(),
                remaining,
            });
        }
    }
    let script = ids
        .iter()
        .map(|id| join(&undo_argv(ledger, user, id, opts.no_wait_lock)))
        .collect::<Result<Vec<_>, _>>()?
        .join("\n");
    Ok(Some(TeardownPlan {
        deploy_ids: ids,
        actions,
        script,
        reverse,
    }))
}

/// The command that tears deploy `id` down: the ledger's own `undo.sh`, as root.
fn undo_argv(ledger: &Ledger, user: &str, id: &str, no_wait: bool) -> Vec<String> {
    let mut argv = vec![
        "bash".to_string(),
        format!("{}/undo.sh", ledger.dir),
        "--deploy-id".into(),
        id.to_string(),
        "--user".into(),
        user.to_string(),
    ];
    if no_wait {
        argv.push("--no-wait".into());
    }
    argv
}

/// How many lines of the current layer's undo output wait to be shown if it fails.
const HELD_LINES: usize = 200;

struct TeardownSink<'a> {
    progress: &'a mut dyn Progress,
    report: TeardownReport,
    /// The plan, for the words of each layer's line (`what`: what its undo reversed, or the
    /// deploys that keep it).
    plan: TeardownPlan,
    /// Pass every output line on at once (`-v`); otherwise the current layer's lines wait here
    /// and are shown only if its undo fails.
    verbose: bool,
    held: Vec<(Stream, String)>,
}

impl Sink for TeardownSink<'_> {
    fn line(&mut self, stream: Stream, line: &str) {
        if stream == Stream::Stdout {
            if let Some(mut pl) = ProgressLine::parse(line) {
                let layer = pl.get("layer").unwrap_or_default().to_string();
                let what = match pl.get("action") {
                    Some("removed") if pl.event == "undo-layer" => {
                        self.plan.reverse.get(&layer).map(|ops| ops.join("; "))
                    }
                    Some("release") if pl.event == "undo-layer" => {
                        self.plan.actions.iter().find_map(|a| match a {
                            LayerAction::Release {
                                layer: l,
                                remaining,
                            } if *l == layer => Some(remaining.join(", ")),
                            _ => None,
                        })
                    }
                    _ => None,
                };
                // Before any `msg=` (the protocol keeps it last).
                if let Some(what) = what.filter(|w| !w.is_empty()) {
                    let at = pl
                        .fields
                        .iter()
                        .position(|(k, _)| k == "msg")
                        .unwrap_or(pl.fields.len());
                    pl.fields.insert(at, ("what".into(), what));
                }
                match (pl.event.as_str(), pl.get("action")) {
                    ("undo-layer", Some("removed")) => self.report.undone.push(layer),
                    ("undo-layer", Some("release")) => self.report.released.push(layer),
                    ("undo-fail", _) => {
                        let st = pl.get("status").and_then(|s| s.parse().ok()).unwrap_or(-1);
                        self.report.failed.push((layer, st));
                    }
                    _ => {}
                }
                match pl.event.as_str() {
                    "undo-fail" => {
                        for (stream, line) in std::mem::take(&mut self.held) {
                            self.progress.event(&Event::Output { stream, line });
                        }
                    }
                    "undo-layer" => self.held.clear(),
                    _ => {}
                }
                self.progress.event(&Event::Run(RunEvent::from_line(pl)));
                return;
            }
        }
        if self.verbose {
            self.progress.event(&Event::Output {
                stream,
                line: line.to_string(),
            });
        } else {
            // The end of a long output is what explains a failure.
            if self.held.len() == HELD_LINES {
                self.held.remove(0);
            }
            self.held.push((stream, line.to_string()));
        }
    }
}

/// Tear down over an open executor.
pub fn teardown_with(
    exec: &mut dyn Executor,
    opts: &TeardownOptions,
    progress: &mut dyn Progress,
) -> Result<TeardownReport, TeardownError> {
    let target = exec.describe();
    let user = opts
        .user
        .clone()
        .unwrap_or_else(|| exec.login_user().to_string());
    let ledger = read_ledger(exec, &user)?;
    let Some(plan) = plan(&ledger, &user, opts)? else {
        progress.event(&Event::Note {
            msg: format!(
                "no deploy recorded for `{}` on {target} (already torn down?)",
                opts.name
            ),
        });
        return Ok(TeardownReport {
            nothing_recorded: true,
            ..Default::default()
        });
    };
    if opts.dry_run {
        return Ok(TeardownReport {
            deploy_ids: plan.deploy_ids.clone(),
            plan: Some(plan),
            ..Default::default()
        });
    }
    let mut sink = TeardownSink {
        progress,
        report: TeardownReport {
            deploy_ids: plan.deploy_ids.clone(),
            ..Default::default()
        },
        plan: plan.clone(),
        verbose: opts.verbose,
        held: Vec::new(),
    };
    if !ledger.has_undo_script {
        return Err(TeardownError::NoUndoScript {
            target,
            user,
            dir: ledger.dir.clone(),
        });
    }
    let mut status = Some(0);
    let mut stderr = String::new();
    sink.report.script = Some(TeardownScript::Ledger);
    for id in &plan.deploy_ids {
        let out = exec.exec(
            Request {
                argv: undo_argv(&ledger, &user, id, opts.no_wait_lock),
                who: As::Root,
                stdin: Input::Null,
                capture_stdout: false,
            },
            &mut sink,
        )?;
        status = out.status;
        stderr = out.stderr_text();
        if status != Some(0) {
            for (stream, line) in std::mem::take(&mut sink.held) {
                sink.progress.event(&Event::Output { stream, line });
            }
            break;
        }
    }
    let report = sink.report;
    match status {
        Some(0) => Ok(report),
        Some(5) => Err(TeardownError::Locked { target }),
        Some(7) => Err(TeardownError::Incomplete {
            target,
            failed: report.failed.clone(),
            report: Box::new(report),
        }),
        other => Err(TeardownError::Failed {
            target,
            status: other.unwrap_or(-1),
            stderr,
        }),
    }
}

/// `ov deploy del` over SSH: connect, tear down, close, then update (or, with `purge`, remove)
/// the deploy.yml entry. State is only touched when the teardown completed.
pub fn teardown(
    target: Target,
    wait: WaitOptions,
    opts: &TeardownOptions,
    progress: &mut dyn Progress,
) -> Result<TeardownReport, TeardownError> {
    let mut exec = SshExecutor::connect(target, wait, progress)?;
    let result = teardown_with(&mut exec, opts, progress);
    let closed = exec.close();
    let report = result?;
    if let Err(e) = closed {
        progress.event(&Event::Note {
            msg: format!("warning: {e}"),
        });
    }
    if let (Some(st), false) = (&opts.state, opts.dry_run) {
        if opts.purge {
            remove_entry(&st.file, &st.key)?;
        } else if load_vm_state(&st.file, &st.key)?.is_some() {
            save_vm_state(
                &st.file,
                &st.key,
                &st.vm,
                &VmState {
                    applied_layers: Some(Vec::new()),
                    ..Default::default()
                },
            )?;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::ledger::parse_dump;

    fn ledger() -> Ledger {
        parse_dump(
            "::ov-ledger:: begin
::ov-ledger:: home /home/u
::ov-ledger:: dir /var/lib/overthink/installed/u
::ov-ledger:: file deploys/d1.json
::ov-ledger:: l {\"deploy_id\":\"d1\",\"target\":\"vm:x\",\"layers\":[\"a\",\"b\",\"c\"]}
::ov-ledger:: file layers/a.json
::ov-ledger:: l {\"layer\":\"a\",\"digest\":\"1\",\"deployed_by\":[\"d1\",\"d2\"],\"steps\":[1]}
::ov-ledger:: file layers/b.json
::ov-ledger:: l {\"layer\":\"b\",\"digest\":\"2\",\"deployed_by\":[\"d1\"]}
::ov-ledger:: file layers/c.json
::ov-ledger:: l {\"layer\":\"c\",\"digest\":\"3\",\"deployed_by\":[\"d1\"]}
::ov-ledger:: end
",
        )
        .expect("ledger")
    }

    #[test]
    fn reverse_order_and_refcounts() {
        let opts = TeardownOptions {
            name: "vm:x".into(),
            ..Default::default()
        };
        let p = plan(&ledger(), "u", &opts)
            .expect("quotable")
            .expect("plan");
        assert_eq!(p.deploy_ids, vec!["d1".to_string()]);
        assert_eq!(
            p.actions,
            vec![
                LayerAction::Undo { layer: "c".into() },
                LayerAction::Undo { layer: "b".into() },
                LayerAction::Release {
                    layer: "a".into(),
                    remaining: vec!["d2".into()]
                },
            ]
        );
        // One teardown: the ledger's own undo.sh, as root, for the deploy.
        assert_eq!(
            p.script,
            "bash /var/lib/overthink/installed/u/undo.sh --deploy-id d1 --user u"
        );
    }

    #[test]
    fn nothing_recorded() {
        let opts = TeardownOptions {
            name: "vm:other".into(),
            ..Default::default()
        };
        assert_eq!(plan(&ledger(), "u", &opts).expect("quotable"), None);
    }
}
