//! Test support shared by every integration test binary of `ov` (`it`, `vm`): finding the tools a
//! test needs, root, running a command that must succeed, copying a fixture tree, and `ov` with a
//! clean environment.
//! Invariant: a missing tool skips a test with a message, except under `CI`, where it fails.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where `tool` is: on `PATH`, or in the sbin directories a non-login root shell may lack.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// True when nothing is `missing`; else skip (printed: `what` unavailable) — or, under `CI`,
/// fail, saying what `.ci/run` should have provided (`ci_hint`).
pub fn nothing_missing(what: &str, missing: &[String], ci_hint: &str) -> bool {
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{what} unavailable: missing {}", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: {ci_hint})");
    }
    eprintln!("SKIP: {msg}");
    false
}

/// Whether `what` can run here: every one of `tools` is installed and, when `root`, this
/// process is root. See [`nothing_missing`] for what happens when not.
pub fn require(what: &str, tools: &[&str], root: bool, ci_hint: &str) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| find_tool(t).is_none())
        .map(|t| t.to_string())
        .collect();
    if root && !is_root() {
        missing.push("root privileges".into());
    }
    nothing_missing(what, &missing, ci_hint)
}

/// A tool the test needs (`tar`, `sha256sum`): `false` (with a message) when missing; under CI
/// its absence fails the test.
pub fn have_tool(name: &str) -> bool {
    require(
        &format!("`{name}`"),
        &[name],
        false,
        "install it in .ci/run",
    )
}

/// Run `cmd`, which must succeed; its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Copy a directory tree (files keep their permission bits).
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("create copy dir");
    for entry in std::fs::read_dir(src).expect("read dir") {
        let entry = entry.expect("dir entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copy file");
        }
    }
}

/// Exit status, stdout and stderr, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `ov` binary for `project`, with a clean environment apart from PATH and `home` as HOME
/// (and the XDG directories under it), so its deploy.yml, keys and bundle cache are the test's.
pub fn ov_at_home(home: &Path, project: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ov"));
    c.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            }),
        )
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("LANG", "C.UTF-8")
        .env("TERM", "dumb")
        .arg("-C")
        .arg(project);
    c
}
