//! Stage `runner`, waiting: for SSH (exponential backoff under a wall-clock deadline; stop at
//! once on authentication or host-key failures) and for cloud-init (its own `--wait`, bounded by
//! our deadline, surviving an sshd restart).
//! Invariant: no wait exceeds its deadline by more than one bounded attempt, and a failure that
//! retrying cannot fix is reported on the first attempt.
//!
//! OpenSSH reports failures only as text; [`classify`] is the single place that reads it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::executor::{As, ExecError, Executor, NullSink, Request};
use crate::exit::{Exit, HasExit};
use crate::progress::{Event, Progress};

/// How long and how often to try connecting.
#[derive(Debug, Clone)]
pub struct WaitOptions {
    /// Give up after this long (`--wait-ssh SECS`, default 120 s).
    pub deadline: Duration,
    /// First pause between attempts.
    pub initial: Duration,
    /// Longest pause between attempts.
    pub cap: Duration,
    /// Longest single TCP connect + banner exchange.
    pub connect_timeout: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            deadline: Duration::from_secs(120),
            initial: Duration::from_millis(250),
            cap: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl WaitOptions {
    /// The pause after failed attempt number `attempt` (1-based): 250 ms doubling to the cap.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.cap)
    }
}

/// What an OpenSSH connection failure means for us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Not up yet (refused, timed out, reset, kex failed): try again.
    Retry(String),
    /// The server refused our key: retrying cannot help.
    Auth(String),
    /// OpenSSH ignored our private key because others may read it ("UNPROTECTED PRIVATE KEY
    /// FILE"), so the server refused us.
    KeyPermissions {
        /// The key, as OpenSSH names it.
        key: Option<String>,
        /// OpenSSH's lines about it (the warning, the permissions, `Load key …`).
        message: String,
    },
    /// The host key differs from the recorded one.
    HostKeyChanged {
        /// The known_hosts file named by OpenSSH.
        file: Option<String>,
        /// The offending line.
        line: Option<u32>,
        /// OpenSSH's summary line.
        message: String,
    },
    /// The host key could not be verified (e.g. strict checking of an unknown host).
    HostKeyUnverified(String),
    /// Anything else (bad config, unknown host name, …): retrying cannot help.
    Fatal(String),
}

/// The meaningful line of OpenSSH's output (skips warnings about added keys).
fn summary(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .map(|l| l.trim().trim_start_matches("ssh: ").to_string())
        .find(|l| {
            !l.is_empty() && !l.starts_with("Warning: Permanently added") && !l.starts_with('@')
        })
        .unwrap_or_else(|| "ssh failed without a message".into())
}

