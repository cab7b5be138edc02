//! Stage `batch`: which layers' package installs may share one package-manager transaction.
//! Invariant: a batch never moves a package install across a step that could change what the
//! install does or that could see the difference — so a layer author observes the same order
//! as one transaction per layer, only faster.
//!
//! The rule, per layer (computed from the layer's own steps, so it does not depend on where the
//! layer sits in a deploy and does not change its digest):
//!
//! - A layer **joins** a batch begun by an earlier layer when it has exactly one install step of
//!   the batch's format, with no extra `options:` and plain package names, and nothing that runs
//!   before that step in the layer must precede it.
//! - A batch **passes over** a layer (goes on to later layers) when nothing in the layer that
//!   runs after its install step (or, for a layer without one, nothing in it at all) must precede
//!   a later layer's install.
//! - What must precede a package install: anything root does (repository and key changes, files
//!   written by root, `cmd:` tasks as root, services: a maintainer script may read a file under
//!   `/etc`, and dpkg treats an existing conffile differently), any `cmd:` task (whatever its
//!   account: it may look at what is installed), builders (npm, cargo, pixi, makepkg run
//!   programs that may pick up installed packages) and another install this one cannot join.
//!   The target user's own files, directories, links and downloads and the profile block do not:
//!   no maintainer script reads a user's home, and they do not look at what is installed.
//! - Steps that do not run on this target (a closed gate, container-only keys) do not count.
//!
//! `run.sh` applies the same rule at run time to the layers that really run (a layer already
//! applied is skipped, `--only` runs one), from the per-layer facts [`LayerBatching`] gives it;
//! [`package_batches`] is the plan when every layer runs, which `ov plan`, `ov inspect` and
//! `run.sh --list` show.

use serde::{Deserialize, Serialize};

use crate::plan::{Action, InstallPlan, LayerPlan, Phase, Scope, Step, TaskVerb, Venue};

/// Package formats whose installs are batched: the runtime attributes a shared transaction's
/// packages to its layers from the package manager's own database (`dpkg`, `rpm`, pacman's).
/// AUR packages are built one layer at a time (a builder step), never batched.
pub const BATCHED_FORMATS: &[&str] = &["deb", "rpm", "pac"];

/// What the batching rule needs to know of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LayerBatching {
    /// The layer's one batchable install: its format and package names.
    pub install: Option<(String, Vec<String>)>,
    /// Whether the install may join a batch an earlier layer began.
    pub join: bool,
    /// Whether a batch may go on past this layer to later layers.
    pub pass: bool,
}

/// One shared transaction: the layers whose packages it installs, in run order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageBatch {
    /// The package format (`deb`, `rpm` or `pac`).
    pub format: String,
    /// The layers it serves, the first one running it at its own install step.
    pub layers: Vec<String>,
    /// How many package names it installs in all.
    pub packages: usize,
}

impl PackageBatch {
    /// One line for people: `one deb transaction for 3 packages of 2 layers: a, b`.
    pub fn describe(&self) -> String {
        format!(
            "one {} transaction for {} packages of {} layers: {}",
            self.format,
            self.packages,
            self.layers.len(),
            self.layers.join(", ")
        )
    }
}

/// Whether `step` runs on this target.
fn runs(step: &Step) -> bool {
    step.skip.is_none() && step.venue != Venue::Skip
}

/// Whether `name` is a plain package name of `format`: one the runtime can match against the
/// package database as it is (`dpkg-query -W`, `rpm -q --whatprovides`, `pacman -Q`) to tell
/// which layer owns it. Refused: versions (`tmux=3.3`, `pkg>=1`, rpm's `name-1.2` and
/// `name-1.2-3.fc39` spellings), `/release`, `:arch`, `@groups`, paths, globs and
/// repository-qualified `core/pkg` — each would name a package other than itself.
pub fn plain_name(format: &str, name: &str) -> bool {
    let mut bytes = name.bytes();
    match format {
        "deb" => {
            matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
                && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'+' | b'-'))
        }
        // dnf reads `name-version` and `name-version-release` as the package `name` at that
        // version, and `name.arch` as `name` for that architecture, so a `-` followed by a
        // digit and an architecture suffix are refused (a few real names, `python3-3to2`, then
        // install per layer, as before).
        "rpm" => {
            const ARCHES: &[&str] = &[
                "noarch", "src", "x86_64", "i686", "i386", "aarch64", "armv7hl", "ppc64le",
                "s390x", "riscv64",
            ];
            matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'))
                && bytes
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-' | b'_'))
                && !name
                    .as_bytes()
                    .windows(2)
                    .any(|w| w[0] == b'-' && w[1].is_ascii_digit())
                && !name
                    .rsplit_once('.')
                    .is_some_and(|(_, arch)| ARCHES.contains(&arch))
        }
        // pacman's names: lowercase letters, digits and `@._+-`, not beginning with `-` or `.`;
        // `@` is left out too (it is pacman's, but nothing needs it in a batch).
        "pac" => {
            matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'+'))
                && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'+' | b'-'))
        }
        _ => false,
    }
}

