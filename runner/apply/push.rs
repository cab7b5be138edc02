//! Stage `runner`, push: verify the bundle locally → connect → one channel: an entry as the login
//! user (`remote/enter.sh.j2`) that becomes root with `sudo -n`, then a small bootstrap on its
//! stdin and the archive right after it (stored once into root's
//! `/var/lib/overthink/work/<unique>/`, 0700), its sha256 verified there, extracted, `run.sh` run,
//! the ledger printed back, then (`--verify`, `ov test`: [`RunMode`]) `run.sh --test` on the same
//! channel → save state (not for `ov test`, which changes nothing). When ov waits for cloud-init
//! and the target has it, the entry stops before anything runs: ov waits, then opens the channel
//! again.
//! Invariants: nothing runs on the target unless the archive matches its `.sha256`; a fixed
//! number of channels per push (run; with cloud-init installed: run stopped at the entry,
//! cloud-init, run; a ledger read only if the run channel's print did not arrive) whatever the
//! number of layers; the master is closed on every path; the remote work directory is removed
//! unless `--keep`.

use std::collections::VecDeque;
use std::path::PathBuf;

use crate::bundle::{open_bundle, BundleError, BundleInfo};
use crate::exit::{Exit, HasExit};
use crate::ssh::connect::WaitOptions;
use crate::ssh::endpoint::Target;
use crate::ssh::error::ConnectError;
use crate::ssh::exec::{sudo_refused, As, ExecError, Executor, Input, Output, Request, Sink};
use crate::ssh::master::SshExecutor;
use crate::target::cloud_init::{
    no_wait, wait_cloud_init, CloudInitError, CloudInitOptions, CloudInitOutcome,
};
use crate::target::ledger::{read_ledger_with, Ledger, LedgerError, LedgerLines};
use crate::target::state::{load_vm_state, now_rfc3339, save_vm_state, StateError, VmState};
use crate::ui::progress::{CheckResult, Event, Progress, ProgressLine, RunEvent, Stream};
use ov_compiler::remote;
use ov_compiler::render::Engine;

/// Where pushes unpack on the target (not `/tmp`: it may be a small tmpfs, and is cleaned on
/// boot while a run may still be resumed by hand).
pub const REMOTE_BASE: &str = ov_compiler::emit::WORK_BASE;

/// How many lines of a failing script's output a failure report keeps.
pub const FAILURE_TAIL: usize = 30;

/// Where to record the push locally.
#[derive(Debug, Clone)]
pub struct StateTarget {
    /// `~/.config/ov/deploy.yml`.
    pub file: PathBuf,
    /// Entry key, `vm:<vm>`.
    pub key: String,
    /// The VM name (for a new entry's `vm_source`).
    pub vm: String,
}

/// What the run on the target does with the bundle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunMode {
    /// Apply it (`run.sh`).
    #[default]
    Apply,
    /// Apply it, then, when that succeeded, run the layers' own checks on the same channel
    /// (`ov push --verify`).
    ApplyThenTest,
    /// Only run the layers' own checks (`ov test`): nothing is applied, no ledger is read.
    Test,
    /// Only say what a run would change (`ov push --check`: `run.sh --check`); nothing is applied.
    Check {
        /// `--diff`: how each file differs.
        diff: bool,
    },
}

impl RunMode {
    /// Whether the bundle is applied.
    pub fn applies(self) -> bool {
        matches!(self, RunMode::Apply | RunMode::ApplyThenTest)
    }

    /// Whether the layers' checks run.
    pub fn tests_run(self) -> bool {
        matches!(self, RunMode::ApplyThenTest | RunMode::Test)
    }

    /// Whether the run only says what would change.
    pub fn checks_changes(self) -> bool {
        matches!(self, RunMode::Check { .. })
    }
}

/// Which checks `run.sh --test` runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestFilter {
    /// Only these layers' checks (empty: every layer of the bundle).
    pub layers: Vec<String>,
    /// Only checks of this scope (`build` or `deploy`; `None`: both).
    pub scope: Option<String>,
}

/// The layers' checks as the target reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// One entry per check, in run order.
    pub results: Vec<CheckResult>,
    /// How many passed.
    pub pass: u64,
    /// How many failed.
    pub fail: u64,
    /// How many were skipped (the reason is in the result).
    pub skip: u64,
}

/// Options of one push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The bundle archive (its `.sha256` sits beside it).
    pub bundle: PathBuf,
    /// Leave the remote work directory in place (`--keep`).
    pub keep: bool,
    /// Print what would be sent and run; connect to nothing (`--dry-run`).
    pub dry_run: bool,
    /// Refuse instead of waiting when another run holds the target's lock (`--no-wait`).
    pub no_wait_lock: bool,
    /// Re-run layers already applied (`--force`, passed to run.sh).
    pub force: bool,
    /// Target account for run.sh (`--user`); default: the manifest's, else the login user.
    pub user: Option<String>,
    /// cloud-init handling.
    pub cloud_init: CloudInitOptions,
    /// Remote base directory (default [`REMOTE_BASE`]).
    pub remote_base: String,
    /// Record the result in deploy.yml.
    pub state: Option<StateTarget>,
    /// Apply, apply and check, or only check.
    pub mode: RunMode,
    /// Which checks, when the mode runs them.
    pub test: TestFilter,
    /// `--templates DIR`: replacements for the target-side scripts of `templates/remote/`.
    pub templates: Option<PathBuf>,
    /// `--force-distro`: run on a distro the bundle was not compiled for (run.sh's preflight
    /// refuses otherwise).
    pub force_distro: bool,
    /// Stream every line the steps print (`-v`: `run.sh --verbose`); otherwise the target keeps
    /// them in the run's log and sends the step lines only (and a failed script's last lines).
    pub verbose: bool,
}

