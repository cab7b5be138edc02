//! Test support, a fleet of real SSH targets: N [`ChrootHost`]s (each an sshd chrooted into an
//! overlay of one cached debootstrapped root, on its own address in its own network namespace)
//! started in parallel, plus "down" hosts (an address and port where nothing listens), and the
//! Ansible INI inventory that reaches them: `ansible_host`, `ansible_port`, `ansible_user`,
//! `ansible_ssh_private_key_file`, and one shared known_hosts file for all of them
//! (`StrictHostKeyChecking=accept-new`, as `ov` does for a VM) in `ansible_ssh_common_args`.
//!
//! Invariants: those of [`ChrootHost`] for every host (all its mounts and processes are gone
//! after `Drop`; the cached root is never written); a down host's port was bound and released
//! by this process, so nothing of this machine listens there when the fleet starts; every
//! value written into the inventory is checked to need no quoting.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::chroot_sshd::{self, ChrootHost, Options};
use super::e2e;
use super::rootfs::{self, Spec};

/// A running host of the fleet.
pub struct Member {
    /// The inventory name (`t01`, `t02`, …; also the host's own host name).
    pub name: String,
    /// The host.
    pub host: ChrootHost,
}

/// A host that is down: nothing listens at `addr:port`.
pub struct Down {
    /// The inventory name (`down1`, …).
    pub name: String,
    /// Address (loopback).
    pub addr: String,
    /// A port this process bound and released.
    pub port: u16,
}

/// N running hosts, some down ones, and a directory for the inventory and known_hosts.
pub struct Fleet {
    /// The running hosts, `t01` first.
    pub members: Vec<Member>,
    /// The down hosts.
    pub down: Vec<Down>,
    /// How long starting the running hosts took (wall time, in parallel).
    pub started_in: Duration,
    dir: tempfile::TempDir,
}

/// Whether a fleet can run here (what a chrooted host and a debootstrapped root need).
pub fn available() -> bool {
    rootfs::available() && chroot_sshd::available()
}

/// The root every member runs on unless the caller picks another: the end-to-end root
/// (openssh-server, sudo, `hello` in apt's cache).
pub fn default_spec() -> Spec {
    e2e::spec()
}

/// The options of member `i` (0-based) by default: login user [`e2e::USER`], host name
/// `tNN`, apt told the root is offline.
pub fn default_options(i: usize) -> Options {
    let mut o = Options::new(e2e::USER);
    o.hostname = name(i);
    o.files.push((
        e2e::OFFLINE_APT.0.into(),
        e2e::OFFLINE_APT.1.as_bytes().to_vec(),
        0o644,
    ));
    o
}

/// The inventory name of member `i`.
pub fn name(i: usize) -> String {
    format!("t{:02}", i + 1)
}

impl Fleet {
    /// Start `n` hosts over `spec`'s root (options per host from `options`) in parallel, and
    /// pick `down` down hosts. `None` (printed) when the machine cannot run them.
    pub fn start(
        n: usize,
        down: usize,
        spec: &Spec,
        options: impl Fn(usize) -> Options + Sync,
    ) -> Option<Fleet> {
        if !available() {
            return None;
        }
        let lower = rootfs::extracted(&rootfs::tarball(spec));
        let dir = tempfile::Builder::new()
            .prefix("ov-it-fleet.")
            .tempdir()
            .expect("fleet dir");
        let t0 = Instant::now();
        let members: Vec<Member> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let (lower, options) = (&lower, &options);
                    s.spawn(move || {
                        let mut opts = options(i);
                        if opts.hostname == "ovit" {
                            opts.hostname = name(i);
                        }
                        Member {
                            name: name(i),
                            host: ChrootHost::start(lower, &opts),
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let started_in = t0.elapsed();
        let down = (0..down)
            .map(|i| Down {
                name: format!("down{}", i + 1),
                addr: "127.0.0.1".to_string(),
                port: free_port(),
            })
            .collect();
        eprintln!(
            "fleet: {n} hosts up in {:.2}s ({:.2}s a host on average, in parallel)",
            started_in.as_secs_f64(),
            started_in.as_secs_f64() / n.max(1) as f64
        );
        Some(Fleet {
            members,
            down,
            started_in,
            dir,
        })
    }

    /// [`Fleet::start`] with the default root and options.
    pub fn start_default(n: usize, down: usize) -> Option<Fleet> {
        Self::start(n, down, &default_spec(), default_options)
    }

    /// The known_hosts file every host's key lands in on first contact.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// A member by inventory name.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The INI inventory of the fleet: the running hosts in `[fleet]`, the down ones in
    /// `[down]`, the SSH options in `[all:vars]`, then `extra` (more groups or vars) verbatim.
    pub fn inventory_text(&self, extra: &str) -> String {
        let mut s = String::from("# A fleet of ov test hosts.\n[fleet]\n");
        for m in &self.members {
            s.push_str(&host_line(
                &m.name,
                &m.host.addr,
                m.host.port,
                &m.host.user,
                &m.host.client_key,
            ));
        }
        s.push_str("\n[down]\n");
        // A down host still has a key to offer, so only the connection fails.
        let key = self
            .members
            .first()
            .map(|m| m.host.client_key.clone())
            .unwrap_or_else(|| self.dir.path().join("no_key"));
        for d in &self.down {
            s.push_str(&host_line(&d.name, &d.addr, d.port, e2e::USER, &key));
        }
        let kh = checked(&self.known_hosts().to_string_lossy()).to_string();
        s.push_str(&format!(
            "\n[all:vars]\nansible_ssh_common_args='-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={kh}'\n"
        ));
        s.push_str(extra);
        s
    }

    /// Write [`Fleet::inventory_text`] to `hosts.ini` in the fleet's directory; its path.
    pub fn write_inventory(&self, extra: &str) -> PathBuf {
        let p = self.dir.path().join("hosts.ini");
        std::fs::write(&p, self.inventory_text(extra)).expect("write the inventory");
        p
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Every host stops on its own (kill, reap, unmount by namespace exit); in parallel.
        let t0 = Instant::now();
        let n = self.members.len();
        std::thread::scope(|s| {
            for m in self.members.drain(..) {
                s.spawn(move || drop(m));
            }
        });
        eprintln!(
            "fleet: {n} hosts torn down in {:.2}s",
            t0.elapsed().as_secs_f64()
        );
    }
}

fn host_line(name: &str, addr: &str, port: u16, user: &str, key: &Path) -> String {
    format!(
        "{} ansible_host={} ansible_port={port} ansible_user={} ansible_ssh_private_key_file={}\n",
        checked(name),
        checked(addr),
        checked(user),
        checked(&key.to_string_lossy()),
    )
}

/// A value written unquoted into an INI host line: no whitespace, quote, `#`, `=` or `\`.
fn checked(v: &str) -> &str {
    assert!(
        !v.is_empty()
            && !v
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '\'' | '"' | '#' | '=' | '\\' | ';')),
        "`{v}` would need quoting in an INI inventory"
    );
    v
}

/// A loopback port nothing listens on: bound, then released.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").port()
}
