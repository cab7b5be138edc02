//! ov
