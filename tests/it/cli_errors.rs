//! CLI tests, invalid input (issue #2): a table of malformed projects, each a small case
//! directory copied over a valid base project in a temp dir. `ov plan` must exit 3 (invalid
//! input), print nothing on stdout and one `error:` on stderr: located errors name
//! `file:line:column` and quote the offending source line; one snapshot per case (temp dir
//! shown as `[project]`).

use std::path::Path;

use crate::cli_common::{copy_tree, expect_code, fixtures, ov, run, Run};

/// Where a located error must point: file (relative to the project), line, column.
type Loc = Option<(&'static str, usize, usize)>;

/// Build the case's project in a temp dir and run `ov -C <dir> plan ARGS…`.
fn plan_case(case: &str, args: &[&str]) -> (tempfile::TempDir, Run) {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixtures().join("base"), dir.path());
    let overlay = fixtures().join("broken").join(case);
    if overlay.is_dir() {
        copy_tree(&overlay, dir.path());
    }
    let r = run(ov().arg("-C").arg(dir.path()).arg("plan").args(args));
    (dir, r)
}

fn check(case: &str, args: &[&str], loc: Loc, needles: &[&str]) {
    let (dir, r) = plan_case(case, args);
    expect_code(&r, 3, case);
    assert_eq!(r.stdout, "", "{case}: nothing on stdout");
    assert!(r.stderr.starts_with("error: "), "{case}: {}", r.stderr);
    assert_eq!(
        r.stderr.matches("error: ").count(),
        1,
        "{case}: one error: {}",
        r.stderr
    );
    for n in needles {
        assert!(r.stderr.contains(n), "{case}: want `{n}` in\n{}", r.stderr);
    }
    if let Some((file, line, col)) = loc {
        let path = dir.path().join(file);
        // The location, as an editor or terminal can follow it …
        let at = format!("error: {}:{line}:{col}: ", path.display());
        assert!(
            r.stderr.starts_with(&at),
            "{case}: want `{at}` in\n{}",
            r.stderr
        );
        // … and the offending line itself, quoted from the file, with a caret under the column.
        let text = std::fs::read_to_string(&path).expect("case file");
        let source = text.lines().nth(line - 1).expect("line in file");
        let quoted = format!("\n{line} | {source}\n");
        assert!(
            r.stderr.contains(&quoted),
            "{case}: want `{quoted}` in\n{}",
            r.stderr
        );
        let caret = format!("| {}^", " ".repeat(col - 1));
        assert!(
            r.stderr.contains(&caret),
            "{case}: want `{caret}` in\n{}",
            r.stderr
        );
    }
    insta::assert_snapshot!(case, filter(&r.stderr, dir.path()));
}

fn filter(text: &str, dir: &Path) -> String {
    text.replace(&dir.display().to_string(), "[project]")
}

macro_rules! case {
    ($test:ident, $case:literal, [$($arg:literal),*], $loc:expr, [$($needle:literal),* $(,)?]) => {
        #[test]
        fn $test() {
            check($case, &[$($arg),*], $loc, &[$($needle),*]);
        }
    };
}

case!(
    unknown_key_suggests_the_known_one,
    "unknown-key",
    ["vm:alpha"],
    Some(("layers/foo/layer.yml", 6, 3)),
    ["unknown key `servics`", "did you mean `service`?"]
);
case!(
    task_with_two_verbs,
    "task-two-verbs",
    ["vm:alpha"],
    Some(("layers/foo/layer.yml", 5, 7)),
    ["two verbs, `copy` and `write`"]
);
case!(
    duplicate_key,
    "duplicate-key",
    ["vm:alpha"],
    Some(("layers/foo/layer.yml", 6, 5)),
    ["duplicate key `FOO`", "already set at line 4"]
);
case!(
    multi_document_layer,
    "multi-document",
    ["vm:alpha"],
    Some(("layers/foo/layer.yml", 4, 1)),
    ["more than one YAML document"]
);
case!(
    legacy_flat_layer,
    "legacy-flat",
    ["vm:alpha"],
    Some(("layers/foo/layer.yml", 1, 1)),
    ["legacy flat", "wrap the contents in `layer:`"]
);
case!(
    unknown_distro_in_vm_spec,
    "unknown-distro",
    ["vm:alpha"],
    Some(("deploy.yml", 6, 15)),
    ["unknown distro `gentoo`", "`archlinux`, `debian`"]
);
case!(
    an_ssh_user_that_cannot_be_an_account,
    "bad-ssh-user",
    ["vm:alpha"],
    Some(("deploy.yml", 8, 13)),
    [
        "`vm.alpha.ssh.user` `deploy user; reboot` cannot be an account name",
        "only letters, digits and `._+-` are allowed"
    ]
);
// `/` was walked whole (minutes, and every `layer.yml` on the machine) before lowering refused
// the layers it found for being outside the project.
case!(
    a_discover_path_outside_the_project,
    "discover-outside",
    ["vm:alpha"],
    Some(("overthink.yml", 8, 7)),
    ["discover path `/` is outside the project"]
);
case!(
    cycle_between_layers,
    "layer-cycle",
    ["vm:alpha", "cyc-a"],
    None,
    ["circular dependency: `cyc-a` -> `cyc-b` -> `cyc-c` -> `cyc-a`"]
);
case!(
    unknown_layer_with_a_close_match,
    "unknown-layer",
    ["vm:alpha", "base-tool"],
    None,
    ["unknown layer `base-tool`", "did you mean `base-tools`?"]
);
case!(
    unknown_vm_lists_the_known_ones,
    "unknown-vm",
    ["vm:gamma"],
    None,
    ["unknown VM `gamma`", "(known VMs: `alpha`, `beta`)"]
);
case!(
    unknown_distro_on_the_command_line,
    "unknown-distro-flag",
    ["vm:alpha", "--distro", "gentoo"],
    None,
    ["unknown distro `gentoo`", "`archlinux`, `debian`"]
);

