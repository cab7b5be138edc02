//! `ov` the tool: the CLI (clap) and the runner — everything that talks to machines. The pure
//! compiler lives in the `ov-compiler` crate; this crate converts command-line arguments into
//! plain option structs first, then calls one command function per subcommand.
//!
//! Rooms, each depending only on the ones after it (no cycles, checked by a test):
//! [`cli`] → [`commands`] → [`apply`] (push, teardown) → [`target`] (deploy, reach, state,
//! ledger, cloud-init) → [`bundle`] (the local archive) → [`ssh`] → [`ui`] → [`exit`];
//! [`fleet`] (many hosts at once: the pool, its display and recap) serves [`commands`];
//! [`inventory`] (Ansible inventories and host patterns, pure) uses only [`exit`];
//! [`repos`] (the repo cache of remote layers, fetched with git) serves [`commands`].
//!
//! Flow of `ov push`: [`cli`] → [`commands::push`] (the project resolved once by
//! [`commands::project`], the deploy typed by [`target::deploy`]) → [`apply::push::push`]
//! ([`bundle::open_bundle`] → [`ssh::master::SshExecutor::connect`] (retrying in
//! [`ssh::connect`]) → [`target::cloud_init`] → [`apply::push::push_with`] → [`target::ledger`]
//! → [`target::state`]); `--sign KEY` and the manifest's provenance come from [`sign`] (a
//! leaf room, like [`exit`]); a failure is one [`commands::CommandError`], printed by [`ui::error`],
//! whose exit status is [`exit::Exit`].

pub mod apply;
pub mod bundle;
pub mod cli;
pub mod commands;
pub mod exit;
pub mod fleet;
pub mod inventory;
pub mod repos;
pub mod sign;
pub mod ssh;
pub mod target;
pub mod ui;
