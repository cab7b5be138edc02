//! Test support: a real Debian userland to run bundles in. `debootstrap --variant=minbase` builds
//! a bookworm root (or, with [`tarball_for`], another suite's) once per package list (cached as a
//! tarball under `target/ov-test-rootfs/`, built under a lock so parallel tests wait for one
//! build); every test then gets a fresh copy with /proc mounted, runs commands in it with
//! `chroot`, and loses it on drop — or mounts an overlay on the root [`extracted`] once.
//!
//! Invariant: a copy is only deleted after its mounts are gone, and never across file systems
//! (`rm --one-file-system`), so a failed unmount can never delete anything of the host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// The Debian archive (Debian's package registry; the only network the tests use).
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// The suite.
pub const SUITE: &str = "bookworm";

/// What to put in a root.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Extra packages installed by debootstrap.
    pub include: Vec<&'static str>,
    /// Packages only downloaded into apt's cache (so installing them later needs no network).
    pub prefetch: Vec<&'static str>,
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ov-test-rootfs")
}

/// Whether chroot tests can run here: root, debootstrap and chroot. Prints why not; under `CI`
/// a missing tool is a failure.
pub fn available() -> bool {
    crate::common::require(
        "chroot test",
        &["debootstrap", "chroot", "mount", "umount", "tar"],
        true,
        ".ci/run installs debootstrap",
    )
}

/// The cached root tarball for `spec`, built if missing (under a lock: concurrent callers wait).
pub fn tarball(spec: &Spec) -> PathBuf {
    tarball_for(SUITE, spec)
}

/// [`tarball`] for another Debian suite (e.g. `trixie`); the cache key holds the suite.
pub fn tarball_for(suite: &str, spec: &Spec) -> PathBuf {
    let mut key = Sha256::new();
    key.update(format!(
        "v1|{suite}|{MIRROR}|minbase|{}|{}",
        spec.include.join(","),
        spec.prefetch.join(",")
    ));
    let key = hex::encode(key.finalize());
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).expect("cache dir");
    let out = dir.join(format!("{suite}-minbase-{}.tar", &key[..16]));
    if out.is_file() {
        return out;
    }
    // One shell script under flock: the first caller builds, the others wait and find it built.
    let script = r#"
set -eu
out=$1 dir=$2 include=$3 prefetch=$4 suite=$5 mirror=$6
[ -f "$out" ] && exit 0
work=$(mktemp -d "$dir/build.XXXXXX")
cleanup() {
	for m in $(awk -v w="$work" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
		umount -l "$m" || true
	done
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT
debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
	tail -n 30 "$work/debootstrap.log" >&2
	exit 1
}
if [ -n "$prefetch" ]; then
	cp /etc/resolv.conf "$work/root/etc/resolv.conf"
	chroot "$work/root" apt-get update -q
	# shellcheck disable=SC2086
	chroot "$work/root" apt-get install -q -y --download-only $prefetch
	rm -f "$work/root/etc/resolv.conf"
fi
tar -C "$work/root" --numeric-owner -cf "$out.part" .
mv "$out.part" "$out"
"#;
    let status = Command::new("flock")
        .arg(dir.join(".lock"))
        .args(["bash", "-c", script, "build-rootfs"])
        .arg(&out)
        .arg(&dir)
        .arg(spec.include.join(","))
        .arg(spec.prefetch.join(" "))
        .arg(suite)
        .arg(MIRROR)
        .status()
        .expect("flock starts");
    assert!(status.success(), "building the {suite} root failed");
    out
}

/// The cached root `tarball` extracted once into `<tarball>.d` (under the cache lock), as the
/// read-only lower layer of overlay mounts: callers must never write into it.
pub fn extracted(tarball: &Path) -> PathBuf {
    let mut name = tarball.as_os_str().to_owned();
    name.push(".d");
    let out = PathBuf::from(name);
    if out.is_dir() {
        return out;
    }
    let script = r#"
set -eu
tarball=$1 out=$2
[ -d "$out" ] && exit 0
part=$(mktemp -d "$out.part.XXXXXX")
trap 'rm -rf --one-file-system "$part"' EXIT
tar -C "$part" --numeric-owner -xpf "$tarball"
mv "$part" "$out"
"#;
    let dir = tarball.parent().expect("the cache directory");
    let status = Command::new("flock")
        .arg(dir.join(".lock"))
        .args(["bash", "-c", script, "extract-rootfs"])
        .arg(tarball)
        .arg(&out)
        .status()
        .expect("flock starts");
    assert!(status.success(), "extracting {} failed", tarball.display());
    out
}

/// A fresh, private copy of a cached root, with /proc mounted.
pub struct Root {
    dir: PathBuf,
    root: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Root {
    /// Extract `tarball` into a new directory next to the cache and mount /proc in it.
    pub fn new(tarball: &Path) -> Root {
        let work = cache_dir().join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        let dir = tempfile::Builder::new()
            .prefix("root.")
            .tempdir_in(&work)
            .expect("root dir")
            .keep();
        let root = dir.join("root");
        std::fs::create_dir(&root).expect("root");
        let mut r = Root {
            dir,
            root,
            mounts: Vec::new(),
        };
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&r.root)
            .args(["--numeric-owner", "-xpf"])
            .arg(tarball)
            .status()
            .expect("tar starts")
            .success();
        assert!(ok, "extracting {} failed", tarball.display());
        r.mount(&["-t", "proc", "proc"], "proc");
        if !is_char_device(&r.root.join("dev/null")) {
            r.mount(&["--bind", "/dev"], "dev");
        }
        // Name resolution for apt, if a step needs the network.
        std::fs::copy("/etc/resolv.conf", r.root.join("etc/resolv.conf")).ok();
        r
    }

    fn mount(&mut self, args: &[&str], at: &str) {
        let target = self.root.join(at);
        std::fs::create_dir_all(&target).expect("mount point");
        let ok = Command::new("mount")
            .args(args)
            .arg(&target)
            .status()
            .expect("mount starts")
            .success();
        assert!(ok, "mount {args:?} {} failed", target.display());
        self.mounts.push(target);
    }

    /// The host path of `p` inside the root (`p` absolute or relative to the root).
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// Run `cmd` inside the root as root, with a clean environment (no host variables leak in).
    pub fn run(&self, cmd: &[&str]) -> Output {
        Command::new("chroot")
            .arg(&self.root)
            .args([
                "/usr/bin/env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "LANG=C.UTF-8",
                "TERM=dumb",
            ])
            .args(cmd)
            .output()
            .expect("chroot starts")
    }

    /// Run a shell command inside the root and require success; returns stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.run(&["bash", "-c", script]);
        assert!(
            out.status.success(),
            "`{script}` failed in the root: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn is_char_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false)
}

impl Drop for Root {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let prefix = self.dir.to_string_lossy().into_owned();
        if mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .any(|m| m.starts_with(&prefix))
        {
            eprintln!(
                "leaving {} in place: something is still mounted below it",
                self.dir.display()
            );
            return;
        }
        let _ = Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&self.dir)
            .status();
    }
}
