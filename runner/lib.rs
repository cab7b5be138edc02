//! `ov` runner library: everything that talks to machines (executors, SSH, waiting, push,
//! teardown, status, per-machine state, progress). The CLI (`cli.rs`, `main.rs`) is a thin
//! layer over these functions and their option structs.
//!
//! Flow of `ov push`: [`target::resolve`] → [`push::push`] ([`archive::open_bundle`] →
//! [`ssh::SshExecutor::connect`] (with [`wait`]) → [`push::push_with`] → [`ledger`] →
//! [`state`]); errors map to [`exit::Exit`] through [`exit::HasExit`].

pub mod archive;
pub mod executor;
pub mod exit;
pub mod ledger;
pub mod progress;
pub mod push;
pub mod ssh;
pub mod state;
pub mod target;
pub mod teardown;
pub mod wait;
