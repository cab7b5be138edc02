//! Package transactions shared by layers, for dnf (rpm) and pacman (pac), run for real: bundles
//! `ov compile` made for Fedora and for Arch, run by hand as root (`--force-distro`) in fresh
//! offline Debian bookworm roots that hold Debian's own dnf, rpm, pacman and their repository
//! tools. The packages are the test's own tiny ones, built in the root (rpmbuild; a `.PKGINFO`
//! and bsdtar) into local `file:` repositories (createrepo_c; repo-add). What is checked: the
//! packages of consecutive layers come in one transaction; each layer owns exactly what its own
//! install would have recorded (compared with the same layers run one at a time), including a
//! name an earlier layer's package already pulled in as a dependency, which stays a dependency;
//! a pacman group is recorded as a layer's own install records it; a name that does not exist
//! fails in its own layer after the earlier layer installed its own; a run that stops between
//! a transaction and a layer it served records that layer's packages as its; and teardown
//! leaves the package database as it was.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use crate::support::e2e::{self, layers_with, text};
use crate::support::rootfs::{Root, Spec};

const USER: &str = "tester";
const OUT: &str = "/var/tmp/ov/b";
const RUN: &str = "/var/tmp/ov/b/host/run.sh";
const UNDO: &str = "/var/tmp/ov/b/host/undo.sh";
const LEDGER: &str = "/var/lib/overthink/installed/tester";

/// A bookworm root with Debian's dnf and pacman and the tools to make repositories for them
/// (repo-add needs makepkg's shell libraries; makepkg itself is not run).
fn spec() -> Spec {
    Spec {
        include: vec![
            "dnf",
            "rpm",
            "createrepo-c",
            "pacman-package-manager",
            "makepkg",
            "libarchive-tools",
        ],
        prefetch: vec![],
    }
}

/// The two package managers under test.
#[derive(Clone, Copy, Debug)]
enum Pm {
    Dnf,
    Pacman,
}

impl Pm {
    fn format(self) -> &'static str {
        match self {
            Pm::Dnf => "rpm",
            Pm::Pacman => "pac",
        }
    }

    fn distro(self) -> &'static str {
        match self {
            Pm::Dnf => "fedora:43",
            Pm::Pacman => "archlinux",
        }
    }

    /// The test's package `base` of this format: `ovr-a` or `ovp-a`.
    fn pkg(self, base: &str) -> String {
        match self {
            Pm::Dnf => format!("ovr-{base}"),
            Pm::Pacman => format!("ovp-{base}"),
        }
    }

    /// The installed packages' names.
    fn installed(self, root: &Root) -> BTreeSet<String> {
        let cmd = match self {
            Pm::Dnf => "rpm -qa --qf '%{NAME}\\n'",
            Pm::Pacman => "pacman -Qq || true",
        };
        root.sh(cmd).lines().map(str::to_string).collect()
    }

    /// The installed packages the package manager counts as asked for (not dependencies): what
    /// its own removal of another package leaves behind.
    fn explicit(self, root: &Root) -> BTreeSet<String> {
        let cmd = match self {
            Pm::Dnf => "dnf -q repoquery --userinstalled --qf '%{name}'",
            Pm::Pacman => "pacman -Qqe || true",
        };
        root.sh(cmd).lines().map(str::to_string).collect()
    }
}

/// `mk NAME [REQUIRES]`: builds the test's rpm NAME (version `$V`, default 1.0) into /srv/ovrpm.
const RPM_MK: &str = r#"mk() {
  mkdir -p /tmp/rpmb/SPECS
  cat >/tmp/rpmb/SPECS/$1.spec <<SPEC
Name: $1
Version: ${V:-1.0}
Release: 1
Summary: ov test package $1
License: MIT
BuildArch: noarch
AutoReqProv: no
${2:+Requires: $2}
%description
ov test package $1.
%install
mkdir -p %{buildroot}/usr/share/ovtest
echo $1 >%{buildroot}/usr/share/ovtest/$1
%files
/usr/share/ovtest/$1
SPEC
  rpmbuild --quiet --define '_topdir /tmp/rpmb' --define '_rpmdir /srv/ovrpm' -bb /tmp/rpmb/SPECS/$1.spec 2>/dev/null
}
"#;

