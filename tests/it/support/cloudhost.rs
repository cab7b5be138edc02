//! Test support, cloud-init target: a separate Debian 13 ("trixie") host with the real
//! `cloud-init` package from the Debian archive — a debootstrapped root (cached like
//! [`rootfs`](super::rootfs)), mounted as the lower layer of an overlay inside private mount, UTS
//! and network namespaces, and served by its own `sshd` chrooted into it. cloud-init's states are
//! produced by cloud-init itself: the test seeds a NoCloud datasource and runs its four boot
//! stages (`init --local`, `init`, `modules --mode config|final`) in the host, which write
//! `/run/cloud-init/status.json` and `result.json` as on a booted machine; the only other inputs
//! are files `cloud-init status` reads (the `/etc/cloud/cloud-init.disabled` marker, systemd's
//! `/run/systemd/system` boot marker).
//!
//! Invariants: every mount a host makes (the overlay with its tmpfs upper layer, /proc, tmpfs
//! /run, devpts) exists only in its own mount namespace, which ends when `Drop` has killed and
//! reaped its processes; then its network namespace is deleted; the cached root is never written. cloud-init runs with a module list cut to `runcmd`/`scripts-user`, no network
//! configuration and no hostname change, so it reaches nothing of the machine.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use ov::target::Target;

use super::rootfs::{self, Spec};
use super::sshd::{alive, descendants, kill, Netns};

/// The suite: trixie's cloud-init (25.1) reports `degraded` (new in 23.4); bookworm's 22.4 does
/// not.
pub const SUITE: &str = "trixie";
/// The login user inside the root (passwordless sudo).
pub const USER: &str = "ovtest";
/// The host name inside the host's UTS namespace.
pub const HOSTNAME: &str = "ovci";

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether a cloud-init host can run here (root; debootstrap, chroot, unshare, nsenter, ip, the
/// ssh client). Prints why not; under `CI` a missing tool is a failure.
pub fn available() -> bool {
    let mut missing: Vec<&str> = [
        "debootstrap",
        "chroot",
        "unshare",
        "nsenter",
        "ip",
        "mount",
        "tar",
        "flock",
        "ssh",
        "ssh-keygen",
    ]
    .into_iter()
    .filter(|t| !have(t))
    .collect();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        missing.push("root privileges");
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "cloud-init test host unavailable: missing {}",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set)");
    }
    eprintln!("SKIP: {msg}");
    false
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// Runs in the new namespaces (arguments: lower, staged files, scratch dir, mount point, host
/// name, PATH): the overlay root (its writable layer a tmpfs, which works wherever the cache
/// lives, even on an overlay itself) with the staged files copied in, /proc, a tmpfs /run holding
/// sshd's privilege separation directory, a private devpts; the host name; the setup inside the
/// root; then sshd, chrooted, in the foreground.
const LAUNCH: &str = r#"set -eu
lower=$1 stage=$2 t=$3 r=$4
mount -t tmpfs -o mode=0755 tmpfs "$t"
mkdir "$t/upper" "$t/work"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$t/upper,workdir=$t/work" "$r"
cp -R --preserve=mode,ownership "$stage/." "$r/"
mount -t proc proc "$r/proc"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$r/run"
mkdir -p "$r/run/sshd" "$r/run/lock"
# debootstrap made device nodes unless it ran where it could not (then: the machine's /dev).
[ -c "$r/dev/null" ] || mount --rbind /dev "$r/dev"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$r/dev/pts"
mount --bind "$r/dev/pts/ptmx" "$r/dev/ptmx"
hostname "$5"
chroot "$r" /usr/bin/env -i "$6" LANG=C.UTF-8 bash /etc/ov-it/setup.sh
exec chroot "$r" /usr/bin/env -i "$6" LANG=C.UTF-8 /usr/sbin/sshd -D -e -f /etc/ov-it/sshd_config
"#;

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
    sshd: Option<Child>,
    boots: Vec<Child>,
    netns: Netns,
    /// Client key, sshd log, the files to copy into the root, and mount points.
    dir: tempfile::TempDir,
    lower: PathBuf,
    /// Address sshd listens on (port 22 in the namespace).
    pub addr: String,
    /// The key authorised for [`USER`].
    pub client_key: PathBuf,
    /// sshd's log (its stderr, LogLevel VERBOSE), and the setup's output before it.
    pub log: PathBuf,
    boot_count: AtomicU32,
}

