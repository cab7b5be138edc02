//! Stage `runner`, the ui room: what the user sees — the progress display ([`progress`]) and the
//! one printer of errors ([`error`]).
//! Invariant: nothing here talks to a machine; every other room may report through it.

pub mod error;
pub mod progress;
