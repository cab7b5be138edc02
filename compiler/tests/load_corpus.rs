//! Corpus tests for stage `load`: every layer of the real overthink corpus at 3e714536 parses,
//! and the whole project loads with the expected distros, deploy node and VM.

use std::path::PathBuf;

use ov_compiler::layer_parse::{load_layer_dir, ParseContext};
use ov_compiler::project::{BaseUser, InstallOpts, NodeTarget, Project};

/// The corpus, used in place; `None` (with a message) when it is absent outside CI.
fn corpus() -> Option<PathBuf> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/overthink-3e714536");
    if dir.join("overthink.yml").is_file() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!("corpus not found at {} (required under CI)", dir.display());
    }
    eprintln!("skipping: corpus not found at {}", dir.display());
    None
}

#[test]
fn every_corpus_layer_parses() {
    let Some(root) = corpus() else { return };
    let ctx = ParseContext::builtin();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("layer.yml").is_file())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 137);
    let mut failures = Vec::new();
    for dir in &dirs {
        if let Err(e) = load_layer_dir(dir, &ctx) {
            failures.push(e.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn corpus_project_loads() {
    let Some(root) = corpus() else { return };
    let p = Project::load(&root).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.layers.len(), 137);
    assert!(p
        .layers
        .values()
        .all(|l| l.file == root.join("layers").join(&l.name).join("layer.yml")));

    let names: Vec<&str> = p.distros.keys().map(String::as_str).collect();
    assert_eq!(names, ["archlinux", "debian", "fedora", "ubuntu"]);
    assert_eq!(p.distros["archlinux"].formats, ["pac", "aur"]);
    assert_eq!(p.distros["debian"].formats, ["deb"]);
    assert_eq!(p.distros["fedora"].formats, ["rpm"]);
    let ubuntu = &p.distros["ubuntu"];
    assert_eq!(ubuntu.inherits.as_deref(), Some("debian"));
    assert_eq!(ubuntu.formats, ["deb"]);
    assert_eq!(
        ubuntu.base_user,
        Some(BaseUser {
            name: "ubuntu".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/ubuntu".into()
        })
    );
    assert_eq!(p.distros["debian"].base_user, None);
    let formats: Vec<&str> = p.format_names.iter().map(String::as_str).collect();
    assert_eq!(formats, ["aur", "deb", "pac", "rpm"]);

    let node = &p.deployments["arch-vm"];
    assert_eq!(node.target, NodeTarget::Vm);
    assert_eq!(node.vm_source.as_deref(), Some("arch"));
    assert_eq!(node.add_layers, ["ripgrep", "uv", "pre-commit"]);
    assert_eq!(
        node.install_opts,
        InstallOpts {
            with_services: true,
            allow_repo_changes: true,
            allow_root_tasks: false,
            skip_incompatible: true,
            verify: true,
        }
    );
    let child = p.node("arch-vm.arch-host").expect("child node");
    assert_eq!(child.target, NodeTarget::Host);
    assert_eq!(child.add_layers, ["direnv"]);
    assert_eq!(p.deployments["sway-pod"].target, NodeTarget::Pod);

    let vm = &p.vms["arch"];
    assert_eq!(vm.ssh_port, Some(2224));
    assert_eq!(vm.base_user.as_deref(), Some("arch"));
    assert_eq!(vm.source_kind.as_deref(), Some("cloud_image"));
    assert_eq!(vm.key_source.as_deref(), Some("generate"));
    assert_eq!(vm.ssh_user, None);
    assert_eq!(
        p.vms["openclaw-browser-bootc-bootc"].ssh_user.as_deref(),
        Some("root")
    );
}

#[test]
fn every_corpus_check_parses_into_its_kind() {
    let Some(root) = corpus() else { return };
    let ctx = ParseContext::builtin();
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    let (mut layers, mut deploy_scoped) = (0, 0);
    for entry in std::fs::read_dir(root.join("layers")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("layer.yml").is_file() {
            continue;
        }
        let layer = load_layer_dir(&dir, &ctx).unwrap_or_else(|e| panic!("{e}"));
        layers += usize::from(!layer.checks.is_empty());
        for c in &layer.checks {
            *kinds.entry(c.probe.kind()).or_default() += 1;
            deploy_scoped += usize::from(c.scope == ov_compiler::layer::CheckScope::Deploy);
        }
        assert!(
            layer.container_only.iter().all(|c| c.key != "tests"),
            "`tests` is no longer a container-only key"
        );
    }
    assert_eq!(layers, 72, "layers with `tests:`");
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            ("addr", 10),
            ("command", 62),
            ("file", 159),
            ("http", 8),
            ("k8s", 4),
            ("mcp", 5),
            ("package", 27),
            ("service", 18)
        ]
    );
    assert_eq!(deploy_scoped, 58);
}
