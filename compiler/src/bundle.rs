//! bundle — placeholder module, being written.
