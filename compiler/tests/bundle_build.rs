//! Stage `bundle` tests: layout, determinism, digests, manifest, errors, and that GNU tar,
//! `sha256sum`, `bash -n` and shellcheck accept what `bundle::build` writes.

mod bundle_fixture;

use std::path::Path;
use std::process::Command;

use bundle_fixture::{build, have_tool, options, safe, PayloadModes};
use ov_compiler::bundle::{self, BundleError};
use ov_compiler::render::Engine;

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn set_mtime(path: &Path, secs: u64) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .expect("set mtime");
}

#[test]
fn rebuilds_are_byte_identical_whatever_the_input_order_mtimes_and_modes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let marker = tmp.path().join("marker");
    let (plan, rendered) = safe(&tmp.path().join("p1"), &marker, PayloadModes::default());
    let first = build(&plan, &rendered);
    let again = build(&plan, &rendered);
    assert_eq!(first.archive, again.archive);

    // Same content elsewhere: other mtimes, other permission bits (as another umask or checkout
    // would give; the x bit is what survives), inputs in another order.
    let (plan2, mut rendered2) = safe(
        &tmp.path().join("p2"),
        &marker,
        PayloadModes {
            plain: 0o600,
            exec: 0o700,
        },
    );
    for (i, f) in rendered2
        .layers
        .iter()
        .flat_map(|l| l.payload.iter())
        .enumerate()
    {
        set_mtime(&f.source_path, 1_000_000_000 + i as u64 * 7777);
    }
    for l in &mut rendered2.layers {
        l.payload.reverse();
        l.scripts.reverse();
    }
    rendered2.overridden_templates.reverse();
    let second = build(&plan2, &rendered2);
    assert_eq!(first.sha256, second.sha256);
    assert_eq!(first.archive, second.archive);

    // The epoch is the only time in the archive.
    let engine = Engine::new(None).expect("engine");
    let dated =
        bundle::build(&plan, &rendered, &engine, &options(Some(1_700_000_000))).expect("builds");
    assert_ne!(dated.archive, first.archive);
    assert_eq!(dated.manifest.mtime, 1_700_000_000);
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(dated.archive.as_slice()));
    for e in ar.entries().expect("entries") {
        let e = e.expect("entry");
        assert_eq!(e.header().mtime().expect("mtime"), 1_700_000_000);
        assert_eq!(e.header().uid().expect("uid"), 0);
        assert_eq!(e.header().gid().expect("gid"), 0);
        assert_eq!(e.header().username().expect("name"), Some(""));
        assert_eq!(e.header().groupname().expect("name"), Some(""));
    }
    // gzip header: no mtime (bytes 4..8), fixed flags.
    assert_eq!(&first.archive[..4], &[0x1f, 0x8b, 8, 0]);
    assert_eq!(&first.archive[4..8], &[0, 0, 0, 0]);
}

#[test]
fn layout_matches_the_contract() {
    let tmp = tempfile::tempdir().expect("tmp");
    // A fixed marker path (the scripts never run here) keeps the digests stable for the snapshot.
    let (plan, rendered) = safe(
        tmp.path(),
        Path::new("/nonexistent/ov-marker"),
        PayloadModes::default(),
    );
    let b = build(&plan, &rendered);
    assert_eq!(b.top, "vm-test");
    assert_eq!(b.archive_name(), "vm-test.tar.gz");
    let paths: Vec<(&str, u32)> = b.files.iter().map(|f| (f.path.as_str(), f.mode)).collect();
    assert_eq!(
        paths,
        vec![
            ("README.txt", 0o644),
            ("SHA256SUMS", 0o644),
            ("files/alpha/bin/tool", 0o755),
            ("files/alpha/conf/alpha.conf", 0o644),
            ("files/beta/readme.md", 0o644),
            ("layers/01-alpha/01-system.sh", 0o755),
            ("layers/01-alpha/02-user.sh", 0o755),
            ("layers/01-alpha/undo.sh", 0o755),
            ("layers/02-beta/01-system.sh", 0o755),
            ("layers/02-beta/undo.sh", 0o755),
            ("layers/03-gamma/01-system.sh", 0o755),
            ("layers/03-gamma/undo.sh", 0o755),
            ("lib.sh", 0o755),
            ("manifest.json", 0o644),
            ("run.sh", 0o755),
            ("undo.sh", 0o755),
        ]
    );
    // SHA256SUMS lists every other file, sorted, in `sha256sum -c` format.
    let sums = String::from_utf8(b.files[1].data.clone()).expect("utf-8");
    let listed: Vec<&str> = sums.lines().map(|l| &l[66..]).collect();
    let others: Vec<&str> = paths
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| *p != "SHA256SUMS")
        .collect();
    assert_eq!(listed, others);
    // lib.sh = the step helpers from render, then the runtime helpers (which a shell that has
    // them already, run.sh or undo.sh, does not read: it returns before them).
    let lib = String::from_utf8(b.files[12].data.clone()).expect("utf-8");
    let runtime = lib.find("ov_json_str()").expect("runtime part");
    let steps = lib.find("ov_fixture_helper()").expect("step part");
    let guard = lib
        .find("if [[ ${ov_common_loaded:-} == \"$$\" ]]; then return 0; fi")
        .expect("the guard before the runtime part");
    assert!(steps < guard && guard < runtime);
    // The manifest in the archive is the one returned.
    let json: ov_compiler::manifest::Manifest =
        serde_json::from_slice(&b.files[13].data).expect("manifest parses");
    assert_eq!(json, b.manifest);
    insta::assert_json_snapshot!("safe_fixture_manifest", b.manifest);
}

