//! Stage `runner`, target resolution: where a push goes — resolves host, port, user, key and
//! known_hosts from the command line, the saved per-machine state and the VM spec, in that order,
//! into the SSH [`Target`] the ssh room connects to.
//! Invariant: a VM target always has a per-VM known_hosts file and an existing key file.

use std::path::{Path, PathBuf};

use crate::exit::{Exit, HasExit};
use crate::ssh::endpoint::Target;
use crate::target::state::VmState;

/// The per-user directories `ov` keeps its files in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `~/.config/ov` (holds `deploy.yml`).
    pub config_dir: PathBuf,
    /// `~/.local/share/ov` (holds `vm/ov-<vm>/` with the key and known_hosts).
    pub data_dir: PathBuf,
}

impl Paths {
    /// From `$XDG_CONFIG_HOME`/`$XDG_DATA_HOME` when set (absolute), else `$HOME`.
    pub fn from_env() -> Result<Paths, TargetError> {
        let abs = |v: &str| {
            std::env::var_os(v)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        let home = abs("HOME");
        let config = abs("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")));
        let data = abs("XDG_DATA_HOME").or_else(|| home.as_ref().map(|h| h.join(".local/share")));
        match (config, data) {
            (Some(c), Some(d)) => Ok(Paths {
                config_dir: c.join("ov"),
                data_dir: d.join("ov"),
            }),
            _ => Err(TargetError::NoHome),
        }
    }

    /// Both directories under one root (tests).
    pub fn under(root: &Path) -> Paths {
        Paths {
            config_dir: root.join(".config/ov"),
            data_dir: root.join(".local/share/ov"),
        }
    }

    /// `~/.config/ov/deploy.yml`.
    pub fn deploy_state_file(&self) -> PathBuf {
        self.config_dir.join("deploy.yml")
    }

    /// `~/.local/share/ov/vm/ov-<vm>`.
    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.data_dir.join("vm").join(format!("ov-{vm}"))
    }
}

/// The default SSH port of a VM (user-mode networking forwards it to the guest's 22).
pub const DEFAULT_VM_PORT: u16 = 2222;

/// Connection settings as given by the user and the project (all optional): `--host`,
/// `--port`, `--ssh-user` (`user`), `--identity`, `--ssh-config` and `--known-hosts` from the
/// command line; the VM and its spec's `ssh.user` (else `source.base_user`) and `ssh.port`
/// from the project.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// The VM entity (`vm:<vm>`), if the target is a VM.
    pub vm: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub identity: Option<PathBuf>,
    /// An OpenSSH client config: user, port and key then come from it unless given explicitly.
    pub ssh_config: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    /// The VM spec's `ssh.host`.
    pub spec_host: Option<String>,
    /// Go where the last successful push went (`ov status`, `ov deploy del`: they act on what is
    /// there) rather than where the project says now (a push), when the two differ.
    pub follow_saved: bool,
    pub spec_user: Option<String>,
    pub spec_port: Option<u16>,
}

/// Why a target could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Neither `$HOME` nor the XDG variables are set.
    #[error("cannot find the home directory (`HOME` is not set)")]
    NoHome,
    /// No host and no VM.
    #[error("no target: give a VM (`vm:<vm>`) or `--host`")]
    NoHost,
    /// A VM without a user.
    #[error("no ssh user for VM `{vm}`: set `vm.{vm}.ssh.user` (or `source.base_user`) in deploy.yml, or pass `--user`")]
    NoUser { vm: String },
    /// The key file is missing.
    #[error("ssh key `{path}` does not exist{hint}")]
    MissingKey { path: PathBuf, hint: String },
    /// The key file can be read by others: OpenSSH would ignore it and the server would refuse
    /// us with only "Permission denied (publickey)".
    #[error("ssh key `{path}` has mode {mode:04o}, so others may read it; OpenSSH ignores such a private key — make it private with `chmod 600 {quoted}`", quoted = crate::ssh::exec::shown(&path.to_string_lossy()))]
    KeyPermissions { path: PathBuf, mode: u32 },
    /// The per-VM directory could not be created.
    #[error("cannot create `{path}`")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HasExit for TargetError {
    fn exit(&self) -> Exit {
        match self {
            TargetError::NoHost => Exit::Usage,
            TargetError::Dir { .. } => Exit::Other,
            TargetError::KeyPermissions { .. } => Exit::CannotConnect,
            _ => Exit::InvalidInput,
        }
    }
}

