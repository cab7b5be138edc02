//! CLI tests, shared part: run the real `ov` binary (`CARGO_BIN_EXE_ov`) in a controlled
//! environment and capture exit status, stdout and stderr.
//! Invariant: nothing from the developer's environment (`OV_PROJECT`, `SOURCE_DATE_EPOCH`, colour
//! settings, terminal width, `HOME` caches) leaks into what a test sees or snapshots.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use crate::common::{copy_tree, have_tool};
use std::process::{Command, Stdio};

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    /// Exit status (a signal death is a test failure, not a status).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `ov` with a clean environment: no project from the environment, no timestamp override, no
/// colour, a fixed help width, stdin closed (so clap sees no terminal anywhere).
pub fn ov() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ov"));
    clean(&mut c);
    c
}

/// The same environment scrubbing for a command that runs `ov` indirectly (`sh -c …`).
pub fn clean(c: &mut Command) {
    for var in [
        "OV_PROJECT",
        "SOURCE_DATE_EPOCH",
        "CLICOLOR",
        "CLICOLOR_FORCE",
        "XDG_CACHE_HOME",
    ] {
        c.env_remove(var);
    }
    c.env("COLUMNS", "100").env("NO_COLOR", "1");
    c.stdin(Stdio::null());
}

/// Run to completion and capture.
pub fn run(c: &mut Command) -> Run {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    Run {
        code: out
            .status
            .code()
            .unwrap_or_else(|| panic!("{c:?} died by a signal: {:?}", out.status)),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

/// `ov ARGS…` run to completion.
pub fn ov_run(args: &[&str]) -> Run {
    run(ov().args(args))
}

/// Fail with both streams shown unless the run exited with `code`.
pub fn expect_code(r: &Run, code: i32, what: &str) {
    assert_eq!(
        r.code, code,
        "{what}: exit {} (want {code})\n--- stdout\n{}\n--- stderr\n{}",
        r.code, r.stdout, r.stderr
    );
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `examples/demo`.
pub fn demo() -> PathBuf {
    repo().join("examples/demo")
}

/// `tests/fixtures/cli`.
pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/cli")
}

/// The overthink corpus, used in place. `None` (with a message) when absent; under CI its
/// absence fails the test.
pub fn corpus() -> Option<PathBuf> {
    let p = repo().join("../shared/corpus/overthink-3e714536");
    if p.join("overthink.yml").is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the corpus is missing at {} (required under CI)",
        p.display()
    );
    eprintln!("skipping: the corpus is not at {}", p.display());
    None
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_dir() {
            out.extend(files_under(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out.sort();
    out
}

/// Whether the owner may execute `path`.
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o100
        != 0
}