#[test]
fn layer_digest_covers_content_not_position() {
    let tmp = tempfile::tempdir().expect("tmp");
    let marker = tmp.path().join("m");
    let (plan, rendered) = safe(&tmp.path().join("a"), &marker, PayloadModes::default());
    let base = build(&plan, &rendered);
    let digest = |b: &bundle::Bundle, name: &str| {
        b.manifest
            .layers
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.digest.clone())
            .expect("layer")
    };

    // Another payload byte in alpha: only alpha's digest moves.
    let (plan2, rendered2) = safe(&tmp.path().join("b"), &marker, PayloadModes::default());
    std::fs::write(
        &rendered2.layers[0].payload[1].source_path,
        "#!/bin/sh\necho Tool\n",
    )
    .expect("rewrite");
    let changed = build(&plan2, &rendered2);
    assert_ne!(digest(&changed, "alpha"), digest(&base, "alpha"));
    assert_eq!(digest(&changed, "beta"), digest(&base, "beta"));
    assert_eq!(digest(&changed, "gamma"), digest(&base, "gamma"));

    // The x bit of a payload file is content too.
    let (plan3, rendered3) = safe(
        &tmp.path().join("c"),
        &marker,
        PayloadModes {
            plain: 0o644,
            exec: 0o644,
        },
    );
    assert_ne!(
        digest(&build(&plan3, &rendered3), "alpha"),
        digest(&base, "alpha")
    );

    // An undo script change moves the digest as well.
    let mut rendered4 = rendered.clone();
    rendered4.layers[2].undo.push_str("# changed\n");
    assert_ne!(
        digest(&build(&plan, &rendered4), "gamma"),
        digest(&base, "gamma")
    );

    // Reordering layers renames their directories but keeps their digests.
    let (mut plan5, mut rendered5) = (plan.clone(), rendered.clone());
    plan5.layers.reverse();
    rendered5.layers.reverse();
    let moved = build(&plan5, &rendered5);
    assert_eq!(moved.manifest.layers[0].dir, "layers/01-gamma");
    for name in ["alpha", "beta", "gamma"] {
        assert_eq!(digest(&moved, name), digest(&base, name));
    }
}

