//! Test fixture for the `bundle` stage: an InstallPlan and hand-written `Rendered` scripts that
//! follow `docs/bundle-runtime.md`, with payload files written into a directory the test owns.
//!
//! Two flavours: [`safe`] only touches files under a directory the test names (so a bundle that
//! wrongly runs on the test machine does no harm), [`debian`] really installs a package and writes
//! system and user files (for the chroot test in `tests/it`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ov_compiler::plan::ServiceEntry;
use ov_compiler::plan::{
    Action, Deploy, Gate, Gates, InstallPlan, LayerPlan, ReverseKind, ReverseOp, Scope, Skip, Step,
    TargetDistro, TargetKind, Venue, FORMAT_VERSION,
};
use ov_compiler::render::{PayloadFile, Rendered, RenderedLayer, RenderedScript};

/// The deploy id of every fixture.
pub const DEPLOY_ID: &str = "0123456789abcdef";

fn header(layer: &str, scope: &str) -> String {
    format!(
        "#!/usr/bin/env bash\n# layer {layer}, {scope} script (test fixture)\nset -euo pipefail\n. \"${{OV_BUNDLE}}/lib.sh\"\n"
    )
}

fn script(layer: &str, n: u32, scope: Scope, body: &str, steps: &[&str]) -> RenderedScript {
    RenderedScript {
        file_name: format!("{n:02}-{}.sh", scope.as_str()),
        scope,
        venue: Venue::HostNative,
        content: format!("{}{body}", header(layer, scope.as_str())),
        // The fixture's scripts are hand-written; they have no check scripts.
        check: String::new(),
        steps: steps.iter().map(|s| s.to_string()).collect(),
    }
}

fn undo(layer: &str, body: &str) -> String {
    format!(
        "#!/usr/bin/env bash\n# layer {layer}, undo script (test fixture)\nset -uo pipefail\n. \"${{OV_BUNDLE}}/lib.sh\"\nov_rc=0\n{body}exit \"$ov_rc\"\n"
    )
}

fn step(action: Action, scope: Scope) -> Step {
    Step::new(action, scope, Vec::new())
}

fn rev(kind: ReverseKind, scope: Scope, targets: &[&str]) -> ReverseOp {
    ReverseOp {
        kind,
        format: None,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        scope,
        extra: BTreeMap::new(),
    }
}

fn task_write(path: &str, content: &str) -> Action {
    Action::Task {
        task: ov_compiler::plan::Task {
            verb: ov_compiler::plan::TaskVerb::Write {
                path: path.into(),
                content: content.into(),
            },
            user: None,
            mode: None,
            env: Vec::new(),
            comment: None,
            uninstall: Vec::new(),
            pos: Default::default(),
        },
        run_as: ov_compiler::plan::RunAs::Root,
        ctx_files: None,
    }
}

fn deploy(name: &str, user: Option<&str>) -> Deploy {
    Deploy {
        name: name.into(),
        id: DEPLOY_ID.into(),
        target: TargetKind::Vm { vm: "test".into() },
        distro: TargetDistro {
            tags: vec!["debian:12".into(), "debian".into()],
            formats: vec!["deb".into()],
        },
        user: user.map(str::to_string),
        requested: vec!["task".into()],
    }
}

