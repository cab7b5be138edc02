//! Test support, cloud-init target: a separate Debian 13 ("trixie") host with the real
//! `cloud-init` package from the Debian archive — a debootstrapped root (cached like
//! [`rootfs`](super::rootfs)), mounted as the lower layer of an overlay inside private mount, UTS
//! and network namespaces, and served by its own `sshd` chrooted into it. cloud-init's states are
//! produced by cloud-init itself: the test seeds a NoCloud datasource and runs its four boot
//! stages (`init --local`, `init`, `modules --mode config|final`) in the host, which write
//! `/run/cloud-init/status.json` and `result.json` as on a booted machine; the only other inputs
//! are files `cloud-init status` reads (the `/etc/cloud/cloud-init.disabled` marker, systemd's
//! `/run/systemd/system` boot marker). The host itself (overlay, namespaces, chrooted sshd, login
//! user) is a [`ChrootHost`].
//!
//! Invariants: those of [`ChrootHost`] (every mount and process gone after `Drop`, the cached
//! root never written); cloud-init runs with a module list cut to `runcmd`/`scripts-user`, no
//! network configuration and no hostname change, so it reaches nothing of the machine.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use ov::ssh::endpoint::Target;

use super::chroot_sshd::{self, ChrootHost, Options};
use super::rootfs::{self, Spec};
use super::sshd::{descendants, kill_tree};

/// The suite: trixie's cloud-init (25.1) reports `degraded` (new in 23.4); bookworm's 22.4 does
/// not.
pub const SUITE: &str = "trixie";
/// The login user inside the root (passwordless sudo).
pub const USER: &str = "ovtest";
/// The host name inside the host's UTS namespace.
pub const HOSTNAME: &str = "ovci";

/// What the root holds. `python3-cffi-backend` is listed because debootstrap's resolver does not
/// follow virtual packages (`python3-cryptography` needs `python3-cffi-backend-api-min`, which
/// only it provides); `iproute2` because cloud-init's `init` stage warns — a recoverable error —
/// when it finds neither `ip` nor `ifconfig` to log the network with.
pub fn spec() -> Spec {
    Spec {
        include: vec![
            "openssh-server",
            "sudo",
            "cloud-init",
            "python3-cffi-backend",
            "iproute2",
        ],
        prefetch: vec![],
    }
}

/// Whether a cloud-init host can run here: what a [`ChrootHost`] needs, plus debootstrap, tar and
/// flock for the cached root. Prints why not; under `CI` a missing tool is a failure.
pub fn available() -> bool {
    crate::common::require(
        "cloud-init test host",
        &["debootstrap", "tar", "flock"],
        false,
        ".ci/run installs debootstrap",
    ) && chroot_sshd::available()
}

/// cloud-init's own configuration for a chroot: the NoCloud datasource from the seed directory
/// only (`fs_label: null`: no search of block devices for a `cidata` filesystem), no network
/// configuration, the host name kept, and only the modules the tests need (`runcmd` writes the
/// user-data commands, `scripts-user` runs them).
const CLOUD_CFG: &str = "# ov integration tests: cloud-init in a chroot host, not a booted VM.
datasource_list: [NoCloud]
datasource:
  NoCloud:
    fs_label: null
network: {config: disabled}
preserve_hostname: true
cloud_init_modules: []
cloud_config_modules: [runcmd]
cloud_final_modules: [scripts-user]
";

/// The four boot stages, as cloud-init's systemd units run them, after `cloud-init clean`.
/// Each stage's own exit status is printed, not judged: `cloud-init status` is what the tests ask.
const BOOT: &str = r#"cloud-init clean --logs >/dev/null
for stage in "init --local" "init" "modules --mode config" "modules --mode final"; do
  # shellcheck disable=SC2086
  cloud-init $stage >/dev/null 2>&1
  echo "stage $stage: exit $?"
done
"#;

/// A running cloud-init test host. Dropping it stops everything it started.
pub struct CloudHost {
    /// Background boots (killed and reaped before the host goes).
    boots: Vec<Child>,
    host: ChrootHost,
    /// Address sshd listens on (port 22 in the namespace).
    pub addr: String,
    /// The key authorised for [`USER`].
    pub client_key: PathBuf,
    boot_count: AtomicU32,
}