impl CloudHost {
    /// Build (or reuse) the trixie root, lay the user and sshd's files over it, and start the
    /// host. `None`: skipped (printed).
    pub fn start() -> Option<CloudHost> {
        if !available() {
            return None;
        }
        let t0 = Instant::now();
        let tarball = rootfs::tarball_for(SUITE, &spec());
        let lower = rootfs::extracted(&tarball);
        let ready = t0.elapsed();
        let dir = tempfile::Builder::new()
            .prefix("ov-it-cloudhost.")
            .tempdir()
            .expect("tempdir");
        // `stage` is copied over the root's `/`, so it carries the root's owner and mode.
        for d in ["stage", "scratch", "root"] {
            let p = dir.path().join(d);
            std::fs::create_dir(&p).expect("host dirs");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let client_key = dir.path().join("client_key");
        check(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "ov-it-client", "-f"])
                .arg(&client_key)
                .output()
                .expect("ssh-keygen starts"),
            "ssh-keygen",
        );
        let netns = Netns::create();
        let addr = netns.guest_ip.clone();
        let log = dir.path().join("sshd.log");
        let mut host = CloudHost {
            sshd: None,
            boots: Vec::new(),
            netns,
            dir,
            lower,
            addr,
            client_key,
            log,
            boot_count: AtomicU32::new(0),
        };
        host.stage();
        host.start_sshd();
        eprintln!(
            "cloud-init host {} up after {:.1}s (cached root ready after {:.1}s)",
            host.addr,
            t0.elapsed().as_secs_f64(),
            ready.as_secs_f64(),
        );
        Some(host)
    }

    /// Stage `rel` (relative to the root) for the launch to copy into the root.
    fn put(&self, rel: &str, body: &str) {
        let p = self.dir.path().join("stage").join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir in stage");
        std::fs::write(&p, body).expect("write in stage");
    }

    /// The login user, its key and sudo rule, sshd's config and host key, and cloud-init's
    /// configuration — all inside the root (nothing of the machine's own users is touched): staged
    /// files, and a setup script the launch runs chrooted.
    fn stage(&self) {
        let pubkey = std::fs::read_to_string(self.client_key.with_extension("pub"))
            .expect("client public key");
        let conf = format!(
            "# sshd of ov's cloud-init test host (chrooted)\n\
ListenAddress {addr}:22\n\
HostKey /etc/ov-it/host_key\n\
PidFile none\n\
PubkeyAuthentication yes\n\
PasswordAuthentication no\n\
KbdInteractiveAuthentication no\n\
PermitRootLogin no\n\
AllowUsers {USER}\n\
UsePAM no\n\
PrintMotd no\n\
LogLevel VERBOSE\n",
            addr = self.addr
        );
        self.put("etc/ov-it/sshd_config", &conf);
        self.put("etc/ov-it/authorized_key", &pubkey);
        self.put("etc/cloud/cloud.cfg.d/99-ov-it.cfg", CLOUD_CFG);
        self.put("etc/hostname", &format!("{HOSTNAME}\n"));
        let setup = format!(
            r#"set -eu
useradd --create-home --shell /bin/bash {USER}
# '*': no password, but not locked (sshd without PAM refuses a locked account's key).
usermod -p '*' {USER}
install -d -m 0700 -o {USER} -g {USER} /home/{USER}/.ssh
install -m 0600 -o {USER} -g {USER} /etc/ov-it/authorized_key /home/{USER}/.ssh/authorized_keys
printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' {USER} > /etc/sudoers.d/90-{USER}
chmod 0440 /etc/sudoers.d/90-{USER}
visudo -cf /etc/sudoers.d/90-{USER} >/dev/null
printf '127.0.1.1 %s\n' {HOSTNAME} >> /etc/hosts
ssh-keygen -q -t ed25519 -N '' -C ov-it-cloudhost -f /etc/ov-it/host_key
/usr/sbin/sshd -t -f /etc/ov-it/sshd_config
mkdir -p /var/lib/cloud/seed/nocloud
"#
        );
        self.put("etc/ov-it/setup.sh", &setup);
    }

    fn start_sshd(&mut self) {
        let log = std::fs::File::create(&self.log).expect("sshd log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns.name])
            .args(["unshare", "--mount", "--uts", "--propagation", "private"])
            .args(["bash", "-c", LAUNCH, "ov-it-cloudhost"])
            .arg(&self.lower)
            .arg(self.dir.path().join("stage"))
            .arg(self.dir.path().join("scratch"))
            .arg(self.dir.path().join("root"))
            .arg(HOSTNAME)
            .arg(PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sshd");
        // `ip netns exec`, `unshare` and `chroot` exec, and so does bash's last command: once
        // up, the child is sshd itself.
        self.sshd = Some(child);
        let sa: std::net::SocketAddr = format!("{}:22", self.addr).parse().expect("address");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(Ok(Some(st))) = self.sshd.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "the chrooted sshd exited with {st}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the chrooted sshd on {sa} did not come up: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn sshd_pid(&self) -> u32 {
        self.sshd.as_ref().expect("sshd running").id()
    }

    /// A command entering the host: its mount, UTS and network namespaces and its root, as root,
    /// with a clean environment.
    fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.sshd_pid().to_string(),
            "-m",
            "-u",
            "-n",
            "-r",
            "-w",
        ])
        .args(["/usr/bin/env", "-i", PATH, "LANG=C.UTF-8", "HOME=/root"]);
        c
    }

    /// Run `script` (bash) in the host as root.
    pub fn run(&self, script: &str) -> Output {
        self.enter()
            .args(["bash", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter starts")
    }

    /// Run `script` (bash) in the host as root and require success; returns stdout.
    pub fn sh(&self, script: &str) -> String {
        check(
            self.run(script),
            &format!("`{script}` in the cloud-init host"),
        )
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
        descendants(self.sshd_pid()).into_iter().any(|p| {
            let argv = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = argv.split(|&b| b == 0).collect();
            args.iter().any(|a| a.ends_with(b"cloud-init"))
                && args.contains(&&b"status"[..])
                && args.contains(&&b"--wait"[..])
        })
    }

    /// A target for [`USER`] with the authorised key and this host's own known_hosts file.
    pub fn target(&self) -> Target {
        Target {
            host: self.addr.clone(),
            port: Some(22),
            user: Some(USER.to_string()),
            identity: Some(self.client_key.clone()),
            known_hosts: Some(self.dir.path().join("known_hosts")),
            ssh_config: None,
            vm: None,
        }
    }

    /// The path of `p` (relative to the host's root) as seen from the test: through sshd's root
    /// in /proc, since the overlay and /run exist only in the host's mount namespace.
    pub fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.sshd_pid())).join(p.trim_start_matches('/'))
    }

    /// The layer records in [`USER`]'s ledger.
    pub fn ledger_layers(&self) -> Vec<String> {
        let dir = self.path(&format!("home/{USER}/.config/overthink/installed/layers"));
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
        let mut children: Vec<Child> = self.boots.drain(..).collect();
        children.extend(self.sshd.take());
        for mut c in children {
            let pid = c.id();
            let kids = descendants(pid);
            kill(&kids, "KILL");
            kill(&[pid], "KILL");
            let _ = c.wait();
            let t0 = Instant::now();
            while kids.iter().any(|&k| alive(k)) && t0.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for CloudHost {
    fn drop(&mut self) {
        // Once its last process is gone, the mount namespace (overlay and its tmpfs, /proc, /run,
        // devpts) goes with it; then the fields drop: the network namespace, then the directory.
        self.stop();
    }
}
