//! Stage `deploy`: a deploy name plus CLI options → the [`Deploy`] lowering needs (target, distro
//! tags and formats, user, stable id), the effective gates and the requested layers; it reads only
//! the loaded [`Project`] — never the environment or the file system (the CLI passes `--distro`,
//! detected from `/etc/os-release` for `host` if it wants).
//!
//! Deploy names (DESIGN §3):
//! - `vm:<vm>` — the VM entity `<vm>` of deploy.yml's `vm:` map; layers from the deploy node whose
//!   `vm_source` is `<vm>` (the first in tree pre-order with sorted keys), plus `--add-layer`s.
//! - a deploy node path, `arch-vm` or dotted `arch-vm.arch-host` (walks `children:`). A
//!   `target: vm` node is the same deploy as `vm:<vm_source>`. A `target: host` node nested under a
//!   VM node is the machine *inside* that VM; a top-level `target: host` node is the local machine.
//! - `host` — the local machine (a node named `host`, if any, contributes layers and gates).
//!
//! Canonical names, which key the target's ledger: `vm:<vm>` for VM targets (so `arch-vm` and
//! `vm:arch` are one deploy), `host` for the literal `host`, and the node path for `target: host`
//! nodes (so two host nodes pushed to one machine keep separate ledger records).

use sha2::{Digest, Sha256};

use crate::plan::{Deploy, Gates, TargetDistro, TargetKind};
use crate::project::{DeployNode, NodeTarget, Project, VmSpec};
use crate::resolve::suggest;

/// What the CLI asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployRequest {
    /// The deploy name as typed: `vm:<vm>`, a deploy node path, or `host`.
    pub name: String,
    /// `--add-layer` / positional layers, appended to the node's `add_layers`.
    pub add_layers: Vec<String>,
    /// `--distro` (e.g. `debian:12`, `archlinux`, `fedora:43`, `ubuntu:24.04`).
    pub distro: Option<String>,
    /// Gates opened on the command line.
    pub gates: Gates,
    /// `--user`: the target account, overriding the VM spec's.
    pub user: Option<String>,
}

/// Why a deploy name could not be turned into a [`Deploy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    /// The name is neither `host`, `vm:<vm>` nor a deploy node.
    #[error(
        "unknown deploy `{name}`; use `host`, `vm:<vm>` or a deploy node{}",
        known_text(known)
    )]
    UnknownDeploy {
        /// The name as typed.
        name: String,
        /// Close matches first, then every known name.
        known: Vec<String>,
    },
    /// An empty deploy name (`""` or `vm:` alone): usually a shell variable that was not set.
    #[error(
        "the deploy name `{name}` names nothing: give `host`, `vm:<vm>` or a deploy node{}",
        known_text(known)
    )]
    EmptyName {
        /// The name as typed.
        name: String,
        /// Every known name.
        known: Vec<String>,
    },
    /// A VM that deploy.yml's `vm:` map does not define.
    #[error(
        "unknown VM `{vm}`{}; define it under `vm:` in deploy.yml (its `source:` with the distro, and `ssh:` with the user and port), or deploy to this machine with `host`",
        known_vms_text(known)
    )]
    UnknownVm {
        /// The VM name.
        vm: String,
        /// The VMs deploy.yml defines.
        known: Vec<String>,
    },
    /// A deploy node whose `vm_source:` names a VM the project does not define.
    #[error(
        "deploy node `{node}` has `vm_source: {vm}`, and the project defines no VM `{vm}`{}; define it under `vm:` in deploy.yml, or correct `vm_source:`",
        known_vms_text(known)
    )]
    NodeVmUnknown {
        /// The node path.
        node: String,
        /// Its `vm_source:`.
        vm: String,
        /// The VMs the project defines.
        known: Vec<String>,
    },
    /// A `target: vm` node without `vm_source:`.
    #[error("deploy node `{node}` has `target: vm` but no `vm_source:` naming its VM")]
    NodeWithoutVm {
        /// The node path.
        node: String,
    },
    /// A node whose target `ov` does not deploy to (containers, Kubernetes).
    #[error(
        "deploy node `{node}` has `target: {target}`; `ov` deploys only to `vm` and `host` targets"
    )]
    UnsupportedTarget {
        /// The node path.
        node: String,
        /// `pod` or `k8s`.
        target: String,
    },
    /// No distro could be determined.
    #[error("cannot tell the distro of `{deploy}`: {why}; pass `--distro` (e.g. `debian:12`, `archlinux`, `fedora:43`, `ubuntu:24.04`)")]
    NoDistro {
        /// The deploy name.
        deploy: String,
        /// What was missing.
        why: String,
    },
    /// A distro tag that build.yml does not know.
    #[error("unknown distro `{tag}`{}", known_distros_text(known))]
    UnknownDistro {
        /// The tag as given.
        tag: String,
        /// Distros build.yml defines.
        known: Vec<String>,
    },
    /// A distro tag with characters no distro tag has.
    #[error("invalid distro tag `{tag}`: expected `<id>` or `<id>:<version>` (letters, digits, `.`, `_`, `-`)")]
    InvalidDistro {
        /// The tag as given.
        tag: String,
    },
    /// A distro whose inheritance chain declares no package format.
    #[error("distro `{distro}` declares no package formats in build.yml")]
    NoFormats {
        /// The build.yml distro name.
        distro: String,
    },
}

