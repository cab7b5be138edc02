//! Stage `runner`, deploy target: the deploy argument of the command line, parsed once
//! ([`DeployArg`]), and the machine it leads to once the compiler has resolved it
//! ([`DeployTarget`]).
//! Invariant: this is the only file of the runner that reads a deploy name or spells `vm:<vm>`;
//! everything downstream works with the typed target.

use std::path::PathBuf;

use ov_compiler::manifest::ManifestDeploy;
use ov_compiler::plan::{Deploy, TargetKind};
use ov_compiler::project::Project;

/// What the deploy argument of `ov push`, `ov test`, `ov status`, `ov deploy …` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployArg {
    /// `path/to/x.tar.gz`: a compiled bundle (only push and test take one).
    Bundle(PathBuf),
    /// A deploy the compiler resolves: `vm:<vm>`, a deploy node or `host`.
    Name(String),
}

impl DeployArg {
    /// Parse the argument as typed.
    pub fn parse(arg: &str) -> DeployArg {
        if arg.ends_with(".tar.gz") {
            DeployArg::Bundle(PathBuf::from(arg))
        } else {
            DeployArg::Name(arg.to_string())
        }
    }

    /// `host`: this machine, whose distro is detected locally when `--distro` is not given.
    pub fn is_host(&self) -> bool {
        matches!(self, DeployArg::Name(n) if n == "host")
    }
}

/// The key of a VM's entry in `~/.config/ov/deploy.yml` (the VM's canonical deploy name).
pub fn state_key(vm: &str) -> String {
    format!("vm:{vm}")
}

/// The machine a deploy goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Machine {
    /// This machine: local executor, no SSH.
    Host,
    /// A VM of the project, reached over SSH.
    Vm {
        /// The VM entity name.
        vm: String,
        /// The VM spec's `ssh.host`.
        ssh_host: Option<String>,
        /// The VM spec's `ssh.user`, else `source.base_user` (`None` without a project).
        ssh_user: Option<String>,
        /// The VM spec's `ssh.port`.
        ssh_port: Option<u16>,
    },
}

impl Machine {
    fn of(kind: &TargetKind, project: Option<&Project>) -> Machine {
        match kind {
            TargetKind::Host => Machine::Host,
            TargetKind::Vm { vm } => {
                let spec = project.and_then(|p| p.vms.get(vm));
                Machine::Vm {
                    vm: vm.clone(),
                    ssh_host: spec.and_then(|s| s.ssh_host.clone()),
                    ssh_user: spec.and_then(|s| s.ssh_user.clone().or_else(|| s.base_user.clone())),
                    ssh_port: spec.and_then(|s| s.ssh_port),
                }
            }
        }
    }
}

/// A resolved deploy: what the ledger calls it and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployTarget {
    /// Canonical deploy name (`vm:arch`, `host`, a node path).
    pub name: String,
    /// Ledger id.
    pub id: String,
    /// Where it goes.
    pub machine: Machine,
    /// The target account user-scope steps run as.
    pub user: Option<String>,
}

impl DeployTarget {
    /// The target of a deploy the compiler resolved in `project`.
    pub fn of_deploy(deploy: &Deploy, project: &Project) -> DeployTarget {
        DeployTarget {
            name: deploy.name.clone(),
            id: deploy.id.clone(),
            machine: Machine::of(&deploy.target, Some(project)),
            user: deploy.user.clone(),
        }
    }

    /// The target of a compiled bundle, from its manifest (and the project's VM spec when there
    /// is a project).
    pub fn of_manifest(deploy: &ManifestDeploy, project: Option<&Project>) -> DeployTarget {
        let kind = match deploy.target.strip_prefix("vm:") {
            Some(vm) => TargetKind::Vm { vm: vm.to_string() },
            None => TargetKind::Host,
        };
        DeployTarget {
            name: deploy.name.clone(),
            id: deploy.id.clone(),
            machine: Machine::of(&kind, project),
            user: deploy.user.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_is_read_once() {
        assert_eq!(
            DeployArg::parse("out/vm-arch.tar.gz"),
            DeployArg::Bundle(PathBuf::from("out/vm-arch.tar.gz"))
        );
        assert_eq!(
            DeployArg::parse("vm:arch"),
            DeployArg::Name("vm:arch".into())
        );
        assert!(DeployArg::parse("host").is_host());
        assert!(!DeployArg::parse("vm:host").is_host());
        assert_eq!(state_key("arch"), "vm:arch");
    }

    #[test]
    fn a_manifest_names_its_machine() {
        let manifest = |target: &str| ManifestDeploy {
            name: "n".into(),
            id: "0123456789abcdef".into(),
            target: target.into(),
            distro: vec![],
            package_formats: vec![],
            user: Some("u".into()),
            requested: vec![],
        };
        let vm = DeployTarget::of_manifest(&manifest("vm:arch"), None);
        assert_eq!(
            vm.machine,
            Machine::Vm {
                vm: "arch".into(),
                ssh_host: None,
                ssh_user: None,
                ssh_port: None
            }
        );
        assert_eq!(vm.user.as_deref(), Some("u"));
        assert_eq!(
            DeployTarget::of_manifest(&manifest("host"), None).machine,
            Machine::Host
        );
    }
}
