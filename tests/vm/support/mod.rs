//! VM test support: real Debian guests under QEMU (TCG) with real systemd, sshd and cloud-init.
//! [`image`] builds a guest image once per recipe (`image.sh`, cached under
//! `target/ov-test-vm/<suite>-<hash>/`, built under a file lock); [`Guest::boot`] boots a fresh
//! qcow2 overlay of it with a fresh NoCloud seed (new instance-id, a user with our key and
//! passwordless sudo, a pinned host key) and user-mode networking that forwards only
//! `127.0.0.1:<free port>` to the guest's port 22; [`Operator`] is the operator's machine — a
//! test-local HOME with the guest's key where `ov` expects a VM key, and a copy of the fixture
//! project whose VMs' `ssh.port` is the guest's.
//!
//! Invariant: every process a test starts here is ended and reaped when its guard drops (also
//! when the test fails), and every temporary file goes with it; the guest reaches no network.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The Debian archive (the only network the image builds use; the guests have none).
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// The login user the seed creates (the fixture VMs' `ssh.user`).
pub const USER: &str = "ovtest";
/// The packages of the guest's local apt repository (downloaded, not installed).
pub const REPO_PACKAGES: &[&str] = &["hello"];
/// The image recipe; its text is part of the cache key.
const RECIPE: &str = include_str!("image.sh");

/// One VM at a time: the machine has two cores and every guest wants both.
static ONE_VM: Mutex<()> = Mutex::new(());

/// Serialise VM tests (a failed test poisons nothing: the lock is taken over).
fn one_vm_at_a_time() -> MutexGuard<'static, ()> {
    ONE_VM.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a guest kernel prints when it has stopped making progress. Under TCG on a loaded
/// two-core host a vCPU's timer wakeup can be lost: seen in CI, a Debian 12 guest reported an RCU
/// stall ("timer wakeup didn't happen", a vCPU idle in `native_safe_halt`) and then fell silent
/// for good, and `ov` waited out its 900 s for SSH. That is the emulator's failure, not `ov`'s.
const STALL_SIGNS: &[&str] = &[
    "detected stalls on CPUs",
    "self-detected stall on CPU",
    "kthread starved for",
    "timer wakeup didn't happen",
    "soft lockup",
];

/// The first line of a serial console that says the guest's kernel stalled.
pub fn stall_line(console: &str) -> Option<&str> {
    console
        .lines()
        .find(|l| STALL_SIGNS.iter().any(|s| l.contains(s)))
}

/// The stall line of the current test's guest, once its watchdog saw one (one guest at a time).
static STALLED: Mutex<Option<String>> = Mutex::new(None);

fn stalled() -> Option<String> {
    STALLED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Run a VM test: one at a time, skipped (or, under `CI`, failed) where VMs cannot run. When the
/// body fails after its guest's kernel stalled (the watchdog of [`Guest`] then killed the guest,
/// and [`wait_watched`] the `ov` waiting on it), the body runs once more on a fresh guest, and
/// says so on the real stderr (test output capture would hide it). A failure with no stall, or a
/// second stall, fails the test as it is.
pub fn vm_test(body: impl Fn()) {
    let _one = one_vm_at_a_time();
    if !available() {
        return;
    }
    for attempt in 1.. {
        *STALLED.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&body)) else {
            return;
        };
        match stalled() {
            Some(line) if attempt == 1 => {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "VM test: the guest's kernel stalled under emulation ({}); running the test \
                     once more on a fresh guest",
                    line.trim()
                );
            }
            _ => std::panic::resume_unwind(panic),
        }
    }
}

/// Wait for `child` (stdout and stderr piped) to end and collect its output; kill it and fail
/// the test if the guest's kernel stalls meanwhile, or when `deadline` passes.
pub fn wait_watched(mut child: Child, deadline: Option<Duration>) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            break status;
        }
        let why = if let Some(line) = stalled() {
            format!("the guest's kernel stalled: {}", line.trim())
        } else if deadline.is_some_and(|d| t0.elapsed() > d) {
            format!(
                "it did not finish within {:.0}s",
                t0.elapsed().as_secs_f64()
            )
        } else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let _ = child.kill();
        let _ = child.wait();
        panic!("stopped a command on the guest: {why}");
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Whether VM tests can run here: root, QEMU, mmdebstrap, genisoimage, OpenSSH. Prints why not
/// and returns false; under `CI` anything missing is a failure.
fn available() -> bool {
    crate::common::require(
        "VM tests",
        &[
            "qemu-system-x86_64",
            "setpriv",
            "qemu-img",
            "mmdebstrap",
            "genisoimage",
            "mkfs.ext4",
            "ssh",
            "ssh-keygen",
            "flock",
        ],
        true,
        "install qemu-system-x86, mmdebstrap and genisoimage from bookworm-backports; run as root",
    )
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ov-test-vm")
}

