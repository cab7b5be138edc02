//! The one integration test binary of `ov`. Modules by area; `support/` holds the test targets
//! and fixtures they share.

mod ssh_faults;
mod ssh_push;
mod support;
