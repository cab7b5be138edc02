//! Shared test support: real targets (a private sshd, a debootstrapped Debian root, an sshd
//! chrooted into such a root, a cloud-init host), the end-to-end fixture, stand-in bundles and
//! the attacks on the target's privilege boundary. The helpers every test binary uses (running a
//! command that must succeed, whether we are root, skipping when a tool is missing) are in
//! `tests/common` (`run` is re-exported here).

pub mod ansible;
pub mod attack;
pub mod bundle;
pub mod chroot_sshd;
pub mod cloudhost;
pub mod e2e;
pub mod fleet;
pub mod rootfs;
pub mod sshd;

pub use crate::common::run;