fn known_text(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        format!(" ({})", names.join(", "))
    }
}

fn known_vms_text(known: &[String]) -> String {
    if known.is_empty() {
        // Any file `includes:` names may hold `vm:`; a project whose overthink.yml leaves out
        // deploy.yml has none, whatever deploy.yml says.
        " (the project defines no VMs: `vm:` belongs in a file that overthink.yml's `includes:` \
         names, such as deploy.yml)"
            .to_string()
    } else {
        let names: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        format!(" (known VMs: {})", names.join(", "))
    }
}

fn known_distros_text(known: &[String]) -> String {
    if known.is_empty() {
        "; build.yml defines no distros".to_string()
    } else {
        let names: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        format!("; build.yml knows {}", names.join(", "))
    }
}

/// Prefix hashed with the canonical name into a deploy id; bump the version to re-key every ledger.
const DEPLOY_ID_DOMAIN: &str = "ov deploy id v1\n";

/// The stable ledger id of a deploy: the first 16 hex digits of
/// `sha256("ov deploy id v1\n" ‖ canonical name)`.
///
/// Only the name goes in — not the layers, gates or bundle — so re-pushing `vm:arch` with other
/// layers keeps its id and *replaces* its ledger record instead of adding a second deploy that
/// would hold its layers forever. The domain prefix keeps these ids apart from any other sha256
/// of the same string.
pub fn deploy_id(canonical_name: &str) -> String {
    let mut h = Sha256::new();
    h.update(DEPLOY_ID_DOMAIN.as_bytes());
    h.update(canonical_name.as_bytes());
    let digest = hex::encode(h.finalize());
    digest[..16].to_string()
}

/// Where the name led: the target, the node (if any) and the VM spec (if any).
struct Located<'p> {
    canonical: String,
    target: TargetKind,
    node: Option<&'p DeployNode>,
    vm: Option<&'p VmSpec>,
}

