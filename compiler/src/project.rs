//! project — placeholder module, being written.
