//! Test support for `render_*` tests: hand-built plans, shell checks (`bash -n`, ShellCheck), and
//! a sandbox that runs rendered scripts against a scratch directory with stubbed package managers
//! and service managers, inside a private mount namespace whose /etc, /usr, /var, /opt, /root and
//! /home are throw-away overlays (the scripts write /etc/apt, /etc/systemd, … as root).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ov_compiler::plan::{
    Action, BuilderKind, Deploy, Gate, Gates, InstallPlan, LayerPlan, Phase, ReverseKind,
    ReverseOp, RunAs, Scope, Skip, Step, TargetDistro, TargetKind, Venue, FORMAT_VERSION,
};
use ov_compiler::plan::{Repo, ServiceEntry, ServiceOverrides, Task, TaskVerb};
use ov_compiler::render::{render, Engine, Rendered};

/// The project directory with the payload files of the hand-built plans.
pub fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/render")
}

/// Whether `CI` is set (a missing tool is then a failure, not a skip).
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Whether `tool` runs; prints a skip message (or panics under CI) when it does not.
pub fn have_tool(tool: &str, args: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            !under_ci(),
            "`{tool}` is required under CI but does not run"
        );
        eprintln!("skipping: `{tool}` is not available");
    }
    ok
}

// ---- plan building -------------------------------------------------------------------------

pub fn op(kind: ReverseKind, scope: Scope, targets: &[&str]) -> ReverseOp {
    ReverseOp {
        kind,
        format: None,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        scope,
        extra: BTreeMap::new(),
    }
}

pub fn pkg_op(format: &str, targets: &[String]) -> ReverseOp {
    ReverseOp {
        kind: ReverseKind::PackageRemove,
        format: Some(format.to_string()),
        targets: targets.to_vec(),
        scope: Scope::System,
        extra: BTreeMap::new(),
    }
}

pub fn step(action: Action, scope: Scope, reverse: Vec<ReverseOp>) -> Step {
    Step::new(action, scope, reverse)
}

pub fn task(verb: TaskVerb) -> Task {
    Task {
        verb,
        user: None,
        mode: None,
        env: Vec::new(),
        comment: None,
        uninstall: Vec::new(),
        pos: Default::default(),
    }
}

