//! Stage `load`, deploy nodes and VMs: `deployments.images` nodes and the `vm:` entries deploys
//! read, every key checked strictly so a typo is an error, not a different deploy.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::yaml::{self, Doc, Node, YamlErrorKind};

use super::distros::Distro;
use super::files::MAX_NESTING;
use super::{schema, unknown_key, ProjectError};

/// Where a deploy node installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeTarget {
    /// A VM reached over SSH (`target: vm`).
    Vm,
    /// The local machine (`target: host`).
    Host,
    /// A container (`target: pod`, legacy `container`).
    Pod,
    /// Kubernetes (`target: k8s`, legacy `kubernetes`).
    K8s,
}

/// One node of `deployments.images` (schema v3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployNode {
    /// The node's key.
    pub name: String,
    /// `target:`; when absent: `vm` if `vm_source` is set, `host` for a node named `host`,
    /// else `pod` (the original's default).
    pub target: NodeTarget,
    /// `vm_source:` — the VM entity under the top-level `vm:` map.
    pub vm_source: Option<String>,
    /// `add_layers:` in order.
    pub add_layers: Vec<String>,
    /// `install_opts:` — gates pre-set for this node.
    pub install_opts: InstallOpts,
    /// `children:`, by name.
    pub children: BTreeMap<String, DeployNode>,
}

/// `install_opts:` of a deploy node (CLI flags can add to these, never remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct InstallOpts {
    /// Enable services.
    pub with_services: bool,
    /// Allow repository changes.
    pub allow_repo_changes: bool,
    pub allow_root_tasks: bool,
    /// Skip steps this target cannot run (builders on a VM).
    pub skip_incompatible: bool,
    /// Verify after deploy.
    pub verify: bool,
}

/// The fields of a `vm:` entry that deploys read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VmSpec {
    /// The VM's key.
    pub name: String,
    /// `ssh.host`: where the machine is (a name or address); default: the VM's forwarded port on
    /// 127.0.0.1.
    pub ssh_host: Option<String>,
    /// `ssh.user`.
    pub ssh_user: Option<String>,
    /// `ssh.port`.
    pub ssh_port: Option<u16>,
    /// `ssh.key_source` (`auto|generate|none|<path>`).
    pub key_source: Option<String>,
    /// `source.kind` (`cloud_image|bootc`).
    pub source_kind: Option<String>,
    /// `source.base_user`.
    pub base_user: Option<String>,
    /// `source.distro`, a distro tag such as `debian:12`.
    pub distro: Option<String>,
}

/// Deploy-node keys we read, and keys of the schema we accept without using them here.
pub(super) const NODE_KEYS: &[&str] = &[
    "target",
    "vm_source",
    "add_layers",
    "install_opts",
    "children",
];
pub(super) const NODE_KEYS_ACCEPTED: &[&str] = &[
    "image",
    "version",
    "disposable",
    "lifecycle",
    "env",
    "tests",
    "ports",
    "vm_state",
];
pub(super) const INSTALL_OPTS_KEYS: &[&str] = &[
    "with_services",
    "allow_repo_changes",
    "allow_root_tasks",
    "skip_incompatible",
    "verify",
    "builder_image",
];

