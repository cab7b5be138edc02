//! Signed bundles, for real: `ov compile --sign` with Ed25519 keys made by the real `ssh-keygen`
//! (from the key file, and through a real `ssh-agent` the test starts), checked by the real
//! `ssh-keygen -Y verify` by hand, by `ov verify --allowed-signers` and by run.sh under the
//! target's policy — in an offline Debian root run by hand, and on an sshd host through
//! `ov push` — where an unsigned bundle, one signed by an unlisted key and one whose SHA256SUMS
//! was regenerated after tampering are each refused (exit 3) before any step runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::bundle::{rewrite_checksum, tamper_and_resum};
use crate::support::chroot_sshd::{self, ChrootHost, Options};
use crate::support::e2e::{self, text};
use crate::support::rootfs::{self, Root};

const USER: &str = "tester";
/// The file the canary layer's only step writes: it must not exist after a refused run.
const CANARY: &str = "/etc/ov-canary";
const POLICY: &str = "/etc/overthink/allowed_signers";
const DEPLOY: &str = "vm:sig";
/// The canary layer's step script in the bundle.
const STEP: &str = "layers/01-canary/01-system.sh";

/// A project with one layer whose step writes [`CANARY`], and two keys: `good` (listed in the
/// policy) and `other` (not), each with its `.pub`.
struct Rig {
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("proj");
        let write = |rel: &str, body: &str| {
            let f = p.join(rel);
            std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
            std::fs::write(f, body).expect("write");
        };
        write(
            "overthink.yml",
            "version: 2\nincludes:\n  - build.yml\n  - deploy.yml\ndiscover:\n  layers:\n    - path: layers\n      recursive: true\n",
        );
        write(
            "build.yml",
            "distros:\n  debian:\n    formats:\n      deb: {}\n",
        );
        write(
            "deploy.yml",
            "version: 3\nvm:\n  sig:\n    source:\n      kind: cloud_image\n      base_user: tester\n      distro: \"debian:12\"\n    ssh:\n      user: tester\n      port: 22\n      key_source: none\n",
        );
        write(
            "layers/canary/layer.yml",
            &format!("layer:\n  tasks:\n    - write: {CANARY}\n      content: \"ran\\n\"\n"),
        );
        let rig = Rig { dir };
        for (name, comment) in [("good", "builder@example"), ("other", "stranger@example")] {
            keygen(&rig.path(name), comment, "");
        }
        rig
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn ov(&self) -> Command {
        let home = self.path("home");
        std::fs::create_dir_all(&home).expect("home");
        e2e::ov_in(&home, &self.path("proj"))
    }

    /// `ov compile vm:sig canary [--sign KEY] -o OUT`.
    fn compile(&self, out: &Path, key: Option<&Path>) -> Output {
        let mut cmd = self.ov();
        cmd.args(["compile", DEPLOY, "canary", "-q", "-o"]).arg(out);
        if let Some(k) = key {
            cmd.arg("--sign").arg(k);
        }
        cmd.output().expect("ov runs")
    }

    fn compiled(&self, name: &str, key: Option<&str>) -> PathBuf {
        let out = self.path(&format!("out/{name}.tar.gz"));
        let r = self.compile(&out, key.map(|k| self.path(k)).as_deref());
        assert_eq!(r.status.code(), Some(0), "{}", text(&r));
        out
    }

    /// An allowed_signers line for `key`'s .pub, as an administrator writes it.
    fn policy_line(&self, key: &str, principal: &str) -> String {
        let public = std::fs::read_to_string(self.path(&format!("{key}.pub"))).expect("pub");
        let mut parts = public.split_whitespace();
        let (kind, b64) = (parts.next().expect("type"), parts.next().expect("key"));
        format!("{principal} namespaces=\"ov-bundle\" {kind} {b64}\n")
    }

