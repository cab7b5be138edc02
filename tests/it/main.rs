//! The one integration test binary of `ov`. Modules by area; `support/` holds the test targets
//! (a private sshd, a debootstrapped Debian root) and fixtures they share.

mod bundle_chroot;
mod deploy_e2e;
mod ssh_faults;
mod ssh_push;
mod support;
