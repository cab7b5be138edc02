//! `ov compile --emit`: the hand-off to Ansible and cloud-init. Real Ansible (`ansible-core`, as
//! in `bench/`) runs the emitted playbook against three real hosts — each an sshd chrooted into
//! its own overlay of the cached Debian 13 root (which has Python, for Ansible's modules), in its
//! own network namespace — from a small INI inventory: the first run reports changed and applies
//! the layers (one host for another account, named by its `ov_user`), the second reports
//! nothing changed, `--check` on a fresh host reports changed and leaves its tree as it was, and
//! a run.sh that fails fails the host with run.sh's message. Snapshots of the emitted files and
//! the user-data (digest and base64 filtered), and the refusal of user-data over the limit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::output_text as text;
use crate::support::chroot_sshd::{self, ChrootHost, Options};
use crate::support::{ansible, cloudhost, e2e, rootfs};

/// The fixture project.
fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/emit")
}

/// `ov -C tests/fixtures/emit ARGS` with a test-local HOME.
fn ov(home: &Path, args: &[&str]) -> Output {
    crate::common::ov_at_home(home, &project())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ov runs")
}

/// The emitted text files of an Ansible directory (the archive only by name).
fn tree_text(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(dir)
                .expect("below")
                .to_string_lossy()
                .into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if rel.ends_with(".tar.gz") {
                out.insert(rel, "[archive]".into());
            } else {
                out.insert(rel, std::fs::read_to_string(&p).expect("text file"));
            }
        }
    }
    out
}

#[test]
fn emit_ansible_writes_a_playbook_and_role_with_the_archive_and_its_digest() {
    let home = tempfile::tempdir().expect("home");
    let out_dir = tempfile::tempdir().expect("out");
    let dir = out_dir.path().join("ansible");
    let dir_s = dir.to_string_lossy().into_owned();
    let r = ov(
        home.path(),
        &["compile", "vm:emit", "--emit", "ansible", &dir_s],
    );
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    // The archive in the role is the one `ov compile` writes, and its `.sha256` and the vars
    // name its digest.
    let arch = out_dir.path().join("b.tar.gz");
    let c = ov(
        home.path(),
        &["compile", "vm:emit", "-o", &arch.to_string_lossy()],
    );
    assert_eq!(c.status.code(), Some(0), "{}", text(&c));
    let files = dir.join("roles/ov_bundle/files");
    assert_eq!(
        std::fs::read(files.join("vm-emit.tar.gz")).expect("archive"),
        std::fs::read(&arch).expect("compiled archive")
    );
    let sum = std::fs::read_to_string(files.join("vm-emit.tar.gz.sha256")).expect("sha256");
    let digest = sum.split_whitespace().next().expect("digest").to_string();
    assert_eq!(
        sum,
        std::fs::read_to_string(out_dir.path().join("b.tar.gz.sha256"))
            .expect("sha")
            .replace("b.tar.gz", "vm-emit.tar.gz")
    );
    let files_text = tree_text(&dir);
    assert!(files_text["roles/ov_bundle/vars/main.yml"]
        .contains(&format!("ov_bundle_sha256: !unsafe \"{digest}\"")));
    // Deterministic: a second emit writes the same bytes.
    let dir2 = out_dir.path().join("again");
    let r2 = ov(
        home.path(),
        &[
            "compile",
            "vm:emit",
            "--emit",
            "ansible",
            &dir2.to_string_lossy(),
        ],
    );
    assert_eq!(r2.status.code(), Some(0), "{}", text(&r2));
    assert_eq!(tree_text(&dir2), files_text);
    let stdout = String::from_utf8_lossy(&r.stdout).replace(&dir_s, "[DIR]");
    let mut shown = format!("$ ov compile vm:emit --emit ansible [DIR]\n{stdout}");
    for (path, body) in &files_text {
        shown.push_str(&format!("\n===== {path}\n{body}"));
    }
    insta::with_settings!({filters => vec![(r"[0-9a-f]{64}", "[sha256]")]}, {
        insta::assert_snapshot!("emit-ansible", shown);
    });
}