pub fn task_step(verb: TaskVerb, scope: Scope, reverse: Vec<ReverseOp>) -> Step {
    let run_as = if scope == Scope::System {
        RunAs::Root
    } else {
        RunAs::TargetUser
    };
    step(
        Action::Task {
            task: task(verb),
            run_as,
            ctx_files: None,
        },
        scope,
        reverse,
    )
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn layer(name: &str, steps: Vec<Step>) -> LayerPlan {
    LayerPlan {
        name: name.to_string(),
        version: None,
        source: format!("layers/{name}"),
        origin: ov_compiler::plan::LayerOrigin::Local {
            path: format!("layers/{name}"),
        },
        source_dir: None,
        steps,
        checks: Vec::new(),
    }
}

pub fn plan(format: &str, layers: Vec<LayerPlan>) -> InstallPlan {
    let tags = match format {
        "pac" => vec!["archlinux".to_string()],
        "rpm" => vec!["fedora:43".to_string(), "fedora".to_string()],
        _ => vec!["debian:12".to_string(), "debian".to_string()],
    };
    let mut formats = vec![format.to_string()];
    if format == "pac" {
        formats.push("aur".to_string());
    }
    InstallPlan {
        format_version: FORMAT_VERSION,
        deploy: Deploy {
            name: "vm:test".to_string(),
            id: "0123456789abcdef".to_string(),
            target: TargetKind::Vm {
                vm: "test".to_string(),
            },
            distro: TargetDistro { tags, formats },
            user: Some("tester".to_string()),
            requested: layers.iter().map(|l| l.name.clone()).collect(),
        },
        gates: Gates {
            allow_repo_changes: true,
            allow_root_tasks: true,
            with_services: true,
        },
        layers,
    }
}

fn packages_step(phase: Phase, action: Action, reverse: Vec<ReverseOp>) -> Step {
    Step {
        phase,
        gate: (phase == Phase::Prepare).then_some(Gate::AllowRepoChanges),
        ..Step::new(action, Scope::System, reverse)
    }
}

fn sys_pkgs(format: &str, packages: &[&str]) -> Action {
    Action::SystemPackages {
        format: format.to_string(),
        packages: strings(packages),
        options: Vec::new(),
        repos: Vec::new(),
        keys: Vec::new(),
        copr: Vec::new(),
        modules: Vec::new(),
        exclude: Vec::new(),
    }
}

/// The package layer of the every-kind plan: prepare (repositories, keys, coprs, modules),
/// install (packages, options, excludes), cleanup (copr re-disable) and a repository file.
pub fn packages_layer(format: &str) -> LayerPlan {
    let mut steps = Vec::new();
    let (repos, keys, copr, modules): (Vec<Repo>, Vec<String>, Vec<String>, Vec<String>) =
        match format {
            "pac" => (
                vec![Repo {
                    name: Some("chaotic-aur".into()),
                    server: Some("https://cdn-mirror.chaotic.cx/$repo/$arch".into()),
                    key: Some("3056513887B78AEB".into()),
                    ..Default::default()
                }],
                strings(&["3056513887B78AEB"]),
                vec![],
                vec![],
            ),
            "rpm" => (
                vec![
                    Repo {
                        name: Some("remi-modular".into()),
                        rpm: Some(
                            "https://rpms.remirepo.net/fedora/remi-release-$(rpm -E %fedora).rpm"
                                .into(),
                        ),
                        ..Default::default()
                    },
                    Repo {
                        name: Some("docker-ce".into()),
                        url: Some("https://download.docker.com/linux/fedora/docker-ce.repo".into()),
                        ..Default::default()
                    },
                    Repo {
                        name: Some("code".into()),
                        url: Some("https://packages.microsoft.com/yumrepos/vscode".into()),
                        gpgkey: Some("https://packages.microsoft.com/keys/microsoft.asc".into()),
                        gpgcheck: Some("false".into()),
                        ..Default::default()
                    },
                ],
                vec![],
                strings(&["che/nerd-fonts"]),
                strings(&["valkey:remi-9.0"]),
            ),
            _ => (
                vec![
                    Repo {
                        name: Some("nodesource".into()),
                        url: Some("https://deb.nodesource.com/node_20.x".into()),
                        key: Some(
                            "https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key".into(),
                        ),
                        suite: Some("nodistro".into()),
                        components: Some("main".into()),
                        ..Default::default()
                    },
                    // As the plan writes it when the sources file is a `RepoChange`: the
                    // prepare step only fetches the key.
                    Repo {
                        name: Some("docker".into()),
                        key: Some("https://download.docker.com/linux/debian/gpg".into()),
                        signed_by: Some("/etc/apt/keyrings/docker.gpg".into()),
                        ..Default::default()
                    },
                    Repo {
                        name: Some("backports".into()),
                        url: Some("http://deb.debian.org/debian".into()),
                        suite: Some("bookworm-backports".into()),
                        signed_by: Some("/usr/share/keyrings/debian-archive-keyring.gpg".into()),
                        ..Default::default()
                    },
                ],
                vec![],
                vec![],
                vec![],
            ),
        };
    let mut copr_ops = Vec::new();
    for c in &copr {
        copr_ops.push(op(ReverseKind::CoprDisable, Scope::System, &[c.as_str()]));
    }
    steps.push(packages_step(
        Phase::Prepare,
        Action::SystemPackages {
            format: format.to_string(),
            packages: Vec::new(),
            options: Vec::new(),
            repos,
            keys,
            copr: copr.clone(),
            modules,
            exclude: Vec::new(),
        },
        copr_ops,
    ));
    let packages = strings(&["ripgrep", "jq"]);
    let (options, exclude) = match format {
        "rpm" => (strings(&["--allowerasing"]), strings(&["*-debuginfo"])),
        "deb" => (strings(&["--allow-downgrades"]), vec![]),
        _ => (strings(&["--overwrite=/usr/lib/foo/*"]), vec![]),
    };
    steps.push(packages_step(
        Phase::Install,
        Action::SystemPackages {
            format: format.to_string(),
            packages: packages.clone(),
            options,
            repos: Vec::new(),
            keys: Vec::new(),
            copr: Vec::new(),
            modules: Vec::new(),
            exclude,
        },
        vec![pkg_op(format, &packages)],
    ));
    if format == "rpm" {
        steps.push(packages_step(
            Phase::Cleanup,
            Action::SystemPackages {
                format: format.to_string(),
                packages: Vec::new(),
                options: Vec::new(),
                repos: Vec::new(),
                keys: Vec::new(),
                copr,
                modules: Vec::new(),
                exclude: Vec::new(),
            },
            Vec::new(),
        ));
    }
    let (path, content) = match format {
        "pac" => (
            "/etc/pacman.d/ov-extra.conf",
            "Server = https://example.org/$repo/os/$arch\n",
        ),
        "rpm" => (
            "/etc/yum.repos.d/ov-extra.repo",
            "[ov-extra]\nname=extra\nbaseurl=https://example.org/$releasever/\n",
        ),
        _ => (
            "/etc/apt/sources.list.d/ov-extra.list",
            "deb https://example.org/debian stable main\n",
        ),
    };
    let mut repo_change = step(
        Action::RepoChange {
            format: format.to_string(),
            path: path.to_string(),
            content: content.to_string(),
        },
        Scope::System,
        vec![op(ReverseKind::RemoveRepoFile, Scope::System, &[path])],
    );
    repo_change.gate = Some(Gate::AllowRepoChanges);
    steps.push(repo_change);
    steps.push(step(
        Action::ShellHook {
            env: vec![
                ("NPM_CONFIG_PREFIX".into(), "~/.npm-global".into()),
                ("GREETING".into(), "it's \"$fine\" `here`".into()),
            ],
            path_append: strings(&["~/.npm-global/bin", "${HOME}/.local/bin"]),
        },
        Scope::UserProfile,
        vec![op(
            ReverseKind::RemoveEnvdFile,
            Scope::UserProfile,
            &["~/.config/overthink/env.d/tools.env"],
        )],
    ));
    layer("tools", steps)
}

/// Every task verb, and payload files for the system and the user.
pub fn tasks_layer() -> LayerPlan {
    let mut steps = Vec::new();
    steps.push(task_step(
        TaskVerb::Setcap {
            path: "/usr/bin/sway".into(),
            caps: String::new(),
        },
        Scope::System,
        vec![],
    ));
    steps.push(task_step(
        TaskVerb::Setcap {
            path: "/usr/bin/ping".into(),
            caps: "cap_net_raw+ep".into(),
        },
        Scope::System,
        vec![],
    ));
    let mut write = task(TaskVerb::Write {
        path: "/etc/demo/motd".into(),
        content: "Welcome — it's $(not run) `here`\n'\\''\n".into(),
    });
    write.mode = Some("0640".into());
    steps.push(step(
        Action::Task {
            task: write,
            run_as: RunAs::Root,
            ctx_files: None,
        },
        Scope::System,
        vec![op(
            ReverseKind::RmFileSystem,
            Scope::System,
            &["/etc/demo/motd"],
        )],
    ));
    steps.push(task_step(
        TaskVerb::Link {
            path: "/usr/local/bin/demo-motd".into(),
            target: "/etc/demo/motd".into(),
        },
        Scope::System,
        vec![op(
            ReverseKind::RmFileSystem,
            Scope::System,
            &["/usr/local/bin/demo-motd"],
        )],
    ));
    let mut dl = task(TaskVerb::Download {
        url: "https://github.com/astral-sh/uv/releases/latest/download/uv-${BUILD_ARCH}-unknown-linux-gnu.tar.gz".into(),
        to: Some("/usr/local/bin".into()),
        extract: None,
        include: Vec::new(),
        strip_components: Some(1),
    });
    dl.uninstall = strings(&["/usr/local/bin/uv", "/usr/local/bin/uvx"]);
    steps.push(step(
        Action::Task {
            task: dl,
            run_as: RunAs::Root,
            ctx_files: None,
        },
        Scope::System,
        vec![op(
            ReverseKind::RmFileSystem,
            Scope::System,
            &["/usr/local/bin/uv", "/usr/local/bin/uvx"],
        )],
    ));
    let mut dl_none = task(TaskVerb::Download {
        url: "https://github.com/sigstore/cosign/releases/download/v3.0.2/cosign-linux-${ARCH}"
            .into(),
        to: Some("/usr/local/bin/cosign".into()),
        extract: Some("none".into()),
        include: Vec::new(),
        strip_components: None,
    });
    dl_none.env = vec![("GITHUB_TOKEN".into(), "t0k'en".into())];
    steps.push(step(
        Action::Task {
            task: dl_none,
            run_as: RunAs::Root,
            ctx_files: None,
        },
        Scope::System,
        vec![op(
            ReverseKind::RmFileSystem,
            Scope::System,
            &["/usr/local/bin/cosign"],
        )],
    ));
    let mut dl_zip = task(TaskVerb::Download {
        url: "https://example.org/tools.zip?x=1".into(),
        to: Some("/opt/tools".into()),
        extract: None,
        include: strings(&["tools/bin/a", "tools/bin/b"]),
        strip_components: Some(2),
    });
    dl_zip.mode = Some("0755".into());
    steps.push(step(
        Action::Task {
            task: dl_zip,
            run_as: RunAs::Root,
            ctx_files: None,
        },
        Scope::System,
        vec![op(
            ReverseKind::RmFileSystem,
            Scope::System,
            &["/opt/tools"],
        )],
    ));
    // An archive without `uninstall:`: the plan has no reverse op; undo removes what the
    // download recorded.
    steps.push(task_step(
        TaskVerb::Download {
            url: "https://example.org/demo-${BUILD_ARCH}.tar.gz".into(),
            to: Some("/usr/local/lib/ov-demo".into()),
            extract: Some("tar.gz".into()),
            include: Vec::new(),
            strip_components: None,
        },
        Scope::System,
        vec![],
    ));
    let mut cmd = task(TaskVerb::Cmd {
        body: "account=$(getent passwd 1000 | cut -d: -f1)\nmkdir -p /etc/sudoers.d\nprintf '%s ALL=(ALL) NOPASSWD: ALL\\n' \"$account\" > /etc/sudoers.d/ov-user\ncp -a ${OV_CTX}/system_files/* / 2>/dev/null || true".into(),
    });
    cmd.env = vec![("SECRET".into(), "s3cr3t'$(no)".into())];
    steps.push(step(
        Action::Task {
            task: cmd,
            run_as: RunAs::Root,
            // As lower writes it for a body that said `/ctx/system_files/*`.
            ctx_files: Some(strings(&[
                "config",
                "sshd-wrapper",
                "system_files/etc/demo/banner",
            ])),
        },
        Scope::System,
        vec![],
    ));
    steps.push(step(
        Action::File {
            source: "sshd-wrapper".into(),
            dest: "/usr/local/bin/sshd-wrapper".into(),
            mode: "0755".into(),
            run_as: RunAs::Root,
        },
        Scope::System,
        vec![op(
            ReverseKind::RmFileSystem,
            Scope::System,
            &["/usr/local/bin/sshd-wrapper"],
        )],
    ));
    // A user-owned file installed by a root step (ownership via chown) in a directory of root's:
    // root never writes into a directory another account owns (the runtime refuses it).
    steps.push(step(
        Action::File {
            source: "system_files/etc/demo/banner".into(),
            dest: "/opt/demo/banner".into(),
            mode: "0600".into(),
            run_as: RunAs::TargetUser,
        },
        Scope::System,
        vec![op(
            ReverseKind::RmFileSystem,
            Scope::System,
            &["/opt/demo/banner"],
        )],
    ));
    // The user's own steps.
    let mut mkdir = task(TaskVerb::Mkdir {
        path: "${HOME}/.local/bin".into(),
    });
    mkdir.mode = Some("0700".into());
    steps.push(step(
        Action::Task {
            task: mkdir,
            run_as: RunAs::TargetUser,
            ctx_files: None,
        },
        Scope::User,
        vec![],
    ));
    steps.push(step(
        Action::File {
            source: "config".into(),
            dest: "~/.config/sway/config".into(),
            mode: "0644".into(),
            run_as: RunAs::TargetUser,
        },
        Scope::User,
        vec![op(
            ReverseKind::RmFileUser,
            Scope::User,
            &["~/.config/sway/config"],
        )],
    ));
    steps.push(task_step(
        TaskVerb::Cmd {
            body: "cargo install taplo-cli --locked".into(),
        },
        Scope::User,
        vec![],
    ));
    steps.push(task_step(
        TaskVerb::Build { what: "all".into() },
        Scope::User,
        vec![],
    ));
    // A root cmd task run as the target user from a system script.
    steps.push(step(
        Action::Task {
            task: task(TaskVerb::Cmd {
                body: "echo \"hello from $(id -un)\"".into(),
            }),
            run_as: RunAs::TargetUser,
            ctx_files: None,
        },
        Scope::System,
        vec![],
    ));
    layer("config", steps)
}

fn service(name: &str) -> ServiceEntry {
    ServiceEntry {
        name: name.to_string(),
        enable: true,
        ..Default::default()
    }
}

/// Packaged and custom services, system and user.
pub fn services_layer() -> LayerPlan {
    let mut steps = Vec::new();
    let mut sshd = service("sshd");
    sshd.use_packaged = Some("sshd.service".into());
    sshd.overrides = Some(ServiceOverrides {
        env: vec![("OPTIONS".into(), "-p 2222 \"quoted\" 100%".into())],
        after: strings(&["network-online.target"]),
        exec: Some("/usr/sbin/sshd -D $OPTIONS".into()),
    });
    let mut packaged = step(
        Action::ServicePackaged {
            unit: "sshd.service".into(),
            enable: true,
            service: sshd,
        },
        Scope::System,
        vec![
            op(
                ReverseKind::ServiceDisable,
                Scope::System,
                &["sshd.service"],
            ),
            op(
                ReverseKind::RestoreEnabled,
                Scope::System,
                &["sshd.service"],
            ),
            op(
                ReverseKind::RemoveDropin,
                Scope::System,
                &["/etc/systemd/system/sshd.service.d/ov-services.conf"],
            ),
        ],
    );
    packaged.gate = Some(Gate::WithServices);
    steps.push(packaged);
    let mut sway = service("sway");
    sway.exec = Some("%(ENV_HOME)s/.local/bin/sway-wrapper --flag \"a b\" 50%".into());
    sway.env = vec![
        ("WLR_BACKENDS".into(), "headless".into()),
        ("XDG_RUNTIME_DIR".into(), "/tmp".into()),
    ];
    sway.restart = Some("always".into());
    sway.user = Some("${USER}".into());
    sway.working_directory = Some("%(ENV_HOME)s".into());
    sway.after = strings(&["dbus.service"]);
    sway.stop_timeout = Some("5".into());
    sway.supervisord = vec![
        ("priority".into(), "10".into()),
        ("start_secs".into(), "3".into()),
        ("stop_signal".into(), "TERM".into()),
    ];
    let mut custom = step(
        Action::ServiceCustom {
            unit: "ov-services-sway.service".into(),
            service: sway,
        },
        Scope::System,
        vec![
            op(
                ReverseKind::ServiceDisable,
                Scope::System,
                &["ov-services-sway.service"],
            ),
            op(
                ReverseKind::ServiceRemove,
                Scope::System,
                &["/etc/systemd/system/ov-services-sway.service"],
            ),
        ],
    );
    custom.gate = Some(Gate::WithServices);
    steps.push(custom);
    let mut agent = service("agent");
    agent.exec = Some("node %(ENV_HOME)s/agent/bridge.js --token=%(ENV_TOKEN)s".into());
    agent.restart = Some("on-failure".into());
    let mut user_custom = step(
        Action::ServiceCustom {
            unit: "ov-services-agent.service".into(),
            service: agent,
        },
        Scope::User,
        vec![
            op(
                ReverseKind::ServiceDisable,
                Scope::User,
                &["ov-services-agent.service"],
            ),
            op(
                ReverseKind::ServiceRemove,
                Scope::User,
                &["~/.config/systemd/user/ov-services-agent.service"],
            ),
        ],
    );
    user_custom.gate = Some(Gate::WithServices);
    steps.push(user_custom);
    layer("services", steps)
}

/// Builders (as the target user), and aur on Arch.
pub fn builders_layer(format: &str) -> LayerPlan {
    let builder = |builder, manifest: Option<&str>, packages: &[&str], reverse| {
        let mut s = step(
            Action::Builder {
                builder,
                manifest: manifest.map(String::from),
                packages: strings(packages),
                names: Vec::new(),
                crate_name: None,
                files: Vec::new(),
            },
            Scope::User,
            reverse,
        );
        s.venue = Venue::ContainerBuilder;
        s
    };
    // What lower reads from the fixture's layer directory.
    let with = |mut s: Step, names: &[&str], krate: Option<&str>, files: &[&str]| {
        if let Action::Builder {
            names: n,
            crate_name,
            files: f,
            ..
        } = &mut s.action
        {
            *n = strings(names);
            *crate_name = krate.map(String::from);
            *f = strings(files);
        }
        s
    };
    let mut steps = vec![
        with(
            builder(
                BuilderKind::Pixi,
                Some("pixi.toml"),
                &[],
                vec![op(ReverseKind::PixiEnvRemove, Scope::User, &["default"])],
            ),
            &[],
            None,
            &["build.sh", "pixi.toml"],
        ),
        with(
            builder(
                BuilderKind::Npm,
                Some("package.json"),
                &["@anthropic-ai/claude-code", "cowsay@1.6.0"],
                vec![op(ReverseKind::NpmUninstallG, Scope::User, &[])],
            ),
            &["@anthropic-ai/claude-code", "cowsay"],
            None,
            &["package.json"],
        ),
        with(
            builder(
                BuilderKind::Cargo,
                Some("Cargo.toml"),
                &[],
                // No reverse op, as the plan has none for cargo (crates are known after the build).
                vec![],
            ),
            &[],
            Some("ov-demo-tool"),
            &["Cargo.toml", "src/main.rs"],
        ),
    ];
    if format == "pac" {
        let mut aur = builder(
            BuilderKind::Aur,
            None,
            &["yay-bin", "visual-studio-code-bin"],
            vec![pkg_op(
                "pac",
                &strings(&["yay-bin", "visual-studio-code-bin"]),
            )],
        );
        aur.scope = Scope::System;
        steps.push(aur);
    }
    layer("builders", steps)
}

/// Skipped steps: a container-only key, a gated-off step and a step the plan marked skipped,
/// around one runnable step.
pub fn skipped_layer() -> LayerPlan {
    let mut only = step(
        Action::ContainerOnly {
            key: "ports".into(),
        },
        Scope::System,
        vec![],
    );
    only.venue = Venue::Skip;
    only.skip = Some(Skip {
        reason: "container-only key `ports`".into(),
        enable_with: None,
    });
    let mut marked = task_step(
        TaskVerb::Cmd {
            body: "echo never".into(),
        },
        Scope::System,
        vec![],
    );
    marked.gate = Some(Gate::AllowRootTasks);
    marked.skip = Some(Skip {
        reason: "requires --allow-root-tasks".into(),
        enable_with: Some(Gate::AllowRootTasks),
    });
    let runs = task_step(
        TaskVerb::Mkdir {
            path: "~/.cache/demo".into(),
        },
        Scope::User,
        vec![],
    );
    layer("skipped", vec![only, runs, marked, sys_step_dummy()])
}

fn sys_step_dummy() -> Step {
    let mut s = step(sys_pkgs("deb", &["hello"]), Scope::System, vec![]);
    s.skip = Some(Skip {
        reason: "deb section does not apply".into(),
        enable_with: None,
    });
    s
}

/// A plan with every step kind for `format`.
pub fn every_kind_plan(format: &str) -> InstallPlan {
    plan(
        format,
        vec![
            packages_layer(format),
            tasks_layer(),
            services_layer(),
            builders_layer(format),
            skipped_layer(),
        ],
    )
}

/// Render with the embedded templates.
pub fn render_plan(plan: &InstallPlan, root: &Path) -> Rendered {
    let engine = Engine::new(None).expect("embedded templates compile");
    match render(plan, root, &engine) {
        Ok(r) => r,
        Err(e) => panic!("render failed: {}", error_chain(&e)),
    }
}

/// Render `plan` (payload from the fixture project) and build its bundle, as `ov compile` does,
/// with a fixed test version and no `SOURCE_DATE_EPOCH`.
pub fn bundle_plan(plan: &InstallPlan) -> ov_compiler::bundle::Bundle {
    let rendered = render_plan(plan, &fixture_root());
    let engine = Engine::new(None).expect("embedded templates compile");
    ov_compiler::bundle::build(
        plan,
        &rendered,
        &engine,
        &ov_compiler::bundle::BundleOptions {
            source_date_epoch: None,
            ov_version: "0.0.0-test".to_string(),
            ..Default::default()
        },
    )
    .expect("bundle builds")
}

/// An error with its sources, one per line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(&format!("\n  caused by: {s}"));
        cur = s.source();
    }
    out
}

