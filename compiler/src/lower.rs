//! lower — placeholder module, being written.