/// Turns a deploy request into the [`Deploy`], the effective gates (node `install_opts` OR the
/// CLI's — the CLI can add, never remove) and the requested layers (node `add_layers`, then the
/// CLI's, de-duplicated).
pub fn resolve_deploy(
    project: &Project,
    req: &DeployRequest,
) -> Result<(Deploy, Gates, Vec<String>), DeployError> {
    let loc = locate(project, &req.name)?;

    let tag = match (&req.distro, loc.vm) {
        (Some(tag), _) => tag.clone(),
        (None, Some(vm)) => vm_distro(vm).ok_or_else(|| DeployError::NoDistro {
            deploy: loc.canonical.clone(),
            why: format!(
                "VM `{}` has neither `source.distro` nor a `source.base_user` that names a distro",
                vm.name
            ),
        })?,
        (None, None) => {
            return Err(DeployError::NoDistro {
                deploy: loc.canonical.clone(),
                why: "the local machine's distro is not detected by the compiler".to_string(),
            })
        }
    };
    let distro = target_distro(project, &tag)?;

    let user = req.user.clone().or_else(|| {
        loc.vm
            .and_then(|vm| vm.ssh_user.clone().or_else(|| vm.base_user.clone()))
    });

    let mut gates = req.gates;
    let mut requested: Vec<String> = Vec::new();
    if let Some(node) = loc.node {
        let o = &node.install_opts;
        gates.allow_repo_changes |= o.allow_repo_changes;
        gates.allow_root_tasks |= o.allow_root_tasks;
        gates.with_services |= o.with_services;
        requested.extend(node.add_layers.iter().cloned());
    }
    requested.extend(req.add_layers.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    requested.retain(|l| seen.insert(l.clone()));

    let deploy = Deploy {
        id: deploy_id(&loc.canonical),
        name: loc.canonical,
        target: loc.target,
        distro,
        user,
        requested: requested.clone(),
    };
    Ok((deploy, gates, requested))
}

fn locate<'p>(project: &'p Project, name: &str) -> Result<Located<'p>, DeployError> {
    // A node path wins (the per-machine overlay may hold nodes literally named `vm:<vm>`).
    if let Some(path) = find_path(project, name) {
        return from_node_path(project, name, &path);
    }
    if name.is_empty() || name == "vm:" {
        return Err(DeployError::EmptyName {
            name: name.to_string(),
            known: deploy_names(project),
        });
    }
    if let Some(vm_name) = name.strip_prefix("vm:") {
        let vm = lookup_vm(project, vm_name)?;
        let node = find_vm_node(project, vm_name);
        return Ok(Located {
            canonical: format!("vm:{vm_name}"),
            target: TargetKind::Vm {
                vm: vm_name.to_string(),
            },
            node,
            vm: Some(vm),
        });
    }
    if name == "host" {
        return Ok(Located {
            canonical: "host".to_string(),
            target: TargetKind::Host,
            node: None,
            vm: None,
        });
    }
    let all = deploy_names(project);
    let mut known = suggest(name, all.iter());
    for k in all {
        if !known.contains(&k) {
            known.push(k);
        }
    }
    Err(DeployError::UnknownDeploy {
        name: name.to_string(),
        known,
    })
}

/// The chain of nodes a dotted path names, root first.
fn find_path<'p>(project: &'p Project, name: &str) -> Option<Vec<&'p DeployNode>> {
    let mut chain = Vec::new();
    let mut level = &project.deployments;
    for part in name.split('.') {
        let node = level.get(part)?;
        chain.push(node);
        level = &node.children;
    }
    Some(chain)
}

fn from_node_path<'p>(
    project: &'p Project,
    path: &str,
    chain: &[&'p DeployNode],
) -> Result<Located<'p>, DeployError> {
    let Some((&node, ancestors)) = chain.split_last() else {
        return Err(DeployError::UnknownDeploy {
            name: path.to_string(),
            known: Vec::new(),
        });
    };
    match node.target {
        NodeTarget::Vm => {
            let vm_name = node
                .vm_source
                .as_deref()
                .ok_or_else(|| DeployError::NodeWithoutVm {
                    node: path.to_string(),
                })?;
            let vm = lookup_vm(project, vm_name).map_err(|e| match e {
                DeployError::UnknownVm { vm, known } => DeployError::NodeVmUnknown {
                    node: path.to_string(),
                    vm,
                    known,
                },
                other => other,
            })?;
            Ok(Located {
                canonical: format!("vm:{vm_name}"),
                target: TargetKind::Vm {
                    vm: vm_name.to_string(),
                },
                node: Some(node),
                vm: Some(vm),
            })
        }
        NodeTarget::Host => {
            // The nearest enclosing node decides where this host is.
            match ancestors.last() {
                None => Ok(Located {
                    canonical: if path == "host" {
                        "host".to_string()
                    } else {
                        path.to_string()
                    },
                    target: TargetKind::Host,
                    node: Some(node),
                    vm: None,
                }),
                Some(_) => {
                    let parent_path = path.rsplit_once('.').map(|(p, _)| p).unwrap_or(path);
                    let outer = from_node_path(project, parent_path, &chain[..chain.len() - 1])?;
                    Ok(Located {
                        canonical: path.to_string(),
                        target: outer.target,
                        node: Some(node),
                        vm: outer.vm,
                    })
                }
            }
        }
        NodeTarget::Pod => Err(DeployError::UnsupportedTarget {
            node: path.to_string(),
            target: "pod".to_string(),
        }),
        NodeTarget::K8s => Err(DeployError::UnsupportedTarget {
            node: path.to_string(),
            target: "k8s".to_string(),
        }),
    }
}