impl PushOptions {
    /// Defaults for pushing `bundle`.
    pub fn new(bundle: impl Into<PathBuf>) -> PushOptions {
        PushOptions {
            bundle: bundle.into(),
            keep: false,
            dry_run: false,
            no_wait_lock: false,
            force: false,
            user: None,
            cloud_init: CloudInitOptions::default(),
            remote_base: REMOTE_BASE.into(),
            state: None,
            mode: RunMode::Apply,
            test: TestFilter::default(),
            templates: None,
            force_distro: false,
            verbose: false,
        }
    }
}

/// Details of a failed layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepFailure {
    pub layer: String,
    /// Script file.
    pub script: String,
    /// Its exit status.
    pub status: i64,
    /// The last lines it printed.
    pub tail: Vec<String>,
    /// The script's path inside the bundle (`layers/NN-<layer>/MM-<scope>.sh`; empty from an
    /// older runtime).
    pub path: String,
    /// The run's log on the target (empty from an older runtime).
    pub log: String,
    /// The command that failed, as its script's ERR trap saw it.
    pub command: Option<String>,
    /// Its line in the script, when known.
    pub line: Option<u64>,
    /// Where the command is when it is in another file than the script (`lib.sh:812`).
    pub inner: String,
}

impl StepFailure {
    /// What a person needs to fix it: the command and where, the last lines, the log, and how to
    /// resume.
    fn details(&self) -> String {
        let mut s = String::new();
        if let Some(cmd) = &self.command {
            s.push_str(&format!("\n  failed command: {cmd}"));
        }
        let place = match (self.path.is_empty(), self.line) {
            (false, Some(n)) => format!("{} line {n}", self.path),
            (false, None) => self.path.clone(),
            (true, _) => String::new(),
        };
        if !place.is_empty() {
            s.push_str(&format!("\n  in the bundle: {place}"));
            if !self.inner.is_empty() {
                s.push_str(&format!(
                    " (the command is at {})",
                    self.inner.replacen(':', " line ", 1)
                ));
            }
        }
        s.push_str(&tail_text(&self.tail));
        if !self.log.is_empty() {
            s.push_str(&format!(
                "\n  the whole output is in {} on the target",
                self.log
            ));
        }
        s.push_str("\n  fix, then push again to resume: the layers already applied are skipped");
        s
    }
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The local bundle is unusable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// No connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// cloud-init failed.
    #[error(transparent)]
    CloudInit(#[from] CloudInitError),
    /// A command could not run.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The uploaded archive differs from the local one.
    #[error("the bundle arrived altered on {target} (expected sha256 {expected}, got {actual}); nothing was run")]
    UploadMismatch {
        target: String,
        /// Local sha256.
        expected: String,
        /// Remote sha256.
        actual: String,
    },
    /// run.sh found a file that does not match SHA256SUMS, or the target's signature policy
    /// refused the bundle.
    #[error("the bundle failed its own integrity check on {target} (run.sh: SHA256SUMS mismatch, or the target's signature policy refused it); nothing was run{}", tail_text(.tail))]
    RemoteIntegrity {
        target: String,
        /// Output tail.
        tail: Vec<String>,
    },
    /// A layer's script failed.
    #[error("layer `{}` failed on {target}: script `{}` exited with status {}{}", .failure.layer, .failure.script, .failure.status, .failure.details())]
    StepFailed {
        target: String,
        /// What failed.
        failure: Box<StepFailure>,
    },
    /// Another run holds the lock.
    #[error("the ledger on {target} is locked by another run (retry later, or push without `--no-wait` to wait for it)")]
    Locked { target: String },
    /// run.sh could not become root.
    #[error("run.sh could not become root on {target}: user `{user}` needs passwordless sudo")]
    NoRoot {
        target: String,
        /// Login user.
        user: String,
    },
    /// run.sh refused its arguments (2) or found the target unfit (8: no home, ledger not
    /// writable).
    #[error("run.sh could not start on {target} (status {status}){}{}", .reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default(), tail_text(.tail))]
    Runtime {
        target: String,
        /// Exit status.
        status: i32,
        /// What run.sh said when it refused (its `run.sh: …` line), when it said it.
        reason: Option<String>,
        /// Output tail (without that line).
        tail: Vec<String>,
    },
    /// run.sh or the bootstrap failed otherwise.
    #[error("the run on {target} failed with status {status}{}", tail_text(.tail))]
    RunFailed {
        target: String,
        /// Exit status (-1: killed).
        status: i32,
        /// Output tail.
        tail: Vec<String>,
    },
    /// The connection dropped while run.sh ran.
    #[error("the connection to {target} was lost during the run; layers completed so far are recorded on the target — push again to resume")]
    Interrupted { target: String },
    /// Reading the ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Saving the state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A script for the target could not be written (a value no shell string can hold).
    #[error("cannot write the script to run on the target")]
    Script(#[from] ov_compiler::render::RenderError),
    /// The run channel said cloud-init is there a second time, after ov waited for it.
    #[error("unexpected answer from {target}: cloud-init reported again after the wait")]
    CloudInitAgain { target: String },
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n  last output:\n    {}", tail.join("\n    "))
    }
}

impl HasExit for PushError {
    fn exit(&self) -> Exit {
        match self {
            PushError::Bundle(e) => e.exit(),
            PushError::Connect(e) => e.exit(),
            PushError::CloudInit(e) => e.exit(),
            PushError::Exec(e) => e.exit(),
            PushError::UploadMismatch { .. } | PushError::RemoteIntegrity { .. } => Exit::Integrity,
            PushError::StepFailed { .. } | PushError::RunFailed { .. } => Exit::RemoteStep,
            PushError::Locked { .. } => Exit::Locked,
            PushError::NoRoot { .. } | PushError::Interrupted { .. } => Exit::CannotConnect,
            PushError::Ledger(e) => e.exit(),
            PushError::State(e) => e.exit(),
            PushError::CloudInitAgain { .. } | PushError::Runtime { .. } => Exit::Other,
            PushError::Script(_) => Exit::InvalidInput,
        }
    }
}

/// What a finished push did.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// Target description.
    pub target: String,
    /// Remote work directory (removed unless `keep`).
    pub remote_dir: String,
    /// The bundle's sha256.
    pub bundle_sha256: String,
    /// Deploy id (manifest).
    pub deploy_id: Option<String>,
    /// Layers run.sh applied this time.
    pub applied: u64,
    /// Layers it skipped as already applied.
    pub skipped: u64,
    /// Layers the ledger records for this deploy, in install order.
    pub applied_layers: Vec<String>,
    /// The ledger as read after the run.
    pub ledger: Ledger,
    /// What cloud-init said.
    pub cloud_init: CloudInitOutcome,
    /// The login user, as the target named it.
    pub login_user: String,
    /// The account the bundle ran for (`--user`, else the manifest's, else the login user): the
    /// ledger that records it is this account's.
    pub user: String,
    /// The state saved in deploy.yml (when asked to).
    pub state: Option<VmState>,
    /// The checks, when the mode ran them.
    pub checks: Option<CheckReport>,
    /// `ov push --check`: how many layers a run would change.
    pub changed: Option<u64>,
}

