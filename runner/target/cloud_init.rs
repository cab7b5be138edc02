//! Stage `runner`, cloud-init on the target: wait for it with its own `--wait`, bounded by our
//! deadline (the remote side runs under `timeout`), and surviving the sshd restart cloud-init
//! may cause by reconnecting.
//! Invariant: the wait never exceeds its deadline; errors from this boot stop the push unless
//! the user said to ignore them.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::exit::{Exit, HasExit};
use crate::ssh::exec::{As, ExecError, Executor, NullSink, Request};
use crate::ui::progress::{Event, Progress};

/// How to treat cloud-init on the target.
#[derive(Debug, Clone)]
pub struct CloudInitOptions {
    /// Wait for it at all (`--no-wait-cloud-init` turns this off).
    pub wait: bool,
    /// Our own deadline (cloud-init's `--wait` has none).
    pub deadline: Duration,
    /// Go on even when cloud-init reports errors (`--ignore-cloud-init-errors`).
    pub ignore_errors: bool,
    /// The program to ask (tests point this at a stand-in).
    pub program: String,
}

impl Default for CloudInitOptions {
    fn default() -> Self {
        CloudInitOptions {
            wait: true,
            deadline: Duration::from_secs(600),
            ignore_errors: false,
            program: "cloud-init".into(),
        }
    }
}

/// What cloud-init said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudInitOutcome {
    /// Not installed on the target.
    Absent,
    /// Not asked (`--no-wait-cloud-init`).
    Skipped,
    /// Finished cleanly.
    Done,
    /// Finished with recoverable errors (shown, not fatal).
    Degraded(Vec<String>),
    /// Disabled on the target.
    Disabled,
    /// Finished with errors, and we were told to ignore them.
    IgnoredErrors(Vec<String>),
}

/// cloud-init did not finish well.
#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    /// It reported errors.
    #[error("cloud-init on {target} finished with errors (use `--ignore-cloud-init-errors` to go on anyway):\n  {}", errors.join("\n  "))]
    Failed { target: String, errors: Vec<String> },
    /// It did not finish before our deadline.
    #[error("cloud-init on {target} did not finish within {secs}s")]
    Timeout { target: String, secs: u64 },
    /// Its answer made no sense.
    #[error("cannot understand `cloud-init status` on {target} (status {status}): {output}")]
    Unreadable {
        target: String,
        status: i32,
        output: String,
    },
    /// The connection failed for good.
    #[error(transparent)]
    Exec(#[from] ExecError),
}

impl HasExit for CloudInitError {
    fn exit(&self) -> Exit {
        match self {
            CloudInitError::Exec(e) => e.exit(),
            _ => Exit::CloudInit,
        }
    }
}

/// The parsed answer of one `cloud-init status` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// `status` (`done`, `error`, `disabled`, `running`, …).
    pub status: String,
    /// Fatal errors.
    pub errors: Vec<String>,
    /// Recoverable errors, as `LEVEL: message`.
    pub recoverable: Vec<String>,
}

/// Parse `cloud-init status --format json` output; `None` when it is not JSON.
pub fn parse_status_json(text: &str) -> Option<StatusReport> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    let obj = v.as_object()?;
    let status = obj
        .get("extended_status")
        .or_else(|| obj.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let strings = |v: Option<&Value>| -> Vec<String> {
        match v {
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect(),
            Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
            _ => Vec::new(),
        }
    };
    let mut errors = Vec::new();
    for e in strings(obj.get("errors")) {
        push_once(&mut errors, e);
    }
    let mut recoverable = Vec::new();
    if let Some(Value::Object(levels)) = obj.get("recoverable_errors") {
        for (level, msgs) in levels {
            for m in strings(Some(msgs)) {
                // cloud-init 25.1 lists a warning once per boot stage that logged it (a schema
                // warning comes twice); the operator needs each once.
                push_once(&mut recoverable, format!("{level}: {m}"));
            }
        }
    }
    Some(StatusReport {
        status,
        errors,
        recoverable,
    })
}

/// Append `item` unless `list` already holds it (keeps first-seen order).
fn push_once(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Parse plain `cloud-init status` output (`status: done`).
pub fn parse_status_plain(text: &str) -> Option<StatusReport> {
    let status = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("status:"))?
        .trim()
        .to_string();
    let errors = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ").map(str::to_string))
        .collect();
    Some(StatusReport {
        status,
        errors,
        recoverable: Vec::new(),
    })
}

