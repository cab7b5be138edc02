//! Nothing lost, on a real Debian: real corpus layers (the compatibility suite, used in place),
//! compiled by `ov compile host --distro debian:12` and run by hand as root in fresh bookworm
//! roots that hold files of their own at the paths those layers write. Apply, re-run (a no-op),
//! teardown: the package list, the file tree (type, mode, owner) and the content of every file are
//! then what they were before — the planted files included. A layer that fails after installing
//! packages is recorded with what it did: resumed after the fix, or undone as it is, it tears
//! down to the packages before. A download on a system without curl installs it first, as the
//! layer's, and its undo removes it.
//!
//! Invariant: the roots are offline (no resolver); every package the layers install was put into
//! apt's cache when the root was built, so the runs need no network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;

use crate::cli_common;
use crate::support::e2e::{self, end, layers_with, text};
use crate::support::rootfs::{self, Root, Spec};

const USER: &str = "tester";
const BUNDLE_DIR: &str = "/var/tmp/ov/b";
const RUN: &str = "/var/tmp/ov/b/host/run.sh";
const UNDO: &str = "/var/tmp/ov/b/host/undo.sh";

/// The layers that apply here, in the order requested (their dependencies come with them).
const LAYERS: &[&str] = &[
    "socat",
    "xorg-headless",
    "tmux",
    "direnv",
    "gnupg",
    "ripgrep",
    "ssh-client",
    "cloud-init",
];

/// A Debian cloud image's userland, as far as these layers care: systemd (units are enabled
/// offline), sshd and sudo installed; cloud-init (installed by the test that needs it: debootstrap
/// cannot configure it in its base stage) and the layers' packages in apt's cache.
pub(crate) fn spec() -> Spec {
    Spec {
        include: vec!["systemd", "sudo", "openssh-server"],
        prefetch: vec![
            "cloud-init",
            "curl",
            "ca-certificates",
            "socat",
            "iproute2",
            "supervisor",
            "dbus",
            "tmux",
            "direnv",
            "gnupg",
            "ripgrep",
        ],
    }
}

/// Beyond the ledger's own directory (`e2e::LEDGER_LEFT`), what a teardown leaves by design: what
/// a raw `cmd:` wrote (sshd's sudoers file: ov cannot know it). Accounts that packages' maintainer
/// scripts created (`messagebus` for dbus) stay in the account files: Debian's purge never
/// removes a system account.
const CMD_LEFT: &str = "etc/sudoers.d/ov-user";
const ACCOUNT_FILES: &[&str] = &[
    "etc/passwd",
    "etc/passwd-",
    "etc/group",
    "etc/group-",
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "etc/subuid",
    "etc/subgid",
];

/// A fresh offline root with the account (uid 1000, as the corpus's sshd layer expects), or
/// `None` when the tools or the corpus are missing (skip).
fn root() -> Option<Root> {
    let corpus = cli_common::corpus()?;
    if !rootfs::available() || !corpus.is_dir() {
        return None;
    }
    let root = Root::new(&rootfs::tarball(&spec()));
    root.sh(&format!(
        "useradd -m -u 1000 -s /bin/bash {USER} && rm -f /etc/resolv.conf"
    ));
    std::fs::write(root.path(e2e::OFFLINE_APT.0), e2e::OFFLINE_APT.1).expect("apt conf");
    Some(root)
}

/// `ov compile host --distro debian:12 LAYER…` of the corpus, verified and unpacked in the root
/// as an operator would (sha256sum -c, tar).
fn install_bundle(root: &Root, layers: &[&str], flags: &[&str]) {
    let corpus = cli_common::corpus().expect("corpus");
    let home = tempfile::tempdir().expect("tmp");
    let archive = home.path().join("host.tar.gz");
    let out = e2e::ov_in(home.path(), &corpus)
        .args(["compile", "host", "--distro", "debian:12"])
        .args(layers)
        .args(flags)
        .arg("-o")
        .arg(&archive)
        .output()
        .expect("ov runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let dir = root.path(BUNDLE_DIR);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("old bundle");
    }
    std::fs::create_dir_all(&dir).expect("bundle dir");
    std::fs::copy(&archive, dir.join("host.tar.gz")).expect("copy archive");
    std::fs::copy(
        home.path().join("host.tar.gz.sha256"),
        dir.join("host.tar.gz.sha256"),
    )
    .expect("copy .sha256");
    root.sh(&format!(
        "cd {BUNDLE_DIR} && sha256sum -c host.tar.gz.sha256 >/dev/null && tar -xzf host.tar.gz"
    ));
}

fn run(root: &Root, script: &str) -> Output {
    root.run(&["bash", script, "--user", USER])
}

