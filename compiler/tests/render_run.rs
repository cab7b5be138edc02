//! Stage `render`: the rendered scripts *do* what they say. The every-kind deb plan runs twice
//! (idempotency) in a sandbox — a private mount namespace with throw-away overlays on /etc, /usr,
//! /var, /opt, /root, /home, and stubbed package and service managers — then its undo scripts
//! run; files, env.d, the managed profile block, unit files and the recorded run-time facts are
//! checked after each phase.

mod render_support;

use ov_compiler::plan::Action;
use render_support::*;

/// What the checks between install and undo copy out of the overlays.
const AFTER_INSTALL: &str = r#"
cp /etc/demo/motd "$T/out/motd"; stat -c %a /etc/demo/motd > "$T/out/motd.mode"
readlink /usr/local/bin/demo-motd > "$T/out/link"
ls /usr/local/bin > "$T/out/usrlocalbin"
stat -c %a /usr/local/bin/sshd-wrapper > "$T/out/wrapper.mode"
cat /etc/apt/sources.list.d/nodesource.list /etc/apt/sources.list.d/backports.list > "$T/out/sources"
ls /etc/apt/keyrings > "$T/out/keyrings"
cp /etc/systemd/system/ov-services-sway.service "$T/out/sway.service"
cp /etc/systemd/system/sshd.service.d/ov-services.conf "$T/out/dropin"
cp /etc/demo/banner "$T/out/ctx-banner"
ls /opt/tools > "$T/out/opt-tools" 2>/dev/null
ls -R /usr/local/lib/ov-demo > "$T/out/ov-demo" 2>/dev/null
cp "$OV_HOME/.config/sway/config" "$T/out/sway-config"
cp "$OV_HOME/.config/overthink/env.d/tools.env" "$T/out/tools.env"
env -i HOME="$OV_HOME" PATH=/usr/bin:/bin bash -c '. "$HOME/.profile"; printf %s "$NPM_CONFIG_PREFIX"' > "$T/out/profile-probe"
"#;

const AFTER_UNDO: &str = r#"
for f in /etc/demo/motd /usr/local/bin/demo-motd /usr/local/bin/uv /usr/local/bin/uvx \
         /usr/local/bin/sshd-wrapper /usr/local/bin/cosign /etc/apt/sources.list.d/nodesource.list \
         /etc/apt/sources.list.d/backports.list /etc/apt/sources.list.d/ov-extra.list \
         /etc/apt/keyrings/nodesource.gpg /etc/systemd/system/ov-services-sway.service \
         /etc/systemd/system/sshd.service.d/ov-services.conf /usr/local/lib/ov-demo \
         /etc/apt/keyrings/docker.gpg; do
  if [ -e "$f" ] || [ -L "$f" ]; then echo "$f" >> "$T/out/left-behind"; fi
done
[ -d /usr/local/bin ] && echo yes > "$T/out/usrlocalbin-kept"
echo done > "$T/out/after-undo-checked"
"#;