/// What `--dry-run` would do.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// Target description.
    pub target: String,
    /// Bundle facts.
    pub bundle: BundleInfo,
    /// Remote work directory.
    pub remote_dir: String,
    /// Each remote command, in order, with what it reads on stdin.
    pub commands: Vec<(String, String)>,
    /// The bootstrap script piped to `sudo -n bash -s`.
    pub bootstrap: String,
}

impl DryRun {
    /// Human-readable text.
    pub fn render(&self) -> String {
        let mut s = format!(
            "would push {} ({} bytes, sha256 {}) to {}\n",
            self.bundle.path.display(),
            self.bundle.size,
            self.bundle.sha256,
            self.target
        );
        s.push_str(&format!(
            "deploy {} · {} layer(s): {}\n",
            self.bundle.manifest.deploy.name,
            self.bundle.manifest.layers.len(),
            self.bundle
                .manifest
                .layers
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for (i, (cmd, stdin)) in self.commands.iter().enumerate() {
            s.push_str(&format!("{}. {cmd}\n   stdin: {stdin}\n", i + 1));
        }
        s.push_str("--- bootstrap (stdin of `sudo -n bash -s`) ---\n");
        s.push_str(&self.bootstrap);
        s
    }
}

/// The result of [`push`].
#[derive(Debug, Clone)]
pub enum PushOutcome {
    /// It ran.
    Done(Box<PushReport>),
    /// `--dry-run`.
    DryRun(Box<DryRun>),
}

/// Push over SSH: connect (waiting per `wait`), run [`push_with`], always close.
pub fn push(
    target: Target,
    wait: WaitOptions,
    opts: &PushOptions,
    progress: &mut dyn Progress,
) -> Result<PushOutcome, PushError> {
    // Integrity first: a bundle altered after compile never reaches the network.
    let bundle = open_bundle(&opts.bundle)?;
    if opts.dry_run {
        return Ok(PushOutcome::DryRun(Box::new(dry_run(
            &target.describe(),
            target.user.as_deref(),
            &bundle,
            opts,
        )?)));
    }
    let exec = SshExecutor::connect(target.clone(), wait, progress)?;
    push_connected(exec, &target, &bundle, opts, progress)
}

/// [`push`] over a master already open to `target` (the caller verified `bundle` and checked
/// `--dry-run`): [`push_with`], close, record the state.
pub fn push_connected(
    mut exec: SshExecutor,
    target: &Target,
    bundle: &BundleInfo,
    opts: &PushOptions,
    progress: &mut dyn Progress,
) -> Result<PushOutcome, PushError> {
    let result = push_with(&mut exec, bundle, opts, progress);
    let closed = exec.close();
    let mut report = result?;
    // A failure to close after a successful push is worth a note, not a failed push.
    if let Err(e) = closed {
        progress.event(&Event::Note {
            msg: format!("warning: {e}"),
        });
    }
    if let Some(st) = &opts.state {
        report.state = Some(record_state(st, target, &report)?);
    }
    Ok(PushOutcome::Done(Box::new(report)))
}

/// The bootstrap that verifies, extracts and runs the bundle (as root, script on stdin), then
/// prints the ledger of `ledger_user` (default: the login user, `$SUDO_USER`) on the same
/// channel when run.sh succeeded, so no further session reads it back: `remote/bootstrap.sh.j2`.
pub fn bootstrap_script(
    engine: &Engine,
    remote_dir: &str,
    bundle: &BundleInfo,
    opts: &PushOptions,
    ledger_user: Option<&str>,
) -> Result<String, PushError> {
    let body = remote::render_with(
        engine,
        &remote::Bootstrap {
            dir: remote_dir,
            base: opts.remote_base.trim_end_matches('/'),
            archive: &bundle.file_name,
            expected: &bundle.sha256,
            size: bundle.size,
            top: &bundle.top,
            keep: u8::from(opts.keep),
            apply: opts.mode.applies(),
            test: opts.mode.tests_run(),
            check: opts.mode.checks_changes(),
            check_diff: matches!(opts.mode, RunMode::Check { diff: true }),
            no_wait: opts.no_wait_lock,
            force: opts.force,
            force_distro: opts.force_distro,
            verbose: opts.verbose,
            user: opts.user.as_deref(),
            test_scope: opts.test.scope.as_deref(),
            test_layers: &opts.test.layers,
            ledger_user: ledger_user.unwrap_or(""),
            ledgers: crate::target::ledger::ROOT_LEDGERS,
            run_sh: bundle.run_sh,
        },
    )?;
    // bash reads a script on a pipe one byte per system call (≈5,000 of them here); a first
    // line that reads the rest in blocks saves them. Only for ASCII, where `read -N` counts
    // bytes whatever the target's locale.
    if !body.is_ascii() {
        return Ok(body);
    }
    let mut script = remote::render_with(engine, &remote::ReadScript { size: body.len() })?;
    script.push_str(&body);
    Ok(script)
}

fn remote_dir(opts: &PushOptions, bundle: &BundleInfo) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}/{}.{}",
        opts.remote_base.trim_end_matches('/'),
        bundle.top,
        &id[..12]
    )
}

