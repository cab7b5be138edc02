//! CLI tests, bundles (issue #3 at the command line): `ov compile` is byte-identical across runs,
//! project copies with other mtimes and modes, another umask and another working directory;
//! `SOURCE_DATE_EPOCH` is honoured; GNU `tar` and `sha256sum -c` accept what it writes (archive
//! and `--out-dir` tree); `ov verify` exits 0 on a good bundle and 4 on tampering, including a
//! re-packed archive whose outer `.sha256` matches; `ov inspect` prints the listing, one script
//! and the manifest as JSON.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cli_common::{
    clean, copy_tree, demo, expect_code, files_under, have_tool, is_executable, ov, run, Run,
};

/// The demo bundle's top directory and archive name.
const TOP: &str = "vm-demo";
const ARCHIVE: &str = "vm-demo.tar.gz";
/// A script of the demo bundle (relative to the top directory).
const SCRIPT: &str = "layers/02-demo-tools/01-system.sh";

/// One archive entry.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    mode: u32,
    mtime: u64,
    header: tar::Header,
    data: Vec<u8>,
}

fn entries(archive: &[u8]) -> Vec<Entry> {
    let mut ar = tar::Archive::new(GzDecoder::new(archive));
    let mut out = Vec::new();
    for e in ar.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("entry data");
        let h = e.header().clone();
        out.push(Entry {
            path: e.path().expect("entry path").to_string_lossy().into_owned(),
            mode: h.mode().expect("mode"),
            mtime: h.mtime().expect("mtime"),
            header: h,
            data,
        });
    }
    out
}

fn entry<'a>(all: &'a [Entry], rel: &str) -> &'a Entry {
    let path = format!("{TOP}/{rel}");
    all.iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no `{path}` in the archive"))
}

/// Write entries back into a `.tar.gz` (headers kept, sizes and checksums fixed up).
fn pack(all: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::default()));
    for e in all {
        let mut h = e.header.clone();
        h.set_size(e.data.len() as u64);
        b.append_data(&mut h, &e.path, e.data.as_slice())
            .expect("append");
    }
    b.into_inner().expect("tar").finish().expect("gzip")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Write `archive` as `dir/vm-demo.tar.gz` with a matching `.sha256`.
fn write_bundle(dir: &Path, archive: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join(ARCHIVE);
    std::fs::write(&path, archive).expect("write archive");
    std::fs::write(
        dir.join(format!("{ARCHIVE}.sha256")),
        format!("{}  {ARCHIVE}\n", sha256_hex(archive)),
    )
    .expect("write sum");
    path
}

/// `ov -C <project> compile vm:demo -o <out>` (plus `extra`), checked for exit 0 and the digest
/// it prints; returns (archive bytes, `.sha256` bytes).
fn compile_with(cmd: &mut Command, out: &Path) -> (Vec<u8>, Vec<u8>) {
    std::fs::create_dir_all(out.parent().expect("parent")).expect("output dir");
    let r = run(cmd);
    expect_code(&r, 0, "compile");
    let archive = std::fs::read(out).expect("archive written");
    let sum = std::fs::read(format!("{}.sha256", out.display())).expect("sha256 written");
    let digest = sha256_hex(&archive);
    assert!(
        r.stdout.contains(&format!("\nsha256 {digest}\n")),
        "the printed digest is the archive's: {}",
        r.stdout
    );
    (archive, sum)
}

fn compile(out: &Path, extra: &[&str]) -> (Vec<u8>, Vec<u8>) {
    compile_with(
        ov().arg("-C")
            .arg(demo())
            .args(["compile", "vm:demo", "-o"])
            .arg(out)
            .args(extra),
        out,
    )
}

fn verify(path: &Path) -> Run {
    run(ov().arg("verify").arg(path))
}

