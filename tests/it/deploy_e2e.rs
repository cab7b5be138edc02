//! End to end over SSH with the `ov` binary: the fixture project `tests/fixtures/e2e` deployed to
//! a separate host — an sshd chrooted into a real Debian bookworm root, in its own network
//! namespace — as an operator would: `ov deploy add`, `ov status`, `ov push`, `ov deploy del`
//! (`--purge`). `HOME` and the XDG directories are the test's, so `~/.config/ov/deploy.yml` (seeded
//! with the operator's own entries, comments and unknown fields) and `~/.local/share/ov/vm/ov-e2e/`
//! (the VM's key and known_hosts) are test-local; only `--host` is given, since a VM's default
//! address (127.0.0.1) is not where this host lives. The VM spec's user and port match the host.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;

use crate::support::chroot_sshd::{self, ChrootHost, Options};
use crate::support::e2e::{self, text, DEPLOY, GATE, GATE_MARKER, LAYERS, LEDGER, USER, VM};
use crate::support::rootfs;

/// The operator's own `~/.config/ov/deploy.yml` before the first push: another VM with state,
/// fields and comments `ov` does not own, and an entry for this VM with a hand-set instance id
/// (kept across pushes) and a field of its own.
const SEED: &str = "\
# My machines. Edited by hand; ov keeps what it does not own.
images:
  vm:other:   # a VM of another project
    target: vm
    vm_source: other
    notes: \"keep me\"
    vm_state:
      ssh_port: 2299
      instance_id: 0e6c1d7a-52a4-4c1b-9a53-000000000001
      custom: [1, 2]

  vm:e2e:
    target: vm
    vm_source: e2e
    lifecycle: dev   # not a field ov knows
    vm_state:
      instance_id: 6f1c2a9e-3b7d-4c55-9e21-0a8b7c6d5e4f   # set by hand
      backend: auto
  host:
    add_layers: [direnv]
# the end
extra: {a: 1}
";
const SEEDED_ID: &str = "6f1c2a9e-3b7d-4c55-9e21-0a8b7c6d5e4f";

/// The `vm_state` fields `ov` owns.
const OURS: [&str; 9] = [
    "instance_id",
    "ssh_host",
    "user",
    "ssh_user",
    "ssh_port",
    "ssh_key_path",
    "last_deploy",
    "applied_layers",
    "bundle_sha256",
];

/// An operator's machine (test-local HOME) and the target host.
struct Rig {
    host: ChrootHost,
    home: tempfile::TempDir,
}

impl Rig {
    /// Start the host over the cached root; put the host's client key where `ov vm create`
    /// leaves a VM's key; seed deploy.yml. `None`: skipped (printed).
    fn start() -> Option<Rig> {
        if !rootfs::available() || !chroot_sshd::available() {
            return None;
        }
        let t0 = std::time::Instant::now();
        let lower = rootfs::extracted(&rootfs::tarball(&e2e::spec()));
        let mut opts = Options::new(USER);
        opts.hostname = "e2e".into();
        opts.files.push((
            e2e::OFFLINE_APT.0.into(),
            e2e::OFFLINE_APT.1.as_bytes().to_vec(),
            0o644,
        ));
        let host = ChrootHost::start(&lower, &opts);
        let home = tempfile::Builder::new()
            .prefix("ov-it-home.")
            .tempdir()
            .expect("home");
        let rig = Rig { host, home };
        let vm_dir = rig.vm_dir();
        std::fs::create_dir_all(&vm_dir).expect("vm dir");
        for (from, to, mode) in [
            (rig.host.client_key.clone(), "id_ed25519", 0o600),
            (
                rig.host.client_key.with_extension("pub"),
                "id_ed25519.pub",
                0o644,
            ),
        ] {
            std::fs::copy(&from, vm_dir.join(to)).expect("copy key");
            std::fs::set_permissions(vm_dir.join(to), std::fs::Permissions::from_mode(mode))
                .expect("chmod key");
        }
        let state = rig.state_file();
        std::fs::create_dir_all(state.parent().expect("parent")).expect("config dir");
        std::fs::write(&state, SEED).expect("seed deploy.yml");
        eprintln!(
            "e2e host {} up after {:.1}s",
            rig.host.addr,
            t0.elapsed().as_secs_f64()
        );
        Some(rig)
    }