/// The installed packages with their versions (`dpkg-query`, state `ii`).
pub(crate) fn packages(root: &Root) -> BTreeSet<String> {
    root.sh("dpkg-query -W -f='${db:Status-Abbrev} ${binary:Package} ${Version}\\n'")
        .lines()
        .filter(|l| l.starts_with("ii "))
        .map(|l| l[3..].trim().to_string())
        .collect()
}

fn tree(root: &Root) -> BTreeMap<String, String> {
    let mut skip: Vec<&str> = e2e::VOLATILE.to_vec();
    skip.extend_from_slice(ACCOUNT_FILES);
    e2e::snapshot(&root.path("/"), &skip)
}

/// Files of the site's own at paths the layers write, each with its own mode and owner.
fn plant(root: &Root, files: &[(&str, &str, &str, &str)]) {
    for (path, content, mode, owner) in files {
        let p = root.path(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("parent dir");
        std::fs::write(&p, content).expect("plant");
        root.sh(&format!("chmod {mode} {path} && chown {owner} {path}"));
    }
}

fn assert_same(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    let mut left = e2e::LEDGER_LEFT.to_vec();
    left.push(CMD_LEFT);
    e2e::assert_unchanged(before, after, &left);
}

pub(crate) fn assert_packages(root: &Root, before: &BTreeSet<String>) {
    let now = packages(root);
    let added: Vec<_> = now.difference(before).collect();
    let gone: Vec<_> = before.difference(&now).collect();
    assert!(
        added.is_empty() && gone.is_empty(),
        "packages left: {added:?}; packages lost: {gone:?}"
    );
}

#[test]
fn corpus_layers_apply_rerun_and_tear_down_to_the_root_as_it_was() {
    let Some(root) = root() else { return };
    let planted = [
        (
            "/usr/local/bin/relay-wrapper",
            "#!/bin/sh\necho the site's own relay\n",
            "0750",
            "root:staff",
        ),
        (
            "/etc/X11/xorg.conf",
            "# the site's own xorg.conf\n",
            "0640",
            "root:root",
        ),
        (
            "/usr/local/bin/sshd-wrapper",
            "#!/bin/sh\nexec /usr/sbin/sshd -D\n",
            "0700",
            "root:root",
        ),
    ];
    plant(&root, &planted);
    root.sh("apt-get install -y -q --no-install-recommends cloud-init >/dev/null");
    install_bundle(&root, LAYERS, &["--with-services", "--allow-root-tasks"]);
    let pkgs_before = packages(&root);
    let before = tree(&root);

    let out = run(&root, RUN);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let applied = layers_with(&out.stdout, "layer-done");
    for l in LAYERS {
        assert!(applied.iter().any(|a| a == l), "{l} applied: {applied:?}");
    }
    // The layers' own files replaced the planted ones, which were saved.
    let corpus = cli_common::corpus().expect("corpus");
    assert_eq!(
        std::fs::read(root.path("/usr/local/bin/relay-wrapper")).expect("relay-wrapper"),
        std::fs::read(corpus.join("layers/socat/relay-wrapper")).expect("corpus file")
    );
    // (Said in the run's log on the target, with the rest of the steps' output.)
    let log = root.sh("cat /var/lib/overthink/installed/tester/logs/*.log");
    assert!(log.contains("saved /etc/X11/xorg.conf"), "{log}");
    for p in ["socat", "tmux", "ripgrep", "supervisor", "dbus"] {
        assert!(
            packages(&root)
                .iter()
                .any(|l| l.starts_with(&format!("{p} "))),
            "{p} installed"
        );
    }
    assert_eq!(
        root.sh("systemctl is-enabled ssh.service").trim(),
        "enabled",
        "the sshd layer's packaged unit (an alias on Debian) is enabled"
    );

    // A re-run applies nothing and changes nothing (but the ledger's deploy record, and its view
    // in the home: the time of the last run).
    let applied_tree = tree(&root);
    let out = run(&root, RUN);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        end(&out.stdout).get("applied").map(String::as_str),
        Some("0")
    );
    let d = e2e::diff(&applied_tree, &tree(&root), &[]);
    let d: Vec<_> = d
        .into_iter()
        .filter(|l| {
            !l.contains(" var/lib/overthink/")
                && !l.contains(" home/tester/.config/overthink/installed/")
        })
        .collect();
    assert!(d.is_empty(), "a re-run changed the root:\n{}", d.join("\n"));

    // The layers' own checks of what was installed (scope `build`; `deploy` checks want the
    // machine running, its services listening, which a chroot is not): each passes, or is
    // skipped with its reason (container-only checks).
    let out = root.run(&["bash", RUN, "--test", "--scope", "build", "--user", USER]);
    let checks = e2e::checks(&out.stdout);
    let failed: Vec<_> = checks
        .iter()
        .filter(|(_, (r, _))| r != "pass" && r != "skip")
        .collect();
    assert!(
        failed.is_empty(),
        "checks failed: {failed:?}\n{}",
        text(&out)
    );
    assert!(
        checks.values().any(|(r, _)| r == "pass")
            && checks.values().all(|(r, m)| r != "skip" || !m.is_empty()),
        "{}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    eprintln!("own checks: {checks:?}");

    // Teardown gives the root back: packages, tree, the planted files byte for byte.
    let out = run(&root, UNDO);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_packages(&root, &pkgs_before);
    assert_same(&before, &tree(&root));
    assert_eq!(
        std::fs::read_to_string(root.path("/etc/X11/xorg.conf")).expect("xorg.conf"),
        "# the site's own xorg.conf\n"
    );
}

/// socat's layer installs socat and iproute2, then fails at its file step (/usr/local/bin is a
/// dangling link); the packages are recorded all the same.
/// Returns the packages and the tree before the break.
fn fail_socat(root: &Root) -> (BTreeSet<String>, BTreeMap<String, String>) {
    install_bundle(root, &["socat"], &[]);
    let pkgs_before = packages(root);
    let before = tree(root);
    root.sh("mv /usr/local/bin /usr/local/bin.real && ln -s /nonexistent /usr/local/bin");
    let out = run(root, RUN);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(layers_with(&out.stdout, "layer-fail"), ["socat"]);
    assert!(packages(root).iter().any(|l| l.starts_with("socat ")));
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path("/var/lib/overthink/installed/tester/layers/socat.json"))
            .expect("the failed layer's record"),
    )
    .expect("json");
    assert_eq!(rec["result"], "failed");
    (pkgs_before, before)
}

