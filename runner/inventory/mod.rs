//! Stage `inventory`: Ansible inventories as fleets to push to — the hosts, their groups and
//! merged variables, host patterns (`-l`), and the SSH settings each host's variables ask for.
//!
//! Static INI and YAML files are read here without Ansible ([`ini`], [`yaml`]); anything else
//! (a directory with `group_vars/`, an executable dynamic inventory, a plugin config, or a
//! static file with `group_vars/`/`host_vars/` beside it, which Ansible would also read) goes
//! through `ansible-inventory --list` — Ansible's own engine — when it is installed
//! ([`ansible`]). Either way the result is the same [`Inventory`].
//!
//! Invariants: loading never panics on any input and names file, line and column for a static
//! file's mistakes; a pattern that names nothing is an error (Ansible only warns: a push to
//! nothing is a mistake); nothing read from an inventory reaches a shell — SSH options become
//! separate `-o KEY=VALUE` arguments, and options that make ssh run a local command are refused.

mod ansible;
mod build;
mod ini;
mod pattern;
mod pylit;
mod ssh;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use ov_compiler::yaml::YamlError;

use crate::exit::{Exit, HasExit};

pub use ssh::SshTarget;

/// An inventory: hosts in the order Ansible lists them, and the groups that hold them.
#[derive(Debug, Clone)]
pub struct Inventory {
    source: PathBuf,
    hosts: Vec<Host>,
    groups: IndexMap<String, Group>,
}

/// One host with its variables merged as Ansible merges them for a play.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// The inventory name (`inventory_hostname`).
    pub name: String,
    /// Every variable the inventory gives the host: `all`, then its groups from the shallowest
    /// (by depth, `ansible_group_priority`, name), then its own.
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Every group holding the host, directly or through a child group, except `all` (Ansible's
    /// `group_names`).
    pub groups: BTreeSet<String>,
}

/// One group as the source declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The group's name.
    pub name: String,
    /// Hosts listed in the group itself, in order.
    pub hosts: Vec<String>,
    /// Child groups, in order.
    pub children: Vec<String>,
    /// Parent groups, in order (`all` for a top-level group).
    pub parents: Vec<String>,
    /// The group's own variables.
    pub vars: BTreeMap<String, serde_json::Value>,
    /// `ansible_group_priority` (1 unless set): among groups of one depth, a higher priority
    /// wins a conflicting variable.
    pub priority: i64,
}

/// Why an inventory cannot be read or a pattern or host cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A mistake in a static inventory file, with its position.
    #[error("{0}")]
    Located(Box<YamlError>),
    /// The inventory cannot be read.
    #[error("cannot read the inventory `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A source only Ansible can read, and Ansible is not installed.
    #[error("`{path}` is {what}, which only Ansible can read, and `ansible-inventory` is not on `PATH`\n  = help: install ansible-core (`pipx install ansible-core`), or give a static INI or YAML inventory file")]
    NeedsAnsible { path: PathBuf, what: String },
    /// `ansible-inventory` ran and failed.
    #[error("`ansible-inventory -i {path} --list` failed ({status}):\n{stderr}")]
    AnsibleFailed {
        path: PathBuf,
        status: String,
        stderr: String,
    },
    /// `ansible-inventory`'s output is not the JSON it documents.
    #[error("cannot read the output of `ansible-inventory -i {path} --list`: {message}")]
    AnsibleOutput { path: PathBuf, message: String },
    /// A name that is both a host and a group.
    #[error("`{name}` is both a host and a group in `{path}`\n  = help: rename one of them; a pattern or a variable for `{name}` would be ambiguous")]
    Ambiguous { path: PathBuf, name: String },
    /// A pattern (or one part of it) that matches no host or group.
    #[error("no host or group matches `{pattern}` in `{path}`\n  = help: names are {known}; patterns are as Ansible's `-l` (`web*`, `a:b`, `a:&b`, `a:!b`, `~regex`)")]
    NoMatch {
        pattern: String,
        path: PathBuf,
        known: String,
    },
    /// The pattern is valid but leaves no host.
    #[error("the pattern `{pattern}` selects no host of `{path}`")]
    Empty { pattern: String, path: PathBuf },
    /// A pattern that cannot be read (a bad regex, a subscript out of range, a missing @file).
    #[error("bad host pattern `{pattern}`: {message}")]
    Pattern { pattern: String, message: String },
    /// A host's variable that ov cannot use to reach it.
    #[error("host `{host}`: {message}\n  = help: {hint}")]
    Var {
        host: String,
        message: String,
        hint: String,
    },
}

