//! Stage `inventory`, a host's connection: the Ansible variables ov maps onto OpenSSH —
//! `ansible_host`, `ansible_port`, `ansible_user`, `ansible_ssh_private_key_file` (and their
//! older `ansible_ssh_*` spellings, which win as in Ansible), the `-o KEY=VALUE` options in
//! `ansible_ssh_common_args`/`ansible_ssh_extra_args` — and ov's own `ov_user`, `ov_distro`.
//!
//! Invariant: nothing here is ever given to a shell. SSH options come out as (key, value) pairs
//! for separate `-o KEY=VALUE` arguments; anything else in the args variables is refused, and so
//! are the options that make ssh run a local command (`ProxyCommand`, `LocalCommand`,
//! `KnownHostsCommand`, …) — a bastion is `ProxyJump`, which runs nothing — and those that would
//! take over ov's own connection sharing (`Control*`). Jinja templates (`{{ … }}`) are refused
//! rather than passed on as text: ov does not evaluate them.

use std::path::PathBuf;

use serde_json::Value;

use super::pylit::shlex_split;
use super::{Host, InventoryError};

/// Where and how to reach one host over SSH, from its inventory variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The inventory name.
    pub name: String,
    /// Address or DNS name to connect to (`ansible_host`, else the inventory name).
    pub host: String,
    /// `ansible_port`.
    pub port: Option<u16>,
    /// `ansible_user`: the SSH login.
    pub user: Option<String>,
    /// `ansible_ssh_private_key_file` (`~/` expanded).
    pub identity: Option<PathBuf>,
    /// `-o KEY=VALUE` options from `ansible_ssh_common_args` then `ansible_ssh_extra_args`.
    pub ssh_options: Vec<(String, String)>,
    /// `ov_user`: the account the bundle's user-scope layers are for (`run.sh --user`).
    pub ov_user: Option<String>,
    /// `ov_distro`: the distro tag to compile for, when not detected.
    pub ov_distro: Option<String>,
}

/// SSH options that run a local command, or take over ov's connection sharing.
const REFUSED: &[(&str, &str)] = &[
    (
        "proxycommand",
        "it runs a local command through a shell; use `-o ProxyJump=user@bastion` for a jump host",
    ),
    ("localcommand", "it runs a local command through a shell"),
    (
        "permitlocalcommand",
        "it enables `LocalCommand`, which runs a local command",
    ),
    ("knownhostscommand", "it runs a local command"),
    ("remotecommand", "ov runs its own commands on the host"),
    (
        "controlmaster",
        "ov shares one connection per host on its own",
    ),
    (
        "controlpath",
        "ov shares one connection per host on its own",
    ),
    (
        "controlpersist",
        "ov shares one connection per host on its own",
    ),
];

