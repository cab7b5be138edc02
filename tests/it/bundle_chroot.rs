//! Real runs of a bundle the real pipeline compiled — `ov compile vm:e2e` of the fixture project
//! `tests/fixtures/e2e` (load → resolve → lower → render → bundle) — unpacked with GNU tar and run
//! by hand (`run.sh`, `undo.sh`) as root inside a fresh Debian bookworm root: a real package from
//! the Debian archive, system and user files, env and the managed block, raw `cmd:` tasks as root
//! and as the user, a link; a failed layer that stops the run and the resume after it; the lock;
//! teardown from the ledger back to the root as it was.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;

use crate::support::e2e::{
    self, end, layers_with, text, DEPLOY, GATE, GATE_MARKER, LAYERS, LEDGER, USER,
};
use crate::support::rootfs::{self, Root};

const BUNDLE_DIR: &str = "/var/tmp/ov/b";
const RUN: &str = "/var/tmp/ov/b/vm-e2e/run.sh";

/// What `ov compile` produced.
struct Compiled {
    /// The archive's sha256 (from its `.sha256`).
    sha256: String,
    /// `manifest.json`.
    manifest: serde_json::Value,
    /// The archive, in `home`.
    archive: PathBuf,
    /// HOME of the `ov` that compiled it.
    home: tempfile::TempDir,
}

impl Compiled {
    fn deploy_id(&self) -> String {
        self.manifest["deploy"]["id"]
            .as_str()
            .expect("deploy id")
            .to_string()
    }

    fn digest(&self, layer: &str) -> String {
        self.manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .find(|l| l["name"] == layer)
            .and_then(|l| l["digest"].as_str())
            .unwrap_or_else(|| panic!("no layer {layer} in the manifest"))
            .to_string()
    }
}

/// A fresh offline root with user `tester` and the fixture's bundle, compiled by the `ov` binary,
/// as a push leaves it: archive and `.sha256` under /var/tmp/ov/b, unpacked beside them by the
/// root's own tar. `None` when the tools are missing (skip).
fn setup() -> Option<(Root, Compiled)> {
    let root = e2e::offline_root(&e2e::spec(), USER)?;

    let home = tempfile::tempdir().expect("tmp");
    let archive = home.path().join("vm-e2e.tar.gz");
    let out = e2e::ov(home.path())
        .args(["compile", DEPLOY, "-o"])
        .arg(&archive)
        .output()
        .expect("ov runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let sum = std::fs::read_to_string(home.path().join("vm-e2e.tar.gz.sha256")).expect(".sha256");
    let sha256 = sum.split_whitespace().next().expect("digest").to_string();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("sha256 {sha256}")),
        "{}",
        text(&out)
    );

    let dir = root.path(BUNDLE_DIR);
    std::fs::create_dir_all(&dir).expect("bundle dir");
    std::fs::copy(&archive, dir.join("vm-e2e.tar.gz")).expect("copy archive");
    std::fs::write(dir.join("vm-e2e.tar.gz.sha256"), &sum).expect("copy .sha256");
    root.sh(&format!(
        "cd {BUNDLE_DIR} && sha256sum -c vm-e2e.tar.gz.sha256 && tar -xzf vm-e2e.tar.gz"
    ));
    let manifest = json(&root, &format!("{BUNDLE_DIR}/vm-e2e/manifest.json"));
    let compiled = Compiled {
        sha256,
        manifest,
        archive,
        home,
    };
    let names: Vec<&str> = compiled.manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(names, LAYERS, "the fixture's resolved order");
    Some((root, compiled))
}