#[test]
fn compile_is_byte_identical_across_runs_copies_umask_and_cwd() {
    let t = tempfile::tempdir().expect("tempdir");
    // From a plain copy outside any git work tree: the project's commit is an input too (the
    // manifest's provenance), and the copy below has none.
    let orig = t.path().join("orig");
    copy_tree(&demo(), &orig);
    let compile = |out: &Path| {
        compile_with(
            ov().arg("-C")
                .arg(&orig)
                .args(["compile", "vm:demo", "-o"])
                .arg(out),
            out,
        )
    };
    let (a, a_sum) = compile(&t.path().join("a").join(ARCHIVE));
    let (b, b_sum) = compile(&t.path().join("b").join(ARCHIVE));
    assert!(a == b, "two compiles differ");
    assert_eq!(a_sum, b_sum);
    assert_eq!(
        String::from_utf8(a_sum.clone()).expect("utf-8"),
        format!("{}  {ARCHIVE}\n", sha256_hex(&a))
    );

    // A copy of the project whose files all carry another mtime and other (owner-only) modes.
    let copy = t.path().join("copy");
    copy_tree(&demo(), &copy);
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(981_173_106); // 2001-02-03
    for f in files_under(&copy) {
        let mode = if is_executable(&f) { 0o700 } else { 0o600 };
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let file = std::fs::File::options().write(true).open(&f).expect("open");
        file.set_modified(when).expect("set mtime");
        assert_eq!(
            file.metadata().expect("meta").modified().expect("mtime"),
            when
        );
    }
    // Compiled under umask 077 from an unrelated working directory, with relative paths.
    let elsewhere = t.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let out = t.path().join("c").join(ARCHIVE);
    std::fs::create_dir(t.path().join("c")).expect("mkdir");
    let mut sh = Command::new("sh");
    clean(&mut sh);
    sh.current_dir(&elsewhere)
        .args(["-c", r#"umask 077; umask >&2; exec "$0" "$@""#])
        .arg(env!("CARGO_BIN_EXE_ov"))
        .args([
            "-C",
            "../copy",
            "compile",
            "vm:demo",
            "-o",
            "../c/vm-demo.tar.gz",
        ]);
    let r = run(&mut sh);
    expect_code(&r, 0, "compile under umask 077");
    assert!(
        r.stderr.starts_with("0077\n"),
        "umask applied: {}",
        r.stderr
    );
    let c = std::fs::read(&out).expect("archive");
    let c_sum = std::fs::read(format!("{}.sha256", out.display())).expect("sum");
    assert!(
        a == c,
        "the copy under another umask and cwd compiles to other bytes"
    );
    assert_eq!(a_sum, c_sum);
}

#[test]
fn source_date_epoch_is_honoured() {
    let t = tempfile::tempdir().expect("tempdir");
    let (plain, _) = compile(&t.path().join("plain").join(ARCHIVE), &[]);
    let epoch = 1_700_000_000u64;
    let out = t.path().join("sde").join(ARCHIVE);
    let (sde, _) = compile_with(
        ov().env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("-C")
            .arg(demo())
            .args(["compile", "vm:demo", "-o"])
            .arg(&out),
        &out,
    );
    assert!(plain != sde, "SOURCE_DATE_EPOCH did not change the bytes");

    let plain_e = entries(&plain);
    let sde_e = entries(&sde);
    let default_mtime = plain_e[0].mtime;
    assert_ne!(default_mtime, epoch);
    assert!(plain_e.iter().all(|e| e.mtime == default_mtime));
    assert!(
        sde_e.iter().all(|e| e.mtime == epoch),
        "{:?}",
        sde_e.iter().map(|e| (&e.path, e.mtime)).collect::<Vec<_>>()
    );
    // Only the timestamps differ: same files, same contents (the manifest records the mtime).
    assert_eq!(plain_e.len(), sde_e.len());
    for (p, s) in plain_e.iter().zip(&sde_e) {
        assert_eq!((&p.path, p.mode), (&s.path, s.mode));
        if !p.path.ends_with("/manifest.json") && !p.path.ends_with("/SHA256SUMS") {
            assert!(p.data == s.data, "{} differs", p.path);
        }
    }
    let manifest: Value =
        serde_json::from_slice(&entry(&sde_e, "manifest.json").data).expect("manifest");
    assert_eq!(manifest["mtime"], epoch);
    // The gzip header carries no timestamp.
    assert_eq!(&sde[4..8], &[0, 0, 0, 0]);
    // The flag gives the same bytes as the environment variable.
    let (flag, _) = compile(
        &t.path().join("flag").join(ARCHIVE),
        &["--source-date-epoch", &epoch.to_string()],
    );
    assert!(
        flag == sde,
        "--source-date-epoch differs from SOURCE_DATE_EPOCH"
    );
}

#[test]
fn gnu_tar_lists_and_sha256sum_checks_the_archive() {
    if !have_tool("tar") || !have_tool("sha256sum") {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let (archive, _) = compile(&t.path().join(ARCHIVE), &[]);
    let r = run(Command::new("tar").arg("-tzf").arg(t.path().join(ARCHIVE)));
    expect_code(&r, 0, "tar -tzf");
    let listed: Vec<&str> = r.stdout.lines().collect();
    let ours: Vec<String> = entries(&archive).into_iter().map(|e| e.path).collect();
    assert_eq!(listed, ours);
    assert!(listed.contains(&"vm-demo/run.sh"), "{listed:?}");
    let r = run(Command::new("sha256sum")
        .args(["-c", "vm-demo.tar.gz.sha256"])
        .current_dir(t.path()));
    expect_code(&r, 0, "sha256sum -c");
    assert_eq!(r.stdout, "vm-demo.tar.gz: OK\n");
}

#[test]
fn out_dir_tree_passes_sha256sum_and_matches_the_archive() {
    if !have_tool("sha256sum") {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let (archive, _) = compile(&t.path().join(ARCHIVE), &[]);
    let d = t.path().join("unpacked");
    let r = run(ov()
        .arg("-C")
        .arg(demo())
        .args(["compile", "vm:demo", "--out-dir"])
        .arg(&d));
    expect_code(&r, 0, "compile --out-dir");
    let top = d.join(TOP);
    let files = files_under(&top);
    assert_eq!(
        r.stdout,
        format!("wrote {} ({} files)\n", top.display(), files.len())
    );
    let r = run(Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(&top));
    expect_code(&r, 0, "sha256sum -c SHA256SUMS");
    // Every file but SHA256SUMS itself is checked.
    assert_eq!(r.stdout.lines().count(), files.len() - 1, "{}", r.stdout);
    assert!(
        r.stdout.lines().all(|l| l.ends_with(": OK")),
        "{}",
        r.stdout
    );
    // The tree is the archive, unpacked: same files, contents and executable bits.
    let in_archive: Vec<Entry> = entries(&archive)
        .into_iter()
        .filter(|e| e.header.entry_type().is_file())
        .collect();
    assert_eq!(in_archive.len(), files.len());
    for e in &in_archive {
        let on_disk = d.join(&e.path);
        assert!(
            std::fs::read(&on_disk).expect("file") == e.data,
            "{}",
            e.path
        );
        assert_eq!(is_executable(&on_disk), e.mode & 0o100 != 0, "{}", e.path);
    }
    // Compiling again over it replaces it.
    let r = run(ov()
        .arg("-C")
        .arg(demo())
        .args(["compile", "vm:demo", "--out-dir"])
        .arg(&d));
    expect_code(&r, 0, "compile --out-dir again");
}

#[test]
fn verify_accepts_a_good_bundle_and_exits_4_on_tampering() {
    let t = tempfile::tempdir().expect("tempdir");
    let good = t.path().join("good").join(ARCHIVE);
    let (archive, _) = compile(&good, &[]);
    let r = verify(&good);
    expect_code(&r, 0, "verify good");
    assert!(r.stdout.starts_with("ok: "), "{}", r.stdout);

    // One flipped byte in the archive: the outer digest catches it.
    let mut flipped = archive.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let dir = t.path().join("flipped");
    let path = write_bundle(&dir, &flipped);
    std::fs::copy(
        format!("{}.sha256", good.display()),
        dir.join(format!("{ARCHIVE}.sha256")),
    )
    .expect("copy sum");
    let r = verify(&path);
    expect_code(&r, 4, "verify flipped");
    assert!(r.stderr.contains("archive digest mismatch"), "{}", r.stderr);

    // Re-packed as it was, with a fresh .sha256: still a good bundle (so the next failure is the
    // alteration, not the re-packing).
    let all = entries(&archive);
    let r = verify(&write_bundle(&t.path().join("repacked"), &pack(&all)));
    expect_code(&r, 0, "verify re-packed");

    // One script altered and the archive re-packed with a matching .sha256: the outer digest
    // passes, SHA256SUMS inside catches it.
    let mut altered = all.clone();
    let script = format!("{TOP}/{SCRIPT}");
    let e = altered
        .iter_mut()
        .find(|e| e.path == script)
        .expect("script entry");
    e.data.extend_from_slice(b"\ntouch /tmp/owned\n");
    let r = verify(&write_bundle(&t.path().join("altered"), &pack(&altered)));
    expect_code(&r, 4, "verify altered");
    assert!(
        r.stderr.contains(&format!("modified: `{SCRIPT}`")),
        "{}",
        r.stderr
    );

    // A file added without a SHA256SUMS line is caught too: after SHA256SUMS in the archive, at
    // its header, before its data is read.
    let mut added = all.clone();
    let mut extra = entry(&all, "README.txt").clone();
    extra.path = format!("{TOP}/extra.sh");
    added.push(extra);
    let r = verify(&write_bundle(&t.path().join("added"), &pack(&added)));
    expect_code(&r, 4, "verify added");
    let says = format!(
        "`extra.sh` holds {} bytes",
        entry(&all, "README.txt").data.len()
    );
    assert!(r.stderr.contains(&says), "{}", r.stderr);
    let says = "but `SHA256SUMS` does not list it";
    assert!(r.stderr.contains(says), "{}", r.stderr);

    // No .sha256 beside the archive: invalid input, not an integrity failure.
    let lone = t.path().join("lone");
    std::fs::create_dir(&lone).expect("mkdir");
    std::fs::write(lone.join(ARCHIVE), &archive).expect("write");
    let r = verify(&lone.join(ARCHIVE));
    expect_code(&r, 3, "verify without .sha256");
}

#[test]
fn inspect_prints_the_listing_a_script_and_json() {
    let t = tempfile::tempdir().expect("tempdir");
    let path = t.path().join(ARCHIVE);
    let (archive, _) = compile(&path, &[]);
    let all = entries(&archive);

    let r = run(ov().arg("inspect").arg(&path));
    expect_code(&r, 0, "inspect");
    assert!(r.stdout.ends_with('\n'));
    // Digests change with every template edit; the snapshot pins the shape, the JSON check
    // below the values.
    // The project's commit (and whether the work tree is dirty) changes with every commit.
    insta::with_settings!({filters => vec![
        (r"\(digest [0-9a-f]{12}\)", "(digest [digest])"),
        (
            r"project commit: ([0-9a-f]{40}( \(work tree dirty\))?|none \(not a git work tree\))",
            "project commit: [commit]",
        ),
    ]}, {
        insta::assert_snapshot!("inspect-demo", r.stdout);
    });

    let r = run(ov().arg("inspect").arg(&path).args(["--script", SCRIPT]));
    expect_code(&r, 0, "inspect --script");
    assert!(
        r.stdout.as_bytes() == entry(&all, SCRIPT).data.as_slice(),
        "--script prints the file as it is in the archive:\n{}",
        r.stdout
    );
    assert!(r.stdout.starts_with("#!"), "{}", r.stdout);

    let r = run(ov()
        .arg("inspect")
        .arg(&path)
        .args(["--script", "layers/nope.sh"]));
    expect_code(&r, 3, "inspect --script of a missing file");
    assert!(
        r.stderr.contains(SCRIPT),
        "names the files there are: {}",
        r.stderr
    );

    let r = run(ov().arg("inspect").arg(&path).arg("--json"));
    expect_code(&r, 0, "inspect --json");
    let json: Value = serde_json::from_str(&r.stdout).expect("--json prints JSON");
    // It is the bundle's own manifest.
    let manifest: Value =
        serde_json::from_slice(&entry(&all, "manifest.json").data).expect("manifest");
    assert_eq!(json, manifest);
    assert_eq!(json["deploy"]["name"], "vm:demo");
    let listing = run(ov().arg("inspect").arg(&path)).stdout;
    for l in json["layers"].as_array().expect("layers") {
        let digest = l["digest"].as_str().expect("digest");
        assert_eq!(digest.len(), 64);
        let line = format!(
            "{}  (digest {})",
            l["name"].as_str().expect("name"),
            &digest[..12]
        );
        assert!(listing.contains(&line), "`{line}` in\n{listing}");
    }
}

#[test]
fn verify_and_inspect_read_an_unpacked_bundle_as_its_archive() {
    let t = tempfile::tempdir().expect("tempdir");
    let archive = t.path().join(ARCHIVE);
    compile(&archive, &[]);
    let d = t.path().join("unpacked");
    let r = run(ov()
        .arg("-C")
        .arg(demo())
        .args(["compile", "vm:demo", "--out-dir"])
        .arg(&d));
    expect_code(&r, 0, "compile --out-dir");
    let top = d.join(TOP);

    // The --out-dir and the bundle's own directory are both accepted.
    for path in [&d, &top] {
        let r = verify(path);
        expect_code(&r, 0, "verify an unpacked bundle");
        assert!(
            r.stdout.starts_with("ok: ") && r.stdout.contains("files match SHA256SUMS"),
            "{}",
            r.stdout
        );
    }
    let of_dir = run(ov().arg("inspect").arg(&d));
    expect_code(&of_dir, 0, "inspect an unpacked bundle");
    assert_eq!(of_dir.stdout, run(ov().arg("inspect").arg(&archive)).stdout);
    let script = run(ov().arg("inspect").arg(&top).args(["--script", SCRIPT]));
    expect_code(&script, 0, "inspect --script of an unpacked bundle");
    assert_eq!(
        script.stdout,
        std::fs::read_to_string(top.join(SCRIPT)).expect("script")
    );

    // Tampering, a file not listed and a link are each integrity failures (exit 4).
    let victim = top.join(SCRIPT);
    let original = std::fs::read(&victim).expect("script");
    std::fs::write(&victim, b"#!/bin/sh\necho changed\n").expect("tamper");
    let r = verify(&d);
    expect_code(&r, 4, "verify a modified unpacked bundle");
    assert!(r.stderr.contains(SCRIPT), "{}", r.stderr);
    std::fs::write(&victim, &original).expect("restore");
    expect_code(&verify(&d), 0, "verify restored");
    std::fs::write(top.join("extra.sh"), b"echo\n").expect("extra");
    let r = verify(&d);
    expect_code(&r, 4, "verify with an unlisted file");
    assert!(r.stderr.contains("extra.sh"), "{}", r.stderr);
    std::fs::remove_file(top.join("extra.sh")).expect("rm extra");
    std::os::unix::fs::symlink("/etc/passwd", top.join("link")).expect("symlink");
    let r = verify(&d);
    expect_code(&r, 4, "verify with a link");
    assert!(r.stderr.contains("not a plain file"), "{}", r.stderr);

    // A directory that is no bundle is named as such (exit 3).
    let r = verify(t.path());
    expect_code(&r, 3, "verify a directory that is no bundle");
    assert!(r.stderr.contains("not an unpacked bundle"), "{}", r.stderr);
}

/// A payload file larger than one bundle file may hold is refused by its size, before it is read
/// (the file here is sparse: 1 GiB + 1 byte that take no disk). Before, `ov compile` read it whole
/// into memory (a 3 GiB file: 7 GB and counting) and wrote a bundle `ov verify` then refused.
#[test]
fn a_payload_file_too_large_for_a_bundle_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().expect("tmp");
    copy_tree(&demo(), dir.path());
    let big = dir.path().join("layers/demo-config/demo.conf");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len((1 << 30) + 1))
        .expect("a sparse file");
    let out = dir.path().join("b.tar.gz");
    let r = run(ov()
        .arg("-C")
        .arg(dir.path())
        .args(["compile", "vm:demo", "-o"])
        .arg(&out));
    expect_code(&r, 3, "compile");
    assert!(
        r.stderr.contains(&format!(
            "error: layer `demo-config`: payload file `{}` is 1073741825 bytes (1.0 GiB), more than the 1073741824 bytes (1.0 GiB) one bundle file may hold",
            big.display()
        )),
        "{}",
        r.stderr
    );
    assert!(!out.exists(), "no bundle is written");
}

/// `-o` given a directory (one that exists, or a new path ending in `/`) writes the archive and
/// its `.sha256` into it under the bundle's name — before, an existing directory was an error
/// ("is a directory") and `new/` made a file named `new`.
#[test]
fn compile_into_a_directory_names_the_archive_itself() {
    let t = tempfile::tempdir().expect("tempdir");
    let (file, _) = compile(&t.path().join("file").join(ARCHIVE), &[]);
    let existing = t.path().join("existing");
    std::fs::create_dir(&existing).expect("mkdir");
    let fresh = format!("{}/", t.path().join("fresh").display());
    for dir in [existing.display().to_string(), fresh] {
        let r = run(ov()
            .arg("-C")
            .arg(demo())
            .args(["compile", "vm:demo", "-o", &dir]));
        expect_code(&r, 0, &dir);
        let archive = Path::new(&dir).join(ARCHIVE);
        assert!(
            std::fs::read(&archive).is_ok_and(|a| a == file),
            "{dir}: the archive under its own name, as `-o FILE` writes it: {}",
            r.stdout
        );
        assert!(Path::new(&dir).join(format!("{ARCHIVE}.sha256")).is_file());
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 2, "{dir}");
    }
}
