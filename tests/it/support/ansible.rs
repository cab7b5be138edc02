//! Test support, the real Ansible: `ansible-core` pinned in `bench/requirements.txt`, installed
//! into `bench/.venv` (by `.ci/run` and `bench/run.sh`), or on `PATH`.
//! Invariant: tests that compare with or drive Ansible use the real program; when it is missing
//! they skip with a message, except under `CI`, where that is a failure.

use std::path::{Path, PathBuf};

/// The directory of the bench's virtualenv programs.
fn venv_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/.venv/bin")
}

/// Where the Ansible program `name` (`ansible-inventory`, `ansible-playbook`) is: the bench's
/// virtualenv first, then `PATH`; `None` (with a message, or a failure under `CI`) when missing.
pub fn program(name: &str) -> Option<PathBuf> {
    let in_venv = venv_bin().join(name);
    let found = if in_venv.is_file() {
        Some(in_venv)
    } else {
        crate::common::find_tool(name)
    };
    if found.is_none() {
        crate::common::nothing_missing(
            "ansible",
            &[name.to_string()],
            ".ci/run installs ansible-core into bench/.venv from bench/requirements.txt",
        );
    }
    found
}