/// Decide from cloud-init's exit status and report. 0 done, 2 degraded, 1 error; `disabled` is a
/// note — but only with status 0 or 2: cloud-init disabled after a boot whose run failed (no
/// reboot since) says `error - disabled` and exits 1, and those errors are this boot's.
pub fn decide(
    status: i32,
    report: &StatusReport,
    opts: &CloudInitOptions,
    target: &str,
) -> Result<CloudInitOutcome, CloudInitError> {
    match status {
        0 | 2 if report.status.contains("disabled") => Ok(CloudInitOutcome::Disabled),
        0 if report.status.contains("degraded") => {
            Ok(CloudInitOutcome::Degraded(report.recoverable.clone()))
        }
        0 => Ok(CloudInitOutcome::Done),
        2 => Ok(CloudInitOutcome::Degraded(report.recoverable.clone())),
        _ => {
            let mut errors = report.errors.clone();
            if errors.is_empty() {
                errors.push(format!("status: {}", report.status));
            }
            if opts.ignore_errors {
                Ok(CloudInitOutcome::IgnoredErrors(errors))
            } else {
                Err(CloudInitError::Failed {
                    target: target.to_string(),
                    errors,
                })
            }
        }
    }
}

/// The whole seconds given to the remote `timeout` for what is left of our deadline: rounded
/// up, so cloud-init gets the full deadline (truncating gave up to a second early and then
/// reported "did not finish within N s" after N-1 s); at least 1.
pub fn remote_timeout_secs(remaining: Duration) -> u64 {
    u64::try_from(remaining.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The outcome, and the event that says it, when there is nothing to wait for: not asked
/// (`--no-wait-cloud-init`) or not `present` on the target; `None` when ov must wait.
pub fn no_wait(opts: &CloudInitOptions, present: bool) -> Option<(CloudInitOutcome, Event)> {
    let (outcome, state) = if !opts.wait {
        (
            CloudInitOutcome::Skipped,
            "not waiting (--no-wait-cloud-init)",
        )
    } else if !present {
        (
            CloudInitOutcome::Absent,
            "not installed on the target; not waiting",
        )
    } else {
        return None;
    };
    Some((
        outcome,
        Event::CloudInit {
            state: state.to_string(),
            detail: Vec::new(),
        },
    ))
}

/// Wait for cloud-init on the target. `present`: whether the push's run channel found the
/// program (`remote/enter.sh.j2`).
///
/// The wait runs remotely under `timeout` so our deadline holds even if we lose the connection;
/// when the connection drops (cloud-init restarting sshd), we reconnect and ask again.
pub fn wait_cloud_init(
    exec: &mut dyn Executor,
    opts: &CloudInitOptions,
    present: bool,
    progress: &mut dyn Progress,
) -> Result<CloudInitOutcome, CloudInitError> {
    let target = exec.describe();
    let note = |progress: &mut dyn Progress, state: &str, detail: Vec<String>| {
        progress.event(&Event::CloudInit {
            state: state.to_string(),
            detail,
        })
    };
    if let Some((outcome, event)) = no_wait(opts, present) {
        progress.event(&event);
        return Ok(outcome);
    }
    let start = Instant::now();
    let mut json = true;
    loop {
        let remaining = opts.deadline.saturating_sub(start.elapsed());
        if remaining.is_zero() {
            return Err(CloudInitError::Timeout {
                target,
                secs: opts.deadline.as_secs(),
            });
        }
        note(progress, "waiting", vec![]);
        let secs = remote_timeout_secs(remaining).to_string();
        let mut argv = vec![
            "timeout",
            secs.as_str(),
            opts.program.as_str(),
            "status",
            "--wait",
        ];
        if json {
            argv.extend(["--format", "json"]);
        }
        let mut req = Request::new(&argv, As::Login);
        req.capture_stdout = true;
        let out = match exec.exec(req, &mut NullSink) {
            Ok(o) => o,
            Err(ExecError::Disconnected { .. }) => {
                // cloud-init regenerating host keys restarts sshd: reconnect and ask again.
                note(progress, "connection dropped; reconnecting", vec![]);
                let until = start + opts.deadline;
                exec.reconnect(until, progress)?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let status = out.status.unwrap_or(-1);
        if status == 124 {
            return Err(CloudInitError::Timeout {
                target,
                secs: opts.deadline.as_secs(),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let report = if json {
            match parse_status_json(&text) {
                Some(r) => r,
                None => {
                    // Older cloud-init has no `--format json` (argparse exits 2 with usage).
                    json = false;
                    continue;
                }
            }
        } else {
            match parse_status_plain(&text) {
                Some(r) => r,
                None => {
                    return Err(CloudInitError::Unreadable {
                        target,
                        status,
                        output: format!("{}{}", text.trim(), out.stderr_text()),
                    })
                }
            }
        };
        let outcome = decide(status, &report, opts, &target)?;
        match &outcome {
            CloudInitOutcome::Done => note(progress, "done", vec![]),
            CloudInitOutcome::Degraded(r) => note(progress, "degraded (going on)", r.clone()),
            CloudInitOutcome::Disabled => note(progress, "disabled on the target", vec![]),
            CloudInitOutcome::IgnoredErrors(e) => {
                note(progress, "failed (ignored as asked)", e.clone())
            }
            CloudInitOutcome::Absent | CloudInitOutcome::Skipped => {}
        }
        return Ok(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_timeout_never_cuts_the_deadline_short() {
        let ms = |m| remote_timeout_secs(Duration::from_millis(m));
        assert_eq!(ms(2_999), 3);
        assert_eq!(ms(3_000), 3);
        assert_eq!(ms(3_001), 4);
        assert_eq!(ms(1), 1);
        assert_eq!(ms(0), 1);
        assert_eq!(ms(599_400), 600);
    }

    #[test]
    fn cloud_init_json_and_decisions() {
        let done = r#"{"boot_status_code":"enabled-by-generator","errors":[],"extended_status":"done","recoverable_errors":{},"status":"done"}"#;
        let r = parse_status_json(done).expect("json");
        let o = CloudInitOptions::default();
        assert_eq!(decide(0, &r, &o, "t").expect("ok"), CloudInitOutcome::Done);

        let degraded = r#"{"errors":[],"extended_status":"degraded done","recoverable_errors":{"WARNING":["Failed to set locale"]},"status":"done"}"#;
        let r = parse_status_json(degraded).expect("json");
        assert_eq!(
            decide(2, &r, &o, "t").expect("ok"),
            CloudInitOutcome::Degraded(vec!["WARNING: Failed to set locale".into()])
        );

        // cloud-init 25.1.4 on a first boot: the schema warning once per stage that logged it.
        let w = "cloud-config failed schema validation! You may run 'sudo cloud-init schema --system' to check the details.";
        let twice = serde_json::json!({"errors": [], "extended_status": "degraded done",
            "recoverable_errors": {"WARNING": [w, w]}, "status": "done"});
        let r = parse_status_json(&twice.to_string()).expect("json");
        assert_eq!(r.recoverable, vec![format!("WARNING: {w}")]);

        let error = r#"{"errors":["('scripts_user', RuntimeError('Runparts: 1 failures'))"],"extended_status":"error","recoverable_errors":{},"status":"error"}"#;
        let r = parse_status_json(error).expect("json");
        let e = decide(1, &r, &o, "t").expect_err("error");
        assert!(e.to_string().contains("Runparts"), "{e}");
        assert_eq!(e.exit(), Exit::CloudInit);
        let ignoring = CloudInitOptions {
            ignore_errors: true,
            ..o.clone()
        };
        assert!(matches!(
            decide(1, &r, &ignoring, "t"),
            Ok(CloudInitOutcome::IgnoredErrors(_))
        ));

        let disabled = parse_status_plain("status: disabled\n").expect("plain");
        assert_eq!(
            decide(0, &disabled, &o, "t").expect("ok"),
            CloudInitOutcome::Disabled
        );
        // cloud-init 25.1, disabled by its marker file after a failed run, before a reboot.
        let failed_then_disabled = r#"{"boot_status_code":"disabled-by-marker-file","errors":["('scripts-user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))"],"extended_status":"error - disabled","recoverable_errors":{},"status":"error"}"#;
        let r = parse_status_json(failed_then_disabled).expect("json");
        let e = decide(1, &r, &o, "t").expect_err("this boot's errors stop the push");
        assert!(e.to_string().contains("Runparts"), "{e}");
        assert_eq!(parse_status_json("usage: cloud-init status [-h]"), None);
    }
}