/// Every script of a render as (bundle path, text): step scripts and undo scripts.
pub fn all_scripts(r: &Rendered) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, l) in r.layers.iter().enumerate() {
        let dir = format!("layers/{:02}-{}", i + 1, l.name);
        for s in &l.scripts {
            out.push((format!("{dir}/{}", s.file_name), s.content.clone()));
            let check = s.file_name.replace(".sh", ".check.sh");
            out.push((format!("{dir}/{check}"), s.check.clone()));
        }
        out.push((format!("{dir}/undo.sh"), l.undo.clone()));
    }
    out
}

/// Check a script with a shell tool reading it from a file; returns its diagnostics on failure.
fn check_with(tool: &str, args: &[&str], name: &str, text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join(name.replace('/', "_"));
    std::fs::write(&file, text).map_err(|e| e.to_string())?;
    let out = Command::new(tool)
        .args(args)
        .arg(&file)
        .output()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} rejects {name}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn bash_n(name: &str, text: &str) -> Result<(), String> {
    check_with("bash", &["-n"], name, text)
}

pub fn shellcheck(name: &str, text: &str) -> Result<(), String> {
    check_with("shellcheck", &["-S", "warning", "-s", "bash"], name, text)
}

// ---- the sandbox ----------------------------------------------------------------------------

