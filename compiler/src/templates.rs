//! Stage `render` (templates): the shell templates embedded in the binary, by relative name under
//! `templates/`; a test in `render` checks this list equals the directory, byte for byte.

/// (name, source) of every embedded template, sorted by name.
pub const EMBEDDED: &[(&str, &str)] = &[(
    "steps/header.sh.j2",
    include_str!("../../templates/steps/header.sh.j2"),
)];
