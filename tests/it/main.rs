//! The one integration test binary of `ov`. Modules by area; `support/` holds the test targets
//! (a private sshd, a debootstrapped Debian root, sshd chrooted into such a root) and fixtures.

#[path = "../common/mod.rs"]
mod common;

mod architecture;
mod attacks;
mod batch_chroot;
mod batch_rpm_pac_chroot;
mod bundle_chroot;
mod by_hand_chroot;
mod cli_bounded;
mod cli_bundle;
mod cli_common;
mod cli_errors;
mod cli_help;
mod cli_plan;
mod cli_push;
mod cloud_init;
mod deploy_e2e;
mod emit;
mod fidelity;
mod fleet;
mod inventory;
mod remote_layers;
mod service_chroot;
mod signed_bundles;
mod ssh_faults;
mod ssh_push;
mod support;
