//! Stage tests for `resolve` → `deploy` → `lower` over the real corpus (137 layers of overthink
//! at 3e714536), used in place: the reference's resolved orders, and every layer (and all layers
//! at once) lowering on every distro with a deterministic, path-free plan.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ov_compiler::deploy::{resolve_deploy, DeployRequest};
use ov_compiler::layer::Layer;
use ov_compiler::lower::lower;
use ov_compiler::plan::{Action, Gates, InstallPlan, Venue};
use ov_compiler::project::Project;
use ov_compiler::resolve::resolve;

const DISTROS: [&str; 4] = ["archlinux", "debian:12", "fedora:43", "ubuntu:24.04"];

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/overthink-3e714536")
}

/// The loaded corpus, or `None` (with a message) when it is absent outside CI.
fn corpus() -> Option<Project> {
    let root = corpus_root();
    if !root.join("overthink.yml").is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "corpus not found at {} (required under CI)",
            root.display()
        );
        eprintln!("skipping: corpus not found at {}", root.display());
        return None;
    }
    Some(Project::load(&root).expect("the corpus loads"))
}

fn order(p: &Project, names: &[&str]) -> Vec<String> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    resolve(&p.layers, &names).unwrap_or_else(|e| panic!("resolve {names:?}: {e}"))
}

fn plan_for(p: &Project, distro: &str, gates: Gates, layers: &[String]) -> InstallPlan {
    let req = DeployRequest {
        name: "host".to_string(),
        add_layers: layers.to_vec(),
        distro: Some(distro.to_string()),
        gates,
        user: None,
    };
    let (deploy, gates, requested) = resolve_deploy(p, &req).expect("host deploy resolves");
    let order = resolve(&p.layers, &requested).expect("resolves");
    lower(p, deploy, gates, &order).unwrap_or_else(|e| panic!("lower {layers:?} on {distro}: {e}"))
}

const SWAY_DESKTOP_VNC: [&str; 24] = [
    "asciinema",
    "desktop-fonts",
    "fastfetch",
    "nodejs",
    "supervisord",
    "chrome-devtools-mcp",
    "chrome",
    "dbus",
    "pipewire",
    "pavucontrol",
    "sway",
    "chrome-sway",
    "swaync",
    "thunar",
    "tmux",
    "waybar",
    "wayvnc",
    "wf-recorder",
    "wl-overlay",
    "wl-screenshot-grim",
    "wl-tools",
    "xdg-portal",
    "xfce4-terminal",
    "sway-desktop-vnc",
];

#[test]
fn reference_orders_are_reproduced() {
    let Some(p) = corpus() else { return };
    assert_eq!(order(&p, &["pre-commit"]), ["nodejs", "rust", "pre-commit"]);
    assert_eq!(order(&p, &["claude-code"]), ["nodejs", "claude-code"]);
    assert_eq!(
        order(&p, &["agent-forwarding"]),
        ["direnv", "gnupg", "ssh-client"]
    );
    assert_eq!(
        order(&p, &["hermes"]),
        [
            "ffmpeg",
            "nodejs",
            "ripgrep",
            "supervisord",
            "pipewire",
            "hermes"
        ]
    );
    // sway-desktop (present) is the 24-layer order minus wayvnc and sway-desktop-vnc itself.
    let without: Vec<&str> = SWAY_DESKTOP_VNC
        .iter()
        .copied()
        .filter(|l| !["wayvnc", "sway-desktop-vnc"].contains(l))
        .collect();
    assert_eq!(order(&p, &["sway-desktop"]), without);
}

#[test]
fn sway_desktop_vnc_order_with_the_missing_layer_restored() {
    let Some(mut p) = corpus() else { return };
    // `sway-desktop-vnc` is one of the 30 layers not in the corpus; the original project
    // composes it as `layers: [sway-desktop, wayvnc]`, with content of its own.
    assert!(!p.layers.contains_key("sway-desktop-vnc"));
    let vnc = Layer {
        name: "sway-desktop-vnc".to_string(),
        layers: vec!["sway-desktop".to_string(), "wayvnc".to_string()],
        env: vec![("WAYVNC_PORT".to_string(), "5900".to_string())],
        ..Layer::default()
    };
    p.layers.insert(vnc.name.clone(), vnc);
    assert_eq!(order(&p, &["sway-desktop-vnc"]), SWAY_DESKTOP_VNC);
}

#[test]
fn several_requests_share_one_order() {
    let Some(p) = corpus() else { return };
    // One order, each layer once (`nodejs` is shared), request by request.
    let both = order(&p, &["pre-commit", "claude-code"]);
    assert_eq!(both, ["nodejs", "rust", "pre-commit", "claude-code"]);
    assert_eq!(
        order(&p, &["claude-code", "pre-commit", "nodejs"]),
        ["nodejs", "claude-code", "rust", "pre-commit"]
    );
}

