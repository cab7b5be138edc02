//! Stage `runner`, command errors: the one error type of the commands layer — every failure a
//! subcommand can end with, each variant with its exit status (like nextest's `ExpectedError`).
//! Lower layers keep their own types and codes ([`HasExit`]); they arrive here transparently, so
//! the printer sees their messages and sources unchanged.
//! Invariant: `exit()` is the only place a command's outcome becomes an exit status.

use std::path::PathBuf;

use crate::apply::push::PushError;
use crate::apply::teardown::TeardownError;
use crate::bundle::BundleError as ArchiveError;
use crate::exit::{Exit, HasExit};
use crate::ssh::exec::ExecError;
use crate::target::ledger::LedgerError;
use crate::target::resolve::TargetError;
use crate::target::state::StateError;

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    // The compiler's stages (exit 3; writing a bundle: 1), as they are.
    #[error(transparent)]
    Project(#[from] ov_compiler::project::ProjectError),
    #[error(transparent)]
    Deploy(#[from] ov_compiler::deploy::DeployError),
    #[error(transparent)]
    Resolve(#[from] ov_compiler::resolve::ResolveError),
    #[error(transparent)]
    Lower(#[from] ov_compiler::lower::LowerError),
    #[error(transparent)]
    Render(#[from] ov_compiler::render::RenderError),
    #[error(transparent)]
    Build(ov_compiler::bundle::BundleError),
    /// Remote layers: a bad ref, a missing or unfetchable repository, `ov.lock`.
    #[error(transparent)]
    Repo(Box<crate::repos::RepoError>),
    #[error(transparent)]
    Write(ov_compiler::bundle::BundleError),
    /// `ov compile --emit`: the hand-off could not be rendered, or does not fit.
    #[error(transparent)]
    Emit(#[from] ov_compiler::emit::EmitError),
    /// A bundle `ov inspect`, `ov verify` or `ov push` could not use.
    #[error("cannot {action} bundle `{}`", path.display())]
    Bundle {
        /// `inspect`, `verify`, `push`.
        action: &'static str,
        path: PathBuf,
        #[source]
        source: BundleReadError,
    },
    /// `ov inspect --script` names no text file of the bundle.
    #[error("`{path}` is not a text file of this bundle; files: {}", files.join(", "))]
    NotInBundle { path: String, files: Vec<String> },
    /// `ov verify` found no checksum file beside the archive.
    #[error("cannot read `{}` (the checksum file must sit beside the archive): {reason}", path.display())]
    NoChecksumFile {
        path: PathBuf,
        reason: std::io::Error,
    },
    /// `--sign KEY` cannot be used.
    #[error(transparent)]
    SignKey(#[from] crate::sign::SignKeyError),
    /// `ov verify --allowed-signers`: the signature is missing, unknown or bad.
    #[error("bundle `{}`: {source}", path.display())]
    Signature {
        path: PathBuf,
        #[source]
        source: crate::sign::SignatureError,
    },
    /// `ov push --require-signature` with an unsigned bundle.
    #[error("refusing to push `{what}`: it is not signed and `--require-signature` was given (compile with `--sign KEY`)")]
    Unsigned { what: String },
    /// There is no place for the bundle cache.
    #[error("neither `XDG_CACHE_HOME` nor `HOME` is set")]
    NoCacheDir,
    /// Local I/O (working directory, cache directory, stdout).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Serialising JSON output.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    // The runner's layers below, with their own exit codes: the local bundle, the target,
    // the saved state, the local executor, then `ov push`/`ov test`, `ov deploy del` and
    // `ov status`.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Push(#[from] PushError),
    #[error(transparent)]
    Teardown(#[from] TeardownError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Checks that never reported (a run.sh without `--test`).
    #[error("the checks on {target} did not report a result")]
    ChecksSilent { target: String },
    /// `ov status --exit-code`: the target does not hold what the project compiles now.
    #[error("the target differs from what the project compiles now: {what}")]
    Differs { what: String },
    /// An inventory that cannot be read, a host pattern that selects nothing, a host's
    /// variables that cannot be used.
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    /// On an inventory, some hosts did not succeed (the recap above names each and why).
    #[error("{failed} of {total} host(s) did not succeed (the recap above says which and why)")]
    HostsFailed { failed: usize, total: usize },
    /// The layers' own checks failed.
    #[error("{} check(s) failed on {target}:\n  {}", failed.len(), failed.join("\n  "))]
    ChecksFailed {
        target: String,
        /// `layer/id: message` of each failed check.
        failed: Vec<String>,
    },
}

impl From<crate::repos::RepoError> for CommandError {
    fn from(e: crate::repos::RepoError) -> CommandError {
        CommandError::Repo(Box::new(e))
    }
}

/// Why a bundle could not be read for `inspect`, `verify` or `push`.
#[derive(Debug, thiserror::Error)]
pub enum BundleReadError {
    /// The archive cannot be opened.
    #[error(transparent)]
    Open(#[from] std::io::Error),
    /// The archive or its manifest cannot be read.
    #[error(transparent)]
    Inspect(#[from] ov_compiler::manifest::InspectError),
    /// The archive does not match its checksums (or is beyond the reading limits).
    #[error(transparent)]
    Verify(#[from] ov_compiler::manifest::VerifyError),
    /// An unpacked bundle cannot be read, or does not match its checksums.
    #[error(transparent)]
    Dir(#[from] ov_compiler::bundle_dir::DirError),
}

impl HasExit for CommandError {
    fn exit(&self) -> Exit {
        use ov_compiler::bundle_dir::DirError;
        use ov_compiler::manifest::VerifyError;
        match self {
            CommandError::Project(_)
            | CommandError::Deploy(_)
            | CommandError::Resolve(_)
            | CommandError::Lower(_)
            | CommandError::Render(_)
            | CommandError::Build(_)
            | CommandError::NotInBundle { .. }
            | CommandError::SignKey(_)
            | CommandError::NoChecksumFile { .. } => Exit::InvalidInput,
            CommandError::Signature { source, .. } => match source {
                crate::sign::SignatureError::Keygen { .. } => Exit::Other,
                _ => Exit::Integrity,
            },
            CommandError::Unsigned { .. } => Exit::Integrity,
            CommandError::Bundle { source, .. } => match source {
                BundleReadError::Verify(VerifyError::Archive(a)) if a.is_limit() => {
                    Exit::InvalidInput
                }
                BundleReadError::Verify(_) => Exit::Integrity,
                BundleReadError::Dir(d) => match d {
                    DirError::Verify(VerifyError::Archive(a)) if a.is_limit() => Exit::InvalidInput,
                    DirError::Verify(_) | DirError::NotPlain { .. } => Exit::Integrity,
                    DirError::Read { .. }
                    | DirError::TooManyEntries { .. }
                    | DirError::KeptTooLarge { .. }
                    | DirError::NotABundle { .. }
                    | DirError::Inspect(_) => Exit::InvalidInput,
                },
                BundleReadError::Open(_) | BundleReadError::Inspect(_) => Exit::InvalidInput,
            },
            CommandError::Emit(e) => match e {
                ov_compiler::emit::EmitError::Render(_)
                | ov_compiler::emit::EmitError::NoUser { .. }
                | ov_compiler::emit::EmitError::BadUrl { .. } => Exit::InvalidInput,
                ov_compiler::emit::EmitError::TooLarge { .. }
                | ov_compiler::emit::EmitError::Gzip(_) => Exit::Other,
            },
            CommandError::Write(_)
            | CommandError::NoCacheDir
            | CommandError::Io(_)
            | CommandError::Json(_) => Exit::Other,
            CommandError::Repo(e) => e.exit(),
            CommandError::Archive(e) => e.exit(),
            CommandError::Target(e) => e.exit(),
            CommandError::State(e) => e.exit(),
            CommandError::Exec(e) => e.exit(),
            CommandError::Push(e) => e.exit(),
            CommandError::Teardown(e) => e.exit(),
            CommandError::Ledger(e) => e.exit(),
            CommandError::Differs { .. } => Exit::Differs,
            CommandError::Inventory(e) => e.exit(),
            CommandError::HostsFailed { .. } => Exit::HostsFailed,
            CommandError::ChecksSilent { .. } | CommandError::ChecksFailed { .. } => {
                Exit::ChecksFailed
            }
        }
    }
}
