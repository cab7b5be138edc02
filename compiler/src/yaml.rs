//! yaml — placeholder module, being written.