    fn vm_dir(&self) -> PathBuf {
        self.home.path().join(format!(".local/share/ov/vm/ov-{VM}"))
    }

    fn state_file(&self) -> PathBuf {
        self.home.path().join(".config/ov/deploy.yml")
    }

    fn state_text(&self) -> String {
        std::fs::read_to_string(self.state_file()).expect("deploy.yml")
    }

    /// `ov ARGS --host ADDR` as the operator.
    fn ov(&self, args: &[&str]) -> Output {
        let out = e2e::ov(self.home.path())
            .args(args)
            .args(["--host", &self.host.addr])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("ov runs");
        eprintln!("$ ov {} -> {:?}", args.join(" "), out.status.code());
        out
    }

    /// `ov ARGS` with no connection flags: the host comes from the last push's saved state.
    fn ov_remembered(&self, args: &[&str]) -> Output {
        let out = e2e::ov(self.home.path())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("ov runs");
        eprintln!(
            "$ ov {} (no --host) -> {:?}",
            args.join(" "),
            out.status.code()
        );
        out
    }

    /// `ov push DEPLOY --force --host ADDR` in a terminal (`script` gives it a pty); what the
    /// terminal showed.
    fn terminal_push(&self) -> Output {
        e2e::in_terminal(
            self.home.path(),
            &["push", DEPLOY, "--force", "--host", &self.host.addr],
        )
    }

    fn package_installed(&self, pkg: &str) -> bool {
        self.host
            .run(&format!("dpkg-query -W -f='${{Status}}' {pkg}"))
            .stdout
            .starts_with(b"install ok installed")
    }

    fn json(&self, p: &str) -> Value {
        let raw = std::fs::read(self.host.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{p} is not JSON: {e}"))
    }

    fn snapshot(&self) -> BTreeMap<String, String> {
        // Also volatile here: sshd's and the test's own files.
        let mut skip = e2e::VOLATILE.to_vec();
        skip.extend(["etc/ov-it"]);
        e2e::snapshot(&self.host.path("/"), &skip)
    }

    /// The bundle `ov` compiled for its last push (in its cache) and the archive's sha256.
    fn cached_bundle(&self) -> (Value, String) {
        let archive = self.home.path().join(".cache/ov/bundles/vm-e2e.tar.gz");
        let out = e2e::ov(self.home.path())
            .args(["inspect", "--json"])
            .arg(&archive)
            .output()
            .expect("ov runs");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let manifest: Value = serde_json::from_slice(&out.stdout).expect("manifest JSON");
        let mut sum = archive.clone().into_os_string();
        sum.push(".sha256");
        let sum = std::fs::read_to_string(PathBuf::from(sum)).expect(".sha256");
        (
            manifest,
            sum.split_whitespace().next().unwrap_or("").to_string(),
        )
    }
}

fn digest_of(manifest: &Value, layer: &str) -> String {
    manifest["layers"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == layer))
        .and_then(|l| l["digest"].as_str())
        .unwrap_or_else(|| panic!("no layer {layer} in the manifest"))
        .to_string()
}

/// The JSON lines of `--json` output.
fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn json_layers(lines: &[Value], event: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|v| v["event"] == event)
        .filter_map(|v| v["layer"].as_str().map(str::to_string))
        .collect()
}

