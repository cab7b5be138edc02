//! Real runs, in a fresh Debian bookworm root with `openssh-server` installed and no systemd
//! running (a chroot), of a bundle the `ov` binary compiled from a layer that enables a packaged
//! unit by an alias name, as the corpus `sshd` layer does: `use_packaged: sshd`, where Debian's
//! unit is `ssh.service` with `Alias=sshd.service`. With `--with-services` the bundle enables the
//! real unit offline, records it, and teardown gives the root back as it was — `ssh` enabled or
//! not, as before; a masked unit is a clear error.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::e2e::{self, layers_with, text, USER};
use crate::support::rootfs::{self, Root};

const BUNDLE_DIR: &str = "/var/tmp/ov/b";
const RUN: &str = "/var/tmp/ov/b/host/run.sh";
const LEDGER: &str = "/var/lib/overthink/installed/tester";
const LAYER: &str = "svc-sshd";

/// The one-layer project: the corpus `sshd` layer's packaged service entry, nothing else.
fn project(dir: &Path) {
    std::fs::create_dir_all(dir.join("layers").join(LAYER)).expect("layer dir");
    std::fs::write(
        dir.join("overthink.yml"),
        "version: 2\ndiscover:\n  layers:\n    - path: layers\ndistros:\n  debian:\n    formats:\n      deb: {}\n",
    )
    .expect("overthink.yml");
    std::fs::write(
        dir.join("layers").join(LAYER).join("layer.yml"),
        format!(
            "layer:\n  name: {LAYER}\n  service:\n    - name: sshd\n      use_packaged: sshd\n      enable: true\n      scope: system\n"
        ),
    )
    .expect("layer.yml");
}

/// A fresh root with user `tester` and the bundle unpacked where a push leaves it; `None` when
/// the tools are missing (skip).
fn setup() -> Option<Root> {
    if !rootfs::available() {
        return None;
    }
    // systemctl and Debian's ssh unit (minbase has neither).
    let spec = rootfs::Spec {
        include: vec!["systemd", "openssh-server"],
        prefetch: Vec::new(),
    };
    let root = Root::new(&rootfs::tarball(&spec));
    root.sh(&format!(
        "useradd -m -s /bin/bash {USER} && rm -f /etc/resolv.conf"
    ));
    let t = tempfile::tempdir().expect("tmp");
    let proj = t.path().join("proj");
    project(&proj);
    let archive = t.path().join("host.tar.gz");
    let out = Command::new(env!("CARGO_BIN_EXE_ov"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", t.path())
        .env("XDG_CONFIG_HOME", t.path().join(".config"))
        .env("XDG_DATA_HOME", t.path().join(".local/share"))
        .env("XDG_CACHE_HOME", t.path().join(".cache"))
        .arg("-C")
        .arg(&proj)
        .args(["compile", "host", "--distro", "debian:12", LAYER])
        .args(["--with-services", "-o"])
        .arg(&archive)
        .output()
        .expect("ov runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let dir = root.path(BUNDLE_DIR);
    std::fs::create_dir_all(&dir).expect("bundle dir");
    std::fs::copy(&archive, dir.join("host.tar.gz")).expect("copy archive");
    root.sh(&format!("cd {BUNDLE_DIR} && tar -xzf host.tar.gz"));
    Some(root)
}

fn run(root: &Root) -> Output {
    root.run(&["bash", RUN, "--user", USER])
}

fn undo(root: &Root) -> Output {
    root.run(&["bash", &format!("{LEDGER}/undo.sh"), "--user", USER])
}

/// `systemctl is-enabled UNIT` in the root (offline: systemctl reads the unit files).
fn is_enabled(root: &Root, unit: &str) -> String {
    let out = root.run(&["systemctl", "is-enabled", unit]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The unit links under /etc/systemd/system (what enabling changes), and the whole root.
fn links(root: &Root) -> String {
    root.sh("find /etc/systemd/system -name 'ssh*' -printf '%p -> %l\\n' | sort")
}

fn snapshot(root: &Root) -> BTreeMap<String, String> {
    e2e::snapshot(&root.path("/"), e2e::VOLATILE)
}

fn assert_same(root: &Root, before: &BTreeMap<String, String>) {
    e2e::assert_unchanged(before, &snapshot(root), e2e::LEDGER_LEFT);
}

#[test]
fn alias_of_an_enabled_unit_applies_and_undo_leaves_it_enabled() {
    let Some(root) = setup() else { return };
    // Debian enables ssh on install: the alias link exists, and it answers `alias`.
    assert_eq!(is_enabled(&root, "ssh.service"), "enabled");
    assert_eq!(is_enabled(&root, "sshd.service"), "alias");
    let (before, before_links) = (snapshot(&root), links(&root));

    let out = run(&root);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(layers_with(&out.stdout, "layer-done"), [LAYER]);
    assert_eq!(is_enabled(&root, "ssh.service"), "enabled");
    // It was enabled before: recorded as such, not as enabled by the layer.
    let facts = format!("{LEDGER}/layers/{LAYER}.d");
    assert_eq!(
        root.sh(&format!("cat {facts}/services.prior-enabled")),
        "system ssh.service\n"
    );
    assert!(!root.path(&format!("{facts}/services.enabled")).exists());

    let out = undo(&root);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(is_enabled(&root, "ssh.service"), "enabled");
    assert_eq!(links(&root), before_links);
    assert_same(&root, &before);
}

#[test]
fn alias_of_a_disabled_unit_enables_the_real_unit_and_undo_disables_it() {
    let Some(root) = setup() else { return };
    root.sh("systemctl disable ssh.service");
    assert_eq!(is_enabled(&root, "ssh.service"), "disabled");
    assert!(!root.path("/etc/systemd/system/sshd.service").exists());
    let before = snapshot(&root);

    let out = run(&root);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(is_enabled(&root, "ssh.service"), "enabled");
    assert_eq!(is_enabled(&root, "sshd.service"), "alias");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is installed and enabled, not started"),
        "{}",
        text(&out)
    );
    // The unit really enabled is recorded, with the name the layer used.
    let facts = format!("{LEDGER}/layers/{LAYER}.d");
    assert_eq!(
        root.sh(&format!("cat {facts}/services.enabled")),
        "system ssh.service\n"
    );
    assert_eq!(
        root.sh(&format!("cat {facts}/services.resolved")),
        "system sshd.service ssh.service\n"
    );

    let out = undo(&root);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(is_enabled(&root, "ssh.service"), "disabled");
    assert_same(&root, &before);
}

#[test]
fn a_masked_unit_is_a_clear_error() {
    let Some(root) = setup() else { return };
    root.sh("systemctl disable ssh.service && systemctl mask ssh.service");
    let out = run(&root);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("ssh.service is masked") && all.contains("systemctl unmask ssh.service"),
        "{all}"
    );
    assert_eq!(is_enabled(&root, "ssh.service"), "masked");
}