#[test]
fn install_twice_then_undo() {
    if !Sandbox::available() {
        return;
    }
    let mut plan = every_kind_plan("deb");
    let zip = have_tool("zip", &["-v"]) && have_tool("unzip", &["-v"]);
    if !zip {
        // The zip download needs zip (for the stub) and unzip (for the script).
        for l in &mut plan.layers {
            l.steps.retain(|s| !matches!(&s.action, Action::Task { task, .. } if format!("{:?}", task.verb).contains(".zip")));
        }
    }
    let sb = Sandbox::new();
    std::fs::write(sb.path("home/.bashrc"), "alias ll='ls -l'\n").expect("bashrc");
    let r = render_plan(&plan, &fixture_root());
    sb.write_bundle(&r);
    let (ok, out) = sb.run(&RunSpec {
        rounds: 2,
        between: AFTER_INSTALL.to_string(),
        undo: true,
        after: AFTER_UNDO.to_string(),
        env: vec![
            ("STUB_INSTALLED".into(), "jq".into()),
            ("STUB_ENABLED".into(), "ssh.service".into()),
        ],
    });
    assert!(ok, "run failed:\n{out}\n--- stub log\n{}", sb.stub_log());
    assert!(!sb.pwned(), "layer text was executed");

    // Tasks and files.
    assert_eq!(
        sb.read("out/motd"),
        "Welcome — it's $(not run) `here`\n'\\''\n"
    );
    assert_eq!(sb.read("out/motd.mode").trim(), "640");
    assert_eq!(sb.read("out/link").trim(), "/etc/demo/motd");
    let bin = sb.read("out/usrlocalbin");
    for f in ["uv", "uvx", "cosign", "sshd-wrapper", "demo-motd"] {
        assert!(
            bin.lines().any(|l| l == f),
            "{f} not in /usr/local/bin: {bin}"
        );
    }
    assert_eq!(sb.read("out/wrapper.mode").trim(), "755");
    assert!(
        sb.read("out/ov-demo").contains("uv-x86_64:\nuv\nuvx\n"),
        "{}",
        sb.read("out/ov-demo")
    );
    assert_eq!(sb.read("out/keyrings"), "docker.gpg\nnodesource.gpg\n");
    assert_eq!(
        sb.read("out/ctx-banner"),
        "a banner shipped in the layer directory\n",
        "/ctx/ resolves to the payload"
    );
    if zip {
        assert_eq!(
            sb.read("out/opt-tools"),
            "a\nb\n",
            "zip members filtered by include"
        );
    }
    assert_eq!(
        sb.read("out/sway-config"),
        std::fs::read_to_string(fixture_root().join("layers/config/config")).expect("fixture")
    );

    // Packages: only what was missing is recorded; apt-get update once per run.
    assert_eq!(sb.read("state/tools/packages.deb"), "ripgrep\n");
    let log = sb.stub_log();
    let updates = log
        .lines()
        .filter(|l| l.starts_with("apt-get update"))
        .count();
    assert_eq!(
        updates, 2,
        "one update per run of the prepare+install pair:\n{log}"
    );
    assert!(
        sb.read("out/sources").contains(
            "deb [signed-by=/etc/apt/keyrings/nodesource.gpg] https://deb.nodesource.com/node_20.x nodistro main\n"
        ),
        "{}",
        sb.read("out/sources")
    );
    assert!(sb
        .read("out/sources")
        .contains("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main\n"));

    // env.d: values come back exactly; PATH entries are added once, even when sourced twice.
    let envd = sb.path("out/tools.env");
    let home = sb.path("home").display().to_string();
    for shell in ["bash", "sh"] {
        let probe = std::process::Command::new(shell)
            .arg("-c")
            .arg(". \"$1\"; . \"$1\"; printf '%s|%s|%s' \"$GREETING\" \"$NPM_CONFIG_PREFIX\" \"$PATH\"")
            .arg(shell)
            .arg(&envd)
            .env("PATH", "/usr/bin:/bin")
            .output()
            .expect("shell");
        assert_eq!(
            String::from_utf8_lossy(&probe.stdout),
            format!(
                "it's \"$fine\" `here`|{home}/.npm-global|/usr/bin:/bin:{home}/.npm-global/bin:{home}/.local/bin"
            ),
            "{shell}: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
    }

    // The managed block: in both files, once, user content kept, and it sources env.d.
    for f in [".profile", ".bashrc"] {
        let text = sb.read(&format!("home/{f}"));
        assert_eq!(text.matches("# overthink:begin").count(), 1, "{f}:\n{text}");
        assert_eq!(text.matches("# overthink:end").count(), 1, "{f}:\n{text}");
    }
    assert!(sb.read("home/.bashrc").starts_with("alias ll='ls -l'\n"));
    assert_eq!(sb.read("out/profile-probe"), format!("{home}/.npm-global"));

    // Services: the unit has the target's HOME; prior state is recorded.
    let unit = sb.read("out/sway.service");
    assert!(
        unit.contains(&format!(
            "ExecStart=\"{home}/.local/bin/sway-wrapper\" \"--flag\" \"a b\" \"50%%\"\n"
        )),
        "{unit}"
    );
    assert!(unit.contains("User=root\n"), "{unit}");
    assert!(sb
        .read("out/dropin")
        .contains("Environment=\"OPTIONS=-p 2222 \\\"quoted\\\" 100%%\"\n"));
    // `sshd.service` is the sandbox's alias of `ssh.service`: the real unit is what counts.
    assert_eq!(
        sb.read("state/services/services.prior-enabled"),
        "system ssh.service\n"
    );
    assert_eq!(
        sb.read("state/services/services.resolved"),
        "system sshd.service ssh.service\n"
    );
    assert_eq!(
        sb.read("state/services/services.enabled"),
        "system ov-services-sway.service\nuser ov-services-agent.service\n"
    );
    assert!(out.contains("systemd is not running here"), "{out}");
    // Builders.
    assert_eq!(
        sb.read("state/builders/npm.packages"),
        "@anthropic-ai/claude-code\ncowsay\n"
    );
    assert_eq!(sb.read("state/builders/cargo.crates"), "ov-demo-tool\n");
    assert!(
        log.contains(
            "npm install -g --no-fund --no-audit -- @anthropic-ai/claude-code cowsay@1.6.0"
        ),
        "{log}"
    );

    // Undo: what this deploy put there is gone; shared directories and packages that were
    // there before stay; services that were enabled before stay enabled.
    assert_eq!(sb.read("out/after-undo-checked"), "done\n");
    assert_eq!(sb.read("out/left-behind"), "", "left behind after undo");
    assert_eq!(sb.read("out/usrlocalbin-kept").trim(), "yes");
    assert!(!sb.path("home/.config/overthink/env.d/tools.env").exists());
    assert!(!sb.path("home/.config/sway/config").exists());
    assert!(!sb
        .path("home/.local/share/overthink/pixi/builders")
        .exists());
    let purges: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("apt-get purge"))
        .collect();
    assert_eq!(purges.len(), 1, "{out}\n--- stub log\n{log}");
    assert!(purges[0].ends_with("-- ripgrep"), "{}", purges[0]);
    assert!(
        log.contains("systemctl disable -- ov-services-sway.service"),
        "{log}"
    );
    assert!(!log.contains("systemctl disable -- ssh"), "{log}");
    assert!(
        log.contains("npm uninstall -g -- @anthropic-ai/claude-code cowsay"),
        "{log}"
    );
    assert!(log.contains("cargo uninstall --root"), "{log}");
}

