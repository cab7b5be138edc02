//! Stage `runner`, the target room: what the runner knows about the machine a deploy goes to —
//! which deploy and machine ([`deploy`]), how to reach it ([`resolve`]), what is remembered about
//! it between pushes ([`state`]), what a bundle left on it ([`ledger`]: root's records, read
//! back) and waiting for its cloud-init ([`cloud_init`]).
//! Invariant: depends on the ssh room below it, never the other way.

pub mod cloud_init;
pub mod deploy;
pub mod ledger;
pub mod resolve;
pub mod state;
