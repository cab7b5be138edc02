//! Stage `runner`, OpenSSH's answers: OpenSSH reports a failed connection only as text on
//! stderr; [`classify`] is the single place that reads it, and [`Diagnosis::into_error`] turns
//! what retrying cannot fix into a [`ConnectError`] that says what would fix it.
//! Invariant: authentication, key-permission and host-key failures are never retried.

use crate::ssh::error::ConnectError;
use crate::ssh::exec::shown as quote;

/// What an OpenSSH connection failure means for us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnosis {
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
pub fn classify(stderr: &str) -> Diagnosis {
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
        return Diagnosis::HostKeyChanged {
            file,
            line: ln,
            message: line,
        };
    }
    if lower.contains("host key verification failed") {
        return Diagnosis::HostKeyUnverified(line);
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
        return Diagnosis::KeyPermissions {
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
        return Diagnosis::Auth(line);
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
        return Diagnosis::Retry(line);
    }
    Diagnosis::Fatal(line)
}

impl Diagnosis {
    /// The error for a diagnosis retrying cannot fix (a [`Diagnosis::Retry`] left over when
    /// the deadline passed reads as [`ConnectError::Fatal`]).
    pub fn into_error(
        self,
        target: &str,
        known_hosts_name: &str,
        key: Option<&str>,
    ) -> ConnectError {
        match self {
            Diagnosis::Auth(message) => ConnectError::Auth {
                target: target.to_string(),
                key: key.map(|k| format!(" with key `{k}`")).unwrap_or_default(),
                message,
            },
            Diagnosis::KeyPermissions {
                key: named,
                message,
            } => {
                let key = named
                    .or(key.map(str::to_string))
                    .unwrap_or_else(|| "KEY".into());
                ConnectError::KeyPermissions {
                    target: target.to_string(),
                    fix: format!("chmod 600 {}", quote(&key)),
                    key,
                    message,
                }
            }
            Diagnosis::HostKeyChanged { file, line, .. } => {
                let location = match (&file, line) {
                    (Some(f), Some(l)) => format!(" (known_hosts `{f}` line {l})"),
                    (Some(f), None) => format!(" (known_hosts `{f}`)"),
                    _ => String::new(),
                };
                let remove = match &file {
                    Some(f) => format!("ssh-keygen -f {} -R {}", quote(f), quote(known_hosts_name)),
                    None => format!("ssh-keygen -R {}", quote(known_hosts_name)),
                };
                ConnectError::HostKeyChanged {
                    host: known_hosts_name.to_string(),
                    location,
                    remove,
                }
            }
            Diagnosis::HostKeyUnverified(message) => ConnectError::HostKeyUnverified {
                target: target.to_string(),
                message,
            },
            Diagnosis::Fatal(message) | Diagnosis::Retry(message) => ConnectError::Fatal {
                target: target.to_string(),
                message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{Exit, HasExit};

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
            Diagnosis::HostKeyChanged {
                file: Some("/home/op/.local/share/ov/vm/ov-arch/known_hosts".into()),
                line: Some(3),
                message: "Host key verification failed.".into()
            }
        );
        assert_eq!(
            classify("ovtest@127.0.0.1: Permission denied (publickey).\n"),
            Diagnosis::Auth("ovtest@127.0.0.1: Permission denied (publickey).".into())
        );
        assert!(matches!(
            classify("Warning: Permanently added '[127.0.0.1]:2222' (ED25519) to the list of known hosts.\r\nx@h: Permission denied (publickey)."),
            Diagnosis::Auth(_)
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
            Diagnosis::KeyPermissions {
                key: Some("/home/op/my key".into()),
                message: "WARNING: UNPROTECTED PRIVATE KEY FILE!; Permissions 0644 for '/home/op/my key' are too open.; Load key \"/home/op/my key\": bad permissions".into()
            }
        );
        let e = f.into_error("ovtest@127.0.0.1:22", "127.0.0.1", None);
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
            assert!(matches!(classify(retry), Diagnosis::Retry(_)), "{retry}");
        }
        assert!(matches!(
            classify("ssh: Could not resolve hostname nope: Name or service not known"),
            Diagnosis::Fatal(_)
        ));
        assert!(matches!(
            classify("No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\nHost key verification failed."),
            Diagnosis::HostKeyUnverified(_)
        ));
    }

    #[test]
    fn host_key_error_says_which_file_and_line() {
        let e = Diagnosis::HostKeyChanged {
            file: Some("/k/known_hosts".into()),
            line: Some(3),
            message: String::new(),
        }
        .into_error("u@127.0.0.1:2222", "[127.0.0.1]:2222", None);
        let s = e.to_string();
        assert!(s.contains("`/k/known_hosts` line 3"), "{s}");
        assert!(
            s.contains("ssh-keygen -f /k/known_hosts -R '[127.0.0.1]:2222'"),
            "{s}"
        );
        assert_eq!(e.exit(), Exit::CannotConnect);
    }
}
