//! Stage `load` error tests: each malformed fixture is rejected, and its rendered message (file,
//! line, column, source line, hint) is pinned by one insta snapshot per fixture.

use std::path::{Path, PathBuf};

use ov_compiler::layer_parse::{parse_layer, LayerError, ParseContext};
use ov_compiler::project::{Project, ProjectError};
use ov_compiler::yaml::YamlErrorKind;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/load")
}

/// Parse `layers/<case>.yml` as the layer `<case>`, shown as `layers/<case>/layer.yml`.
fn layer_error(case: &str) -> LayerError {
    let text =
        std::fs::read_to_string(fixtures().join("layers").join(format!("{case}.yml"))).unwrap();
    let shown = PathBuf::from(format!("layers/{case}/layer.yml"));
    match parse_layer(case, &shown, &text, &ParseContext::builtin()) {
        Ok(layer) => panic!("`{case}` parsed but must be rejected: {layer:#?}"),
        Err(e) => e,
    }
}

fn project_error(case: &str) -> ProjectError {
    match Project::load(&fixtures().join("projects").join(case)) {
        Ok(_) => panic!("project `{case}` loaded but must be rejected"),
        Err(e) => e,
    }
}

/// Render with the fixture directory replaced, so snapshots do not depend on the checkout.
fn render(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    let base = fixtures().join("projects");
    s.replace(&format!("{}/", base.display()), "[projects]/")
}

fn kind(e: &LayerError) -> YamlErrorKind {
    e.diagnostic()
        .map(|d| d.kind)
        .unwrap_or_else(|| panic!("no diagnostic: {e}"))
}

/// One test per layer fixture: expected kind, expected (line, column), snapshot of the message.
macro_rules! layer_case {
    ($test:ident, $case:literal, $kind:ident, $line:literal, $col:literal) => {
        #[test]
        fn $test() {
            let e = layer_error($case);
            let d = e.diagnostic().expect("located diagnostic");
            assert_eq!(kind(&e), YamlErrorKind::$kind, "{e}");
            assert_eq!((d.line, d.column), ($line, $col), "{e}");
            assert_eq!(d.path, Path::new(concat!("layers/", $case, "/layer.yml")));
            insta::assert_snapshot!(concat!("layer-", $case), render(&e));
        }
    };
}

layer_case!(
    unknown_key_suggests_service,
    "unknown-key",
    UnknownKey,
    6,
    3
);
layer_case!(
    unknown_task_key_suggests_user,
    "unknown-task-key",
    UnknownKey,
    5,
    7
);
layer_case!(wrong_type_is_named, "wrong-type", WrongType, 3, 12);
layer_case!(task_without_verb, "task-no-verb", Invalid, 4, 7);
layer_case!(task_with_misspelt_verb, "task-verb-typo", Invalid, 4, 7);
layer_case!(task_with_two_verbs, "task-two-verbs", Invalid, 5, 7);
layer_case!(duplicate_key, "duplicate-key", DuplicateKey, 6, 5);
layer_case!(
    multi_document_layer,
    "multi-document",
    MultipleDocuments,
    4,
    1
);
layer_case!(legacy_flat_form, "legacy-flat", Invalid, 1, 1);
layer_case!(layer_plus_other_keys, "layer-plus-keys", Invalid, 3, 1);
layer_case!(unquoted_mode, "unquoted-mode", WrongType, 6, 13);
layer_case!(non_octal_mode, "bad-mode", Invalid, 5, 13);
layer_case!(
    unknown_distro_in_tag,
    "unknown-distro-tag",
    UnknownKey,
    3,
    3
);
layer_case!(
    field_not_for_format,
    "field-not-for-format",
    UnknownKey,
    4,
    5
);
layer_case!(unknown_repo_key, "unknown-repo-key", UnknownKey, 7, 9);
layer_case!(
    modifier_for_other_verb,
    "modifier-wrong-verb",
    Invalid,
    5,
    7
);
layer_case!(
    write_needs_content,
    "write-without-content",
    MissingKey,
    4,
    7
);
layer_case!(link_needs_target, "link-without-target", MissingKey, 4, 7);
layer_case!(
    copy_must_stay_in_layer,
    "copy-escapes-layer",
    Invalid,
    4,
    13
);
layer_case!(service_needs_exec, "service-without-exec", MissingKey, 4, 7);
layer_case!(service_restart_value, "service-bad-restart", Invalid, 6, 16);
layer_case!(env_name_must_be_shell_name, "env-bad-name", Invalid, 4, 5);
layer_case!(
    env_value_must_be_scalar,
    "env-nested-value",
    WrongType,
    5,
    7
);
layer_case!(top_level_not_a_mapping, "not-a-mapping", WrongType, 1, 1);
layer_case!(syntax_error_located, "syntax-error", Syntax, 4, 8);
layer_case!(unknown_tag_rejected, "unknown-tag", Syntax, 3, 21);
layer_case!(alias_bomb_hits_budget, "alias-bomb", Limit, 8, 49);
layer_case!(plural_services_hint, "plural-services", UnknownKey, 3, 3);
layer_case!(
    top_level_packages_hint,
    "top-level-packages",
    UnknownKey,
    3,
    3
);
layer_case!(bad_extract_kind, "bad-extract", Invalid, 5, 16);
layer_case!(
    write_path_with_parent_dir,
    "write-parent-dir",
    Invalid,
    5,
    14
);
layer_case!(
    copy_to_climbing_above_home,
    "copy-to-above-home",
    Invalid,
    5,
    11
);
layer_case!(
    uninstall_path_with_parent_dir,
    "uninstall-parent-dir",
    Invalid,
    8,
    11
);
layer_case!(
    mkdir_path_ending_in_parent_dir,
    "mkdir-parent-dir",
    Invalid,
    4,
    14
);

