//! deploy — placeholder module, being written.
