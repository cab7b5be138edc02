//! Stage `runner`, teardown (`ov deploy del`): undo a deploy on the target from its ledger alone
//! — layers in reverse install order; a layer another deploy still uses only loses this deploy
//! from its `deployed_by`; an unused layer runs its stored `undo.sh` and loses its records; the
//! shell managed block goes when no layer is left.
//! Invariants: runs under the ledger lock; refuses (changing nothing) when a layer record changed
//! since we read it; a failed undo keeps that layer's records so a second `del` can retry; every
//! value in the generated script is quoted.
//!
//! When the ledger holds the bundle runtime's own `undo.sh` (run.sh keeps a copy), that script
//! does the work — it is the code that wrote the records; otherwise `ov` generates an equivalent
//! script from the records it read. Either way: one channel to read, one per deploy to undo.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;

use crate::executor::{quote, As, ExecError, Executor, Input, Request, Sink};
use crate::exit::{Exit, HasExit};
use crate::ledger::{read_ledger, Ledger, LedgerError};
use crate::progress::{Event, Progress, ProgressLine, RunEvent, Stream};
use crate::push::StateTarget;
use crate::ssh::SshExecutor;
use crate::state::{load_vm_state, remove_entry, save_vm_state, StateError, VmState};
use crate::target::Target;
use crate::wait::{ConnectError, WaitOptions};

/// The fence lines of the shell managed block (docs/bundle-runtime.md, ov-semantics §4.3).
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
}

/// What happens to one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerAction {
    /// Still used by other deploys: drop our id only.
    Release {
        /// Layer.
        layer: String,
        /// The deploys that keep it.
        remaining: Vec<String>,
    },
    /// No other user: run its undo script and remove its records.
    Undo {
        /// Layer.
        layer: String,
    },
}

/// The computed teardown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeardownPlan {
    /// Deploy ids being removed.
    pub deploy_ids: Vec<String>,
    /// Actions in execution order.
    pub actions: Vec<LayerAction>,
    /// The script that performs them (as root).
    pub script: String,
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
    /// The bundle runtime's own `undo.sh`, kept in the ledger by `run.sh` (preferred: it is the
    /// same code that wrote the records).
    Ledger,
    /// The script `ov` generates from the records (ledgers without a stored `undo.sh`).
    Generated,
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
    Locked {
        /// Target.
        target: String,
    },
    /// The ledger changed between reading and tearing down.
    #[error("the ledger on {target} changed while preparing the teardown (another run?); nothing was changed — run `ov deploy del` again")]
    Conflict {
        /// Target.
        target: String,
    },
    /// Some undo scripts failed.
    #[error("teardown on {target} is incomplete: {}; their records are kept so `ov deploy del` can retry", .failed.iter().map(|(l, s)| format!("`{l}` (status {s})")).collect::<Vec<_>>().join(", "))]
    Incomplete {
        /// Target.
        target: String,
        /// Layers and statuses.
        failed: Vec<(String, i64)>,
        /// What did succeed.
        report: Box<TeardownReport>,
    },
    /// The script failed otherwise.
    #[error("teardown on {target} failed with status {status}: {stderr}")]
    Failed {
        /// Target.
        target: String,
        /// Status.
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
            TeardownError::Conflict { .. } => Exit::Other,
            TeardownError::Incomplete { .. } => Exit::RemoteStep,
            TeardownError::Failed { .. } => Exit::Other,
            TeardownError::State(e) => e.exit(),
        }
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Compute the plan from a ledger. `None` when nothing is recorded for the name/id.
pub fn plan(ledger: &Ledger, user: &str, opts: &TeardownOptions) -> Option<TeardownPlan> {
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
        return None;
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
    let mut checks: Vec<(String, String)> = Vec::new();
    let mut releases: Vec<(String, String)> = Vec::new();
    for layer in &order {
        let Some(rec) = ledger.layers.get(layer) else {
            continue;
        };
        if !rec.deployed_by.iter().any(|x| ids.contains(x)) {
            continue;
        }
        let text = ledger.layer_texts.get(layer).cloned().unwrap_or_default();
        checks.push((layer.clone(), sha256_hex(&text)));
        let remaining: Vec<String> = rec
            .deployed_by
            .iter()
            .filter(|x| !ids.contains(x))
            .cloned()
            .collect();
        if remaining.is_empty() {
            actions.push(LayerAction::Undo {
                layer: layer.clone(),
            });
        } else {
            // Rewrite the record from its own JSON so fields we do not know survive.
            let mut v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({}));
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "deployed_by".into(),
                    serde_json::Value::Array(
                        remaining
                            .iter()
                            .map(|s| serde_json::Value::String(s.clone()))
                            .collect(),
                    ),
                );
            }
            let json = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
            releases.push((layer.clone(), json));
            actions.push(LayerAction::Release {
                layer: layer.clone(),
                remaining,
            });
        }
    }
    let deploy_of = |layer: &str| {
        ids.iter()
            .find(|id| {
                ledger
                    .layers
                    .get(layer)
                    .is_some_and(|r| r.deployed_by.contains(id))
            })
            .cloned()
            .unwrap_or_default()
    };
    let script = render_script(
        user,
        &ids,
        &actions,
        &checks,
        &releases,
        opts.no_wait_lock,
        &opts.name,
        &deploy_of,
    );
    Some(TeardownPlan {
        deploy_ids: ids,
        actions,
        script,
    })
}

