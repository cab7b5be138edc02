//! `ov` the tool: the CLI (clap) and the runner — everything that talks to machines. The pure
//! compiler lives in the `ov-compiler` crate; this crate converts command-line arguments into
//! plain option structs first, then calls library functions.
//!
//! Flow of `ov push`: [`target::resolve`] → [`push::push`] ([`archive::open_bundle`] →
//! [`ssh::SshExecutor::connect`] (with [`wait`]) → [`push::push_with`] → [`ledger`] →
//! [`state`]); errors map to [`exit::Exit`] through [`exit::HasExit`].

pub mod archive;
pub mod cli;
pub mod commands;
pub mod compile_cmd;
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
