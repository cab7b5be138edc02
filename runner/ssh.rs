//! Stage `runner`, SSH executor: one OpenSSH ControlMaster per push (the `openssh` crate's
//! native multiplexer), every command a channel over it.
//! Invariants: one TCP connection however many commands run; the control socket lives in a
//! short private directory (`/tmp/ov-<uid>/`, sun_path ≤ 108 bytes); the master is closed on
//! every path out, errors included (`Drop`).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};

use crate::executor::{
    join, refuse_if_sudo_refused, wrap_argv, ExecError, Executor, Output, Request, Sink,
};
use crate::progress::{Event, Progress};
use crate::target::Target;
use crate::wait::{classify, retry_until, ConnectError, Failure, WaitOptions};

/// How long an idle master survives us if we die without closing it (we always close it; this
/// only bounds the damage of a `kill -9`).
const CONTROL_PERSIST_SECS: usize = 300;

/// Keepalive interval: a target that vanishes is noticed within ~3 intervals.
const SERVER_ALIVE: Duration = Duration::from_secs(15);

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

/// The current effective uid (`/proc/self` is owned by it; `id -u` elsewhere).
pub(crate) fn current_uid() -> Option<u32> {
    if let Ok(m) = std::fs::metadata("/proc/self") {
        return Some(m.uid());
    }
    let out = std::process::Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// `/tmp/ov-<uid>`, created private; refuses a directory someone else could write to.
///
/// Not `$TMPDIR` or `$XDG_RUNTIME_DIR`: those can be long, and a Unix socket path must fit in
/// 108 bytes (the master's socket is `<dir>/.ssh-connectionXXXXXX/master`).
pub fn control_dir() -> Result<PathBuf, ConnectError> {
    let uid = current_uid().ok_or_else(|| ConnectError::Setup {
        what: "cannot determine the current uid".into(),
        source: std::io::Error::other("no /proc/self and no `id -u`"),
    })?;
    let dir = PathBuf::from(format!("/tmp/ov-{uid}"));
    ensure_private_dir(&dir, uid)?;
    Ok(dir)
}

fn ensure_private_dir(dir: &Path, uid: u32) -> Result<(), ConnectError> {
    let setup = |what: String| {
        move |source: std::io::Error| ConnectError::Setup {
            what: what.clone(),
            source,
        }
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(setup(format!("create `{}`", dir.display()))(e)),
    }
    let meta =
        std::fs::symlink_metadata(dir).map_err(setup(format!("inspect `{}`", dir.display())))?;
    if !meta.file_type().is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(ConnectError::Setup {
            what: format!(
                "control directory `{}` must be a directory owned by uid {uid} with mode 0700; remove it and retry",
                dir.display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
    }
    Ok(())
}

fn builder(target: &Target, ctl_dir: &Path, connect_timeout: Duration) -> SessionBuilder {
    let mut b = SessionBuilder::default();
    if let Some(u) = &target.user {
        b.user(u.clone());
    }
    if let Some(p) = target.port {
        b.port(p);
    }
    if let Some(k) = &target.identity {
        b.keyfile(k);
    }
    if let Some(kh) = &target.known_hosts {
        b.user_known_hosts_file(kh);
    }
    if let Some(cfg) = &target.ssh_config {
        b.config_file(cfg);
    }
    // accept-new: record the key on first contact, refuse a changed one afterwards.
    b.known_hosts_check(KnownHosts::Add)
        .control_directory(ctl_dir)
        .control_persist(ControlPersist::IdleFor(
            std::num::NonZeroUsize::new(CONTROL_PERSIST_SECS)
                .unwrap_or(std::num::NonZeroUsize::MIN),
        ))
        .connect_timeout(connect_timeout)
        .server_alive_interval(SERVER_ALIVE);
    b
}

async fn connect_session(
    target: &Target,
    ctl_dir: &Path,
    wait: &WaitOptions,
    progress: &mut dyn Progress,
) -> Result<(Session, u32), ConnectError> {
    let describe = target.describe();
    let key = target
        .identity
        .as_ref()
        .map(|k| k.to_string_lossy().into_owned());
    retry_until(
        wait,
        &describe,
        &target.known_hosts_name(),
        key.as_deref(),
        progress,
        |per_try| {
            let b = builder(target, ctl_dir, per_try);
            let host = target.host.clone();
            async move {
                // An attempt that hangs past its own ConnectTimeout (e.g. a stalled key
                // exchange) is cut off here, a little later, so the deadline still holds.
                let limit = per_try + Duration::from_secs(5);
                match tokio::time::timeout(limit, b.connect_mux(&host)).await {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(openssh::Error::Connect(e))) => Err(classify(&e.to_string())),
                    Ok(Err(openssh::Error::Master(e))) => {
                        Err(Failure::Fatal(format!("cannot start the ssh master: {e}")))
                    }
                    Ok(Err(e)) => Err(Failure::Fatal(e.to_string())),
                    Err(_) => Err(Failure::Retry(format!(
                        "no answer within {}s",
                        limit.as_secs()
                    ))),
                }
            }
        },
    )
    .await
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
            let mut cmd = session.raw_command(&cmdline);
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = match cmd.spawn().await {
                Ok(c) => c,
                Err(e) => {
                    return Err(if session.check().await.is_err() {
                        disconnected()
                    } else {
                        ExecError::Channel {
                            target: target.clone(),
                            what: what.clone(),
                            message: e.to_string(),
                        }
                    })
                }
            };
            let stdin = child.stdin().take();
            let stdout = child.stdout().take();
            let stderr = child.stderr().take();
            let driven =
                crate::executor::drive(stdin, req.stdin, stdout, stderr, req.capture_stdout, sink)
                    .await;
            let (stdout, stderr) = match driven {
                Ok(v) => v,
                Err(source) => {
                    return Err(if session.check().await.is_err() {
                        disconnected()
                    } else {
                        ExecError::Io {
                            what: what.clone(),
                            source,
                        }
                    })
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
                Err(e) => {
                    return Err(if session.check().await.is_err() {
                        disconnected()
                    } else {
                        ExecError::Channel {
                            target: target.clone(),
                            what: what.clone(),
                            message: e.to_string(),
                        }
                    })
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_dir_is_short_and_private() {
        let dir = control_dir().expect("control dir");
        // `<dir>/.ssh-connectionXXXXXX/master` must fit in sun_path (108 bytes incl. NUL).
        assert!(dir.as_os_str().len() + "/.ssh-connectionXXXXXX/master".len() < 108);
        let meta = std::fs::metadata(&dir).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn refuses_a_shared_control_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path().join("ctl");
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let uid = current_uid().expect("uid");
        let e = ensure_private_dir(&d, uid).expect_err("shared dir refused");
        assert!(e.to_string().contains("mode 0700"), "{e}");
    }
}