impl Host {
    /// The host's SSH settings; `Err` names the variable that cannot be used and why.
    pub fn ssh_target(&self) -> Result<SshTarget, InventoryError> {
        if let Some(c) = self.text_var(&["ansible_connection"])? {
            if !matches!(
                c.as_str(),
                "ssh" | "smart" | "paramiko" | "ansible.builtin.ssh"
            ) {
                return Err(self.var_err(
                    format!("`ansible_connection` is `{c}`; ov reaches hosts over SSH only"),
                    "remove `ansible_connection` for this host, or leave it out of the selection with `-l '!NAME'`",
                ));
            }
        }
        let host = self
            .text_var(&["ansible_host", "ansible_ssh_host"])?
            .unwrap_or_else(|| self.name.clone());
        if host.is_empty()
            || host.starts_with('-')
            || host.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(self.var_err(
                format!("`{host}` is not a host name or address"),
                "set `ansible_host` to the address or DNS name to connect to",
            ));
        }
        let port = self.port()?;
        let user = self.text_var(&["ansible_user", "ansible_ssh_user"])?;
        if let Some(u) = &user {
            if u.is_empty()
                || u.starts_with('-')
                || u.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '@')
            {
                return Err(self.var_err(
                    format!("`ansible_user` `{u}` is not a login name"),
                    "set `ansible_user` to the account ov logs in as",
                ));
            }
        }
        let identity = self
            .text_var(&["ansible_private_key_file", "ansible_ssh_private_key_file"])?
            .map(|p| expand_home(&p));
        let mut ssh_options = Vec::new();
        for var in ["ansible_ssh_common_args", "ansible_ssh_extra_args"] {
            if let Some(args) = self.text_var(&[var])? {
                ssh_options.extend(self.options(var, &args)?);
            }
        }
        let ov_user = self.text_var(&["ov_user"])?;
        let ov_distro = self.text_var(&["ov_distro"])?;
        Ok(SshTarget {
            name: self.name.clone(),
            host,
            port,
            user,
            identity,
            ssh_options,
            ov_user,
            ov_distro,
        })
    }

    fn var_err(&self, message: String, hint: &str) -> InventoryError {
        InventoryError::Var {
            host: self.name.clone(),
            message,
            hint: hint.to_string(),
        }
    }

    /// The last of `names` that is set (Ansible lets the later spelling win), as text: a string,
    /// or a number's digits. `null` counts as unset.
    fn text_var(&self, names: &[&str]) -> Result<Option<String>, InventoryError> {
        let Some((name, v)) = names
            .iter()
            .rev()
            .find_map(|n| self.vars.get(*n).filter(|v| !v.is_null()).map(|v| (*n, v)))
        else {
            return Ok(None);
        };
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(self.var_err(
                    format!("`{name}` must be text, not `{other}`"),
                    &format!("give `{name}` a plain value"),
                ))
            }
        };
        if text.contains("{{") || text.contains("{%") {
            return Err(self.var_err(
                format!("`{name}` is a Jinja template (`{text}`), which ov does not evaluate"),
                &format!("give `{name}` its final value"),
            ));
        }
        if text.contains(['\n', '\r', '\0']) {
            return Err(self.var_err(
                format!("`{name}` holds a line break or NUL"),
                &format!("give `{name}` a single-line value"),
            ));
        }
        Ok(Some(text))
    }

    fn port(&self) -> Result<Option<u16>, InventoryError> {
        let Some(text) = self.text_var(&["ansible_port", "ansible_ssh_port"])? else {
            return Ok(None);
        };
        match text.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(Some(p)),
            _ => Err(self.var_err(
                format!("`ansible_port` `{text}` is not a port number"),
                "set `ansible_port` to a number from 1 to 65535",
            )),
        }
    }

    /// The `-o KEY=VALUE` options of an args variable (`-o K=V`, `-oK=V`, `-o 'K V'`).
    fn options(&self, var: &str, args: &str) -> Result<Vec<(String, String)>, InventoryError> {
        let words = shlex_split(args).map_err(|_| {
            self.var_err(
                format!("`{var}` has a quote that is never closed"),
                &format!("close the quote in `{var}`"),
            )
        })?;
        let mut out = Vec::new();
        let mut it = words.into_iter();
        while let Some(w) = it.next() {
            let opt = if w == "-o" {
                it.next().ok_or_else(|| {
                    self.var_err(
                        format!("`{var}` ends with `-o` and no option"),
                        "write `-o Key=Value`",
                    )
                })?
            } else if let Some(rest) = w.strip_prefix("-o") {
                rest.to_string()
            } else {
                return Err(self.var_err(
                    format!("`{var}` holds `{w}`, which is not an `-o Key=Value` option"),
                    "ov passes only `-o Key=Value` options to ssh; put other settings in `~/.ssh/config`",
                ));
            };
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => match opt.trim().split_once(char::is_whitespace) {
                    Some((k, v)) => (k, v.trim()),
                    None => (opt.trim(), ""),
                },
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) || value.is_empty()
            {
                return Err(self.var_err(
                    format!("`{var}` holds `-o {opt}`, which is not `Key=Value`"),
                    "write each option as `-o Key=Value`",
                ));
            }
            if let Some((_, why)) = REFUSED.iter().find(|(k, _)| key.eq_ignore_ascii_case(k)) {
                return Err(self.var_err(
                    format!("`{var}` sets `{key}`, which ov refuses: {why}"),
                    "remove that option for this host (or put it in `~/.ssh/config` if you trust it there)",
                ));
            }
            out.push((key.to_string(), value.to_string()));
        }
        Ok(out)
    }
}

/// `~/…` under `$HOME` (as Ansible expands a key path); anything else as given.
fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}