/// The install a batch can take over: packages in the install phase, of a batched format, no
/// extra options (for rpm no `exclude:` and no repository of the same step either, whose
/// `--setopt`s would go along), every name a plain package name of its format ([`plain_name`]).
pub fn batchable_install(step: &Step) -> Option<(String, Vec<String>)> {
    let Action::SystemPackages {
        format,
        packages,
        options,
        exclude,
        repos,
        ..
    } = &step.action
    else {
        return None;
    };
    (step.phase == Phase::Install
        && !packages.is_empty()
        && BATCHED_FORMATS.contains(&format.as_str())
        && options.is_empty()
        && exclude.is_empty()
        && repos.is_empty()
        && packages.iter().all(|p| plain_name(format, p)))
    .then(|| (format.clone(), packages.clone()))
}

/// Whether `step` (which runs) must run before a later layer's package install.
fn must_precede(step: &Step) -> bool {
    match &step.action {
        Action::ShellHook { .. } => false,
        Action::ContainerOnly { .. } => false,
        Action::Task { task, .. } if step.scope == Scope::User => {
            matches!(task.verb, TaskVerb::Cmd { .. })
        }
        Action::File { .. } => step.scope != Scope::User,
        _ => true,
    }
}

/// The batching facts of one layer.
pub fn layer_batching(layer: &LayerPlan) -> LayerBatching {
    let running: Vec<&Step> = layer.steps.iter().filter(|s| runs(s)).collect();
    let installs: Vec<usize> = running
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            matches!(s.action, Action::SystemPackages { .. }) && s.phase == Phase::Install
        })
        .map(|(i, _)| i)
        .collect();
    let clear = |steps: &[&Step]| !steps.iter().any(|s| must_precede(s));
    match installs.as_slice() {
        [] => LayerBatching {
            install: None,
            join: false,
            pass: clear(&running),
        },
        [at] => match batchable_install(running[*at]) {
            Some(install) => LayerBatching {
                install: Some(install),
                join: clear(&running[..*at]),
                pass: clear(&running[at + 1..]),
            },
            None => LayerBatching::default(),
        },
        _ => LayerBatching::default(),
    }
}