#[allow(clippy::too_many_arguments)]
fn render_script(
    user: &str,
    ids: &[String],
    actions: &[LayerAction],
    checks: &[(String, String)],
    releases: &[(String, String)],
    no_wait: bool,
    name: &str,
    deploy_of: &dyn Fn(&str) -> String,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"# ov deploy del: teardown generated from the target's ledger.
set -u
user={user}
pw=$(getent passwd "$user") || {{ echo "no user $user" >&2; exit 3; }}
home=$(printf '%s' "$pw" | cut -d: -f6)
uid=$(printf '%s' "$pw" | cut -d: -f3)
gid=$(printf '%s' "$pw" | cut -d: -f4)
ledger=$home/.config/overthink/installed
[ -d "$ledger" ] || {{ echo "no ledger at $ledger" >&2; exit 3; }}
exec 9>>"$ledger/.lock"
if [ {no_wait} = 1 ]; then flock -n 9 || exit 5; else flock 9 || exit 5; fi
fail=0
check() {{
  local sum
  sum=$(sha256sum < "$ledger/layers/$1.json" 2>/dev/null) || sum=missing
  [ "${{sum%% *}}" = "$2" ] || {{ printf '::ov:: teardown-conflict layer=%s\n' "$1"; exit 9; }}
}}
release() {{
  local f=$ledger/layers/$1.json
  printf '%s\n' "$2" > "$f.ov-tmp" && chown "$uid:$gid" "$f.ov-tmp" && mv -f -- "$f.ov-tmp" "$f" || {{
    printf '::ov:: teardown-fail layer=%s status=1\n' "$1"; fail=1; return; }}
  printf '::ov:: teardown-release layer=%s\n' "$1"
}}
undo() {{
  local st=0
  printf '::ov:: teardown-undo layer=%s\n' "$1"
  if [ -f "$ledger/layers/$1.undo.sh" ]; then
    OV_BUNDLE=$ledger OV_STATE=$ledger/layers/$1.d OV_LAYER=$1 OV_DEPLOY={name} OV_DEPLOY_ID=$2 \
    OV_USER=$user OV_UID=$uid OV_GID=$gid OV_HOME=$home OV_LEDGER=$ledger \
    BUILD_ARCH=$(uname -m) DEBIAN_FRONTEND=noninteractive \
      bash "$ledger/layers/$1.undo.sh" </dev/null || st=$?
  fi
  if [ "$st" -ne 0 ]; then printf '::ov:: teardown-fail layer=%s status=%s\n' "$1" "$st"; fail=1; return; fi
  rm -f -- "$home/.config/overthink/env.d/$1.env"
  rm -rf -- "$ledger/layers/$1.json" "$ledger/layers/$1.undo.sh" "$ledger/layers/$1.d"
  printf '::ov:: teardown-done layer=%s\n' "$1"
}}
strip_block() {{
  local f=$1 tmp=$1.ov-tmp inside=0 changed=0 line
  [ -f "$f" ] || return 0
  : > "$tmp" || return 1
  while IFS= read -r line || [ -n "$line" ]; do
    if [ "$inside" = 0 ] && [ "$line" = {begin} ]; then inside=1; changed=1; continue; fi
    if [ "$inside" = 1 ]; then [ "$line" = {end} ] && inside=0; continue; fi
    printf '%s\n' "$line" >> "$tmp"
  done < "$f"
  # cat into the file (not mv): keeps its owner and mode.
  if [ "$changed" = 1 ]; then cat "$tmp" > "$f"; printf '::ov:: teardown-strip file=%s\n' "$f"; fi
  rm -f -- "$tmp"
}}"#,
        user = quote(user),
        no_wait = if no_wait { 1 } else { 0 },
        name = quote(name),
        begin = quote(BLOCK_BEGIN),
        end = quote(BLOCK_END),
    );
    let _ = writeln!(
        s,
        "# Refuse before changing anything if a record moved under us."
    );
    for (layer, sum) in checks {
        let _ = writeln!(s, "check {} {}", quote(layer), quote(sum));
    }
    let _ = writeln!(
        s,
        "printf '::ov:: teardown-begin deploys=%s layers=%s\\n' {} {}",
        quote(&ids.join(",")),
        actions.len()
    );
    for a in actions {
        match a {
            LayerAction::Undo { layer } => {
                let _ = writeln!(s, "undo {} {}", quote(layer), quote(&deploy_of(layer)));
            }
            LayerAction::Release { layer, .. } => {
                let json = releases
                    .iter()
                    .find(|(l, _)| l == layer)
                    .map(|(_, j)| j.as_str())
                    .unwrap_or("{}");
                let _ = writeln!(s, "release {} {}", quote(layer), quote(json));
            }
        }
    }
    let _ = writeln!(s, "if [ \"$fail\" = 0 ]; then");
    for id in ids {
        let _ = writeln!(s, "  rm -f -- \"$ledger/deploys/\"{}.json", quote(id));
    }
    let _ = writeln!(
        s,
        r#"fi
if ! compgen -G "$ledger/layers/*.json" >/dev/null; then
  for f in "$home/.profile" "$home/.bashrc" "$home/.zshenv" "$home/.config/fish/conf.d/overthink.fish"; do
    strip_block "$f"
  done
fi
if [ "$fail" = 0 ]; then echo '::ov:: teardown-end result=ok'; else echo '::ov:: teardown-end result=incomplete'; exit 7; fi"#
    );
    s
}

