//! Stage `bundle` runtime tests on this machine (no chroot): tampering makes `run.sh` and
//! `verify_archive` refuse before any step runs; `ov_json_str` survives hostile strings; the
//! managed-block helpers; `inspect`; option handling that needs no root.

mod bundle_fixture;

use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use bundle_fixture::{build, have_tool, safe, PayloadModes};
use ov_compiler::bundle::{self, Bundle};
use ov_compiler::manifest::{self, VerifyError};

/// The fixture bundle unpacked in a world-readable temp dir; its scripts append to `marker/ran`.
struct Unpacked {
    _tmp: tempfile::TempDir,
    top: PathBuf,
    marker: PathBuf,
    bundle: Bundle,
}

fn unpacked() -> Unpacked {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let marker = tmp.path().join("marker");
    let (plan, rendered) = safe(&tmp.path().join("p"), &marker, PayloadModes::default());
    let b = build(&plan, &rendered);
    let top = bundle::write_unpacked(&b, &tmp.path().join("out")).expect("unpacked");
    Unpacked {
        _tmp: tmp,
        top,
        marker,
        bundle: b,
    }
}

fn run_sh(top: &Path, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(top.join("run.sh"))
        .args(args)
        .env_remove("SUDO_USER")
        .output()
        .expect("bash starts")
}

fn flip_middle_byte(path: &Path) {
    let mut data = std::fs::read(path).expect("read");
    let i = data.len() / 2;
    data[i] ^= 0x01;
    std::fs::write(path, data).expect("write");
}

#[test]
fn the_marker_step_does_run_when_called() {
    // Control for the tamper test: the step that would leave the marker really leaves it.
    if !have_tool("bash") {
        return;
    }
    let u = unpacked();
    let out = Command::new("bash")
        .arg(u.top.join("layers/01-alpha/01-system.sh"))
        .env("OV_BUNDLE", &u.top)
        .env("OV_LAYER", "alpha")
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(u.marker.join("ran")).expect("marker"),
        "alpha\n"
    );
}

#[test]
fn flipping_one_byte_of_any_file_makes_run_sh_refuse_before_any_step() {
    if !have_tool("bash") || !have_tool("sha256sum") {
        return;
    }
    let paths: Vec<String> = unpacked()
        .bundle
        .files
        .iter()
        .map(|f| f.path.clone())
        .collect();
    assert!(paths.len() > 10);
    for path in paths {
        let u = unpacked();
        flip_middle_byte(&u.top.join(&path));
        // `--user root`: were the check to pass, the steps would run (harmlessly) and leave the marker.
        let out = run_sh(&u.top, &["--user", "root"]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "tampered `{path}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !u.marker.exists(),
            "a step ran although `{path}` was tampered with"
        );
        assert!(out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("::ov::"));
    }
}

#[test]
fn missing_extra_and_symlinked_files_make_run_sh_refuse() {
    if !have_tool("bash") || !have_tool("sha256sum") {
        return;
    }
    type Tamper = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Tamper)> = vec![
        (
            "missing payload",
            Box::new(|t: &Path| std::fs::remove_file(t.join("files/beta/readme.md")).expect("rm")),
        ),
        (
            "missing lib.sh",
            Box::new(|t: &Path| std::fs::remove_file(t.join("lib.sh")).expect("rm")),
        ),
        (
            "extra script",
            Box::new(|t: &Path| {
                std::fs::write(t.join("layers/02-beta/02-system.sh"), "echo hi\n").expect("write")
            }),
        ),
        (
            "extra hidden file",
            Box::new(|t: &Path| std::fs::write(t.join(".hidden"), "x").expect("write")),
        ),
        (
            "symlink",
            Box::new(|t: &Path| {
                std::os::unix::fs::symlink("/etc/passwd", t.join("files/alpha/link")).expect("ln")
            }),
        ),
        (
            "no SHA256SUMS",
            Box::new(|t: &Path| std::fs::remove_file(t.join("SHA256SUMS")).expect("rm")),
        ),
    ];
    for (what, damage) in cases {
        let u = unpacked();
        damage(&u.top);
        let out = run_sh(&u.top, &["--user", "root"]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!u.marker.exists(), "{what}: a step ran");
    }
}