/// A stand-in for the runtime part of lib.sh (written by `bundle`): just what step scripts and
/// undo scripts use from it. Tests run everything as root with OV_USER=root.
pub const RUNTIME_SHIM: &str = r#"#!/usr/bin/env bash
# test stand-in for the runtime part of lib.sh
ov_as_user() { "$@"; }
ov_locale_caller() { :; }
ov_locale_own() { :; }
# shellcheck disable=SC2034 # a nameref: the caller's array
ov_user_env_v() { local -n ov_ue=$1; ov_ue=("PATH=$PATH" "STUB_LOG=$STUB_LOG" "STUB_DB=$STUB_DB"); }
# The architecture and Fedora release variables the runtime part sets.
: "${BUILD_ARCH:=$(uname -m)}"
case $BUILD_ARCH in x86_64) OV_ARCH=amd64 ;; aarch64) OV_ARCH=arm64 ;; *) OV_ARCH=$BUILD_ARCH ;; esac
[ -n "${OV_FEDORA_RELEASE+x}" ] || OV_FEDORA_RELEASE=$(rpm -E %fedora 2>/dev/null || true)
export BUILD_ARCH OV_ARCH OV_FEDORA_RELEASE
"#;

/// Shared by the stubs: the stub variables come from the environment, or — where the bundle
/// runtime has cleaned it (run.sh keeps only a documented set) — from `/etc/ov-stub.env`, which
/// `Sandbox::run_raw` writes inside its namespace.
const STUB_ENV: &str = r#"[ -n "${STUB_LOG:-}" ] || . /etc/ov-stub.env
"#;

