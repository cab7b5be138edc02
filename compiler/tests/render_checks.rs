//! Stage `bundle` (checks): a project whose layers carry every check kind, compiled for a Debian
//! host, gives a `test.sh` that is pinned by a snapshot, passes `bash -n` and shellcheck, is listed
//! in `SHA256SUMS` and the manifest, and is the same bytes on every build; a bundle without
//! checks has no `test.sh`.

mod bundle_fixture;

use std::path::Path;

use bundle_fixture::have_tool;
use ov_compiler::bundle::{self, Bundle, BundleOptions};
use ov_compiler::deploy::{resolve_deploy, DeployRequest};
use ov_compiler::lower::lower;
use ov_compiler::plan::Gates;
use ov_compiler::project::Project;
use ov_compiler::render::{self, Engine};
use ov_compiler::resolve::resolve;

fn compile(layers: &[&str], gates: Gates) -> Bundle {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plan/checks");
    let p = Project::load(&root).expect("fixture loads");
    let req = DeployRequest {
        name: "host".into(),
        add_layers: layers.iter().map(|s| s.to_string()).collect(),
        distro: Some("debian:12".into()),
        gates,
        user: Some("tester".into()),
    };
    let (deploy, gates, requested) = resolve_deploy(&p, &req).expect("deploy resolves");
    let order = resolve(&p.layers, &requested).expect("order");
    let plan = lower(&p, deploy, gates, &order).expect("lowers");
    let engine = Engine::new(None).expect("engine");
    let rendered = render::render(&plan, &p.root, &engine).expect("renders");
    bundle::build(
        &plan,
        &rendered,
        &engine,
        &BundleOptions {
            source_date_epoch: None,
            ov_version: "0.0.0-test".into(),
            ..Default::default()
        },
    )
    .expect("bundles")
}

fn file<'b>(b: &'b Bundle, path: &str) -> Option<&'b str> {
    b.files
        .iter()
        .find(|f| f.path == path)
        .map(|f| std::str::from_utf8(&f.data).expect("utf-8"))
}

#[test]
fn test_sh_carries_every_check_quoted_and_passes_the_shell_checks() {
    let b = compile(&["probe"], Gates::default());
    let test = file(&b, "test.sh").expect("test.sh");
    insta::assert_snapshot!("checks__test-sh", test);

    // Listed in SHA256SUMS like every file, and each layer's checks in the manifest.
    let sums = file(&b, "SHA256SUMS").expect("sums");
    assert!(sums.lines().any(|l| l.ends_with("  test.sh")), "{sums}");
    let probe = b
        .manifest
        .layers
        .iter()
        .find(|l| l.name == "probe")
        .expect("probe");
    let skipped: Vec<(&str, &str)> = probe
        .checks
        .iter()
        .filter_map(|c| c.skip.as_deref().map(|s| (c.id.as_str(), s)))
        .collect();
    assert_eq!(
        skipped.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [
            "in-container",
            "container-ip",
            "excluded",
            "mcp-ping",
            "nodes"
        ]
    );
    assert!(skipped[1].1.contains("${CONTAINER_IP}"), "{skipped:?}");
    assert!(skipped[2].1.contains("debian:12"), "{skipped:?}");
    // The service the `web` layer defines is checked under its unit name, and skipped here
    // because services are gated off.
    let web = &b.manifest.layers[0];
    assert_eq!(web.name, "web");
    assert!(web.checks[0]
        .skip
        .as_deref()
        .is_some_and(|s| s.contains("--with-services")));
    assert!(test.contains("ov-web-web.service"), "custom unit name");
    assert!(
        test.contains("\t'http://127.0.0.1:8080/'") || test.contains("\thttp://127.0.0.1:8080/"),
        "HOST_PORT took its default"
    );
    // The listing (`run.sh --list`) names the checks.
    assert!(file(&b, "run.sh")
        .expect("run.sh")
        .contains("check: jq-version [command, build]"));

    // The same bytes on every build.
    assert_eq!(b.archive, compile(&["probe"], Gates::default()).archive);

    if !have_tool("bash") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("test.sh");
    std::fs::write(&path, test).expect("write");
    let out = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if have_tool("shellcheck") {
        let out = std::process::Command::new("shellcheck")
            .args(["-S", "warning", "-s", "bash"])
            .arg(&path)
            .output()
            .expect("shellcheck");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn services_opened_by_the_gate_are_checked_and_bundles_without_checks_have_no_test_sh() {
    let b = compile(
        &["probe"],
        Gates {
            with_services: true,
            ..Gates::default()
        },
    );
    assert_eq!(b.manifest.layers[0].checks[0].skip, None);
    let tmp = tempfile::tempdir().expect("tmp");
    let (plan, rendered) = bundle_fixture::safe(
        &tmp.path().join("p"),
        &tmp.path().join("m"),
        bundle_fixture::PayloadModes::default(),
    );
    let plain = bundle_fixture::build(&plan, &rendered);
    assert!(file(&plain, "test.sh").is_none());
    assert!(!file(&plain, "SHA256SUMS")
        .expect("sums")
        .contains("test.sh"));
}
