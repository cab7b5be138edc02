//! Shared test support: real targets (a private sshd, a debootstrapped Debian root, an sshd
//! chrooted into such a root, a cloud-init host), the end-to-end fixture, stand-in bundles and
//! the attacks on the target's privilege boundary; and the helpers they all use (running a
//! command that must succeed, whether we are root, skipping when a tool is missing).

pub mod attack;
pub mod bundle;
pub mod chroot_sshd;
pub mod cloudhost;
pub mod e2e;
pub mod rootfs;
pub mod sshd;

use std::process::{Command, Output};

/// Run `cmd`, which must succeed; its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// True when nothing is `missing`; else skip (printed: `what` unavailable) — or, under `CI`,
/// fail, saying what `.ci/run` should have provided (`ci_hint`).
pub fn nothing_missing(what: &str, missing: &[String], ci_hint: &str) -> bool {
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{what} unavailable: missing {}", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: {ci_hint})");
    }
    eprintln!("SKIP: {msg}");
    false
}
