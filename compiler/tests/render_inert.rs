//! Stage `render`: layer text is data, never code. A property test puts random strings — quotes,
//! `$()`, backticks, newlines, globs, unicode, `'\''`, `%(ENV_X)s`, `${HOME}`, and a marker
//! command `ov_pwn` in every form that could run it — into every string field of a layer plan
//! except `cmd:` bodies. Either the compile refuses the value with a clear error naming the layer
//! (only fields with a required shape may do that), or every script passes `bash -n`, running the
//! scripts and their undo in the sandbox never runs the marker, sourcing the env.d file and the
//! profile never runs it, and every unit file keeps its line structure.

mod render_support;

use std::path::Path;

use ov_compiler::plan::{
    Action, Gate, InstallPlan, LayerPlan, Phase, ReverseKind, RunAs, Scope, Step,
};
use ov_compiler::plan::{Repo, ServiceEntry, ServiceOverrides, Task, TaskVerb};
use ov_compiler::render::{render, Engine, RenderError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use render_support::*;

const PIECES: &[&str] = &[
    "$(ov_pwn)",
    "`ov_pwn`",
    ";ov_pwn;",
    "\nov_pwn\n",
    "|ov_pwn",
    "&&ov_pwn",
    "' ; ov_pwn ; '",
    "\" ; ov_pwn ; \"",
    "'\\''",
    "$'\\x41'",
    "${HOME}",
    "$HOME",
    "~",
    "~/",
    "%(ENV_X)s",
    "%(ENV_HOME)s",
    "%h",
    "%%",
    "$$",
    "$((1+1))",
    "*",
    "?",
    "[a]",
    "{a,b}",
    "\\",
    "\\\n",
    "\r",
    "\t",
    " ",
    "#",
    "!",
    "-",
    "--x",
    "-oAPT::Update::Pre-Invoke::=ov_pwn",
    "é",
    "日本",
    "\u{1b}[31m",
    "\u{7f}",
    "]",
    "=",
    ":",
    "..",
    "$(rpm -E %fedora)",
    ")",
    "(",
    "<",
    ">",
    "&",
    "\nExecStartPre=/bin/sh -c ov_pwn\n",
    "\n[Service]\n",
    "# overthink:end\n",
    "EOF",
];

/// Any string without NUL, built from hostile pieces and random characters.
fn hostile() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(PIECES).prop_map(String::from),
            1 => "[a-zA-Z0-9._-]{1,6}",
            1 => any::<char>().prop_filter("no NUL", |c| *c != '\0').prop_map(String::from),
        ],
        1..5,
    )
    .prop_map(|v| v.concat())
}

/// Without control characters (fields written as one line, paths).
fn line() -> impl Strategy<Value = String> {
    hostile().prop_map(|s| {
        let t: String = s.chars().filter(|c| !c.is_control()).collect();
        if t.is_empty() {
            "x".to_string()
        } else {
            t
        }
    })
}

/// Without blanks or control characters (URL tails, suites).
fn word() -> impl Strategy<Value = String> {
    line().prop_map(|s| {
        let t: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        if t.is_empty() {
            "x".to_string()
        } else {
            t
        }
    })
}

#[derive(Debug, Clone)]
struct Inputs {
    format: &'static str,
    /// Free text: any value must render.
    text: Vec<String>,
    /// One-line free text (paths, file fields).
    line: Vec<String>,
    /// Blank-free free text (URL tails).
    word: Vec<String>,
    /// Fields with a required shape (names, options, units): `Some` puts a hostile value there.
    shaped: Vec<Option<String>>,
}

fn inputs() -> impl Strategy<Value = Inputs> {
    (
        prop::sample::select(&["pac", "deb", "rpm"][..]),
        prop::collection::vec(hostile(), 8),
        prop::collection::vec(line(), 16),
        prop::collection::vec(word(), 6),
        prop::option::weighted(0.35, (0..14usize, hostile())),
    )
        .prop_map(|(format, text, line, word, bad)| {
            // At most one shaped field is hostile per case, so most cases run their scripts.
            let mut shaped = vec![None; 14];
            if let Some((i, v)) = bad {
                shaped[i] = Some(v);
            }
            Inputs {
                format,
                text,
                line,
                word,
                shaped,
            }
        })
}