struct TeardownSink<'a> {
    progress: &'a mut dyn Progress,
    report: TeardownReport,
}

impl Sink for TeardownSink<'_> {
    fn line(&mut self, stream: Stream, line: &str) {
        if stream == Stream::Stdout {
            if let Some(pl) = ProgressLine::parse(line) {
                let layer = pl.get("layer").unwrap_or_default().to_string();
                match (pl.event.as_str(), pl.get("action")) {
                    ("teardown-done", _) | ("undo-layer", Some("removed")) => {
                        self.report.undone.push(layer)
                    }
                    ("teardown-release", _) | ("undo-layer", Some("release")) => {
                        self.report.released.push(layer)
                    }
                    ("teardown-fail", _) | ("undo-fail", _) => {
                        let st = pl.get("status").and_then(|s| s.parse().ok()).unwrap_or(-1);
                        self.report.failed.push((layer, st));
                    }
                    _ => {}
                }
                self.progress.event(&Event::Run(RunEvent::from_line(pl)));
                return;
            }
        }
        self.progress.event(&Event::Output {
            stream,
            line: line.to_string(),
        });
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
    let Some(plan) = plan(&ledger, &user, opts) else {
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
    };
    // The runtime's own undo.sh handles deploys it recorded (16-hex ids with a deploy record);
    // anything else goes through the generated script.
    let use_ledger_script = ledger.has_undo_script
        && plan.deploy_ids.iter().all(|id| {
            id.len() == 16
                && id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                && ledger.deploys.contains_key(id)
        });
    let mut status = Some(0);
    let mut stderr = String::new();
    if use_ledger_script {
        sink.report.script = Some(TeardownScript::Ledger);
        for id in &plan.deploy_ids {
            let mut argv = vec![
                "bash".to_string(),
                format!("{}/undo.sh", ledger.dir),
                "--deploy-id".into(),
                id.clone(),
                "--user".into(),
                user.clone(),
            ];
            if opts.no_wait_lock {
                argv.push("--no-wait".into());
            }
            let out = exec.exec(
                Request {
                    argv,
                    who: As::Root,
                    stdin: Input::Null,
                    capture_stdout: false,
                },
                &mut sink,
            )?;
            status = out.status;
            stderr = out.stderr_text();
            if status != Some(0) {
                break;
            }
        }
    } else {
        sink.report.script = Some(TeardownScript::Generated);
        let out = exec.exec(
            Request {
                argv: vec!["bash".into(), "-s".into()],
                who: As::Root,
                stdin: Input::Bytes(plan.script.as_bytes()),
                capture_stdout: false,
            },
            &mut sink,
        )?;
        status = out.status;
        stderr = out.stderr_text();
    }
    let report = sink.report;
    match status {
        Some(0) => Ok(report),
        Some(5) => Err(TeardownError::Locked { target }),
        Some(9) => Err(TeardownError::Conflict { target }),
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
    use crate::ledger::parse_framed;

    fn ledger() -> Ledger {
        let mut b = Vec::new();
        b.extend_from_slice(b"home\0/home/u\0");
        b.extend_from_slice(
            b"deploys/d1.json\0{\"deploy_id\":\"d1\",\"target\":\"vm:x\",\"layers\":[\"a\",\"b\",\"c\"]}\0",
        );
        b.extend_from_slice(b"layers/a.json\0{\"layer\":\"a\",\"digest\":\"1\",\"deployed_by\":[\"d1\",\"d2\"],\"steps\":[1]}\0");
        b.extend_from_slice(
            b"layers/b.json\0{\"layer\":\"b\",\"digest\":\"2\",\"deployed_by\":[\"d1\"]}\0",
        );
        b.extend_from_slice(
            b"layers/c.json\0{\"layer\":\"c\",\"digest\":\"3\",\"deployed_by\":[\"d1\"]}\0",
        );
        parse_framed(&b).expect("ledger")
    }

    #[test]
    fn reverse_order_and_refcounts() {
        let opts = TeardownOptions {
            name: "vm:x".into(),
            ..Default::default()
        };
        let p = plan(&ledger(), "u", &opts).expect("plan");
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
        // The released record keeps its other fields.
        assert!(p.script.contains("\"steps\": ["), "{}", p.script);
        let st = std::process::Command::new("bash")
            .args(["-n", "-c", &p.script])
            .status()
            .expect("bash");
        assert!(st.success());
    }

    #[test]
    fn nothing_recorded() {
        let opts = TeardownOptions {
            name: "vm:other".into(),
            ..Default::default()
        };
        assert_eq!(plan(&ledger(), "u", &opts), None);
    }
}