#[test]
fn verify_archive_checks_the_digest_and_every_file() {
    let u = unpacked();
    let b = &u.bundle;
    let report =
        manifest::verify_archive(Cursor::new(&b.archive), &b.sha256_text()).expect("intact");
    assert_eq!(report.top, "vm-test");
    assert_eq!(report.files_checked, b.files.len() - 1);
    assert_eq!(report.deploy.as_deref(), Some("vm:test"));

    // The `.sha256` of another archive.
    let mut other = b.archive.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    assert!(matches!(
        manifest::verify_archive(Cursor::new(&other), &b.sha256_text()),
        Err(VerifyError::ArchiveDigest { .. })
    ));
    assert!(matches!(
        manifest::verify_archive(Cursor::new(&b.archive), "not a digest"),
        Err(VerifyError::MalformedChecksum)
    ));

    if !have_tool("tar") {
        return;
    }
    // Re-packed with one byte flipped in each file in turn (and a matching `.sha256`): the
    // contents check names the file.
    for f in &b.files {
        if f.path == "SHA256SUMS" {
            continue;
        }
        let u = unpacked();
        flip_middle_byte(&u.top.join(&f.path));
        let (archive, sha) = repack(&u.top);
        match manifest::verify_archive(Cursor::new(&archive), &sha) {
            Err(VerifyError::Contents {
                mismatched,
                missing,
                extra,
            }) => {
                assert_eq!(mismatched, vec![f.path.clone()]);
                assert!(missing.is_empty() && extra.is_empty());
            }
            other => panic!("tampered `{}`: {other:?}", f.path),
        }
    }
    let u = unpacked();
    std::fs::remove_file(u.top.join("lib.sh")).expect("rm");
    // Empty, so it is reported with the rest wherever GNU tar puts it (a non-empty file after
    // SHA256SUMS is refused at its header: `bundle_read`'s tests).
    std::fs::write(u.top.join("extra"), "").expect("write");
    let (archive, sha) = repack(&u.top);
    let e = manifest::verify_archive(Cursor::new(&archive), &sha).expect_err("damaged");
    assert!(
        matches!(&e, VerifyError::Contents { missing, extra, .. } if missing == &["lib.sh"] && extra == &["extra"]),
        "{e:?}"
    );
    assert!(e.to_string().contains("missing: `lib.sh`"), "{e}");
}

/// tar + gzip `top` with GNU tar; returns the archive and a matching `.sha256` text.
fn repack(top: &Path) -> (Vec<u8>, String) {
    let parent = top.parent().expect("parent");
    let out = parent.join("re.tar.gz");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(parent)
        .arg("-czf")
        .arg(&out)
        .arg(top.file_name().expect("name"))
        .status()
        .expect("tar")
        .success();
    assert!(ok);
    let data = std::fs::read(&out).expect("read");
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&data));
    (data, format!("{sha}  re.tar.gz\n"))
}