    fn fingerprint(&self, key: &str) -> String {
        let out = Command::new("ssh-keygen")
            .args(["-l", "-f"])
            .arg(self.path(&format!("{key}.pub")))
            .output()
            .expect("ssh-keygen -l");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .expect("fingerprint")
            .to_string()
    }

    /// The three bundles a policy must refuse, and the one it accepts: (name, archive).
    fn bundles(&self) -> Vec<(&'static str, PathBuf)> {
        let good = self.compiled("good", Some("good"));
        let unsigned = self.compiled("unsigned", None);
        let other = self.compiled("other", Some("other"));
        let tampered = self.compiled("tampered", Some("good"));
        let step = read_inner(&tampered, STEP);
        // Still writes the canary, so running it at all would show.
        let evil = format!("#!/usr/bin/env bash\necho tampered >{CANARY}\n");
        tamper_and_resum(&tampered, STEP, &evil);
        assert_eq!(read_inner(&tampered, STEP), evil);
        assert_ne!(step, evil);
        vec![
            ("unsigned", unsigned),
            ("other", other),
            ("tampered", tampered),
            ("good", good),
        ]
    }
}

fn keygen(path: &Path, comment: &str, passphrase: &str) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
}

fn read_inner(archive: &Path, file: &str) -> String {
    let out = Command::new("tar")
        .arg("-xzOf")
        .arg(archive)
        .arg(format!("vm-sig/{file}"))
        .output()
        .expect("tar");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn extract(archive: &Path, into: &Path) -> PathBuf {
    std::fs::create_dir_all(into).expect("mkdir");
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .status()
        .expect("tar");
    assert!(st.success());
    into.join("vm-sig")
}

/// `ssh-keygen -Y verify` by hand, as README.txt tells the operator.
fn keygen_verify(top: &Path, allowed: &Path, principal: &str) -> Output {
    Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "ov-bundle", "-I", principal, "-f"])
        .arg(allowed)
        .arg("-s")
        .arg(top.join("SHA256SUMS.sig"))
        .stdin(std::fs::File::open(top.join("SHA256SUMS")).expect("sums"))
        .output()
        .expect("ssh-keygen -Y verify")
}

