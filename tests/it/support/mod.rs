//! Shared test support: real targets (a private sshd, a debootstrapped Debian root, an sshd
//! chrooted into such a root, a cloud-init host), the end-to-end fixture, and stand-in bundles.

pub mod attack;
pub mod bundle;
pub mod chroot_sshd;
pub mod cloudhost;
pub mod e2e;
pub mod rootfs;
pub mod sshd;
