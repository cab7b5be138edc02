//! Stage `runner`, connecting: one attempt opens an OpenSSH ControlMaster (the `openssh` crate's
//! native multiplexer) with our options; [`retry_until`] repeats attempts with exponential
//! backoff under a wall-clock deadline and stops at once on what retrying cannot fix.
//! Invariants: no wait exceeds its deadline by more than one bounded attempt; the control
//! socket lives in a short private directory (`/tmp/ov-<uid>/`, sun_path ≤ 108 bytes).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};

use crate::ssh::endpoint::Target;
use crate::ssh::error::ConnectError;
use crate::ssh::openssh::{classify, Diagnosis};
use crate::ui::progress::{Event, Progress};

/// How long an idle master survives us if we die without closing it (we always close it; this
/// only bounds the damage of a `kill -9`).
const CONTROL_PERSIST_SECS: usize = 300;

/// Keepalive interval: a target that vanishes is noticed within ~3 intervals.
const SERVER_ALIVE: Duration = Duration::from_secs(15);

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
    /// Set by someone else when the connection is no longer wanted (a compile running meanwhile
    /// failed): no further attempt is made.
    pub give_up: Option<Arc<AtomicBool>>,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            deadline: Duration::from_secs(120),
            initial: Duration::from_millis(250),
            cap: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            give_up: None,
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

/// Open one master to `target`, retrying per `wait`; returns it and the attempts it took.
pub(crate) async fn connect_session(
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
                    Ok(Err(openssh::Error::Master(e))) => Err(Diagnosis::Fatal(format!(
                        "cannot start the ssh master: {e}"
                    ))),
                    Ok(Err(e)) => Err(Diagnosis::Fatal(e.to_string())),
                    Err(_) => Err(Diagnosis::Retry(format!(
                        "no answer within {}s",
                        limit.as_secs()
                    ))),
                }
            }
        },
    )
    .await
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
    Fut: std::future::Future<Output = Result<T, Diagnosis>>,
{
    // tokio's clock, so tests can run the schedule with paused time.
    let start = tokio::time::Instant::now();
    let abandoned = || {
        opts.give_up
            .as_ref()
            .is_some_and(|g| g.load(Ordering::SeqCst))
    };
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
            Err(Diagnosis::Retry(reason)) => {
                let remaining = opts.deadline.saturating_sub(start.elapsed());
                let gone = |n, last| ConnectError::Timeout {
                    target: target.to_string(),
                    secs: opts.deadline.as_secs(),
                    attempts: n,
                    last,
                };
                if remaining.is_zero() || abandoned() {
                    return Err(gone(n, reason));
                }
                let pause = opts.backoff(n).min(remaining);
                progress.event(&Event::WaitSsh {
                    target: target.to_string(),
                    attempt: n,
                    reason: reason.clone(),
                    retry_in: pause,
                });
                if opts.give_up.is_none() {
                    tokio::time::sleep(pause).await;
                    continue;
                }
                // Someone may give up meanwhile: look every 100 ms.
                let until = tokio::time::Instant::now() + pause;
                while tokio::time::Instant::now() < until {
                    if abandoned() {
                        return Err(gone(n, reason));
                    }
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    tokio::time::sleep(left.min(Duration::from_millis(100))).await;
                }
            }
            Err(other) => return Err(other.into_error(target, known_hosts_name, key)),
        }
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
            &mut crate::ui::progress::Silent,
            |_| {
                calls += 1;
                async { Err(Diagnosis::Auth("Permission denied (publickey).".into())) }
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
        let mut rec = crate::ui::progress::Recorder::default();
        let started = tokio::time::Instant::now;
        let (res, elapsed) = run(async {
            let t0 = started();
            let r: Result<((), u32), _> = retry_until(&opts, "t", "t", None, &mut rec, |_| async {
                Err(Diagnosis::Retry("Connection refused".into()))
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
            &mut crate::ui::progress::Silent,
            |_| {
                n += 1;
                let ok = n >= 3;
                async move {
                    if ok {
                        Ok(7)
                    } else {
                        Err(Diagnosis::Retry("refused".into()))
                    }
                }
            },
        ));
        assert_eq!(res.expect("connected"), (7, 3));
    }
}