impl CloudHost {
    /// Build (or reuse) the trixie root, lay cloud-init's configuration over it, and start the
    /// host. `None`: skipped (printed).
    pub fn start() -> Option<CloudHost> {
        if !available() {
            return None;
        }
        let t0 = Instant::now();
        let tarball = rootfs::tarball_for(SUITE, &spec());
        let lower = rootfs::extracted(&tarball);
        let ready = t0.elapsed();
        let mut opts = Options::new(USER);
        opts.hostname = HOSTNAME.to_string();
        opts.files.push((
            "etc/cloud/cloud.cfg.d/99-ov-it.cfg".into(),
            CLOUD_CFG.as_bytes().to_vec(),
            0o644,
        ));
        opts.setup = "mkdir -p /var/lib/cloud/seed/nocloud".into();
        let host = ChrootHost::start(&lower, &opts);
        let host = CloudHost {
            boots: Vec::new(),
            addr: host.addr.clone(),
            client_key: host.client_key.clone(),
            host,
            boot_count: AtomicU32::new(0),
        };
        eprintln!(
            "cloud-init host {} up after {:.1}s (cached root ready after {:.1}s)",
            host.addr,
            t0.elapsed().as_secs_f64(),
            ready.as_secs_f64(),
        );
        Some(host)
    }

    /// A command entering the host as root with a clean environment.
    fn enter(&self) -> Command {
        self.host.enter()
    }

    /// Run `script` (bash) in the host as root.
    pub fn run(&self, script: &str) -> Output {
        self.host.run(script)
    }

    /// Run `script` (bash) in the host as root and require success; returns stdout.
    pub fn sh(&self, script: &str) -> String {
        self.host.sh(script)
    }

    /// What `cloud-init status --format json` says right now (without waiting), and its exit
    /// status.
    pub fn status(&self) -> (Value, i32) {
        let out = self.run("cloud-init status --format json");
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "`cloud-init status` printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (v, out.status.code().unwrap_or(-1))
    }

    /// Seed a new instance (fresh instance-id) with `user_data` and forget the last boot.
    fn seed(&self, user_data: &str) {
        let n = self.boot_count.fetch_add(1, Ordering::SeqCst) + 1;
        let seed = self.path("var/lib/cloud/seed/nocloud");
        std::fs::write(
            seed.join("meta-data"),
            format!("instance-id: ov-it-{n}\nlocal-hostname: {HOSTNAME}\n"),
        )
        .expect("meta-data");
        std::fs::write(seed.join("user-data"), user_data).expect("user-data");
    }

    /// Boot cloud-init for real with `user_data` (all four stages, to the end); returns the
    /// stages' report lines.
    pub fn boot(&self, user_data: &str) -> String {
        self.seed(user_data);
        self.sh(BOOT)
    }

    /// Like [`boot`](Self::boot), in the background; returns once `cloud-init status` reports
    /// `running` (the `init --local` stage wrote status.json without result.json).
    pub fn boot_in_background(&mut self, user_data: &str) {
        self.seed(user_data);
        let child = self
            .enter()
            .args(["bash", "-c", BOOT])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cloud-init boot");
        self.boots.push(child);
        let t0 = Instant::now();
        loop {
            let (v, _) = self.status();
            if v["status"] == "running" {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "cloud-init never reported running: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether someone's `cloud-init status --wait` runs in the host now (from the process
    /// table: sshd's descendants).
    pub fn cloud_init_waiting(&self) -> bool {
        descendants(self.host.pid()).into_iter().any(|p| {
            let argv = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = argv.split(|&b| b == 0).collect();
            args.iter().any(|a| a.ends_with(b"cloud-init"))
                && args.contains(&&b"status"[..])
                && args.contains(&&b"--wait"[..])
        })
    }

    /// A target for [`USER`] with the authorised key and this host's own known_hosts file.
    pub fn target(&self) -> Target {
        self.host.target()
    }

    /// The path of `p` (relative to the host's root) as seen from the test: through sshd's root
    /// in /proc, since the overlay and /run exist only in the host's mount namespace.
    pub fn path(&self, p: &str) -> PathBuf {
        self.host.path(p)
    }

    /// The layer records in [`USER`]'s ledger.
    pub fn ledger_layers(&self) -> Vec<String> {
        let dir = self.path(&format!("var/lib/overthink/installed/{USER}/layers"));
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".json"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn stop(&mut self) {
        for c in self.boots.drain(..) {
            kill_tree(c);
        }
    }
}

impl Drop for CloudHost {
    fn drop(&mut self) {
        // The boots first; then the host (its Drop ends sshd, the namespaces and the mounts).
        self.stop();
    }
}
