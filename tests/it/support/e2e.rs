//! Test support, the end-to-end fixture: the project `tests/fixtures/e2e` (one VM `e2e`, user
//! `tester`, seven layers), the Debian root its tests run it in, the `ov` binary, and the readers
//! both real-run tests share — `::ov::` progress lines and snapshots of a root's file tree.
//! Invariant: the root is offline (no resolver, no retries), so a run never reaches the network:
//! `apt-get update` fails fast and is ignored, and `hello` installs from the cache debootstrap
//! filled when the root was built.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::rootfs::Spec;

/// The VM of the fixture's deploy.
pub const VM: &str = "e2e";
/// The deploy name.
pub const DEPLOY: &str = "vm:e2e";
/// The target user (the VM spec's `ssh.user`).
pub const USER: &str = "tester";
/// The fixture's layers in install order (resolve: dependencies first, then request order,
/// then name).
pub const LAYERS: [&str; 7] = [
    "e2e-hello",
    "e2e-system",
    "e2e-gate",
    "e2e-task",
    "e2e-env",
    "e2e-user",
    "e2e-link",
];
/// The layer that fails (status 42) until [`GATE_MARKER`] exists in the root.
pub const GATE: &str = "e2e-gate";
/// The marker file `e2e-gate` checks.
pub const GATE_MARKER: &str = "/etc/e2e-allow";
/// The target user's ledger (root's).
pub const LEDGER: &str = "/var/lib/overthink/installed/tester";

/// The fixture project.
pub fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2e")
}

/// The Debian root both real-run tests use (one cached debootstrap): sshd and sudo for the SSH
/// host, `hello` in apt's cache.
pub fn spec() -> Spec {
    Spec {
        include: vec!["openssh-server", "sudo"],
        prefetch: vec!["hello"],
    }
}

/// An apt setting for an offline root: one attempt per download, so the failing `apt-get
/// update` of a run costs a second, not the retries' backoff.
pub const OFFLINE_APT: (&str, &str) = (
    "etc/apt/apt.conf.d/99-ov-it-offline",
    "// ov integration tests: this root has no network.\nAcquire::Retries \"0\";\n",
);

/// The `ov` binary with a clean environment apart from PATH and `home` as HOME (and XDG dirs
/// under it), so its deploy.yml, keys and bundle cache are the test's.
pub fn ov(home: &Path) -> Command {
    ov_in(home, &project())
}

/// [`ov`] for another project.
pub fn ov_in(home: &Path, project: &Path) -> Command {
    crate::common::ov_at_home(home, project)
}

/// `ov -C <the e2e project> ARGS` as the operator of `home`, in a terminal (`script` gives it a
/// pty): what the terminal showed is the output's stdout. ARGS are words without blanks or globs.
pub fn in_terminal(home: &Path, args: &[&str]) -> Output {
    let cmd = ov(home);
    let base: Vec<&std::ffi::OsStr> = cmd.get_args().collect();
    assert_eq!(base.first().map(|a| a.to_str()), Some(Some("-C")));
    let mut script = Command::new("script");
    script.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            script.env(k, v);
        }
    }
    for a in args {
        assert!(
            !a.is_empty() && !a.contains(|c: char| c.is_whitespace() || "*?[".contains(c)),
            "`{a}` is not one plain word"
        );
    }
    // `script` runs one shell command: the values reach it as variables, not as its text; the
    // words are split by the shell with globbing off.
    let out = script
        .env("TERM", "xterm")
        .env("OVT_BIN", cmd.get_program())
        .env("OVT_PROJECT", base[1])
        .env("OVT_ARGS", args.join(" "))
        .args([
            "-q",
            "-e",
            "-c",
            r#"set -f; exec "$OVT_BIN" -C "$OVT_PROJECT" $OVT_ARGS"#,
            "/dev/null",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script runs");
    eprintln!(
        "$ script -c 'ov {}' -> {:?}",
        args.join(" "),
        out.status.code()
    );
    out
}

/// A fresh root of `spec` with account `user`, offline: no resolver (`Root::new` copies this
/// machine's), apt told to try each download once ([`OFFLINE_APT`]). `None` when the tools are
/// missing (the test skips; under `CI` that is a failure).
pub fn offline_root(spec: &Spec, user: &str) -> Option<super::rootfs::Root> {
    if !super::rootfs::available() {
        return None;
    }
    let root = super::rootfs::Root::new(&super::rootfs::tarball(spec));
    root.sh(&format!(
        "useradd -m -s /bin/bash {user} && rm -f /etc/resolv.conf"
    ));
    std::fs::write(root.path(OFFLINE_APT.0), OFFLINE_APT.1).expect("apt conf");
    Some(root)
}

/// `ov compile host --distro DISTRO LAYER… FLAGS…` of the project in `dir`, unpacked into `out`
/// inside `root` (replacing what is there); returns `ov plan`'s output for the same layers.
pub fn compile_host(
    root: &super::rootfs::Root,
    dir: &Path,
    out: &str,
    distro: &str,
    layers: &[&str],
    flags: &[&str],
) -> String {
    let ov = |args: &[&str]| {
        let done = ov_in(dir, dir).args(args).output().expect("ov runs");
        assert_eq!(done.status.code(), Some(0), "{}", text(&done));
        String::from_utf8_lossy(&done.stdout).into_owned()
    };
    let out = root.path(out);
    if out.exists() {
        std::fs::remove_dir_all(&out).expect("old bundle");
    }
    let mut args = vec!["compile", "host", "--distro", distro];
    args.extend_from_slice(layers);
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--out-dir", out.to_str().expect("utf-8 path")]);
    ov(&args);
    let mut args = vec!["plan", "host", "--distro", distro];
    args.extend_from_slice(layers);
    args.extend_from_slice(flags);
    ov(&args)
}

/// Exit status, stdout and stderr, for assertion messages.
pub use crate::common::output_text as text;

/// The `::ov::` lines of `stdout` as (event, fields); `msg=` takes the rest of the line.
pub fn events(stdout: &[u8]) -> Vec<(String, BTreeMap<String, String>)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("::ov:: "))
        .map(|l| {
            let (event, rest) = l.split_once(' ').unwrap_or((l, ""));
            let (head, msg) = match rest.find("msg=") {
                Some(i) => (&rest[..i], Some(&rest[i + 4..])),
                None => (rest, None),
            };
            let mut fields: BTreeMap<String, String> = head
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if let Some(m) = msg {
                fields.insert("msg".into(), m.to_string());
            }
            (event.to_string(), fields)
        })
        .collect()
}

