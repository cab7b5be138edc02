//! `ov` the tool: the CLI (clap) and the runner — everything that talks to machines. The pure
//! compiler lives in the `ov-compiler` crate; this crate converts command-line arguments into
//! plain option structs first, then calls library functions.
