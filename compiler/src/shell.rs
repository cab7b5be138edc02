//! shell — placeholder module, being written.
