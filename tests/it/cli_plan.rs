//! CLI tests, `ov plan`: the text and `--json` plan of the example project pinned by snapshots,
//! project discovery from the working directory, and the real corpus planned through the binary
//! (a deploy node, a VM whose distro comes from its base user, and all layers at once).

use std::collections::BTreeSet;
use std::process::Stdio;

use serde_json::Value;

use crate::cli_common::{corpus, demo, expect_code, ov, ov_run, run};

fn plan(project: &std::path::Path, args: &[&str]) -> String {
    let r = run(ov().arg("-C").arg(project).arg("plan").args(args));
    expect_code(&r, 0, &format!("plan {}", args.join(" ")));
    assert_eq!(r.stderr, "", "plan {}: quiet on success", args.join(" "));
    r.stdout
}

fn plan_json(project: &std::path::Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&plan(project, &a)).expect("--json prints JSON")
}

fn layer_names(plan: &Value) -> Vec<String> {
    plan["layers"]
        .as_array()
        .expect("layers array")
        .iter()
        .map(|l| l["name"].as_str().expect("layer name").to_string())
        .collect()
}

/// The `layers  N: a, b, …` header line of the text plan.
fn text_layers(text: &str) -> Vec<String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("layers  "))
        .expect("layers line");
    let (count, names) = line.split_once(": ").expect("count: names");
    let names: Vec<String> = names
        .split(", ")
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(count.parse::<usize>().expect("count"), names.len());
    names
}

#[test]
fn demo_plan_text() {
    let text = plan(&demo(), &["vm:demo"]);
    assert!(text.starts_with("deploy  vm:demo (id "), "{text}");
    insta::assert_snapshot!("demo-plan", text);
}

#[test]
fn demo_plan_json_is_the_same_plan() {
    let raw = plan(&demo(), &["vm:demo", "--json"]);
    let json: Value = serde_json::from_str(&raw).expect("JSON");
    assert_eq!(json["deploy"]["name"], "vm:demo");
    assert_eq!(json["deploy"]["distro"]["tags"][0], "debian:12");
    // The JSON and the text name the same layers in the same order, and every step has a kind.
    let text = plan(&demo(), &["vm:demo"]);
    assert_eq!(layer_names(&json), text_layers(&text));
    for layer in json["layers"].as_array().expect("layers") {
        for step in layer["steps"].as_array().expect("steps") {
            assert!(step["kind"].is_string(), "{step}");
        }
    }
    insta::assert_snapshot!("demo-plan-json", raw);
}

#[test]
fn command_line_gates_and_layers_reach_the_plan() {
    let base = plan_json(&demo(), &["vm:demo"]);
    assert_eq!(base["gates"]["allow_repo_changes"], false);
    assert!(!layer_names(&base).contains(&"demo-node".to_string()));
    let more = plan_json(&demo(), &["vm:demo", "demo-node", "--allow-repo-changes"]);
    assert_eq!(more["gates"]["allow_repo_changes"], true);
    assert!(layer_names(&more).contains(&"demo-node".to_string()));
    // The repo step that the closed gate skipped is no longer skipped.
    let skipped_repo = |p: &Value| {
        p["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .flat_map(|l| l["steps"].as_array().expect("steps"))
            .filter(|s| s["kind"] == "RepoChange" && !s["skip"].is_null())
            .count()
    };
    assert!(skipped_repo(&base) > 0);
    assert_eq!(skipped_repo(&more), 0);
}

#[test]
fn project_is_found_from_a_subdirectory() {
    let with_flag = plan(&demo(), &["vm:demo"]);
    let r = run(ov()
        .current_dir(demo().join("layers/demo-env"))
        .args(["plan", "vm:demo"]));
    expect_code(&r, 0, "plan from a subdirectory");
    assert_eq!(r.stdout, with_flag);
    // `$OV_PROJECT` works the same from anywhere.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let r = run(ov()
        .current_dir(elsewhere.path())
        .env("OV_PROJECT", demo())
        .args(["plan", "vm:demo"]));
    expect_code(&r, 0, "plan with OV_PROJECT");
    assert_eq!(r.stdout, with_flag);
}

/// `ov plan … | head`: the reader goes away; `ov` stops quietly and exits 0.
#[test]
fn closed_stdout_is_not_an_error() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let r = run(ov()
        .arg("-C")
        .arg(demo())
        .args(["plan", "vm:demo", "--json"])
        .stdout(Stdio::from(writer)));
    expect_code(&r, 0, "plan into a closed pipe");
    assert_eq!(r.stderr, "");
}

