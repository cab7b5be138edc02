//! Stage `render` (templates): the shell templates embedded in the binary, by relative name under
//! `templates/`; a test in `render` checks this list equals the directory, byte for byte.

/// (name, source) of every embedded template, sorted by name.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "bundle/README.txt.j2",
        include_str!("../../templates/bundle/README.txt.j2"),
    ),
    (
        "bundle/common.sh.j2",
        include_str!("../../templates/bundle/common.sh.j2"),
    ),
    (
        "bundle/lib.sh.j2",
        include_str!("../../templates/bundle/lib.sh.j2"),
    ),
    (
        "bundle/run.sh.j2",
        include_str!("../../templates/bundle/run.sh.j2"),
    ),
    (
        "bundle/undo.sh.j2",
        include_str!("../../templates/bundle/undo.sh.j2"),
    ),
    (
        "bundle/verify.sh.j2",
        include_str!("../../templates/bundle/verify.sh.j2"),
    ),
    (
        "steps/header.sh.j2",
        include_str!("../../templates/steps/header.sh.j2"),
    ),
];
