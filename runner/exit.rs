//! Stage `runner`, exit codes: the one enum every command maps its outcome to; the numbers are
//! part of the CLI's interface (documented in the README) and never change meaning.

use std::fmt;

/// Process exit status of `ov`.
///
/// | code | meaning |
/// |---:|---|
/// | 0 | success |
/// | 1 | any other failure (local I/O, an unexpected remote answer, …) |
/// | 2 | usage: bad command line |
/// | 3 | invalid input: layers, deploy files, a bundle that cannot be read, a missing key |
/// | 4 | integrity: the bundle does not match its `.sha256` or `SHA256SUMS` (locally or after upload) |
/// | 5 | cannot connect: SSH unreachable before the deadline, authentication refused, a private key others may read, host key changed, or the user lacks passwordless sudo |
/// | 6 | cloud-init on the target finished with errors |
/// | 7 | a remote step failed (a layer script, or teardown left something undone) |
/// | 8 | the target's ledger is locked by another run |
/// | 9 | a check of the layers' own tests (`ov test`, `ov push --verify`) failed |
/// | 10 | the target differs from what the project compiles now (`ov status --exit-code`) |
/// | 11 | a command on many targets (`--inventory`): one or more hosts failed, were unreachable or were not started (`--max-fail`); the recap says which and why |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// 0 — everything worked.
    Ok,
    /// 1 — a failure none of the other codes describes.
    Other,
    /// 2 — the command line was wrong.
    Usage,
    /// 3 — an input file (layers, deploy.yml, bundle, key) is invalid or missing.
    InvalidInput,
    /// 4 — a checksum did not match.
    Integrity,
    /// 5 — the target could not be reached or would not let us in (incl. sudo).
    CannotConnect,
    /// 6 — cloud-init reported errors.
    CloudInit,
    /// 7 — a step on the target failed.
    RemoteStep,
    /// 8 — another run holds the target's ledger lock.
    Locked,
    /// 9 — a check of the layers' own tests failed on the target.
    ChecksFailed,
    /// 10 — the target differs from what the project compiles now (asked for with `--exit-code`).
    Differs,
    /// 11 — on an inventory, one or more hosts did not succeed (the others went on).
    HostsFailed,
}

impl Exit {
    /// Every variant, in code order (for docs and tests).
    pub const ALL: [Exit; 12] = [
        Exit::Ok,
        Exit::Other,
        Exit::Usage,
        Exit::InvalidInput,
        Exit::Integrity,
        Exit::CannotConnect,
        Exit::CloudInit,
        Exit::RemoteStep,
        Exit::Locked,
        Exit::ChecksFailed,
        Exit::Differs,
        Exit::HostsFailed,
    ];

    /// The numeric process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Other => 1,
            Exit::Usage => 2,
            Exit::InvalidInput => 3,
            Exit::Integrity => 4,
            Exit::CannotConnect => 5,
            Exit::CloudInit => 6,
            Exit::RemoteStep => 7,
            Exit::Locked => 8,
            Exit::ChecksFailed => 9,
            Exit::Differs => 10,
            Exit::HostsFailed => 11,
        }
    }

    /// A short description (used by `--help` texts and JSON output).
    pub fn describe(self) -> &'static str {
        match self {
            Exit::Ok => "success",
            Exit::Other => "other failure",
            Exit::Usage => "usage error",
            Exit::InvalidInput => "invalid input",
            Exit::Integrity => "integrity check failed",
            Exit::CannotConnect => "cannot connect",
            Exit::CloudInit => "cloud-init failed",
            Exit::RemoteStep => "remote step failed",
            Exit::Locked => "target locked",
            Exit::ChecksFailed => "a check failed",
            Exit::Differs => "the target differs",
            Exit::HostsFailed => "some hosts failed",
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.describe())
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// Implemented by every runner error so the CLI can turn it into an [`Exit`].
pub trait HasExit {
    /// The exit status this error stands for.
    fn exit(&self) -> Exit;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_documented_order() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(Exit::Locked.to_string(), "8 (target locked)");
    }
}