/// Resolve the destination: command line first, then the saved state, then the VM spec and
/// the per-VM defaults.
pub fn resolve(
    opts: &ConnectOptions,
    saved: Option<&VmState>,
    paths: &Paths,
) -> Result<Target, TargetError> {
    let Some(vm) = &opts.vm else {
        let host = opts.host.clone().ok_or(TargetError::NoHost)?;
        if let Some(k) = &opts.identity {
            check_key(k, "")?;
        }
        return Ok(Target {
            host,
            port: opts.port,
            user: opts.user.clone(),
            identity: opts.identity.clone(),
            known_hosts: opts.known_hosts.clone(),
            ssh_config: opts.ssh_config.clone(),
            vm: None,
        });
    };

    let with_config = opts.ssh_config.is_some();
    // With an ssh config the VM is reached by its `Host ov-<vm>` stanza unless --host says
    // otherwise, and the config supplies whatever the command line leaves open.
    // The host: given; else named by the VM's entry or remembered from the last successful push
    // (a push goes where the project says, status and teardown where the last push went); else
    // the VM's forwarded port on this machine.
    let saved_host = saved.and_then(|s| s.ssh_host.clone());
    let (first, second) = if opts.follow_saved {
        (saved_host.clone(), opts.spec_host.clone())
    } else {
        (opts.spec_host.clone(), saved_host.clone())
    };
    let host = opts.host.clone().or(first).or(second).unwrap_or_else(|| {
        if with_config {
            format!("ov-{vm}")
        } else {
            "127.0.0.1".to_string()
        }
    });
    // What the last push used to log in holds for the machine it went to, not another one.
    let saved = saved.filter(|_| saved_host.as_ref().is_none_or(|h| *h == host));
    let saved_user = saved.and_then(|s| s.ssh_user.clone());
    let saved_port = saved.and_then(|s| s.ssh_port);
    let saved_key = saved
        .and_then(|s| s.ssh_key_path.clone())
        .map(PathBuf::from);

    let user = opts.user.clone().or(saved_user).or(opts.spec_user.clone());
    let port = opts.port.or(saved_port).or(opts.spec_port);
    let identity = opts.identity.clone().or(saved_key);
    let vm_dir = paths.vm_dir(vm);

    let (user, port, identity) = if with_config {
        (user, port, identity)
    } else {
        let user = user.ok_or_else(|| TargetError::NoUser { vm: vm.clone() })?;
        let identity = identity.unwrap_or_else(|| vm_dir.join("id_ed25519"));
        (
            Some(user),
            Some(port.unwrap_or(DEFAULT_VM_PORT)),
            Some(identity),
        )
    };
    if let Some(k) = &identity {
        check_key(
            k,
            &format!(
                " (the key `ov` looks for when none is given for `{vm}`; pass the VM's private key with `--identity KEY`)"
            ),
        )?;
    }
    let known_hosts = match (&opts.known_hosts, with_config) {
        (Some(k), _) => Some(k.clone()),
        (None, true) => None,
        (None, false) => {
            create_private_dir(&vm_dir)?;
            Some(vm_dir.join("known_hosts"))
        }
    };
    Ok(Target {
        host,
        port,
        user,
        identity,
        known_hosts,
        ssh_config: opts.ssh_config.clone(),
        vm: Some(vm.clone()),
    })
}

