//! `ov` the tool: the CLI (clap) and the runner — everything that talks to machines. The pure
//! compiler lives in the `ov-compiler` crate; this crate converts command-line arguments into
//! plain option structs first, then calls one command function per subcommand.
//!
//! Rooms, each depending only on the ones after it (no cycles):
//! [`cli`] → [`commands`] → [`push`], [`teardown`], [`ledger`], [`archive`] → [`target`] →
//! [`ssh`] → [`ui`] → [`exit`].
//!
//! Flow of `ov push`: [`cli`] → [`commands::push`] (the project resolved once by
//! [`commands::project`], the deploy typed by [`target::deploy`]) → [`push::push`]
//! ([`archive::open_bundle`] → [`ssh::master::SshExecutor::connect`] (retrying in
//! [`ssh::connect`]) → [`target::cloud_init`] → [`push::push_with`] → [`ledger`] →
//! [`target::state`]); a failure is one [`commands::CommandError`], printed by [`ui::error`],
//! whose exit status is [`exit::Exit`].

pub mod archive;
pub mod cli;
pub mod commands;
pub mod exit;
pub mod ledger;
pub mod push;
pub mod ssh;
pub mod target;
pub mod teardown;
pub mod ui;