/// Install twice and undo the every-kind plan of `format` (without the AUR builder, which needs a
/// non-root target user); `between`/`after` copy what the checks need out of the overlays.
fn run_format(format: &str, between: &str, after: &str) -> Option<(Sandbox, String)> {
    if !Sandbox::available() {
        return None;
    }
    let mut plan = every_kind_plan(format);
    for l in &mut plan.layers {
        l.steps.retain(|s| {
            !matches!(
                &s.action,
                Action::Builder {
                    builder: ov_compiler::plan::BuilderKind::Aur,
                    ..
                }
            ) && !matches!(&s.action, Action::Task { task, .. } if format!("{:?}", task.verb).contains(".zip"))
        });
    }
    let sb = Sandbox::new();
    let r = render_plan(&plan, &fixture_root());
    sb.write_bundle(&r);
    let (ok, out) = sb.run(&RunSpec {
        rounds: 2,
        between: format!("{between}\necho done > \"$T/out/between-checked\"\n"),
        undo: true,
        after: format!("{after}\necho done > \"$T/out/after-checked\"\n"),
        env: vec![("STUB_INSTALLED".into(), "jq".into())],
    });
    assert!(ok, "run failed:\n{out}\n--- stub log\n{}", sb.stub_log());
    assert!(!sb.pwned());
    assert_eq!(sb.read("out/between-checked"), "done\n");
    assert_eq!(sb.read("out/after-checked"), "done\n");
    Some((sb, out))
}

#[test]
fn pac_repositories_keys_and_packages() {
    let Some((sb, _)) = run_format(
        "pac",
        r#"cp /etc/pacman.conf "$T/out/pacman.conf""#,
        r#"cp /etc/pacman.conf "$T/out/pacman.conf.after""#,
    ) else {
        return;
    };
    let conf = sb.read("out/pacman.conf");
    assert_eq!(
        conf.matches("# overthink:repo chaotic-aur begin\n[chaotic-aur]\nSigLevel = Optional TrustAll\nServer = https://cdn-mirror.chaotic.cx/$repo/$arch\n# overthink:repo chaotic-aur end\n").count(),
        1,
        "{conf}"
    );
    assert!(!sb.read("out/pacman.conf.after").contains("overthink:repo"));
    assert_eq!(sb.read("state/tools/packages.pac"), "ripgrep\n");
    let log = sb.stub_log();
    assert!(
        log.contains("pacman-key --recv-keys 3056513887B78AEB"),
        "{log}"
    );
    assert!(
        log.contains("pacman -Sy --needed --noconfirm --overwrite=/usr/lib/foo/* -- ripgrep jq"),
        "{log}"
    );
    assert!(log.contains("pacman -Rs --noconfirm -- ripgrep"), "{log}");
}

