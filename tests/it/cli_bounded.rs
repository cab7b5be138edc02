//! CLI tests, untrusted archives: a gzip bomb (a valid `.tar.gz` of a few MB whose one entry is
//! 3 GiB of zeros) and a bundle with a large file its `SHA256SUMS` does not list are refused by
//! `ov verify`, `ov inspect` and `ov push --dry-run` with the documented exit code and a message
//! naming the entry, the limit and the size, while the process's peak RSS (GNU `time -v`) stays
//! under 64 MiB — the archive is streamed, never expanded into memory.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};
use sha2::{Digest, Sha256};

use crate::cli_common::{clean, demo, expect_code, have_tool, run, Run};

/// The most any of the refused commands may use.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Zeros are deflated once per chunk and the chunk repeated.
const CHUNK: usize = 1 << 20;

/// A raw deflate piece of `data`: compressed from a fresh state and sync-flushed, so it refers
/// to nothing before its start, ends byte-aligned and is not final — copies of it concatenate
/// into one valid deflate stream.
fn piece(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), Compression::best());
    e.write_all(data).expect("deflate");
    e.flush().expect("sync flush");
    e.get_ref().clone()
}

/// Write a `.tar.gz` of `prefix` (tar entries without the end-of-archive blocks) followed by the
/// entry `name` holding `zeros` zero bytes, and a `.sha256` beside it. Streamed: the expanded
/// data is never in memory, and the zeros are deflated once.
fn write_zero_archive(path: &Path, prefix: &[u8], name: &str, zeros: u64) {
    let mut header = tar::Header::new_gnu();
    header.set_path(name).expect("entry name");
    header.set_size(zeros);
    header.set_mode(0o644);
    header.set_mtime(315_532_800);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut head = prefix.to_vec();
    head.extend_from_slice(header.as_bytes());

    let zero_chunk = vec![0u8; CHUNK];
    let zero_piece = piece(&zero_chunk);
    let mut zero_crc = Crc::new();
    zero_crc.update(&zero_chunk);
    // The data, padded to 512-byte blocks, then the two zero blocks that end a tar stream.
    let tail = zeros + (512 - zeros % 512) % 512 + 1024;
    let (whole, rest) = (tail / CHUNK as u64, (tail % CHUNK as u64) as usize);

    let mut crc = Crc::new();
    crc.update(&head);
    let mut out = BufWriter::new(File::create(path).expect("create archive"));
    // gzip header: deflate, no flags, mtime 0, no extra flags, OS unknown.
    out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])
        .expect("write");
    out.write_all(&piece(&head)).expect("write");
    for _ in 0..whole {
        out.write_all(&zero_piece).expect("write");
        crc.combine(&zero_crc);
    }
    if rest > 0 {
        out.write_all(&piece(&zero_chunk[..rest])).expect("write");
        let mut c = Crc::new();
        c.update(&zero_chunk[..rest]);
        crc.combine(&c);
    }
    // An empty final block ends the deflate stream.
    out.write_all(
        &DeflateEncoder::new(Vec::new(), Compression::best())
            .finish()
            .expect("final block"),
    )
    .expect("write");
    out.write_all(&crc.sum().to_le_bytes()).expect("write");
    out.write_all(&crc.amount().to_le_bytes()).expect("write");
    out.into_inner()
        .expect("flush")
        .sync_all()
        .expect("sync archive");
    write_sha256(path);
}

fn write_sha256(path: &Path) {
    let mut h = Sha256::new();
    std::io::copy(&mut File::open(path).expect("open"), &mut h).expect("hash");
    let name = path.file_name().expect("name").to_string_lossy();
    std::fs::write(
        format!("{}.sha256", path.display()),
        format!("{}  {name}\n", hex::encode(h.finalize())),
    )
    .expect("write .sha256");
}

/// The bomb: one entry of 3 GiB of zeros under `vm-bomb/`, a few MB compressed.
fn bomb(dir: &Path) -> PathBuf {
    let path = dir.join("vm-bomb.tar.gz");
    write_zero_archive(&path, &[], "vm-bomb/files/bomb/zeros", 3 << 30);
    path
}

/// `ov ARGS…` under GNU `time -v`: the run and its peak RSS in KiB.
fn ov_measured(args: &[&std::ffi::OsStr]) -> (Run, u64) {
    let mut c = Command::new("/usr/bin/time");
    c.arg("-v").arg(env!("CARGO_BIN_EXE_ov")).args(args);
    clean(&mut c);
    let r = run(&mut c);
    let rss = r
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS from GNU time in:\n{}", r.stderr));
    (r, rss)
}

/// GNU time is needed (under CI its absence fails: `.ci/run` installs `time`).
fn have_gnu_time() -> bool {
    have_tool("time") && Path::new("/usr/bin/time").is_file()
}