#[test]
fn bad_inputs_are_clean_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (plan, rendered) = safe(tmp.path(), &tmp.path().join("m"), PayloadModes::default());
    let engine = Engine::new(None).expect("engine");
    let try_build = |p: &ov_compiler::plan::InstallPlan, r: &ov_compiler::render::Rendered| {
        bundle::build(p, r, &engine, &options(None)).expect_err("must fail")
    };

    let (mut p, mut r) = (plan.clone(), rendered.clone());
    p.layers[1].name = "../etc".into();
    r.layers[1].name = "../etc".into();
    let e = try_build(&p, &r);
    assert!(
        matches!(
            e,
            BundleError::Name {
                what: "layer name",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("`../etc`"), "{e}");

    let mut r = rendered.clone();
    r.layers.pop();
    let e = try_build(&plan, &r);
    assert!(matches!(e, BundleError::LayerMismatch { .. }), "{e}");

    let mut p = plan.clone();
    p.deploy.name = "vm:a b".into();
    assert!(matches!(
        try_build(&p, &rendered),
        BundleError::Name {
            what: "deploy name",
            ..
        }
    ));

    let mut p = plan.clone();
    p.deploy.id = "xyz".into();
    assert!(matches!(
        try_build(&p, &rendered),
        BundleError::Name {
            what: "deploy id",
            ..
        }
    ));

    let mut r = rendered.clone();
    r.layers[0].scripts[1].file_name = "02-system.sh".into();
    let e = try_build(&plan, &r);
    assert!(matches!(e, BundleError::ScriptName { .. }), "{e}");

    let mut r = rendered.clone();
    r.layers[0].payload[0].bundle_path = "files/beta/x".into();
    assert!(matches!(
        try_build(&plan, &r),
        BundleError::PayloadPath { .. }
    ));
    let mut r = rendered.clone();
    r.layers[0].payload[0].bundle_path = "files/alpha/../../run.sh".into();
    assert!(matches!(
        try_build(&plan, &r),
        BundleError::PayloadPath { .. }
    ));

    // A symlinked payload could pull any file of the compiling machine into the bundle.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink("/etc/hostname", &link).expect("symlink");
    let mut r = rendered.clone();
    r.layers[0].payload[0].source_path = link;
    let e = try_build(&plan, &r);
    assert!(matches!(e, BundleError::PayloadNotFile { .. }), "{e}");

    let mut r = rendered.clone();
    r.layers[0].payload[0].source_path = tmp.path().join("missing");
    assert!(matches!(try_build(&plan, &r), BundleError::Payload { .. }));

    let mut p = plan.clone();
    p.layers.clear();
    let mut r = rendered.clone();
    r.layers.clear();
    assert!(matches!(try_build(&p, &r), BundleError::Empty { .. }));
}

#[test]
fn gnu_tar_and_sha256sum_accept_the_bundle() {
    if !have_tool("tar") || !have_tool("sha256sum") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let (plan, rendered) = safe(
        &tmp.path().join("p"),
        &tmp.path().join("m"),
        PayloadModes::default(),
    );
    let b = build(&plan, &rendered);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let (archive, sha) = bundle::write(&b, &out.join(b.archive_name())).expect("writes");
    assert_eq!(std::fs::read(&archive).expect("read"), b.archive);
    assert_eq!(
        std::fs::read_to_string(&sha).expect("read"),
        format!("{}  vm-test.tar.gz\n", b.sha256)
    );
    run(Command::new("sha256sum")
        .args(["-c", "--strict", "vm-test.tar.gz.sha256"])
        .current_dir(&out));

    let listing = run(Command::new("tar")
        .args(["-tvzf", "vm-test.tar.gz", "--numeric-owner"])
        .current_dir(&out));
    let listing = String::from_utf8_lossy(&listing.stdout);
    for line in listing.lines() {
        assert!(line.contains(" 0/0 "), "owner not 0/0: {line}");
    }
    let names = run(Command::new("tar")
        .args(["-tzf", "vm-test.tar.gz"])
        .current_dir(&out));
    let names: Vec<String> = String::from_utf8_lossy(&names.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(names[0], "vm-test/");
    for f in &b.files {
        assert!(
            names.contains(&format!("vm-test/{}", f.path)),
            "{} not listed",
            f.path
        );
    }
    run(Command::new("tar")
        .args(["-xzf", "vm-test.tar.gz"])
        .current_dir(&out));
    run(Command::new("sha256sum")
        .args(["-c", "--strict", "--quiet", "SHA256SUMS"])
        .current_dir(out.join("vm-test")));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(out.join("vm-test").join(p))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("run.sh"), 0o755);
    assert_eq!(mode("README.txt"), 0o644);
    assert_eq!(mode("files/alpha/bin/tool"), 0o755);
    assert_eq!(mode("files/alpha/conf/alpha.conf"), 0o644);
}

#[test]
fn every_generated_script_passes_bash_n_and_shellcheck() {
    if !have_tool("bash") || !have_tool("shellcheck") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let (plan, rendered) = safe(
        &tmp.path().join("p"),
        &tmp.path().join("m"),
        PayloadModes::default(),
    );
    let b = build(&plan, &rendered);
    let top = bundle::write_unpacked(&b, &tmp.path().join("out")).expect("unpacked");
    let scripts: Vec<&str> = b
        .files
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| p.ends_with(".sh"))
        .collect();
    assert!(
        scripts.contains(&"run.sh") && scripts.contains(&"undo.sh") && scripts.contains(&"lib.sh")
    );
    for s in scripts {
        run(Command::new("bash").arg("-n").arg(s).current_dir(&top));
        run(Command::new("shellcheck")
            .args(["-S", "warning", "-s", "bash", "-x", "-P", "SCRIPTDIR"])
            .arg(s)
            .current_dir(&top));
    }
}

#[test]
fn write_unpacked_replaces_a_bundle_but_nothing_else() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (plan, rendered) = safe(
        &tmp.path().join("p"),
        &tmp.path().join("m"),
        PayloadModes::default(),
    );
    let b = build(&plan, &rendered);
    let out = tmp.path().join("out");
    let top = bundle::write_unpacked(&b, &out).expect("writes");
    assert_eq!(top, out.join("vm-test"));
    for f in &b.files {
        assert_eq!(
            std::fs::read(top.join(&f.path)).expect("file"),
            f.data,
            "{}",
            f.path
        );
    }
    std::fs::write(top.join("stale"), "x").expect("stale");
    bundle::write_unpacked(&b, &out).expect("replaces");
    assert!(!top.join("stale").exists());
    // Only the bundle directory, no staging leftovers.
    let entries: Vec<_> = std::fs::read_dir(&out).expect("ls").collect();
    assert_eq!(entries.len(), 1);

    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("vm-test")).expect("mkdir");
    std::fs::write(other.join("vm-test/precious"), "keep").expect("write");
    let e = bundle::write_unpacked(&b, &other).expect_err("refuses");
    assert!(matches!(e, BundleError::OutDirOccupied { .. }), "{e}");
    assert!(other.join("vm-test/precious").exists());
}