#[test]
fn emit_cloud_init_writes_user_data_and_refuses_what_does_not_fit() {
    let home = tempfile::tempdir().expect("home");
    let out_dir = tempfile::tempdir().expect("out");
    let file = out_dir.path().join("user-data");
    let file_s = file.to_string_lossy().into_owned();
    // The default limit is AWS EC2's 16 KiB: this bundle does not fit, even gzip-compressed.
    let r = ov(
        home.path(),
        &["compile", "vm:emit", "--emit", "cloud-init", &file_s],
    );
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(!file.exists(), "nothing is written when it does not fit");
    let refusal = String::from_utf8_lossy(&r.stderr).into_owned();
    // GCP's limit takes it: the plain user-data is written, its sizes as the refusal said.
    let r = ov(
        home.path(),
        &[
            "compile",
            "vm:emit",
            "--emit",
            "cloud-init",
            &file_s,
            "--max-user-data",
            "256K",
        ],
    );
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let data = std::fs::read(&file).expect("user-data");
    let plain = data.len();
    assert!(data.starts_with(b"#cloud-config\n"));
    let gz = {
        let mut c = Command::new("gzip")
            .args(["-9", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip");
        std::io::Write::write_all(&mut c.stdin.take().expect("stdin"), &data).expect("write");
        c.wait_with_output().expect("gzip").stdout.len()
    };
    let said = |what: &str| {
        refusal
            .split(what)
            .next()
            .and_then(|s| s.split_whitespace().last())
            .and_then(|n| n.trim_start_matches('(').parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no size before `{what}` in: {refusal}"))
    };
    assert_eq!(said(" bytes ("), plain, "{refusal}");
    // ov's own gzip compresses about as well as gzip -9 (the deflate streams differ: within 5%;
    // what ov writes is compared byte for byte with what it said below).
    let said_gz = said(" gzip-compressed)");
    assert!(said_gz.abs_diff(gz) < gz / 20, "{refusal} vs {gz}");
    // Between the two sizes: only the gzip-compressed user-data fits, and that is what is written.
    let between = said_gz.to_string();
    let r = ov(
        home.path(),
        &[
            "compile",
            "vm:emit",
            "--emit",
            "cloud-init",
            &file_s,
            "--max-user-data",
            &between,
        ],
    );
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let zipped = std::fs::read(&file).expect("user-data");
    assert!(zipped.starts_with(&[0x1f, 0x8b]), "gzip-compressed");
    assert_eq!(zipped.len(), said_gz, "exactly the size the refusal said");
    let unzipped = Command::new("bash")
        .args(["-c", "gzip -dc -- \"$1\"", "gunzip"])
        .arg(&file)
        .output()
        .expect("gzip -d");
    assert_eq!(unzipped.stdout, data, "the same user-data, compressed");
    // The archive cloud-init writes is the compiled one; the digest beside it names it.
    let arch = out_dir.path().join("vm-emit.tar.gz");
    let c = ov(
        home.path(),
        &["compile", "vm:emit", "-o", &arch.to_string_lossy()],
    );
    assert_eq!(c.status.code(), Some(0), "{}", text(&c));
    let text_ud = String::from_utf8(data).expect("utf-8");
    let b64 = text_ud
        .lines()
        .find_map(|l| l.trim().strip_prefix("content: \"H4sI"))
        .map(|rest| format!("H4sI{}", rest.trim_end_matches('"')))
        .expect("the archive's base64");
    // (on stdin: the text is longer than one argument may be)
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("base64 -d");
    let mut stdin = child.stdin.take().expect("stdin");
    let feed = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(b64.as_bytes()).expect("feed base64")
    });
    let decoded = child.wait_with_output().expect("base64 -d");
    feed.join().expect("feeder");
    assert_eq!(decoded.stdout, std::fs::read(&arch).expect("archive"));
    let stdout = String::from_utf8_lossy(&r.stdout).replace(&file_s, "[FILE]");
    let shown = format!(
        "$ ov compile vm:emit --emit cloud-init [FILE]\n{}\n$ ov compile vm:emit --emit cloud-init [FILE] --max-user-data {between}\n{stdout}\n===== [FILE] (plain)\n{text_ud}",
        refusal.replace(&file_s, "[FILE]")
    );
    insta::with_settings!({filters => vec![
        (r"[0-9a-f]{64}", "[sha256]"),
        (r#"content: "H4sI[A-Za-z0-9+/=]*""#, "content: \"[base64 of the archive]\""),
        // The sizes follow the bundle's scripts; the test checks them against the files.
        (r"(is|plain|compressed|\]:|limit) \d+ bytes", "$1 [N] bytes"),
        (r"\(\d+ gzip-compressed\)", "([N] gzip-compressed)"),
        (r"\[FILE\] --max-user-data \d+", "[FILE] --max-user-data [N]"),
    ]}, {
        insta::assert_snapshot!("emit-cloud-init", shown);
    });
}

/// `--emit cloud-init FILE --bundle-url URL`, applied by the real cloud-init of the trixie test
/// host (its NoCloud seed, its four boot stages): the user-data is a few KiB of plain
/// `#cloud-config` (AWS EC2's 16 KiB takes it) with only a `runcmd`, and ov writes the archive
/// and its `.sha256` beside it, to be served at the URL — here by python3's `http.server` on the
/// host's own loopback (its network namespace). The host has neither curl nor wget, so the
/// script downloads with the python3 cloud-init runs on. A download with one byte changed is
/// refused before anything of it runs (nothing applied, no ledger, cloud-init reports the
/// failure); the archive as compiled is applied and recorded as `ov push` records it.
#[test]
fn emit_cloud_init_with_a_bundle_url_downloads_checks_and_applies_at_first_boot() {
    let Some(host) = cloudhost::CloudHost::start() else {
        return;
    };
    let home = tempfile::tempdir().expect("home");
    let out_dir = tempfile::tempdir().expect("out");
    let file = out_dir.path().join("user-data");
    let url = "http://127.0.0.1:8765/b/vm-emit.tar.gz";
    let r = ov(
        home.path(),
        &[
            "compile",
            "vm:emit",
            "--emit",
            "cloud-init",
            &file.to_string_lossy(),
            "--bundle-url",
            url,
        ],
    );
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let user_data = std::fs::read_to_string(&file).expect("plain user-data");
    assert!(user_data.starts_with("#cloud-config\n"), "{user_data}");
    assert!(user_data.len() <= 16 * 1024, "{} bytes", user_data.len());
    assert!(!user_data.contains("write_files"), "{user_data}");
    let archive = std::fs::read(out_dir.path().join("vm-emit.tar.gz")).expect("the archive");
    let sum = std::fs::read_to_string(out_dir.path().join("vm-emit.tar.gz.sha256")).expect("sha");
    assert!(user_data.contains(sum.split_whitespace().next().expect("digest")));

    // The server, in the host: its own loopback, a directory of its own.
    let served = host.path("srv/ov/b/vm-emit.tar.gz");
    std::fs::create_dir_all(served.parent().expect("dir")).expect("mkdir");
    host.sh(
        "cd /srv/ov && setsid -f python3 -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 </dev/null
for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8765) 2>/dev/null && exit 0; sleep 0.1; done; exit 1",
    );
    let log =
        || std::fs::read_to_string(host.path("var/log/cloud-init-output.log")).unwrap_or_default();

    // One byte changed, the size the same: refused before it is unpacked.
    let mut tampered = archive.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    std::fs::write(&served, &tampered).expect("serve");
    let stages = host.boot(&user_data);
    let (status, _) = host.status();
    assert!(
        log().contains("ov: the archive does not match its digest"),
        "{stages}\n{}",
        log()
    );
    assert_ne!(status["errors"], serde_json::json!([]), "{status:#}");
    assert!(host.ledger_layers().is_empty());
    assert!(!host.path("etc/ov-emit.conf").exists());
    assert_eq!(
        host.sh("ls -A /var/lib/overthink/work"),
        "",
        "nothing is left staged"
    );

    // As compiled: applied at first boot, and recorded.
    std::fs::write(&served, &archive).expect("serve");
    let stages = host.boot(&user_data);
    let (status, _) = host.status();
    assert_eq!(
        status["errors"],
        serde_json::json!([]),
        "{status:#}\n{stages}\n{}",
        log()
    );
    let log = log();
    assert!(
        log.contains("ov: applying vm-emit.tar.gz for ovtest at first boot")
            && log.contains("::ov:: end result=ok applied=2"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(host.path("etc/ov-emit.conf")).expect("the layer's file"),
        "written-by=ov\n"
    );
    assert_eq!(host.ledger_layers(), ["emit-env.json", "emit-file.json"]);
    assert_eq!(host.sh("ls -A /var/lib/overthink/work"), "");
}

#[test]
fn emit_cloud_init_needs_a_target_account_and_emit_an_engine_it_knows() {
    let home = tempfile::tempdir().expect("home");
    let out = tempfile::tempdir().expect("out");
    let r = ov(
        home.path(),
        &[
            "compile",
            "vm:emit",
            "--emit",
            "chef",
            &out.path().join("x").to_string_lossy(),
        ],
    );
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr)
            .contains("`--emit` takes `ansible DIR` or `cloud-init FILE`, not `chef`"),
        "{}",
        text(&r)
    );
    // `host` names no account.
    let r = ov(
        home.path(),
        &[
            "compile",
            "host",
            "emit-file",
            "--distro",
            "debian:13",
            "--emit",
            "cloud-init",
            &out.path().join("ud").to_string_lossy(),
        ],
    );
    assert_eq!(r.status.code(), Some(3), "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("names no target account"),
        "{}",
        text(&r)
    );
}

