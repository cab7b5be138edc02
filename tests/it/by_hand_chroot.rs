//! An operator with only the archive, for real: bundles `ov compile` made, run by hand as root in
//! fresh offline Debian bookworm roots. Preflight: before any step, run.sh refuses (exit 8,
//! environment) a bundle compiled for another distro — naming both and the two ways out — unless
//! `--force-distro`; a machine that lacks a command the bundle's steps need (the package manager
//! of its format, `systemctl` for its services); and says nothing when the distro fits. A refused
//! run changes nothing: no ledger, no file of its layers. An archive `ov compile -o` named
//! otherwise is verified and run as its README.txt says, and the deploy record keeps its digest.

use std::path::Path;
use std::process::Output;

use crate::support::e2e::{self, text};
use crate::support::rootfs::Root;

const USER: &str = "tester";
const OUT: &str = "/var/tmp/ov/b";
const RUN: &str = "/var/tmp/ov/b/host/run.sh";
const LEDGER: &str = "/var/lib/overthink/installed";

fn root() -> Option<Root> {
    e2e::offline_root(&e2e::spec(), USER)
}

/// One layer `pre` (its packages in `section`, plus a file root writes and `extra`), compiled for
/// `distro` with `flags` and unpacked into the root.
fn compile(root: &Root, dir: &Path, distro: &str, section: &str, extra: &str, flags: &[&str]) {
    let layer = dir.join("layers/pre");
    std::fs::create_dir_all(&layer).expect("layer dir");
    std::fs::write(
        layer.join("layer.yml"),
        format!(
            "layer:\n{section}  tasks:\n    - write: /etc/ov-pre-ran\n      content: \"ran\\n\"\n{extra}"
        ),
    )
    .expect("layer.yml");
    let out = root.path(OUT);
    if out.exists() {
        std::fs::remove_dir_all(&out).expect("old bundle");
    }
    let result = e2e::ov_in(dir, dir)
        .args(["compile", "host", "pre", "--distro", distro])
        .args(flags)
        .arg("--out-dir")
        .arg(&out)
        .output()
        .expect("ov runs");
    assert_eq!(result.status.code(), Some(0), "{}", text(&result));
}

fn run(root: &Root, more: &[&str]) -> Output {
    let mut cmd = vec!["bash", RUN, "--user", USER];
    cmd.extend_from_slice(more);
    root.run(&cmd)
}

fn assert_untouched(root: &Root, out: &Output) {
    assert!(
        !root.path(LEDGER).exists(),
        "a refused run made a ledger: {}",
        text(out)
    );
    assert!(!root.path("/etc/ov-pre-ran").exists(), "{}", text(out));
}

#[test]
fn a_bundle_for_another_distro_is_refused_before_any_step() {
    let Some(root) = root() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    compile(
        &root,
        dir.path(),
        "fedora:43",
        "  rpm:\n    packages: [jq]\n",
        "",
        &[],
    );
    let out = run(&root, &[]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("compiled for fedora:43")
            && err.contains("this machine is debian 12")
            && err.contains("--distro TAG")
            && err.contains("--force-distro"),
        "{err}"
    );
    assert_untouched(&root, &out);
    // A dry run says the same.
    let out = run(&root, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));

    // Forced past the distro, it still finds no dnf: refused before any step all the same.
    let out = run(&root, &["--force-distro"]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("(--force-distro)"), "{err}");
    assert!(
        err.contains("lacks what the bundle's steps need: dnf rpm"),
        "{err}"
    );
    assert_untouched(&root, &out);
}

#[test]
fn a_machine_without_systemctl_is_refused_a_bundle_with_services() {
    let Some(root) = root() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    compile(
        &root,
        dir.path(),
        "debian:12",
        "",
        "  service:\n    - name: sshd\n      use_packaged: sshd\n      enable: true\n      scope: system\n",
        &["--with-services"],
    );
    root.sh("rm -f /usr/bin/systemctl /bin/systemctl");
    let out = run(&root, &[]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lacks what the bundle's steps need: systemctl"),
        "{err}"
    );
    assert_untouched(&root, &out);
}

