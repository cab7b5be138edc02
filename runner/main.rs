//! Binary entry point (the CLI is being wired).

fn main() {}
