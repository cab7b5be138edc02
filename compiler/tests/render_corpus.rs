//! Stage `render` over real projects: every layer of the overthink corpus (used in place) renders
//! on archlinux, debian, fedora and ubuntu with every gate open, alone and all at once, and every
//! script passes `bash -n` and ShellCheck (warning level); the example project and the plan
//! fixture project render to reviewed snapshots (one per fixture).

mod render_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ov_compiler::bundle::{self, BundleOptions};
use ov_compiler::deploy::{resolve_deploy, DeployRequest};
use ov_compiler::lower::lower;
use ov_compiler::plan::{Gates, InstallPlan};
use ov_compiler::project::Project;
use ov_compiler::render::{render, Engine, Rendered};
use ov_compiler::resolve::resolve;
use render_support::{all_scripts, error_chain, have_tool, under_ci};

const DISTROS: [&str; 4] = ["archlinux", "debian:12", "fedora:43", "ubuntu:24.04"];

const ALL_GATES: Gates = Gates {
    allow_repo_changes: true,
    allow_root_tasks: true,
    with_services: true,
};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn corpus_root() -> PathBuf {
    manifest_dir().join("../../shared/corpus/overthink-3e714536")
}

/// The loaded corpus, or `None` (with a message) when it is absent outside CI.
fn corpus() -> Option<Project> {
    let root = corpus_root();
    if !root.join("overthink.yml").is_file() {
        assert!(
            !under_ci(),
            "corpus not found at {} (required under CI)",
            root.display()
        );
        eprintln!("skipping: corpus not found at {}", root.display());
        return None;
    }
    Some(Project::load(&root).expect("the corpus loads"))
}

fn plan_for(p: &Project, name: &str, distro: Option<&str>, layers: &[String]) -> InstallPlan {
    let req = DeployRequest {
        name: name.to_string(),
        add_layers: layers.to_vec(),
        distro: distro.map(String::from),
        gates: ALL_GATES,
        user: None,
    };
    let (deploy, gates, requested) = resolve_deploy(p, &req).expect("deploy resolves");
    let order = resolve(&p.layers, &requested).expect("resolves");
    lower(p, deploy, gates, &order).unwrap_or_else(|e| panic!("lower {layers:?}: {e}"))
}

fn render_ok(plan: &InstallPlan, root: &Path, what: &str) -> Rendered {
    let engine = Engine::new(None).expect("engine");
    render(plan, root, &engine).unwrap_or_else(|e| panic!("render {what}: {}", error_chain(&e)))
}