/// A built guest image: `base.qcow2`, `vmlinuz`, `initrd.img`.
#[derive(Debug, Clone)]
pub struct Image {
    /// The directory holding the three files.
    pub dir: PathBuf,
    /// The Debian suite.
    pub suite: String,
}

/// The image of `suite` (`bookworm`, `trixie`), built if missing: once per recipe and suite,
/// under a file lock (a concurrent build in another process is waited for), kept across runs.
pub fn image(suite: &str) -> Image {
    let mut key = Sha256::new();
    key.update(format!("v1|{suite}|{MIRROR}|{}|", REPO_PACKAGES.join(",")));
    key.update(RECIPE);
    let key = hex::encode(key.finalize());
    let base = cache_dir();
    std::fs::create_dir_all(&base).expect("cache dir");
    let dir = base.join(format!("{suite}-{}", &key[..16]));
    if dir.join("base.qcow2").is_file() {
        return Image {
            dir,
            suite: suite.into(),
        };
    }
    let script = base.join(format!(".image-{}.sh", &key[..16]));
    std::fs::write(&script, RECIPE).expect("write the recipe");
    let t0 = Instant::now();
    eprintln!("building the {suite} guest image in {}", dir.display());
    let status = Command::new("flock")
        .arg(base.join(".lock"))
        .arg("bash")
        .arg(&script)
        .arg(&dir)
        .arg(suite)
        .arg(MIRROR)
        .arg(base.join(format!("debs-{suite}")))
        .args(REPO_PACKAGES)
        .status()
        .expect("flock starts");
    std::fs::remove_file(&script).ok();
    assert!(status.success(), "building the {suite} guest image failed");
    // Images of older recipes of this suite are dead weight (about 400 MB each).
    let current = dir.file_name().map(|n| n.to_os_string());
    for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with(&format!("{suite}-"))
            && Some(&name) != current.as_ref()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    eprintln!(
        "{suite} guest image built in {:.0}s",
        t0.elapsed().as_secs_f64()
    );
    Image {
        dir,
        suite: suite.into(),
    }
}

/// A port on 127.0.0.1 nobody listens on right now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

fn ssh_keygen(path: &Path, comment: &str) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs")
        .success();
    assert!(ok, "ssh-keygen failed");
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A booted (or booting) guest. Dropping it kills QEMU, reaps it and removes its files.
pub struct Guest {
    qemu: Option<Child>,
    /// Reads the serial console while the guest runs; kills QEMU on a kernel stall.
    watchdog: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// The forwarded port on 127.0.0.1.
    pub port: u16,
    /// The guest's files: overlay, seed, keys, serial log.
    pub dir: tempfile::TempDir,
    /// When QEMU started.
    pub started: Instant,
}

/// Seed parts every guest gets: the user with our key and passwordless sudo, the pinned host
/// key. `ssh_pwauth: false` makes cloud-init rewrite sshd_config and restart sshd during the
/// first boot — what `ov`'s cloud-init wait must survive.
fn user_data(client_pub: &str, host_key: &str, host_pub: &str, extra: &str) -> String {
    let mut lines = vec![
        "#cloud-config".to_string(),
        "users:".into(),
        format!("  - name: {USER}"),
        "    shell: /bin/bash".into(),
        "    lock_passwd: true".into(),
        "    sudo: 'ALL=(ALL) NOPASSWD:ALL'".into(),
        "    ssh_authorized_keys:".into(),
        format!("      - {client_pub}"),
        "ssh_pwauth: false".into(),
        "disable_root: true".into(),
        "manage_etc_hosts: localhost".into(),
        "ssh_deletekeys: true".into(),
        "ssh_genkeytypes: []".into(),
        "ssh_keys:".into(),
        "  ed25519_private: |".into(),
    ];
    lines.extend(host_key.lines().map(|l| format!("    {l}")));
    lines.push(format!("  ed25519_public: {host_pub}"));
    let mut text = lines.join("\n");
    text.push('\n');
    text.push_str(extra);
    text
}

impl Guest {
    /// Boot `image` with a fresh overlay and seed; `extra` is appended to the cloud-config
    /// (e.g. a failing `runcmd`). Returns as soon as QEMU runs: the guest is still booting.
    pub fn boot(image: &Image, extra: &str) -> Guest {
        Guest::boot_seeded(image, |base| format!("{base}{extra}"))
    }