#[test]
fn corpus_deploy_node_arch_vm() {
    let Some(c) = corpus() else { return };
    let p = plan_json(&c, &["arch-vm"]);
    assert_eq!(p["deploy"]["name"], "vm:arch");
    assert_eq!(p["deploy"]["distro"]["tags"][0], "archlinux");
    assert_eq!(p["deploy"]["user"], "arch");
    // The node's install_opts open its gates; its add_layers are requested.
    assert_eq!(p["gates"]["with_services"], true);
    assert_eq!(p["gates"]["allow_repo_changes"], true);
    let names = layer_names(&p);
    for l in ["ripgrep", "uv", "nodejs"] {
        assert!(names.contains(&l.to_string()), "{l} in {names:?}");
    }
}

#[test]
fn corpus_vm_arch_takes_its_distro_from_the_base_user() {
    let Some(c) = corpus() else { return };
    let text = plan(&c, &["vm:arch"]);
    assert!(
        text.contains("\ndistro  archlinux (formats: pac, aur)\n"),
        "{text}"
    );
    assert!(text.contains("\nuser    arch\n"), "{text}");
    assert!(!text_layers(&text).is_empty());
    // For `host`, `--distro` gives the tag as is (not the machine's own os-release).
    let p = plan_json(&c, &["host", "--distro", "fedora:43"]);
    assert_eq!(p["deploy"]["distro"]["tags"][0], "fedora:43");
}

