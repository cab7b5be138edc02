//! Stage `render` (target-side scripts of the runner): every template of `templates/remote/`,
//! rendered with awkward values, passes `bash -n` and ShellCheck like the bundle's scripts, holds
//! every value as one quoted word, and refuses a value no shell string can hold.

mod render_support;

use ov_compiler::remote::{render, Bootstrap, Enter, LedgerRead, RunShOptions};
use render_support::*;

const ODD: &str = "we'ird $(touch /tmp/ov-pwn) `x` name";

fn bootstrap<'a>(user: Option<&'a str>, layers: &'a [String], apply: bool) -> Bootstrap<'a> {
    Bootstrap {
        dir: "/var/lib/overthink/work/vm-x.0123456789ab",
        base: "/var/lib/overthink/work",
        archive: ODD,
        expected: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        size: 1234,
        top: "vm-x",
        keep: 0,
        apply,
        test: !apply || user.is_some(),
        check: false,
        check_diff: false,
        no_wait: true,
        force: true,
        force_distro: apply,
        verbose: apply,
        user,
        test_scope: user.map(|_| "deploy"),
        test_layers: layers,
        ledger_user: user.unwrap_or(""),
        ledgers: "/var/lib/overthink/installed",
        // (a current run.sh when applying, an older one otherwise: both shapes are rendered)
        run_sh: RunShOptions {
            print_ledger: apply,
            cleanup: apply,
        },
    }
}

/// Every remote script as (template name, text), in each of its shapes.
fn all_remote_scripts() -> Vec<(String, String)> {
    let layers = vec![ODD.to_string(), "b".to_string()];
    let mut out = Vec::new();
    for (i, (program, login_root)) in [
        (Some(ODD), None),
        (Some(ODD), Some(true)),
        (None, Some(false)),
    ]
    .into_iter()
    .enumerate()
    {
        out.push((
            format!("remote/enter.sh.j2#{i}"),
            render(&Enter {
                cloud_init_program: program,
                login_root,
            })
            .expect("entry renders"),
        ));
    }
    out.extend([(
        "remote/ledger-read.sh.j2".to_string(),
        render(&LedgerRead {
            user: ODD,
            ledgers: "/var/lib/overthink/installed",
        })
        .expect("ledger read renders"),
    )]);
    for (i, b) in [
        bootstrap(Some(ODD), &layers, true),
        bootstrap(None, &[], true),
        bootstrap(None, &layers, false),
        // `ov push --check --diff`: only run.sh --check.
        Bootstrap {
            test: false,
            check: true,
            check_diff: true,
            ..bootstrap(Some(ODD), &[], false)
        },
    ]
    .iter()
    .enumerate()
    {
        out.push((
            format!("remote/bootstrap.sh.j2#{i}"),
            render(b).expect("bootstrap renders"),
        ));
    }
    out
}

#[test]
fn remote_scripts_pass_bash_n_and_shellcheck() {
    let bash = have_tool("bash", &["--version"]);
    let sc = have_tool("shellcheck", &["--version"]);
    let mut failures = Vec::new();
    for (name, text) in all_remote_scripts() {
        if bash {
            failures.extend(bash_n(&name, &text).err());
        }
        if sc {
            failures.extend(shellcheck(&name, &text).err());
        }
    }
    // The entry runs under `sh -c`: it must be POSIX sh too.
    for (name, text) in all_remote_scripts() {
        if name.starts_with("remote/enter.sh.j2") {
            let st = std::process::Command::new("sh")
                .args(["-n", "-c", &text])
                .status()
                .expect("sh");
            assert!(st.success(), "sh -n rejects {name}:\n{text}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_value_is_one_quoted_word() {
    let quoted = ov_compiler::shell::quote(ODD).expect("quotable");
    for (name, text) in all_remote_scripts() {
        assert!(
            !text.contains(&format!(" {ODD}")) && !text.contains(&format!("={ODD}")),
            "{name}: a value reached the script unquoted:\n{text}"
        );
        // The shapes that hold no value: a bootstrap without a user, an entry without a check.
        if !["remote/bootstrap.sh.j2#1", "remote/enter.sh.j2#2"].contains(&name.as_str()) {
            assert!(text.contains(&quoted), "{name}:\n{text}");
        }
    }
    let layers = vec!["b".to_string()];
    let b = render(&bootstrap(Some("a b"), &layers, true)).expect("renders");
    for want in [
        "run.sh\" --bundle-sha256 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef ${print:+\"$print\"} ${clean:+--cleanup \"$clean\"} --no-wait --force --force-distro --verbose --user 'a b' </dev/null",
        "run.sh\" --test --events --scope deploy --user 'a b' b </dev/null",
        "\nsize=1234\n",
        "  ledger_user='a b'\n",
    ] {
        assert!(b.contains(want), "want `{want}` in\n{b}");
    }

    // The entry, run: the program name is data, never code; a program that is there stops the
    // channel (status 93) before it reads stdin or becomes root.
    let entry = |program: &str| {
        render(&Enter {
            cloud_init_program: Some(program),
            login_root: Some(true),
        })
        .expect("renders")
    };
    let run = |script: &str| {
        std::process::Command::new("sh")
            .args(["-c", script])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("sh")
    };
    let out = run(&entry("$(echo pwned)").replace("exec bash -s login-root", "echo entered"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "entered\n");
    let out = run(&entry("sh").replace("exec bash -s login-root", "echo entered"));
    assert_eq!(out.status.code(), Some(93));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "::ov:: enter cloud-init=present\n"
    );
}

#[test]
fn a_value_with_a_nul_byte_is_refused_with_a_clear_error() {
    let e = render(&LedgerRead {
        user: "a\0b",
        ledgers: "/var/lib/overthink/installed",
    })
    .expect_err("NUL");
    let chain = error_chain(&e);
    assert!(chain.contains("remote/ledger-read.sh.j2"), "{chain}");
    assert!(chain.contains("NUL byte"), "{chain}");
}
