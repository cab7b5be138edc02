//! Stage `render` (target-side scripts of the runner): the shell `ov` runs on a target outside a
//! bundle — the push channel's entry and bootstrap, the ledger read — rendered from `templates/remote/` by
//! the same engine as the bundle, so every value is quoted by its formatter and a missing one is
//! an error. Invariant: the runner keeps no shell text; it fills one of the plain context structs
//! below and gets the script back.

use serde::Serialize;

use crate::render::{Engine, RenderError};

/// A script of `templates/remote/`: its context, and the template it fills.
pub trait RemoteScript: Serialize {
    /// Template name, relative to `templates/`.
    const TEMPLATE: &'static str;
}

/// `remote/enter.sh.j2`: the push's run channel, run as the login user with `sh -c`: stops with
/// status 93 (`::ov:: enter cloud-init=present`, nothing read, nothing run as root) when
/// `cloud_init_program` is given and installed; otherwise becomes root (`sudo -n` unless the
/// login is root) and runs `bash -s`, which reads the bootstrap on the same stdin.
#[derive(Debug, Clone, Serialize)]
pub struct Enter<'a> {
    /// The cloud-init program to look for (`cloud-init`, or a test's stand-in); `None`: do not look.
    pub cloud_init_program: Option<&'a str>,
    /// Whether the login account is root; `None`: not known, the script finds out (and prints
    /// `::ov:: login user=NAME` first).
    pub login_root: Option<bool>,
}

/// `remote/bootstrap.sh.j2`: piped to `sudo -n bash -s` with the archive right after it; checks
/// the work directory is root's alone, stores the archive, verifies its digest, unpacks it, runs
/// `run.sh` (and/or `run.sh --test`) and prints the ledger back on the same channel.
#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap<'a> {
    /// The fresh work directory for this push (below `base`).
    pub dir: &'a str,
    /// The directory ov unpacks under; it and every directory above it must be root's alone.
    pub base: &'a str,
    /// The archive's file name.
    pub archive: &'a str,
    /// The archive's sha256 (hex), checked on arrival and recorded by `run.sh`.
    pub expected: &'a str,
    /// The archive's size in bytes: exactly what is read from stdin after the script.
    pub size: u64,
    /// The bundle's top directory (it holds `run.sh`).
    pub top: &'a str,
    /// `1`: leave the work directory in place; `0`: remove it.
    pub keep: u8,
    /// Apply the bundle (`run.sh`).
    pub apply: bool,
    /// Run the layers' checks (`run.sh --test --events`) after a successful apply, or alone.
    pub test: bool,
    /// Only say what a run would change (`run.sh --check`); with `check_diff`, how files differ.
    pub check: bool,
    /// `--diff` for `run.sh --check`.
    pub check_diff: bool,
    /// `--no-wait` for `run.sh`: refuse instead of waiting for the ledger lock.
    pub no_wait: bool,
    /// `--force` for `run.sh`: re-run layers already applied.
    pub force: bool,
    /// `--force-distro` for `run.sh`: run on a distro the bundle was not compiled for.
    pub force_distro: bool,
    /// `--verbose` for `run.sh`: stream every line the steps print.
    pub verbose: bool,
    /// `--user` for `run.sh`, when given.
    pub user: Option<&'a str>,
    /// `--scope` for `run.sh --test`, when given.
    pub test_scope: Option<&'a str>,
    /// Layers whose checks run (empty: all).
    pub test_layers: &'a [String],
    /// Whose ledger is printed after the run (empty: `$SUDO_USER`, else root).
    pub ledger_user: &'a str,
    /// Where root keeps the ledgers (one directory per account).
    pub ledgers: &'a str,
    /// What the bundle's `run.sh` accepts ([`RunShOptions::of`]): a bundle from an older `ov` may
    /// lack `--print-ledger` (the bootstrap prints the ledger then) or `--cleanup`.
    pub run_sh: RunShOptions,
}

/// The options of a bundle's `run.sh` that `ov push` passes only when it has them, read off its
/// text where the push reads the archive (once, locally: the target need not read it again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunShOptions {
    /// `--print-ledger`: print root's ledger at the end of a successful run.
    pub print_ledger: bool,
    /// `--cleanup DIR`: remove the directory the bundle was unpacked in when the run ends.
    pub cleanup: bool,
}

impl RunShOptions {
    /// The options `run_sh` (the text of a bundle's `run.sh`) parses: each is a `case` pattern
    /// (`--print-ledger)`) in its option loop.
    pub fn of(run_sh: &str) -> Self {
        Self {
            print_ledger: run_sh.contains("--print-ledger)"),
            cleanup: run_sh.contains("--cleanup)"),
        }
    }
}

/// `remote/read-script.sh.j2`: one line put before a script sent to `bash -s` ahead of other
/// data: it reads the script's remaining `size` bytes (ASCII) in blocks and runs them, where
/// bash alone would read them one byte per system call.
#[derive(Debug, Clone, Serialize)]
pub struct ReadScript {
    /// The length in bytes of the script that follows the line.
    pub size: usize,
}

/// `remote/ledger-read.sh.j2`: print root's ledger of `user` as `::ov-ledger::` lines (the same
/// lines the bootstrap prints after a run); run as root with `bash -s`. Exit 3: no such
/// account; 4: a directory on the way is not root's alone.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerRead<'a> {
    /// The account whose ledger is read.
    pub user: &'a str,
    /// Where root keeps the ledgers (one directory per account).
    pub ledgers: &'a str,
}

/// Each context struct and the template it fills.
macro_rules! remote_scripts {
    ($($script:ident => $template:literal,)*) => {
        $(impl RemoteScript for $script<'_> {
            const TEMPLATE: &'static str = $template;
        })*
    };
}

impl RemoteScript for ReadScript {
    const TEMPLATE: &'static str = "remote/read-script.sh.j2";
}

remote_scripts! {
    Enter => "remote/enter.sh.j2",
    Bootstrap => "remote/bootstrap.sh.j2",
    LedgerRead => "remote/ledger-read.sh.j2",
}

/// Render `script` from the embedded templates.
pub fn render<S: RemoteScript>(script: &S) -> Result<String, RenderError> {
    render_with(&Engine::new(None)?, script)
}

/// Render `script` with `engine` (whose templates a `--templates DIR` may have replaced).
pub fn render_with<S: RemoteScript>(engine: &Engine, script: &S) -> Result<String, RenderError> {
    engine.render(S::TEMPLATE, script)
}
