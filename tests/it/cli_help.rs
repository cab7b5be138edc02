//! CLI tests, help and usage: the help texts of `ov`, `ov plan` and `ov compile` are pinned by
//! snapshots; every malformed command line exits 2 (usage) with clap's `error:` on stderr and
//! nothing on stdout.

use crate::cli_common::{expect_code, ov_run};

fn help(args: &[&str]) -> String {
    let r = ov_run(args);
    expect_code(&r, 0, &args.join(" "));
    assert_eq!(r.stderr, "", "help goes to stdout");
    r.stdout
}

#[test]
fn top_level_help() {
    let text = help(&["--help"]);
    // Every subcommand is listed (the snapshot pins the wording, this the completeness).
    for cmd in [
        "plan",
        "compile",
        "inspect",
        "verify",
        "push",
        "deploy",
        "status",
        "completions",
    ] {
        assert!(text.contains(&format!("\n  {cmd} ")), "`{cmd}` missing");
    }
    insta::assert_snapshot!("help", text);
}

#[test]
fn plan_help() {
    insta::assert_snapshot!("help-plan", help(&["plan", "--help"]));
}

#[test]
fn compile_help() {
    let text = help(&["compile", "--help"]);
    // The scrubbed environment shows no inherited timestamp.
    assert!(text.contains("[env: SOURCE_DATE_EPOCH=]"), "{text}");
    insta::assert_snapshot!("help-compile", text);
}

#[test]
fn version_names_the_package_version() {
    let r = ov_run(&["--version"]);
    expect_code(&r, 0, "--version");
    assert_eq!(r.stdout, format!("ov {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_exit_2() {
    // Bare `ov` prints its help to stderr (clap's choice) and is still a usage error.
    let bare = ov_run(&[]);
    expect_code(&bare, 2, "ov");
    assert!(
        bare.stderr.contains("Usage: ov [OPTIONS] <COMMAND>"),
        "{}",
        bare.stderr
    );
    assert_eq!(bare.stdout, "");

    let cases: &[(&[&str], &str)] = &[
        (&["plan"], "<DEPLOY>"),
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (&["plan", "vm:demo", "--jsn"], "unexpected argument '--jsn'"),
        (
            &["compile", "vm:demo", "-o", "x.tar.gz", "--out-dir", "d"],
            "cannot be used with",
        ),
        (
            &["push", "vm:demo", "--port", "ssh"],
            "invalid value 'ssh' for '--port <PORT>'",
        ),
        (
            &["compile", "vm:demo", "--source-date-epoch", "yesterday"],
            "invalid value 'yesterday'",
        ),
        (&["completions", "cmd.exe"], "invalid value 'cmd.exe'"),
    ];
    for (args, needle) in cases {
        let r = ov_run(args);
        expect_code(&r, 2, &format!("ov {}", args.join(" ")));
        assert!(
            r.stderr.starts_with("error: "),
            "ov {}: {}",
            args.join(" "),
            r.stderr
        );
        assert!(
            r.stderr.contains(needle),
            "ov {}: want `{needle}` in\n{}",
            args.join(" "),
            r.stderr
        );
        assert_eq!(
            r.stdout,
            "",
            "ov {}: usage errors print to stderr",
            args.join(" ")
        );
    }
    // One of them in full: the message, the usage line and the pointer to --help.
    insta::assert_snapshot!("usage-missing-deploy", ov_run(&["plan"]).stderr);
}

/// What bash offers for `WORDS` (the last one being completed) with the hook `ov completions
/// bash` prints sourced, in directory `dir`, with this `ov` first on PATH.
fn bash_offers(dir: &std::path::Path, words: &[&str]) -> Vec<String> {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_ov"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source <(ov completions bash) && COMP_WORDS=({}) && COMP_CWORD={} && \
         _clap_complete_ov ov '{}' '{}' && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        quoted.join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let out = std::process::Command::new("bash")
        .args(["--norc", "-c", &script])
        .current_dir(dir)
        .env_clear()
        .env("PATH", path)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completes_the_projects_deploy_and_layer_names() {
    let demo = crate::cli_common::demo();
    let deploys = bash_offers(&demo, &["ov", "push", "vm:"]);
    assert_eq!(deploys, ["vm:demo"], "{deploys:?}");
    let deploys = bash_offers(&demo, &["ov", "deploy", "del", "de"]);
    assert_eq!(deploys, ["demo-vm"], "{deploys:?}");
    let layers = bash_offers(&demo, &["ov", "plan", "vm:demo", "demo-g"]);
    assert_eq!(layers, ["demo-greeter"], "{layers:?}");
    let layers = bash_offers(&demo, &["ov", "compile", "host", "--add-layer", "demo-e"]);
    assert_eq!(layers, ["demo-env"], "{layers:?}");
    // Outside a project: no names, and no error.
    let none = bash_offers(std::path::Path::new("/"), &["ov", "push", "vm:"]);
    assert!(none.is_empty(), "{none:?}");
}