#[test]
fn rpm_repositories_coprs_modules_and_packages() {
    let Some((sb, _)) = run_format(
        "rpm",
        r#"ls /etc/yum.repos.d > "$T/out/repos"; cp /etc/yum.repos.d/code.repo "$T/out/code.repo""#,
        r#"ls /etc/yum.repos.d > "$T/out/repos.after""#,
    ) else {
        return;
    };
    assert_eq!(
        sb.read("out/repos"),
        "code.repo\ndocker-ce.repo\nov-extra.repo\n"
    );
    assert_eq!(
        sb.read("out/code.repo"),
        "[code]\nname=code\nbaseurl=https://packages.microsoft.com/yumrepos/vscode\nenabled=1\ngpgcheck=0\ngpgkey=https://packages.microsoft.com/keys/microsoft.asc\n"
    );
    assert_eq!(sb.read("out/repos.after"), "");
    assert_eq!(sb.read("state/tools/packages.rpm"), "ripgrep\n");
    assert_eq!(sb.read("state/tools/release-packages.rpm"), "release\n");
    let log = sb.stub_log();
    for want in [
        "rpm --import https://packages.microsoft.com/keys/microsoft.asc",
        "dnf -y copr enable che/nerd-fonts",
        "dnf -y module reset valkey",
        "dnf -y module enable valkey:remi-9.0",
        "dnf install -y --exclude=*-debuginfo --allowerasing ripgrep jq",
        "dnf -y copr disable che/nerd-fonts",
        "dnf remove -y ripgrep",
        "dnf remove -y release",
        "curl -fsSL --retry 3 --connect-timeout 30 -o",
    ] {
        assert!(log.contains(want), "`{want}` not in\n{log}");
    }
    assert!(
        log.contains("remi-release-43.rpm"),
        "the Fedora release is resolved on the target: {log}"
    );
}

#[test]
fn undo_continues_past_a_failing_op_and_reports_it() {
    if !Sandbox::available() {
        return;
    }
    let plan = plan(
        "deb",
        vec![layer(
            "one",
            vec![
                task_step(
                    ov_compiler::plan::TaskVerb::Write {
                        path: "/etc/ov-one.conf".into(),
                        content: "x\n".into(),
                    },
                    ov_compiler::plan::Scope::System,
                    vec![op(
                        ov_compiler::plan::ReverseKind::RmFileSystem,
                        ov_compiler::plan::Scope::System,
                        &["/etc/ov-one.conf"],
                    )],
                ),
                step(
                    Action::SystemPackages {
                        format: "deb".into(),
                        packages: strings(&["hello"]),
                        options: vec![],
                        repos: vec![],
                        keys: vec![],
                        copr: vec![],
                        modules: vec![],
                        exclude: vec![],
                    },
                    ov_compiler::plan::Scope::System,
                    vec![pkg_op("deb", &strings(&["hello"]))],
                ),
            ],
        )],
    );
    let sb = Sandbox::new();
    sb.write_bundle(&render_plan(&plan, &fixture_root()));
    let (ok, out) = sb.run(&RunSpec {
        rounds: 1,
        undo: true,
        after:
            r#"[ -e /etc/ov-one.conf ] && echo left > "$T/out/left"; echo done > "$T/out/after""#
                .into(),
        env: vec![("STUB_FAIL_PURGE".into(), "1".into())],
        ..Default::default()
    });
    assert!(!ok, "a failed op must make undo fail:\n{out}");
    assert!(
        out.contains("ov: undo failed: package-remove hello"),
        "{out}"
    );
    assert!(out.contains("== UNDO FAILED"), "{out}");
    assert_eq!(sb.read("out/after"), "done\n");
    assert_eq!(
        sb.read("out/left"),
        "",
        "the op after the failing one ran:\n{out}"
    );
}
