//! Package transactions shared by layers, run for real: bundles `ov compile` made of small
//! projects, run by hand as root in fresh offline Debian bookworm roots (the packages come from
//! apt's cache, and two tiny packages of the test's own from a local `file:` repository). The
//! batching rule keeps what a layer author can observe — a package whose maintainer script reads
//! a file an earlier layer wrote as root, or one a root `cmd:` wrote, still finds it; each layer
//! owns exactly what its own install would have installed (compared with the same layers run one
//! at a time); a transaction with a package name that does not exist fails in the layer that
//! names it; a run that stops between a transaction and a layer it served records that layer's
//! packages as the layer's; and teardown leaves the package list as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;

use crate::fidelity::{self, assert_packages, packages};
use crate::support::e2e::{self, layers_with, text};
use crate::support::rootfs::Root;

const USER: &str = "tester";
const OUT: &str = "/var/tmp/ov/b";
const RUN: &str = "/var/tmp/ov/b/host/run.sh";
const UNDO: &str = "/var/tmp/ov/b/host/undo.sh";
const LEDGER: &str = "/var/lib/overthink/installed/tester";

/// A fresh offline root (the fidelity tests' cached one: tmux, socat, gnupg, curl, direnv,
/// ripgrep and their dependencies are in apt's cache) with the target account, or `None` (skip).
fn root() -> Option<Root> {
    e2e::offline_root(&fidelity::spec(), USER)
}

/// Two packages of the test's own, `ovprobe-a` and `ovprobe-b`, in a local repository apt reads
/// (`file:`): each one's postinst copies a file (`/etc/ovprobe/seed`, `/etc/ovprobe/cmdseed`)
/// into `/var/lib/ovprobe/seen-a` / `seen-b`, or writes `missing` there when it is absent.
fn local_repository(root: &Root) {
    root.sh(
        r#"set -e
for p in a b; do
  src=/tmp/ovprobe-$p
  mkdir -p $src/DEBIAN
  file=seed; [ $p = b ] && file=cmdseed
  cat >$src/DEBIAN/control <<EOF
Package: ovprobe-$p
Version: 1.0
Architecture: all
Maintainer: ov tests <ov@example.invalid>
Description: reads /etc/ovprobe/$file when configured
EOF
  cat >$src/DEBIAN/postinst <<EOF
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
  mkdir -p /var/lib/ovprobe
  if [ -f /etc/ovprobe/$file ]; then cp /etc/ovprobe/$file /var/lib/ovprobe/seen-$p; else echo missing >/var/lib/ovprobe/seen-$p; fi
fi
EOF
  cat >$src/DEBIAN/postrm <<EOF
#!/bin/sh
set -e
if [ "\$1" = purge ]; then rm -f /var/lib/ovprobe/seen-$p; rmdir /var/lib/ovprobe 2>/dev/null || true; fi
EOF
  chmod 0755 $src/DEBIAN/postinst $src/DEBIAN/postrm
  mkdir -p /srv/ovrepo
  dpkg-deb --root-owner-group --build $src /srv/ovrepo/ovprobe-${p}_1.0_all.deb >/dev/null
  rm -rf $src
done
cd /srv/ovrepo
for deb in *.deb; do
  dpkg-deb -f "$deb"
  printf 'Filename: ./%s\nSize: %s\nSHA256: %s\n\n' "$deb" "$(stat -c %s "$deb")" "$(sha256sum "$deb" | cut -d' ' -f1)"
done >Packages
echo 'deb [trusted=yes] file:/srv/ovrepo ./' >/etc/apt/sources.list.d/ovrepo.list
apt-get update -q >/dev/null 2>&1 || true
"#,
    );
}

/// A project in `dir` with one directory per `(name, layer.yml body)`.
fn project(dir: &Path, layers: &[(&str, &str)]) {
    for (name, body) in layers {
        let d = dir.join("layers").join(name);
        std::fs::create_dir_all(&d).expect("layer dir");
        std::fs::write(d.join("layer.yml"), format!("layer:\n{body}")).expect("layer.yml");
    }
}

/// The layers of `dir` compiled for Debian 12 into the root; `ov plan`'s output for them.
fn compile(root: &Root, dir: &Path, layers: &[&str], flags: &[&str]) -> String {
    e2e::compile_host(root, dir, OUT, "debian:12", layers, flags)
}

fn run(root: &Root, script: &str, more: &[&str]) -> Output {
    let mut cmd = vec!["bash", script, "--user", USER];
    cmd.extend_from_slice(more);
    root.run(&cmd)
}

