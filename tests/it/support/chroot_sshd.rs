//! Test support, SSH target over a real Debian userland: an `sshd` chrooted into a debootstrapped
//! root (any root holding `openssh-server` and `sudo`), as a separate host on its own address in a
//! network namespace the test creates. Generic: a root directory in, a host out — a login user
//! with a key and passwordless sudo inside the root, extra files and setup from the caller.
//!
//! The root is the read-only lower layer of an overlay whose writable layer is a tmpfs, inside
//! private mount and UTS namespaces: whatever a test does to the host (packages, files, ledger)
//! is gone with it, and the cached root is never written.
//!
//! Invariants: every mount a host makes (overlay and its tmpfs, /proc, tmpfs /run, devpts) exists
//! only in its own mount namespace, which ends when `Drop` has killed and reaped every process in
//! it (sshd, its sessions, daemons they left, commands entered with [`ChrootHost::enter`]); then the network
//! namespace is deleted, then the host's directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ov::ssh::endpoint::Target;

use super::sshd::{kill, kill_tree, wait_gone, Netns};

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to put into the host besides its login user and sshd.
#[derive(Debug, Clone)]
pub struct Options {
    /// The login user, created inside the root with a key and passwordless sudo.
    pub user: String,
    /// The host name inside the host's UTS namespace.
    pub hostname: String,
    /// Files laid over the root before setup: (path relative to `/`, content, mode).
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Shell run as root inside the root after the standard setup, before sshd starts.
    pub setup: String,
}

impl Options {
    /// A host with login user `user` and nothing else.
    pub fn new(user: &str) -> Options {
        Options {
            user: user.to_string(),
            hostname: "ovit".to_string(),
            files: Vec::new(),
            setup: String::new(),
        }
    }
}