/// The base project itself is valid: every failure above comes from its case overlay (or its
/// arguments), not from the base.
#[test]
fn the_base_project_plans() {
    let (_dir, r) = plan_case("none", &["vm:alpha", "base-tools"]);
    expect_code(&r, 0, "base");
    assert!(r.stdout.contains("layers  1: base-tools\n"), "{}", r.stdout);
}

/// No project at all is invalid input too, and says where it looked.
#[test]
fn no_project_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = run(ov().current_dir(dir.path()).args(["plan", "vm:alpha"]));
    expect_code(&r, 3, "no project");
    assert!(
        r.stderr.starts_with("error: no `overthink.yml`"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&dir.path().display().to_string()),
        "{}",
        r.stderr
    );
}

/// A layer file that is not UTF-8 (here Latin-1 `é`) says where and what to do; before, the
/// error said only "cannot read" the file — the reason was dropped on the way out.
#[test]
fn a_layer_file_that_is_not_utf8_names_the_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixtures().join("base"), dir.path());
    let layer = std::fs::read_dir(dir.path().join("layers"))
        .expect("layers")
        .flatten()
        .map(|e| e.path().join("layer.yml"))
        .find(|p| p.is_file())
        .expect("a layer");
    let mut text = std::fs::read(&layer).expect("layer.yml");
    let lines = text.iter().filter(|&&b| b == b'\n').count();
    text.extend_from_slice(b"# caf\xe9\n");
    std::fs::write(&layer, &text).expect("write");
    let r = run(ov()
        .arg("-C")
        .arg(dir.path())
        .args(["plan", "vm:alpha", "base-tools"]));
    expect_code(&r, 3, "plan");
    let want = format!(
        "error: cannot read `{}`\n  caused by: not UTF-8 text: byte 0xe9 at line {}, column 6; save the file as UTF-8\n",
        layer.display(),
        lines + 1
    );
    assert_eq!(r.stderr, want);
}

/// A project file is read with a bound: a layer file of more than 8 MiB (here 1 GiB, sparse) is
/// refused by its size at once. Before, a 1 GiB layer file of one line took 25 s and 5 GB of
/// memory to end in a parse error.
#[test]
fn a_layer_file_of_many_mib_is_refused_by_its_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixtures().join("base"), dir.path());
    let layer = dir.path().join("layers/base-tools/layer.yml");
    assert!(layer.is_file(), "the base project changed");
    std::fs::File::options()
        .write(true)
        .open(&layer)
        .and_then(|f| f.set_len(1 << 30))
        .expect("a sparse 1 GiB file");
    let r = run(ov()
        .arg("-C")
        .arg(dir.path())
        .args(["plan", "vm:alpha", "base-tools"]));
    expect_code(&r, 3, "plan");
    assert_eq!(
        r.stderr,
        format!(
            "error: cannot read `{}`\n  caused by: 1073741824 bytes, more than the 8388608 a project or layer file may have; keep large content in files a layer copies\n",
            layer.display()
        )
    );
}

/// An include that names something other than a regular file says so (it said the file did
/// not exist).
#[test]
fn an_include_that_is_not_a_regular_file_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixtures().join("base"), dir.path());
    let top = dir.path().join("overthink.yml");
    let text = std::fs::read_to_string(&top).expect("overthink.yml");
    std::fs::write(
        &top,
        text.replace("  - deploy.yml\n", "  - deploy.yml\n  - layers\n"),
    )
    .expect("write");
    let r = run(ov()
        .arg("-C")
        .arg(dir.path())
        .args(["plan", "vm:alpha", "base-tools"]));
    expect_code(&r, 3, "plan");
    assert!(
        r.stderr
            .contains("included file `layers` is not a regular file"),
        "{}",
        r.stderr
    );
}