/// Every name a deploy can be given in `project`, sorted: its deploy nodes, `vm:<vm>`, `host`.
fn deploy_names(project: &Project) -> Vec<String> {
    let mut all = Vec::new();
    collect_paths(&project.deployments, "", &mut all);
    all.extend(project.vms.keys().map(|v| format!("vm:{v}")));
    all.push("host".to_string());
    all.sort();
    all.dedup();
    all
}

fn lookup_vm<'p>(project: &'p Project, vm: &str) -> Result<&'p VmSpec, DeployError> {
    project.vms.get(vm).ok_or_else(|| DeployError::UnknownVm {
        vm: vm.to_string(),
        known: project.vms.keys().cloned().collect(),
    })
}

/// The first `target: vm` node (pre-order, sorted keys) whose `vm_source` is `vm`.
fn find_vm_node<'p>(project: &'p Project, vm: &str) -> Option<&'p DeployNode> {
    fn walk<'p>(
        level: &'p std::collections::BTreeMap<String, DeployNode>,
        vm: &str,
    ) -> Option<&'p DeployNode> {
        for node in level.values() {
            if matches!(node.target, NodeTarget::Vm) && node.vm_source.as_deref() == Some(vm) {
                return Some(node);
            }
            if let Some(found) = walk(&node.children, vm) {
                return Some(found);
            }
        }
        None
    }
    walk(&project.deployments, vm)
}

fn collect_paths(
    level: &std::collections::BTreeMap<String, DeployNode>,
    prefix: &str,
    out: &mut Vec<String>,
) {
    for (key, node) in level {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        out.push(path.clone());
        collect_paths(&node.children, &path, out);
    }
}

/// A VM's distro tag: `source.distro`, else a `source.base_user` that names a distro.
fn vm_distro(vm: &VmSpec) -> Option<String> {
    if let Some(d) = &vm.distro {
        return Some(d.clone());
    }
    match vm.base_user.as_deref()? {
        "arch" | "archlinux" => Some("archlinux".to_string()),
        "fedora" => Some("fedora".to_string()),
        "debian" => Some("debian".to_string()),
        "ubuntu" => Some("ubuntu".to_string()),
        _ => None,
    }
}

/// Distro IDs that are known under another build.yml name (the original's host aliases).
fn alias(id: &str) -> Option<&'static str> {
    match id {
        "arch" | "archarm" | "manjaro" | "endeavouros" | "cachyos" => Some("archlinux"),
        "almalinux" | "rocky" | "centos" | "rhel" => Some("fedora"),
        _ => None,
    }
}

