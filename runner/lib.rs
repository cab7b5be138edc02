//! `ov` runner library: everything that talks to machines (executors, SSH, waiting, push,
//! teardown, per-machine state, progress). The CLI (`cli.rs`, `main.rs`) is a thin layer over
//! these functions and their option structs.

pub mod executor;
pub mod exit;
pub mod progress;
pub mod ssh;
pub mod state;
pub mod target;
pub mod wait;