/// Classify OpenSSH's stderr (the master's log) after a failed connection.
pub fn classify(stderr: &str) -> Failure {
    let lower = stderr.to_ascii_lowercase();
    let line = summary(stderr);
    if lower.contains("remote host identification has changed")
        || lower.contains("host key for") && lower.contains("has changed")
    {
        // "Offending ED25519 key in /path/known_hosts:3"
        let (file, ln) = stderr
            .lines()
            .find_map(|l| {
                let rest = l.trim().strip_prefix("Offending ")?;
                let (_, loc) = rest.split_once(" key in ")?;
                let (f, n) = loc.rsplit_once(':')?;
                Some((Some(f.to_string()), n.trim().parse().ok()))
            })
            .unwrap_or((None, None));
        return Failure::HostKeyChanged {
            file,
            line: ln,
            message: line,
        };
    }
    if lower.contains("host key verification failed") {
        return Failure::HostKeyUnverified(line);
    }
    if lower.contains("unprotected private key file") || lower.contains(": bad permissions") {
        // `Permissions 0644 for '/k' are too open.` and `Load key "/k": bad permissions`.
        let kept: Vec<&str> = stderr
            .lines()
            .map(|l| l.trim().trim_matches('@').trim())
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("unprotected private key file")
                    || (l.starts_with("permissions ") && l.ends_with("are too open."))
                    || l.ends_with(": bad permissions")
            })
            .collect();
        let key = stderr.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("Load key \"")?;
            let (k, tail) = rest.rsplit_once('"')?;
            tail.contains("bad permissions").then(|| k.to_string())
        });
        return Failure::KeyPermissions {
            key,
            message: kept.join("; "),
        };
    }
    if lower.contains("permission denied (")
        || lower.contains("too many authentication failures")
        || lower.contains("no more authentication methods")
        || lower.contains("unprotected private key file")
        || lower.contains("load key")
    {
        return Failure::Auth(line);
    }
    let retry = [
        "connection refused",
        "connection timed out",
        "operation timed out",
        "timed out during banner exchange",
        "connection reset",
        "connection closed",
        "kex_exchange_identification",
        "banner exchange",
        "no route to host",
        "network is unreachable",
        "broken pipe",
        "connection aborted",
        "ssh_exchange_identification",
        "kex protocol error",
        "not responding",
    ];
    if retry.iter().any(|r| lower.contains(r)) {
        return Failure::Retry(line);
    }
    Failure::Fatal(line)
}

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing answered in time.
    #[error(
        "gave up waiting for ssh on {target} after {secs}s ({attempts} attempts; last: {last})"
    )]
    Timeout {
        /// Target description.
        target: String,
        /// The deadline in seconds.
        secs: u64,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The server refused our key.
    #[error("authentication failed for {target}{key}: {message}")]
    Auth {
        /// Target description.
        target: String,
        /// ` with key `…``, when known.
        key: String,
        /// OpenSSH's message.
        message: String,
    },
    /// OpenSSH ignored the private key: others may read it.
    #[error("authentication failed for {target}: OpenSSH ignored the private key `{key}` because others may read it ({message}); make it private with `chmod 600 {quoted}` and retry", quoted = crate::executor::shown(key))]
    KeyPermissions {
        /// Target description.
        target: String,
        /// The key file.
        key: String,
        /// OpenSSH's lines about it.
        message: String,
    },
    /// The host key changed.
    #[error("the host key of {host} has changed — refusing to connect. If the machine was recreated, remove the old key{location}: {remove}")]
    HostKeyChanged {
        /// `[host]:port`.
        host: String,
        /// ` (known_hosts `file` line N)`.
        location: String,
        /// The command that removes it.
        remove: String,
    },
    /// The host key could not be verified.
    #[error("cannot verify the host key of {target}: {message}")]
    HostKeyUnverified {
        /// Target description.
        target: String,
        /// OpenSSH's message.
        message: String,
    },
    /// Another failure retrying cannot fix.
    #[error("cannot connect to {target}: {message}")]
    Fatal {
        /// Target description.
        target: String,
        /// The message.
        message: String,
    },
    /// Local setup failed (control directory, runtime).
    #[error("cannot prepare the ssh connection: {what}")]
    Setup {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ConnectError {
    /// Build the error for a non-retryable [`Failure`].
    pub fn from_failure(
        f: Failure,
        target: &str,
        known_hosts_name: &str,
        key: Option<&str>,
    ) -> ConnectError {
        match f {
            Failure::Auth(message) => ConnectError::Auth {
                target: target.to_string(),
                key: key.map(|k| format!(" with key `{k}`")).unwrap_or_default(),
                message,
            },
            Failure::KeyPermissions {
                key: named,
                message,
            } => ConnectError::KeyPermissions {
                target: target.to_string(),
                key: named
                    .or(key.map(str::to_string))
                    .unwrap_or_else(|| "KEY".into()),
                message,
            },
            Failure::HostKeyChanged { file, line, .. } => {
                let location = match (&file, line) {
                    (Some(f), Some(l)) => format!(" (known_hosts `{f}` line {l})"),
                    (Some(f), None) => format!(" (known_hosts `{f}`)"),
                    _ => String::new(),
                };
                let remove = match &file {
                    Some(f) => format!(
                        "ssh-keygen -f {} -R {}",
                        crate::executor::shown(f),
                        crate::executor::shown(known_hosts_name)
                    ),
                    None => format!("ssh-keygen -R {}", crate::executor::shown(known_hosts_name)),
                };
                ConnectError::HostKeyChanged {
                    host: known_hosts_name.to_string(),
                    location,
                    remove,
                }
            }
            Failure::HostKeyUnverified(message) => ConnectError::HostKeyUnverified {
                target: target.to_string(),
                message,
            },
            Failure::Fatal(message) | Failure::Retry(message) => ConnectError::Fatal {
                target: target.to_string(),
                message,
            },
        }
    }
}

impl HasExit for ConnectError {
    fn exit(&self) -> Exit {
        match self {
            ConnectError::Setup { .. } => Exit::Other,
            _ => Exit::CannotConnect,
        }
    }
}

/// The retry loop, independent of how one attempt is made (tested without ssh).
///
/// `attempt(timeout)` makes one attempt bounded by `timeout`; on a retryable failure we sleep
/// `backoff` (never past the deadline) and try again; when the deadline has passed after a
/// failure, we stop with [`ConnectError::Timeout`].
pub async fn retry_until<T, F, Fut>(
    opts: &WaitOptions,
    target: &str,
    known_hosts_name: &str,
    key: Option<&str>,
    progress: &mut dyn Progress,
    mut attempt: F,
) -> Result<(T, u32), ConnectError>
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    // tokio's clock, so tests can run the schedule with paused time.
    let start = tokio::time::Instant::now();
    let mut n = 0u32;
    loop {
        n += 1;
        let remaining = opts.deadline.saturating_sub(start.elapsed());
        let per_try = opts
            .connect_timeout
            .min(remaining)
            .max(Duration::from_secs(1));
        match attempt(per_try).await {
            Ok(v) => return Ok((v, n)),
            Err(Failure::Retry(reason)) => {
                let remaining = opts.deadline.saturating_sub(start.elapsed());
                if remaining.is_zero() {
                    return Err(ConnectError::Timeout {
                        target: target.to_string(),
                        secs: opts.deadline.as_secs(),
                        attempts: n,
                        last: reason,
                    });
                }
                let pause = opts.backoff(n).min(remaining);
                progress.event(&Event::WaitSsh {
                    target: target.to_string(),
                    attempt: n,
                    reason,
                    retry_in: pause,
                });
                tokio::time::sleep(pause).await;
            }
            Err(other) => {
                return Err(ConnectError::from_failure(
                    other,
                    target,
                    known_hosts_name,
                    key,
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cloud-init

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
    Failed {
        /// Target description.
        target: String,
        /// Its error messages.
        errors: Vec<String>,
    },
    /// It did not finish before our deadline.
    #[error("cloud-init on {target} did not finish within {secs}s")]
    Timeout {
        /// Target description.
        target: String,
        /// Deadline.
        secs: u64,
    },
    /// Its answer made no sense.
    #[error("cannot understand `cloud-init status` on {target} (status {status}): {output}")]
    Unreadable {
        /// Target description.
        target: String,
        /// Exit status.
        status: i32,
        /// What it printed.
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

/// Wait for cloud-init on the target. `present`: whether the probe found the program.
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
    if !opts.wait {
        note(progress, "not waiting (--no-wait-cloud-init)", vec![]);
        return Ok(CloudInitOutcome::Skipped);
    }
    if !present {
        note(progress, "not installed on the target; not waiting", vec![]);
        return Ok(CloudInitOutcome::Absent);
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
    fn backoff_doubles_to_the_cap() {
        let o = WaitOptions::default();
        let ms: Vec<u128> = (1..=8).map(|n| o.backoff(n).as_millis()).collect();
        assert_eq!(ms, vec![250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        assert_eq!(o.backoff(200), Duration::from_secs(5));
    }

    #[test]
    fn classifies_real_openssh_messages() {
        let changed = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
Add correct host key in /home/op/.local/share/ov/vm/ov-arch/known_hosts to get rid of this message.\n\
Offending ED25519 key in /home/op/.local/share/ov/vm/ov-arch/known_hosts:3\n\
  remove with:\n\
  ssh-keygen -f \"/home/op/.local/share/ov/vm/ov-arch/known_hosts\" -R \"[127.0.0.1]:2222\"\n\
Host key for [127.0.0.1]:2222 has changed and you have requested strict checking.\n\
Host key verification failed.\n";
        assert_eq!(
            classify(changed),
            Failure::HostKeyChanged {
                file: Some("/home/op/.local/share/ov/vm/ov-arch/known_hosts".into()),
                line: Some(3),
                message: "Host key verification failed.".into()
            }
        );
        assert_eq!(
            classify("ovtest@127.0.0.1: Permission denied (publickey).\n"),
            Failure::Auth("ovtest@127.0.0.1: Permission denied (publickey).".into())
        );
        assert!(matches!(
            classify("Warning: Permanently added '[127.0.0.1]:2222' (ED25519) to the list of known hosts.\r\nx@h: Permission denied (publickey)."),
            Failure::Auth(_)
        ));
        // OpenSSH 9 with a key of mode 0644: the warning block, then the refusal.
        let unprotected = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n\
@         WARNING: UNPROTECTED PRIVATE KEY FILE!          @\r\n\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n\
Permissions 0644 for '/home/op/my key' are too open.\r\n\
It is required that your private key files are NOT accessible by others.\r\n\
This private key will be ignored.\r\n\
Load key \"/home/op/my key\": bad permissions\r\n\
ovtest@127.0.0.1: Permission denied (publickey).\r\n";
        let f = classify(unprotected);
        assert_eq!(
            f,
            Failure::KeyPermissions {
                key: Some("/home/op/my key".into()),
                message: "WARNING: UNPROTECTED PRIVATE KEY FILE!; Permissions 0644 for '/home/op/my key' are too open.; Load key \"/home/op/my key\": bad permissions".into()
            }
        );
        let e = ConnectError::from_failure(f, "ovtest@127.0.0.1:22", "127.0.0.1", None);
        assert_eq!(e.exit(), Exit::CannotConnect);
        assert!(
            e.to_string()
                .ends_with("make it private with `chmod 600 '/home/op/my key'` and retry"),
            "{e}"
        );
        for retry in [
            "ssh: connect to host 127.0.0.1 port 47299: Connection refused",
            "kex_exchange_identification: read: Connection reset by peer\nConnection reset by 127.0.0.1 port 2222",
            "kex_exchange_identification: Connection closed by remote host\nConnection closed by 127.0.0.1 port 2222",
            "Connection timed out during banner exchange\nConnection to 10.0.0.1 port 22 timed out",
            "ssh: connect to host 10.0.0.1 port 22: No route to host",
        ] {
            assert!(matches!(classify(retry), Failure::Retry(_)), "{retry}");
        }
        assert!(matches!(
            classify("ssh: Could not resolve hostname nope: Name or service not known"),
            Failure::Fatal(_)
        ));
        assert!(matches!(
            classify("No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\nHost key verification failed."),
            Failure::HostKeyUnverified(_)
        ));
    }

    #[test]
    fn host_key_error_says_which_file_and_line() {
        let e = ConnectError::from_failure(
            Failure::HostKeyChanged {
                file: Some("/k/known_hosts".into()),
                line: Some(3),
                message: String::new(),
            },
            "u@127.0.0.1:2222",
            "[127.0.0.1]:2222",
            None,
        );
        let s = e.to_string();
        assert!(s.contains("`/k/known_hosts` line 3"), "{s}");
        assert!(
            s.contains("ssh-keygen -f /k/known_hosts -R '[127.0.0.1]:2222'"),
            "{s}"
        );
        assert_eq!(e.exit(), Exit::CannotConnect);
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn retry_loop_stops_at_once_on_auth_failure() {
        let mut calls = 0;
        let res: Result<((), u32), _> = run(retry_until(
            &WaitOptions::default(),
            "t",
            "t",
            Some("/k"),
            &mut crate::progress::Silent,
            |_| {
                calls += 1;
                async { Err(Failure::Auth("Permission denied (publickey).".into())) }
            },
        ));
        assert!(matches!(res, Err(ConnectError::Auth { .. })));
        assert_eq!(calls, 1);
    }

    #[test]
    fn retry_loop_honours_the_deadline() {
        let opts = WaitOptions {
            deadline: Duration::from_secs(20),
            ..Default::default()
        };
        let mut rec = crate::progress::Recorder::default();
        let started = tokio::time::Instant::now;
        let (res, elapsed) = run(async {
            let t0 = started();
            let r: Result<((), u32), _> = retry_until(&opts, "t", "t", None, &mut rec, |_| async {
                Err(Failure::Retry("Connection refused".into()))
            })
            .await;
            (r, t0.elapsed())
        });
        match res {
            Err(ConnectError::Timeout { attempts, .. }) => {
                // 0.25+0.5+1+2+4+5+5 = 17.75 s, then a last pause of 2.25 s to the deadline.
                assert_eq!(attempts, 9);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(elapsed, Duration::from_secs(20));
        assert_eq!(rec.events.len(), 8);
    }

    #[test]
    fn retry_loop_returns_on_success() {
        let mut n = 0;
        let res = run(retry_until(
            &WaitOptions::default(),
            "t",
            "t",
            None,
            &mut crate::progress::Silent,
            |_| {
                n += 1;
                let ok = n >= 3;
                async move {
                    if ok {
                        Ok(7)
                    } else {
                        Err(Failure::Retry("refused".into()))
                    }
                }
            },
        ));
        assert_eq!(res.expect("connected"), (7, 3));
    }

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