fn json(root: &Root, p: &str) -> serde_json::Value {
    let raw = std::fs::read(root.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{p} is not JSON: {e}"))
}

fn package_installed(root: &Root, pkg: &str) -> bool {
    root.run(&["dpkg-query", "-W", "-f=${Status}", pkg])
        .stdout
        .starts_with(b"install ok installed")
}

fn run(root: &Root, args: &[&str]) -> Output {
    let mut cmd = vec!["bash", RUN];
    cmd.extend_from_slice(args);
    root.run(&cmd)
}

fn snapshot(root: &Root) -> BTreeMap<String, String> {
    e2e::snapshot(&root.path("/"), e2e::VOLATILE)
}

/// The root is as `before`, but for what a teardown leaves by design.
fn assert_as_before(root: &Root, before: &BTreeMap<String, String>) {
    e2e::assert_unchanged(before, &snapshot(root), e2e::LEFT_AFTER_UNDO);
}

#[test]
fn real_run_applies_everything_then_is_a_no_op_and_undo_restores_the_root() {
    let Some((root, b)) = setup() else { return };
    let id = b.deploy_id();
    root.sh(&format!("touch {GATE_MARKER}"));
    let before = snapshot(&root);
    assert!(
        before.contains_key("etc/debian_version") && before.contains_key("home/tester/.profile"),
        "the snapshot sees the root"
    );
    assert!(!package_installed(&root, "hello"));

    // First run: every layer applied, as the manifest's user.
    let out = run(&root, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(layers_with(&out.stdout, "layer-done"), LAYERS);
    let fin = end(&out.stdout);
    assert_eq!(fin.get("result").map(String::as_str), Some("ok"));
    assert_eq!(fin.get("applied").map(String::as_str), Some("7"));

    // The effects, as the right users.
    assert!(package_installed(&root, "hello"));
    assert_eq!(root.sh("hello").trim(), "Hello, world!");
    assert_eq!(root.sh("e2e-greet"), "greetings from ov\n");
    assert_eq!(
        root.sh("readlink /usr/local/bin/e2e-hello"),
        "/usr/bin/hello\n"
    );
    assert_eq!(root.sh("cat /etc/e2e-system.conf"), "system=yes\n");
    assert_eq!(
        root.sh("stat -c '%U %a' /etc/e2e-system.conf /usr/local/bin/e2e-greet"),
        "root 644\nroot 755\n"
    );
    assert_eq!(
        root.sh(
            "cd /home/tester && stat -c '%U %a %n' .config/e2e .config/e2e/user.conf .local/bin/e2e-hi"
        ),
        "tester 700 .config/e2e\ntester 600 .config/e2e/user.conf\ntester 755 .local/bin/e2e-hi\n"
    );
    assert_eq!(
        root.sh("cat /home/tester/.config/e2e/user.conf"),
        "user=yes\n"
    );
    // env and path_append, through the managed block of a login shell.
    assert_eq!(
        root.sh("runuser -u tester -- bash -lc 'printf %s \"$E2E_GREETING\"; echo; e2e-hi'"),
        "hello world\nhi from tester\n"
    );
    assert_eq!(
        root.sh("cat /home/tester/.config/overthink/env.d/e2e-env.env | grep -c E2E_GREETING"),
        "1\n"
    );
    assert_eq!(
        root.sh("cd /home/tester && grep -c '^# overthink:begin' .profile .bashrc"),
        ".profile:1\n.bashrc:1\n"
    );
    // The root task ran once as root for tester; the user task as tester.
    assert_eq!(root.sh("cat /var/lib/e2e/task-runs"), "root for tester\n");
    let arch = root.sh("uname -m");
    assert_eq!(
        root.sh("stat -c %U /home/tester/.e2e-task-user; cat /home/tester/.e2e-task-user"),
        format!("tester\ntester {arch}")
    );

    // The ledger: deploy record, layer records with the manifest's digests, owned by tester.
    let deploy = json(&root, &format!("{LEDGER}/deploys/{id}.json"));
    assert_eq!(deploy["deploy"], DEPLOY);
    assert_eq!(deploy["result"], "ok");
    assert_eq!(deploy["bundle_sha256"], b.sha256.as_str());
    assert_eq!(deploy["layers"], serde_json::json!(LAYERS));
    for l in LAYERS {
        let rec = json(&root, &format!("{LEDGER}/layers/{l}.json"));
        assert_eq!(rec["digest"], b.digest(l).as_str(), "{l}");
        assert_eq!(rec["deployed_by"], serde_json::json!([id]), "{l}");
        assert!(root.path(&format!("{LEDGER}/layers/{l}.undo.sh")).is_file());
    }
    let hello = json(&root, &format!("{LEDGER}/layers/e2e-hello.json"));
    assert_eq!(hello["reverse_ops"][0]["kind"], "package-remove");
    assert_eq!(
        hello["reverse_ops"][0]["targets"],
        serde_json::json!(["hello"])
    );
    // The run-time fact: hello was missing before, so the undo removes it.
    assert_eq!(
        root.sh(&format!("cat {LEDGER}/layers/e2e-hello.d/packages.deb")),
        "hello\n"
    );
    // Root's ledger is root's and closed; the view in the home is the user's, records only.
    let modes = root.sh(&format!(
        "stat -c '%U %a' {LEDGER} {LEDGER}/layers {LEDGER}/layers/e2e-hello.json {LEDGER}/lib.sh {LEDGER}/undo.sh"
    ));
    for line in modes.lines() {
        let (owner, mode) = line.split_once(' ').expect("owner and mode");
        let mode = u32::from_str_radix(mode, 8).expect("octal mode");
        assert!(
            owner == "root" && mode & 0o077 == 0,
            "root's ledger must be root's alone:\n{modes}"
        );
    }
    let view = "/home/tester/.config/overthink/installed";
    assert_eq!(
        root.sh(&format!(
            "stat -c %U {view}/layers/e2e-hello.json {view}/deploys/{id}.json"
        )),
        "tester\ntester\n"
    );
    assert_eq!(
        root.sh(&format!("cat {view}/layers/e2e-hello.json")),
        root.sh(&format!("cat {LEDGER}/layers/e2e-hello.json")),
        "the view holds the record as root's ledger has it"
    );
    assert_eq!(
        root.sh(&format!("ls -A {view}/layers | grep -v '\\.json$' || true")),
        "",
        "the view holds records only: no undo script or lib.sh in the home"
    );

    // Second run: nothing to do. With --print-ledger (what `ov push` passes) it ends by printing
    // root's ledger as the `::ov-ledger::` lines ov reads back: byte for byte what the files hold.
    let out = run(&root, &["--user", USER, "--print-ledger"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = ov::target::ledger::parse_dump(&String::from_utf8_lossy(&out.stdout))
        .expect("run.sh --print-ledger prints a whole ledger");
    assert_eq!(printed.home, format!("/home/{USER}"));
    assert_eq!(printed.dir, LEDGER);
    assert_eq!(printed.applied_layers(&id).len(), LAYERS.len());
    assert!(printed.has_undo_script);
    assert_eq!(
        printed.layer_texts["e2e-hello"],
        root.sh(&format!("cat {LEDGER}/layers/e2e-hello.json")),
        "the printed record is the file as root's ledger has it"
    );
    assert_eq!(layers_with(&out.stdout, "layer-skip"), LAYERS);
    assert!(layers_with(&out.stdout, "layer-start").is_empty());
    assert_eq!(
        end(&out.stdout).get("skipped").map(String::as_str),
        Some("7")
    );
    assert_eq!(root.sh("cat /var/lib/e2e/task-runs"), "root for tester\n");

    // Teardown from the ledger copy, without the bundle.
    root.sh(&format!("rm -rf {BUNDLE_DIR}"));
    let out = root.run(&["bash", &format!("{LEDGER}/undo.sh"), "--user", USER]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        end(&out.stdout).get("removed").map(String::as_str),
        Some("7"),
        "{}",
        text(&out)
    );
    assert!(!package_installed(&root, "hello"));
    assert_as_before(&root, &before);
    // The directories the bundle created are gone; the ledger holds only its lock.
    assert!(
        !root.path("/home/tester/.config/e2e").exists()
            && !root.path("/home/tester/.local").exists(),
        "created directories left behind"
    );
    assert_eq!(root.sh(&format!("ls -A {LEDGER}")), ".lock\n");

    // A stray copy of undo.sh (from the archive, via `ov inspect`) finds no deploy: exit 0.
    let out = e2e::ov(b.home.path())
        .args(["inspect", "--script", "undo.sh"])
        .arg(&b.archive)
        .output()
        .expect("ov runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    std::fs::write(root.path("/root/undo.sh"), &out.stdout).expect("copy undo.sh");
    let out = root.run(&["bash", "/root/undo.sh", "--user", USER]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already torn down"));
}

#[test]
fn a_failed_layer_stops_the_run_and_the_next_run_resumes_there() {
    let Some((root, b)) = setup() else { return };
    let id = b.deploy_id();
    let gate_at = LAYERS.iter().position(|l| *l == GATE).expect("gate layer");
    let (done_first, rest) = LAYERS.split_at(gate_at);

    // `e2e-gate` fails (42) while the marker is missing; the run stops there.
    let out = run(&root, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(layers_with(&out.stdout, "layer-done"), done_first);
    let fail: Vec<_> = e2e::events(&out.stdout)
        .into_iter()
        .filter(|(e, _)| e == "layer-fail")
        .collect();
    assert_eq!(fail.len(), 1, "{}", text(&out));
    assert_eq!(fail[0].1["layer"], GATE);
    assert_eq!(fail[0].1["script"], "01-system.sh");
    assert_eq!(fail[0].1["status"], "42");
    let path = format!("layers/03-{GATE}/01-system.sh");
    assert_eq!(fail[0].1["path"], path);
    assert_eq!(fail[0].1["log"], format!("{LEDGER}/logs/{id}.log"));
    // The failing command, its line in the script (ERR/EXIT trap) and the layer's own last
    // lines, from the run's log.
    let events = e2e::events(&out.stdout);
    let err: Vec<_> = events.iter().filter(|(e, _)| e == "step-error").collect();
    assert_eq!(err.len(), 1, "{}", text(&out));
    assert_eq!(err[0].1["msg"], "exit 42");
    assert_eq!(err[0].1["path"], path);
    assert_eq!(err[0].1["status"], "42");
    let script = std::fs::read_to_string(root.path(&format!("{BUNDLE_DIR}/vm-e2e/{path}")))
        .expect("the gate's script");
    let line: usize = err[0].1["line"].parse().expect("a line number");
    assert_eq!(
        script.lines().nth(line - 1).map(str::trim),
        Some("exit 42"),
        "line {line} of\n{script}"
    );
    let log: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e == "step-log")
        .map(|(_, f)| f["msg"].as_str())
        .collect();
    assert!(
        log.contains(&"e2e-gate: /etc/e2e-allow is missing"),
        "the layer's own message is shown: {}",
        text(&out)
    );
    // The trap's note is in the run's log (root's), not repeated among the last lines.
    let note = format!("ov: failed with status 42 at line {line}: exit 42");
    assert!(!log.contains(&note.as_str()), "{log:?}");
    assert!(
        root.sh(&format!("cat {LEDGER}/logs/{id}.log"))
            .contains(&note),
        "the log holds the trap's note"
    );
    assert_eq!(
        end(&out.stdout).get("result").map(String::as_str),
        Some("fail")
    );
    // The failed layer is recorded as failed — with its undo script, so that undo.sh reverses
    // what it did so far — and is not applied: the next run runs it again.
    let rec = json(&root, &format!("{LEDGER}/layers/{GATE}.json"));
    assert_eq!(rec["result"], "failed", "{rec}");
    assert!(root
        .path(&format!("{LEDGER}/layers/{GATE}.undo.sh"))
        .exists());
    assert!(
        !root.path("/var/lib/e2e").exists() && !root.path("/home/tester/.config/e2e").exists(),
        "layers after the failure ran"
    );
    assert!(package_installed(&root, "hello"));
    let deploy = json(&root, &format!("{LEDGER}/deploys/{id}.json"));
    assert_eq!(deploy["result"], "fail");
    let mut recorded = done_first.to_vec();
    recorded.push(GATE);
    assert_eq!(deploy["layers"], serde_json::json!(recorded));

    // Fix the cause: the next run resumes at `e2e-gate`.
    root.sh(&format!("touch {GATE_MARKER}"));
    let out = run(&root, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(layers_with(&out.stdout, "layer-skip"), done_first);
    assert_eq!(layers_with(&out.stdout, "layer-done"), rest);
    assert_eq!(
        json(&root, &format!("{LEDGER}/deploys/{id}.json"))["result"],
        "ok"
    );
    let rec = json(&root, &format!("{LEDGER}/layers/{GATE}.json"));
    assert!(rec.get("result").is_none(), "applied now: {rec}");

    // --only with --force re-runs one layer; the record keeps one deploy id.
    let out = run(&root, &["--only", "e2e-task", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(layers_with(&out.stdout, "layer-done"), ["e2e-task"]);
    assert_eq!(
        root.sh("cat /var/lib/e2e/task-runs"),
        "root for tester\nroot for tester\n"
    );
    let rec = json(&root, &format!("{LEDGER}/layers/e2e-task.json"));
    assert_eq!(rec["deployed_by"], serde_json::json!([id]));

    // Options: --list and --dry-run change nothing; an unknown layer or user is a usage error.
    let out = run(&root, &["--list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("layers/03-e2e-gate/01-system.sh"));
    let out = run(&root, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("\nskip  ")
            .count(),
        LAYERS.len(),
        "{}",
        text(&out)
    );
    assert_eq!(run(&root, &["--only", "nope"]).status.code(), Some(2));
    assert_eq!(
        run(&root, &["--user", "nobody-here"]).status.code(),
        Some(2)
    );

    // The lock: with another holder (this process), --no-wait exits 5 at once.
    let lock = std::fs::File::open(root.path(&format!("{LEDGER}/.lock"))).expect("lock file");
    lock.lock().expect("take the ledger lock");
    let out = run(&root, &["--no-wait"]);
    drop(lock);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));

    // Teardown with one layer's undo script missing: incomplete (7), that layer kept, then retried.
    let gate_undo = format!("{LEDGER}/layers/{GATE}.undo.sh");
    root.sh(&format!("mv {gate_undo} /root/gate.undo.sh"));
    let undo = PathBuf::from(BUNDLE_DIR).join("vm-e2e/undo.sh");
    let undo = undo.to_str().expect("path");
    let out = root.run(&["bash", undo]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert_eq!(layers_with(&out.stdout, "undo-fail"), [GATE]);
    assert!(root.path(&format!("{LEDGER}/layers/{GATE}.json")).exists());
    assert!(!root
        .path(&format!("{LEDGER}/layers/e2e-task.json"))
        .exists());
    assert!(
        !package_installed(&root, "hello"),
        "undo goes on past a failed layer"
    );
    let deploy = json(&root, &format!("{LEDGER}/deploys/{id}.json"));
    assert_eq!(deploy["layers"], serde_json::json!([GATE]));
    root.sh(&format!("mv /root/gate.undo.sh {gate_undo}"));
    let out = root.run(&["bash", undo]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        root.sh(&format!("ls -A {LEDGER}")),
        ".lock\n",
        "ledger not empty"
    );
    assert!(!package_installed(&root, "hello"));
    assert!(!root.path("/etc/e2e-system.conf").exists());
}

#[test]
fn undo_puts_back_what_the_run_replaced_and_keeps_what_changed_since() {
    let Some((root, _b)) = setup() else { return };
    root.sh(&format!("touch {GATE_MARKER}"));
    // The site's own files at paths the layers write: a system file (written by root's step), a
    // system program and a user's program (written by the user's step, saved in the user's home).
    root.sh(
        "printf 'site=1\\n' > /etc/e2e-system.conf && chmod 0640 /etc/e2e-system.conf && chown root:adm /etc/e2e-system.conf \
         && printf '#!/bin/sh\\necho site greet\\n' > /usr/local/bin/e2e-greet && chmod 0700 /usr/local/bin/e2e-greet \
         && runuser -u tester -- sh -c 'mkdir -p ~/.local/bin && printf \"#!/bin/sh\\necho mine\\n\" > ~/.local/bin/e2e-hi && chmod 0750 ~/.local/bin/e2e-hi'",
    );
    let before = snapshot(&root);

    let out = run(&root, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The steps' output is kept in the run's log in root's ledger (root's alone), not streamed.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        root.sh(&format!(
            "stat -c '%U %a' {LEDGER}/logs {LEDGER}/logs/*.log"
        )),
        "root 700\nroot 600\n"
    );
    let log = root.sh(&format!("cat {LEDGER}/logs/*.log"));
    for p in [
        "/etc/e2e-system.conf",
        "/usr/local/bin/e2e-greet",
        "/home/tester/.local/bin/e2e-hi",
    ] {
        assert!(log.contains(&format!("saved {p} ")), "{p}: {log}");
        assert!(!stdout.contains(&format!("saved {p} ")), "{p}: {stdout}");
    }
    assert_eq!(root.sh("e2e-greet"), "greetings from ov\n");
    // root's copies are in root's ledger; the user's in the user's home, the user's own.
    assert_eq!(
        root.sh(&format!(
            "stat -c '%U %a' {LEDGER}/layers/e2e-system.bak {LEDGER}/layers/e2e-system.bak/1"
        )),
        "root 700\nroot 640\n"
    );
    assert_eq!(
        root.sh("stat -c '%U %a' /home/tester/.local/state/overthink/backup/e2e-user/1"),
        "tester 750\n"
    );
    // The site changes a file the deploy wrote: teardown keeps the change, beside the original.
    root.sh("printf 'site=2\\n' > /etc/e2e-system.conf");

    let out = root.run(&["bash", &format!("{LEDGER}/undo.sh"), "--user", USER]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("kept /etc/e2e-system.conf: it changed after the deploy"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("restored /usr/local/bin/e2e-greet"));
    assert!(stdout.contains("restored /home/tester/.local/bin/e2e-hi"));
    assert_eq!(root.sh("cat /etc/e2e-system.conf"), "site=2\n");
    assert_eq!(
        root.sh(
            "cat /etc/e2e-system.conf.ov-orig; stat -c '%U:%G %a' /etc/e2e-system.conf.ov-orig"
        ),
        "site=1\nroot:adm 640\n"
    );
    // Everything else as before, the restored files byte for byte with their modes and owners.
    root.sh("mv /etc/e2e-system.conf.ov-orig /etc/e2e-system.conf");
    assert_as_before(&root, &before);
}

#[test]
fn run_sh_test_reports_each_check_of_the_layers_and_changes_nothing() {
    let Some((root, _b)) = setup() else { return };
    root.sh(&format!("touch {GATE_MARKER}"));

    // Before the apply the layers' checks fail (nothing is there yet); passes are only the
    // checks that hold on any Debian root.
    let out = run(&root, &["--test", "e2e-hello"]);
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    let got = e2e::checks(&out.stdout);
    assert_eq!(got["hello-package"].0, "fail", "{}", text(&out));
    assert_eq!(got["hello-package"].1, "`hello` is not installed");
    assert_eq!(got.len(), 2, "only the layer asked for: {got:?}");

    let out = run(&root, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = snapshot(&root);

    let out = run(&root, &["--test"]);
    assert_eq!(
        out.status.code(),
        Some(9),
        "one check fails: {}",
        text(&out)
    );
    let got = e2e::checks(&out.stdout);
    let result = |id: &str| got.get(id).map(|(r, _)| r.as_str()).unwrap_or("absent");
    for id in [
        "hello-package",
        "hello-runs",
        "hello-link",
        "system-conf",
        "greet-runs",
        "user-task-output",
        "user-conf",
        "hi-on-path",
        "greeting-env",
    ] {
        assert_eq!(
            result(id),
            "pass",
            "{id}: {:?}\n{}",
            got.get(id),
            text(&out)
        );
    }
    assert_eq!(result("never-there"), "fail");
    assert_eq!(
        got["never-there"].1,
        "exit status 1, expected 0",
        "{}",
        text(&out)
    );
    assert_eq!(result("cron-running"), "skip");
    assert_eq!(
        got["cron-running"].1,
        "systemd is not running on the target"
    );
    assert_eq!(result("in-container-only"), "skip");
    assert!(got["in-container-only"].1.contains("in_container"));
    assert_eq!(got.len(), 12, "{got:?}");
    let events = e2e::events(&out.stdout);
    let (_, fin) = events
        .iter()
        .find(|(e, _)| e == "test-end")
        .expect("test-end");
    assert_eq!(fin["result"], "fail");
    assert_eq!(
        (&*fin["pass"], &*fin["fail"], &*fin["skip"]),
        ("9", "1", "2")
    );
    // The lines for people, one per check, and the summary.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL  e2e-task/never-there (command, build): exit status 1, expected 0")
    );
    assert!(stdout.contains("PASS  e2e-link/hello-link (file, build)"));
    assert!(
        stdout.contains("checks: 9 passed, 1 failed, 2 skipped"),
        "{stdout}"
    );

    // Scope and layer filters; --events leaves only the progress lines.
    let out = run(&root, &["--test", "--scope", "deploy", "--events"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got = e2e::checks(&out.stdout);
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        ["cron-running", "greeting-env", "in-container-only"]
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .lines()
        .all(|l| l.starts_with("::ov:: ")));
    let out = run(&root, &["--test", "no-such-layer"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // Checks read only: the root is as the apply left it.
    let after = snapshot(&root);
    assert_eq!(e2e::diff(&before, &after, &[]), Vec::<String>::new());
}

/// A layer whose check values are shell metacharacters, compiled by the `ov` binary.
fn hostile_project(dir: &std::path::Path) {
    let layer = dir.join("layers/hostile");
    std::fs::create_dir_all(&layer).expect("layer dir");
    std::fs::write(
        layer.join("layer.yml"),
        r#"layer:
  deb:
    packages: [hello]
  tests:
    - id: path-is-data
      file: "/tmp/x$(touch /tmp/canary-path)`touch /tmp/canary-bq`'\"\n;touch /tmp/canary-nl"
      exists: false
    - id: package-is-data
      package: "hello$(touch${IFS}/tmp/canary-pkg)"
      installed: false
    - id: content-is-data
      file: /etc/debian_version
      contains:
        - contains: "$(touch /tmp/canary-content)'\"\n`touch /tmp/canary-c2`"
    - id: regex-is-data
      command: "echo plain"
      stdout:
        - matches: "$(touch /tmp/canary-re)|x"
    - id: url-is-data
      http: "http://127.0.0.1:9/$(touch /tmp/canary-url)'\""
"#,
    )
    .expect("layer.yml");
}

#[test]
fn check_values_with_shell_metacharacters_are_data_not_code() {
    if !rootfs::available() {
        return;
    }
    let root = Root::new(&rootfs::tarball(&e2e::spec()));
    root.sh(&format!("useradd -m -s /bin/bash {USER}"));
    let home = tempfile::tempdir().expect("tmp");
    hostile_project(home.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ov"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .arg("-C")
        .arg(home.path())
        .args([
            "compile",
            "host",
            "hostile",
            "--distro",
            "debian:12",
            "--out-dir",
        ])
        .arg(root.path(BUNDLE_DIR))
        .output()
        .expect("ov runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = root.run(&[
        "bash",
        &format!("{BUNDLE_DIR}/host/run.sh"),
        "--test",
        "--user",
        USER,
    ]);
    // First of all: nothing a value holds ran.
    let canaries = root.sh("ls -a /tmp /home/tester");
    assert!(
        !canaries.contains("canary"),
        "a value ran as code: {canaries}"
    );
    let got = e2e::checks(&out.stdout);
    let result = |id: &str| got.get(id).map(|(r, _)| r.as_str()).unwrap_or("absent");
    assert_eq!(result("path-is-data"), "pass", "{}", text(&out));
    assert_eq!(result("package-is-data"), "pass", "{}", text(&out));
    assert_eq!(result("content-is-data"), "fail", "{}", text(&out));
    assert_eq!(result("regex-is-data"), "fail", "{}", text(&out));
    // The root has no curl: skipped, and the URL never reached a shell either way.
    assert_ne!(result("url-is-data"), "pass", "{}", text(&out));
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
}

/// The `(state, what)` pairs of a `run.sh --check` report (`  change  file /etc/x (why)`).
fn check_lines(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("  ")?;
            let (state, rest) = l.split_once(' ')?;
            ["ok", "change", "unknown"]
                .contains(&state)
                .then(|| (state.to_string(), rest.trim().to_string()))
        })
        .collect()
}

#[test]
fn check_mode_changes_nothing_and_reports_what_a_run_would_change_and_drift() {
    let Some((root, _b)) = setup() else { return };
    let before = snapshot(&root);
    let pkgs_before = root.sh("dpkg-query -W -f='${Package} ${Version}\\n'");

    // A fresh target: every step would change it; nothing is written (not even a ledger).
    let out = run(&root, &["--check", "--user", USER]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    let lines = check_lines(&out);
    assert!(
        lines.iter().all(|(s, _)| s == "change"),
        "a fresh root has nothing of the bundle: {lines:?}"
    );
    for what in [
        "file /etc/e2e-system.conf",
        "file /usr/local/bin/e2e-greet",
        "deb packages hello",
    ] {
        assert!(
            lines.iter().any(|(_, w)| w.starts_with(what)),
            "`{what}` in {lines:?}"
        );
    }
    assert_eq!(
        e2e::diff(&before, &snapshot(&root), &[]),
        Vec::<String>::new(),
        "--check changed the root"
    );
    assert_eq!(
        root.sh("dpkg-query -W -f='${Package} ${Version}\\n'"),
        pkgs_before
    );

    // Applied: no changes, exit 0 — as root, and as the target user (no sudo, no root).
    root.sh(&format!("touch {GATE_MARKER}"));
    let out = run(&root, &["--user", USER]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(&root, &["--check", "--user", USER]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        check_lines(&out).iter().all(|(s, _)| s == "ok"),
        "{}",
        text(&out)
    );
    let as_user = root.run(&[
        "runuser", "-u", USER, "--", "bash", RUN, "--check", "--user", USER,
    ]);
    let user_lines = check_lines(&as_user);
    assert!(
        user_lines
            .iter()
            .any(|(s, w)| s == "ok" && w.starts_with("file /etc/e2e-system.conf")),
        "{}",
        text(&as_user)
    );
    // Not root, it cannot read root's ledger: only the steps nothing can look at would run.
    let would_run: Vec<_> = user_lines.iter().filter(|(s, _)| s == "change").collect();
    assert!(
        would_run.len() == 3 && would_run.iter().all(|(_, w)| w.starts_with("cmd ")),
        "{}",
        text(&as_user)
    );
    assert!(
        String::from_utf8_lossy(&as_user.stdout)
            .contains("(not root: root's ledger cannot be read"),
        "{}",
        text(&as_user)
    );

    // Drift: a deployed file edited on the target is shown as exactly that diff.
    root.sh("printf 'system=no\\n' >/etc/e2e-system.conf");
    let out = run(&root, &["--check", "--diff", "--user", USER]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    let changed: Vec<_> = check_lines(&out)
        .into_iter()
        .filter(|(s, _)| s == "change")
        .collect();
    assert_eq!(
        changed,
        [(
            "change".to_string(),
            "file /etc/e2e-system.conf (content differs)".to_string()
        )],
        "{}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("    --- /etc/e2e-system.conf (on this machine)\n    +++ /etc/e2e-system.conf (the bundle's)\n    @@ -1 +1 @@\n    -system=no\n    +system=yes\n"),
        "{stdout}"
    );
}