impl From<YamlError> for InventoryError {
    fn from(e: YamlError) -> Self {
        InventoryError::Located(Box::new(e))
    }
}

impl HasExit for InventoryError {
    fn exit(&self) -> Exit {
        match self {
            InventoryError::Read { .. } | InventoryError::AnsibleFailed { .. } => Exit::Other,
            InventoryError::NoMatch { .. }
            | InventoryError::Empty { .. }
            | InventoryError::Pattern { .. } => Exit::Usage,
            _ => Exit::InvalidInput,
        }
    }
}

impl Inventory {
    /// Read the inventory at `source`: a static INI or YAML file here, anything else through
    /// `ansible-inventory` (see the module's documentation).
    pub fn load(source: &Path) -> Result<Inventory, InventoryError> {
        Self::load_using(source, None)
    }

    /// [`Inventory::load`] with the `ansible-inventory` program to use (`None`: the one on
    /// `PATH`).
    pub fn load_using(
        source: &Path,
        ansible_inventory: Option<&Path>,
    ) -> Result<Inventory, InventoryError> {
        match ansible::needs_ansible(source)? {
            None => {
                let text = std::fs::read_to_string(source).map_err(|e| InventoryError::Read {
                    path: source.to_path_buf(),
                    source: e,
                })?;
                Self::parse(source, &text)
            }
            Some(what) => ansible::load(source, &what, ansible_inventory),
        }
    }

    /// Parse the text of a static inventory file: YAML when it ends `.yml`/`.yaml` (or,
    /// without one of those, when it reads as a YAML mapping of groups — as Ansible tries its
    /// YAML plugin before its INI one), INI otherwise.
    pub fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "yml" | "yaml" | "json" => yaml::parse(path, text),
            "ini" => ini::parse(path, text),
            _ if yaml::looks_like_yaml(text) => yaml::parse(path, text),
            _ => ini::parse(path, text),
        }
    }

    /// Read `ansible-inventory --list` JSON (Ansible's own view of any source).
    pub fn from_ansible_json(path: &Path, json: &str) -> Result<Inventory, InventoryError> {
        ansible::from_json(path, json)
    }

    /// Where the inventory came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Every host, in Ansible's order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Every group (including `all` and `ungrouped`), in the order the source declares them.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// A group by name.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    /// The hosts `pattern` selects, as Ansible's `--limit PATTERN` selects them (`None`: all),
    /// in the inventory's order. A part that names nothing, or an empty result, is an error.
    pub fn select(&self, pattern: Option<&str>) -> Result<Vec<&Host>, InventoryError> {
        let names = match pattern {
            None => self.hosts.iter().map(|h| h.name.clone()).collect(),
            Some(p) => pattern::select(self, p)?,
        };
        let chosen: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        let out: Vec<&Host> = self
            .hosts
            .iter()
            .filter(|h| chosen.contains(h.name.as_str()))
            .collect();
        if out.is_empty() {
            return Err(InventoryError::Empty {
                pattern: pattern.unwrap_or("all").to_string(),
                path: self.source.clone(),
            });
        }
        Ok(out)
    }

    /// The hosts of a group and its descendants, in Ansible's order.
    fn group_hosts(&self, group: &str) -> Vec<String> {
        build::Builder::group_hosts(&self.groups, group)
    }
}

#[cfg(test)]
mod tests;