/// The shared transactions of `plan` when every layer runs: only those serving two layers or
/// more (one layer's install is its own). `run.sh` computes the same for the layers it runs.
pub fn package_batches(plan: &InstallPlan) -> Vec<PackageBatch> {
    let mut out: Vec<PackageBatch> = Vec::new();
    let mut open = false;
    for layer in &plan.layers {
        let b = layer_batching(layer);
        match &b.install {
            Some((format, packages)) => {
                let joins = open && b.join && out.last().is_some_and(|last| &last.format == format);
                if joins {
                    let last = out.last_mut().expect("an open batch");
                    last.layers.push(layer.name.clone());
                    last.packages += packages.len();
                } else {
                    out.push(PackageBatch {
                        format: format.clone(),
                        layers: vec![layer.name.clone()],
                        packages: packages.len(),
                    });
                }
                open = b.pass;
            }
            None => open = open && b.pass,
        }
    }
    out.retain(|b| b.layers.len() > 1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::Repo;
    use crate::layer::{Layer, TaskVerb};
    use crate::lower::fixture::{fmt, named, section, task, Fixture, ALL, ARCH, DEBIAN, FEDORA};
    use crate::plan::Gates;

    fn pkgs(name: &str, packages: &[&str]) -> Layer {
        Layer {
            package_sections: vec![section(fmt("deb"), packages)],
            ..named(name)
        }
    }

    fn with_tasks(mut layer: Layer, tasks: Vec<crate::layer::Task>) -> Layer {
        layer.tasks = tasks;
        layer
    }

    fn write(path: &str) -> TaskVerb {
        TaskVerb::Write {
            path: path.into(),
            content: "x\n".into(),
        }
    }

    fn cmd() -> TaskVerb {
        TaskVerb::Cmd {
            body: "true".into(),
        }
    }

    /// The batches of `layers` lowered for Debian with `gates`, as lists of layer names.
    fn batches_of(layers: Vec<Layer>, gates: Gates) -> Vec<Vec<String>> {
        batches_on(DEBIAN, layers, gates)
    }

    fn batches_on(
        distro: (&[&str], &[&str]),
        layers: Vec<Layer>,
        gates: Gates,
    ) -> Vec<Vec<String>> {
        let mut fx = Fixture::new();
        let order: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
        for l in layers {
            fx.add(l, &[]);
        }
        let order: Vec<&str> = order.iter().map(String::as_str).collect();
        let plan = fx.lower(distro, gates, &order).expect("lowers");
        package_batches(&plan)
            .into_iter()
            .map(|b| b.layers)
            .collect()
    }

    #[test]
    fn consecutive_package_layers_share_one_transaction() {
        let got = batches_of(
            vec![
                pkgs("a", &["jq"]),
                pkgs("b", &["tmux", "screen"]),
                pkgs("c", &["socat"]),
            ],
            ALL,
        );
        assert_eq!(got, [["a", "b", "c"]]);
    }

    #[test]
    fn a_file_or_command_of_root_splits_the_batch_but_the_users_own_files_do_not() {
        let root_file = with_tasks(pkgs("b", &["tmux"]), vec![task(write("/etc/b.conf"), None)]);
        let got = batches_of(
            vec![pkgs("a", &["jq"]), root_file, pkgs("c", &["socat"])],
            ALL,
        );
        assert_eq!(
            got,
            [["a", "b"]],
            "c's packages may read /etc/b.conf: after it"
        );

        let root_cmd = with_tasks(named("b"), vec![task(cmd(), None)]);
        let got = batches_of(
            vec![pkgs("a", &["jq"]), root_cmd, pkgs("c", &["socat"])],
            ALL,
        );
        assert!(got.is_empty(), "{got:?}");

        let user_cmd = with_tasks(named("b"), vec![task(cmd(), Some("${USER}"))]);
        let got = batches_of(
            vec![pkgs("a", &["jq"]), user_cmd, pkgs("c", &["socat"])],
            ALL,
        );
        assert!(
            got.is_empty(),
            "a cmd: may look at what is installed: {got:?}"
        );

        let user_file = with_tasks(
            pkgs("b", &["tmux"]),
            vec![task(write("${HOME}/.tmux.conf"), Some("${USER}"))],
        );
        let env = Layer {
            env: vec![("EDITOR".into(), "vi".into())],
            ..pkgs("c", &["socat"])
        };
        let got = batches_of(
            vec![pkgs("a", &["jq"]), user_file, env, pkgs("d", &["rsync"])],
            ALL,
        );
        assert_eq!(got, [["a", "b", "c", "d"]]);
    }

    #[test]
    fn a_gated_off_step_does_not_split_what_it_would_have_split() {
        let root_cmd = || with_tasks(named("b"), vec![task(cmd(), None)]);
        let closed = batches_of(
            vec![pkgs("a", &["jq"]), root_cmd(), pkgs("c", &["socat"])],
            Gates::default(),
        );
        assert_eq!(closed, [["a", "c"]]);
    }

    #[test]
    fn a_layer_with_its_own_repository_begins_a_new_batch() {
        let mut repo_layer = pkgs("b", &["code"]);
        repo_layer.package_sections[0].repos = vec![Repo {
            name: Some("vscode".into()),
            url: Some("https://packages.example.com/repo".into()),
            suite: Some("stable".into()),
            components: Some("main".into()),
            ..Repo::default()
        }];
        let got = batches_of(
            vec![
                pkgs("a", &["jq"]),
                repo_layer,
                pkgs("c", &["socat"]),
                pkgs("d", &["rsync"]),
            ],
            ALL,
        );
        assert_eq!(
            got,
            [["b", "c", "d"]],
            "b's repository must be there before b installs"
        );
    }

    #[test]
    fn options_or_pinned_names_keep_an_install_to_itself() {
        let mut opts = pkgs("b", &["tmux"]);
        opts.package_sections[0].options = vec!["--install-suggests".into()];
        let got = batches_of(
            vec![
                pkgs("a", &["jq"]),
                opts,
                pkgs("c", &["socat"]),
                pkgs("d", &["rsync"]),
            ],
            ALL,
        );
        assert_eq!(got, [["c", "d"]]);
        let got = batches_of(vec![pkgs("a", &["jq"]), pkgs("b", &["tmux=3.3a-3"])], ALL);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn the_facts_of_a_layer_do_not_depend_on_its_place() {
        let layer = with_tasks(pkgs("b", &["tmux"]), vec![task(write("/etc/b.conf"), None)]);
        let mut fx = Fixture::new();
        fx.add(layer, &[]);
        let plan = fx.lower(DEBIAN, ALL, &["b"]).expect("lowers");
        let b = layer_batching(&plan.layers[0]);
        assert_eq!(
            b.install,
            Some(("deb".to_string(), vec!["tmux".to_string()]))
        );
        assert!(b.join);
        assert!(!b.pass);
    }

    fn in_format(format: &str, name: &str, packages: &[&str]) -> Layer {
        Layer {
            package_sections: vec![section(fmt(format), packages)],
            ..named(name)
        }
    }

    #[test]
    fn rpm_and_pac_layers_share_a_transaction_of_their_own_format() {
        for (distro, format) in [(FEDORA, "rpm"), (ARCH, "pac")] {
            let got = batches_on(
                distro,
                vec![
                    in_format(format, "a", &["jq"]),
                    in_format(format, "b", &["tmux", "socat"]),
                    in_format(format, "c", &["rsync"]),
                ],
                ALL,
            );
            assert_eq!(got, [["a", "b", "c"]], "{format}");
        }
    }

    #[test]
    fn a_repository_copr_module_or_key_step_of_rpm_or_pac_begins_a_new_transaction() {
        let mut copr = in_format("rpm", "b", &["lazygit"]);
        copr.package_sections[0].copr = vec!["atim/lazygit".into()];
        let got = batches_on(
            FEDORA,
            vec![
                in_format("rpm", "a", &["jq"]),
                copr,
                in_format("rpm", "c", &["rsync"]),
            ],
            ALL,
        );
        // b's copr is enabled before b installs and disabled again after it (cleanup): nothing
        // of another layer's crosses either.
        assert!(got.is_empty(), "{got:?}");

        let mut module = in_format("rpm", "b", &["nodejs"]);
        module.package_sections[0].modules = vec!["nodejs:20".into()];
        let got = batches_on(
            FEDORA,
            vec![
                in_format("rpm", "a", &["jq"]),
                module,
                in_format("rpm", "c", &["rsync"]),
            ],
            ALL,
        );
        assert_eq!(got, [["b", "c"]]);

        let mut keyed = in_format("pac", "b", &["tmux"]);
        keyed.package_sections[0].keys = vec!["ABCDEF0123456789".into()];
        let got = batches_on(
            ARCH,
            vec![
                in_format("pac", "a", &["jq"]),
                keyed,
                in_format("pac", "c", &["rsync"]),
            ],
            ALL,
        );
        assert_eq!(got, [["b", "c"]], "b's key must be there before b installs");
    }

    #[test]
    fn rpm_excludes_and_names_the_database_cannot_match_keep_an_install_to_itself() {
        let mut excl = in_format("rpm", "b", &["tmux"]);
        excl.package_sections[0].exclude = vec!["*-debuginfo".into()];
        let got = batches_on(FEDORA, vec![in_format("rpm", "a", &["jq"]), excl], ALL);
        assert!(got.is_empty(), "{got:?}");
        for odd in [
            "tmux-3.3a",
            "@development-tools",
            "/usr/bin/tmux",
            "tmu*",
            "pkg>=1",
        ] {
            let got = batches_on(
                FEDORA,
                vec![
                    in_format("rpm", "a", &["jq"]),
                    in_format("rpm", "b", &[odd]),
                ],
                ALL,
            );
            assert!(got.is_empty(), "{odd}: {got:?}");
        }
        for odd in ["core/tmux", "tmux>=3", "base-devel*", "Tmux"] {
            let got = batches_on(
                ARCH,
                vec![
                    in_format("pac", "a", &["jq"]),
                    in_format("pac", "b", &[odd]),
                ],
                ALL,
            );
            assert!(got.is_empty(), "{odd}: {got:?}");
        }
    }

    #[test]
    fn plain_names_per_format() {
        for ok in [
            "gcc-c++",
            "python3-devel",
            "NetworkManager",
            "libstdc++",
            "xorg-x11-fonts",
            "python3.12",
        ] {
            assert!(plain_name("rpm", ok), "{ok}");
        }
        for no in [
            "tmux-3.3a",
            "tmux-3.3a-1.fc39",
            "tmux.x86_64",
            "@core",
            "/bin/sh",
            "perl(Foo)",
            "a b",
            "",
        ] {
            assert!(!plain_name("rpm", no), "{no:?}");
        }
        for ok in [
            "tmux",
            "python-pip",
            "gtk3",
            "lib32-glibc",
            "r8168",
            "c++utilities",
        ] {
            assert!(plain_name("pac", ok), "{ok}");
        }
        for no in ["core/tmux", "tmux=3.3", "tmux>=3", "-tmux", "Tmux", "*", ""] {
            assert!(!plain_name("pac", no), "{no:?}");
        }
        assert!(
            !plain_name("aur", "yay-bin"),
            "AUR packages are built, never batched"
        );
    }
}