fn dry_run(
    target: &str,
    login: Option<&str>,
    bundle: &BundleInfo,
    opts: &PushOptions,
) -> Result<DryRun, PushError> {
    let dir = remote_dir(opts, bundle);
    let archive = format!("{dir}/{}", bundle.file_name);
    let sudo = |cmd: &str| {
        if login == Some("root") {
            cmd.to_string()
        } else {
            format!("sudo -n -- {cmd}")
        }
    };
    let mut commands = vec![(
        format!("ssh master to {target}"),
        "(one TCP connection; every command below is a channel on it)".to_string(),
    )];
    let entry = if opts.cloud_init.wait {
        format!(
            "sh -c '<entry: stop when {} is installed, else exec {}>'",
            opts.cloud_init.program,
            sudo("bash -s")
        )
    } else {
        format!("sh -c '<entry: exec {}>'", sudo("bash -s"))
    };
    let stdin = format!(
        "the bootstrap below, then the archive {} ({} bytes, sha256 {}); it prints the ledger back",
        archive, bundle.size, bundle.sha256
    );
    commands.push((entry, stdin.clone()));
    if opts.cloud_init.wait {
        commands.push((
            format!(
                "timeout {} {} status --wait --format json   (only if the entry found cloud-init \
                 installed)",
                opts.cloud_init.deadline.as_secs(),
                opts.cloud_init.program
            ),
            "nothing".into(),
        ));
        commands.push((
            format!(
                "sh -c '<entry: exec {}>'   (only after waiting for cloud-init)",
                sudo("bash -s")
            ),
            stdin,
        ));
    }
    Ok(DryRun {
        target: target.to_string(),
        bundle: bundle.clone(),
        bootstrap: bootstrap_script(
            &Engine::new(opts.templates.as_deref())?,
            &dir,
            bundle,
            opts,
            opts.user
                .as_deref()
                .or(bundle.manifest.deploy.user.as_deref())
                .or(login),
        )?,
        remote_dir: dir,
        commands,
    })
}

