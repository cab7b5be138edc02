//! Stage `runner`, the apply room: what runs a bundle's scripts on a target over one channel —
//! [`push`] (upload once, verify, run `run.sh` or its checks, stream progress, read the ledger
//! back, remember the machine) and [`teardown`] (`ov deploy del`: the ledger's own `undo.sh`).
//! Invariant: every script sent is rendered from `templates/remote/` or is the verified bundle's
//! own; this room depends on the target, bundle, ssh and ui rooms, never the other way.

pub mod push;
pub mod teardown;
