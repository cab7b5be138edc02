//! layer_parse — placeholder module, being written.