/// What the run channel's output said, kept for the outcome and a failure report.
#[derive(Default)]
struct RunState {
    tail: VecDeque<String>,
    failure: Option<StepFailure>,
    end: Option<(bool, u64, u64)>,
    upload_mismatch: Option<(String, String)>,
    last_upload_report: u64,
    /// Bytes sent ahead of the archive on the same stdin (the bootstrap).
    upload_offset: u64,
    ledger: LedgerLines,
    checks: Vec<CheckResult>,
    test_end: Option<(u64, u64, u64)>,
    /// `run.sh --check`: how many layers would change (`check-end changed=N`).
    check_changed: Option<u64>,
    /// The failed script's last lines and failing command, as the target read them from the
    /// run's log (`step-log`, `step-error`).
    step_log: Vec<String>,
    step_error: Option<RunEvent>,
    /// The login account, as the target named it (`::ov:: login user=…`).
    login: Option<String>,
    /// The channel stopped because cloud-init is installed (`::ov:: enter cloud-init=present`).
    cloud_init_present: bool,
    /// run.sh's own lines before it began (`run.sh: unknown user …`): held back, because when
    /// run.sh stops there they are the push's error, said once; shown when the run goes on.
    held: Vec<String>,
    /// run.sh began applying, checking or testing.
    begun: bool,
    /// Whether stdout carried anything but the login line (sudo refusing prints nothing there).
    other_stdout: bool,
    /// Shown when the bootstrap starts (what cloud-init is, once the entry's check passed).
    announce: Option<Event>,
}

/// Whether `line` is run.sh refusing to run (`run.sh: …` from `ov_die`), not one of its warnings,
/// notes or waits, which say the run goes on.
fn is_refusal(line: &str) -> bool {
    line.strip_prefix("run.sh: ").is_some_and(|rest| {
        !["warning:", "note:", "waiting "]
            .iter()
            .any(|p| rest.starts_with(p))
    })
}

/// Turns the run's output into progress events and remembers what a failure report needs.
struct RunSink<'a> {
    progress: &'a mut dyn Progress,
    st: RunState,
}

impl RunState {
    fn remember(&mut self, line: &str) {
        if self.tail.len() == FAILURE_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
    }
}

impl Sink for RunSink<'_> {
    fn line(&mut self, stream: Stream, line: &str) {
        let st = &mut self.st;
        if stream == Stream::Stdout && st.ledger.feed(line) {
            return;
        }
        if stream == Stream::Stdout {
            if let Some(pl) = ProgressLine::parse(line) {
                // The entry's and the bootstrap's own lines: facts for ov, not progress.
                if pl.event == "login" {
                    st.login = pl.get("user").map(str::to_string);
                    if let Some(ev) = st.announce.take() {
                        self.progress.event(&ev);
                    }
                    return;
                }
                st.other_stdout = true;
                // Only the entry's (it speaks before the bootstrap's `login` line): a step that
                // prints this line later cannot make ov wait and run the bundle again.
                if pl.event == "enter"
                    && pl.get("cloud-init") == Some("present")
                    && st.login.is_none()
                {
                    st.cloud_init_present = true;
                    return;
                }
                let ev = RunEvent::from_line(pl);
                let begins = match &ev {
                    RunEvent::Begin { .. } => true,
                    RunEvent::Other(l) => l.event == "check-begin" || l.event == "test-begin",
                    _ => false,
                };
                if begins && !st.begun {
                    st.begun = true;
                    for line in std::mem::take(&mut st.held) {
                        self.progress.event(&Event::Output {
                            stream: Stream::Stderr,
                            line,
                        });
                    }
                }
                match &ev {
                    RunEvent::ScriptStart { .. } => st.tail.clear(),
                    RunEvent::StepLog { line, .. } => st.step_log.push(line.clone()),
                    RunEvent::StepError { .. } => st.step_error = Some(ev.clone()),
                    RunEvent::LayerFail {
                        layer,
                        script,
                        status,
                        path,
                        log,
                    } => {
                        let mut failure = StepFailure {
                            layer: layer.clone(),
                            script: script.clone(),
                            status: *status,
                            tail: st.tail.iter().cloned().collect(),
                            path: path.clone(),
                            log: log.clone(),
                            ..StepFailure::default()
                        };
                        if let Some(RunEvent::StepError {
                            line,
                            inner,
                            command,
                            ..
                        }) = st.step_error.take()
                        {
                            failure.command = Some(command);
                            failure.line = line;
                            failure.inner = inner;
                        }
                        st.failure = Some(failure);
                    }
                    RunEvent::End {
                        ok,
                        applied,
                        skipped,
                    } => st.end = Some((*ok, *applied, *skipped)),
                    RunEvent::Check(c) => st.checks.push(c.clone()),
                    RunEvent::TestEnd {
                        pass, fail, skip, ..
                    } => st.test_end = Some((*pass, *fail, *skip)),
                    RunEvent::Other(l) if l.event == "check-end" => {
                        st.check_changed = l.get("changed").and_then(|n| n.parse().ok());
                    }
                    RunEvent::Other(l)
                        if l.event == "upload-check" && l.get("result") == Some("mismatch") =>
                    {
                        st.upload_mismatch = Some((
                            l.get("expected").unwrap_or_default().to_string(),
                            l.get("actual").unwrap_or_default().to_string(),
                        ));
                    }
                    _ => {}
                }
                self.progress.event(&Event::Run(ev));
                return;
            }
            st.other_stdout = true;
        }
        st.remember(line);
        if stream == Stream::Stderr && !st.begun && is_refusal(line) {
            st.held.push(line.to_string());
            return;
        }
        self.progress.event(&Event::Output {
            stream,
            line: line.to_string(),
        });
    }

    fn sent(&mut self, sent: u64, total: u64) {
        let st = &mut self.st;
        // Progress is the archive's bytes, not the bootstrap's ahead of them.
        let (sent, total) = (
            sent.saturating_sub(st.upload_offset),
            total.saturating_sub(st.upload_offset),
        );
        // One event per 4 MiB (and the last): enough for a bar, not a flood of JSON.
        if sent == total || sent - st.last_upload_report >= 4 << 20 {
            st.last_upload_report = sent;
            self.progress.event(&Event::Upload { sent, total });
        }
    }
}