#[test]
fn a_bundle_for_this_distro_passes_preflight_quietly() {
    let Some(root) = root() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    compile(&root, dir.path(), "debian:12", "", "", &[]);
    let out = run(&root, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(root.path("/etc/ov-pre-ran").exists());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("compiled for"), "{err}");
}

/// `--cleanup DIR` (what the push's bootstrap passes) removes only the directory the bundle was
/// unpacked in under root's work directory, in the run's own last `rm`: any other directory is
/// refused before anything runs (an operator's slip must not remove `/`), and so is a run that
/// does not apply.
#[test]
fn cleanup_removes_only_the_bundles_own_work_directory() {
    let Some(root) = root() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    compile(&root, dir.path(), "debian:12", "", "", &[]);
    for bad in ["/", "/var/tmp/ov/b", "/var/lib/overthink/work"] {
        let out = run(&root, &["--cleanup", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--cleanup names another directory"),
            "{}",
            text(&out)
        );
        assert_untouched(&root, &out);
        assert!(root.path("/var/tmp/ov/b/host/run.sh").exists());
        assert!(root.path("/etc/hostname").exists());
    }
    // Unpacked as `ov push` unpacks: a 0700 directory of root's under the work directory.
    let work = "/var/lib/overthink/work/by-hand";
    root.sh(&format!(
        "mkdir -p -m 0700 /var/lib/overthink /var/lib/overthink/work {work} && cp -a /var/tmp/ov/b/host {work}/"
    ));
    let runsh = format!("{work}/host/run.sh");
    let out = root.run(&["bash", &runsh, "--user", USER, "--check", "--cleanup", work]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(root.path(work).exists());
    let out = root.run(&["bash", &runsh, "--user", USER, "--cleanup", work]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(root.path("/etc/ov-pre-ran").exists(), "{}", text(&out));
    assert!(!root.path(work).exists(), "{}", text(&out));
    assert!(root.path("/var/lib/overthink/work").exists());
    assert!(root
        .path(&format!("{LEDGER}/{USER}/layers/pre.json"))
        .exists());
}

/// A task naming another account (`user: nobody`) is root's to run: its command runs as that
/// account, its file is that account's, it waits for `--allow-root-tasks` like a root task, and
/// undo removes what it made. (It failed to compile before: the plan put it in the user's script,
/// which cannot switch accounts.)
#[test]
fn a_task_of_another_named_account_runs_as_that_account() {
    let Some(root) = root() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let extra = "    - mkdir: /opt/ov-named\n      mode: \"0755\"\n      user: root\n    \
                 - cmd: \"id -un > /tmp/ov-named-cmd\"\n      user: nobody\n    \
                 - write: /opt/ov-named/file\n      content: \"x\\n\"\n      user: nobody\n";
    compile(&root, dir.path(), "debian:12", "", extra, &[]);
    let gated = std::fs::read_to_string(root.path("/var/tmp/ov/b/host/layers/01-pre/01-system.sh"))
        .expect("the layer's root script");
    assert!(
        gated.contains("--allow-root-tasks"),
        "the named account's command must wait for the gate:\n{gated}"
    );
    compile(
        &root,
        dir.path(),
        "debian:12",
        "",
        extra,
        &["--allow-root-tasks"],
    );
    let out = run(&root, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(root.sh("cat /tmp/ov-named-cmd").trim(), "nobody");
    assert_eq!(
        root.sh("stat -c '%U %a' /opt/ov-named/file").trim(),
        "nobody 644"
    );
    let out = root.run(&["bash", "/var/tmp/ov/b/host/undo.sh", "--user", USER]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!root.path("/opt/ov-named/file").exists(), "{}", text(&out));
    assert!(!root.path("/opt/ov-named").exists(), "{}", text(&out));
}

#[test]
fn an_archive_named_with_o_runs_as_its_readme_says_and_its_digest_is_recorded() {
    let Some(root) = root() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let layer = dir.path().join("layers/pre");
    std::fs::create_dir_all(&layer).expect("layer dir");
    std::fs::write(
        layer.join("layer.yml"),
        "layer:\n  tasks:\n    - write: /etc/ov-pre-ran\n      content: \"ran\\n\"\n",
    )
    .expect("layer.yml");
    let archive = dir.path().join("site-a.tar.gz");
    let out = e2e::ov_in(dir.path(), dir.path())
        .args(["compile", "host", "pre", "--distro", "debian:12", "-o"])
        .arg(&archive)
        .output()
        .expect("ov runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let sum = std::fs::read_to_string(dir.path().join("site-a.tar.gz.sha256")).expect(".sha256");
    let digest = sum.split_whitespace().next().expect("digest").to_string();
    let here = root.path("/var/tmp/site");
    std::fs::create_dir_all(&here).expect("site dir");
    std::fs::copy(&archive, here.join("site-a.tar.gz")).expect("archive");
    std::fs::copy(
        dir.path().join("site-a.tar.gz.sha256"),
        here.join("site-a.tar.gz.sha256"),
    )
    .expect(".sha256");

    // README.txt's own commands, with the archive's name for ARCHIVE.
    root.sh("cd /var/tmp/site && sha256sum -c site-a.tar.gz.sha256 && tar -xzf site-a.tar.gz");
    let readme = std::fs::read_to_string(here.join("host/README.txt")).expect("README.txt");
    assert!(readme.contains("sha256sum -c ARCHIVE.sha256"), "{readme}");
    assert!(!readme.contains("host.tar.gz.sha256"), "{readme}");
    let out = root.run(&["bash", "/var/tmp/site/host/run.sh", "--user", USER]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let deploys = root.sh(&format!("cat {LEDGER}/{USER}/deploys/*.json"));
    let record: serde_json::Value = serde_json::from_str(&deploys).expect("deploy record");
    assert_eq!(record["bundle_sha256"], digest.as_str(), "{deploys}");
}

#[test]
fn two_deploys_that_compile_a_shared_layer_differently_do_not_reapply_each_others() {
    let Some(root) = root() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let layer = dir.path().join("layers/shared");
    std::fs::create_dir_all(&layer).expect("layer dir");
    // The root `cmd:` is gated: deploy `host` compiles the layer without it, `vm:other` with it.
    std::fs::write(
        layer.join("layer.yml"),
        "layer:\n  tasks:\n    - write: /etc/ov-shared\n      content: \"shared\\n\"\n    - cmd: echo ran >>/var/lib/ov-shared-cmd\n",
    )
    .expect("layer.yml");
    std::fs::write(
        dir.path().join("deploy.yml"),
        "version: 3\nvm:\n  other:\n    source:\n      kind: cloud_image\n      base_user: debian\n      distro: \"debian:12\"\n    ssh:\n      user: tester\n      key_source: none\n",
    )
    .expect("deploy.yml");
    std::fs::write(
        dir.path().join("overthink.yml"),
        "version: 2\nincludes:\n  - deploy.yml\ndiscover:\n  layers:\n    - path: layers\n",
    )
    .expect("overthink.yml");
    let compile = |deploy: &str, flags: &[&str]| {
        let out_dir = root.path(&format!("/var/tmp/ov/{}", deploy.replace(':', "-")));
        let out = e2e::ov_in(dir.path(), dir.path())
            .args(["compile", deploy, "shared", "--distro", "debian:12"])
            .args(flags)
            .arg("--out-dir")
            .arg(&out_dir)
            .output()
            .expect("ov runs");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    };
    compile("host", &[]);
    compile("vm:other", &["--allow-root-tasks"]);
    let host = "/var/tmp/ov/host/host/run.sh";
    let other = "/var/tmp/ov/vm-other/vm-other/run.sh";
    let apply = |script: &str| {
        let out = root.run(&["bash", script, "--user", USER]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        e2e::end(&out.stdout)
    };
    assert_eq!(apply(host)["applied"], "1");
    assert_eq!(apply(other)["applied"], "1");
    // Each deploy's own digest is recorded: a re-run of either applies nothing.
    for script in [host, other, host] {
        let end = apply(script);
        assert_eq!(end["applied"], "0", "{script}: {end:?}");
        assert_eq!(end["skipped"], "1", "{script}: {end:?}");
    }
    assert_eq!(root.sh("cat /var/lib/ov-shared-cmd"), "ran\n");
}
