//! resolve — placeholder module, being written.