/// Shared by the stubs: whether a package is "installed" (in `$STUB_INSTALLED` or `$STUB_DB`).
const STUB_PRELUDE: &str = r#"stub_has() { case " ${STUB_INSTALLED:-} " in *" $1 "*) return 0 ;; esac; [ -f "$STUB_DB" ] && grep -qxF -- "$1" "$STUB_DB"; }
"#;

/// Fake tools: log every call to "$STUB_LOG"; query tools answer from "$STUB_INSTALLED";
/// `ov_pwn` marks that layer text was executed.
const STUBS: &[(&str, &str)] = &[
    ("ov_pwn", r#"touch "$OV_PWN_MARK""#),
    (
        "apt-get",
        r#"case $1 in install) for a in "$@"; do case $a in -*|install|--) ;; *) echo "$a" >> "$STUB_DB" ;; esac; done ;; purge) [ -n "${STUB_FAIL_PURGE:-}" ] && exit 100; for a in "$@"; do sed -i "/^$a\$/d" "$STUB_DB"; done ;; -s) shift; while [ "${1#-}" != "$1" ]; do shift; [ "$1" = Debug::NoLocking=1 ] && shift; done; [ "$1" = purge ] && for a in "$@"; do case $a in -*|purge) ;; *) echo "Purg $a" ;; esac; done ;; esac; exit 0"#,
    ),
    ("add-apt-repository", "exit 0"),
    (
        "dpkg-query",
        r#"case "$*" in *Status-Abbrev*) { printf '%s\n' ${STUB_INSTALLED:-}; [ -f "$STUB_DB" ] && cat "$STUB_DB"; } | sed 's/^/ii  /'; exit 0 ;; esac; if stub_has "${!#}"; then echo "install ok installed"; else exit 1; fi"#,
    ),
    (
        "pacman",
        r#"case $1 in -Q) stub_has "${!#}" ;; -S*) for a in "$@"; do case $a in -*) ;; *) echo "$a" >> "$STUB_DB" ;; esac; done ;; -R*) for a in "$@"; do sed -i "/^$a\$/d" "$STUB_DB"; done ;; esac"#,
    ),
    ("pacman-key", "exit 0"),
    (
        "rpm",
        r#"case $1 in -E) echo 43 ;; -q) stub_has "${!#}" ;; -qp) printf release ;; esac"#,
    ),
    (
        "dnf",
        r#"case $1 in install) for a in "$@"; do case $a in -*|install) ;; *.rpm) echo release >> "$STUB_DB" ;; *) echo "$a" >> "$STUB_DB" ;; esac; done ;; remove) for a in "$@"; do sed -i "/^$a\$/d" "$STUB_DB"; done ;; esac"#,
    ),
    (
        "systemctl",
        r#"case " $* " in *" is-enabled "*) case " ${STUB_ENABLED:-} " in *" ${!#} "*) s=enabled r=0 ;; *) s=disabled r=1 ;; esac; case " $* " in *" --quiet "*) ;; *) echo "$s" ;; esac; exit "$r" ;; esac"#,
    ),
    ("gpg", "cat"),
    (
        "getcap",
        r#"[ -n "${STUB_CAPS:-}" ] && echo "${!#} cap_sys_nice=ep"; exit 0"#,
    ),
    ("setcap", "exit 0"),
    ("npm", "exit 0"),
    ("cargo", "exit 0"),
    (
        "pixi",
        r#"for a; do case $a in */pixi.toml) mkdir -p "$(dirname "$a")/.pixi/envs/default/bin" && touch "$(dirname "$a")/.pixi/envs/default/bin/mcp-proxy" ;; esac; done"#,
    ),
    ("yay", "exit 0"),
    ("makepkg", "exit 0"),
    ("git", "exit 0"),
    (
        "runuser",
        r#"while [ "$1" != -- ]; do shift; done; shift; exec "$@""#,
    ),
    (
        "curl",
        r#"out=; url=; while [ $# -gt 0 ]; do case $1 in -o) out=$2; shift ;; -*) ;; *) url=$1 ;; esac; shift; done
case $url in
  *.tar.gz) tar -czf "$out" -C "$STUB_TREE" uv-x86_64 ;;
  *.zip|*.zip\?*) (cd "$STUB_TREE" && zip -qr "$out" tools) ;;
  *.sh) printf 'echo installer ran >> "$STUB_LOG"\n' > "$out" ;;
  *) printf 'downloaded\n' > "$out" ;;