pub(super) fn parse_node(
    doc: Doc,
    name: &str,
    key: &Node,
    node: &Node,
    depth: usize,
) -> Result<DeployNode, ProjectError> {
    let what = format!("deployments.images.{name}");
    if name.is_empty() || name.contains('.') {
        return Err(schema(
            doc.error(
                key.pos,
                YamlErrorKind::Invalid,
                format!("`{name}` cannot be a deploy node name"),
            )
            .with_hint("`.` separates the levels of a node path (`parent.child`)"),
        ));
    }
    if depth > MAX_NESTING {
        return Err(schema(doc.error(
            node.pos,
            YamlErrorKind::Limit,
            "deploy nodes nest too deeply",
        )));
    }
    let mut target = None;
    let mut n = DeployNode {
        name: name.to_string(),
        target: NodeTarget::Pod,
        vm_source: None,
        add_layers: Vec::new(),
        install_opts: InstallOpts::default(),
        children: BTreeMap::new(),
    };
    for (k, v) in doc.map(node, &what).map_err(schema)? {
        let key = doc.key(k, &what).map_err(schema)?;
        let kwhat = format!("{what}.{key}");
        match key.as_str() {
            "target" => {
                let t = doc.string(v, &kwhat).map_err(schema)?;
                target = Some(match t.as_str() {
                    "vm" => NodeTarget::Vm,
                    "host" => NodeTarget::Host,
                    "pod" | "container" => NodeTarget::Pod,
                    "k8s" | "kubernetes" => NodeTarget::K8s,
                    _ => {
                        return Err(schema(doc.error(
                            v.pos,
                            YamlErrorKind::Invalid,
                            format!(
                                "`{kwhat}` must be one of `vm`, `host`, `pod`, `k8s`, found `{t}`"
                            ),
                        )))
                    }
                });
            }
            "vm_source" => n.vm_source = doc.opt_string(v, &kwhat).map_err(schema)?,
            "add_layers" => n.add_layers = non_empty_list(&doc, v, &kwhat)?,
            "install_opts" => n.install_opts = parse_install_opts(&doc, v, &kwhat)?,
            "children" => {
                for (ck, cv) in doc.map(v, &kwhat).map_err(schema)? {
                    let cname = doc.key(ck, &kwhat).map_err(schema)?;
                    let child = parse_node(doc, &cname, ck, cv, depth + 1)?;
                    n.children.insert(cname, child);
                }
            }
            k2 if NODE_KEYS_ACCEPTED.contains(&k2) => {}
            _ => {
                let valid: Vec<&str> = NODE_KEYS
                    .iter()
                    .chain(NODE_KEYS_ACCEPTED)
                    .copied()
                    .collect();
                return Err(schema(unknown_key(&doc, k, &key, &what, &valid)));
            }
        }
    }
    n.target = target.unwrap_or(if n.vm_source.is_some() {
        NodeTarget::Vm
    } else if name == "host" {
        NodeTarget::Host
    } else {
        NodeTarget::Pod
    });
    if n.target == NodeTarget::Vm && n.vm_source.is_none() && depth == 0 {
        return Err(schema(
            doc.error(
                node.pos,
                YamlErrorKind::MissingKey,
                format!("`{what}` has `target: vm` but no `vm_source`"),
            )
            .with_hint("name the VM entity (a key of the top-level `vm:` map) with `vm_source:`"),
        ));
    }
    Ok(n)
}

pub(super) fn parse_install_opts(
    doc: &Doc,
    node: &Node,
    what: &str,
) -> Result<InstallOpts, ProjectError> {
    let mut o = InstallOpts::default();
    for (k, v) in doc.map(node, what).map_err(schema)? {
        let key = doc.key(k, what).map_err(schema)?;
        let kwhat = format!("{what}.{key}");
        let slot = match key.as_str() {
            "with_services" => &mut o.with_services,
            "allow_repo_changes" => &mut o.allow_repo_changes,
            "allow_root_tasks" => &mut o.allow_root_tasks,
            "skip_incompatible" => &mut o.skip_incompatible,
            "verify" => &mut o.verify,
            // Accepted for compatibility; the builder image never reached the compiler.
            "builder_image" => {
                doc.opt_string(v, &kwhat).map_err(schema)?;
                continue;
            }
            _ => return Err(schema(unknown_key(doc, k, &key, what, INSTALL_OPTS_KEYS))),
        };
        *slot = doc.bool(v, &kwhat).map_err(schema)?;
    }
    Ok(o)
}

pub(super) const VM_KEYS: &[&str] = &[
    "source",
    "disk_size",
    "ram",
    "cpus",
    "machine",
    "firmware",
    "network",
    "ssh",
    "cloud_init",
    "libvirt",
    "disposable",
    "lifecycle",
];
pub(super) const VM_SSH_KEYS: &[&str] = &["host", "user", "port", "key_source", "key_injection"];
pub(super) const VM_SOURCE_KEYS: &[&str] = &[
    "kind",
    "url",
    "checksum",
    "cache",
    "base_user",
    "distro",
    "image",
    "transport",
    "rootfs",
    "root_size",
    "kernel_args",
];