/// `NAME : ok=… changed=N …` of PLAY RECAP: host → (changed, failed, unreachable).
fn recap(stdout: &[u8]) -> BTreeMap<String, (u32, u32, u32)> {
    let text = String::from_utf8_lossy(stdout);
    let mut out = BTreeMap::new();
    let mut in_recap = false;
    for line in text.lines() {
        if line.starts_with("PLAY RECAP") {
            in_recap = true;
            continue;
        }
        if !in_recap || !line.contains(" : ") {
            continue;
        }
        let (host, rest) = line.split_once(" : ").expect("recap line");
        let field = |k: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(u32::MAX)
        };
        out.insert(
            host.trim().to_string(),
            (field("changed"), field("failed"), field("unreachable")),
        );
    }
    out
}

struct Play {
    dir: PathBuf,
    inventory: PathBuf,
    home: PathBuf,
    program: PathBuf,
}

impl Play {
    fn run(&self, extra: &[&str]) -> Output {
        let t0 = std::time::Instant::now();
        let out = Command::new(&self.program)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("LANG", "C.UTF-8")
            .env("ANSIBLE_CONFIG", self.home.join("ansible.cfg"))
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_PIPELINING", "True")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
            // The test hosts' sshd has no sftp subsystem; no control master outlives a run.
            .env("ANSIBLE_SSH_TRANSFER_METHOD", "piped")
            .env("ANSIBLE_SSH_ARGS", "-o ControlMaster=no")
            .env("ANSIBLE_LOCAL_TEMP", self.home.join("tmp"))
            .arg("-i")
            .arg(&self.inventory)
            .arg("playbook.yml")
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("ansible-playbook runs");
        eprintln!(
            "$ ansible-playbook {} -> {:?} in {:.1}s",
            extra.join(" "),
            out.status.code(),
            t0.elapsed().as_secs_f64()
        );
        out
    }
}

