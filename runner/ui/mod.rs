//! Stage `runner`, the ui room: what the user sees — the progress display ([`progress`]) and the
//! one printer of errors ([`error`]), and what makes untrusted text safe to print ([`term`]).
//! Invariant: nothing here talks to a machine; every other room may report through it.

pub mod error;
pub mod progress;
pub mod term;