pub(super) fn parse_vm(
    doc: Doc,
    name: &str,
    node: &Node,
    distros: &BTreeMap<String, Distro>,
) -> Result<VmSpec, ProjectError> {
    let what = format!("vm.{name}");
    let mut spec = VmSpec {
        name: name.to_string(),
        ..VmSpec::default()
    };
    for (k, v) in doc.map(node, &what).map_err(schema)? {
        let key = doc.key(k, &what).map_err(schema)?;
        let kwhat = format!("{what}.{key}");
        match key.as_str() {
            "ssh" => {
                for (sk, sv) in doc.map(v, &kwhat).map_err(schema)? {
                    let skey = doc.key(sk, &kwhat).map_err(schema)?;
                    let swhat = format!("{kwhat}.{skey}");
                    match skey.as_str() {
                        "host" => spec.ssh_host = doc.opt_string(sv, &swhat).map_err(schema)?,
                        "user" => spec.ssh_user = account(&doc, sv, &swhat)?,
                        "port" => spec.ssh_port = Some(port(&doc, sv, &swhat)?),
                        "key_source" => {
                            spec.key_source = doc.opt_string(sv, &swhat).map_err(schema)?
                        }
                        "key_injection" => {}
                        _ => return Err(schema(unknown_key(&doc, sk, &skey, &kwhat, VM_SSH_KEYS))),
                    }
                }
            }
            "source" => {
                for (sk, sv) in doc.map(v, &kwhat).map_err(schema)? {
                    let skey = doc.key(sk, &kwhat).map_err(schema)?;
                    let swhat = format!("{kwhat}.{skey}");
                    match skey.as_str() {
                        "kind" => spec.source_kind = doc.opt_string(sv, &swhat).map_err(schema)?,
                        "base_user" => spec.base_user = account(&doc, sv, &swhat)?,
                        "distro" => {
                            let tag = doc.string(sv, &swhat).map_err(schema)?;
                            let base = tag.split(':').next().unwrap_or_default();
                            if !distros.contains_key(base) {
                                let e = doc.error(
                                    sv.pos,
                                    YamlErrorKind::Invalid,
                                    format!("unknown distro `{base}` in `{swhat}`"),
                                );
                                let e =
                                    match yaml::suggest(base, distros.keys().map(String::as_str)) {
                                        Some(s) => e.with_hint(format!("did you mean `{s}`?")),
                                        None => e.with_hint(format!(
                                            "distros from build.yml: {}",
                                            distros
                                                .keys()
                                                .map(|d| format!("`{d}`"))
                                                .collect::<Vec<_>>()
                                                .join(", ")
                                        )),
                                    };
                                return Err(schema(e));
                            }
                            spec.distro = Some(tag);
                        }
                        k2 if VM_SOURCE_KEYS.contains(&k2) => {}
                        _ => {
                            return Err(schema(unknown_key(
                                &doc,
                                sk,
                                &skey,
                                &kwhat,
                                VM_SOURCE_KEYS,
                            )))
                        }
                    }
                }
            }
            k2 if VM_KEYS.contains(&k2) => {}
            _ => return Err(schema(unknown_key(&doc, k, &key, &what, VM_KEYS))),
        }
    }
    Ok(spec)
}

/// An account name (`ssh.user`, `source.base_user`): it becomes the bundle's `run.sh --user` and
/// a ledger file name, so the bundle's rule for names applies, checked here, where the error can
/// say the line (and `ov plan` refuses what `ov compile` would).
fn account(doc: &Doc, node: &Node, what: &str) -> Result<Option<String>, ProjectError> {
    let Some(user) = doc.opt_string(node, what).map_err(schema)? else {
        return Ok(None);
    };
    match crate::bundle::name_problem(&user, false) {
        Some(reason) => Err(schema(doc.error(
            node.pos,
            YamlErrorKind::Invalid,
            format!("`{what}` `{user}` cannot be an account name: {reason}"),
        ))),
        None => Ok(Some(user)),
    }
}

pub(super) fn port(doc: &Doc, node: &Node, what: &str) -> Result<u16, ProjectError> {
    let p: u16 = doc.uint(node, what).map_err(schema)?;
    if p == 0 {
        return Err(schema(doc.error(
            node.pos,
            YamlErrorKind::Invalid,
            format!("`{what}` cannot be 0"),
        )));
    }
    Ok(p)
}

pub(super) fn non_empty_list(
    doc: &Doc,
    node: &Node,
    what: &str,
) -> Result<Vec<String>, ProjectError> {
    let items = doc.string_list(node, what).map_err(schema)?;
    if let Some((_, n)) = items
        .iter()
        .zip(doc.seq(node, what).map_err(schema)?)
        .find(|(s, _)| s.trim().is_empty())
    {
        return Err(schema(doc.error(
            n.pos,
            YamlErrorKind::Invalid,
            format!("empty entry in `{what}`"),
        )));
    }
    Ok(items)
}
