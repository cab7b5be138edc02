//! Real runs of a bundle (`run.sh`, `undo.sh`) as root inside a fresh Debian bookworm root:
//! a real package from the Debian archive, system and user files, env and the managed block,
//! tasks; resume after a failed layer; the lock; teardown back to the root as it was.
//!
//! Until `render`/`lower` land, the step scripts are the hand-written fixture of
//! `compiler/tests/bundle_fixture` (they follow `docs/bundle-runtime.md`).

#[path = "../../compiler/tests/bundle_fixture/mod.rs"]
mod bundle_fixture;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

use crate::support::rootfs::{self, Root, Spec};

const BUNDLE_DIR: &str = "/var/tmp/ov/b";
const RUN: &str = "/var/tmp/ov/b/vm-debian-test/run.sh";

fn spec() -> Spec {
    Spec {
        include: vec![],
        prefetch: vec!["hello"],
    }
}

/// A fresh root with user `tester` and the fixture bundle (unpacked, plus its archive and
/// `.sha256`) under /var/tmp/ov/b; `None` when the tools are missing (skip).
fn setup() -> Option<(Root, ov_compiler::bundle::Bundle)> {
    if !rootfs::available() {
        return None;
    }
    let tarball = rootfs::tarball(&spec());
    let root = Root::new(&tarball);
    root.sh("useradd -m -s /bin/bash tester");
    let payload = tempfile::tempdir().expect("tmp");
    let (plan, rendered) = bundle_fixture::debian(payload.path());
    let b = bundle_fixture::build(&plan, &rendered);
    let dir = root.path(BUNDLE_DIR);
    ov_compiler::bundle::write_unpacked(&b, &dir).expect("unpacked");
    ov_compiler::bundle::write(&b, &dir.join(b.archive_name())).expect("archive");
    Some((root, b))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `::ov::` lines as (event, fields).
fn events(out: &Output) -> Vec<(String, BTreeMap<String, String>)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("::ov:: "))
        .map(|l| {
            let (event, rest) = l.split_once(' ').unwrap_or((l, ""));
            let mut fields = BTreeMap::new();
            let (head, msg) = match rest.find("msg=") {
                Some(i) => (&rest[..i], Some(&rest[i + 4..])),
                None => (rest, None),
            };
            for kv in head.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    fields.insert(k.to_string(), v.to_string());
                }
            }
            if let Some(m) = msg {
                fields.insert("msg".into(), m.to_string());
            }
            (event.to_string(), fields)
        })
        .collect()
}

fn layers_with(out: &Output, event: &str) -> Vec<String> {
    events(out)
        .into_iter()
        .filter(|(e, _)| e == event)
        .filter_map(|(_, f)| f.get("layer").cloned())
        .collect()
}

fn end(out: &Output) -> BTreeMap<String, String> {
    events(out)
        .into_iter()
        .rev()
        .find(|(e, _)| e == "end" || e == "undo-end")
        .map(|(_, f)| f)
        .unwrap_or_default()
}