/// The shaped field `i`, or its benign value.
fn shaped(inp: &Inputs, i: usize, benign: &str) -> String {
    inp.shaped[i].clone().unwrap_or_else(|| benign.to_string())
}

/// `s` quoted so Python's shlex (supervisord) reads it back as one word.
fn exec_arg(s: &str) -> String {
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .unwrap_or_default()
}

fn tstep(
    verb: TaskVerb,
    env: Vec<(String, String)>,
    rev: Vec<ov_compiler::plan::ReverseOp>,
) -> Step {
    let mut t: Task = task(verb);
    t.env = env;
    step(
        Action::Task {
            task: t,
            run_as: RunAs::TargetUser,
            ctx_files: None,
        },
        Scope::User,
        rev,
    )
}

/// A plan that puts the inputs into every string field (the payload file is created under
/// `project`).
fn hostile_plan(inp: &Inputs, project: &Path) -> (InstallPlan, String) {
    let f = inp.format;
    let name = shaped(inp, 0, "prop");
    let home = |s: &str, sub: &str| format!("${{HOME}}/{sub}/{s}");
    let (t, l, w) = (&inp.text, &inp.line, &inp.word);
    let pkg = shaped(inp, 1, "ripgrep");
    let opt = shaped(inp, 2, "--quiet");
    let key_name = shaped(inp, 3, "GREETING");
    let unit = shaped(inp, 4, "demo.service");
    let after = shaped(inp, 5, "network.target");
    let repo_name = shaped(inp, 6, "extra");
    let svc_user = shaped(inp, 7, "${USER}");
    let caps = shaped(inp, 8, "cap_net_raw+ep");
    let member = shaped(inp, 9, "uv-x86_64/uv");
    let extra = shaped(inp, 10, "owner/project"); // ppa, copr, pac key
    let module = shaped(inp, 11, "valkey:remi-9.0");
    let task_key = shaped(inp, 12, "TOKEN");
    let svc_key = shaped(inp, 13, "SVC_ENV");

    let mut steps = Vec::new();
    let (repos, keys, copr, modules, exclude) = match f {
        "pac" => (
            vec![Repo {
                name: Some(repo_name.clone()),
                server: Some(format!("https://p.invalid/{}", w[0])),
                siglevel: Some(l[0].clone()),
                key: Some(extra.clone()),
                ..Default::default()
            }],
            vec![extra.clone()],
            vec![],
            vec![],
            vec![],
        ),
        "rpm" => (
            vec![Repo {
                name: Some(repo_name.clone()),
                url: Some(format!("https://r.invalid/{}", w[0])),
                gpgkey: Some(format!("https://k.invalid/{}", w[1])),
                gpgcheck: Some("false".into()),
                rpm: Some(format!("https://rpm.invalid/{}.rpm", w[2])),
                ..Default::default()
            }],
            vec![],
            vec![extra.clone()],
            vec![module.clone()],
            vec![l[0].clone()],
        ),
        _ => (
            vec![
                Repo {
                    name: Some(repo_name.clone()),
                    url: Some(format!("https://d.invalid/{}", w[0])),
                    key: Some(format!("https://k.invalid/{}", w[1])),
                    suite: Some(w[2].clone()),
                    components: Some(l[0].clone()),
                    ..Default::default()
                },
                Repo {
                    ppa: Some(extra.clone()),
                    ..Default::default()
                },
            ],
            vec![],
            vec![],
            vec![],
            vec![],
        ),
    };
    let mut prepare = step(
        Action::SystemPackages {
            format: f.into(),
            packages: vec![],
            options: vec![],
            repos,
            keys,
            copr: copr.clone(),
            modules,
            exclude: vec![],
        },
        Scope::System,
        vec![],
    );
    prepare.phase = Phase::Prepare;
    prepare.gate = Some(Gate::AllowRepoChanges);
    steps.push(prepare);
    let packages = vec![pkg.clone(), "jq".to_string()];
    steps.push(step(
        Action::SystemPackages {
            format: f.into(),
            packages: packages.clone(),
            options: vec![opt],
            repos: vec![],
            keys: vec![],
            copr: vec![],
            modules: vec![],
            exclude,
        },
        Scope::System,
        vec![pkg_op(f, &packages)],
    ));
    let repo_path = home(&l[1], "repo");
    steps.push(step(
        Action::RepoChange {
            format: f.into(),
            path: repo_path.clone(),
            content: t[0].clone(),
        },
        Scope::System,
        vec![op(
            ReverseKind::RemoveRepoFile,
            Scope::System,
            &[&repo_path],
        )],
    ));
    steps.push(step(
        Action::ShellHook {
            env: vec![(key_name, t[1].clone()), ("FIXED".into(), t[2].clone())],
            path_append: vec![home(&l[2].replace(':', "_"), "p")],
        },
        Scope::UserProfile,
        vec![op(
            ReverseKind::RemoveEnvdFile,
            Scope::UserProfile,
            &[&format!("~/.config/overthink/env.d/{name}.env")],
        )],
    ));
    let tenv = vec![(task_key.clone(), t[3].clone())];
    let wpath = home(&l[3], "w");
    steps.push(tstep(
        TaskVerb::Write {
            path: wpath.clone(),
            content: t[4].clone(),
        },
        tenv.clone(),
        vec![op(ReverseKind::RmFileUser, Scope::User, &[&wpath])],
    ));
    steps.push(tstep(
        TaskVerb::Mkdir {
            path: home(&l[4], "d"),
        },
        vec![],
        vec![],
    ));
    let lpath = home(&l[5], "l");
    steps.push(tstep(
        TaskVerb::Link {
            path: lpath.clone(),
            target: l[6].clone(),
        },
        vec![],
        vec![op(ReverseKind::RmFileUser, Scope::User, &[&lpath])],
    ));
    let dpath = home(&l[7], "dl");
    steps.push(tstep(
        TaskVerb::Download {
            url: format!("https://example.invalid/{}", w[3]),
            to: Some(dpath.clone()),
            extract: Some("none".into()),
            include: vec![],
            strip_components: None,
        },
        tenv.clone(),
        vec![op(ReverseKind::RmFileUser, Scope::User, &[&dpath])],
    ));
    steps.push(tstep(
        TaskVerb::Download {
            url: format!("https://example.invalid/{}.tar.gz", w[4]),
            to: Some(home(&l[8], "dt")),
            extract: None,
            include: vec![member],
            strip_components: Some(1),
        },
        vec![],
        vec![],
    ));
    steps.push(tstep(
        TaskVerb::Setcap {
            path: home(&l[9], "x"),
            caps,
        },
        vec![],
        vec![],
    ));
    steps.push(tstep(
        TaskVerb::Cmd {
            body: "true".into(),
        },
        tenv,
        vec![],
    ));
    let src = format!("payload-{}", l[10].replace('/', "_"));
    let fdest = home(&l[11], "f");
    steps.push(step(
        Action::File {
            source: src.clone(),
            dest: fdest.clone(),
            mode: "0600".into(),
            run_as: RunAs::TargetUser,
        },
        Scope::User,
        vec![op(ReverseKind::RmFileUser, Scope::User, &[&fdest])],
    ));
    let mut packaged = ServiceEntry {
        name: t[5].clone(),
        enable: true,
        ..Default::default()
    };
    packaged.overrides = Some(ServiceOverrides {
        env: vec![(svc_key.clone(), t[6].clone())],
        after: vec![after.clone()],
        exec: Some(format!("/bin/true {}", exec_arg(&t[7]))),
    });
    let dropin = format!("/etc/systemd/system/{unit}.d/ov-prop.conf");
    let mut s = step(
        Action::ServicePackaged {
            unit: unit.clone(),
            enable: true,
            service: packaged,
        },
        Scope::System,
        vec![
            op(ReverseKind::ServiceDisable, Scope::System, &[&unit]),
            op(ReverseKind::RestoreEnabled, Scope::System, &[&unit]),
            op(ReverseKind::RemoveDropin, Scope::System, &[&dropin]),
        ],
    );
    s.gate = Some(Gate::WithServices);
    steps.push(s);
    let custom = ServiceEntry {
        name: t[5].clone(),
        exec: Some(format!(
            "/bin/true {} {}",
            exec_arg(&t[6]),
            exec_arg(&l[12])
        )),
        env: vec![(svc_key, t[7].clone())],
        // One normalized path segment (systemd refuses `.`/`..`; that is a shape check).
        working_directory: Some(home(&format!("d{}", l[13].replace('/', "_")), "wd")),
        user: Some(svc_user),
        after: vec![after],
        restart: Some("always".into()),
        enable: true,
        ..Default::default()
    };
    let mut s = step(
        Action::ServiceCustom {
            unit: "ov-prop-custom.service".into(),
            service: custom,
        },
        Scope::System,
        vec![
            op(
                ReverseKind::ServiceDisable,
                Scope::System,
                &["ov-prop-custom.service"],
            ),
            op(
                ReverseKind::ServiceRemove,
                Scope::System,
                &["/etc/systemd/system/ov-prop-custom.service"],
            ),
        ],
    );
    s.gate = Some(Gate::WithServices);
    steps.push(s);
    if f == "rpm" {
        let mut cleanup = step(
            Action::SystemPackages {
                format: f.into(),
                packages: vec![],
                options: vec![],
                repos: vec![],
                keys: vec![],
                copr,
                modules: vec![],
                exclude: vec![],
            },
            Scope::System,
            vec![],
        );
        cleanup.phase = Phase::Cleanup;
        steps.push(cleanup);
    }
    // The payload file, where the layer directory would be.
    let dir = project.join("layers").join(&name);
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(&src), "payload\n");
    }
    let lp = LayerPlan {
        name: name.clone(),
        version: None,
        source: format!("layers/{name}"),
        origin: ov_compiler::plan::LayerOrigin::Local {
            path: format!("layers/{name}"),
        },
        source_dir: None,
        steps,
        checks: Vec::new(),
    };
    (plan(f, vec![lp]), name)
}

