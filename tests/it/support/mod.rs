//! Shared test support: real targets (a private sshd) and stand-in bundles.

pub mod bundle;
pub mod cloudhost;
pub mod rootfs;
pub mod sshd;
