//! IR snapshots for `lower`: one InstallPlan snapshot per fixture — representative corpus layers
//! (one per step kind and package format) each on a distro where it does something, the plan fixture project on three
//! distros, and the example project's VM deploy. Gates are closed unless the deploy node opens
//! them, so the snapshots also show what each gate holds back.

use std::path::{Path, PathBuf};

use ov_compiler::deploy::{resolve_deploy, DeployRequest};
use ov_compiler::lower::lower;
use ov_compiler::plan::{Gates, InstallPlan};
use ov_compiler::project::Project;
use ov_compiler::resolve::resolve;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load(root: PathBuf, what: &str) -> Option<Project> {
    if !root.is_dir() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} not found at {} (required under CI)",
            root.display()
        );
        eprintln!("skipping: {what} not found at {}", root.display());
        return None;
    }
    Some(Project::load(&root).unwrap_or_else(|e| panic!("{what} loads: {e}")))
}

fn corpus() -> Option<Project> {
    load(
        manifest_dir().join("../../shared/corpus/overthink-3e714536"),
        "corpus",
    )
}

/// The plan of exactly `order` (no dependencies added) for the local host on `distro`.
fn host_plan(p: &Project, distro: &str, order: &[String]) -> InstallPlan {
    let req = DeployRequest {
        name: "host".to_string(),
        add_layers: order.to_vec(),
        distro: Some(distro.to_string()),
        gates: Gates::default(),
        user: None,
    };
    let (deploy, gates, _) = resolve_deploy(p, &req).expect("host deploy resolves");
    lower(p, deploy, gates, order).unwrap_or_else(|e| panic!("lower {order:?}: {e}"))
}

/// One corpus layer on its own.
fn corpus_layer(layer: &str, distro: &str) {
    let Some(p) = corpus() else { return };
    let plan = host_plan(&p, distro, &[layer.to_string()]);
    let name = format!("corpus__{layer}__{}", distro.replace(':', "-"));
    insta::assert_yaml_snapshot!(name, plan);
}

#[test]
fn ripgrep_archlinux() {
    corpus_layer("ripgrep", "archlinux");
}

#[test]
fn sqlite_fedora() {
    corpus_layer("sqlite", "fedora:43");
}

#[test]
fn vscode_fedora() {
    corpus_layer("vscode", "fedora:43");
}

#[test]
fn valkey_fedora() {
    corpus_layer("valkey", "fedora:43");
}

#[test]
fn nodejs_ubuntu() {
    corpus_layer("nodejs", "ubuntu:24.04");
}

#[test]
fn uv_debian() {
    corpus_layer("uv", "debian:12");
}

#[test]
fn sway_fedora() {
    corpus_layer("sway", "fedora:43");
}

#[test]
fn pre_commit_archlinux() {
    corpus_layer("pre-commit", "archlinux");
}

#[test]
fn claude_code_debian() {
    corpus_layer("claude-code", "debian:12");
}

#[test]
fn ollama_archlinux() {
    corpus_layer("ollama", "archlinux");
}

#[test]
fn qemu_guest_agent_fedora() {
    corpus_layer("qemu-guest-agent", "fedora:43");
}

#[test]
fn k3s_server_debian() {
    corpus_layer("k3s-server", "debian:12");
}

#[test]
fn desktop_fonts_fedora() {
    corpus_layer("desktop-fonts", "fedora:43");
}

/// `vars:` in a download URL (`${TRAEFIK_VERSION}`) filled in at compile time; `${ARCH}` left
/// for the target.
#[test]
fn traefik_debian() {
    corpus_layer("traefik", "debian:12");
}

/// `vars:` exported to the `cmd:` tasks that read them (`${VCHORD_VERSION}`).
#[test]
fn vectorchord_debian() {
    corpus_layer("vectorchord", "debian:12");
}

/// `sway-desktop` is pure composition: its plan is its 22 resolved members. The full plan would
/// be thousands of lines, so this snapshot is one line per step.
#[test]
fn sway_desktop_archlinux_resolved() {
    let Some(p) = corpus() else { return };
    let order = resolve(&p.layers, &["sway-desktop".to_string()]).expect("resolves");
    let plan = host_plan(&p, "archlinux", &order);
    let mut lines = Vec::new();
    for lp in &plan.layers {
        lines.push(format!("{} ({})", lp.name, lp.source));
        for s in &lp.steps {
            let skip = s
                .skip
                .as_ref()
                .map(|k| format!(" [skip: {}]", k.reason))
                .unwrap_or_default();
            lines.push(format!(
                "  {} {}/{}/{}: {}{skip}",
                s.kind(),
                s.scope.as_str(),
                s.venue.as_str(),
                s.phase.as_str(),
                s.action.summary()
            ));
        }
    }
    insta::assert_snapshot!("corpus__sway-desktop__archlinux", lines.join("\n"));
}

/// The plan fixture project: `app` and everything it needs, on one distro.
fn features(distro: &str) {
    let root = manifest_dir().join("tests/fixtures/plan/features");
    let p = Project::load(&root).expect("fixture loads");
    let req = DeployRequest {
        name: "host".to_string(),
        add_layers: vec!["app".to_string()],
        distro: Some(distro.to_string()),
        ..DeployRequest::default()
    };
    let (deploy, gates, requested) = resolve_deploy(&p, &req).expect("host deploy resolves");
    let order = resolve(&p.layers, &requested).expect("resolves");
    // `composed` has no content of its own and vanishes; its members come before `app`.
    assert_eq!(order, ["aur-tool", "repos", "app"]);
    let plan = lower(&p, deploy, gates, &order).expect("lowers");
    insta::assert_yaml_snapshot!(format!("features__{}", distro.replace(':', "-")), plan);
}

#[test]
fn features_archlinux() {
    features("archlinux");
}

#[test]
fn features_fedora() {
    features("fedora:43");
}

#[test]
fn features_debian() {
    features("debian:12");
}

/// The example project's VM deploy (`vm:demo`), plus the npm builder layer, as `ov plan` sees it.
#[test]
fn example_demo_vm() {
    let root = manifest_dir().join("../examples/demo");
    let p = Project::load(&root).expect("example project loads");
    let req = DeployRequest {
        name: "vm:demo".to_string(),
        add_layers: vec!["demo-node".to_string()],
        ..DeployRequest::default()
    };
    let (deploy, gates, requested) = resolve_deploy(&p, &req).expect("vm:demo resolves");
    let order = resolve(&p.layers, &requested).expect("resolves");
    let plan = lower(&p, deploy, gates, &order).expect("lowers");
    let kinds: std::collections::BTreeSet<&str> = plan
        .layers
        .iter()
        .flat_map(|l| l.steps.iter().map(|s| s.kind()))
        .collect();
    // The example exists to show every step kind.
    assert_eq!(kinds.len(), 9, "{kinds:?}");
    insta::assert_yaml_snapshot!("example__demo-vm", plan);
}
