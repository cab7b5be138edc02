//! Stage `render`, a layer's undo script: the reverse ops of its runnable steps, last to first,
//! carried out from the run-time facts the install scripts recorded.

use std::collections::BTreeMap;

use minijinja::context;
use minijinja::value::Value;

use super::layer::LayerRenderer;
use super::{skip_reason, RenderError};
use crate::plan::{
    download_extract, Action, BuilderKind, Phase, ReverseKind, ReverseOp, Scope, Step, TaskVerb,
};

/// The template of a layer's undo script.
const T_UNDO: &str = "steps/undo.sh.j2";

impl<'a> LayerRenderer<'a> {
    pub(super) fn undo(&self) -> Result<String, RenderError> {
        let mut ops: Vec<Value> = Vec::new();
        let mut repo_setup = false;
        let runnable: Vec<&Step> = self
            .lp
            .steps
            .iter()
            .filter(|s| skip_reason(self.plan, s).is_none())
            .collect();
        for step in runnable.iter().rev() {
            // Last to first, except that a unit is disabled before its file goes, and a unit that
            // was enabled before is re-enabled last (the original ran these the other way round).
            let mut own = step.reverse.clone();
            own.extend(implied_reverse(step));
            let mut reverse: Vec<&ReverseOp> = own.iter().rev().collect();
            reverse.sort_by_key(|op| match op.kind {
                ReverseKind::ServiceDisable => 0,
                ReverseKind::RestoreEnabled => 2,
                _ => 1,
            });
            for op in reverse {
                ops.push(self.undo_op(op)?);
            }
            let sets_up_repos = matches!(
                &step.action,
                Action::SystemPackages { .. } if step.phase == Phase::Prepare
            );
            if sets_up_repos && !repo_setup {
                repo_setup = true;
                ops.push(context! {
                    kind => "repo-setup",
                    desc => "remove repository set-up (files, keys, sections, PPAs)",
                    scope => "system", format => "", targets => Vec::<String>::new(),
                });
            }
        }
        self.tpl(T_UNDO, context! { layer => &self.lp.name, ops })
    }

    fn undo_op(&self, op: &ReverseOp) -> Result<Value, RenderError> {
        let kind = serde_json::to_value(op.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let path_op = matches!(
            op.kind,
            ReverseKind::RmFileSystem
                | ReverseKind::RmFileUser
                | ReverseKind::RmDirRecursive
                | ReverseKind::ServiceRemove
                | ReverseKind::RemoveDropin
                | ReverseKind::RemoveEnvdFile
                | ReverseKind::RemoveRepoFile
        );
        for t in &op.targets {
            if path_op {
                self.ck.path(&format!("reverse op `{kind}` target"), t)?;
            } else if op.kind == ReverseKind::ServiceDisable
                || op.kind == ReverseKind::RestoreEnabled
            {
                self.ck.unit(&format!("reverse op `{kind}` target"), t)?;
            } else {
                self.ck.operand(&format!("reverse op `{kind}` target"), t)?;
            }
        }
        let format = op.format.clone().unwrap_or_default();
        if op.kind == ReverseKind::PackageRemove
            && !["pac", "deb", "rpm", "aur"].contains(&format.as_str())
        {
            return Err(self.ck.invalid(
                "reverse op `package-remove` format",
                &format,
                "is not pac, deb or rpm",
            ));
        }
        let scope = match (op.kind, op.scope) {
            (ReverseKind::RmFileUser | ReverseKind::RemoveEnvdFile, _) => "user",
            (_, Scope::System) => "system",
            _ => "user",
        };
        let desc = format!("{kind} {}", op.targets.join(" "))
            .trim_end()
            .to_string();
        Ok(context! { kind, desc, scope, format, targets => &op.targets })
    }
}

/// Reverse ops the scripts can carry out from their run-time facts although the plan has none:
/// a builder's recorded installs (cargo crates are only known after the build) and what an
/// archive download extracted (without `uninstall:`, the plan cannot name the files).
fn implied_reverse(step: &Step) -> Vec<ReverseOp> {
    let has = |kinds: &[ReverseKind]| step.reverse.iter().any(|op| kinds.contains(&op.kind));
    let op = |kind, scope, targets: Vec<String>| ReverseOp {
        kind,
        format: None,
        targets,
        scope,
        extra: BTreeMap::new(),
    };
    match &step.action {
        Action::Builder { builder, .. } => {
            let kind = match builder {
                BuilderKind::Cargo => ReverseKind::CargoUninstall,
                BuilderKind::Npm => ReverseKind::NpmUninstallG,
                BuilderKind::Pixi => ReverseKind::PixiEnvRemove,
                BuilderKind::Aur => return Vec::new(),
            };
            if has(&[kind]) {
                Vec::new()
            } else {
                vec![op(kind, Scope::User, Vec::new())]
            }
        }
        Action::Task { task, .. } => match &task.verb {
            TaskVerb::Download {
                url,
                to: Some(to),
                extract,
                ..
            } => {
                let archive = !matches!(
                    download_extract(url, extract.as_deref()),
                    Some("none" | "sh")
                );
                if archive && !has(&[ReverseKind::RmFileSystem, ReverseKind::RmFileUser]) {
                    let kind = if step.scope == Scope::System {
                        ReverseKind::RmFileSystem
                    } else {
                        ReverseKind::RmFileUser
                    };
                    vec![op(kind, step.scope, vec![to.clone()])]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}
