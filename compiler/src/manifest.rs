//! manifest — placeholder module, being written.