/// `text` without the lines of the `vm_state` fields `ov` owns in entry `vm:e2e` (a key line
/// and the list items under it): what must stay byte for byte.
fn strip_ours(text: &str) -> String {
    let mut out = String::new();
    let (mut in_entry, mut in_state, mut skipping) = (false, false, false);
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let ind = line.len() - t.len();
        let content = !t.trim().is_empty() && !t.starts_with('#');
        if skipping {
            if content && ind > 6 {
                continue;
            }
            skipping = false;
        }
        if content {
            match ind {
                0 => (in_entry, in_state) = (false, false),
                2 => (in_entry, in_state) = (t.starts_with("vm:e2e:"), false),
                4 => in_state = in_entry && t.starts_with("vm_state:"),
                6 if in_state && OURS.iter().any(|f| t.starts_with(&format!("{f}:"))) => {
                    skipping = true;
                    continue;
                }
                _ => {}
            }
        }
        out.push_str(line);
    }
    out
}

/// `text` without the whole `vm:e2e` entry (up to the next line at its indentation or less).
fn strip_entry(text: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let ind = line.len() - t.len();
        let content = !t.trim().is_empty() && !t.starts_with('#');
        if content && ind <= 2 {
            skipping = ind == 2 && t.starts_with("vm:e2e:");
        }
        if !skipping {
            out.push_str(line);
        }
    }
    out
}

fn vm_state(text: &str) -> Value {
    let doc: Value = serde_saphyr::from_str(text).expect("deploy.yml parses");
    doc["images"]["vm:e2e"]["vm_state"].clone()
}

fn assert_others_kept(text: &str) {
    assert_eq!(
        strip_ours(text),
        strip_ours(SEED),
        "deploy.yml changed outside vm:e2e's vm_state:\n{text}"
    );
}

