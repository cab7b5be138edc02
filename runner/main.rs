//! Binary entry point: parse the command line, run it, print `error:` with each `caused by:`, and
//! exit with the documented status. Everything else lives in the `ov` library.

use std::process::ExitCode;

fn main() -> ExitCode {
    ov::cli::main()
}