/// A layer's package facts in the ledger: file name (`packages.deb`, `packages-deps.deb`) → names.
fn facts(root: &Root, layer: &str) -> BTreeMap<String, BTreeSet<String>> {
    let dir = root.path(&format!("{LEDGER}/layers/{layer}.d"));
    let mut out = BTreeMap::new();
    for f in ["packages.deb", "packages-deps.deb"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        out.insert(
            f.to_string(),
            text.lines().map(str::to_string).collect::<BTreeSet<_>>(),
        );
    }
    out
}

fn record(root: &Root, layer: &str) -> serde_json::Value {
    let p = root.path(&format!("{LEDGER}/layers/{layer}.json"));
    serde_json::from_slice(&std::fs::read(&p).expect("layer record")).expect("json")
}

/// The `ov: deb: one transaction …` lines run.sh's output holds.
fn transactions(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("ov: deb: one transaction"))
        .map(str::to_string)
        .collect()
}

#[test]
fn what_a_root_file_or_command_of_an_earlier_layer_makes_is_there_before_a_later_install() {
    let Some(root) = root() else { return };
    local_repository(&root);
    let dir = tempfile::tempdir().expect("tmp");
    project(
        dir.path(),
        &[
            ("b-tmux", "  deb:\n    packages: [tmux]\n"),
            (
                "b-seed",
                "  tasks:\n    - write: /etc/ovprobe/seed\n      content: \"seeded by b-seed\\n\"\n",
            ),
            ("b-probe-a", "  deb:\n    packages: [ovprobe-a, direnv]\n"),
            (
                "b-cmd",
                "  tasks:\n    - cmd: mkdir -p /etc/ovprobe && echo 'seeded by b-cmd' >/etc/ovprobe/cmdseed\n",
            ),
            ("b-probe-b", "  deb:\n    packages: [ovprobe-b, ripgrep]\n"),
            (
                "b-note",
                "  tasks:\n    - write: \"${HOME}/.ovnote\"\n      content: \"a file of the user's own\\n\"\n      user: \"${USER}\"\n",
            ),
            ("b-socat", "  deb:\n    packages: [socat]\n"),
        ],
    );
    let layers = [
        "b-tmux",
        "b-seed",
        "b-probe-a",
        "b-cmd",
        "b-probe-b",
        "b-note",
        "b-socat",
    ];
    let plan = compile(&root, dir.path(), &layers, &["--allow-root-tasks"]);
    // The plan shows the one transaction the rule allows: over the user's own file, not over a
    // file or a command of root's.
    let shown: Vec<&str> = plan
        .lines()
        .filter(|l| l.trim_start().starts_with("one deb transaction"))
        .collect();
    assert_eq!(
        shown,
        ["    one deb transaction for 3 packages of 2 layers: b-probe-b, b-socat"],
        "{plan}"
    );
    let listing = String::from_utf8_lossy(&run(&root, RUN, &["--list"]).stdout).into_owned();
    assert!(
        listing.contains("one deb transaction for 3 packages of 2 layers: b-probe-b, b-socat"),
        "{listing}"
    );
    let before = packages(&root);

    let out = run(&root, RUN, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        transactions(&out),
        ["ov: deb: one transaction for the packages of 2 layers: b-probe-b b-socat"],
        "{}",
        text(&out)
    );
    assert_eq!(
        root.sh("cat /var/lib/ovprobe/seen-a /var/lib/ovprobe/seen-b"),
        "seeded by b-seed\nseeded by b-cmd\n",
        "a maintainer script must see what earlier layers wrote as root"
    );
    // Each layer of the transaction owns its own packages.
    assert_eq!(
        facts(&root, "b-socat")["packages.deb"],
        BTreeSet::from(["socat".to_string()])
    );
    assert_eq!(
        facts(&root, "b-probe-b")["packages.deb"],
        BTreeSet::from(["ovprobe-b".to_string(), "ripgrep".to_string()])
    );

    let out = run(&root, UNDO, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    root.sh("rm -f /etc/apt/sources.list.d/ovrepo.list && rm -rf /etc/ovprobe");
    assert_packages(&root, &before);
    assert!(!root.path("/var/lib/ovprobe").exists());
}

/// Four layers whose packages pull in dependencies, some of them shared.
const OWNERS: &[(&str, &str)] = &[
    ("o-tmux", "  deb:\n    packages: [tmux]\n"),
    ("o-gnupg", "  deb:\n    packages: [gnupg]\n"),
    ("o-curl", "  deb:\n    packages: [curl, ca-certificates]\n"),
    ("o-socat", "  deb:\n    packages: [socat, tmux]\n"),
];

#[test]
fn each_layer_of_a_shared_transaction_owns_what_its_own_install_would_have() {
    let Some(batched) = root() else { return };
    let Some(alone) = root() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    project(dir.path(), OWNERS);
    let names: Vec<&str> = OWNERS.iter().map(|(n, _)| *n).collect();
    let before = packages(&batched);
    assert_eq!(before, packages(&alone));

    // The reference: each layer run on its own (`--only`: no transaction is shared), in order.
    compile(&alone, dir.path(), &names, &[]);
    for name in &names {
        let out = run(&alone, RUN, &["--only", name]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(transactions(&out).is_empty(), "{}", text(&out));
    }
    compile(&batched, dir.path(), &names, &[]);
    let out = run(&batched, RUN, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(transactions(&out).len(), 1, "{}", text(&out));
    assert_eq!(packages(&batched), packages(&alone));
    for name in &names {
        let got = facts(&batched, name);
        assert!(!got["packages-deps.deb"].is_empty() || *name == "o-socat");
        assert_eq!(got, facts(&alone, name), "what {name} owns");
    }

    let out = run(&batched, UNDO, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_packages(&batched, &before);
}

#[test]
fn a_shared_transaction_with_a_name_that_does_not_exist_fails_in_the_layer_that_names_it() {
    let Some(root) = root() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    project(
        dir.path(),
        &[
            ("c-tmux", "  deb:\n    packages: [tmux]\n"),
            ("c-bad", "  deb:\n    packages: [ov-no-such-package]\n"),
            ("c-direnv", "  deb:\n    packages: [direnv]\n"),
        ],
    );
    compile(&root, dir.path(), &["c-tmux", "c-bad", "c-direnv"], &[]);
    let before = packages(&root);
    let out = run(&root, RUN, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(transactions(&out).len(), 1, "{}", text(&out));
    assert_eq!(layers_with(&out.stdout, "layer-done"), ["c-tmux"]);
    assert_eq!(layers_with(&out.stdout, "layer-fail"), ["c-bad"]);
    assert!(record(&root, "c-tmux").get("result").is_none());
    assert_eq!(
        facts(&root, "c-tmux")["packages.deb"],
        BTreeSet::from(["tmux".to_string()])
    );
    assert!(
        !root
            .path(&format!("{LEDGER}/layers/c-direnv.json"))
            .exists(),
        "the failed transaction installed nothing for c-direnv"
    );
    let out = run(&root, UNDO, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_packages(&root, &before);
}

#[test]
fn a_run_that_stops_after_a_shared_transaction_records_the_packages_of_the_layers_it_served() {
    let Some(root) = root() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    // d-note writes into the user's home (no reason to split the transaction), and fails while
    // `~/blocked` is root's.
    project(
        dir.path(),
        &[
            ("d-tmux", "  deb:\n    packages: [tmux]\n"),
            (
                "d-note",
                "  tasks:\n    - write: \"${HOME}/blocked/note\"\n      content: \"x\\n\"\n      user: \"${USER}\"\n",
            ),
            ("d-socat", "  deb:\n    packages: [socat]\n"),
        ],
    );
    compile(&root, dir.path(), &["d-tmux", "d-note", "d-socat"], &[]);
    let before = packages(&root);
    root.sh(&format!("install -d -o root -m 0755 /home/{USER}/blocked"));
    let out = run(&root, RUN, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(layers_with(&out.stdout, "layer-fail"), ["d-note"]);
    assert!(packages(&root).iter().any(|p| p.starts_with("socat ")));
    // d-socat never ran, but the transaction installed its packages: recorded as its, failed.
    assert_eq!(record(&root, "d-socat")["result"], "failed");
    assert_eq!(
        facts(&root, "d-socat")["packages.deb"],
        BTreeSet::from(["socat".to_string()])
    );

    // Fixed, the next run resumes both and d-socat keeps what is its.
    root.sh(&format!("chown {USER}: /home/{USER}/blocked"));
    let out = run(&root, RUN, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        layers_with(&out.stdout, "layer-done"),
        ["d-note", "d-socat"]
    );
    assert!(record(&root, "d-socat").get("result").is_none());
    assert_eq!(
        facts(&root, "d-socat")["packages.deb"],
        BTreeSet::from(["socat".to_string()])
    );
    let out = run(&root, UNDO, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_packages(&root, &before);
}

/// Check mode looks further than "installed or not": a package that is installed but that the
/// package lists offer in a newer version (`apt-get install` would upgrade it) is a change; an
/// apt repository's sources file is compared line for line and its key by its presence. The
/// canary: before, the installed package was `ok` and the repository `would run`.
#[test]
fn check_mode_sees_an_upgrade_and_compares_a_repository() {
    let Some(root) = root() else { return };
    local_repository(&root);
    let dir = tempfile::tempdir().expect("tmp");
    project(
        dir.path(),
        &[
            ("c-probe", "  deb:\n    packages: [ovprobe-a]\n"),
            (
                "c-repo",
                "  deb:\n    repos:\n      - name: ovextra\n        url: \"https://apt.example.invalid/debian\"\n        suite: bookworm\n        components: main\n        key: \"https://apt.example.invalid/key.asc\"\n    packages: [ovprobe-b]\n",
            ),
        ],
    );
    compile(
        &root,
        dir.path(),
        &["c-probe", "c-repo"],
        &["--allow-repo-changes"],
    );
    let check = |what: &str| e2e::check_output(what, &run(&root, RUN, &["--check"]));
    let line = e2e::check_line;

    // The package at 1.0, installed the way a run would; the repository not set up.
    root.sh("apt-get install -y -q ovprobe-a >/dev/null");
    let (code, stdout) = check("installed, nothing newer");
    assert_eq!(code, Some(10), "the repository is not set up: {stdout}");
    assert!(
        line(&stdout, "deb packages ovprobe-a").starts_with("ok"),
        "{stdout}"
    );
    assert_eq!(
        line(&stdout, "key of repository ovextra"),
        "change  key of repository ovextra (would download it to /etc/apt/keyrings/ovextra.gpg)"
    );
    assert!(
        line(&stdout, "/etc/apt/sources.list.d/ovextra.list").starts_with("change"),
        "{stdout}"
    );

    // A 1.1 in the package lists: a run's `apt-get install ovprobe-a` would upgrade it.
    root.sh(
        r#"set -e
src=/tmp/ovprobe-a11; mkdir -p $src/DEBIAN
printf 'Package: ovprobe-a\nVersion: 1.1\nArchitecture: all\nMaintainer: ov tests <ov@example.invalid>\nDescription: newer\n' >$src/DEBIAN/control
dpkg-deb --root-owner-group --build $src /srv/ovrepo/ovprobe-a_1.1_all.deb >/dev/null
cd /srv/ovrepo
for deb in *.deb; do
  dpkg-deb -f "$deb"
  printf 'Filename: ./%s\nSize: %s\nSHA256: %s\n\n' "$deb" "$(stat -c %s "$deb")" "$(sha256sum "$deb" | cut -d' ' -f1)"
done >Packages
apt-get update -q >/dev/null 2>&1 || true"#,
    );
    let (_, stdout) = check("a newer version offered");
    assert_eq!(
        line(&stdout, "deb packages ovprobe-a"),
        "change  deb packages ovprobe-a (would upgrade ovprobe-a (1.0 -> 1.1))"
    );

    // The repository as a run writes it (the key is downloaded at run time: here, any key): ok.
    root.sh(
        "mkdir -p /etc/apt/keyrings && echo key >/etc/apt/keyrings/ovextra.gpg && \
         printf '%s\\n' '# managed by ov (layer c-repo)' \
         'deb [signed-by=/etc/apt/keyrings/ovextra.gpg] https://apt.example.invalid/debian bookworm main' \
         >/etc/apt/sources.list.d/ovextra.list && chmod 0644 /etc/apt/sources.list.d/ovextra.list",
    );
    let (_, stdout) = check("the repository in place");
    assert!(
        line(&stdout, "key of repository ovextra").starts_with("ok"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "/etc/apt/sources.list.d/ovextra.list").starts_with("ok"),
        "{stdout}"
    );
    // Another suite in the file: a change again.
    root.sh("sed -i 's/ bookworm / trixie /' /etc/apt/sources.list.d/ovextra.list");
    let (_, stdout) = check("the repository edited");
    assert!(
        line(&stdout, "/etc/apt/sources.list.d/ovextra.list").starts_with("change"),
        "{stdout}"
    );
    // Nothing the checks looked at was changed by them.
    assert_eq!(
        root.sh("dpkg-query -W -f='${Version}' ovprobe-a"),
        "1.0",
        "a check upgrades nothing"
    );
}