fn write_payload(dir: &Path, rel: &str, data: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("payload dir");
    std::fs::write(&p, data).expect("payload");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

/// Modes of the payload files, to imitate another umask or checkout.
#[derive(Clone, Copy)]
pub struct PayloadModes {
    /// Mode of the plain payload file.
    pub plain: u32,
    /// Mode of the executable payload file.
    pub exec: u32,
}

impl Default for PayloadModes {
    fn default() -> Self {
        PayloadModes {
            plain: 0o644,
            exec: 0o755,
        }
    }
}

/// Three harmless layers: every script only appends its name to `<marker_dir>/ran` and copies a
/// payload file there; one layer has a gated-off step and a container-only key.
pub fn safe(payload_dir: &Path, marker_dir: &Path, modes: PayloadModes) -> (InstallPlan, Rendered) {
    let m = ov_compiler::shell::quote(&marker_dir.to_string_lossy()).expect("quotable");
    let conf = write_payload(
        payload_dir,
        "alpha/conf/alpha.conf",
        "alpha=1\n",
        modes.plain,
    );
    let tool = write_payload(
        payload_dir,
        "alpha/bin/tool",
        "#!/bin/sh\necho tool\n",
        modes.exec,
    );
    let other = write_payload(payload_dir, "beta/readme.md", "# beta\n", modes.plain);
    let names = ["alpha", "beta", "gamma"];
    let mut layers = Vec::new();
    let mut rendered = Vec::new();
    for name in names {
        let mut steps = vec![step(task_write("/tmp/x", "x"), Scope::System)];
        steps[0]
            .reverse
            .push(rev(ReverseKind::RmFileSystem, Scope::System, &["/tmp/x"]));
        if name == "beta" {
            let mut gated = step(
                Action::ServiceCustom {
                    unit: "ov-beta-web.service".into(),
                    service: ServiceEntry::default(),
                },
                Scope::System,
            );
            gated.gate = Some(Gate::WithServices);
            gated.venue = Venue::Skip;
            gated.skip = Some(Skip {
                reason: "requires --with-services".into(),
                enable_with: Some(Gate::WithServices),
            });
            steps.push(gated);
            let mut co = step(
                Action::ContainerOnly {
                    key: "ports".into(),
                },
                Scope::System,
            );
            co.venue = Venue::Skip;
            co.skip = Some(Skip {
                reason: "container-only key".into(),
                enable_with: None,
            });
            steps.push(co);
        }
        layers.push(LayerPlan {
            name: name.into(),
            version: (name == "alpha").then(|| "2025.001.0000".to_string()),
            source: format!("layers/{name}"),
            origin: ov_compiler::plan::LayerOrigin::Local {
                path: format!("layers/{name}"),
            },
            source_dir: None,
            steps,
            checks: Vec::new(),
        });
        let sys = format!("mkdir -p {m}\nprintf '%s\\n' \"$OV_LAYER\" >>{m}/ran\n");
        let mut scripts = vec![script(name, 1, Scope::System, &sys, &["write /tmp/x"])];
        let mut payload = Vec::new();
        if name == "alpha" {
            scripts.push(script(
                name,
                2,
                Scope::User,
                &format!("cp \"$OV_BUNDLE/files/alpha/conf/alpha.conf\" {m}/\n"),
                &["copy conf/alpha.conf"],
            ));
            payload.push(PayloadFile {
                bundle_path: "files/alpha/conf/alpha.conf".into(),
                source_path: conf.clone(),
            });
            payload.push(PayloadFile {
                bundle_path: "files/alpha/bin/tool".into(),
                source_path: tool.clone(),
            });
        }
        if name == "beta" {
            payload.push(PayloadFile {
                bundle_path: "files/beta/readme.md".into(),
                source_path: other.clone(),
            });
        }
        rendered.push(RenderedLayer {
            name: name.into(),
            scripts,
            undo: undo(name, &format!("rm -f {m}/ran || ov_rc=1\n")),
            payload,
        });
    }
    let plan = InstallPlan {
        format_version: FORMAT_VERSION,
        deploy: deploy("vm:test", Some("tester")),
        gates: Gates::default(),
        layers,
    };
    let rendered = Rendered {
        layers: rendered,
        step_lib: "# fixture step helpers\nov_fixture_helper() {\n\tprintf '%s\\n' \"$1\"\n}\n"
            .into(),
        lib_core_only: false,
        overridden_templates: vec![
            ("steps/b.sh.j2".into(), "bb".repeat(32)),
            ("steps/a.sh.j2".into(), "aa".repeat(32)),
        ],
    };
    (plan, rendered)
}

/// A real Debian deploy for user `tester`: `hello` installs the `hello` package; `files` installs a
/// system file and two user files from the payload; `gate` fails unless `/etc/ov-test-allow`
/// exists; `env` writes an env.d file and the managed block; `task` counts its runs.
pub fn debian(payload_dir: &Path) -> (InstallPlan, Rendered) {
    let sys_conf = write_payload(payload_dir, "files/system.conf", "system=yes\n", 0o644);
    let user_conf = write_payload(payload_dir, "files/user.conf", "user=yes\n", 0o600);
    let greet = write_payload(
        payload_dir,
        "files/bin/greet",
        "#!/bin/sh\necho \"greetings from ov\"\n",
        0o755,
    );
    let mut layers = Vec::new();
    let mut rendered = Vec::new();
    let mut add = |name: &str,
                   steps: Vec<Step>,
                   scripts: Vec<RenderedScript>,
                   undo_body: &str,
                   payload: Vec<PayloadFile>| {
        layers.push(LayerPlan {
            name: name.into(),
            version: None,
            source: format!("layers/{name}"),
            origin: ov_compiler::plan::LayerOrigin::Local {
                path: format!("layers/{name}"),
            },
            source_dir: None,
            steps,
            checks: Vec::new(),
        });
        rendered.push(RenderedLayer {
            name: name.into(),
            scripts,
            undo: undo(name, undo_body),
            payload,
        });
    };

    let mut pkg = step(
        Action::SystemPackages {
            format: "deb".into(),
            packages: vec!["hello".into()],
            options: vec![],
            repos: vec![],
            keys: vec![],
            copr: vec![],
            modules: vec![],
            exclude: vec![],
        },
        Scope::System,
    );
    let mut op = rev(ReverseKind::PackageRemove, Scope::System, &["hello"]);
    op.format = Some("deb".into());
    pkg.reverse.push(op);
    add(
        "hello",
        vec![pkg],
        vec![script(
            "hello",
            1,
            Scope::System,
            concat!(
                "if ! dpkg-query -W -f='${Status}' hello 2>/dev/null | grep -q 'install ok installed'; then\n",
                "\tprintf 'hello\\n' >>\"$OV_STATE/packages\"\n",
                "\tapt-get install -y --no-install-recommends hello </dev/null\n",
                "fi\n",
            ),
            &["deb: 1 packages (install)"],
        )],
        concat!(
            "if [[ -s $OV_STATE/packages ]]; then\n",
            "\tmapfile -t ov_pkgs <\"$OV_STATE/packages\"\n",
            "\tapt-get purge -y \"${ov_pkgs[@]}\" </dev/null || ov_rc=1\n",
            "fi\n",
        ),
        vec![],
    );

    add(
        "files",
        vec![step(task_write("/etc/ov-test/system.conf", "x"), Scope::System)],
        vec![
            script(
                "files",
                1,
                Scope::System,
                "install -D -m 0644 \"$OV_BUNDLE/files/files/system.conf\" /etc/ov-test/system.conf\n",
                &["copy system.conf to /etc/ov-test/system.conf"],
            ),
            script(
                "files",
                2,
                Scope::User,
                concat!(
                    "install -D -m 0600 \"$OV_BUNDLE/files/files/user.conf\" \"$HOME/.config/ov-test/user.conf\"\n",
                    "install -D -m 0755 \"$OV_BUNDLE/files/files/bin/greet\" \"$HOME/.local/bin/greet\"\n",
                ),
                &["copy user.conf", "copy bin/greet"],
            ),
        ],
        concat!(
            "rm -f /etc/ov-test/system.conf || ov_rc=1\n",
            "rmdir /etc/ov-test 2>/dev/null || true\n",
            "ov_as_user rm -f \"$OV_HOME/.config/ov-test/user.conf\" \"$OV_HOME/.local/bin/greet\" || ov_rc=1\n",
            "ov_as_user rmdir \"$OV_HOME/.config/ov-test\" \"$OV_HOME/.local/bin\" \"$OV_HOME/.local\" 2>/dev/null || true\n",
        ),
        vec![
            PayloadFile {
                bundle_path: "files/files/system.conf".into(),
                source_path: sys_conf,
            },
            PayloadFile {
                bundle_path: "files/files/user.conf".into(),
                source_path: user_conf,
            },
            PayloadFile {
                bundle_path: "files/files/bin/greet".into(),
                source_path: greet,
            },
        ],
    );

    add(
        "gate",
        vec![step(task_write("/var/lib/ov-test-gate", ""), Scope::System)],
        vec![script(
            "gate",
            1,
            Scope::System,
            concat!(
                "if [[ ! -f /etc/ov-test-allow ]]; then\n",
                "\techo 'gate: /etc/ov-test-allow is missing' >&2\n",
                "\texit 42\n",
                "fi\n",
                "touch /var/lib/ov-test-gate\n",
            ),
            &["cmd: check /etc/ov-test-allow"],
        )],
        "rm -f /var/lib/ov-test-gate || ov_rc=1\n",
        vec![],
    );

    add(
        "env",
        vec![step(
            Action::ShellHook {
                env: vec![("OV_TEST_GREETING".into(), "hello world".into())],
                path_append: vec!["~/.local/bin".into()],
            },
            Scope::UserProfile,
        )],
        vec![script(
            "env",
            1,
            Scope::UserProfile,
            concat!(
                "mkdir -p \"$HOME/.config/overthink/env.d\"\n",
                "printf '%s\\n' \"export OV_TEST_GREETING='hello world'\" 'export PATH=\"$PATH:$HOME/.local/bin\"' ",
                ">\"$HOME/.config/overthink/env.d/env.env\"\n",
                "ov_profile_block_ensure \"$HOME/.profile\"\n",
                "ov_profile_block_ensure \"$HOME/.bashrc\"\n",
            ),
            &["env=~/.config/overthink/env.d/env.env"],
        )],
        "",
        vec![],
    );

    add(
        "task",
        vec![step(task_write("/var/lib/ov-test/task-count", ""), Scope::System)],
        vec![
            script(
                "task",
                1,
                Scope::System,
                "mkdir -p /var/lib/ov-test\nprintf '%s\\n' \"$OV_USER\" >>/var/lib/ov-test/task-count\n",
                &["cmd: count runs"],
            ),
            script(
                "task",
                2,
                Scope::User,
                "printf '%s %s %s\\n' \"$(id -un)\" \"$OV_ARCH\" \"$BUILD_ARCH\" >\"$HOME/task-user.txt\"\n",
                &["cmd: who am i"],
            ),
        ],
        concat!(
            "rm -f /var/lib/ov-test/task-count || ov_rc=1\n",
            "rmdir /var/lib/ov-test 2>/dev/null || true\n",
            "ov_as_user rm -f \"$OV_HOME/task-user.txt\" || ov_rc=1\n",
        ),
        vec![],
    );

    let plan = InstallPlan {
        format_version: FORMAT_VERSION,
        deploy: deploy("vm:debian-test", Some("tester")),
        gates: Gates::default(),
        layers,
    };
    let rendered = Rendered {
        layers: rendered,
        step_lib: String::new(),
        lib_core_only: true,
        overridden_templates: vec![],
    };
    (plan, rendered)
}

/// Whether an external tool is there; without it a test prints why it skips, but under `CI` the
/// absence is a failure.
pub fn have_tool(name: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("`{name}` is required under CI but is not installed");
        }
        eprintln!("skipping: `{name}` is not installed");
    }
    found
}

/// Build a bundle with default options.
pub fn build(plan: &InstallPlan, rendered: &Rendered) -> ov_compiler::bundle::Bundle {
    let engine = ov_compiler::render::Engine::new(None).expect("engine");
    ov_compiler::bundle::build(plan, rendered, &engine, &options(None)).expect("bundle builds")
}

/// Options with a fixed `ov` version.
pub fn options(epoch: Option<u64>) -> ov_compiler::bundle::BundleOptions {
    ov_compiler::bundle::BundleOptions {
        source_date_epoch: epoch,
        ov_version: "0.1.0-test".into(),
        ..Default::default()
    }
}