#[test]
fn inspect_reads_layers_skipped_steps_and_scripts() {
    let u = unpacked();
    let script_path = "layers/01-alpha/02-user.sh";
    let i = manifest::inspect(u.bundle.archive.as_slice(), Some(script_path)).expect("inspect");
    assert_eq!(i.top, "vm-test");
    let names: Vec<&str> = i.manifest.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
    let beta = &i.manifest.layers[1];
    assert_eq!(beta.skipped.len(), 2);
    assert_eq!(
        beta.skipped[0].enable_with.as_deref(),
        Some("with-services")
    );
    assert_eq!(beta.skipped[1].reason, "container-only key");
    let script = i.script(script_path).expect("script");
    assert!(script.starts_with("#!/usr/bin/env bash\n"));
    assert_eq!(i.script("vm-test/layers/01-alpha/02-user.sh"), Some(script));
    // Only the file asked for is read into memory, besides the manifest.
    assert_eq!(
        i.files.keys().collect::<Vec<_>>(),
        ["layers/01-alpha/02-user.sh", "manifest.json"]
    );
    assert_eq!(i.script("layers/01-alpha/01-system.sh"), None);
    let with_top = manifest::inspect(
        u.bundle.archive.as_slice(),
        Some("./vm-test/layers/01-alpha/02-user.sh"),
    )
    .expect("inspect");
    assert_eq!(with_top.script(script_path), Some(script));
    let none =
        manifest::inspect(u.bundle.archive.as_slice(), Some("layers/nope.sh")).expect("inspect");
    assert_eq!(none.script("layers/nope.sh"), None);
    assert!(i.paths().any(|p| p == "SHA256SUMS"));
    assert!(matches!(
        manifest::inspect(b"not an archive".as_slice(), None),
        Err(manifest::InspectError::Archive(_))
    ));
}

/// Run `body` in bash after sourcing the bundle's lib.sh, with `args` as positional parameters.
fn with_lib(u: &Unpacked, body: &str, args: &[&[u8]]) -> std::process::Output {
    use std::os::unix::ffi::OsStrExt;
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "set -euo pipefail; . \"$OV_BUNDLE/lib.sh\"; {body}"
        ))
        .arg("lib-test")
        .env("OV_BUNDLE", &u.top);
    for a in args {
        cmd.arg(std::ffi::OsStr::from_bytes(a));
    }
    cmd.output().expect("bash")
}

