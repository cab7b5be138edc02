//! Test support, SSH target: a real private `sshd` (own config, host key, log, authorized keys)
//! as a separate host — on a loopback port, or on its own address inside a network namespace the
//! test creates — with a passwordless-sudo user and a user whose sudo wants a password.
//! Invariants: nothing is installed; every process and namespace a host starts is gone after
//! `Drop`; hosts in one test process never overlap in time (they share the users' ledgers).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use ov::ssh::endpoint::Target;

use super::run;

/// The user with passwordless sudo.
pub const USER: &str = "ovtest";
/// Where root keeps each account's ledger on this machine.
pub const ROOT_LEDGERS: &str = "/var/lib/overthink/installed";

/// The user whose sudo asks for a password.
pub const NOSUDO_USER: &str = "ovnosudo";

const SSHD: &str = "/usr/sbin/sshd";

/// Serialises hosts within this test process: they share the users' home directories (ledger)
/// and we count sessions per host.
static HOSTS: Mutex<()> = Mutex::new(());

/// Where the host listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 127.0.0.1 on a free port.
    Loopback,
    /// 10.213.K.2:22 inside a fresh network namespace, reached over a veth pair.
    Netns,
}

/// Skip (print and return `None`) unless the tools and privileges are there; under `CI` a
/// missing tool is a failure.
pub fn available() -> bool {
    let mut tools = vec![
        "ssh",
        "ssh-keygen",
        "sudo",
        "visudo",
        "useradd",
        "ip",
        "flock",
    ];
    if !Path::new(SSHD).exists() {
        tools.push("sshd (openssh-server)");
    }
    crate::common::require(
        "ssh test host",
        &tools,
        true,
        ".ci/run installs openssh-server, sudo, iproute2",
    )
}

fn run_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A cross-process lock (tests of other checkouts may run at the same time on this machine).
struct FileLock(#[allow(dead_code)] std::fs::File);

fn file_lock(name: &str) -> FileLock {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("/tmp/{name}.lock"))
        .expect("open lock file");
    f.lock().expect("lock");
    FileLock(f)
}

/// Create the two users (once per process; idempotent across processes).
fn ensure_users() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let _l = file_lock("ov-it-users");
        for (user, rule) in [
            (USER, "ALL=(ALL:ALL) NOPASSWD: ALL"),
            (NOSUDO_USER, "ALL=(ALL:ALL) ALL"),
        ] {
            if !run_ok(Command::new("id").arg(user)) {
                run(Command::new("useradd").args(["--create-home", "--shell", "/bin/bash", user]));
            }
            // '*': no password, but not locked (a locked account cannot log in with a key).
            run(Command::new("usermod").args(["-p", "*", user]));
            let path = format!("/etc/sudoers.d/90-{user}");
            let want = format!("{user} {rule}\n");
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                let tmp = format!("{path}.tmp");
                std::fs::write(&tmp, &want).expect("write sudoers");
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o440))
                    .expect("chmod sudoers");
                run(Command::new("visudo").args(["-cf", &tmp]));
                std::fs::rename(&tmp, &path).expect("install sudoers");
            }
        }
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
    });
}

/// The home directory of `user`.
pub fn home_of(user: &str) -> PathBuf {
    let out = run(Command::new("getent").args(["passwd", user]));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    PathBuf::from(line.trim().split(':').nth(5).expect("home field"))
}

/// A network namespace with a veth pair; deleted on drop.
pub struct Netns {
    /// The namespace's name (`ip netns exec NAME …`).
    pub name: String,
    host_if: String,
    host_ip: String,
    /// The address inside the namespace.
    pub guest_ip: String,
}

impl Netns {
    /// Create a namespace on a free 10.213.K.0/24 with a veth pair to it.
    pub fn create() -> Netns {
        let _l = file_lock("ov-it-netns");
        // Namespaces left by test processes that died without cleaning up.
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                if let Some(pid) = name
                    .strip_prefix("ovit-")
                    .and_then(|r| r.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok())
                {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = run_ok(Command::new("ip").args(["netns", "del", name]));
                    }
                }
            }
        }
        let addrs = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-4", "-o", "addr"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default(),
        )
        .into_owned();
        let k = (1..=250u32)
            .find(|k| {
                !addrs.contains(&format!("10.213.{k}."))
                    && !run_ok(Command::new("ip").args(["link", "show", &format!("ovith{k}")]))
            })
            .expect("a free 10.213.K.0/24 subnet");
        let name = format!("ovit-{}-{k}", std::process::id());
        let host_if = format!("ovith{k}");
        let guest_if = format!("ovitg{k}");
        let host_ip = format!("10.213.{k}.1");
        let guest_ip = format!("10.213.{k}.2");
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
            guest_ip: guest_ip.clone(),
        };
        run(Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", &guest_if,
        ]));
        run(Command::new("ip").args(["link", "set", &guest_if, "netns", &name]));
        // IPv4 only: no IPv6 duplicate-address detection delaying the link.
        let _ = run_ok(
            Command::new("sysctl")
                .args(["-qw", &format!("net.ipv6.conf.{host_if}.disable_ipv6=1")]),
        );
        let _ = run_ok(Command::new("ip").args([
            "netns",
            "exec",
            &name,
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{guest_if}.disable_ipv6=1"),
        ]));
        run(Command::new("ip").args(["addr", "add", &format!("{host_ip}/24"), "dev", &host_if]));
        run(Command::new("ip").args(["link", "set", &host_if, "up"]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        run(Command::new("ip").args([
            "-n",
            &name,
            "addr",
            "add",
            &format!("{guest_ip}/24"),
            "dev",
            &guest_if,
        ]));
        run(Command::new("ip").args(["-n", &name, "link", "set", &guest_if, "up"]));
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair with it.
        let _ = run_ok(Command::new("ip").args(["netns", "del", &self.name]));
        let _ = run_ok(Command::new("ip").args(["link", "del", &self.host_if]));
    }
}