#[test]
fn a_signed_bundle_verifies_with_ssh_keygen_and_two_signed_compiles_are_identical() {
    let rig = Rig::new();
    let a = rig.compiled("a", Some("good"));
    let b = rig.compiled("b", Some("good"));
    assert_eq!(
        std::fs::read(&a).expect("a"),
        std::fs::read(&b).expect("b"),
        "two signed compiles with the same Ed25519 key differ"
    );
    let allowed = rig.path("allowed_signers");
    std::fs::write(&allowed, rig.policy_line("good", "builder@example")).expect("policy");
    let top = extract(&a, &rig.path("x"));
    let by_hand = keygen_verify(&top, &allowed, "builder@example");
    assert!(by_hand.status.success(), "{}", text(&by_hand));
    assert!(
        String::from_utf8_lossy(&by_hand.stdout).contains(&rig.fingerprint("good")),
        "{}",
        text(&by_hand)
    );
    // SHA256SUMS lists every file but its own signature, and `sha256sum -c` still passes.
    let sums = std::fs::read_to_string(top.join("SHA256SUMS")).expect("sums");
    assert!(!sums.contains("SHA256SUMS.sig"), "{sums}");
    let check = Command::new("sha256sum")
        .args(["-c", "--strict", "--quiet", "SHA256SUMS"])
        .current_dir(&top)
        .output()
        .expect("sha256sum");
    assert!(check.status.success(), "{}", text(&check));
    // The manifest (covered by SHA256SUMS) names the signer; `ov inspect` shows it.
    let inspect = rig.ov().arg("inspect").arg(&a).output().expect("ov");
    let shown = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        shown.contains(&format!(
            "signed by: {} ssh-ed25519 (builder@example)",
            rig.fingerprint("good")
        )),
        "{shown}"
    );
    assert!(
        shown.contains("layer canary: local layers/canary"),
        "{shown}"
    );
    // The README tells the air-gapped operator the command.
    let readme = std::fs::read_to_string(top.join("README.txt")).expect("readme");
    assert!(
        readme.contains("ssh-keygen -Y verify -f ALLOWED_SIGNERS -I PRINCIPAL -n ov-bundle -s SHA256SUMS.sig < SHA256SUMS"),
        "{readme}"
    );
    assert!(readme.contains(&rig.fingerprint("good")), "{readme}");

    // `ov verify --allowed-signers`: accepted; an unlisted key and an unsigned bundle are
    // integrity failures (exit 4) naming the fingerprint and the file.
    let ok = rig
        .ov()
        .arg("verify")
        .arg(&a)
        .arg("--allowed-signers")
        .arg(&allowed)
        .output()
        .expect("ov");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("signed by builder@example"),
        "{}",
        text(&ok)
    );
    let other = rig.compiled("o", Some("other"));
    let r = rig
        .ov()
        .arg("verify")
        .arg(&other)
        .arg("--allowed-signers")
        .arg(&allowed)
        .output()
        .expect("ov");
    assert_eq!(r.status.code(), Some(4), "{}", text(&r));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains(&rig.fingerprint("other")), "{err}");
    assert!(err.contains(&allowed.display().to_string()), "{err}");
    let unsigned = rig.compiled("u", None);
    let r = rig
        .ov()
        .arg("verify")
        .arg(&unsigned)
        .arg("--allowed-signers")
        .arg(&allowed)
        .output()
        .expect("ov");
    assert_eq!(r.status.code(), Some(4), "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("unsigned"),
        "{}",
        text(&r)
    );
    // Re-summed after tampering: the old signature does not cover the new SHA256SUMS.
    let tampered = rig.compiled("t", Some("good"));
    tamper_and_resum(&tampered, STEP, "#!/usr/bin/env bash\ntouch /tmp/evil\n");
    let r = rig
        .ov()
        .arg("verify")
        .arg(&tampered)
        .arg("--allowed-signers")
        .arg(&allowed)
        .output()
        .expect("ov");
    assert_eq!(r.status.code(), Some(4), "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("does not verify against SHA256SUMS"),
        "{}",
        text(&r)
    );
}

#[test]
fn ssh_agent_signs_the_same_bytes_and_an_encrypted_key_file_points_to_it() {
    let rig = Rig::new();
    let from_file = rig.compiled("file", Some("good"));
    // A real agent, started for this test on a socket of its own, holding the key.
    let sock = rig.path("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh-agent");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let add = Command::new("ssh-add")
        .arg(rig.path("good"))
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .expect("ssh-add");
    let out = rig.path("out/agent.tar.gz");
    let signed = rig
        .ov()
        .env("SSH_AUTH_SOCK", &sock)
        .args(["compile", DEPLOY, "canary", "-q", "-o"])
        .arg(&out)
        .arg("--sign")
        .arg(rig.path("good.pub"))
        .output()
        .expect("ov");
    // A key the agent does not hold: the agent refuses, and ov says so.
    let refused = rig
        .ov()
        .env("SSH_AUTH_SOCK", &sock)
        .args(["compile", DEPLOY, "canary", "-q", "-o"])
        .arg(rig.path("out/refused.tar.gz"))
        .arg("--sign")
        .arg(rig.path("other.pub"))
        .output()
        .expect("ov");
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(add.status.success(), "{}", text(&add));
    assert_eq!(signed.status.code(), Some(0), "{}", text(&signed));
    // Ed25519 is deterministic: the agent's signature is the key file's, byte for byte.
    assert_eq!(
        std::fs::read(&out).expect("agent bundle"),
        std::fs::read(&from_file).expect("file bundle"),
        "signing through ssh-agent gave another archive than signing with the key file"
    );
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&rig.fingerprint("other")),
        "{}",
        text(&refused)
    );

    // A public key without an agent, and an encrypted key file: clear errors, exit 3.
    let r = rig.compile(&rig.path("out/x.tar.gz"), Some(&rig.path("good.pub")));
    assert_eq!(r.status.code(), Some(3), "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("SSH_AUTH_SOCK"),
        "{}",
        text(&r)
    );
    keygen(&rig.path("locked"), "locked", "a passphrase");
    let r = rig.compile(&rig.path("out/y.tar.gz"), Some(&rig.path("locked")));
    assert_eq!(r.status.code(), Some(3), "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("use ssh-agent: "),
        "{}",
        text(&r)
    );
}