/// Resolves a distro tag against build.yml: ordered tags (the tag, its base before `:`, an alias,
/// then the `inherits` chain) and the formats of the first distro in the chain that has any.
pub fn target_distro(project: &Project, tag: &str) -> Result<TargetDistro, DeployError> {
    let valid = !tag.is_empty()
        && !tag.starts_with(':')
        && tag.split(':').count() <= 2
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if !valid {
        return Err(DeployError::InvalidDistro {
            tag: tag.to_string(),
        });
    }
    let mut tags: Vec<String> = vec![tag.to_string()];
    let base = tag.split(':').next().unwrap_or(tag);
    if base != tag {
        tags.push(base.to_string());
    }
    let key = if project.distros.contains_key(tag) {
        tag.to_string()
    } else if project.distros.contains_key(base) {
        base.to_string()
    } else if let Some(a) = alias(base).filter(|a| project.distros.contains_key(*a)) {
        tags.push(a.to_string());
        a.to_string()
    } else {
        return Err(DeployError::UnknownDistro {
            tag: tag.to_string(),
            known: project.distros.keys().cloned().collect(),
        });
    };

    // Walk `inherits` (bounded, as the original: depth 10; an unknown parent ends the chain).
    let mut formats: Vec<String> = Vec::new();
    let mut current = Some(key.clone());
    for _ in 0..=10 {
        let Some(name) = current.take() else { break };
        let Some(d) = project.distros.get(&name) else {
            break;
        };
        if !tags.contains(&name) {
            tags.push(name.clone());
        }
        if formats.is_empty() {
            formats = d.formats.clone();
        }
        current = d.inherits.clone().filter(|p| !tags.contains(p));
    }
    if formats.is_empty() {
        return Err(DeployError::NoFormats { distro: key });
    }
    Ok(TargetDistro { tags, formats })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::project::{Distro, InstallOpts};

    fn distro(name: &str, formats: &[&str], inherits: Option<&str>) -> (String, Distro) {
        (
            name.to_string(),
            Distro {
                name: name.to_string(),
                formats: formats.iter().map(|s| s.to_string()).collect(),
                inherits: inherits.map(str::to_string),
                base_user: None,
            },
        )
    }

    fn node(
        name: &str,
        target: NodeTarget,
        vm: Option<&str>,
        layers: &[&str],
        opts: InstallOpts,
        children: Vec<DeployNode>,
    ) -> DeployNode {
        DeployNode {
            name: name.to_string(),
            target,
            vm_source: vm.map(str::to_string),
            add_layers: layers.iter().map(|s| s.to_string()).collect(),
            install_opts: opts,
            children: children.into_iter().map(|c| (c.name.clone(), c)).collect(),
        }
    }

    fn vm(name: &str, ssh_user: Option<&str>, base_user: Option<&str>, d: Option<&str>) -> VmSpec {
        VmSpec {
            name: name.to_string(),
            ssh_host: None,
            ssh_user: ssh_user.map(str::to_string),
            ssh_port: Some(2224),
            key_source: Some("generate".to_string()),
            source_kind: Some("cloud_image".to_string()),
            base_user: base_user.map(str::to_string),
            distro: d.map(str::to_string),
        }
    }

    /// The shape of the corpus deploy.yml / build.yml, plus a few extra entries.
    fn project() -> Project {
        let arch_vm = node(
            "arch-vm",
            NodeTarget::Vm,
            Some("arch"),
            &["ripgrep", "uv", "pre-commit"],
            InstallOpts {
                with_services: true,
                allow_repo_changes: true,
                allow_root_tasks: false,
                skip_incompatible: true,
                verify: true,
            },
            vec![node(
                "arch-host",
                NodeTarget::Host,
                None,
                &["direnv"],
                InstallOpts::default(),
                vec![],
            )],
        );
        let pod = node(
            "sway-pod",
            NodeTarget::Pod,
            None,
            &[],
            InstallOpts::default(),
            vec![],
        );
        let ws = node(
            "workstation",
            NodeTarget::Host,
            None,
            &["tmux"],
            InstallOpts::default(),
            vec![],
        );
        Project {
            root: "/p".into(),
            layers: Default::default(),
            distros: BTreeMap::from([
                distro("archlinux", &["pac", "aur"], None),
                distro("debian", &["deb"], None),
                distro("fedora", &["rpm"], None),
                distro("ubuntu", &[], Some("debian")),
            ]),
            format_names: ["aur", "deb", "pac", "rpm"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            deployments: [arch_vm, pod, ws]
                .into_iter()
                .map(|n| (n.name.clone(), n))
                .collect(),
            vms: BTreeMap::from([
                ("arch".to_string(), vm("arch", None, Some("arch"), None)),
                (
                    "deb".to_string(),
                    vm("deb", Some("debian"), Some("debian"), Some("debian:12")),
                ),
                (
                    "blank".to_string(),
                    vm("blank", None, Some("someone"), None),
                ),
            ]),
        }
    }

    fn req(name: &str) -> DeployRequest {
        DeployRequest {
            name: name.to_string(),
            ..DeployRequest::default()
        }
    }

    #[test]
    fn vm_name_takes_layers_gates_distro_and_user_from_node_and_spec() {
        let mut r = req("vm:arch");
        r.add_layers = vec!["tmux".into(), "uv".into()];
        let (d, gates, layers) = resolve_deploy(&project(), &r).unwrap();
        assert_eq!(d.name, "vm:arch");
        assert_eq!(d.target, TargetKind::Vm { vm: "arch".into() });
        assert_eq!(d.distro.tags, ["archlinux"]);
        assert_eq!(d.distro.formats, ["pac", "aur"]);
        assert_eq!(d.user.as_deref(), Some("arch"));
        assert_eq!(layers, ["ripgrep", "uv", "pre-commit", "tmux"]);
        assert_eq!(d.requested, layers);
        assert!(gates.with_services && gates.allow_repo_changes && !gates.allow_root_tasks);
        assert_eq!(d.id, deploy_id("vm:arch"));
    }

    #[test]
    fn vm_node_name_is_the_same_deploy_as_vm_name() {
        let (a, ga, la) = resolve_deploy(&project(), &req("arch-vm")).unwrap();
        let (b, gb, lb) = resolve_deploy(&project(), &req("vm:arch")).unwrap();
        assert_eq!((a, ga, la), (b, gb, lb));
    }

    #[test]
    fn cli_gates_add_to_node_gates_and_never_remove() {
        let mut r = req("arch-vm");
        r.gates.allow_root_tasks = true;
        let (_, gates, _) = resolve_deploy(&project(), &r).unwrap();
        assert!(gates.allow_root_tasks && gates.with_services && gates.allow_repo_changes);
    }

    #[test]
    fn distro_flag_wins_and_expands_the_inherited_chain() {
        let mut r = req("vm:arch");
        r.distro = Some("ubuntu:24.04".into());
        let (d, _, _) = resolve_deploy(&project(), &r).unwrap();
        assert_eq!(d.distro.tags, ["ubuntu:24.04", "ubuntu", "debian"]);
        assert_eq!(d.distro.formats, ["deb"]);
        let p = project();
        assert_eq!(
            target_distro(&p, "fedora:43").unwrap().tags,
            ["fedora:43", "fedora"]
        );
        assert_eq!(
            target_distro(&p, "debian:12").unwrap().tags,
            ["debian:12", "debian"]
        );
        assert_eq!(
            target_distro(&p, "archlinux").unwrap().formats,
            ["pac", "aur"]
        );
        assert_eq!(
            target_distro(&p, "arch").unwrap().tags,
            ["arch", "archlinux"]
        );
    }

    #[test]
    fn vm_source_distro_beats_base_user_and_ssh_user_beats_base_user() {
        let (d, _, layers) = resolve_deploy(&project(), &req("vm:deb")).unwrap();
        assert_eq!(d.distro.tags, ["debian:12", "debian"]);
        assert_eq!(d.user.as_deref(), Some("debian"));
        // No node names this VM: nothing requested unless the CLI adds layers.
        assert!(layers.is_empty());
    }

    #[test]
    fn cli_user_overrides_the_vm_user() {
        let mut r = req("vm:arch");
        r.user = Some("ops".into());
        assert_eq!(
            resolve_deploy(&project(), &r).unwrap().0.user.as_deref(),
            Some("ops")
        );
    }

    #[test]
    fn unknown_vm_lists_known_vms_and_says_what_to_define() {
        let err = resolve_deploy(&project(), &req("vm:nope")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown VM `nope` (known VMs: `arch`, `blank`, `deb`); define it under `vm:` in \
             deploy.yml (its `source:` with the distro, and `ssh:` with the user and port), or \
             deploy to this machine with `host`"
        );
    }

    #[test]
    fn a_node_whose_vm_source_names_no_vm_says_which_node() {
        let mut p = project();
        p.vms.remove("arch");
        let err = resolve_deploy(&p, &req("arch-vm")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "deploy node `arch-vm` has `vm_source: arch`, and the project defines no VM `arch` \
             (known VMs: `blank`, `deb`); define it under `vm:` in deploy.yml, or correct \
             `vm_source:`"
        );
    }

    #[test]
    fn an_empty_deploy_name_says_it_names_nothing() {
        for name in ["", "vm:"] {
            let err = resolve_deploy(&project(), &req(name)).unwrap_err();
            assert!(
                matches!(err, DeployError::EmptyName { .. }),
                "{name}: {err}"
            );
            assert!(err.to_string().contains("names nothing"), "{err}");
            assert!(err.to_string().contains("`vm:deb`"), "{err}");
        }
    }

    #[test]
    fn unknown_vm_in_a_project_without_vms_says_where_vms_come_from() {
        let mut p = project();
        p.vms.clear();
        let err = resolve_deploy(&p, &req("vm:nope")).unwrap_err().to_string();
        assert!(
            err.contains("the project defines no VMs")
                && err.contains("`includes:` names, such as deploy.yml"),
            "{err}"
        );
    }

    #[test]
    fn vm_without_distro_hint_asks_for_distro_flag() {
        let err = resolve_deploy(&project(), &req("vm:blank")).unwrap_err();
        assert!(matches!(err, DeployError::NoDistro { .. }), "{err}");
        assert!(err.to_string().contains("--distro"), "{err}");
        let mut r = req("vm:blank");
        r.distro = Some("fedora".into());
        assert_eq!(
            resolve_deploy(&project(), &r).unwrap().0.distro.formats,
            ["rpm"]
        );
    }

    #[test]
    fn host_needs_a_distro_and_has_no_compile_time_user() {
        let err = resolve_deploy(&project(), &req("host")).unwrap_err();
        assert!(matches!(err, DeployError::NoDistro { .. }), "{err}");
        let mut r = req("host");
        r.distro = Some("debian:12".into());
        r.add_layers = vec!["ripgrep".into()];
        let (d, gates, layers) = resolve_deploy(&project(), &r).unwrap();
        assert_eq!(d.name, "host");
        assert_eq!(d.target, TargetKind::Host);
        assert_eq!(d.user, None);
        assert_eq!(gates, Gates::default());
        assert_eq!(layers, ["ripgrep"]);
    }

    #[test]
    fn nested_host_node_is_the_machine_inside_its_vm() {
        let (d, gates, layers) = resolve_deploy(&project(), &req("arch-vm.arch-host")).unwrap();
        assert_eq!(d.name, "arch-vm.arch-host");
        assert_eq!(d.target, TargetKind::Vm { vm: "arch".into() });
        assert_eq!(d.distro.tags, ["archlinux"]);
        assert_eq!(d.user.as_deref(), Some("arch"));
        assert_eq!(layers, ["direnv"]);
        // The child's own install_opts only.
        assert_eq!(gates, Gates::default());
        assert_ne!(d.id, deploy_id("vm:arch"));
    }

    #[test]
    fn top_level_host_node_is_local_with_its_own_id() {
        let mut r = req("workstation");
        r.distro = Some("archlinux".into());
        let (d, _, layers) = resolve_deploy(&project(), &r).unwrap();
        assert_eq!(d.target, TargetKind::Host);
        assert_eq!(d.name, "workstation");
        assert_eq!(layers, ["tmux"]);
    }

    #[test]
    fn container_targets_are_refused() {
        let err = resolve_deploy(&project(), &req("sway-pod")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "deploy node `sway-pod` has `target: pod`; `ov` deploys only to `vm` and `host` targets"
        );
    }

    #[test]
    fn unknown_deploy_suggests_close_names_first() {
        let err = resolve_deploy(&project(), &req("arch-mv")).unwrap_err();
        let DeployError::UnknownDeploy { known, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(known.first().map(String::as_str), Some("arch-vm"));
        assert!(known.contains(&"vm:deb".to_string()) && known.contains(&"host".to_string()));
    }

    #[test]
    fn unknown_and_invalid_distros_are_errors() {
        let mut r = req("vm:arch");
        r.distro = Some("gentoo".into());
        let err = resolve_deploy(&project(), &r).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown distro `gentoo`; build.yml knows `archlinux`, `debian`, `fedora`, `ubuntu`"
        );
        r.distro = Some("debian; rm -rf /".into());
        let err = resolve_deploy(&project(), &r).unwrap_err();
        assert!(matches!(err, DeployError::InvalidDistro { .. }), "{err}");
    }

    #[test]
    fn deploy_id_is_the_documented_hash_prefix() {
        let id = deploy_id("vm:arch");
        let mut h = Sha256::new();
        h.update(b"ov deploy id v1\nvm:arch");
        assert_eq!(id, hex::encode(h.finalize())[..16]);
        assert_eq!(id.len(), 16);
        assert_ne!(id, deploy_id("vm:arch2"));
    }
}