const UNBREAK: &str = "rm /usr/local/bin && mv /usr/local/bin.real /usr/local/bin";

#[test]
fn a_layer_that_failed_after_installing_packages_resumes_and_tears_down_exactly() {
    let Some(root) = root() else { return };
    let (pkgs_before, before) = fail_socat(&root);
    // Fix the cause; the next run applies the layer, and teardown removes what both runs did.
    root.sh(UNBREAK);
    let out = run(&root, RUN);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(layers_with(&out.stdout, "layer-done"), ["socat"]);
    let out = run(&root, UNDO);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("none was installed by this layer"),
        "{}",
        text(&out)
    );
    assert_packages(&root, &pkgs_before);
    assert_same(&before, &tree(&root));
}

#[test]
fn undo_after_a_failed_run_reverses_the_failed_layers_partial_work() {
    let Some(root) = root() else { return };
    let (pkgs_before, before) = fail_socat(&root);
    let out = run(&root, UNDO);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        std::fs::read_link(root.path("/usr/local/bin")).expect("still the broken link"),
        Path::new("/nonexistent"),
        "undo leaves what the layer did not make"
    );
    root.sh(UNBREAK);
    assert_packages(&root, &pkgs_before);
    assert_same(&before, &tree(&root));
}

#[test]
fn a_link_over_a_working_program_is_undone_even_when_its_layer_failed() {
    let Some(root) = root() else { return };
    // nodejs24 links /usr/local/bin/node to Debian's node-24 (absent here), then fails: its npm
    // builder finds no npm. The site's own `node` must come back.
    plant(
        &root,
        &[(
            "/usr/local/bin/node",
            "#!/bin/sh\necho the site node\n",
            "0755",
            "root:root",
        )],
    );
    install_bundle(&root, &["nodejs24"], &[]);
    let pkgs_before = packages(&root);
    let before = tree(&root);
    let out = run(&root, RUN);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(
        std::fs::read_link(root.path("/usr/local/bin/node")).expect("node is a link now"),
        Path::new("/usr/bin/node-24")
    );
    let out = run(&root, UNDO);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restored /usr/local/bin/node"),
        "{}",
        text(&out)
    );
    assert_eq!(
        root.sh("/usr/local/bin/node"),
        "the site node\n",
        "the site's node runs again"
    );
    assert_packages(&root, &pkgs_before);
    assert_same(&before, &tree(&root));
}

#[test]
fn a_download_on_a_system_without_curl_installs_it_first_and_undo_removes_it() {
    let Some(root) = root() else { return };
    // pixi downloads its release from GitHub; the root has no curl (and, offline, no GitHub):
    // curl and the CA certificates come from the package manager first, as the layer's, then
    // the download fails and so does the layer.
    assert!(!root.path("/usr/bin/curl").exists());
    install_bundle(&root, &["pixi"], &[]);
    let pkgs_before = packages(&root);
    let before = tree(&root);
    let out = run(&root, RUN);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("curl is not installed: installing curl"),
        "{}",
        text(&out)
    );
    assert!(root.path("/usr/bin/curl").exists(), "{}", text(&out));
    let out = run(&root, UNDO);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!root.path("/usr/bin/curl").exists(), "{}", text(&out));
    assert_packages(&root, &pkgs_before);
    assert_same(&before, &tree(&root));
}