/// One run channel: the entry (remote/enter.sh.j2; with `check_cloud_init`, it stops at once
/// when cloud-init is installed) as the login user, which becomes root and reads the bootstrap
/// and then the archive on its stdin; the output streamed into progress events.
fn run_channel(
    exec: &mut dyn Executor,
    engine: &Engine,
    script: &str,
    bundle: &BundleInfo,
    opts: &PushOptions,
    check_cloud_init: bool,
    progress: &mut dyn Progress,
) -> Result<(Output, RunState), PushError> {
    let target = exec.describe();
    let login_root = (!exec.login_user().is_empty()).then(|| exec.login_is_root());
    let enter = remote::render_with(
        engine,
        &remote::Enter {
            cloud_init_program: check_cloud_init.then_some(opts.cloud_init.program.as_str()),
            login_root,
        },
    )?;
    let file = std::fs::File::open(&bundle.path).map_err(|source| BundleError::Io {
        path: bundle.path.clone(),
        source,
    })?;
    let mut input = std::io::Read::chain(script.as_bytes(), file);
    let mut sink = RunSink {
        progress,
        st: RunState {
            upload_offset: script.len() as u64,
            // When nothing is waited for, what cloud-init is can be said once the bootstrap runs
            // (the entry's check, when there was one, passed). After a wait, it was said.
            announce: (check_cloud_init || !opts.cloud_init.wait)
                .then(|| no_wait(&opts.cloud_init, false).map(|(_, ev)| ev))
                .flatten(),
            ..RunState::default()
        },
    };
    let out = match exec.exec(
        Request {
            argv: vec!["sh".into(), "-c".into(), enter],
            who: As::Login,
            stdin: Input::Reader {
                reader: &mut input,
                len: script.len() as u64 + bundle.size,
            },
            capture_stdout: false,
        },
        &mut sink,
    ) {
        Ok(out) => out,
        Err(ExecError::Disconnected { .. }) => return Err(PushError::Interrupted { target }),
        Err(e) => return Err(e.into()),
    };
    let st = sink.st;
    // sudo refusing to become root: status 1, nothing but the login line on stdout, sudo's
    // complaint on stderr — nothing ran.
    if !st.other_stdout && !exec.login_is_root() {
        if let Some(message) = sudo_refused(&Output {
            stdout: Vec::new(),
            ..out.clone()
        }) {
            return Err(ExecError::Sudo {
                user: st
                    .login
                    .clone()
                    .unwrap_or_else(|| exec.login_user().to_string()),
                target,
                message,
            }
            .into());
        }
    }
    Ok((out, st))
}