/// Whether a chrooted sshd host can run here (root; chroot, unshare, nsenter, ip, mount, the ssh
/// client). Prints why not; under `CI` a missing tool is a failure.
pub fn available() -> bool {
    crate::common::require(
        "chrooted sshd host",
        &[
            "chroot",
            "unshare",
            "nsenter",
            "ip",
            "mount",
            "ssh",
            "ssh-keygen",
        ],
        true,
        ".ci/run installs util-linux, iproute2 and openssh-client",
    )
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

/// Runs in the new mount and UTS namespaces (arguments: lower root, staged files, scratch mount
/// point, root mount point, host name, PATH): the overlay (its writable layer a tmpfs, which works
/// wherever the cache lives, even on an overlay itself) with the staged files copied over it,
/// /proc, a tmpfs /run with sshd's privilege separation directory, a private devpts, the host
/// name; the setup inside the root; then sshd, chrooted, in the foreground — `exec`, so the child
/// the test holds becomes sshd itself.
const LAUNCH: &str = r#"set -eu
lower=$1 stage=$2 scratch=$3 root=$4 host=$5 path=$6
mount -t tmpfs -o mode=0755 ov-it-upper "$scratch"
mkdir "$scratch/upper" "$scratch/work"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$scratch/upper,workdir=$scratch/work" "$root"
cp -R --preserve=mode,ownership "$stage/." "$root/"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
mkdir -p "$root/run/sshd" "$root/run/lock"
# debootstrap made device nodes unless it ran where it could not (then: the machine's /dev).
[ -c "$root/dev/null" ] || mount --rbind /dev "$root/dev"
mkdir -p "$root/dev/pts"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
[ -e "$root/dev/ptmx" ] || touch "$root/dev/ptmx"
mount --bind "$root/dev/pts/ptmx" "$root/dev/ptmx"
hostname "$host"
chroot "$root" /usr/bin/env -i "$path" LANG=C.UTF-8 bash /etc/ov-it/setup.sh
exec chroot "$root" /usr/bin/env -i "$path" LANG=C.UTF-8 /usr/sbin/sshd -D -e -f /etc/ov-it/sshd_config
"#;

/// A running chrooted sshd host. Dropping it stops everything it started.
pub struct ChrootHost {
    sshd: Option<Child>,
    netns: Netns,
    /// Client key, sshd log, staged files, mount points.
    dir: tempfile::TempDir,
    /// Address sshd listens on.
    pub addr: String,
    /// Port sshd listens on (22: the host has its own address).
    pub port: u16,
    /// The login user.
    pub user: String,
    /// The key authorised for the login user (its `.pub` beside it).
    pub client_key: PathBuf,
    /// sshd's log (its stderr, LogLevel VERBOSE), after the setup's output.
    pub log: PathBuf,
    /// The host's mount namespace (`/proc/PID/ns/mnt` link), once up.
    mnt_ns: Option<PathBuf>,
}

impl ChrootHost {
    /// Start a host over the root directory `lower` (read-only: an extracted cached root, see
    /// [`rootfs::extracted`](super::rootfs::extracted)). The caller checks [`available`] first.
    pub fn start(lower: &Path, opts: &Options) -> ChrootHost {
        let dir = tempfile::Builder::new()
            .prefix("ov-it-chroot.")
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
        let mut host = ChrootHost {
            sshd: None,
            netns,
            dir,
            addr,
            port: 22,
            user: opts.user.clone(),
            client_key,
            log,
            mnt_ns: None,
        };
        host.stage(opts);
        host.launch(lower, &opts.hostname);
        host
    }

    /// Stage `rel` (relative to the root) for the launch to copy into the root.
    fn put(&self, rel: &str, body: &[u8], mode: u32) {
        let p = self
            .dir
            .path()
            .join("stage")
            .join(rel.trim_start_matches('/'));
        let parent = p.parent().expect("parent");
        std::fs::create_dir_all(parent).expect("mkdir in stage");
        std::fs::write(&p, body).expect("write in stage");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// The login user with its key and sudo rule, sshd's config and host key — all inside the
    /// root (nothing of the machine's own users is touched) — plus the caller's files and setup.
    fn stage(&self, opts: &Options) {
        let user = &opts.user;
        let pubkey = std::fs::read(self.client_key.with_extension("pub")).expect("client key");
        let conf = format!(
            "# sshd of an ov test host (chrooted)\n\
ListenAddress {addr}:{port}\n\
HostKey /etc/ov-it/host_key\n\
PidFile none\n\
PubkeyAuthentication yes\n\
PasswordAuthentication no\n\
KbdInteractiveAuthentication no\n\
PermitRootLogin no\n\
AllowUsers {user}\n\
UsePAM no\n\
PrintMotd no\n\
LogLevel VERBOSE\n",
            addr = self.addr,
            port = self.port,
        );
        self.put("etc/ov-it/sshd_config", conf.as_bytes(), 0o644);
        self.put("etc/ov-it/authorized_key", &pubkey, 0o644);
        self.put(
            "etc/hostname",
            format!("{}\n", opts.hostname).as_bytes(),
            0o644,
        );
        for (rel, body, mode) in &opts.files {
            self.put(rel, body, *mode);
        }
        let setup = format!(
            r#"set -eu
useradd --create-home --shell /bin/bash {user}
# '*': no password, but not locked (sshd without PAM refuses a locked account's key).
usermod -p '*' {user}
install -d -m 0700 -o {user} -g {user} /home/{user}/.ssh
install -m 0600 -o {user} -g {user} /etc/ov-it/authorized_key /home/{user}/.ssh/authorized_keys
printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' {user} > /etc/sudoers.d/90-{user}
chmod 0440 /etc/sudoers.d/90-{user}
visudo -cf /etc/sudoers.d/90-{user} >/dev/null
printf '127.0.1.1 %s\n' {hostname} >> /etc/hosts
ssh-keygen -q -t ed25519 -N '' -C ov-it-host -f /etc/ov-it/host_key
/usr/sbin/sshd -t -f /etc/ov-it/sshd_config
# The caller's setup.
{extra}
"#,
            hostname = opts.hostname,
            extra = opts.setup,
        );
        self.put("etc/ov-it/setup.sh", setup.as_bytes(), 0o644);
    }

    fn launch(&mut self, lower: &Path, hostname: &str) {
        let log = std::fs::File::create(&self.log).expect("sshd log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns.name])
            .args(["unshare", "--mount", "--uts", "--propagation", "private"])
            .args(["bash", "-c", LAUNCH, "ov-it-chroot-sshd"])
            .arg(lower)
            .arg(self.dir.path().join("stage"))
            .arg(self.dir.path().join("scratch"))
            .arg(self.dir.path().join("root"))
            .arg(hostname)
            .arg(PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the chrooted sshd");
        self.sshd = Some(child);
        let sa: std::net::SocketAddr = format!("{}:{}", self.addr, self.port)
            .parse()
            .expect("address");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_ok() {
                self.mnt_ns = std::fs::read_link(format!("/proc/{}/ns/mnt", self.pid())).ok();
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

    /// The pid of sshd (its root and namespaces are the host's).
    pub fn pid(&self) -> u32 {
        self.sshd.as_ref().expect("sshd running").id()
    }

    /// A command entering the host — its mount, UTS and network namespaces and its root — as
    /// root with a clean environment; append the program and its arguments.
    pub fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid().to_string(), "-m", "-u", "-n", "-r", "-w"])
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
        check(self.run(script), &format!("`{script}` in the test host"))
    }

    /// The path of `p` (relative to the host's root) as seen from the test: through sshd's root
    /// in /proc, since the overlay exists only in the host's mount namespace.
    pub fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(p.trim_start_matches('/'))
    }

    /// A target for the login user with the authorised key and this host's own known_hosts.
    pub fn target(&self) -> Target {
        Target {
            host: self.addr.clone(),
            port: Some(self.port),
            user: Some(self.user.clone()),
            identity: Some(self.client_key.clone()),
            known_hosts: Some(self.dir.path().join("known_hosts")),
            ssh_config: None,
            vm: None,
        }
    }

    /// sshd's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every process in the host's mount namespace (also daemons that left sshd's tree).
    fn members(&self) -> Vec<u32> {
        let Some(ns) = &self.mnt_ns else {
            return Vec::new();
        };
        // Never the test's own namespace (that would be every process of the machine).
        if std::fs::read_link("/proc/self/ns/mnt").ok().as_ref() == Some(ns) {
            return Vec::new();
        }
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
            .filter(|p| {
                std::fs::read_link(format!("/proc/{p}/ns/mnt"))
                    .ok()
                    .as_ref()
                    == Some(ns)
            })
            .collect()
    }

    fn stop(&mut self) {
        let stragglers = self.members();
        if let Some(c) = self.sshd.take() {
            kill_tree(c);
        }
        kill(&stragglers, "KILL");
        wait_gone(&stragglers);
    }
}

impl Drop for ChrootHost {
    fn drop(&mut self) {
        // Once its last process is gone, the mount namespace (overlay and its tmpfs, /proc, /run,
        // devpts) goes with it; then the fields drop: the network namespace, then the directory.
        self.stop();
    }
}
