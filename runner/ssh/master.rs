//! Stage `runner`, SSH executor: one OpenSSH ControlMaster per push (opened by
//! [`connect`](crate::ssh::connect)), every command a channel over it.
//! Invariants: one TCP connection however many commands run; the master is closed on every path
//! out, errors included (`Drop`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use openssh::{Session, Stdio};

use crate::ssh::connect::{connect_session, control_dir, WaitOptions};
use crate::ssh::endpoint::Target;
use crate::ssh::error::ConnectError;
use crate::ssh::exec::{
    join, refuse_if_sudo_refused, wrap_argv, ExecError, Executor, Output, Request, Sink,
};
use crate::ui::progress::{Event, Progress};

/// Commands over one SSH master connection.
pub struct SshExecutor {
    rt: tokio::runtime::Runtime,
    session: Option<Session>,
    target: Target,
    wait: WaitOptions,
    ctl_dir: PathBuf,
    attempts: u32,
    connections: u32,
}

impl SshExecutor {
    /// Connect to `target`, waiting for it per `wait` (backoff under a deadline).
    pub fn connect(
        target: Target,
        wait: WaitOptions,
        progress: &mut dyn Progress,
    ) -> Result<SshExecutor, ConnectError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ConnectError::Setup {
                what: "tokio runtime".into(),
                source,
            })?;
        let ctl_dir = control_dir()?;
        let (session, attempts) =
            rt.block_on(connect_session(&target, &ctl_dir, &wait, progress))?;
        progress.event(&Event::Connected {
            target: target.describe(),
            attempts,
        });
        Ok(SshExecutor {
            rt,
            session: Some(session),
            target,
            wait,
            ctl_dir,
            attempts,
            connections: 1,
        })
    }

    /// The resolved target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Connection attempts the first connect needed.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Masters opened so far (1 unless we had to reconnect).
    pub fn connections(&self) -> u32 {
        self.connections
    }

    /// The master's control socket, while connected.
    pub fn control_socket(&self) -> Option<&Path> {
        self.session.as_ref().map(|s| s.control_socket())
    }

    fn closed(&self) -> ExecError {
        ExecError::Closed {
            target: self.target.describe(),
        }
    }
}

impl Executor for SshExecutor {
    fn describe(&self) -> String {
        self.target.describe()
    }

    fn login_user(&self) -> &str {
        self.target.user.as_deref().unwrap_or("")
    }

    fn login_is_root(&self) -> bool {
        self.target.user.as_deref() == Some("root")
    }

    fn learned_login_user(&mut self, user: &str) {
        if self.target.user.is_none() && !user.is_empty() {
            self.target.user = Some(user.to_string());
        }
    }

    fn exec(&mut self, req: Request<'_>, sink: &mut dyn Sink) -> Result<Output, ExecError> {
        let argv = wrap_argv(&req.argv, &req.who, self.login_user(), self.login_is_root());
        let needs_sudo = argv.first().map(|p| p == "sudo").unwrap_or(false);
        let cmdline = join(&argv)?;
        let what = join(&req.argv)?;
        let target = self.describe();
        let user = self.login_user().to_string();
        let Some(session) = self.session.as_ref() else {
            return Err(self.closed());
        };
        self.rt.block_on(async {
            let disconnected = || ExecError::Disconnected {
                target: target.clone(),
                what: what.clone(),
            };
            let channel = |e: openssh::Error| ExecError::Channel {
                target: target.clone(),
                what: what.clone(),
                message: e.to_string(),
            };
            // A failure while a command runs is the connection's when the master no longer
            // answers; otherwise it is the failure itself.
            let blame = |error: ExecError| async {
                match session.check().await {
                    Err(_) => disconnected(),
                    Ok(()) => error,
                }
            };
            let mut cmd = session.raw_command(&cmdline);
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = match cmd.spawn().await {
                Ok(c) => c,
                Err(e) => return Err(blame(channel(e)).await),
            };
            let stdin = child.stdin().take();
            let stdout = child.stdout().take();
            let stderr = child.stderr().take();
            let driven =
                crate::ssh::exec::drive(stdin, req.stdin, stdout, stderr, req.capture_stdout, sink)
                    .await;
            let (stdout, stderr) = match driven {
                Ok(v) => v,
                Err(source) => {
                    let what = what.clone();
                    return Err(blame(ExecError::Io { what, source }).await);
                }
            };
            let status = match child.wait().await {
                Ok(s) => s.code(),
                // The mux protocol cannot tell "killed by a signal" from "connection gone";
                // asking the master tells them apart.
                Err(openssh::Error::RemoteProcessTerminated)
                | Err(openssh::Error::Disconnected) => {
                    if session.check().await.is_err() {
                        return Err(disconnected());
                    }
                    None
                }
                Err(e) => return Err(blame(channel(e)).await),
            };
            let out = Output {
                status,
                stdout,
                stderr,
            };
            refuse_if_sudo_refused(out, needs_sudo, user, target)
        })
    }

    fn close(&mut self) -> Result<(), ExecError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let target = self.describe();
        self.rt
            .block_on(session.close())
            .map_err(|e| ExecError::Channel {
                target,
                what: "close".into(),
                message: e.to_string(),
            })
    }

    fn reconnect(&mut self, until: Instant, progress: &mut dyn Progress) -> Result<(), ExecError> {
        if let Some(old) = self.session.take() {
            // The old master is most likely dead already; closing it only cleans up.
            let _ = self.rt.block_on(old.close());
        }
        let wait = WaitOptions {
            deadline: until.saturating_duration_since(Instant::now()),
            ..self.wait.clone()
        };
        let (session, attempts) = self
            .rt
            .block_on(connect_session(
                &self.target,
                &self.ctl_dir,
                &wait,
                progress,
            ))
            .map_err(|e| ExecError::Reconnect(Box::new(e)))?;
        progress.event(&Event::Connected {
            target: self.target.describe(),
            attempts,
        });
        self.session = Some(session);
        self.connections += 1;
        Ok(())
    }
}

impl Drop for SshExecutor {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