#[test]
fn push_require_signature_refuses_an_unsigned_bundle_before_connecting() {
    let rig = Rig::new();
    let unsigned = rig.compiled("unsigned", None);
    // A port nothing listens on: a connect attempt would be retried for --wait-ssh seconds.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("listen")
        .local_addr()
        .expect("addr")
        .port()
        .to_string();
    let t0 = std::time::Instant::now();
    let given = rig
        .ov()
        .arg("push")
        .arg(&unsigned)
        .args([
            "--require-signature",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
        ])
        .args(["--wait-ssh", "60"])
        .output()
        .expect("ov");
    let compiled = rig
        .ov()
        .args(["push", DEPLOY, "canary", "--require-signature"])
        .args(["--host", "127.0.0.1", "--port", &port, "--wait-ssh", "60"])
        .output()
        .expect("ov");
    assert!(t0.elapsed() < std::time::Duration::from_secs(20));
    for r in [&given, &compiled] {
        assert_eq!(r.status.code(), Some(4), "{}", text(r));
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains("not signed"), "{err}");
        assert!(!err.contains("connect"), "{err}");
    }
    // Signed, it gets past the check (and then fails to connect, exit 5).
    let signed = rig.compiled("signed", Some("good"));
    let r = rig
        .ov()
        .arg("push")
        .arg(&signed)
        .args([
            "--require-signature",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
        ])
        .args(["--wait-ssh", "1", "--known-hosts"])
        .arg(rig.path("known_hosts"))
        .arg("--identity")
        .arg(rig.path("good"))
        .output()
        .expect("ov");
    assert_eq!(r.status.code(), Some(5), "{}", text(&r));
}

/// A fresh offline Debian root with the target account.
fn root() -> Option<Root> {
    e2e::offline_root(&e2e::spec(), USER)
}

fn unpack_in(root: &Root, archive: &Path, dir: &str) -> String {
    let into = root.path(dir);
    extract(archive, &into);
    format!("{dir}/vm-sig/run.sh")
}