#[test]
fn ansible_applies_the_emitted_playbook_once_checks_without_changing_and_reports_failures() {
    if !rootfs::available() || !chroot_sshd::available() {
        return;
    }
    let Some(program) = ansible::program("ansible-playbook") else {
        return;
    };
    // The Debian 13 root of the cloud-init tests: sshd, sudo and Python.
    let lower = rootfs::extracted(&rootfs::tarball_for(cloudhost::SUITE, &cloudhost::spec()));
    let hosts: Vec<ChrootHost> = (1..=3)
        .map(|i| {
            let mut opts = Options::new("ovtest");
            opts.hostname = format!("emit{i}");
            if i == 2 {
                // Its inventory entry names another account with `ov_user`.
                opts.setup = "useradd --create-home --shell /bin/bash alice".into();
            }
            ChrootHost::start(&lower, &opts)
        })
        .collect();
    let work = tempfile::Builder::new()
        .prefix("ov-it-emit.")
        .tempdir()
        .expect("work");
    let home = work.path().join("home");
    std::fs::create_dir_all(home.join("tmp")).expect("home");
    std::fs::write(home.join("ansible.cfg"), "[defaults]\n").expect("ansible.cfg");
    let dir = work.path().join("ansible");
    let r = ov(
        &home,
        &[
            "compile",
            "vm:emit",
            "--emit",
            "ansible",
            &dir.to_string_lossy(),
        ],
    );
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let mut inv = String::from("[targets]\n");
    for (i, h) in hosts.iter().enumerate() {
        inv.push_str(&format!(
            "emit{} ansible_host={} ansible_user={} ansible_ssh_private_key_file={}{}\n",
            i + 1,
            h.addr,
            h.user,
            h.client_key.display(),
            if i == 1 { " ov_user=alice" } else { "" }
        ));
    }
    inv.push_str(
        "\n[targets:vars]\nansible_python_interpreter=/usr/bin/python3\n\
         ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n",
    );
    let inventory = work.path().join("hosts.ini");
    std::fs::write(&inventory, inv).expect("inventory");
    let play = Play {
        dir: dir.clone(),
        inventory,
        home: home.clone(),
        program,
    };
    let ledger = |h: &ChrootHost, user: &str, layer: &str| {
        h.path(&format!(
            "var/lib/overthink/installed/{user}/layers/{layer}.json"
        ))
    };
    let work_left = |h: &ChrootHost| {
        std::fs::read_dir(h.path("var/lib/overthink/work"))
            .map(|d| d.count())
            .unwrap_or(0)
    };

    // The fresh host of the check run, before anything.
    let fresh = &hosts[2];
    let before = e2e::snapshot(&fresh.path("/"), &skip());

    // First run on emit1 and emit2: changed, applied, recorded for the right account.
    let out = play.run(&["-l", "emit1,emit2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rc = recap(&out.stdout);
    assert_eq!(rc.get("emit1"), Some(&(1, 0, 0)), "{}", text(&out));
    assert_eq!(rc.get("emit2"), Some(&(1, 0, 0)), "{}", text(&out));
    assert!(!rc.contains_key("emit3"), "{}", text(&out));
    for (h, user) in [(&hosts[0], "ovtest"), (&hosts[1], "alice")] {
        assert_eq!(
            std::fs::read_to_string(h.path("etc/ov-emit.conf")).expect("the layer's file"),
            "written-by=ov\n"
        );
        for layer in ["emit-file", "emit-env"] {
            assert!(
                ledger(h, user, layer).is_file(),
                "{layer} recorded for {user}"
            );
        }
        // The deploy record holds the archive's digest, as after `ov push`.
        let digest =
            std::fs::read_to_string(dir.join("roles/ov_bundle/files/vm-emit.tar.gz.sha256"))
                .expect("sha256");
        let digest = digest.split_whitespace().next().expect("digest");
        let recorded = h.sh(&format!(
            "cat /var/lib/overthink/installed/{user}/deploys/*.json"
        ));
        assert!(recorded.contains(digest), "{recorded}");
        assert_eq!(work_left(h), 0, "the run's directory is removed");
    }
    assert!(!ledger(&hosts[1], "ovtest", "emit-file").exists());

    // Second run: nothing to do.
    let out = play.run(&["-l", "emit1,emit2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rc = recap(&out.stdout);
    assert_eq!(rc.get("emit1"), Some(&(0, 0, 0)), "{}", text(&out));
    assert_eq!(rc.get("emit2"), Some(&(0, 0, 0)), "{}", text(&out));

    // --check: the fresh host would change, the applied one would not; nothing is written.
    let out = play.run(&["--check", "-l", "emit1,emit3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rc = recap(&out.stdout);
    assert_eq!(rc.get("emit3"), Some(&(1, 0, 0)), "{}", text(&out));
    assert_eq!(rc.get("emit1"), Some(&(0, 0, 0)), "{}", text(&out));
    let after = e2e::snapshot(&fresh.path("/"), &skip());
    e2e::assert_unchanged(&before, &after, &[]);
    assert!(!fresh.path("etc/ov-emit.conf").exists());

    // A run.sh that fails fails the host with run.sh's own message; nothing is left staged.
    let out = play.run(&["-l", "emit3", "-e", "ov_user=nobody-here"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        recap(&out.stdout).get("emit3"),
        Some(&(0, 1, 0)),
        "{}",
        text(&out)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("run.sh exited 2: run.sh: unknown user `nobody-here`"),
        "{}",
        text(&out)
    );
    assert_eq!(work_left(fresh), 0);
    assert!(!fresh.path("etc/ov-emit.conf").exists());
}

/// What the tree comparison of the check run leaves out: what changes by itself, and Ansible's
/// own temporary directories in the login user's and root's homes.
fn skip() -> Vec<&'static str> {
    let mut s: Vec<&str> = e2e::VOLATILE.to_vec();
    s.extend(["home/ovtest/.ansible", "root/.ansible"]);
    s
}