#[test]
fn json_str_round_trips_hostile_strings() {
    if !have_tool("bash") || !have_tool("od") {
        return;
    }
    let u = unpacked();
    let mut hostile: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"plain".to_vec(),
        b"\"quoted\" and \\backslashed\\".to_vec(),
        b"$(touch /tmp/pwned) `id` ${HOME} %s %d \\x41 \\u0041".to_vec(),
        b"line\nbreak\r\ttab\x08\x0c\x01\x1f\x7f".to_vec(),
        "unicode: h\u{e9}llo \u{2192} \u{1d11e} \u{2028}\u{2029} \u{feff}".as_bytes().to_vec(),
        b"</script><!-- ]]> '\"' \\\"".to_vec(),
        b"invalid: \xff\xfe \xc3( \xe2\x82 \xf0\x9f\x98 \xed\xa0\x80 \xc0\xaf \xf4\x90\x80\x80 end\xe2".to_vec(),
        b"-n".to_vec(),
        b"-e \\n".to_vec(),
    ];
    hostile.push((1u8..=255).collect());
    let args: Vec<&[u8]> = hostile.iter().map(Vec::as_slice).collect();
    let out = with_lib(
        &u,
        "for s in \"$@\"; do ov_json_str \"$s\"; printf '\\n'; done; ov_json_array \"$@\"; printf '\\n'",
        &args,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::str::from_utf8(&out.stdout).expect("json_str output is UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), hostile.len() + 1);
    for (raw, line) in hostile.iter().zip(&lines) {
        let parsed: String = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(parsed, String::from_utf8_lossy(raw), "for {raw:?}");
    }
    let array: Vec<String> = serde_json::from_str(lines[hostile.len()]).expect("array");
    let expected: Vec<String> = hostile
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    assert_eq!(array, expected);
}

/// Arrays of plain items (names, ids, paths) take a shorter way than escaped ones: the same JSON.
#[test]
fn json_array_of_plain_items_and_of_none() {
    if !have_tool("bash") {
        return;
    }
    let u = unpacked();
    let plain: [&[u8]; 5] = [b"a", b"b c", b"", b"/x/y-1.2_3+4@5:6", b"%s %d -n"];
    let out = with_lib(
        &u,
        "ov_json_array \"$@\"; printf '\\n'; ov_json_array; printf '\\n'; ov_json_array '' x; printf '\\n'",
        &plain,
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "[\"a\", \"b c\", \"\", \"/x/y-1.2_3+4@5:6\", \"%s %d -n\"]",
            "[]",
            "[\"\", \"x\"]"
        ]
    );
    for l in &lines {
        let _: Vec<String> = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
}

#[test]
fn managed_block_is_added_once_and_stripped_exactly() {
    if !have_tool("bash") {
        return;
    }
    let u = unpacked();
    let dir = tempfile::tempdir().expect("tmp");
    let profile = dir.path().join(".profile");
    let original = "# ~/.profile\nexport EDITOR=vi\n\nif [ -d \"$HOME/bin\" ]; then PATH=\"$HOME/bin:$PATH\"; fi\n";
    std::fs::write(&profile, original).expect("write");
    std::fs::set_permissions(&profile, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let p = profile.to_string_lossy().into_owned();
    let out = with_lib(
        &u,
        "ov_profile_block_ensure \"$1\"; ov_profile_block_ensure \"$1\"",
        &[p.as_bytes()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let with_block = std::fs::read_to_string(&profile).expect("read");
    assert_eq!(with_block.matches("# overthink:begin").count(), 1);
    assert!(with_block.starts_with(original));

    // The block really sources env.d files (the glob expands, values stay literal).
    let home = dir.path();
    std::fs::create_dir_all(home.join(".config/overthink/env.d")).expect("mkdir");
    std::fs::write(
        home.join(".config/overthink/env.d/a b.env"),
        "export OV_T='x y'\n",
    )
    .expect("env");
    let out = Command::new("bash")
        .arg("-c")
        .arg(". \"$HOME/.profile\"; printf %s \"$OV_T\"")
        .env("HOME", home)
        .output()
        .expect("bash");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x y");

    let out = with_lib(&u, "ov_profile_block_strip \"$1\"", &[p.as_bytes()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&profile).expect("read"), original);
    assert_eq!(
        std::fs::metadata(&profile)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o640
    );

    // A file without a trailing newline, and an unterminated block left alone.
    std::fs::write(&profile, "no newline").expect("write");
    let out = with_lib(
        &u,
        "ov_profile_block_ensure \"$1\"; ov_profile_block_strip \"$1\"",
        &[p.as_bytes()],
    );
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&profile).expect("read"),
        "no newline\n"
    );
    let broken = "a\n# overthink:begin (managed by ov; do not edit inside this block)\nb\n";
    std::fs::write(&profile, broken).expect("write");
    let out = with_lib(&u, "ov_profile_block_strip \"$1\"", &[p.as_bytes()]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&profile).expect("read"), broken);
}

#[test]
fn options_that_need_no_root() {
    if !have_tool("bash") || !have_tool("sha256sum") {
        return;
    }
    let u = unpacked();
    let out = run_sh(&u.top, &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--dry-run"));
    let out = run_sh(&u.top, &["--list"]);
    assert_eq!(out.status.code(), Some(0));
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("layers/01-alpha/02-user.sh  [user, host-native]"),
        "{list}"
    );
    assert!(
        list.contains("skipped: ServiceCustom unit ov-beta-web.service: requires --with-services"),
        "{list}"
    );
    assert_eq!(run_sh(&u.top, &["--bogus"]).status.code(), Some(2));
    assert_eq!(run_sh(&u.top, &["--only"]).status.code(), Some(2));
    assert_eq!(
        run_sh(&u.top, &["--only", "nope", "--user", "root"])
            .status
            .code(),
        Some(2)
    );
    assert!(!u.marker.exists());

    // Not root, and `sudo -n` cannot help: exit 6 before anything runs.
    if have_tool("runuser") && have_tool("sudo") && rustix::process::geteuid().is_root() {
        let out = Command::new("runuser")
            .args(["-u", "nobody", "--", "bash"])
            .arg(u.top.join("run.sh"))
            .output()
            .expect("runuser");
        assert_eq!(
            out.status.code(),
            Some(6),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("sudo -n failed"));
        assert!(!u.marker.exists());
    }
}