/// Push over an open executor (SSH or local). Does not close it.
pub fn push_with(
    exec: &mut dyn Executor,
    bundle: &BundleInfo,
    opts: &PushOptions,
    progress: &mut dyn Progress,
) -> Result<PushReport, PushError> {
    let target = exec.describe();
    if opts.mode.applies() {
        if let Some(msg) = crate::bundle::gated_off_summary(&bundle.manifest) {
            let gates = crate::bundle::gated_off(&bundle.manifest)
                .into_iter()
                .map(|(gate, (n, _))| (gate, n))
                .collect();
            progress.event(&Event::GatedOff { gates, msg });
        }
    }
    let engine = Engine::new(opts.templates.as_deref())?;

    // Upload, verify, extract, run — one channel: the entry becomes root, the archive follows the
    // bootstrap on its stdin (into a fresh private directory), output is streamed live, and the
    // ledger comes back on it. When ov waits for cloud-init and the target has it (it may still
    // be creating users and sudo rules), the entry stops before anything runs; ov waits, then
    // opens the channel again.
    let dir = remote_dir(opts, bundle);
    let ledger_user = opts
        .user
        .clone()
        .or_else(|| bundle.manifest.deploy.user.clone());
    let script = bootstrap_script(&engine, &dir, bundle, opts, ledger_user.as_deref())?;
    let (mut out, mut sink) = run_channel(
        exec,
        &engine,
        &script,
        bundle,
        opts,
        opts.cloud_init.wait,
        progress,
    )?;
    let cloud = if sink.cloud_init_present {
        let cloud = wait_cloud_init(exec, &opts.cloud_init, true, progress)?;
        (out, sink) = run_channel(exec, &engine, &script, bundle, opts, false, progress)?;
        if sink.cloud_init_present {
            return Err(PushError::CloudInitAgain { target });
        }
        cloud
    } else {
        match no_wait(&opts.cloud_init, false) {
            Some((outcome, _)) => outcome,
            None => CloudInitOutcome::Absent,
        }
    };
    let login = sink
        .login
        .clone()
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| exec.login_user().to_string());
    exec.learned_login_user(&login);
    let status = out.status.unwrap_or(-1);
    let tail: Vec<String> = sink.tail.iter().cloned().collect();
    // The failed script's last lines come from the run's log on the target (`step-log`). From
    // a runtime that streams instead: stderr travels on its own channel, so the failed script's
    // last stderr lines may arrive after the `layer-fail` line; no script starts after a
    // failure, so the tail as it stands now is the failed script's output.
    if let Some(failure) = sink.failure.as_mut() {
        failure.tail = if sink.step_log.is_empty() {
            tail.clone()
        } else {
            sink.step_log.clone()
        };
    }
    // run.sh --test exits 9 when a check failed: the run itself went well, the report says the rest.
    let checks = sink.test_end.map(|(pass, fail, skip)| CheckReport {
        results: std::mem::take(&mut sink.checks),
        pass,
        fail,
        skip,
    });
    let (applied, skipped) = match (status, &sink.end) {
        // run.sh --check exits 10 when a run would change something: the report says what.
        (0 | 10, _) if opts.mode.checks_changes() && sink.check_changed.is_some() => (0, 0),
        (0, Some((_, a, s))) => (*a, *s),
        (9, Some((_, a, s))) if checks.is_some() => (*a, *s),
        (0 | 9, None) if checks.is_some() || status == 0 => (0, 0),
        (90, _) => {
            let (expected, actual) = sink
                .upload_mismatch
                .clone()
                .unwrap_or_else(|| (bundle.sha256.clone(), "?".into()));
            return Err(PushError::UploadMismatch {
                target,
                expected,
                actual,
            });
        }
        (3, _) => return Err(PushError::RemoteIntegrity { target, tail }),
        (4, _) if sink.failure.is_some() => {
            return Err(PushError::StepFailed {
                target,
                failure: Box::new(sink.failure.take().unwrap_or_else(|| StepFailure {
                    status: 4,
                    ..StepFailure::default()
                })),
            })
        }
        (5, _) => return Err(PushError::Locked { target }),
        (6, _) => {
            return Err(PushError::NoRoot {
                target,
                user: login,
            })
        }
        (2 | 8 | 91, _) if sink.failure.is_none() => {
            let reason = sink
                .held
                .last()
                .and_then(|l| l.strip_prefix("run.sh: "))
                .map(str::to_string);
            return Err(PushError::Runtime {
                target,
                status,
                tail: tail
                    .into_iter()
                    .filter(|l| !sink.held.contains(l))
                    .collect(),
                reason,
            });
        }
        _ => {
            if let Some(failure) = sink.failure.take() {
                return Err(PushError::StepFailed {
                    target,
                    failure: Box::new(failure),
                });
            }
            return Err(PushError::RunFailed {
                target,
                status,
                tail,
            });
        }
    };
    let dumped = sink.ledger.ledger();

    // The ledger, as run.sh left it: printed on the run channel; read in a session of its own
    // only if that print did not arrive whole (or did not parse).
    let ledger = match dumped {
        Some(Ok(ledger)) => ledger,
        _ if !opts.mode.applies() => Ledger::default(),
        _ => read_ledger_with(exec, &engine, ledger_user.as_deref().unwrap_or(&login))?,
    };
    let applied_layers = ledger.applied_layers(&bundle.manifest.deploy.id);

    Ok(PushReport {
        target,
        remote_dir: dir,
        bundle_sha256: bundle.sha256.clone(),
        deploy_id: Some(bundle.manifest.deploy.id.clone()),
        applied,
        skipped,
        applied_layers,
        ledger,
        cloud_init: cloud,
        user: ledger_user.unwrap_or_else(|| login.clone()),
        login_user: login,
        state: None,
        checks,
        changed: sink.check_changed,
    })
}

