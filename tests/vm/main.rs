//! The VM test binary of `ov`: real Debian guests booted under QEMU (TCG) with real systemd,
//! sshd and cloud-init, deployed to with the `ov` binary while they boot. A separate binary from
//! `it` so cargo runs it after `it`, never beside its tests; within it one guest at a time. A
//! guest whose kernel reports a stall (TCG on a loaded host can lose a vCPU's timer wakeup, and
//! the guest never comes back) is killed at once, and its test runs once more on a fresh guest
//! (`support::vm_test`); a failure without a stall is never retried.
//! Needs root, qemu-system-x86, mmdebstrap and genisoimage: without them the tests print a skip
//! message and pass, except under `CI`, where they fail.

#[path = "../common/mod.rs"]
mod common;

mod cloud_init;
mod deploy;
mod emit;
mod support;