/// Process state letter from /proc (a zombie counts as dead: PID 1 may reap late).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("X");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Every descendant of `pid` (from /proc's parent links).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some(ppid) = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|s| s.parse::<u32>().ok())
                {
                    parent_of.push((p, ppid));
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent_of {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// Send `signal` (`TERM`, `KILL`) to `pids`.
pub fn kill(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    let mut cmd = Command::new("kill");
    cmd.arg(format!("-{signal}"));
    for p in pids {
        cmd.arg(p.to_string());
    }
    let _ = run_ok(&mut cmd);
}

/// Kill `child` and every process below it, reap it, and give the others up to 3 s to go.
pub fn kill_tree(mut child: std::process::Child) {
    let pid = child.id();
    let kids = descendants(pid);
    kill(&kids, "KILL");
    kill(&[pid], "KILL");
    let _ = child.wait();
    wait_gone(&kids);
}

/// Wait up to 3 s until none of `pids` is alive.
pub fn wait_gone(pids: &[u32]) {
    let t0 = std::time::Instant::now();
    while pids.iter().any(|&k| alive(k)) && t0.elapsed() < std::time::Duration::from_secs(3) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A private sshd host.
pub struct TestHost {
    _serial: MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    netns: Option<Netns>,
    /// Address sshd listens on.
    pub addr: String,
    /// Port.
    pub port: u16,
    /// Key authorised for both users.
    pub client_key: PathBuf,
    /// A key nobody authorised.
    pub wrong_key: PathBuf,
    /// sshd's log (LogLevel VERBOSE).
    pub log: PathBuf,
    sshd: Option<Child>,
    /// Local ports of our own readiness probes (their log lines are not the code's doing).
    probe_ports: Vec<u16>,
}

impl TestHost {
    /// Prepare a host (users, keys, config, network) without starting sshd; `None` = skipped.
    pub fn prepare(kind: Kind) -> Option<TestHost> {
        if !available() {
            return None;
        }
        let serial = HOSTS.lock().unwrap_or_else(|e| e.into_inner());
        ensure_users();
        let dir = tempfile::Builder::new()
            .prefix("ov-it-host.")
            .tempdir()
            .expect("tempdir");
        // sshd reads the authorized keys as the user: the directory must be traversable.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let keygen = |name: &str, comment: &str| {
            let p = dir.path().join(name);
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(&p));
            p
        };
        keygen("host_key", "ov-it-host");
        let client_key = keygen("client_key", "ov-it-client");
        let wrong_key = keygen("wrong_key", "ov-it-wrong");
        let ak = dir.path().join("authorized_keys");
        std::fs::create_dir(&ak).expect("mkdir");
        std::fs::set_permissions(&ak, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let pubkey = std::fs::read_to_string(dir.path().join("client_key.pub")).expect("pub");
        for u in [USER, NOSUDO_USER] {
            let f = ak.join(u);
            std::fs::write(&f, &pubkey).expect("write authorized_keys");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let (netns, addr, port) = match kind {
            Kind::Loopback => {
                let l = TcpListener::bind("127.0.0.1:0").expect("free port");
                let port = l.local_addr().expect("addr").port();
                (None, "127.0.0.1".to_string(), port)
            }
            Kind::Netns => {
                let ns = Netns::create();
                let ip = ns.guest_ip.clone();
                (Some(ns), ip, 22)
            }
        };
        let log = dir.path().join("sshd.log");
        let host = TestHost {
            _serial: serial,
            client_key,
            wrong_key,
            log,
            addr,
            port,
            netns,
            sshd: None,
            probe_ports: Vec::new(),
            dir,
        };
        host.write_config();
        Some(host)
    }

    /// Prepare and start; `None` = skipped.
    pub fn start(kind: Kind) -> Option<TestHost> {
        let mut h = TestHost::prepare(kind)?;
        h.start_sshd();
        Some(h)
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let conf = format!(
            "# private sshd for ov's integration tests\n\
ListenAddress {addr}:{port}\n\
HostKey {d}/host_key\n\
PidFile {d}/sshd.pid\n\
AuthorizedKeysFile {d}/authorized_keys/%u\n\
StrictModes no\n\
PubkeyAuthentication yes\n\
PasswordAuthentication no\n\
KbdInteractiveAuthentication no\n\
PermitRootLogin no\n\
AllowUsers {USER} {NOSUDO_USER}\n\
UsePAM no\n\
PrintMotd no\n\
LogLevel VERBOSE\n",
            addr = self.addr,
            port = self.port
        );
        let path = self.dir.path().join("sshd_config");
        std::fs::write(&path, conf).expect("write sshd_config");
        run(Command::new(SSHD).arg("-t").arg("-f").arg(&path));
    }

    /// The host's private directory (keys, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Start sshd in the foreground (`-D`) as our child, and wait until it accepts.
    pub fn start_sshd(&mut self) {
        assert!(self.sshd.is_none(), "sshd already running");
        let conf = self.dir.path().join("sshd_config");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        cmd.arg("-D")
            .arg("-f")
            .arg(&conf)
            .arg("-E")
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn sshd");
        self.sshd = Some(child);
        let sa: SocketAddr = format!("{}:{}", self.addr, self.port)
            .parse()
            .expect("socket address");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(s) = TcpStream::connect_timeout(&sa, Duration::from_millis(200)) {
                if let Ok(local) = s.local_addr() {
                    self.probe_ports.push(local.port());
                }
                return;
            }
            if let Some(c) = self.sshd.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "sshd exited with {st}: {}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sshd on {sa} did not come up");
    }

    /// Stop sshd and every connection it serves.
    pub fn stop_sshd(&mut self) {
        let Some(mut child) = self.sshd.take() else {
            return;
        };
        let pid = child.id();
        let kids = descendants(pid);
        kill(&[pid], "TERM");
        kill(&kids, "KILL");
        let t0 = Instant::now();
        while alive(pid) && t0.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(pid) {
            let _ = child.kill();
        }
        let _ = child.wait();
        let t0 = Instant::now();
        while kids.iter().any(|&k| alive(k)) && t0.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the sshd processes serving open connections (the listener stays, and so do the
    /// commands they ran, which now write into closed pipes): a cut connection.
    pub fn kill_connections(&self) -> usize {
        let Some(child) = &self.sshd else { return 0 };
        let sshd: Vec<u32> = descendants(child.id())
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .map(|c| c.trim() == "sshd")
                    .unwrap_or(false)
            })
            .collect();
        kill(&sshd, "KILL");
        sshd.len()
    }

    /// Replace the host key (a recreated machine) and restart sshd.
    pub fn rotate_host_key(&mut self) {
        self.stop_sshd();
        let key = self.dir.path().join("host_key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(self.dir.path().join("host_key.pub"));
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ov-it-host-2", "-f"])
            .arg(&key));
        self.start_sshd();
    }

    /// A target for `user` with the authorised key and this host's own known_hosts file.
    pub fn target(&self, user: &str) -> Target {
        Target {
            host: self.addr.clone(),
            port: Some(self.port),
            user: Some(user.to_string()),
            identity: Some(self.client_key.clone()),
            known_hosts: Some(self.dir.path().join("known_hosts")),
            ssh_config: None,
            vm: None,
        }
    }

    fn log_lines(&self) -> Vec<String> {
        let probes: Vec<String> = self
            .probe_ports
            .iter()
            .map(|p| format!(" port {p} "))
            .collect();
        std::fs::File::open(&self.log)
            .map(|f| {
                BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .filter(|l| !probes.iter().any(|p| l.contains(p.as_str())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A position in the log (count lines after it with the `*_since` functions).
    pub fn mark(&self) -> usize {
        self.log_lines().len()
    }

    /// Channels opened since `mark` (sshd VERBOSE logs "Starting session:" per channel).
    pub fn sessions_since(&self, mark: usize) -> usize {
        self.log_lines()
            .iter()
            .skip(mark)
            .filter(|l| l.contains("Starting session:"))
            .count()
    }

    /// Authenticated TCP connections since `mark`.
    pub fn connections_since(&self, mark: usize) -> usize {
        self.log_lines()
            .iter()
            .skip(mark)
            .filter(|l| l.contains("Accepted publickey"))
            .count()
    }

    /// TCP connections that reached sshd at all since `mark`.
    pub fn connects_since(&self, mark: usize) -> usize {
        self.log_lines()
            .iter()
            .skip(mark)
            .filter(|l| l.starts_with("Connection from"))
            .count()
    }

    /// Remove the ledger of `user` (root's, and the view and env.d in the home) so each test
    /// starts clean.
    pub fn clear_ledger(&self, user: &str) {
        let _ = std::fs::remove_dir_all(home_of(user).join(".config/overthink"));
        let _ = std::fs::remove_dir_all(Path::new(ROOT_LEDGERS).join(user));
    }

    /// The address of the test side of the veth pair (netns hosts).
    pub fn host_side_ip(&self) -> Option<&str> {
        self.netns.as_ref().map(|n| n.host_ip.as_str())
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stop_sshd();
        // Netns (if any) is dropped after this, deleting the namespace and its veth pair.
    }
}