#[test]
fn all_layers_at_once_respect_every_edge_and_drop_pure_composers() {
    let Some(p) = corpus() else { return };
    let all: Vec<String> = p.layers.keys().cloned().collect();
    let names: Vec<&str> = all.iter().map(String::as_str).collect();
    let ord = order(&p, &names);
    let pos = |n: &str| ord.iter().position(|x| x == n);
    // Each layer at most once.
    assert_eq!(ord.iter().collect::<BTreeSet<_>>().len(), ord.len());
    // The content-less composers in the corpus vanish; nothing else.
    let missing: BTreeSet<&str> = names.iter().copied().filter(|n| pos(n).is_none()).collect();
    let expected: BTreeSet<&str> = [
        "agent-forwarding",
        "bootc-base",
        "chrome-kwin",
        "chrome-niri",
        "hermes-full",
        "kwin-desktop",
        "mutter-desktop",
        "niri-desktop",
        "openclaw-full",
        "openclaw-full-ml",
        "selkies-desktop",
        "sway-desktop",
        "x11-desktop",
    ]
    .into_iter()
    .filter(|n| p.layers.contains_key(*n))
    .collect();
    assert_eq!(missing, expected);
    // Every written edge between layers that stay points backwards.
    for (name, layer) in &p.layers {
        let Some(me) = pos(name) else { continue };
        for dep in layer.depends.iter().chain(&layer.layers) {
            if let Some(d) = pos(dep) {
                assert!(d < me, "{dep} must come before {name}");
            }
        }
    }
}

#[test]
fn every_layer_lowers_on_every_distro() {
    let Some(p) = corpus() else { return };
    for distro in DISTROS {
        for name in p.layers.keys() {
            let plan = plan_for(&p, distro, Gates::default(), std::slice::from_ref(name));
            for lp in &plan.layers {
                assert!(
                    lp.source.starts_with("layers/"),
                    "{name}: source `{}` is not project-relative",
                    lp.source
                );
                for s in &lp.steps {
                    // Closed gates: a gated step is always skipped, naming its flag.
                    if let Some(g) = s.gate {
                        let skip = s.skip.as_ref().expect("gated step skipped");
                        assert_eq!(skip.enable_with, Some(g));
                    }
                    if s.venue == Venue::Skip {
                        assert!(s.skip.is_some(), "{name}: skip venue without reason");
                    }
                }
            }
        }
    }
}

#[test]
fn all_layers_at_once_lower_deterministically_with_every_step_kind() {
    let Some(p) = corpus() else { return };
    let all: Vec<String> = p.layers.keys().cloned().collect();
    let mut kinds = BTreeSet::new();
    let open = Gates {
        allow_repo_changes: true,
        allow_root_tasks: true,
        with_services: true,
    };
    for distro in DISTROS {
        let plan = plan_for(&p, distro, open, &all);
        let again = plan_for(&p, distro, open, &all);
        let json = serde_json::to_string(&plan).expect("serialises");
        assert_eq!(json, serde_json::to_string(&again).expect("serialises"));
        assert!(
            !json.contains(corpus_root().to_str().unwrap_or("\u{0}")),
            "absolute project path leaked into the plan"
        );
        let ord = resolve(&p.layers, &all).expect("resolves");
        let lowered: Vec<&str> = plan.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(lowered, ord);
        for lp in &plan.layers {
            for s in &lp.steps {
                kinds.insert(s.kind());
                // Open gates: only intrinsic skips remain.
                if let Some(skip) = &s.skip {
                    assert_eq!(skip.enable_with, None, "{}: {}", lp.name, skip.reason);
                }
            }
        }
    }
    let expected: BTreeSet<&str> = [
        "SystemPackages",
        "RepoChange",
        "Task",
        "File",
        "ShellHook",
        "ServicePackaged",
        "ServiceCustom",
        "Builder",
        "ContainerOnly",
    ]
    .into_iter()
    .collect();
    assert_eq!(kinds, expected);
}

#[test]
fn ov_layer_copies_a_missing_build_artifact_as_a_skipped_file() {
    let Some(p) = corpus() else { return };
    let plan = plan_for(&p, "archlinux", Gates::default(), &["ov".to_string()]);
    let step = &plan.layers[0].steps[0];
    assert!(matches!(&step.action, Action::File { source, .. } if source == "bin/ov"));
    assert_eq!(step.venue, Venue::Skip);
    assert!(step
        .skip
        .as_ref()
        .is_some_and(|s| s.reason.contains("`bin/ov`")));
}

#[test]
fn arch_vm_node_compiles_its_layers() {
    let Some(p) = corpus() else { return };
    let req = DeployRequest {
        name: "arch-vm".to_string(),
        ..DeployRequest::default()
    };
    let (deploy, gates, requested) = resolve_deploy(&p, &req).expect("arch-vm resolves");
    assert_eq!(deploy.name, "vm:arch");
    assert_eq!(deploy.distro.tags, ["archlinux"]);
    assert_eq!(deploy.user.as_deref(), Some("arch"));
    assert_eq!(requested, ["ripgrep", "uv", "pre-commit"]);
    assert!(gates.with_services && gates.allow_repo_changes && !gates.allow_root_tasks);
    let ord = resolve(&p.layers, &requested).expect("resolves");
    // The node's add_layers in their written order; pre-commit's dependencies before it.
    assert_eq!(ord, ["ripgrep", "uv", "nodejs", "rust", "pre-commit"]);
    let plan = lower(&p, deploy, gates, &ord).expect("lowers");
    assert_eq!(plan.layers.len(), 5);
}