/// Record a finished push in deploy.yml: connection facts from `target` (and the login user
/// the target named), the layers the ledger holds, a stable instance id.
pub fn record_state(
    st: &StateTarget,
    target: &Target,
    report: &PushReport,
) -> Result<VmState, StateError> {
    let previous = load_vm_state(&st.file, &st.key)?;
    let instance_id = previous
        .as_ref()
        .and_then(|p| p.instance_id.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let state = VmState {
        instance_id: Some(instance_id),
        // With an ssh config the host is the config's alias, which means nothing without it.
        ssh_host: target.ssh_config.is_none().then(|| target.host.clone()),
        user: Some(report.user.clone()),
        ssh_user: target
            .user
            .clone()
            .or_else(|| Some(report.login_user.clone())),
        ssh_port: target.port,
        ssh_key_path: target
            .identity
            .as_ref()
            .map(|k| k.to_string_lossy().into_owned()),
        last_deploy: Some(now_rfc3339()),
        applied_layers: Some(report.applied_layers.clone()),
        bundle_sha256: Some(report.bundle_sha256.clone()),
    };
    save_vm_state(&st.file, &st.key, &st.vm, &state)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle archive `file_name` of an empty deploy `vm:x`.
    fn bundle(file_name: &str) -> BundleInfo {
        BundleInfo {
            path: "/x/b.tar.gz".into(),
            file_name: file_name.into(),
            sha256: "0".repeat(64),
            size: 1,
            top: "vm-x".into(),
            manifest: crate::bundle::test_manifest("vm:x", "abc", "u", &[]),
            run_sh: ov_compiler::remote::RunShOptions::default(),
        }
    }

    #[test]
    fn bootstrap_is_valid_bash_and_quotes_everything() {
        let bundle = bundle("we'ird name.tar.gz");
        let mut opts = PushOptions::new("/x/b.tar.gz");
        opts.user = Some("a b".into());
        opts.no_wait_lock = true;
        let s = bootstrap_script(
            &Engine::new(None).expect("the embedded templates compile"),
            "/var/lib/overthink/work/vm-x.123",
            &bundle,
            &opts,
            Some("a b"),
        )
        .expect("renders");
        // (ASCII, so the line before it reads it in blocks: every template it includes must be)
        assert!(s.starts_with("IFS= read -r -N "), "{s}");
        assert!(s.contains("ledger_user='a b'"), "{s}");
        assert!(s.contains("archive=\"we'ird name.tar.gz\""), "{s}");
        assert!(
            s.contains(&format!(
                "run.sh\" --bundle-sha256 {} ${{print:+\"$print\"}} ${{clean:+--cleanup \"$clean\"}} --no-wait --user 'a b' </dev/null",
                "0".repeat(64)
            )),
            "{s}"
        );
        let st = std::process::Command::new("bash")
            .args(["-n", "-c", &s])
            .status()
            .expect("bash");
        assert!(st.success());
        // An older run.sh (no `--print-ledger`, no `--cleanup`) gets neither; one that has them,
        // both (unless the work directory is kept).
        assert!(s.contains("\nprint=''\nclean=''\n"), "{s}");
        let mut newer = bundle;
        newer.run_sh = ov_compiler::remote::RunShOptions::of(
            "--print-ledger) opt_print=1 ;;\n--only | --cleanup)",
        );
        let render = |opts: &PushOptions| {
            bootstrap_script(
                &Engine::new(None).expect("the embedded templates compile"),
                "/var/lib/overthink/work/vm-x.123",
                &newer,
                opts,
                None,
            )
            .expect("renders")
        };
        let s = render(&opts);
        assert!(s.contains("\nprint=--print-ledger\nclean=$dir\n"), "{s}");
        opts.keep = true;
        let s = render(&opts);
        assert!(s.contains("\nprint=--print-ledger\nclean=''\n"), "{s}");
    }

    #[test]
    fn templates_dir_replaces_the_remote_scripts() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("remote")).expect("mkdir");
        std::fs::write(
            d.path().join("remote/bootstrap.sh.j2"),
            "echo replaced {{ archive }}\n",
        )
        .expect("write");
        let bundle = bundle("b c.tar.gz");
        let mut opts = PushOptions::new("/x/b.tar.gz");
        opts.templates = Some(d.path().to_path_buf());
        let plan = dry_run("t", None, &bundle, &opts).expect("renders");
        let replaced = "echo replaced 'b c.tar.gz'\n";
        assert!(plan.bootstrap.ends_with(replaced), "{}", plan.bootstrap);
        assert!(
            plan.bootstrap
                .starts_with(&format!("IFS= read -r -N {} ov_script", replaced.len())),
            "{}",
            plan.bootstrap
        );
    }

    #[test]
    fn a_failure_names_the_command_the_script_the_log_and_how_to_resume() {
        let f = StepFailure {
            layer: "a".into(),
            script: "01-system.sh".into(),
            status: 100,
            tail: vec!["E: Unable to locate package nope".into()],
            path: "layers/1-a/01-system.sh".into(),
            log: "/var/lib/overthink/installed/u/logs/abc.log".into(),
            command: Some("\"${apt[@]}\" install nope".into()),
            line: Some(12),
            inner: "lib.sh:812".into(),
        };
        let e = PushError::StepFailed {
            target: "u@h:22".into(),
            failure: Box::new(f),
        };
        assert_eq!(
            e.to_string(),
            "layer `a` failed on u@h:22: script `01-system.sh` exited with status 100
  failed command: \"${apt[@]}\" install nope
  in the bundle: layers/1-a/01-system.sh line 12 (the command is at lib.sh line 812)
  last output:
    E: Unable to locate package nope
  the whole output is in /var/lib/overthink/installed/u/logs/abc.log on the target
  fix, then push again to resume: the layers already applied are skipped"
        );
    }
}