    /// Boot `image` with user-data in two parts (MIME multipart, which cloud-init merges): the
    /// guest's own cloud-config (user, keys) and `part`, verbatim — e.g. user-data `ov` emitted.
    pub fn boot_with_part(image: &Image, part: &str) -> Guest {
        const BOUNDARY: &str = "==ov-vm-tests-part==";
        assert!(!part.contains(BOUNDARY), "the part holds the boundary");
        Guest::boot_seeded(image, |base| {
            format!(
                "Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\nMIME-Version: 1.0\n\n\
                 --{BOUNDARY}\nContent-Type: text/cloud-config; charset=\"us-ascii\"\n\n{base}\n\
                 --{BOUNDARY}\nContent-Type: text/cloud-config; charset=\"us-ascii\"\n\n{part}\n\
                 --{BOUNDARY}--\n"
            )
        })
    }

    /// Boot `image` with the user-data `seed` makes of the guest's own cloud-config.
    fn boot_seeded(image: &Image, seed_text: impl FnOnce(&str) -> String) -> Guest {
        let dir = tempfile::Builder::new()
            .prefix("ov-vm-guest.")
            .tempdir()
            .expect("guest dir");
        let d = dir.path();
        ssh_keygen(&d.join("client"), "ov-vm-tests-client");
        ssh_keygen(&d.join("hostkey"), "ov-vm-tests-hostkey");
        let client_pub = read(&d.join("client.pub")).trim().to_string();
        let host_pub = read(&d.join("hostkey.pub")).trim().to_string();
        let seed = d.join("seed");
        std::fs::create_dir(&seed).expect("seed dir");
        let id = uuid::Uuid::new_v4();
        std::fs::write(
            seed.join("meta-data"),
            format!("instance-id: ov-vm-{id}\nlocal-hostname: ovguest\n"),
        )
        .expect("meta-data");
        std::fs::write(
            seed.join("user-data"),
            seed_text(&user_data(
                &client_pub,
                &read(&d.join("hostkey")),
                &host_pub,
                "",
            )),
        )
        .expect("user-data");
        let out = Command::new("genisoimage")
            .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(d.join("seed.iso"))
            .arg(seed.join("user-data"))
            .arg(seed.join("meta-data"))
            .output()
            .expect("genisoimage runs");
        assert!(out.status.success(), "genisoimage: {out:?}");
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(image.dir.join("base.qcow2"))
            .arg(d.join("disk.qcow2"))
            .output()
            .expect("qemu-img runs");
        assert!(out.status.success(), "qemu-img create: {out:?}");

        let port = free_port();
        let qemu_log = std::fs::File::create(d.join("qemu.log")).expect("qemu.log");
        let path = |name: &str| d.join(name).to_string_lossy().into_owned();
        // `setpriv --pdeathsig KILL` (util-linux) execs QEMU with the parent-death signal set: if
        // this test process dies without running the guard (SIGKILL from an outer timeout), the
        // kernel kills QEMU too instead of leaving an orphaned guest.
        let qemu = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "qemu-system-x86_64"])
            .args(["-name", "ov-vm-test", "-machine", "q35"])
            .args(["-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max"])
            .args(["-smp", "2", "-m", "1024", "-nodefaults"])
            .arg("-kernel")
            .arg(image.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.dir.join("initrd.img"))
            .args([
                "-append",
                "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0",
            ])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
                path("disk.qcow2")
            ))
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                path("seed.iso")
            ))
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .args(["-device", "virtio-rng-pci"])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", path("serial.log")))
            .stdin(Stdio::null())
            .stdout(qemu_log.try_clone().expect("dup"))
            .stderr(qemu_log)
            .spawn()
            .expect("qemu-system-x86_64 starts");
        eprintln!(
            "booting a {} guest (qemu pid {}), ssh on 127.0.0.1:{port}",
            image.suite,
            qemu.id()
        );
        let watchdog = watch_console(d.join("serial.log"), qemu.id());
        Guest {
            qemu: Some(qemu),
            watchdog: Some(watchdog),
            port,
            dir,
            started: Instant::now(),
        }
    }

    /// The client key (`client`, `client.pub`) the seed authorised.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client")
    }

    /// The known_hosts line of the pinned host key for `[127.0.0.1]:<port>`.
    pub fn known_hosts_line(&self) -> String {
        let public = read(&self.dir.path().join("hostkey.pub"));
        let mut words = public.split_whitespace();
        format!(
            "[127.0.0.1]:{} {} {}\n",
            self.port,
            words.next().unwrap_or(""),
            words.next().unwrap_or("")
        )
    }

    /// Seconds since QEMU started.
    pub fn uptime(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Assert that `ov` exited with `code`; the failure message has its output and the tail of
    /// the guest's console (what the guest was doing is most of the story in a VM test).
    #[track_caller]
    pub fn expect_exit(&self, out: &Output, code: i32) {
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}\n{}",
            text(out),
            self.serial_tail(40)
        );
    }

    /// The last `n` lines of the guest's serial console (for failure messages).
    pub fn serial_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("serial.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "--- last {} lines of the guest's serial console\n{}\n--- qemu\n{}",
            lines.len() - from,
            lines[from..].join("\n"),
            std::fs::read_to_string(self.dir.path().join("qemu.log")).unwrap_or_default()
        )
    }

    /// Whether QEMU still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.qemu.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn ssh_command(&self, timeout_secs: u32) -> Command {
        let known = self.dir.path().join("known_hosts");
        if !known.is_file() {
            std::fs::write(&known, self.known_hosts_line()).expect("known_hosts");
        }
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(self.client_key())
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("ConnectTimeout={timeout_secs}"))
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{USER}@127.0.0.1"))
            .stdin(Stdio::null());
        c
    }

    /// Run `cmd` in the guest over the test's own ssh connection (not `ov`'s).
    pub fn ssh(&self, cmd: &str) -> Output {
        self.ssh_command(30)
            .arg("--")
            .arg(cmd)
            .output()
            .expect("ssh runs")
    }

    /// [`Guest::ssh`] requiring success; returns stdout.
    pub fn sh(&self, cmd: &str) -> String {
        let out = self.ssh(cmd);
        assert!(
            out.status.success(),
            "`{cmd}` failed in the guest: status {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Poll `cmd` in the guest until it succeeds, up to `deadline` (QEMU must stay up).
    pub fn wait_for(&mut self, cmd: &str, deadline: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < deadline {
            assert!(self.running(), "qemu exited\n{}", self.serial_tail(40));
            if self
                .ssh_command(10)
                .arg("--")
                .arg(cmd)
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return true;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        false
    }
}

/// Watch the serial console at `serial` of QEMU `pid`: on a kernel stall line, note it in
/// [`STALLED`] and kill QEMU (a stalled guest never comes back; waiting on it only wastes the
/// test's time). Ends when the flag it returns is set.
fn watch_console(serial: PathBuf, pid: u32) -> (Arc<AtomicBool>, JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut seen = 0;
        while !flag.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(500));
            let bytes = std::fs::read(&serial).unwrap_or_default();
            // From the start of the last line read, so a line written in two parts is whole.
            let from = bytes[..seen.min(bytes.len())]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            seen = bytes.len();
            let text = String::from_utf8_lossy(&bytes[from..]);
            if let Some(line) = stall_line(&text) {
                *STALLED.lock().unwrap_or_else(|p| p.into_inner()) = Some(line.to_string());
                // QEMU is our child and not yet reaped (the guard joins this thread first), so
                // the pid is still QEMU's.
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                return;
            }
        }
    });
    (stop, handle)
}

