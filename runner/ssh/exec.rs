//! Stage `runner`, executors: the one primitive every remote action is built from — run an argv
//! as the login user, root or another account, feed stdin, stream stdout/stderr line by line.
//! Invariant: every argument reaches the remote shell quoted by `ov_compiler::shell::quote` (one
//! holding a NUL byte is refused); a sudo that wants a password is reported as such, never as a
//! generic failure.
//!
//! Two implementations: [`LocalExecutor`] (the `host` target and tests) here, and the SSH one in
//! `master.rs`. Both are synchronous outside and drive tokio inside ([`drive`]).

use std::collections::VecDeque;
use std::io::Read;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::exit::{Exit, HasExit};
use crate::ui::progress::Stream;

/// Who runs a command on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum As {
    /// The account we logged in as.
    Login,
    /// root, through `sudo -n` unless we already are root.
    Root,
    /// Another account, through `sudo -n -u NAME -H` unless it is the login account.
    User(String),
}

/// What a command reads on stdin.
pub enum Input<'a> {
    /// Nothing (`/dev/null`-like: stdin is closed at once).
    Null,
    /// These bytes.
    Bytes(&'a [u8]),
    /// A byte stream of `len` bytes (the bundle archive), sent in chunks.
    Reader {
        /// The source.
        reader: &'a mut dyn Read,
        /// Its size, for progress reports.
        len: u64,
    },
}

/// Where output lines and upload progress go.
pub trait Sink {
    /// One line of remote output (without its newline; invalid UTF-8 replaced).
    fn line(&mut self, stream: Stream, line: &str);
    /// `sent` bytes of stdin have been written so far.
    fn sent(&mut self, _sent: u64, _total: u64) {}
}

/// A sink that drops everything.
pub struct NullSink;

impl Sink for NullSink {
    fn line(&mut self, _stream: Stream, _line: &str) {}
}

/// One command to run.
pub struct Request<'a> {
    /// The program and its arguments (quoted for the remote shell by the executor).
    pub argv: Vec<String>,
    /// Who runs it.
    pub who: As,
    pub stdin: Input<'a>,
    /// Keep stdout as bytes (and do not pass it to the sink line by line).
    pub capture_stdout: bool,
}

impl<'a> Request<'a> {
    /// `argv` as `who`, no stdin, output streamed.
    pub fn new(argv: &[&str], who: As) -> Request<'a> {
        Request {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            who,
            stdin: Input::Null,
            capture_stdout: false,
        }
    }
}

/// How many stderr lines an [`Output`] keeps.
pub const STDERR_TAIL: usize = 40;

/// The result of a finished command.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exit status; `None` when the process was killed by a signal.
    pub status: Option<i32>,
    /// stdout, when captured.
    pub stdout: Vec<u8>,
    /// The last [`STDERR_TAIL`] lines of stderr.
    pub stderr: Vec<String>,
}

impl Output {
    /// True when the command exited 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The stderr tail as one string.
    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }
}

