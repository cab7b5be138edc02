//! Stage `runner`, the ssh room: everything that talks to a machine — the [`exec::Executor`]
//! primitive (local or over SSH), connecting with retries ([`connect`]), reading OpenSSH's
//! failures ([`openssh`]) and the ControlMaster executor ([`master`]).
//! Invariant: this room knows nothing of bundles, ledgers or deploys; it depends only on
//! [`crate::ui::progress`] (to report waiting) and [`crate::exit`].

pub mod connect;
pub mod endpoint;
pub mod error;
pub mod exec;
pub mod master;
pub mod openssh;