/// `.` and empty components in the paths a step writes to are dropped at load: one spelling
/// reaches the plan, the scripts and the ledger. A link's target is not a destination and stays
/// as written.
#[test]
fn destination_paths_are_normalised() {
    use ov_compiler::layer::TaskVerb;
    let text = r#"layer:
  tasks:
    - mkdir: /etc//foo/./bar/
    - write: "${HOME}/./.config//foo.conf"
      content: x
    - copy: foo.conf
      to: /etc/foo/./foo.conf
    - link: /usr/local/bin//foo
      target: ../lib/./foo
    - download: https://example.org/foo.tar.gz
      to: /opt/foo/
      uninstall: [/opt/foo//bin/foo]
"#;
    let layer = parse_layer(
        "foo",
        Path::new("layers/foo/layer.yml"),
        text,
        &ParseContext::builtin(),
    )
    .expect("parses");
    let verbs: Vec<&TaskVerb> = layer.tasks.iter().map(|t| &t.verb).collect();
    assert_eq!(
        verbs[0],
        &TaskVerb::Mkdir {
            path: "/etc/foo/bar".into()
        }
    );
    assert!(matches!(verbs[1], TaskVerb::Write { path, .. } if path == "${HOME}/.config/foo.conf"));
    assert!(matches!(verbs[2], TaskVerb::Copy { to: Some(to), .. } if to == "/etc/foo/foo.conf"));
    assert!(
        matches!(verbs[3], TaskVerb::Link { path, target } if path == "/usr/local/bin/foo" && target == "../lib/./foo")
    );
    assert!(matches!(verbs[4], TaskVerb::Download { to: Some(to), .. } if to == "/opt/foo"));
    assert_eq!(layer.tasks[4].uninstall, ["/opt/foo/bin/foo"]);
}

#[test]
fn include_cycle_names_the_chain() {
    let e = project_error("include-cycle");
    let ProjectError::IncludeCycle { chain, diag } = &e else {
        panic!("{e}")
    };
    let names: Vec<String> = chain
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["overthink.yml", "build.yml", "extra.yml", "overthink.yml"]
    );
    assert!(diag.path.ends_with("conf/extra.yml"));
    assert_eq!((diag.line, diag.column), (3, 5));
    insta::assert_snapshot!("project-include-cycle", render(&e));
}

#[test]
fn duplicate_layer_names_both_paths() {
    let e = project_error("duplicate-layer");
    let ProjectError::DuplicateLayer {
        name,
        first,
        second,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(name, "foo");
    // Sorted discovery: `base` before `extra`, whatever the directory listing order.
    assert!(
        first.ends_with("layers/base/foo") && second.ends_with("layers/extra/foo"),
        "{e}"
    );
    insta::assert_snapshot!("project-duplicate-layer", render(&e));
}

#[test]
fn unknown_deploy_node_key() {
    let e = project_error("unknown-node-key");
    assert!(
        matches!(&e, ProjectError::Schema(d) if d.kind == YamlErrorKind::UnknownKey),
        "{e}"
    );
    insta::assert_snapshot!("project-unknown-node-key", render(&e));
}

#[test]
fn distro_inherits_unknown_parent() {
    let e = project_error("distro-unknown-parent");
    insta::assert_snapshot!("project-distro-unknown-parent", render(&e));
}

#[test]
fn missing_include() {
    let e = project_error("missing-include");
    insta::assert_snapshot!("project-missing-include", render(&e));
}

#[test]
fn every_broken_layer_is_reported() {
    let e = project_error("broken-layers");
    let ProjectError::Layers(errors) = &e else {
        panic!("{e}")
    };
    assert_eq!(errors.len(), 2, "{e}");
    insta::assert_snapshot!("project-broken-layers", render(&e));
}

#[test]
fn vm_port_must_be_a_number() {
    let e = project_error("vm-bad-port");
    assert!(
        matches!(&e, ProjectError::Schema(d) if d.kind == YamlErrorKind::WrongType),
        "{e}"
    );
    insta::assert_snapshot!("project-vm-bad-port", render(&e));
}

#[test]
fn inline_layers_are_refused() {
    let e = project_error("inline-layers");
    insta::assert_snapshot!("project-inline-layers", render(&e));
}

layer_case!(check_unknown_kind, "check-unknown-kind", Invalid, 4, 7);
layer_case!(check_no_kind, "check-no-kind", MissingKey, 3, 7);
layer_case!(
    check_field_for_other_kind,
    "check-field-for-other-kind",
    Invalid,
    5,
    7
);
layer_case!(check_bad_type, "check-bad-type", WrongType, 5, 16);
layer_case!(check_bad_id, "check-bad-id", Invalid, 3, 11);
layer_case!(check_duplicate_id, "check-duplicate-id", Invalid, 5, 7);