/// The layers of the `event` lines, in order.
pub fn layers_with(stdout: &[u8], event: &str) -> Vec<String> {
    events(stdout)
        .into_iter()
        .filter(|(e, _)| e == event)
        .filter_map(|(_, f)| f.get("layer").cloned())
        .collect()
}

/// The fields of the last `end` (or `undo-end`) line.
pub fn end(stdout: &[u8]) -> BTreeMap<String, String> {
    events(stdout)
        .into_iter()
        .rev()
        .find(|(e, _)| e == "end" || e == "undo-end")
        .map(|(_, f)| f)
        .unwrap_or_default()
}

/// A `run.sh --check` run's exit code and output (shown on stderr as `--- check (WHAT) ---`, for
/// the test's log).
pub fn check_output(what: &str, out: &Output) -> (Option<i32>, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("--- check ({what}) ---\n{stdout}");
    (out.status.code(), stdout)
}

/// The line of `run.sh --check`'s output that holds `needle`, trimmed (the test fails when none
/// does, showing the output).
pub fn check_line(stdout: &str, needle: &str) -> String {
    stdout
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with `{needle}`:\n{stdout}"))
        .trim()
        .to_string()
}

/// The `check` lines of a `run.sh --test` run: id → (result, msg).
pub fn checks(stdout: &[u8]) -> BTreeMap<String, (String, String)> {
    events(stdout)
        .into_iter()
        .filter(|(e, _)| e == "check")
        .map(|(_, f)| {
            let get = |k: &str| f.get(k).cloned().unwrap_or_default();
            (get("id"), (get("result"), get("msg")))
        })
        .collect()
}

/// What every teardown leaves: root's ledger directory for the account with its lock file
/// (another run may be waiting on it) and root's empty work directory.
pub const LEDGER_LEFT: &[&str] = &[
    "var/lib/overthink",
    "var/lib/overthink/installed",
    "var/lib/overthink/installed/tester",
    "var/lib/overthink/installed/tester/.lock",
    "var/lib/overthink/work",
];

/// What a teardown leaves, by design: root's ledger directory with its lock file (another run may
/// be waiting on it), root's empty work directory, and what raw `cmd:` tasks wrote (ov cannot
/// know it). Directories the layers' `mkdir:` tasks and files created (`~/.config/e2e`,
/// `~/.local/bin`) are recorded and removed; the view in the home goes with the last record, and
/// with it the directories of the home made for it (`~/.config/overthink`, `~/.config`).
pub const LEFT_AFTER_UNDO: &[&str] = &[
    "var/lib/overthink",
    "var/lib/overthink/installed",
    "var/lib/overthink/installed/tester",
    "var/lib/overthink/installed/tester/.lock",
    "var/lib/overthink/work",
    "var/lib/e2e",
    "var/lib/e2e/task-runs",
    "home/tester/.e2e-task-user",
];

/// Places of a Debian root that change by themselves or by package management bookkeeping.
pub const VOLATILE: &[&str] = &[
    "proc",
    "dev",
    "sys",
    "run",
    "tmp",
    "var/tmp",
    "var/log",
    "var/cache",
    "var/lib/apt",
    "var/lib/dpkg",
    "etc/ld.so.cache",
];

/// Every path below `base` outside `skip` (relative paths), with type, mode, owner and content
/// digest.
pub fn snapshot(base: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, skip: &[&str], out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(base)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if skip.iter().any(|s| rel == *s) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                format!(
                    "link {}",
                    std::fs::read_link(&p)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default()
                )
            } else if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_file() {
                use sha2::Digest;
                let data = std::fs::read(&p).unwrap_or_default();
                format!("file {}", hex::encode(sha2::Sha256::digest(&data)))
            } else {
                "special".to_string()
            };
            out.insert(
                rel,
                format!(
                    "{what} {:o} {}:{}",
                    m.permissions().mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
            );
            if ft.is_dir() {
                walk(base, &p, skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(base, base, skip, &mut out);
    out
}

/// Fail, listing the differences, unless `after` is `before` but for the paths in `expected`.
pub fn assert_unchanged(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    expected: &[&str],
) {
    let d = diff(before, after, expected);
    assert!(
        d.is_empty(),
        "the root differs from before:\n{}",
        d.join("\n")
    );
}

/// What differs between two snapshots (`+` new or changed, `-` gone or changed), except the
/// paths in `expected` (which must be new).
pub fn diff(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    expected: &[&str],
) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in after {
        let expected_new = expected.contains(&k.as_str()) && !before.contains_key(k);
        if before.get(k) != Some(v) && !expected_new {
            d.push(format!("+ {k} {v}"));
        }
    }
    for (k, v) in before {
        if after.get(k) != Some(v) {
            d.push(format!("- {k} {v}"));
        }
    }
    d
}