fn expect_refused(what: &str, args: &[&std::ffi::OsStr], code: i32, says: &[&str]) -> u64 {
    let (r, rss) = ov_measured(args);
    expect_code(&r, code, what);
    for s in says {
        assert!(r.stderr.contains(s), "{what}: `{s}` not in\n{}", r.stderr);
    }
    assert!(
        rss < RSS_LIMIT_KIB,
        "{what}: peak RSS {rss} KiB, more than {RSS_LIMIT_KIB} KiB"
    );
    eprintln!("{what}: refused, peak RSS {rss} KiB");
    rss
}

#[test]
fn a_gzip_bomb_is_refused_by_verify_inspect_and_push_in_bounded_memory() {
    if !have_gnu_time() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let b = bomb(t.path());
    let compressed = std::fs::metadata(&b).expect("bomb").len();
    assert!(compressed < 8 << 20, "the bomb is {compressed} bytes");
    // It really is a valid archive of 3 GiB: GNU tar lists it from the same bytes.
    if have_tool("tar") {
        let out = Command::new("tar")
            .arg("-tvzf")
            .arg(&b)
            .output()
            .expect("tar");
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(listing.contains("3221225472"), "{listing}");
    }
    let says = [
        "`vm-bomb/files/bomb/zeros`",
        "3221225472 bytes (3.0 GiB)",
        "1073741824 bytes (1.0 GiB) one bundle file may hold",
    ];
    let bomb = b.as_os_str();
    expect_refused("verify", &["verify".as_ref(), bomb], 3, &says);
    expect_refused("inspect", &["inspect".as_ref(), bomb], 3, &says);
    expect_refused(
        "inspect --script",
        &[
            "inspect".as_ref(),
            bomb,
            "--script".as_ref(),
            "files/bomb/zeros".as_ref(),
        ],
        3,
        &says,
    );
    let home = t.path().join("home");
    std::fs::create_dir(&home).expect("home");
    expect_refused(
        "push --dry-run",
        &[
            "push".as_ref(),
            bomb,
            "--dry-run".as_ref(),
            "--host".as_ref(),
            "127.0.0.1".as_ref(),
        ],
        3,
        &says,
    );
}

/// The demo bundle's entries as raw tar (without the end-of-archive blocks).
fn demo_tar(dir: &Path) -> Vec<u8> {
    let archive = dir.join("vm-demo.tar.gz");
    let r = run(crate::cli_common::ov()
        .arg("-C")
        .arg(demo())
        .args(["compile", "vm:demo", "-o"])
        .arg(&archive));
    expect_code(&r, 0, "compile");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(File::open(&archive).expect("open"))
        .read_to_end(&mut raw)
        .expect("gunzip");
    // Cut at the first all-zero header block: the end of the archive.
    let mut at = 0;
    loop {
        let h = tar::Header::from_byte_slice(&raw[at..at + 512]);
        if h.as_bytes().iter().all(|b| *b == 0) {
            break;
        }
        let size = h.entry_size().expect("size");
        at += 512 + size.div_ceil(512) as usize * 512;
    }
    raw.truncate(at);
    raw
}

#[test]
fn a_file_sha256sums_does_not_list_is_refused_before_it_is_read() {
    if !have_gnu_time() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let prefix = demo_tar(t.path());
    // 512 MiB: within the per-file limit, so only SHA256SUMS (read earlier) refuses it.
    let path = t.path().join("grown").join("vm-demo.tar.gz");
    std::fs::create_dir(path.parent().expect("dir")).expect("mkdir");
    write_zero_archive(&path, &prefix, "vm-demo/zz-extra", 512 << 20);
    let says = [
        "`zz-extra` holds 536870912 bytes (512.0 MiB)",
        "`SHA256SUMS` does not list it",
        "refused before reading it",
    ];
    expect_refused("verify", &["verify".as_ref(), path.as_os_str()], 4, &says);
    // `ov inspect` checks no digests: it lists the file, without reading it into memory.
    let (r, rss) = ov_measured(&["inspect".as_ref(), path.as_os_str()]);
    expect_code(&r, 0, "inspect");
    assert!(rss < RSS_LIMIT_KIB, "inspect: peak RSS {rss} KiB");
    let (r, rss) = ov_measured(&[
        "inspect".as_ref(),
        path.as_os_str(),
        "--script".as_ref(),
        "zz-extra".as_ref(),
    ]);
    expect_code(&r, 3, "inspect --script of a file over the limit");
    assert!(
        r.stderr
            .contains("`zz-extra` is 536870912 bytes (512.0 MiB); `ov` reads at most 16777216 bytes (16.0 MiB) of one file into memory"),
        "{}",
        r.stderr
    );
    assert!(rss < RSS_LIMIT_KIB, "inspect --script: peak RSS {rss} KiB");
}
