//! Stage `bundle` test in its own process: the umask (process-wide, so not shared with other
//! tests) changes neither the archive bytes nor the modes of the written files.

mod bundle_fixture;

use std::os::unix::fs::PermissionsExt;

use bundle_fixture::{build, safe, PayloadModes};
use rustix::fs::Mode;

#[test]
fn another_umask_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let marker = tmp.path().join("m");
    let (plan, rendered) = safe(&tmp.path().join("a"), &marker, PayloadModes::default());
    let reference = build(&plan, &rendered);

    let old = rustix::process::umask(Mode::from_raw_mode(0o077));
    // Payload files created under this umask get other permission bits.
    let (plan2, rendered2) = safe(
        &tmp.path().join("b"),
        &marker,
        PayloadModes {
            plain: 0o600,
            exec: 0o700,
        },
    );
    let under = build(&plan2, &rendered2);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let (archive, sha) = ov_compiler::bundle::write(&under, &out.join("b.tar.gz")).expect("write");
    let unpacked = ov_compiler::bundle::write_unpacked(&under, &out).expect("unpacked");
    rustix::process::umask(old);

    assert_eq!(under.archive, reference.archive);
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&archive), 0o644);
    assert_eq!(mode(&sha), 0o644);
    assert_eq!(mode(&unpacked), 0o755);
    assert_eq!(mode(&unpacked.join("layers/01-alpha")), 0o755);
    assert_eq!(mode(&unpacked.join("run.sh")), 0o755);
    assert_eq!(mode(&unpacked.join("manifest.json")), 0o644);
    assert_eq!(mode(&unpacked.join("files/alpha/bin/tool")), 0o755);
}