/// A unit file or drop-in keeps its line structure: sections, comments, known settings.
fn unit_is_well_formed(text: &str) -> Result<(), String> {
    const KEYS: &[&str] = &[
        "Description",
        "After",
        "Before",
        "StartLimitBurst",
        "Type",
        "ExecStart",
        "Environment",
        "WorkingDirectory",
        "User",
        "Group",
        "Restart",
        "TimeoutStopSec",
        "KillSignal",
        "SuccessExitStatus",
        "StandardOutput",
        "WantedBy",
    ];
    for line in text.lines() {
        let ok = line.is_empty()
            || line.starts_with('#')
            || ["[Unit]", "[Service]", "[Install]"].contains(&line)
            || line.split_once('=').is_some_and(|(k, _)| KEYS.contains(&k));
        if !ok || line.ends_with('\\') {
            return Err(format!("unexpected unit line {line:?} in:\n{text}"));
        }
    }
    Ok(())
}

const BETWEEN: &str = r#"
mkdir -p "$T/out/units"
cp /etc/systemd/system/ov-prop-custom.service "$T/out/units/" 2>/dev/null
for d in /etc/systemd/system/*.d; do [ -f "$d/ov-prop.conf" ] && cp "$d/ov-prop.conf" "$T/out/units/"; done
cp "$OV_HOME"/.config/overthink/env.d/*.env "$T/out/" 2>/dev/null
env -i HOME="$OV_HOME" PATH="$T/stubs:/usr/bin:/bin" OV_PWN_MARK="$T/pwned" STUB_LOG="$T/stub.log" \
  bash -c '. "$HOME/.profile"; . "$HOME/.bashrc"' >/dev/null 2>&1
for f in "$T"/out/*.env; do
  [ -e "$f" ] || continue
  env -i PATH="$T/stubs:/usr/bin:/bin" OV_PWN_MARK="$T/pwned" STUB_LOG="$T/stub.log" sh -c '. "$1"' sh "$f" >/dev/null 2>&1
  env -i PATH="$T/stubs:/usr/bin:/bin" OV_PWN_MARK="$T/pwned" STUB_LOG="$T/stub.log" bash -c '. "$1"' bash "$f" >/dev/null 2>&1
done
echo done > "$T/out/between-checked"
"#;

fn check_case(inp: &Inputs, stats: &std::cell::Cell<(u32, u32)>) -> Result<(), TestCaseError> {
    let project = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (plan, name) = hostile_plan(inp, project.path());
    let engine = Engine::new(None).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let any_shaped = inp.shaped.iter().any(Option::is_some);
    let rendered = match render(&plan, project.path(), &engine) {
        Ok(r) => r,
        Err(e) => {
            let msg = error_chain(&e);
            prop_assert!(any_shaped, "free-text values must render: {msg}");
            prop_assert!(
                matches!(e, RenderError::Invalid { .. }),
                "only a shape check may refuse a value: {msg}"
            );
            prop_assert!(msg.contains(&format!("layer `{name}`")), "{msg}");
            let (ran, refused) = stats.get();
            stats.set((ran, refused + 1));
            return Ok(());
        }
    };
    for (path, text) in all_scripts(&rendered) {
        if let Err(e) = bash_n(&path, &text) {
            return Err(TestCaseError::fail(format!("{e}\n{text}")));
        }
    }
    let sb = Sandbox::new();
    sb.write_bundle(&rendered);
    let (_ok, out) = sb.run(&RunSpec {
        rounds: 1,
        between: BETWEEN.to_string(),
        undo: true,
        after: String::new(),
        env: vec![],
    });
    prop_assert_eq!(sb.read("out/between-checked"), "done\n", "{}", out);
    prop_assert!(
        !sb.pwned(),
        "the marker ran\n{}\n--- stub log\n{}",
        out,
        sb.stub_log()
    );
    if let Ok(entries) = std::fs::read_dir(sb.path("out/units")) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if let Err(msg) = unit_is_well_formed(&text) {
                return Err(TestCaseError::fail(msg));
            }
        }
    }
    let (ran, refused) = stats.get();
    stats.set((ran + 1, refused));
    Ok(())
}

#[test]
fn layer_text_stays_inert() {
    if !have_tool("bash", &["-c", "true"]) || !Sandbox::available() {
        return;
    }
    // A fixed seed keeps CI reproducible; `OV_PROPTEST_RANDOM=1` explores new cases (and
    // `PROPTEST_CASES` raises the count).
    let config = Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(64),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = if std::env::var_os("OV_PROPTEST_RANDOM").is_some() {
        TestRunner::new(config)
    } else {
        let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
        TestRunner::new_with_rng(config, rng)
    };
    let stats = std::cell::Cell::new((0u32, 0u32));
    let result = runner.run(&inputs(), |inp| check_case(&inp, &stats));
    let stats = stats.get();
    if let Err(e) = result {
        panic!("{e}");
    }
    // Most cases must get as far as running their scripts, or the property says little.
    assert!(
        stats.0 >= 24,
        "only {} of {} cases rendered and ran ({} refused)",
        stats.0,
        stats.0 + stats.1,
        stats.1
    );
}

#[test]
fn nul_is_a_compile_error_naming_the_layer() {
    let project = tempfile::tempdir().expect("tempdir");
    let mut p = plan(
        "deb",
        vec![layer(
            "nully",
            vec![task_step(
                TaskVerb::Write {
                    path: "/etc/x".into(),
                    content: "a\0b".into(),
                },
                Scope::System,
                vec![],
            )],
        )],
    );
    let engine = Engine::new(None).expect("engine");
    let e = render(&p, project.path(), &engine).expect_err("NUL must not render");
    assert!(e.to_string().contains("layer `nully`"), "{e}");
    assert!(e.to_string().contains("NUL"), "{e}");
    // Also in a `cmd:` body, which otherwise passes through verbatim.
    p.layers[0].steps[0] = task_step(
        TaskVerb::Cmd {
            body: "echo a\0b".into(),
        },
        Scope::System,
        vec![],
    );
    let e = render(&p, project.path(), &engine).expect_err("NUL must not render");
    assert!(e.to_string().contains("layer `nully`"), "{e}");
}

#[test]
fn env_keys_must_be_identifiers() {
    let project = tempfile::tempdir().expect("tempdir");
    let p = plan(
        "deb",
        vec![layer(
            "envy",
            vec![step(
                Action::ShellHook {
                    env: vec![("A;ov_pwn".into(), "1".into())],
                    path_append: vec![],
                },
                Scope::UserProfile,
                vec![],
            )],
        )],
    );
    let engine = Engine::new(None).expect("engine");
    let e = render(&p, project.path(), &engine).expect_err("bad key");
    let msg = e.to_string();
    assert!(
        msg.contains("layer `envy`") && msg.contains("A;ov_pwn"),
        "{msg}"
    );
    assert!(
        msg.contains("not a valid environment variable name"),
        "{msg}"
    );
}