esac"#,
    ),
];

/// What [`Sandbox::run`] does.
#[derive(Default)]
pub struct RunSpec {
    /// How many times every layer's scripts run (a second round checks idempotency).
    pub rounds: usize,
    /// Shell run after the install rounds.
    pub between: String,
    /// Run the undo scripts afterwards.
    pub undo: bool,
    /// Shell run at the end.
    pub after: String,
    /// Extra environment (e.g. `STUB_INSTALLED`).
    pub env: Vec<(String, String)>,
}

/// Shell for the sandbox's mount namespace: unit directories of its own, so that how a unit name
/// resolves does not depend on the host's units. They hold Debian's `ssh.service`, which declares
/// `Alias=sshd.service`, enabled (the alias link exists), as on Debian 12.
const SANDBOX_UNITS: &str = r#"
for d in /etc/systemd/system /usr/lib/systemd/system; do
  mkdir -p "$d" && mount -t tmpfs tmpfs "$d" || exit 93
done
if [ ! -L /lib ] && [ -d /lib/systemd/system ]; then
  mount -t tmpfs tmpfs /lib/systemd/system || exit 93
fi
printf '[Unit]\nDescription=OpenBSD Secure Shell server\n\n[Service]\nExecStart=/usr/sbin/sshd -D\n\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n' >/usr/lib/systemd/system/ssh.service
ln -s /usr/lib/systemd/system/ssh.service /etc/systemd/system/sshd.service
"#;