fn json(root: &Root, p: &str) -> serde_json::Value {
    let raw = std::fs::read(root.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{p} is not JSON: {e}"))
}

const LEDGER: &str = "/home/tester/.config/overthink/installed";

fn package_installed(root: &Root, pkg: &str) -> bool {
    root.run(&["dpkg-query", "-W", "-f=${Status}", pkg])
        .stdout
        .starts_with(b"install ok installed")
}

/// Every path of the root outside volatile places, with type, mode, owner and content digest.
fn snapshot(root: &Root) -> BTreeMap<String, String> {
    const SKIP: &[&str] = &[
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
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
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
            if SKIP.iter().any(|s| rel == *s) {
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
                walk(base, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    let base = root.path("/");
    walk(&base, &base, &mut out);
    out
}

#[test]
fn real_run_applies_everything_then_is_a_no_op_and_undo_restores_the_root() {
    let Some((root, b)) = setup() else { return };
    root.sh("touch /etc/ov-test-allow");
    let before = snapshot(&root);
    assert!(!package_installed(&root, "hello"));

    // First run: every layer applied, as the manifest's user.
    let out = root.run(&["bash", RUN]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        layers_with(&out, "layer-done"),
        ["hello", "files", "gate", "env", "task"]
    );
    assert_eq!(
        end(&out).get("result").map(String::as_str),
        Some("ok"),
        "{}",
        text(&out)
    );
    assert_eq!(end(&out).get("applied").map(String::as_str), Some("5"));

    // The effects, as the right users.
    assert!(package_installed(&root, "hello"));
    assert_eq!(root.sh("hello").trim(), "Hello, world!");
    assert_eq!(root.sh("cat /etc/ov-test/system.conf"), "system=yes\n");
    assert_eq!(
        root.sh(
            "stat -c '%U %a' /home/tester/.config/ov-test/user.conf /home/tester/.local/bin/greet"
        ),
        "tester 600\ntester 755\n"
    );
    assert_eq!(
        root.sh("runuser -u tester -- /home/tester/.local/bin/greet"),
        "greetings from ov\n"
    );
    assert_eq!(
        root.sh("runuser -u tester -- bash -lc 'printf %s \"$OV_TEST_GREETING\"'"),
        "hello world"
    );
    assert_eq!(root.sh("cat /var/lib/ov-test/task-count"), "tester\n");
    let arch = root.sh("uname -m");
    let who = root.sh("cat /home/tester/task-user.txt");
    assert!(
        who.starts_with("tester ") && who.trim_end().ends_with(arch.trim()),
        "{who}"
    );

    // The ledger: deploy record, layer records with digests, run-time facts, owned by tester.
    let deploy = json(
        &root,
        &format!("{LEDGER}/deploys/{}.json", bundle_fixture::DEPLOY_ID),
    );
    assert_eq!(deploy["deploy"], "vm:debian-test");
    assert_eq!(deploy["result"], "ok");
    assert_eq!(deploy["bundle_sha256"], b.sha256.as_str());
    assert_eq!(
        deploy["layers"],
        serde_json::json!(["hello", "files", "gate", "env", "task"])
    );
    for l in &b.manifest.layers {
        let rec = json(&root, &format!("{LEDGER}/layers/{}.json", l.name));
        assert_eq!(rec["digest"], l.digest.as_str());
        assert_eq!(
            rec["deployed_by"],
            serde_json::json!([bundle_fixture::DEPLOY_ID])
        );
        assert!(root
            .path(&format!("{LEDGER}/layers/{}.undo.sh", l.name))
            .is_file());
    }
    let hello = json(&root, &format!("{LEDGER}/layers/hello.json"));
    assert_eq!(hello["reverse_ops"][0]["kind"], "package-remove");
    assert_eq!(hello["steps"][0]["summary"], "deb: 1 packages (install)");
    assert_eq!(
        root.sh(&format!("cat {LEDGER}/layers/hello.d/packages")),
        "hello\n"
    );
    assert_eq!(
        root.sh(&format!(
            "stat -c %U {LEDGER} {LEDGER}/layers/hello.json {LEDGER}/lib.sh {LEDGER}/undo.sh"
        )),
        "tester\ntester\ntester\ntester\n"
    );

    // Second run: nothing to do.
    let out = root.run(&["bash", RUN, "--user", "tester"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        layers_with(&out, "layer-skip"),
        ["hello", "files", "gate", "env", "task"]
    );
    assert!(layers_with(&out, "layer-start").is_empty());
    assert_eq!(end(&out).get("skipped").map(String::as_str), Some("5"));
    assert_eq!(root.sh("cat /var/lib/ov-test/task-count"), "tester\n");

    // Teardown from the ledger copy, without the bundle.
    root.sh(&format!("rm -rf {BUNDLE_DIR}"));
    let out = root.run(&["bash", &format!("{LEDGER}/undo.sh"), "--user", "tester"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        end(&out).get("removed").map(String::as_str),
        Some("5"),
        "{}",
        text(&out)
    );
    assert!(!package_installed(&root, "hello"));
    let after = snapshot(&root);
    // Left by design: the ledger directory and its lock file (another run may be waiting on it).
    let leftovers: Vec<&str> = vec![
        "home/tester/.config",
        "home/tester/.config/overthink",
        "home/tester/.config/overthink/installed",
        "home/tester/.config/overthink/installed/.lock",
    ];
    let mut diff = Vec::new();
    for (k, v) in &after {
        if before.get(k) != Some(v) && !leftovers.contains(&k.as_str()) {
            diff.push(format!("+ {k} {v}"));
        }
    }
    for (k, v) in &before {
        if after.get(k) != Some(v) {
            diff.push(format!("- {k} {v}"));
        }
    }
    assert!(
        diff.is_empty(),
        "the root differs after undo:\n{}",
        diff.join("\n")
    );

    // Nothing left, so the ledger's runtime copies are gone too; a stray copy of undo.sh finds
    // no deploy, which is fine (exit 0).
    assert!(!root.path(&format!("{LEDGER}/undo.sh")).exists());
    let undo = b
        .files
        .iter()
        .find(|f| f.path == "undo.sh")
        .expect("undo.sh");
    std::fs::write(root.path("/root/undo.sh"), &undo.data).expect("copy");
    let out = root.run(&["bash", "/root/undo.sh", "--user", "tester"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already torn down"));
}

#[test]
fn a_failed_layer_stops_the_run_and_the_next_run_resumes_there() {
    let Some((root, b)) = setup() else { return };

    // `gate` fails while /etc/ov-test-allow is missing.
    let out = root.run(&["bash", RUN]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(layers_with(&out, "layer-done"), ["hello", "files"]);
    let fail: Vec<_> = events(&out)
        .into_iter()
        .filter(|(e, _)| e == "layer-fail")
        .collect();
    assert_eq!(fail.len(), 1);
    assert_eq!(fail[0].1["layer"], "gate");
    assert_eq!(fail[0].1["status"], "42");
    assert_eq!(end(&out).get("result").map(String::as_str), Some("fail"));
    assert!(!root.path(&format!("{LEDGER}/layers/gate.json")).exists());
    assert!(!root.path(&format!("{LEDGER}/layers/gate.undo.sh")).exists());
    assert!(
        !root.path("/home/tester/.config/overthink/env.d").exists(),
        "env ran after the failure"
    );
    let deploy = json(
        &root,
        &format!("{LEDGER}/deploys/{}.json", bundle_fixture::DEPLOY_ID),
    );
    assert_eq!(deploy["result"], "fail");
    assert_eq!(deploy["layers"], serde_json::json!(["hello", "files"]));

    // Fix the cause: the next run resumes at `gate`.
    root.sh("touch /etc/ov-test-allow");
    let out = root.run(&["bash", RUN]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(layers_with(&out, "layer-skip"), ["hello", "files"]);
    assert_eq!(layers_with(&out, "layer-done"), ["gate", "env", "task"]);

    // --only with --force re-runs one layer; the record keeps one deploy id.
    let out = root.run(&["bash", RUN, "--only", "task", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(layers_with(&out, "layer-done"), ["task"]);
    assert_eq!(
        root.sh("cat /var/lib/ov-test/task-count"),
        "tester\ntester\n"
    );
    let rec = json(&root, &format!("{LEDGER}/layers/task.json"));
    assert_eq!(
        rec["deployed_by"],
        serde_json::json!([bundle_fixture::DEPLOY_ID])
    );

    // Options: --list and --dry-run change nothing; unknown layer is a usage error.
    let out = root.run(&["bash", RUN, "--list"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("layers/03-gate/01-system.sh"));
    let out = root.run(&["bash", RUN, "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("\nskip  ")
            .count(),
        5,
        "{}",
        text(&out)
    );
    assert_eq!(
        root.run(&["bash", RUN, "--only", "nope"]).status.code(),
        Some(2)
    );
    assert_eq!(
        root.run(&["bash", RUN, "--user", "nobody-here"])
            .status
            .code(),
        Some(2)
    );

    // The lock: with another holder, --no-wait exits 5 at once.
    let mut holder = std::process::Command::new("flock")
        .arg(root.path(&format!("{LEDGER}/.lock")))
        .args(["sleep", "60"])
        .spawn()
        .expect("flock");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = root.run(&["bash", RUN, "--no-wait"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));

    // Teardown with one layer's undo script missing: incomplete (7), that layer kept, then retried.
    let gate_undo = format!("{LEDGER}/layers/gate.undo.sh");
    root.sh(&format!("mv {gate_undo} /root/gate.undo.sh"));
    let undo = format!("{BUNDLE_DIR}/vm-debian-test/undo.sh");
    let out = root.run(&["bash", &undo]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert_eq!(layers_with(&out, "undo-fail"), ["gate"]);
    assert!(root.path(&format!("{LEDGER}/layers/gate.json")).exists());
    assert!(!root.path(&format!("{LEDGER}/layers/task.json")).exists());
    let deploy = json(
        &root,
        &format!("{LEDGER}/deploys/{}.json", bundle_fixture::DEPLOY_ID),
    );
    assert_eq!(deploy["layers"], serde_json::json!(["gate"]));
    root.sh(&format!("mv /root/gate.undo.sh {gate_undo}"));
    let out = root.run(&["bash", &undo]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        root.sh(&format!("ls -A {LEDGER}")).trim() == ".lock",
        "ledger not empty"
    );
    assert!(!package_installed(&root, "hello"));
    assert!(!root.path("/var/lib/ov-test-gate").exists());
    let _ = b;
}
