//! Stage `runner`, SSH endpoint: the fully resolved address the ssh room connects to (what the
//! target room computes from the command line, the saved state and the VM spec).
//! Invariant: everything here is already decided; connecting reads nothing else.

use std::path::PathBuf;

/// A resolved SSH destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name, address or (with an ssh config) host alias.
    pub host: String,
    /// Port (`None`: ssh's default or the config's).
    pub port: Option<u16>,
    /// Login user (`None`: ssh's default or the config's).
    pub user: Option<String>,
    /// Private key (`None`: ssh's defaults or the config's).
    pub identity: Option<PathBuf>,
    /// known_hosts file to use (accept-new on first contact, strict after).
    pub known_hosts: Option<PathBuf>,
    /// OpenSSH client config file.
    pub ssh_config: Option<PathBuf>,
    /// The VM, when the target is one.
    pub vm: Option<String>,
}

impl Target {
    /// `user@host:port` (parts that are unknown are left out).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(u) = &self.user {
            s.push_str(u);
            s.push('@');
        }
        s.push_str(&self.host);
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s
    }

    /// The host as known_hosts spells it (`[host]:port` for non-22 ports).
    pub fn known_hosts_name(&self) -> String {
        match self.port {
            Some(p) if p != 22 => format!("[{}]:{p}", self.host),
            _ => self.host.clone(),
        }
    }
}