/// `bash -n` on every script, ShellCheck on all of them in one run per batch; returns failures.
fn check_scripts(scripts: &[(String, String)]) -> Vec<String> {
    let mut failures = Vec::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, (name, text)) in scripts.iter().enumerate() {
        let file = dir.path().join(format!("{i:05}.sh"));
        std::fs::write(&file, text).expect("write");
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(&file)
            .output()
            .expect("bash");
        if !out.status.success() {
            failures.push(format!(
                "bash -n {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        files.push((file, name));
    }
    if have_tool("shellcheck", &["--version"]) {
        for chunk in files.chunks(200) {
            let out = std::process::Command::new("shellcheck")
                .args(["-S", "warning", "-s", "bash", "-f", "gcc"])
                .args(chunk.iter().map(|(f, _)| f))
                .output()
                .expect("shellcheck");
            if !out.status.success() {
                let mut text = String::from_utf8_lossy(&out.stdout).to_string();
                for (f, name) in chunk {
                    text = text.replace(&f.display().to_string(), name);
                }
                failures.push(format!("shellcheck:\n{text}"));
            }
        }
    }
    failures
}

#[test]
fn the_whole_corpus_renders_on_every_distro_and_passes_the_shell_checks() {
    let Some(p) = corpus() else { return };
    if !have_tool("bash", &["-c", "true"]) {
        return;
    }
    let all: Vec<String> = p.layers.keys().cloned().collect();
    let mut scripts: BTreeSet<(String, String)> = BTreeSet::new();
    let mut counts = Vec::new();
    for distro in DISTROS {
        let plan = plan_for(&p, "host", Some(distro), &all);
        let r = render_ok(&plan, &p.root, &format!("the corpus on {distro}"));
        assert_eq!(r.layers.len(), plan.layers.len());
        // The whole corpus as one bundle: its runtime scripts (which embed the layer table) go
        // through the same shell checks as the step scripts.
        let engine = Engine::new(None).expect("engine");
        let b = bundle::build(&plan, &r, &engine, &options())
            .unwrap_or_else(|e| panic!("bundle of the corpus on {distro}: {}", error_chain(&e)));
        for f in b.files.iter().filter(|f| f.path.ends_with(".sh")) {
            if !f.path.contains("/layers/") {
                scripts.insert((
                    format!("{distro}/bundle/{}", f.path),
                    String::from_utf8_lossy(&f.data).into_owned(),
                ));
            }
        }
        let these = all_scripts(&r);
        counts.push((distro, these.len()));
        for (name, text) in these {
            scripts.insert((format!("{distro}/{name}"), text));
        }
        scripts.insert((
            format!("{distro}/lib.sh"),
            format!("{}{}", render_support::RUNTIME_SHIM, r.step_lib),
        ));
    }
    // Identical scripts (same layer, same text on two distros) are checked once.
    let mut seen = BTreeSet::new();
    let unique: Vec<(String, String)> = scripts
        .into_iter()
        .filter(|(_, text)| seen.insert(text.clone()))
        .collect();
    let failures = check_scripts(&unique);
    assert!(
        failures.is_empty(),
        "{} of {} scripts fail:\n{}",
        failures.len(),
        unique.len(),
        failures.join("\n")
    );
    assert!(counts.iter().all(|(_, n)| *n > 137), "{counts:?}");
}

fn options() -> BundleOptions {
    BundleOptions {
        source_date_epoch: None,
        ov_version: "0.0.0-test".into(),
        ..Default::default()
    }
}

#[test]
fn every_corpus_layer_compiles_alone_on_every_distro() {
    let Some(p) = corpus() else { return };
    let engine = Engine::new(None).expect("engine");
    let mut failures = Vec::new();
    for name in p.layers.keys() {
        for distro in DISTROS {
            let plan = plan_for(&p, "host", Some(distro), std::slice::from_ref(name));
            // `ov compile` of each layer alone: render, then build the bundle.
            let built = render(&plan, &p.root, &engine)
                .map_err(|e| error_chain(&e))
                .and_then(|r| {
                    bundle::build(&plan, &r, &engine, &options()).map_err(|e| error_chain(&e))
                });
            if let Err(e) = built {
                failures.push(format!("{name} on {distro}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// All scripts of a render as one reviewable text (payload paths relative to `root`).
fn snapshot_text(r: &Rendered, root: &Path) -> String {
    let mut out = String::new();
    for (i, l) in r.layers.iter().enumerate() {
        out.push_str(&format!("##### layer {} {}\n", i + 1, l.name));
        for s in &l.scripts {
            out.push_str(&format!(
                "--- {} steps: {:?}\n{}",
                s.file_name, s.steps, s.content
            ));
        }
        out.push_str(&format!("--- undo.sh\n{}", l.undo));
        for f in &l.payload {
            let src = f.source_path.strip_prefix(root).unwrap_or(&f.source_path);
            out.push_str(&format!(
                "--- payload {} <- {}\n",
                f.bundle_path,
                src.display()
            ));
        }
    }
    out
}

#[test]
fn example_demo_vm() {
    let root = manifest_dir().join("../examples/demo");
    let p = Project::load(&root).expect("example project loads");
    let plan = plan_for(&p, "vm:demo", None, &["demo-node".to_string()]);
    let r = render_ok(&plan, &p.root, "vm:demo");
    let failures = check_scripts(&all_scripts(&r));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    insta::assert_snapshot!("example__demo-vm", snapshot_text(&r, &p.root));
}

fn features(distro: &str) {
    let root = manifest_dir().join("tests/fixtures/plan/features");
    let p = Project::load(&root).expect("fixture loads");
    let plan = plan_for(&p, "host", Some(distro), &["app".to_string()]);
    let r = render_ok(&plan, &p.root, distro);
    let failures = check_scripts(&all_scripts(&r));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    insta::assert_snapshot!(
        format!("features__{}", distro.replace(':', "-")),
        snapshot_text(&r, &p.root)
    );
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