/// `mk NAME [DEPENDS [GROUP]]`: builds the test's pacman package NAME (version `$V`, default
/// 1.0) into /srv/ovpac.
const PAC_MK: &str = r#"mk() {
  d=/tmp/pacb/$1
  mkdir -p $d/usr/share/ovtest /srv/ovpac
  echo $1 >$d/usr/share/ovtest/$1
  {
    echo "pkgname = $1"
    echo "pkgbase = $1"
    echo "pkgver = ${V:-1.0}-1"
    echo "pkgdesc = ov test package $1"
    echo "builddate = 1700000000"
    echo "packager = ov tests <ov@example.invalid>"
    echo "size = 4"
    echo "arch = any"
    echo "license = MIT"
    if [ -n "$2" ]; then echo "depend = $2"; fi
    if [ -n "${3:-}" ]; then echo "group = $3"; fi
  } >$d/.PKGINFO
  (cd $d && bsdtar -czf /srv/ovpac/$1-${V:-1.0}-1-any.pkg.tar.gz .PKGINFO usr)
}
"#;

/// A fresh offline root with the package repository of `pm`: packages `a` (which needs `lib`),
/// `lib`, `b` and `c`, each installing one file under /usr/share/ovtest (pacman's `c` is in the
/// group `ovp-group`). The repository and
/// what the package manager needs to run in a Debian root that is not a mount point are machine
/// configuration, written here, never by the layers. `None` when the tools are missing (skip).
fn root(pm: Pm) -> Option<Root> {
    let root = e2e::offline_root(&spec(), USER)?;
    match pm {
        Pm::Dnf => root.sh(&[
            "set -e\n",
            RPM_MK,
            r#"mk ovr-lib ""
mk ovr-a ovr-lib
mk ovr-b ""
mk ovr-c ""
rm -rf /tmp/rpmb
createrepo_c -q /srv/ovrpm
mkdir -p /etc/yum.repos.d
printf '[ovtest]\nname=ov test\nbaseurl=file:///srv/ovrpm\ngpgcheck=0\n' >/etc/yum.repos.d/ovtest.repo
"#,
        ]
        .concat()),
        Pm::Pacman => root.sh(&[
            "set -e\n",
            PAC_MK,
            r#"mk ovp-lib ""
mk ovp-a ovp-lib
mk ovp-b ""
mk ovp-c "" ovp-group
rm -rf /tmp/pacb
cd /srv/ovpac && repo-add -q ovtest.db.tar.gz ./*.pkg.tar.gz
mkdir -p /var/lib/pacman
# pacman finds the mount point of its root and cache through /etc/mtab to check free space;
# this root is a directory of the host's, not a mount point.
ln -sf ../proc/self/mounts /etc/mtab
sed -i 's/^CheckSpace/#CheckSpace/' /etc/pacman.conf
printf '\n[ovtest]\nSigLevel = Never\nServer = file:///srv/ovpac\n' >>/etc/pacman.conf
"#,
        ]
        .concat()),
    };
    Some(root)
}

/// A project in `dir` with one directory per `(name, layer.yml body)`.
fn project(dir: &Path, layers: &[(String, String)]) {
    for (name, body) in layers {
        let d = dir.join("layers").join(name);
        std::fs::create_dir_all(&d).expect("layer dir");
        std::fs::write(d.join("layer.yml"), format!("layer:\n{body}")).expect("layer.yml");
    }
}

/// A layer named `name` that installs `packages` of `pm`'s format.
fn layer(pm: Pm, name: &str, packages: &[String]) -> (String, String) {
    (
        name.to_string(),
        format!(
            "  {}:\n    packages: [{}]\n",
            pm.format(),
            packages.join(", ")
        ),
    )
}

/// The layers of `dir` compiled for `pm`'s distro into the root; `ov plan`'s output for them.
fn compile(root: &Root, dir: &Path, pm: Pm, layers: &[&str]) -> String {
    e2e::compile_host(root, dir, OUT, pm.distro(), layers, &[])
}

/// run.sh (past its distro check: the root is Debian) or undo.sh as root for the test account.
fn run(root: &Root, script: &str, more: &[&str]) -> Output {
    let mut cmd = vec!["bash", script, "--user", USER];
    if script == RUN {
        cmd.push("--force-distro");
    }
    cmd.extend_from_slice(more);
    root.run(&cmd)
}

/// The names a layer's ledger records as its packages (`packages.rpm` / `packages.pac`).
fn owned(root: &Root, pm: Pm, layer: &str) -> BTreeSet<String> {
    let p = root.path(&format!(
        "{LEDGER}/layers/{layer}.d/packages.{}",
        pm.format()
    ));
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `ov: FORMAT: one transaction …` lines of run.sh's output.
fn transactions(pm: Pm, out: &Output) -> Vec<String> {
    let head = format!("ov: {}: one transaction", pm.format());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&head))
        .map(str::to_string)
        .collect()
}

fn set(names: &[String]) -> BTreeSet<String> {
    names.iter().cloned().collect()
}

/// Three layers: `a` (whose package pulls in `lib`), then `lib` and `b` (`lib` is already there
/// by then when each layer installs its own: not the second layer's), then `c` and `b` again.
fn owners(pm: Pm) -> Vec<(String, String)> {
    let p = |b: &str| pm.pkg(b);
    vec![
        layer(pm, "o-a", &[p("a")]),
        layer(pm, "o-lib", &[p("lib"), p("b")]),
        layer(pm, "o-c", &[p("c"), p("b")]),
    ]
}

fn each_layer_owns_what_its_own_install_would_have(pm: Pm) {
    let Some(batched) = root(pm) else { return };
    let Some(alone) = root(pm) else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let layers = owners(pm);
    project(dir.path(), &layers);
    let names: Vec<&str> = layers.iter().map(|(n, _)| n.as_str()).collect();
    let before = pm.installed(&batched);
    assert_eq!(before, pm.installed(&alone));
    let fmt = pm.format();

    // The reference: each layer run on its own (`--only`: no transaction is shared), in order.
    compile(&alone, dir.path(), pm, &names);
    for name in &names {
        let out = run(&alone, RUN, &["--only", name]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(transactions(pm, &out).is_empty(), "{}", text(&out));
    }

    let plan = compile(&batched, dir.path(), pm, &names);
    let shown = format!("one {fmt} transaction for 5 packages of 3 layers: o-a, o-lib, o-c");
    assert!(plan.contains(&shown), "{plan}");
    let listing = String::from_utf8_lossy(&run(&batched, RUN, &["--list"]).stdout).into_owned();
    assert!(listing.contains(&shown), "{listing}");
    let dry = String::from_utf8_lossy(&run(&batched, RUN, &["--dry-run"]).stdout).into_owned();
    assert!(
        dry.contains(&format!(
            "one {fmt} transaction (at o-a) for the packages of: o-a o-lib o-c"
        )),
        "{dry}"
    );
    let out = run(&batched, RUN, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        transactions(pm, &out),
        [format!(
            "ov: {fmt}: one transaction for the packages of 3 layers: o-a o-lib o-c"
        )],
        "{}",
        text(&out)
    );
    assert_eq!(
        layers_with(&out.stdout, "layer-done"),
        ["o-a", "o-lib", "o-c"]
    );

    let all = set(&[pm.pkg("a"), pm.pkg("lib"), pm.pkg("b"), pm.pkg("c")]);
    assert_eq!(pm.installed(&batched), &before | &all);
    assert_eq!(pm.installed(&batched), pm.installed(&alone));
    // `lib` came as `a`'s dependency: the package manager counts it as one, as it does when
    // each layer installs its own, so removing `a` takes it along.
    assert_eq!(pm.explicit(&batched), pm.explicit(&alone));
    assert!(!pm.explicit(&batched).contains(&pm.pkg("lib")));
    for (name, want) in [
        ("o-a", set(&[pm.pkg("a")])),
        ("o-lib", set(&[pm.pkg("b")])),
        ("o-c", set(&[pm.pkg("c")])),
    ] {
        assert_eq!(owned(&batched, pm, name), want, "what {name} owns");
        assert_eq!(
            owned(&batched, pm, name),
            owned(&alone, pm, name),
            "what {name} owns, batched and alone"
        );
    }

    for root in [&batched, &alone] {
        let out = run(root, UNDO, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(pm.installed(root), before, "{}", text(&out));
    }
}

#[test]
fn each_layer_of_a_dnf_transaction_owns_what_its_own_install_would_have() {
    each_layer_owns_what_its_own_install_would_have(Pm::Dnf);
}

#[test]
fn each_layer_of_a_pacman_transaction_owns_what_its_own_install_would_have() {
    each_layer_owns_what_its_own_install_would_have(Pm::Pacman);
}

fn a_name_that_does_not_exist_fails_in_its_own_layer(pm: Pm) {
    let Some(root) = root(pm) else { return };
    let dir = tempfile::tempdir().expect("tmp");
    project(
        dir.path(),
        &[
            layer(pm, "c-a", &[pm.pkg("a")]),
            layer(pm, "c-bad", &["ov-no-such-package".to_string()]),
            layer(pm, "c-c", &[pm.pkg("c")]),
        ],
    );
    compile(&root, dir.path(), pm, &["c-a", "c-bad", "c-c"]);
    let before = pm.installed(&root);
    let out = run(&root, RUN, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(transactions(pm, &out).len(), 1, "{}", text(&out));
    assert_eq!(layers_with(&out.stdout, "layer-done"), ["c-a"]);
    assert_eq!(layers_with(&out.stdout, "layer-fail"), ["c-bad"]);
    assert_eq!(owned(&root, pm, "c-a"), set(&[pm.pkg("a")]));
    assert_eq!(
        pm.installed(&root),
        &before | &set(&[pm.pkg("a"), pm.pkg("lib")])
    );
    assert!(
        !root.path(&format!("{LEDGER}/layers/c-c.json")).exists(),
        "the failed transaction installed nothing for c-c"
    );
    let out = run(&root, UNDO, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(pm.installed(&root), before);
}

#[test]
fn a_dnf_transaction_with_a_name_that_does_not_exist_fails_in_the_layer_that_names_it() {
    a_name_that_does_not_exist_fails_in_its_own_layer(Pm::Dnf);
}

#[test]
fn a_pacman_transaction_with_a_name_that_does_not_exist_fails_in_the_layer_that_names_it() {
    a_name_that_does_not_exist_fails_in_its_own_layer(Pm::Pacman);
}

/// A pacman group is no package (`pacman -Q` does not find it, before or after): a layer's own
/// install records its name all the same, and the group's members it installed (`ovp-c`), and so
/// does its share of a transaction; teardown removes those members again (before, the group's
/// members stayed installed after teardown).
#[test]
fn a_pacman_group_a_layer_lists_is_recorded_as_its_own_install_records_it() {
    let pm = Pm::Pacman;
    let Some(batched) = root(pm) else { return };
    let Some(alone) = root(pm) else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let layers = [
        layer(pm, "g-a", &[pm.pkg("a")]),
        layer(pm, "g-group", &["ovp-group".to_string(), pm.pkg("b")]),
    ];
    project(dir.path(), &layers);
    let before = pm.installed(&alone);
    assert_eq!(pm.installed(&batched), before);
    assert!(!before.contains(&pm.pkg("c")));
    compile(&alone, dir.path(), pm, &["g-a", "g-group"]);
    for name in ["g-a", "g-group"] {
        let out = run(&alone, RUN, &["--only", name]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    compile(&batched, dir.path(), pm, &["g-a", "g-group"]);
    let out = run(&batched, RUN, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(transactions(pm, &out).len(), 1, "{}", text(&out));
    assert_eq!(pm.installed(&batched), pm.installed(&alone));
    assert!(pm.installed(&batched).contains(&pm.pkg("c")));
    for name in ["g-a", "g-group"] {
        assert_eq!(
            owned(&batched, pm, name),
            owned(&alone, pm, name),
            "what {name} owns, batched and alone"
        );
    }
    assert_eq!(
        owned(&batched, pm, "g-group"),
        set(&["ovp-group".to_string(), pm.pkg("b"), pm.pkg("c")])
    );
    for root in [&alone, &batched] {
        let out = run(root, UNDO, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(pm.installed(root), before, "{}", text(&out));
    }
}

fn a_run_that_stops_after_a_transaction_records_the_packages_of_the_layers_it_served(pm: Pm) {
    let Some(root) = root(pm) else { return };
    let dir = tempfile::tempdir().expect("tmp");
    // s-note writes into the user's home (no reason to split the transaction), and fails while
    // `~/blocked` is root's.
    project(
        dir.path(),
        &[
            layer(pm, "s-a", &[pm.pkg("a")]),
            (
                "s-note".to_string(),
                "  tasks:\n    - write: \"${HOME}/blocked/note\"\n      content: \"x\\n\"\n      user: \"${USER}\"\n"
                    .to_string(),
            ),
            layer(pm, "s-c", &[pm.pkg("c")]),
        ],
    );
    compile(&root, dir.path(), pm, &["s-a", "s-note", "s-c"]);
    let before = pm.installed(&root);
    root.sh(&format!("install -d -o root -m 0755 /home/{USER}/blocked"));
    let out = run(&root, RUN, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(transactions(pm, &out).len(), 1, "{}", text(&out));
    assert_eq!(layers_with(&out.stdout, "layer-fail"), ["s-note"]);
    assert!(pm.installed(&root).contains(&pm.pkg("c")));
    // s-c never ran, but the transaction installed its package: recorded as its, failed.
    let record = root.path(&format!("{LEDGER}/layers/s-c.json"));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record).expect("s-c's record")).expect("json");
    assert_eq!(record["result"], "failed");
    assert_eq!(owned(&root, pm, "s-c"), set(&[pm.pkg("c")]));

    let out = run(&root, UNDO, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(pm.installed(&root), before);
}

#[test]
fn a_run_that_stops_after_a_dnf_transaction_records_the_packages_of_the_layers_it_served() {
    a_run_that_stops_after_a_transaction_records_the_packages_of_the_layers_it_served(Pm::Dnf);
}

#[test]
fn a_run_that_stops_after_a_pacman_transaction_records_the_packages_of_the_layers_it_served() {
    a_run_that_stops_after_a_transaction_records_the_packages_of_the_layers_it_served(Pm::Pacman);
}

/// `run.sh --check` says what a run would do to packages that are already there, as the package
/// manager behaves: `pacman -S --needed` upgrades an installed package that the sync database has
/// in a newer version (a change: "would upgrade"), and installs the missing members of a group
/// (a group is no package: `pacman -Q` never finds it); `dnf install` leaves an installed package
/// as it is (ok). Each claim is then held against a real run. The canaries: before, pacman's
/// upgrade was `ok`, and a group whose members were all installed was "would install" forever.
fn check_mode_says_what_a_run_would_do_to_installed_packages(pm: Pm) {
    let Some(root) = root(pm) else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let fmt = pm.format();
    let b = pm.pkg("b");
    let mut layers = vec![layer(pm, "u-b", std::slice::from_ref(&b))];
    if let Pm::Pacman = pm {
        layers.push(layer(pm, "u-group", &["ovp-group".to_string()]));
    }
    project(dir.path(), &layers);
    let names: Vec<&str> = layers.iter().map(|(n, _)| n.as_str()).collect();
    compile(&root, dir.path(), pm, &names);
    let before = pm.installed(&root);
    let check = |what: &str| e2e::check_output(what, &run(&root, RUN, &["--check"]));
    let line = e2e::check_line;
    let version = |name: &str| match pm {
        Pm::Dnf => root.sh(&format!("rpm -q --qf '%{{VERSION}}-%{{RELEASE}}' {name}")),
        Pm::Pacman => root.sh(&format!("pacman -Q {name} | cut -d' ' -f2 | tr -d '\\n'")),
    };

    if let Pm::Pacman = pm {
        // A machine's sync database, as on any Arch system (a run refreshes it first).
        root.sh("pacman -Sy >/dev/null");
    }
    let (code, stdout) = check("nothing installed");
    assert_eq!(code, Some(10), "{stdout}");
    assert_eq!(
        line(&stdout, &format!("{fmt} packages {b}")),
        format!("change  {fmt} packages {b} (would install {b})")
    );
    if let Pm::Pacman = pm {
        assert_eq!(
            line(&stdout, "pac packages ovp-group"),
            "change  pac packages ovp-group (would install ovp-c)"
        );
    }

    let out = run(&root, RUN, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(version(&b), "1.0-1");
    let (code, stdout) = check("applied");
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        line(&stdout, &format!("{fmt} packages {b}")).starts_with("ok"),
        "{stdout}"
    );
    if let Pm::Pacman = pm {
        assert!(
            line(&stdout, "pac packages ovp-group").starts_with("ok"),
            "{stdout}"
        );
    }

    // `b` 2.0 in the repository, and the package manager's view of it refreshed (the machine's
    // state, as after an update).
    match pm {
        Pm::Dnf => root.sh(&[
            "set -e\n",
            RPM_MK,
            "V=2.0 mk ovr-b \"\"\nrm -rf /tmp/rpmb\ncreaterepo_c -q --update /srv/ovrpm\ndnf -q makecache --refresh >/dev/null 2>&1\n",
        ]
        .concat()),
        Pm::Pacman => root.sh(&[
            "set -e\n",
            PAC_MK,
            "V=2.0 mk ovp-b \"\"\nrm -rf /tmp/pacb\ncd /srv/ovpac && repo-add -q ovtest.db.tar.gz ./ovp-b-2.0-1-any.pkg.tar.gz\npacman -Sy >/dev/null\n",
        ]
        .concat()),
    };
    let (code, stdout) = check("a newer version offered");
    match pm {
        Pm::Dnf => {
            assert_eq!(code, Some(0), "{stdout}");
            assert!(
                line(&stdout, &format!("rpm packages {b}")).starts_with("ok"),
                "{stdout}"
            );
        }
        Pm::Pacman => {
            assert_eq!(code, Some(10), "{stdout}");
            assert_eq!(
                line(&stdout, "pac packages ovp-b"),
                "change  pac packages ovp-b (would upgrade ovp-b (1.0-1 -> 2.0-1))"
            );
        }
    }
    assert_eq!(version(&b), "1.0-1", "a check upgrades nothing");

    // What the check said, a run does.
    let out = run(&root, RUN, &["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let want = match pm {
        Pm::Dnf => "1.0-1",
        Pm::Pacman => "2.0-1",
    };
    assert_eq!(version(&b), want, "{}", text(&out));

    let out = run(&root, UNDO, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(pm.installed(&root), before, "{}", text(&out));
}

#[test]
fn check_mode_says_what_a_dnf_run_would_do_to_installed_packages() {
    check_mode_says_what_a_run_would_do_to_installed_packages(Pm::Dnf);
}

#[test]
fn check_mode_says_what_a_pacman_run_would_do_to_installed_packages_and_groups() {
    check_mode_says_what_a_run_would_do_to_installed_packages(Pm::Pacman);
}