#[test]
fn by_hand_the_targets_policy_refuses_unsigned_unlisted_and_resummed_bundles_before_any_step() {
    let Some(root) = root() else { return };
    let rig = Rig::new();
    let bundles = rig.bundles();
    // No policy: an unsigned bundle runs as before.
    let run = unpack_in(&root, &bundles[0].1, "/var/tmp/ov/free");
    let out = root.run(&["bash", &run, "--user", USER]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(root.path(CANARY).exists());
    root.sh(&format!("rm -f {CANARY} && rm -rf /var/lib/overthink"));

    // `--allowed-signers FILE` (no /etc policy): the file must be root's all the way up.
    let admin = "/root/signers";
    std::fs::write(root.path(admin), rig.policy_line("good", "builder@example")).expect("file");
    root.sh(&format!("chmod 0644 {admin}"));
    let good = unpack_in(&root, &bundles[3].1, "/var/tmp/ov/arg");
    root.sh("mkdir -m 1777 -p /var/tmp/pub");
    std::fs::write(
        root.path("/var/tmp/pub/signers"),
        rig.policy_line("good", "builder@example"),
    )
    .expect("file");
    let out = root.run(&[
        "bash",
        &good,
        "--user",
        USER,
        "--allowed-signers",
        "/var/tmp/pub/signers",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("must be root's and writable by no other account"),
        "{}",
        text(&out)
    );
    assert!(!root.path(CANARY).exists(), "{}", text(&out));
    let out = root.run(&["bash", &good, "--user", USER, "--allowed-signers", admin]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(root.path(CANARY).exists());
    root.sh(&format!("rm -f {CANARY} && rm -rf /var/lib/overthink"));

    // The administrator's policy: every bundle but the good one is refused before any step.
    std::fs::create_dir_all(root.path("/etc/overthink")).expect("mkdir");
    std::fs::write(
        root.path(POLICY),
        rig.policy_line("good", "builder@example"),
    )
    .expect("policy");
    root.sh(&format!("chmod 0755 /etc/overthink && chmod 0644 {POLICY}"));
    for (name, archive) in &bundles {
        let run = unpack_in(&root, archive, &format!("/var/tmp/ov/{name}"));
        let out = root.run(&["bash", &run, "--user", USER]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if *name == "good" {
            assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
            assert!(root.path(CANARY).exists(), "{name}");
            continue;
        }
        assert_eq!(out.status.code(), Some(3), "{name}: {}", text(&out));
        assert!(
            !root.path(CANARY).exists(),
            "{name}: the canary ran: {}",
            text(&out)
        );
        assert!(
            !root.path("/var/lib/overthink/installed").exists(),
            "{name}: a refused run made a ledger"
        );
        assert!(err.contains(POLICY), "{name}: {err}");
        // undo.sh of the same extracted bundle is bound by the policy too.
        let undo = run.replace("run.sh", "undo.sh");
        let u = root.run(&["bash", &undo, "--user", USER]);
        assert_eq!(u.status.code(), Some(3), "{name}: undo.sh: {}", text(&u));
        assert!(
            String::from_utf8_lossy(&u.stderr).contains("undo.sh: signature check failed"),
            "{name}: {}",
            text(&u)
        );
        match *name {
            "unsigned" => assert!(err.contains("unsigned"), "{err}"),
            "other" => assert!(
                err.contains(&format!(
                    "signed by key {}, which {POLICY} does not list",
                    rig.fingerprint("other")
                )),
                "{err}"
            ),
            _ => assert!(
                err.contains(&format!(
                    "signature by key {} does not verify against SHA256SUMS",
                    rig.fingerprint("good")
                )),
                "{err}"
            ),
        }
    }
    // A policy another account can write is itself refused.
    root.sh(&format!("chmod 0664 {POLICY} && rm -f {CANARY}"));
    let out = root.run(&["bash", "/var/tmp/ov/good/vm-sig/run.sh", "--user", USER]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(!root.path(CANARY).exists());
}

#[test]
fn over_ssh_the_targets_policy_refuses_before_any_step_and_accepts_a_listed_signer() {
    if !rootfs::available() || !chroot_sshd::available() {
        return;
    }
    let rig = Rig::new();
    let bundles = rig.bundles();
    let lower = rootfs::extracted(&rootfs::tarball(&e2e::spec()));
    let mut opts = Options::new(USER);
    opts.hostname = "sig".into();
    opts.files.push((
        e2e::OFFLINE_APT.0.into(),
        e2e::OFFLINE_APT.1.as_bytes().to_vec(),
        0o644,
    ));
    opts.files.push((
        POLICY.trim_start_matches('/').into(),
        rig.policy_line("good", "builder@example").into_bytes(),
        0o644,
    ));
    opts.setup = "chown -R root:root /etc/overthink && chmod 0755 /etc/overthink\n".into();
    let host = ChrootHost::start(&lower, &opts);
    let target = host.target();
    let push = |archive: &Path| {
        let out = rig
            .ov()
            .arg("push")
            .arg(archive)
            .args(["--host", &host.addr, "--port", &host.port.to_string()])
            .args([
                "--ssh-user",
                USER,
                "--no-wait-cloud-init",
                "--wait-ssh",
                "30",
            ])
            .arg("-i")
            .arg(&host.client_key)
            .arg("--known-hosts")
            .arg(target.known_hosts.as_ref().expect("known_hosts"))
            .stdin(Stdio::null())
            .output()
            .expect("ov runs");
        eprintln!("$ ov push {} -> {:?}", archive.display(), out.status.code());
        out
    };
    for (name, archive) in &bundles {
        rewrite_checksum(archive);
        let out = push(archive);
        let all = text(&out);
        if *name == "good" {
            assert_eq!(
                out.status.code(),
                Some(0),
                "{name}: {all}\n{}",
                host.log_text()
            );
            assert!(host.path(CANARY).exists(), "{name}: {all}");
            continue;
        }
        assert_eq!(out.status.code(), Some(4), "{name}: {all}");
        assert!(!host.path(CANARY).exists(), "{name}: the canary ran: {all}");
        assert!(all.contains(POLICY), "{name}: {all}");
        if *name == "other" {
            assert!(all.contains(&rig.fingerprint("other")), "{all}");
        }
    }
}

/// `ov inspect --json`'s `provenance` of a compile of the rig's project.
fn provenance(rig: &Rig, name: &str) -> serde_json::Value {
    let archive = rig.compiled(name, None);
    let out = rig
        .ov()
        .args(["inspect", "--json"])
        .arg(&archive)
        .output()
        .expect("ov");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    m["provenance"].clone()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=ov-it", "-c", "user.email=ov-it@example"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn provenance_records_the_commit_the_dirty_state_and_no_git_as_absent() {
    let rig = Rig::new();
    let p = provenance(&rig, "nogit");
    assert!(p.get("git").is_none(), "{p}");
    assert!(p.get("signer").is_none(), "{p}");
    assert!(p.get("source_date_epoch").is_none(), "{p}");
    assert_eq!(p["ov_version"], env!("CARGO_PKG_VERSION"), "{p}");

    let proj = rig.path("proj");
    git(&proj, &["init", "-q"]);
    git(&proj, &["add", "-A"]);
    git(&proj, &["commit", "-q", "-m", "layers"]);
    let head = git(&proj, &["rev-parse", "HEAD"]);
    let p = provenance(&rig, "clean");
    assert_eq!(p["git"]["commit"], head.as_str(), "{p}");
    assert_eq!(p["git"]["dirty"], false, "{p}");
    // An untracked file (a bundle written into the project) does not make it dirty...
    std::fs::write(proj.join("stray.tar.gz"), "x").expect("stray");
    assert_eq!(provenance(&rig, "stray")["git"]["dirty"], false);
    // ... a changed tracked file does.
    std::fs::write(
        proj.join("build.yml"),
        "distros:\n  debian:\n    formats:\n      deb: {}\n# edited\n",
    )
    .expect("edit");
    let p = provenance(&rig, "dirty");
    assert_eq!(p["git"]["commit"], head.as_str(), "{p}");
    assert_eq!(p["git"]["dirty"], true, "{p}");

    // SOURCE_DATE_EPOCH as given, and the signer.
    let out = rig.path("out/epoch.tar.gz");
    let r = rig
        .ov()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["compile", DEPLOY, "canary", "-q", "--sign"])
        .arg(rig.path("good"))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("ov");
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let m: serde_json::Value =
        serde_json::from_str(&read_inner(&out, "manifest.json")).expect("json");
    let p = &m["provenance"];
    assert_eq!(p["source_date_epoch"], 1_700_000_000u64, "{p}");
    assert_eq!(m["mtime"], 1_700_000_000u64);
    assert_eq!(
        p["signer"]["fingerprint"],
        rig.fingerprint("good").as_str(),
        "{p}"
    );
    assert_eq!(p["signer"]["algorithm"], "ssh-ed25519", "{p}");
    assert_eq!(p["signer"]["comment"], "builder@example", "{p}");
    assert_eq!(
        m["layers"][0]["origin"],
        serde_json::json!({"kind": "local", "path": "layers/canary"})
    );
}