/// Failures of the executor itself (not of the command it ran: see [`Output::status`]).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A local process could not be started.
    #[error("cannot start `{program}`")]
    Spawn {
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The local side of a pipe failed.
    #[error("i/o error while talking to `{what}`")]
    Io {
        /// The command.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The SSH connection went away while a command ran (or before it could start).
    #[error("the connection to {target} was lost while running `{what}`")]
    Disconnected {
        /// Target description.
        target: String,
        /// The command.
        what: String,
    },
    /// The SSH multiplexer refused to open a channel.
    #[error("cannot open an ssh channel to {target} for `{what}`: {message}")]
    Channel {
        /// Target description.
        target: String,
        /// The command.
        what: String,
        /// The multiplexer's message.
        message: String,
    },
    /// `sudo -n` wanted a password or refused the user.
    #[error("user `{user}` needs passwordless sudo on {target} (sudo said: {message})")]
    Sudo {
        /// The login user.
        user: String,
        /// Target description.
        target: String,
        /// sudo's first line of complaint.
        message: String,
    },
    /// A helper command failed (exit status, stderr).
    #[error("`{what}` failed on {target} with status {status}: {stderr}")]
    Failed {
        /// Target description.
        target: String,
        /// The command.
        what: String,
        /// Its status (-1: killed).
        status: i32,
        /// Its stderr tail.
        stderr: String,
    },
    /// The executor was already closed (or cannot reconnect).
    #[error("the connection to {target} is closed")]
    Closed {
        /// Target description.
        target: String,
    },
    /// An argument cannot be passed to the target.
    #[error("cannot pass an argument to the target")]
    Argument(#[from] ov_compiler::shell::QuoteError),
    /// Reconnecting after a dropped connection failed.
    #[error("reconnecting failed")]
    Reconnect(#[source] Box<crate::ssh::error::ConnectError>),
}

impl HasExit for ExecError {
    fn exit(&self) -> Exit {
        match self {
            ExecError::Disconnected { .. } | ExecError::Channel { .. } | ExecError::Sudo { .. } => {
                Exit::CannotConnect
            }
            ExecError::Closed { .. } => Exit::CannotConnect,
            ExecError::Reconnect(e) => e.exit(),
            ExecError::Argument(_) => Exit::InvalidInput,
            _ => Exit::Other,
        }
    }
}

/// Runs commands on a target.
pub trait Executor {
    /// A short description (`ovtest@127.0.0.1:2222`, `local`).
    fn describe(&self) -> String;

    /// The account commands run as with [`As::Login`].
    fn login_user(&self) -> &str;

    /// True when the login account is root (no sudo needed for [`As::Root`]).
    fn login_is_root(&self) -> bool;

    /// Tell the executor the login account's name as the target reported it (an ssh config
    /// may choose the user without us knowing it). Default: ignored.
    fn learned_login_user(&mut self, _user: &str) {}

    /// Run one command to completion. A non-zero exit is *not* an error here; see
    /// [`Output::status`]. A sudo that wants a password is [`ExecError::Sudo`].
    fn exec(&mut self, req: Request<'_>, sink: &mut dyn Sink) -> Result<Output, ExecError>;

    /// Close the connection (idempotent).
    fn close(&mut self) -> Result<(), ExecError>;

    /// Drop the connection and make a new one, waiting until `until` at most. Only meaningful
    /// for SSH (sshd restarting under us); others cannot reconnect.
    fn reconnect(
        &mut self,
        _until: std::time::Instant,
        _progress: &mut dyn crate::ui::progress::Progress,
    ) -> Result<(), ExecError> {
        Err(ExecError::Closed {
            target: self.describe(),
        })
    }

    /// Run a bash script as `who`: `bash -s` (under `sudo -n` for root) with the script on stdin.
    /// The script must redirect stdin of anything it runs (`</dev/null`): bash reads the rest of
    /// the script from the same stream.
    fn run_script(
        &mut self,
        script: &str,
        args: &[&str],
        who: As,
        sink: &mut dyn Sink,
    ) -> Result<Output, ExecError> {
        let mut argv = vec!["bash".to_string(), "-s".to_string()];
        if !args.is_empty() {
            argv.push("--".into());
            argv.extend(args.iter().map(|a| a.to_string()));
        }
        self.exec(
            Request {
                argv,
                who,
                stdin: Input::Bytes(script.as_bytes()),
                capture_stdout: false,
            },
            sink,
        )
    }

    /// `Ok` when `out` succeeded, else [`ExecError::Failed`].
    fn check(&self, what: &str, out: &Output) -> Result<(), ExecError> {
        if out.success() {
            Ok(())
        } else {
            Err(ExecError::Failed {
                target: self.describe(),
                what: what.to_string(),
                status: out.status.unwrap_or(-1),
                stderr: out.stderr_text(),
            })
        }
    }
}

/// Quote and join an argv into one command line, each word by the compiler's one quoting
/// function; an argument holding a NUL byte (which no command line can carry) is an error, not a
/// different argument.
pub fn join(argv: &[String]) -> Result<String, ExecError> {
    let words = argv
        .iter()
        .map(|a| ov_compiler::shell::quote(a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(words.join(" "))
}

/// `word` as a shell word in a command shown to a person (a fix to type); a word with a NUL byte,
/// which no path or host name holds, is shown escaped instead.
pub fn shown(word: &str) -> String {
    ov_compiler::shell::quote(word).unwrap_or_else(|_| format!("{word:?}"))
}

/// The argv that runs `argv` as `who`, given the login account.
pub fn wrap_argv(argv: &[String], who: &As, login: &str, login_is_root: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(argv.len() + 6);
    match who {
        As::Login => {}
        As::Root => {
            if !login_is_root {
                out.extend(["sudo", "-n", "--"].map(String::from));
            }
        }
        As::User(u) => {
            if u != login {
                out.extend(["sudo", "-n", "-H", "-u"].map(String::from));
                out.push(u.clone());
                out.push("--".into());
            }
        }
    }
    out.extend(argv.iter().cloned());
    out
}

/// True when `out` is sudo refusing to run the command (rather than the command failing):
/// status 1, nothing on stdout, and sudo's own message on stderr.
pub fn sudo_refused(out: &Output) -> Option<String> {
    if out.status != Some(1) || !out.stdout.is_empty() {
        return None;
    }
    let first = out.stderr.iter().find(|l| !l.trim().is_empty())?;
    let lower = first.to_ascii_lowercase();
    let is_sudo = lower.starts_with("sudo:")
        && (lower.contains("password is required")
            || lower.contains("terminal is required")
            || lower.contains("not in the sudoers")
            || lower.contains("may not run sudo")
            || lower.contains("not allowed to execute"));
    let sorry = lower.starts_with("sorry, user") && lower.contains("sudo");
    (is_sudo || sorry).then(|| first.trim().to_string())
}

/// `out` as the command's result, or [`ExecError::Sudo`] when it went through sudo and sudo
/// itself refused (so callers report "needs passwordless sudo", not a failed step).
pub fn refuse_if_sudo_refused(
    out: Output,
    needs_sudo: bool,
    user: String,
    target: String,
) -> Result<Output, ExecError> {
    match needs_sudo.then(|| sudo_refused(&out)).flatten() {
        Some(message) => Err(ExecError::Sudo {
            user,
            target,
            message,
        }),
        None => Ok(out),
    }
}

/// Drive one running process: feed `input` to `stdin` while reading `stdout`/`stderr` line by
/// line into `sink` (or capturing stdout). Returns captured stdout and the stderr tail.
///
/// Reading and writing happen concurrently so a command that prints a lot before reading its
/// stdin cannot deadlock us. A failed write (the remote closed stdin, e.g. sudo refused) is
/// not an error by itself: the exit status tells what happened.
pub async fn drive<W, O, E>(
    stdin: Option<W>,
    input: Input<'_>,
    stdout: Option<O>,
    stderr: Option<E>,
    capture_stdout: bool,
    sink: &mut dyn Sink,
) -> std::io::Result<(Vec<u8>, Vec<String>)>
where
    W: AsyncWrite + Unpin,
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    // The sink is shared by the reader (lines) and the writer (byte counts); both run in one
    // task, so a RefCell is enough.
    let sink = std::cell::RefCell::new(sink);

    let writer = async {
        let Some(mut w) = stdin else { return };
        match input {
            Input::Null => {}
            Input::Bytes(b) => {
                let _ = w.write_all(b).await;
            }
            Input::Reader { reader, len } => {
                let mut buf = vec![0u8; 256 * 1024];
                let mut sent = 0u64;
                loop {
                    // A blocking read from a local file: short, and this runtime has one
                    // thread whose only other job is reading the remote's output.
                    let n = match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    if w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                    sink.borrow_mut().sent(sent, len);
                }
            }
        }
        let _ = w.shutdown().await;
        drop(w);
    };

    let reader = async {
        let mut out = stdout.map(BufReader::new);
        let mut err = stderr.map(BufReader::new);
        let mut captured = Vec::new();
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut obuf = Vec::new();
        let mut ebuf = Vec::new();
        loop {
            if out.is_none() && err.is_none() {
                break;
            }
            tokio::select! {
                r = async { match out.as_mut() { Some(o) => if capture_stdout { o.read_buf(&mut obuf).await } else { o.read_until(b'\n', &mut obuf).await }, None => std::future::pending().await } } => {
                    let n = r?;
                    if capture_stdout {
                        captured.append(&mut obuf);
                        if n == 0 { out = None; }
                    } else {
                        if n == 0 || obuf.ends_with(b"\n") {
                            if !obuf.is_empty() {
                                let line = String::from_utf8_lossy(&obuf);
                                sink.borrow_mut().line(Stream::Stdout, line.trim_end_matches(['\n', '\r']));
                            }
                            obuf.clear();
                        }
                        if n == 0 { out = None; }
                    }
                }
                r = async { match err.as_mut() { Some(e) => e.read_until(b'\n', &mut ebuf).await, None => std::future::pending().await } } => {
                    let n = r?;
                    if n == 0 || ebuf.ends_with(b"\n") {
                        if !ebuf.is_empty() {
                            let line = String::from_utf8_lossy(&ebuf).trim_end_matches(['\n', '\r']).to_string();
                            sink.borrow_mut().line(Stream::Stderr, &line);
                            if tail.len() == STDERR_TAIL { tail.pop_front(); }
                            tail.push_back(line);
                        }
                        ebuf.clear();
                    }
                    if n == 0 { err = None; }
                }
            }
        }
        Ok::<_, std::io::Error>((captured, tail.into_iter().collect()))
    };

    let ((), res) = tokio::join!(writer, reader);
    res
}

use tokio::io::AsyncReadExt as _;

/// Runs commands on this machine (the `host` target, and tests).
pub struct LocalExecutor {
    rt: tokio::runtime::Runtime,
    user: String,
    is_root: bool,
}

impl LocalExecutor {
    /// An executor for the current user.
    pub fn new() -> Result<LocalExecutor, ExecError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ExecError::Io {
                what: "tokio runtime".into(),
                source,
            })?;
        let (user, is_root) = current_user();
        Ok(LocalExecutor { rt, user, is_root })
    }
}

/// The current account's name and whether it is root (from `id`, which every target has).
fn current_user() -> (String, bool) {
    let run = |flag: &str| {
        std::process::Command::new("id")
            .arg(flag)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let uid = run("-u").unwrap_or_default();
    let name = run("-un")
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    (name, uid == "0")
}

impl Executor for LocalExecutor {
    fn describe(&self) -> String {
        "local".into()
    }

    fn login_user(&self) -> &str {
        &self.user
    }

    fn login_is_root(&self) -> bool {
        self.is_root
    }

    fn exec(&mut self, req: Request<'_>, sink: &mut dyn Sink) -> Result<Output, ExecError> {
        let argv = wrap_argv(&req.argv, &req.who, &self.user, self.is_root);
        let what = join(&req.argv)?;
        let Some((program, args)) = argv.split_first() else {
            return Err(ExecError::Spawn {
                program: String::new(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
            });
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let needs_sudo = argv.first().map(|p| p == "sudo").unwrap_or(false);
        let target = self.describe();
        let user = self.user.clone();
        self.rt.block_on(async move {
            let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
                program: program.clone(),
                source,
            })?;
            let stdin = child.stdin.take();
            let stdout = child.stdout.take();
            let stderr = child.stderr.take();
            let (stdout, stderr) =
                drive(stdin, req.stdin, stdout, stderr, req.capture_stdout, sink)
                    .await
                    .map_err(|source| ExecError::Io {
                        what: what.clone(),
                        source,
                    })?;
            let status = child.wait().await.map_err(|source| ExecError::Io {
                what: what.clone(),
                source,
            })?;
            let out = Output {
                status: status.code(),
                stdout,
                stderr,
            };
            refuse_if_sudo_refused(out, needs_sudo, user, target)
        })
    }

    fn close(&mut self) -> Result<(), ExecError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lines(Vec<(Stream, String)>);
    impl Sink for Lines {
        fn line(&mut self, stream: Stream, line: &str) {
            self.0.push((stream, line.to_string()));
        }
    }

    #[test]
    fn quoting_survives_the_shell() {
        let nasty = "a b'c\"$(x)`y`\\n;|&*";
        let mut ex = LocalExecutor::new().expect("runtime");
        let out = ex
            .exec(
                Request {
                    argv: vec![
                        "sh".into(),
                        "-c".into(),
                        format!(
                            "printf %s {}",
                            join(&[nasty.to_string()]).expect("quotable")
                        ),
                    ],
                    who: As::Login,
                    stdin: Input::Null,
                    capture_stdout: true,
                },
                &mut NullSink,
            )
            .expect("exec");
        assert_eq!(String::from_utf8_lossy(&out.stdout), nasty);
        // A NUL byte cannot be passed: refused, not mangled into another argument.
        let e = ex
            .exec(Request::new(&["printf", "a\0b"], As::Login), &mut NullSink)
            .expect_err("NUL");
        assert!(matches!(e, ExecError::Argument(_)), "{e}");
        assert_eq!(e.exit(), Exit::InvalidInput);
    }

    #[test]
    fn wrap_adds_sudo_only_when_needed() {
        let argv = vec!["true".to_string()];
        assert_eq!(wrap_argv(&argv, &As::Root, "root", true), argv);
        assert_eq!(
            wrap_argv(&argv, &As::Root, "bob", false),
            vec!["sudo", "-n", "--", "true"]
        );
        assert_eq!(
            wrap_argv(&argv, &As::User("bob".into()), "bob", false),
            argv
        );
        assert_eq!(
            wrap_argv(&argv, &As::User("amy".into()), "bob", false),
            vec!["sudo", "-n", "-H", "-u", "amy", "--", "true"]
        );
    }

    #[test]
    fn streams_lines_and_feeds_stdin() {
        let mut ex = LocalExecutor::new().expect("runtime");
        let mut lines = Lines(Vec::new());
        let out = ex
            .run_script(
                "echo out1\necho err1 >&2\nprintf 'no-newline'\nexit 3\n",
                &[],
                As::Login,
                &mut lines,
            )
            .expect("run");
        assert_eq!(out.status, Some(3));
        assert!(lines.0.contains(&(Stream::Stdout, "out1".into())));
        assert!(lines.0.contains(&(Stream::Stdout, "no-newline".into())));
        assert_eq!(out.stderr, vec!["err1".to_string()]);
    }

    #[test]
    fn sudo_refusal_is_recognised() {
        let out = Output {
            status: Some(1),
            stdout: vec![],
            stderr: vec!["sudo: a password is required".into()],
        };
        assert_eq!(
            sudo_refused(&out).as_deref(),
            Some("sudo: a password is required")
        );
        let other = Output {
            status: Some(1),
            stdout: vec![],
            stderr: vec!["bash: line 1: foo: command not found".into()],
        };
        assert_eq!(sudo_refused(&other), None);
    }
}