impl Drop for Guest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.serial_tail(60));
        }
        if let Some((stop, handle)) = self.watchdog.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
        if let Some(mut child) = self.qemu.take() {
            // Our own child: kill and wait reaps it, whatever PID 1 does.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The operator's machine: a test-local HOME (deploy.yml, keys, bundle cache under it) and a
/// copy of the fixture project pointed at one guest.
pub struct Operator {
    /// HOME.
    pub home: tempfile::TempDir,
    /// The project copy.
    pub project: tempfile::TempDir,
}

/// The fixture project `tests/fixtures/vm`.
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vm")
}

impl Operator {
    /// An operator for `guest`, deploying to the fixture VM `vm` (key and known_hosts put where
    /// `ov vm create` leaves them: `~/.local/share/ov/vm/ov-<vm>/`).
    pub fn new(guest: &Guest, vm: &str) -> Operator {
        Operator::with_fixture(guest, vm, &fixture())
    }

    /// [`Operator::new`] for another fixture project (its VMs' `ssh.port` must be 2231).
    pub fn with_fixture(guest: &Guest, vm: &str, fixture: &Path) -> Operator {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::Builder::new()
            .prefix("ov-vm-home.")
            .tempdir()
            .expect("home");
        let project = tempfile::Builder::new()
            .prefix("ov-vm-project.")
            .tempdir()
            .expect("project");
        crate::common::copy_tree(fixture, project.path());
        let deploy = project.path().join("deploy.yml");
        let text = read(&deploy);
        assert!(text.contains("port: 2231"), "the fixture's VM port");
        std::fs::write(
            &deploy,
            text.replace("port: 2231", &format!("port: {}", guest.port)),
        )
        .expect("deploy.yml");
        let vm_dir = home.path().join(format!(".local/share/ov/vm/ov-{vm}"));
        std::fs::create_dir_all(&vm_dir).expect("vm dir");
        for (from, to, mode) in [
            ("client", "id_ed25519", 0o600),
            ("client.pub", "id_ed25519.pub", 0o644),
        ] {
            std::fs::copy(guest.dir.path().join(from), vm_dir.join(to)).expect("copy key");
            std::fs::set_permissions(vm_dir.join(to), std::fs::Permissions::from_mode(mode))
                .expect("chmod key");
        }
        // The pinned host key: ov must find exactly this key at the forwarded port.
        std::fs::write(vm_dir.join("known_hosts"), guest.known_hosts_line()).expect("known_hosts");
        Operator { home, project }
    }

