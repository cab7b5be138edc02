//! Stage `runner`, ssh errors: why no connection to a target could be made, with the exit status
//! each reason stands for (5, or 1 when the local set-up failed).
//! Invariant: messages are complete when built — this type needs nothing from the rest of the
//! ssh room to print itself, so the executor can carry it without a cycle.

use crate::exit::{Exit, HasExit};

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
    #[error("authentication failed for {target}: OpenSSH ignored the private key `{key}` because others may read it ({message}); make it private with `{fix}` and retry")]
    KeyPermissions {
        /// Target description.
        target: String,
        /// The key file.
        key: String,
        /// OpenSSH's lines about it.
        message: String,
        /// The command that makes the key private (`chmod 600 KEY`, quoted).
        fix: String,
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
        message: String,
    },
    /// Local setup failed (control directory, runtime).
    #[error("cannot prepare the ssh connection: {what}")]
    Setup {
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl HasExit for ConnectError {
    fn exit(&self) -> Exit {
        match self {
            ConnectError::Setup { .. } => Exit::Other,
            _ => Exit::CannotConnect,
        }
    }
}