/// The key exists and OpenSSH will use it: as OpenSSH does, a key file owned
/// by us with any group or other permission bit is refused, here before connecting.
fn check_key(path: &Path, hint: &str) -> Result<(), TargetError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        _ => {
            return Err(TargetError::MissingKey {
                path: path.to_path_buf(),
                hint: hint.to_string(),
            })
        }
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 && crate::ssh::connect::current_uid() == Some(meta.uid()) {
        return Err(TargetError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn create_private_dir(path: &Path) -> Result<(), TargetError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| TargetError::Dir {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, "x").expect("write key");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    fn key(dir: &Path) -> PathBuf {
        let k = dir.join("k");
        private(&k);
        k
    }

    /// A scratch home and its `ov` directories.
    fn home() -> (tempfile::TempDir, Paths) {
        let root = tempfile::tempdir().expect("tempdir");
        let paths = Paths::under(root.path());
        (root, paths)
    }

    /// The VM `vm` with the spec's user `spec_user`.
    fn vm(vm: &str, spec_user: Option<&str>) -> ConnectOptions {
        ConnectOptions {
            vm: Some(vm.into()),
            spec_user: spec_user.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn vm_defaults_and_precedence() {
        let (root, paths) = home();
        let vm_key = paths.vm_dir("arch").join("id_ed25519");
        std::fs::create_dir_all(vm_key.parent().expect("parent")).expect("mkdir");
        private(&vm_key);

        let opts = vm("arch", Some("arch"));
        let t = resolve(&opts, None, &paths).expect("resolve");
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.port, Some(2222));
        assert_eq!(t.user.as_deref(), Some("arch"));
        assert_eq!(t.identity.as_deref(), Some(vm_key.as_path()));
        assert_eq!(
            t.known_hosts,
            Some(paths.vm_dir("arch").join("known_hosts"))
        );
        assert_eq!(t.known_hosts_name(), "[127.0.0.1]:2222");

        let other = key(root.path());
        let saved = VmState {
            ssh_user: Some("saved".into()),
            ssh_port: Some(2300),
            ssh_key_path: Some(other.to_string_lossy().into_owned()),
            ..Default::default()
        };
        let t = resolve(&opts, Some(&saved), &paths).expect("resolve");
        assert_eq!((t.user.as_deref(), t.port), (Some("saved"), Some(2300)));
        assert_eq!(t.identity.as_deref(), Some(other.as_path()));

        let cli = ConnectOptions {
            user: Some("cli".into()),
            port: Some(2400),
            ..opts.clone()
        };
        let t = resolve(&cli, Some(&saved), &paths).expect("resolve");
        assert_eq!((t.user.as_deref(), t.port), (Some("cli"), Some(2400)));
    }

    #[test]
    fn the_host_comes_from_the_entry_or_the_last_push_and_its_login_goes_with_it() {
        let (root, paths) = home();
        let vm_key = paths.vm_dir("web").join("id_ed25519");
        std::fs::create_dir_all(vm_key.parent().expect("parent")).expect("mkdir");
        private(&vm_key);
        let other = key(root.path());
        let spec = ConnectOptions {
            spec_host: Some("web.example".into()),
            ..vm("web", Some("admin"))
        };
        // Nothing remembered: the entry's host.
        let t = resolve(&spec, None, &paths).expect("resolve");
        assert_eq!(t.host, "web.example");
        // The last push went to another address with its own login (`--host 10.0.0.5 --port
        // 2200`): status and teardown follow it, a push goes where the entry says — without the
        // other machine's port, user and key.
        let saved = VmState {
            ssh_host: Some("10.0.0.5".into()),
            ssh_user: Some("ops".into()),
            ssh_port: Some(2200),
            ssh_key_path: Some(other.to_string_lossy().into_owned()),
            ..Default::default()
        };
        let push = resolve(&spec, Some(&saved), &paths).expect("resolve");
        assert_eq!(
            (push.host.as_str(), push.user.as_deref(), push.port),
            ("web.example", Some("admin"), Some(DEFAULT_VM_PORT))
        );
        assert_eq!(push.identity.as_deref(), Some(vm_key.as_path()));
        let follow = ConnectOptions {
            follow_saved: true,
            ..spec.clone()
        };
        let status = resolve(&follow, Some(&saved), &paths).expect("resolve");
        assert_eq!(
            (status.host.as_str(), status.user.as_deref(), status.port),
            ("10.0.0.5", Some("ops"), Some(2200))
        );
        assert_eq!(status.identity.as_deref(), Some(other.as_path()));
        // The command line beats both.
        let given = ConnectOptions {
            host: Some("192.0.2.1".into()),
            ..follow
        };
        assert_eq!(
            resolve(&given, Some(&saved), &paths).expect("resolve").host,
            "192.0.2.1"
        );
    }

    #[test]
    fn missing_key_and_user_are_clear_errors() {
        let (_root, paths) = home();
        let opts = vm("deb", Some("debian"));
        let e = resolve(&opts, None, &paths).expect_err("no key");
        assert!(e.to_string().contains("--identity KEY"), "{e}");
        assert!(!e.to_string().contains("ov vm create"), "{e}");
        assert_eq!(e.exit(), Exit::InvalidInput);
        let e = resolve(&vm("deb", None), None, &paths).expect_err("no user");
        assert!(e.to_string().contains("vm.deb.ssh.user"), "{e}");
        let e = resolve(&ConnectOptions::default(), None, &paths).expect_err("no host");
        assert_eq!(e.exit(), Exit::Usage);
    }

    #[test]
    fn ssh_config_leaves_settings_to_the_config() {
        let (root, paths) = home();
        let opts = ConnectOptions {
            ssh_config: Some(root.path().join("cfg")),
            ..vm("arch", None)
        };
        let t = resolve(&opts, None, &paths).expect("resolve");
        assert_eq!(t.host, "ov-arch");
        assert_eq!(
            (t.user.clone(), t.port, t.identity.clone()),
            (None, None, None)
        );
        assert_eq!(t.known_hosts, None);
        assert_eq!(t.describe(), "ov-arch");
    }

    #[test]
    fn a_key_others_can_read_is_refused_before_connecting() {
        use std::os::unix::fs::PermissionsExt;
        let (root, paths) = home();
        let k = key(root.path());
        let opts = ConnectOptions {
            host: Some("192.0.2.1".into()),
            identity: Some(k.clone()),
            ..Default::default()
        };
        resolve(&opts, None, &paths).expect("mode 0600");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = resolve(&opts, None, &paths).expect_err("readable by others");
            assert!(
                matches!(&e, TargetError::KeyPermissions { mode: m, .. } if *m == mode),
                "{e}"
            );
            assert_eq!(e.exit(), Exit::CannotConnect);
            let msg = e.to_string();
            assert!(msg.contains(&format!("has mode {mode:04o}")), "{msg}");
            assert!(
                msg.contains(&format!("`chmod 600 {}`", k.display())),
                "{msg}"
            );
        }
        // 0400 is private too.
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        resolve(&opts, None, &paths).expect("mode 0400");
    }
}