#[test]
fn corpus_all_layers_at_once_on_debian() {
    let Some(c) = corpus() else { return };
    let mut all: Vec<String> = std::fs::read_dir(c.join("layers"))
        .expect("corpus layers")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("layer.yml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    all.sort();
    assert!(all.len() > 100, "{} layers", all.len());
    let mut args: Vec<&str> = vec!["host", "--distro", "debian:12"];
    args.extend(all.iter().map(String::as_str));
    let p = plan_json(&c, &args);
    assert_eq!(p["deploy"]["distro"]["tags"][0], "debian:12");
    let planned = layer_names(&p);
    // Every planned layer is a corpus layer, each once; most are planned (pure composers drop).
    let set: BTreeSet<&String> = planned.iter().collect();
    assert_eq!(set.len(), planned.len(), "a layer planned twice");
    assert!(planned.iter().all(|l| all.contains(l)), "{planned:?}");
    assert!(
        planned.len() * 10 >= all.len() * 9,
        "{} of {}",
        planned.len(),
        all.len()
    );
    // The text form agrees.
    let text = ov_run(
        &[
            &["-C", c.to_str().expect("utf-8 path"), "plan"][..],
            &args[..],
        ]
        .concat(),
    );
    expect_code(&text, 0, "text plan of all layers");
    assert_eq!(text_layers(&text.stdout), planned);
}

/// `--add-layer python --add-layer jupyter-mcp`: the request order wins where dependencies do not
/// decide (the names alone would put `jupyter-mcp` first); python's dependency `pixi` still
/// comes before python. The other request order gives the other order.
#[test]
fn corpus_request_order_decides_where_dependencies_do_not() {
    let Some(c) = corpus() else { return };
    let deps = std::fs::read_to_string(c.join("layers/python/layer.yml")).expect("python layer");
    assert!(deps.contains("- pixi"), "python depends on pixi: {deps}");
    let order = |first: &str, second: &str| {
        layer_names(&plan_json(
            &c,
            &[
                "host",
                "--distro",
                "debian:12",
                "--add-layer",
                first,
                "--add-layer",
                second,
            ],
        ))
    };
    let python_first = order("python", "jupyter-mcp");
    let pos = |names: &[String], l: &str| names.iter().position(|n| n == l).expect(l);
    assert!(
        pos(&python_first, "pixi") < pos(&python_first, "python")
            && pos(&python_first, "python") < pos(&python_first, "jupyter-mcp"),
        "{python_first:?}"
    );
    assert_eq!(python_first.last().map(String::as_str), Some("jupyter-mcp"));
    let mcp_first = order("jupyter-mcp", "python");
    assert_eq!(mcp_first.first().map(String::as_str), Some("jupyter-mcp"));
    assert!(pos(&mcp_first, "pixi") < pos(&mcp_first, "python"));
    // The text plan shows the same order.
    let text = plan(
        &c,
        &[
            "host",
            "--distro",
            "debian:12",
            "--add-layer",
            "python",
            "--add-layer",
            "jupyter-mcp",
        ],
    );
    assert_eq!(text_layers(&text), python_first);
}

/// Layer files are untrusted, and a bundle given to `ov inspect` more so: an escape sequence in a
/// layer's value (a `cmd:`, a check's `addr:`) is shown as `�` by `ov plan`, by `ov inspect` of
/// the compiled bundle, and in an error — it never reaches the terminal, where it could retitle
/// the window, clear the screen or forge the lines around it. The canary: before, all three
/// printed ESC and BEL as they were.
#[test]
fn escape_sequences_in_layer_values_never_reach_the_terminal() {
    let dir = tempfile::tempdir().expect("tmp");
    crate::cli_common::copy_tree(&demo(), dir.path());
    let layer = dir.path().join("layers/demo-config/layer.yml");
    let text = std::fs::read_to_string(&layer).expect("layer.yml");
    let cmd = "    - cmd: |\n        grep -q 'ov' /etc/demo/motd\n";
    assert!(text.contains(cmd), "the demo's layer changed: {text}");
    std::fs::write(
        &layer,
        text.replace(cmd, "    - cmd: \"echo \\e]0;pwned\\a \\e[2J\"\n    - cmd: |\n        grep -q 'ov' /etc/demo/motd\n"),
    )
    .expect("write");
    let raw = |s: &str| s.contains('\u{1b}') || s.contains('\u{7}');

    let r = run(ov().arg("-C").arg(dir.path()).args(["plan", "vm:demo"]));
    expect_code(&r, 0, "plan");
    assert!(!raw(&r.stdout) && !raw(&r.stderr), "{:?}", r.stdout);
    assert!(
        r.stdout
            .contains("echo \u{fffd}]0;pwned\u{fffd} \u{fffd}[2J"),
        "{}",
        r.stdout
    );

    let bundle = dir.path().join("b.tar.gz");
    let r = run(ov()
        .arg("-C")
        .arg(dir.path())
        .args(["compile", "vm:demo", "--allow-root-tasks", "-o"])
        .arg(&bundle));
    expect_code(&r, 0, "compile");
    let r = run(ov().arg("inspect").arg(&bundle));
    expect_code(&r, 0, "inspect");
    assert!(!raw(&r.stdout) && !raw(&r.stderr), "{:?}", r.stdout);
    assert!(
        r.stdout.contains("\u{fffd}]0;pwned\u{fffd}"),
        "{}",
        r.stdout
    );

    let tools = dir.path().join("layers/demo-tools/layer.yml");
    let mut text = std::fs::read_to_string(&tools).expect("layer.yml");
    assert!(!text.contains("tests:"), "the demo's layer changed: {text}");
    text.push_str("  tests:\n    - id: port-check\n      scope: deploy\n      addr: \"127.0.0.1:80 \\e]0;pwned\\a\"\n      reachable: true\n");
    std::fs::write(&tools, text).expect("write");
    let r = run(ov().arg("-C").arg(dir.path()).args(["plan", "vm:demo"]));
    expect_code(&r, 3, "plan of a bad check");
    assert!(!raw(&r.stderr), "{:?}", r.stderr);
    assert!(
        r.stderr.contains("\u{fffd}]0;pwned\u{fffd}"),
        "{}",
        r.stderr
    );

    // A value of 100,000 characters is not printed whole (it was: 100 KB of stderr).
    let text = std::fs::read_to_string(&tools).expect("layer.yml");
    let long = format!("127.0.0.1:80 {}", "x".repeat(100_000));
    let bad = "127.0.0.1:80 \\e]0;pwned\\a";
    assert!(text.contains(bad), "{text}");
    std::fs::write(&tools, text.replace(bad, &long)).expect("write");
    let r = run(ov().arg("-C").arg(dir.path()).args(["plan", "vm:demo"]));
    expect_code(&r, 3, "plan of a long bad value");
    assert!(
        r.stderr.contains("characters left out]…"),
        "{}",
        &r.stderr[..200.min(r.stderr.len())]
    );
    assert!(r.stderr.len() < 4000, "{} bytes of stderr", r.stderr.len());
}