    /// `ov ARGS` as a command: a clean environment apart from PATH, and this HOME and XDG
    /// directories, so deploy.yml, keys and the bundle cache are the test's.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = crate::common::ov_at_home(self.home.path(), self.project.path());
        c.args(args).stdin(Stdio::null());
        c
    }

    /// Run `ov ARGS` (see [`Operator::command`]) to the end (see [`wait_watched`]).
    pub fn ov(&self, args: &[&str]) -> Output {
        let t0 = Instant::now();
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ov runs");
        let out = wait_watched(child, None);
        eprintln!(
            "$ ov {} -> {:?} in {:.1}s",
            args.join(" "),
            out.status.code(),
            t0.elapsed().as_secs_f64()
        );
        out
    }

    /// `~/.config/ov/deploy.yml`.
    pub fn state_text(&self) -> String {
        std::fs::read_to_string(self.home.path().join(".config/ov/deploy.yml")).unwrap_or_default()
    }
}

/// Exit status, stdout and stderr, for assertion messages.
pub use crate::common::output_text as text;

/// The JSON lines of `--json` output.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// The layers of the `event` lines of `--json` output, in order.
pub fn json_layers(lines: &[serde_json::Value], event: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|v| v["event"] == event)
        .filter_map(|v| v["layer"].as_str().map(str::to_string))
        .collect()
}

/// The stall watch on a stand-in for QEMU (`sleep`) and a console file written as a kernel
/// writes it: healthy boot lines (RCU's own among them) leave it running, a stall line written
/// in two parts kills it, and a command waited on through [`wait_watched`] is then stopped.
#[test]
fn the_stall_watch_kills_a_stalled_guest_and_stops_what_waits_on_it() {
    use std::fs::OpenOptions;
    let _one = one_vm_at_a_time();
    *STALLED.lock().unwrap_or_else(|p| p.into_inner()) = None;
    let dir = tempfile::tempdir().expect("tempdir");
    let serial = dir.path().join("serial.log");
    let mut console = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&serial)
        .expect("console");
    let mut qemu = Command::new("sleep").arg("600").spawn().expect("sleep");
    let (stop, handle) = watch_console(serial.clone(), qemu.id());
    for line in [
        "[    0.112233] rcu: Hierarchical RCU implementation.",
        "[    0.112240] rcu: \tRCU restricting CPUs from NR_CPUS=8192 to nr_cpu_ids=2.",
        "[  OK  ] Started ssh.service - OpenBSD Secure Shell server.",
    ] {
        writeln!(console, "{line}").expect("write");
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        qemu.try_wait().expect("try_wait").is_none(),
        "killed on a healthy console"
    );
    assert_eq!(stalled(), None);

    // The line of the CI failure, in two writes with a read of the watch between them.
    write!(console, "[  443.109191] rcu: INFO: rcu_preempt detec").expect("write");
    std::thread::sleep(Duration::from_millis(1200));
    writeln!(console, "ted stalls on CPUs/tasks:").expect("write");
    let t0 = Instant::now();
    while qemu.try_wait().expect("try_wait").is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not killed on a stall"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        stalled().as_deref(),
        Some("[  443.109191] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:")
    );
    stop.store(true, Ordering::Relaxed);
    handle.join().expect("watch");

    let waiting = Command::new("sleep")
        .arg("600")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sleep");
    let t0 = Instant::now();
    let panic = std::panic::catch_unwind(|| wait_watched(waiting, None))
        .expect_err("wait_watched returned on a stalled guest");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("kernel stalled"), "{message}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    *STALLED.lock().unwrap_or_else(|p| p.into_inner()) = None;
}