/// A scratch directory holding a bundle, stubs, a home and the state directories.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// Whether this machine can run the sandbox (root, `unshare`, overlayfs).
    pub fn available() -> bool {
        let ok = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "bash", "-c"])
            .arg(
                "d=$(mktemp -d) && mount -t tmpfs tmpfs \"$d\" && mkdir \"$d/u\" \"$d/w\" && \
                 mount -t overlay overlay -o \"lowerdir=/etc,upperdir=$d/u,workdir=$d/w\" /etc",
            )
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            assert!(
                !under_ci(),
                "the sandbox (root, unshare --mount, overlayfs) is required under CI"
            );
            eprintln!("skipping: cannot create a mount namespace with overlays here");
        }
        ok
    }

    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("ov-render-")
            .tempdir()
            .expect("tempdir");
        let s = Sandbox { dir };
        for sub in [
            "stubs",
            "home",
            "state",
            "run",
            "tmp",
            "tree/uv-x86_64",
            "tree/tools/bin",
            "xdg",
            "bundle",
        ] {
            std::fs::create_dir_all(s.path(sub)).expect("mkdir");
        }
        for f in [
            "uv-x86_64/uv",
            "uv-x86_64/uvx",
            "tools/bin/a",
            "tools/bin/b",
            "tools/bin/c",
        ] {
            std::fs::write(s.path(&format!("tree/{f}")), "#!/bin/sh\n").expect("tree");
        }
        std::fs::write(s.path("stub.log"), "").expect("log");
        for (name, body) in STUBS {
            let p = s.path(&format!("stubs/{name}"));
            std::fs::write(
                &p,
                format!(
                    "#!/usr/bin/env bash\n{STUB_ENV}printf '%s\\n' \"{name} $*\" >>\"$STUB_LOG\"\n{STUB_PRELUDE}{body}\n"
                ),
            )
            .expect("stub");
            set_mode(&p, 0o755);
        }
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn pwned(&self) -> bool {
        self.path("pwned").exists()
    }

    /// Lay out a render as a bundle: lib.sh (shim + step library), layer scripts, undo scripts,
    /// payload.
    pub fn write_bundle(&self, r: &Rendered) {
        let b = self.path("bundle");
        std::fs::write(b.join("lib.sh"), format!("{RUNTIME_SHIM}{}", r.step_lib)).expect("lib");
        for (path, text) in all_scripts(r) {
            let p = b.join(&path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, text).expect("script");
        }
        for l in &r.layers {
            for f in &l.payload {
                let p = b.join(&f.bundle_path);
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::copy(&f.source_path, &p).expect("payload");
            }
        }
    }

    /// Run every layer's scripts in order (`spec.rounds` times), then `spec.between`, then (with
    /// `spec.undo`) every undo script in reverse layer order, then `spec.after` — all inside one
    /// mount namespace, so the checks see the overlays. Returns (success, combined output).
    pub fn run(&self, spec: &RunSpec) -> (bool, String) {
        let t = self.dir.path().display().to_string();
        let mut script = String::new();
        for (k, v) in &spec.env {
            script.push_str(&format!("export {k}='{}'\n", v.replace('\'', "'\\''")));
        }
        script.push_str(&format!(
            r#"set -u
T={t}
mount -t tmpfs tmpfs "$T/tmp" || exit 90
for d in /etc /usr /var /opt /root /home; do
  [ -d "$d" ] || continue
  n=${{d//\//_}}
  mkdir -p "$T/tmp/ovl$n.u" "$T/tmp/ovl$n.w"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$T/tmp/ovl$n.u,workdir=$T/tmp/ovl$n.w" "$d" || exit 91
done
{units}export OV_BUNDLE="$T/bundle" OV_DEPLOY=vm:test OV_DEPLOY_ID=0123456789abcdef
export OV_USER=root OV_UID=0 OV_GID=0 OV_HOME="$T/home" HOME="$T/home" USER=root
export OV_LEDGER="$T/home/.config/overthink/installed" OV_RUN_DIR="$T/run"
export BUILD_ARCH=x86_64 DEBIAN_FRONTEND=noninteractive TMPDIR="$T/tmp"
export XDG_RUNTIME_DIR="$T/xdg" STUB_LOG="$T/stub.log" STUB_TREE="$T/tree" OV_PWN_MARK="$T/pwned"
export STUB_DB="$T/stub.db"
export PATH="$T/stubs:$PATH"
mkdir -p "$T/out"
status=0
layers=("$OV_BUNDLE"/layers/*/)
for round in $(seq {rounds}); do
  for l in "${{layers[@]}}"; do
    name=$(basename "$l"); name=${{name#??-}}
    export OV_LAYER="$name" OV_STATE="$T/state/$name"
    mkdir -p "$OV_STATE"
    for s in "$l"[0-9][0-9]-*.sh; do
      [ -e "$s" ] || continue
      case $s in *.check.sh) continue ;; esac
      echo "== run $s (round $round)"
      bash "$s" </dev/null || {{ echo "== FAILED $s ($?)"; status=1; }}
    done
  done
done
"#,
            rounds = spec.rounds,
            units = SANDBOX_UNITS,
        ));
        script.push_str(&spec.between);
        script.push('\n');
        if spec.undo {
            script.push_str(
                r#"for ((i=${#layers[@]}-1; i>=0; i--)); do
  l=${layers[$i]}; name=$(basename "$l"); name=${name#??-}
  export OV_LAYER="$name" OV_STATE="$T/state/$name"
  echo "== undo $l"
  bash "$l/undo.sh" </dev/null || { echo "== UNDO FAILED $l ($?)"; status=1; }
done
"#,
            );
        }
        script.push_str(&spec.after);
        script.push_str("\nexit $status\n");
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "bash", "-c", &script])
            .output()
            .expect("unshare runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Run `body` inside a fresh mount namespace with the overlays, the stubs first in PATH and the
    /// stub variables set (nothing else: no OV_* variables). Returns (success, combined output).
    pub fn run_raw(&self, body: &str, env: &[(&str, &str)]) -> (bool, String) {
        let t = self.dir.path().display().to_string();
        let mut script = String::new();
        for (k, v) in env {
            script.push_str(&format!("export {k}='{}'\n", v.replace('\'', "'\\''")));
        }
        script.push_str(&format!(
            r#"set -u
T={t}
mount -t tmpfs -o mode=1777 tmpfs "$T/tmp" || exit 90
for d in /etc /usr /var /opt /root /home; do
  [ -d "$d" ] || continue
  n=${{d//\//_}}
  mkdir -p "$T/tmp/ovl$n.u" "$T/tmp/ovl$n.w"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$T/tmp/ovl$n.u,workdir=$T/tmp/ovl$n.w" "$d" || exit 91
done
{units}export STUB_LOG="$T/stub.log" STUB_TREE="$T/tree" OV_PWN_MARK="$T/pwned" STUB_DB="$T/stub.db"
export TMPDIR="$T/tmp" PATH="$T/stubs:$PATH"
# run.sh runs steps with the standard PATH and a clean environment: the stubs go first in that
# PATH (/usr/local/sbin, in the /usr overlay) and their variables into a file they read.
cp -- "$T"/stubs/* /usr/local/sbin/ || exit 92
declare -p STUB_LOG STUB_TREE OV_PWN_MARK STUB_DB STUB_INSTALLED 2>/dev/null | sed 's/^declare -x/export/' > /etc/ov-stub.env
chmod 0644 /etc/ov-stub.env
mkdir -p "$T/out"
"#,
            units = SANDBOX_UNITS,
        ));
        script.push_str(body);
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "bash", "-c", &script])
            .output()
            .expect("unshare runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Let another account use the sandbox (its stubs, log and scratch files).
    pub fn open_to_all(&self) {
        for rel in [
            "",
            "stubs",
            "tree",
            "tree/uv-x86_64",
            "tree/tools",
            "tree/tools/bin",
            "out",
        ] {
            let _ = std::fs::create_dir_all(self.path(rel));
            set_mode(&self.path(rel), 0o755);
        }
        for rel in ["stub.log", "stub.db"] {
            let p = self.path(rel);
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p);
            set_mode(&p, 0o666);
        }
    }

    /// A file the run wrote under the sandbox (e.g. `out/...`), or "" when absent.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    pub fn stub_log(&self) -> String {
        std::fs::read_to_string(self.path("stub.log")).unwrap_or_default()
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
