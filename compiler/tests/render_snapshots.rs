//! Stage `render`: snapshots of the scripts rendered for hand-built plans that use every step
//! kind, on pac, deb and rpm (one snapshot per fixture), and the structural rules every rendered
//! script follows: shebang, `set -euo pipefail`, lib.sh, stdin from /dev/null, `bash -n`,
//! ShellCheck at warning level.

mod render_support;

use ov_compiler::plan::{Scope, Venue};
use ov_compiler::render::Rendered;
use render_support::*;

/// All scripts and the payload list of a render, as one reviewable text.
fn snapshot_text(r: &Rendered) -> String {
    let root = fixture_root();
    let mut out = String::new();
    for (i, l) in r.layers.iter().enumerate() {
        out.push_str(&format!("##### layer {} {}\n", i + 1, l.name));
        for s in &l.scripts {
            out.push_str(&format!(
                "--- {} ({}, {}) steps: {:?}\n{}",
                s.file_name,
                s.scope.as_str(),
                s.venue.as_str(),
                s.steps,
                s.content
            ));
        }
        out.push_str(&format!("--- undo.sh\n{}", l.undo));
        for p in &l.payload {
            let src = p.source_path.strip_prefix(&root).unwrap_or(&p.source_path);
            out.push_str(&format!(
                "--- payload {} <- {}\n",
                p.bundle_path,
                src.display()
            ));
        }
    }
    out
}

#[test]
fn every_kind_pac() {
    let r = render_plan(&every_kind_plan("pac"), &fixture_root());
    insta::assert_snapshot!("every_kind_pac", snapshot_text(&r));
}

#[test]
fn every_kind_deb() {
    let r = render_plan(&every_kind_plan("deb"), &fixture_root());
    insta::assert_snapshot!("every_kind_deb", snapshot_text(&r));
}

#[test]
fn every_kind_rpm() {
    let r = render_plan(&every_kind_plan("rpm"), &fixture_root());
    insta::assert_snapshot!("every_kind_rpm", snapshot_text(&r));
}

#[test]
fn scripts_group_contiguous_scope_venue_runs_and_keep_skipped_steps_as_comments() {
    let r = render_plan(&every_kind_plan("deb"), &fixture_root());
    let config = &r.layers[1];
    let shape: Vec<(String, Scope, Venue)> = config
        .scripts
        .iter()
        .map(|s| (s.file_name.clone(), s.scope, s.venue))
        .collect();
    assert_eq!(
        shape,
        vec![
            ("01-system.sh".to_string(), Scope::System, Venue::HostNative),
            ("02-user.sh".to_string(), Scope::User, Venue::HostNative),
            ("03-system.sh".to_string(), Scope::System, Venue::HostNative),
        ]
    );
    let tools = &r.layers[0];
    let names: Vec<&str> = tools.scripts.iter().map(|s| s.file_name.as_str()).collect();
    assert_eq!(names, ["01-system.sh", "02-user-profile.sh"]);
    // Builders run in their own (container-builder) script.
    assert_eq!(r.layers[3].scripts[0].venue, Venue::ContainerBuilder);
    // The skipped layer: one runnable step; the skipped ones are comments around it and not
    // listed as performed steps.
    let skipped = &r.layers[4];
    assert_eq!(skipped.scripts.len(), 1);
    let s = &skipped.scripts[0];
    assert_eq!(s.steps, vec!["mkdir ~/.cache/demo".to_string()]);
    for reason in [
        "skipped: container-only key `ports`",
        "skipped: requires --allow-root-tasks",
        "skipped: deb section does not apply",
    ] {
        assert!(
            s.content.contains(reason),
            "missing `{reason}` in:\n{}",
            s.content
        );
    }
    // The skipped `cmd:` appears only in a comment.
    assert!(s
        .content
        .lines()
        .filter(|l| l.contains("echo never"))
        .all(|l| l.starts_with('#')));
}

#[test]
fn a_gate_that_is_not_open_skips_the_step() {
    let mut plan = every_kind_plan("deb");
    plan.gates.with_services = false;
    let r = render_plan(&plan, &fixture_root());
    let services = &r.layers[2];
    assert!(services.scripts.is_empty(), "{:?}", services.scripts);
    assert!(!services.undo.contains("ov_undo_service_disable"));
}

#[test]
fn every_script_has_the_contract_prologue() {
    for format in ["pac", "deb", "rpm"] {
        let r = render_plan(&every_kind_plan(format), &fixture_root());
        for (name, text) in all_scripts(&r) {
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some("#!/usr/bin/env bash"), "{name}");
            let body: Vec<&str> = lines.collect();
            let pos = |l: &str| body.iter().position(|x| *x == l);
            // A check script goes on past a failing look (it reports it) but not past an unset
            // variable; every other script stops at the first failure.
            let set_line = if name.ends_with(".check.sh") {
                "set -uo pipefail"
            } else {
                "set -euo pipefail"
            };
            let set = pos(set_line).unwrap_or_else(|| panic!("{name}: no `{set_line}`"));
            // Install scripts skip the `.` when run.sh already sourced lib.sh (it runs them in a
            // subshell of its own); undo scripts always source it.
            let lib = pos(". \"${OV_BUNDLE}/lib.sh\"")
                .or_else(|| pos("[ \"${OV_LIB_LOADED:-}\" = \"$$\" ] || . \"${OV_BUNDLE}/lib.sh\""))
                .unwrap_or_else(|| panic!("{name}: no lib"));
            let stdin = pos("exec </dev/null").unwrap_or_else(|| panic!("{name}: no stdin"));
            assert!(set < lib && lib < stdin, "{name}: prologue order");
            assert!(
                body[..set].iter().all(|l| l.starts_with('#')),
                "{name}: only comments before set -e"
            );
        }
    }
}

#[test]
fn rendered_scripts_pass_bash_n_and_shellcheck() {
    let bash = have_tool("bash", &["-c", "true"]);
    let sc = have_tool("shellcheck", &["--version"]);
    if !bash {
        return;
    }
    let mut failures = Vec::new();
    for format in ["pac", "deb", "rpm"] {
        let r = render_plan(&every_kind_plan(format), &fixture_root());
        let mut scripts = all_scripts(&r);
        scripts.push((
            "lib.sh".to_string(),
            format!("{RUNTIME_SHIM}{}", r.step_lib),
        ));
        for (name, text) in scripts {
            let name = format!("{format}/{name}");
            if let Err(e) = bash_n(&name, &text) {
                failures.push(e);
            }
            if sc {
                if let Err(e) = shellcheck(&name, &text) {
                    failures.push(e);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn payload_travels_in_the_bundle() {
    let r = render_plan(&every_kind_plan("pac"), &fixture_root());
    let paths: Vec<&str> = r
        .layers
        .iter()
        .flat_map(|l| l.payload.iter().map(|p| p.bundle_path.as_str()))
        .collect();
    for want in [
        "files/config/sshd-wrapper",
        "files/config/config",
        "files/config/system_files/etc/demo/banner",
        "files/builders/pixi.toml",
        "files/builders/build.sh",
        "files/builders/package.json",
        "files/builders/Cargo.toml",
        "files/builders/src/main.rs",
    ] {
        assert!(paths.contains(&want), "{want} not in {paths:?}");
    }
    for l in &r.layers {
        for p in &l.payload {
            assert!(p.source_path.is_file(), "{}", p.source_path.display());
        }
    }
}