#[test]
fn deploy_add_status_push_and_del_over_ssh_with_the_ov_binary() {
    let Some(rig) = Rig::start() else { return };
    let h = &rig.host;
    h.sh(&format!("touch {GATE_MARKER}"));
    let before = rig.snapshot();
    assert!(
        before.contains_key("etc/debian_version") && before.contains_key("home/tester/.profile"),
        "the snapshot sees the host's root"
    );
    assert!(!rig.package_installed("hello"));

    // deploy add: everything applied on the target.
    let out = rig.ov(&["deploy", "add", DEPLOY]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out),
        h.log_text()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("7 layer(s) applied, 0 already applied"),
        "{}",
        text(&out)
    );
    assert!(rig.package_installed("hello"));
    assert_eq!(h.sh("e2e-greet"), "greetings from ov\n");
    assert_eq!(
        h.sh("readlink /usr/local/bin/e2e-hello"),
        "/usr/bin/hello\n"
    );
    assert_eq!(h.sh("cat /etc/e2e-system.conf"), "system=yes\n");
    assert_eq!(
        h.sh("cd /home/tester && stat -c '%U %a %n' .config/e2e/user.conf .local/bin/e2e-hi"),
        "tester 600 .config/e2e/user.conf\ntester 755 .local/bin/e2e-hi\n"
    );
    assert_eq!(
        h.sh("runuser -u tester -- bash -lc 'printf %s \"$E2E_GREETING\"; echo; e2e-hi'"),
        "hello world\nhi from tester\n"
    );
    assert_eq!(
        h.sh("cd /home/tester && grep -c '^# overthink:begin' .profile .bashrc"),
        ".profile:1\n.bashrc:1\n"
    );
    assert_eq!(h.sh("cat /var/lib/e2e/task-runs"), "root for tester\n");
    assert_eq!(
        h.sh("ls -A /var/lib/overthink/work"),
        "",
        "the upload is removed after the run"
    );
    let (manifest, sha256) = rig.cached_bundle();
    let id = manifest["deploy"]["id"].as_str().expect("id").to_string();
    let deploy = rig.json(&format!("{LEDGER}/deploys/{id}.json"));
    assert_eq!(deploy["result"], "ok");
    assert_eq!(deploy["layers"], serde_json::json!(LAYERS));
    assert_eq!(deploy["bundle_sha256"], sha256.as_str());

    // deploy.yml: our fields set, the seeded instance id kept, every other byte as it was.
    let state = rig.state_text();
    assert_others_kept(&state);
    let vs = vm_state(&state);
    assert_eq!(vs["instance_id"], SEEDED_ID);
    assert_eq!(vs["ssh_host"], h.addr.as_str());
    assert_eq!(vs["user"], "tester");
    assert_eq!(vs["ssh_user"], USER);
    assert_eq!(vs["ssh_port"], 22);
    assert_eq!(
        vs["ssh_key_path"],
        rig.vm_dir().join("id_ed25519").to_string_lossy().as_ref()
    );
    assert_eq!(vs["applied_layers"], serde_json::json!(LAYERS));
    assert_eq!(vs["bundle_sha256"], sha256.as_str());
    assert!(vs["last_deploy"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(vs["backend"], "auto");
    let mode = std::fs::metadata(rig.state_file())
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The host key was learned into the VM's own known_hosts.
    let found = std::process::Command::new("ssh-keygen")
        .args(["-F", &h.addr, "-f"])
        .arg(rig.vm_dir().join("known_hosts"))
        .output()
        .expect("ssh-keygen runs");
    assert!(found.status.success(), "{}", text(&found));

    // status: every layer with its digest, all matching what the project compiles now — on the
    // machine the push went to, with no `--host` (the VM's entry names none: without the saved
    // host this would be 127.0.0.1).
    let out = rig.ov_remembered(&["status", DEPLOY]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("compared with the bundle:"), "{stdout}");
    for l in LAYERS {
        let digest = digest_of(&manifest, l);
        let recorded = stdout
            .lines()
            .find(|line| line.split_whitespace().next() == Some(l))
            .unwrap_or_else(|| panic!("{l} is not listed: {stdout}"));
        assert!(recorded.contains(&digest[..16]), "{recorded}");
        assert!(
            stdout
                .lines()
                .any(|line| line.split_whitespace().collect::<Vec<_>>() == [l, "applied"]),
            "{l} does not match: {stdout}"
        );
    }
    let out = rig.ov(&["status", DEPLOY, "--exit-code"]);
    assert_eq!(out.status.code(), Some(0), "up to date: {}", text(&out));
    // push --check: nothing would change; after a deployed file is edited on the target, that
    // file, with its diff (exit 10) — and the edit stays, a check changes nothing.
    let out = rig.ov(&["push", DEPLOY, "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("a run would change nothing"),
        "{}",
        text(&out)
    );
    h.sh("printf 'system=edited\\n' >/etc/e2e-system.conf");
    let out = rig.ov(&["push", DEPLOY, "--check", "--diff"]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("change  file /etc/e2e-system.conf (content differs)")
            && all.contains("    -system=edited")
            && all.contains("    +system=yes")
            && all.contains("a run would change 1 layer(s)"),
        "{all}"
    );
    assert_eq!(h.sh("cat /etc/e2e-system.conf"), "system=edited\n");
    // The ledger's digests still match; status --exit-code compares the files too.
    let out = rig.ov(&["status", DEPLOY, "--exit-code"]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    assert!(
        text(&out).contains("a run would change 1 layer(s) on the target"),
        "{}",
        text(&out)
    );
    h.sh("printf 'system=yes\\n' >/etc/e2e-system.conf");
    let out = rig.ov(&["status", DEPLOY, "--exit-code"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = rig.ov(&["status", DEPLOY, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // JSON lines: progress events (`connected`), then the report (the one without `event`).
    let report = json_lines(&out)
        .into_iter()
        .find(|v| v.get("event").is_none())
        .unwrap_or_else(|| panic!("no status report: {}", text(&out)));
    let recorded: BTreeMap<String, String> = report["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            (
                l["layer"].as_str().unwrap_or("").to_string(),
                l["digest"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected: BTreeMap<String, String> = LAYERS
        .iter()
        .map(|l| (l.to_string(), digest_of(&manifest, l)))
        .collect();
    assert_eq!(recorded, expected);
    let matches: Vec<(String, String)> = report["comparison"]
        .as_array()
        .expect("comparison")
        .iter()
        .map(|c| {
            (
                c[0].as_str().unwrap_or("").to_string(),
                c[1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        matches,
        LAYERS
            .iter()
            .map(|l| (l.to_string(), "applied".to_string()))
            .collect::<Vec<_>>()
    );

    // A second push runs no layer.
    let out = rig.ov(&["push", DEPLOY, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = json_lines(&out);
    assert_eq!(json_layers(&lines, "layer-skip"), LAYERS, "{}", text(&out));
    assert!(json_layers(&lines, "layer-start").is_empty());
    let result = lines
        .iter()
        .find(|v| v["event"] == "result")
        .expect("result line");
    assert_eq!(result["applied"], 0);
    assert_eq!(result["skipped"], 7);
    assert_eq!(result["instance_id"], SEEDED_ID);
    assert_eq!(h.sh("cat /var/lib/e2e/task-runs"), "root for tester\n");
    assert_others_kept(&rig.state_text());

    // deploy del: the target as it was; vm_state kept (no layers applied). No `--host`: the
    // teardown goes where the last push went.
    let out = rig.ov_remembered(&["deploy", "del", DEPLOY]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("7 layer(s) undone"),
        "{}",
        text(&out)
    );
    assert!(!rig.package_installed("hello"));
    assert!(!h.path("/home/tester/.config/overthink/env.d").exists());
    let blocks = h.run("grep -c overthink /home/tester/.profile /home/tester/.bashrc");
    assert_eq!(
        String::from_utf8_lossy(&blocks.stdout),
        "/home/tester/.profile:0\n/home/tester/.bashrc:0\n",
        "managed block stripped"
    );
    assert_eq!(
        h.sh(&format!("ls -A {LEDGER}")),
        ".lock\n",
        "ledger not empty"
    );
    let diff = e2e::diff(&before, &rig.snapshot(), e2e::LEFT_AFTER_UNDO);
    assert!(
        diff.is_empty(),
        "the target differs after `ov deploy del`:\n{}",
        diff.join("\n")
    );
    let out = rig.ov(&["status", DEPLOY]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no layers recorded"), "{stdout}");
    assert_eq!(
        stdout.matches(" not applied").count(),
        LAYERS.len(),
        "{stdout}"
    );
    // With --exit-code, a target without the deploy's layers is a difference (exit 10).
    let out = rig.ov(&["status", DEPLOY, "--exit-code"]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "the target differs from what the project compiles now: `e2e-hello` not applied"
        ),
        "{}",
        text(&out)
    );
    let state = rig.state_text();
    assert_others_kept(&state);
    let vs = vm_state(&state);
    assert_eq!(vs["instance_id"], SEEDED_ID);
    assert_eq!(vs["applied_layers"], serde_json::json!([]));
    assert_eq!(vs["ssh_user"], USER);

    // deploy del --purge: nothing left on the target to undo; the entry goes, the rest stays.
    let out = rig.ov(&["deploy", "del", "--purge", DEPLOY]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let state = rig.state_text();
    assert_eq!(strip_entry(&state), strip_entry(SEED), "{state}");
    assert!(!state.contains("vm:e2e"), "{state}");
}

#[test]
fn a_failing_remote_step_exits_7_naming_layer_and_script_and_deploy_add_resumes() {
    let Some(rig) = Rig::start() else { return };
    let h = &rig.host;

    // The gate's marker is missing: its script fails; ov says which layer and script.
    let out = rig.ov(&["push", DEPLOY]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}\n{}",
        text(&out),
        h.log_text()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "error: layer `{GATE}` failed on tester@{}:22",
            h.addr
        )) && stderr.contains("script `01-system.sh` exited with status 42"),
        "the message names layer, script and status: {}",
        text(&out)
    );
    assert!(
        stderr.contains("/etc/e2e-allow is missing"),
        "the script's last output is shown: {}",
        text(&out)
    );
    assert_eq!(
        h.sh("ls -A /var/lib/overthink/work"),
        "",
        "the upload is removed after a failure too"
    );
    // A failed push records no state.
    assert_eq!(rig.state_text(), SEED);
    assert!(rig.package_installed("hello"));
    assert!(!h.path("/var/lib/e2e").exists());

    // The same in JSON: a layer-fail event and an error line with the exit code.
    let out = rig.ov(&["push", DEPLOY, "--json"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let lines = json_lines(&out);
    let fail = lines
        .iter()
        .find(|v| v["event"] == "layer-fail")
        .unwrap_or_else(|| panic!("no layer-fail: {}", text(&out)));
    assert_eq!(fail["layer"], GATE);
    assert_eq!(fail["script"], "01-system.sh");
    assert_eq!(fail["status"], 42);
    let error = lines
        .iter()
        .find(|v| v["event"] == "error")
        .unwrap_or_else(|| panic!("no error line: {}", text(&out)));
    assert_eq!(error["exit"], 7);
    let gate_at = LAYERS.iter().position(|l| *l == GATE).expect("gate");
    assert_eq!(json_layers(&lines, "layer-skip"), &LAYERS[..gate_at]);

    // Fixed on the target: deploy add resumes at the gate.
    h.sh(&format!("touch {GATE_MARKER}"));
    let out = rig.ov(&["deploy", "add", DEPLOY, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = json_lines(&out);
    assert_eq!(json_layers(&lines, "layer-skip"), &LAYERS[..gate_at]);
    assert_eq!(json_layers(&lines, "layer-done"), &LAYERS[gate_at..]);
    assert_eq!(
        vm_state(&rig.state_text())["applied_layers"],
        serde_json::json!(LAYERS)
    );
}

#[test]
fn an_account_the_target_lacks_is_refused_before_anything_runs_and_said_once() {
    let Some(rig) = Rig::start() else { return };
    let h = &rig.host;
    let out = rig.ov(&["push", DEPLOY, "--user", "nosuchuser"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains(&format!(
            "error: run.sh could not start on tester@{}:22 (status 2): unknown user `nosuchuser`",
            h.addr
        )),
        "{stderr}"
    );
    // Said once: in the error, not also streamed as the run's output before it.
    assert_eq!(stderr.matches("unknown user").count(), 1, "{stderr}");
    assert!(!rig.package_installed("hello"), "nothing ran");
    assert_eq!(rig.state_text(), SEED, "a refused push records nothing");
}

#[test]
fn a_work_directory_another_user_controls_is_refused() {
    let Some(rig) = Rig::start() else { return };
    let h = &rig.host;
    h.sh(&format!("touch {GATE_MARKER}"));
    // Root's state must be root's alone: a /var/lib/overthink another account owns (an admin's
    // mistake, or a squat on a system where /var/lib is not root's alone) could let that account
    // swap the bundle between its check and its run, or plant links in the ledger.
    h.sh("install -d -o tester -g tester -m 0755 /var/lib/overthink");
    let out = rig.ov(&["push", DEPLOY]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "refusing to unpack under /var/lib/overthink/work: /var/lib/overthink must be a directory of root's"
        ),
        "{}",
        text(&out)
    );
    assert!(!h.path(LEDGER).exists(), "nothing ran");
    assert!(!rig.package_installed("hello"));
    assert_eq!(rig.state_text(), SEED);

    // Root's again: the push goes through; root's directories stay closed to others.
    h.sh("rm -rf /var/lib/overthink");
    let out = rig.ov(&["push", DEPLOY]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        h.sh("stat -c '%U %a' /var/lib/overthink /var/lib/overthink/work /var/lib/overthink/installed /var/lib/overthink/installed/tester"),
        "root 700\nroot 700\nroot 700\nroot 700\n"
    );
}

/// The `check` events of `--json` output: id → result.
fn json_checks(lines: &[Value]) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter(|v| v["event"] == "check")
        .map(|v| {
            (
                v["id"].as_str().unwrap_or_default().to_string(),
                v["result"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn ov_test_and_push_verify_run_the_layers_checks_over_ssh() {
    let Some(rig) = Rig::start() else { return };
    let h = &rig.host;
    h.sh(&format!("touch {GATE_MARKER}"));

    // Before anything is applied: the checks run (nothing changes), most fail, exit 9, and
    // deploy.yml is not touched.
    let before = rig.snapshot();
    let out = rig.ov(&["test", DEPLOY, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}\n{}",
        text(&out),
        h.log_text()
    );
    let got = json_checks(&json_lines(&out));
    assert_eq!(got.len(), 12, "{}", text(&out));
    assert_eq!(got["hello-package"], "fail");
    assert_eq!(got["never-there"], "fail");
    assert_eq!(got["in-container-only"], "skip");
    assert_eq!(got["cron-running"], "skip");
    assert_eq!(rig.state_text(), SEED, "ov test records nothing");
    assert!(!rig.package_installed("hello"));
    let after = rig.snapshot();
    // Only the (empty) directory uploads go to is new: it is ov's transport, not a check's doing.
    assert_eq!(
        e2e::diff(
            &before,
            &after,
            &["var/lib/overthink", "var/lib/overthink/work"]
        ),
        Vec::<String>::new(),
        "ov test changes nothing on the target"
    );

    // push --verify: applied, then checked on the same connection; the failing check fails the
    // command (exit 9, named in the message), the apply is recorded all the same.
    let out = rig.ov(&["push", DEPLOY, "--verify"]);
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("7 layer(s) applied"), "{}", text(&out));
    assert!(
        stderr.contains("PASS  e2e-hello/hello-runs (command, build): exit status 0"),
        "{}",
        text(&out)
    );
    assert!(
        stderr.contains("checked ") && stderr.contains("9 passed, 1 failed, 2 skipped"),
        "{}",
        text(&out)
    );
    assert!(
        stderr.contains("1 check(s) failed on") && stderr.contains("e2e-task/never-there"),
        "{}",
        text(&out)
    );
    assert!(rig.package_installed("hello"));
    assert_eq!(
        vm_state(&rig.state_text())["applied_layers"],
        serde_json::json!(LAYERS)
    );

    // ov test after the apply, one layer: every check passes, exit 0; one session, no ledger.
    let out = rig.ov(&["test", DEPLOY, "--layer", "e2e-user", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = json_lines(&out);
    let got = json_checks(&lines);
    assert_eq!(
        got.iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        [
            ("greeting-env", "pass"),
            ("hi-on-path", "pass"),
            ("user-conf", "pass")
        ]
    );
    let result = lines
        .iter()
        .find(|v| v["event"] == "result")
        .expect("result line");
    assert_eq!(result["checks"]["pass"], 3);
    assert_eq!(
        h.sh("ls -A /var/lib/overthink/work"),
        "",
        "the upload is removed after the checks"
    );
}

/// What an operator reads back, by the `ov` binary against the host: the push display in
/// non-terminal mode (a line per layer with its time, step lines naming their layer, and a
/// failure that names the command, its line, the script, the log and how to resume), `-q`
/// (only the result), `-v` (every line the steps print), `ov deploy del --dry-run` (each layer's
/// reverse operations) and `ov deploy del` (per layer, what it removed) — pinned by snapshots
/// with the host's address, the deploy id and the times filtered; and, in a terminal (`script`),
/// the layers' lines kept in the scrollback above the bar.
#[test]
fn the_display_reads_back_in_each_mode() {
    let Some(rig) = Rig::start() else { return };
    let h = &rig.host;
    let (manifest, _) = {
        // Compile once to learn the deploy id (the push compiles the same bundle).
        let out = rig.ov(&["push", DEPLOY, "--dry-run"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        rig.cached_bundle()
    };
    let id = manifest["deploy"]["id"].as_str().expect("id").to_string();
    let filters: Vec<(String, String)> = vec![
        (regex_escape(&h.addr), "[host]".into()),
        (id.clone(), "[deploy-id]".into()),
        (r"\b\d+m\d\ds\b|\b\d+s\b".into(), "[secs]".into()),
        (r"attempt \d+".into(), "attempt [n]".into()),
        (r"\b\d+/\d+ bytes".into(), "[size] bytes".into()),
        (r"\b[0-9a-f]{64}\b".into(), "[sha256]".into()),
    ];
    let filters: Vec<(&str, &str)> = filters
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // The gate fails: a line per layer, the failure with its command and line, the log, resume.
    let out = rig.ov(&["push", DEPLOY]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let log = format!("{LEDGER}/logs/{id}.log");
    assert!(stderr(&out).contains(&log), "{}", text(&out));
    assert_eq!(h.sh(&format!("stat -c '%U %a' {log}")), "root 600\n");
    assert!(h
        .sh(&format!("cat {log}"))
        .contains("e2e-gate: /etc/e2e-allow is missing"));
    insta::with_settings!({filters => filters.clone()}, {
        insta::assert_snapshot!("push-plain-failure", stderr(&out));
    });

    // Fixed; `-q` resumes and prints only the result.
    h.sh(&format!("touch {GATE_MARKER}"));
    let out = rig.ov(&["push", DEPLOY, "-q"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    insta::with_settings!({filters => filters.clone()}, {
        insta::assert_snapshot!("push-quiet", stderr(&out));
    });

    // What a teardown would undo, per layer; then the teardown in words.
    let out = rig.ov(&["deploy", "del", DEPLOY, "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    insta::with_settings!({filters => filters.clone()}, {
        insta::assert_snapshot!("del-dry-run", String::from_utf8_lossy(&out.stdout));
    });
    let out = rig.ov(&["deploy", "del", DEPLOY]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!stderr(&out).contains("undo-layer"), "{}", text(&out));
    insta::with_settings!({filters => filters.clone()}, {
        insta::assert_snapshot!("del", stderr(&out));
    });
    assert_eq!(
        h.sh(&format!("ls -A {LEDGER}")),
        ".lock\n",
        "the log goes with the deploy"
    );

    // A whole push, plain: a line per layer with its time; step lines name their layer.
    let out = rig.ov(&["push", DEPLOY]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    insta::with_settings!({filters => filters.clone()}, {
        insta::assert_snapshot!("push-plain", stderr(&out));
    });

    // `-v`: the steps' own output too (here the raw tasks' and apt's), and each script's end.
    let out = rig.ov(&["push", DEPLOY, "-v", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let verbose = stderr(&out);
    assert!(
        verbose.contains("\n  e2e-task/01-system.sh: status 0 in ")
            && verbose.contains("hello is already the newest version"),
        "{verbose}"
    );
    insta::with_settings!({filters => filters.clone()}, {
        insta::assert_snapshot!("push-verbose", verbose);
    });

    // In a terminal: the bar comes and goes, the layers' lines stay in the scrollback.
    let out = rig.terminal_push();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let screen = strip_ansi(&String::from_utf8_lossy(&out.stdout));
    for (i, l) in LAYERS.iter().enumerate() {
        let done = format!("[{}/{}] {l} done in ", i + 1, LAYERS.len());
        assert!(
            screen.lines().any(|line| line.starts_with(&done)),
            "no `{done}` line kept in:\n{screen}"
        );
    }
    assert!(
        screen.contains("  e2e-task · step 1: cmd mkdir -p /var/lib/e2e"),
        "{screen}"
    );
    assert!(
        screen.contains("7 layer(s) applied, 0 already applied"),
        "{screen}"
    );
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

/// The text of a terminal capture without its escape sequences (colours, cursor moves) and with
/// carriage returns as line ends.
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters, then one final byte in @..~.
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => out.push('\n'),
            c => out.push(c),
        }
    }
    out
}
