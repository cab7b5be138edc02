//! Stage `runner`, the repo cache: fetch remote layer repositories with the system `git` into
//! `$OV_REPO_CACHE` (default `~/.cache/ov/repos`), resolve each ref to a commit, pin it in the
//! project's `ov.lock`, and check each commit out once, by commit, for the compiler to read.
//! Invariants: git runs with a clean environment (only what configures git itself and reaches
//! hosts: `HOME`, `GIT_CONFIG_GLOBAL`, `XDG_CONFIG_HOME`, proxies, the ssh agent …), so git's own
//! `url.<base>.insteadOf` is how mirrors and tests redirect fetches; a locked ref is never
//! re-resolved unless `--update` asks; `--offline` never runs git; `ov.lock` is written
//! atomically and only when it changes.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ov_compiler::project::Project;
use ov_compiler::repo::{
    is_commit_id, load_remote_layers, Lock, LockError, RemoteError, RepoCache, RepoRef, LOCK_FILE,
};

use crate::exit::{Exit, HasExit};

/// Whether remote layers may be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FetchMode {
    /// Fetch what the lock or the cache lacks; keep locked refs where they are.
    #[default]
    Fetch,
    /// Fetch every ref again and move the lock to where it points now (`--update`).
    Update,
    /// Use only the lock and the cache (`--offline`): a missing repository is an error.
    Offline,
}

/// What happened to one repository ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefState {
    /// The repository ref.
    pub at: RepoRef,
    /// The commit it is locked to now.
    pub commit: String,
    /// The commit it was locked to before, when that was another (or none).
    pub moved_from: Option<Option<String>>,
}

/// Why remote layers could not be fetched or loaded.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The compiler refused a ref, a remote layer, or found one missing (with `--offline`).
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// `ov.lock` cannot be read or is invalid.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// `ov.lock` cannot be written.
    #[error("cannot write `{}`", path.display())]
    WriteLock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Neither `OV_REPO_CACHE` nor `HOME` says where the cache is.
    #[error(
        "neither `OV_REPO_CACHE`, `XDG_CACHE_HOME` nor `HOME` is set: no place for the repo cache"
    )]
    NoCache,
    /// The cache directory cannot be written.
    #[error("cannot write the repo cache at `{}`", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `git` could not be started.
    #[error("cannot run `git` (needed to fetch `{at}`); install git, or use `--offline` with a filled repo cache")]
    NoGit {
        /// The repository ref, `host/org/repo@ref`.
        at: String,
        #[source]
        source: std::io::Error,
    },
    /// A git command failed.
    #[error("cannot fetch `{at}` from `{url}`: `git {what}` failed: {stderr}")]
    Git {
        /// The repository ref, `host/org/repo@ref`.
        at: String,
        url: String,
        /// The git subcommand.
        what: String,
        /// What git said (trimmed).
        stderr: String,
    },
    /// The locked commit is gone from the server.
    #[error("`{at}` is locked to commit {commit}, which `{url}` no longer gives{}; `ov fetch --update` moves the lock", now_text(now.as_deref()))]
    LockedCommitGone {
        /// The repository ref, `host/org/repo@ref`.
        at: String,
        url: String,
        commit: String,
        /// Where the ref points now, if it could be fetched.
        now: Option<String>,
    },
    /// A ref named as a commit id fetched as another commit.
    #[error("`{at}` names commit {want}, but the server gave {got}")]
    CommitMismatch {
        /// The repository ref, `host/org/repo@ref`.
        at: String,
        want: String,
        got: String,
    },
    /// Unpacking a checkout failed.
    #[error("cannot check out `{at}` at {commit} into `{}`", path.display())]
    Checkout {
        /// The repository ref, `host/org/repo@ref`.
        at: String,
        commit: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn now_text(now: Option<&str>) -> String {
    match now {
        Some(c) => format!(" (the ref now points at {c})"),
        None => String::new(),
    }
}

impl HasExit for RepoError {
    fn exit(&self) -> Exit {
        match self {
            RepoError::Remote(_) | RepoError::Lock(_) => Exit::InvalidInput,
            _ => Exit::Other,
        }
    }
}

/// The repo cache directory: `$OV_REPO_CACHE`, else `$XDG_CACHE_HOME/ov/repos`, else
/// `~/.cache/ov/repos`.
pub fn cache_dir() -> Result<PathBuf, RepoError> {
    let var = |k: &str| {
        std::env::var_os(k)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    var("OV_REPO_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("ov/repos")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/ov/repos")))
        .ok_or(RepoError::NoCache)
}

/// Adds the remote layers `requested` reaches to `project`, fetching what the lock or the cache
/// lacks (unless `mode` is offline) and writing `ov.lock` when a ref was added or moved.
/// `command` is the `ov fetch …` that would fetch what this request needs (for the offline error).
pub fn prepare(
    project: &mut Project,
    requested: &[String],
    mode: FetchMode,
    command: &str,
) -> Result<Vec<RefState>, RepoError> {
    let lock_path = project.root.join(LOCK_FILE);
    let old = Lock::read(&lock_path)?;
    let mut lock = old.clone();
    // A project without remote layers compiles without knowing where the cache is: with none,
    // an empty directory stands in, and the first remote ref met is the error.
    let (cache, no_cache) = match cache_dir() {
        Ok(root) => (RepoCache { root }, None),
        Err(e) => {
            let empty = tempfile::tempdir().map_err(|_| e)?;
            let cache = RepoCache {
                root: empty.path().to_path_buf(),
            };
            (cache, Some(empty))
        }
    };
    let git = Git { cache: &cache };
    let mut refreshed: BTreeSet<RepoRef> = BTreeSet::new();
    // Each round loads from the lock as it is then; a moved ref must not meet its old layers.
    let local = project.layers.clone();
    let load = loop {
        project.layers = local.clone();
        let load = load_remote_layers(project, requested, &lock, &cache)?;
        if no_cache.is_some() && !load.needed.is_empty() {
            return Err(RepoError::NoCache);
        }
        if mode == FetchMode::Offline {
            load.complete(&lock, &cache, command)?;
            break load;
        }
        let todo: Vec<RepoRef> = load
            .needed
            .iter()
            .filter(|at| {
                load.missing.contains_key(*at)
                    || (mode == FetchMode::Update && !refreshed.contains(*at))
            })
            .cloned()
            .collect();
        if todo.is_empty() {
            break load;
        }
        for at in todo {
            // Each ref is fetched at most once per run: a second time would not change the answer.
            if !refreshed.insert(at.clone()) {
                return Err(load.complete(&lock, &cache, command).unwrap_err().into());
            }
            let locked = match mode {
                FetchMode::Update => None,
                _ => lock.entries.get(&at).cloned(),
            };
            let commit = git.ensure(&at, locked.as_deref())?;
            lock.entries.insert(at, commit);
        }
    };
    if lock != old {
        write_lock(&lock_path, &lock)?;
    }
    Ok(load
        .needed
        .iter()
        .filter_map(|at| {
            let commit = lock.entries.get(at)?.clone();
            let before = old.entries.get(at).cloned();
            let moved_from = (before.as_deref() != Some(&commit)).then_some(before);
            Some(RefState {
                at: at.clone(),
                commit,
                moved_from,
            })
        })
        .collect())
}

/// Writes `ov.lock` through a temporary file in the same directory, so a reader never sees half.
fn write_lock(path: &Path, lock: &Lock) -> Result<(), RepoError> {
    let err = |source| RepoError::WriteLock {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".ov.lock.")
        .tempfile_in(dir)
        .map_err(err)?;
    std::io::Write::write_all(&mut tmp, lock.to_text().as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    // A lock file is meant to be read and committed like any project file.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Environment variables git may see: what configures git and how it reaches hosts. Everything
/// else (`GIT_DIR`, `GIT_WORK_TREE`, `GIT_INDEX_FILE` of a surrounding hook, …) is dropped.
const GIT_ENV: &[&str] = &[
    "HOME",
    "PATH",
    "USER",
    "XDG_CONFIG_HOME",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_NOSYSTEM",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_ASKPASS",
    "SSH_AUTH_SOCK",
    "SSH_ASKPASS",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

struct Git<'c> {
    cache: &'c RepoCache,
}

impl Git<'_> {
    /// A `git` command with the clean environment, never prompting.
    fn command(&self, git_dir: &Path) -> Command {
        let mut c = Command::new("git");
        c.env_clear();
        for k in GIT_ENV {
            if let Some(v) = std::env::var_os(k) {
                c.env(k, v);
            }
        }
        c.env("GIT_TERMINAL_PROMPT", "0").env("LC_ALL", "C");
        let mut arg = OsString::from("--git-dir=");
        arg.push(git_dir);
        c.arg(arg);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `args` in the bare repository of `at`; stdout on success.
    fn run(&self, at: &RepoRef, git_dir: &Path, args: &[&str]) -> Result<Vec<u8>, RepoError> {
        let out = self
            .command(git_dir)
            .args(args)
            .output()
            .map_err(|source| RepoError::NoGit {
                at: at.to_string(),
                source,
            })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(RepoError::Git {
            at: at.to_string(),
            url: at.repo.url(),
            what: args.first().copied().unwrap_or("").to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// The commit `at` is (or is locked) at, fetched and checked out in the cache.
    fn ensure(&self, at: &RepoRef, locked: Option<&str>) -> Result<String, RepoError> {
        let git_dir = self.cache.git_dir(&at.repo);
        if !git_dir.join("HEAD").is_file() {
            std::fs::create_dir_all(&git_dir).map_err(|source| RepoError::Cache {
                path: git_dir.clone(),
                source,
            })?;
            self.run(at, &git_dir, &["init", "--bare", "--quiet"])?;
        }
        let commit = match locked {
            Some(commit) => {
                if !self.has_commit(at, &git_dir, commit) {
                    self.fetch_locked(at, &git_dir, commit)?;
                }
                commit.to_string()
            }
            None => {
                let got = self.fetch(at, &git_dir, &at.reference)?;
                if is_commit_id(&at.reference) && got != at.reference {
                    return Err(RepoError::CommitMismatch {
                        at: at.to_string(),
                        want: at.reference.clone(),
                        got,
                    });
                }
                got
            }
        };
        self.checkout(at, &git_dir, &commit)?;
        Ok(commit)
    }

    fn has_commit(&self, at: &RepoRef, git_dir: &Path, commit: &str) -> bool {
        self.run(
            at,
            git_dir,
            &["cat-file", "-e", &format!("{commit}^{{commit}}")],
        )
        .is_ok()
    }

    /// Fetches `what` (a ref or a commit id) shallowly; returns the commit it is.
    fn fetch(&self, at: &RepoRef, git_dir: &Path, what: &str) -> Result<String, RepoError> {
        // A ref per process, so two `ov` runs fetching one repository do not overwrite each other.
        let tmp = format!("refs/ov/fetching/{}", std::process::id());
        let url = at.repo.url();
        self.run(
            at,
            git_dir,
            &[
                "fetch",
                "--quiet",
                "--depth",
                "1",
                "--no-tags",
                "--",
                &url,
                &format!("+{what}:{tmp}"),
            ],
        )?;
        let out = self.run(
            at,
            git_dir,
            &["rev-parse", "--verify", &format!("{tmp}^{{commit}}")],
        )?;
        let commit = String::from_utf8_lossy(&out).trim().to_string();
        // Keep the commit reachable (git's gc keeps what a ref names) and drop the temporary ref.
        self.run(
            at,
            git_dir,
            &["update-ref", &format!("refs/ov/commits/{commit}"), &commit],
        )?;
        self.run(at, git_dir, &["update-ref", "-d", &tmp])?;
        Ok(commit)
    }

    /// Fetches a locked commit by id; a server that does not give commits by id is asked for the
    /// ref, which must still point at it.
    fn fetch_locked(&self, at: &RepoRef, git_dir: &Path, commit: &str) -> Result<(), RepoError> {
        if self.fetch(at, git_dir, commit).is_ok() {
            return Ok(());
        }
        let now = self.fetch(at, git_dir, &at.reference).ok();
        if now.as_deref() == Some(commit) {
            return Ok(());
        }
        Err(RepoError::LockedCommitGone {
            at: at.to_string(),
            url: at.repo.url(),
            commit: commit.to_string(),
            now,
        })
    }

    /// Unpacks `commit` into its own directory of the cache (once; the directory appears whole,
    /// by rename, or not at all).
    fn checkout(&self, at: &RepoRef, git_dir: &Path, commit: &str) -> Result<(), RepoError> {
        let dest = self.cache.checkout(&at.repo, commit);
        if dest.is_dir() {
            return Ok(());
        }
        let fail = |source| RepoError::Checkout {
            at: at.to_string(),
            commit: commit.to_string(),
            path: dest.clone(),
            source,
        };
        let parent = dest.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".checkout.")
            .tempdir_in(parent)
            .map_err(fail)?;
        let mut child = self
            .command(git_dir)
            .args(["archive", "--format=tar", commit])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RepoError::NoGit {
                at: at.to_string(),
                source,
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut archive = tar::Archive::new(stdout);
        archive.set_preserve_permissions(false);
        archive.set_overwrite(false);
        let unpacked = archive.unpack(tmp.path());
        let out = child.wait_with_output().map_err(fail)?;
        if !out.status.success() {
            return Err(RepoError::Git {
                at: at.to_string(),
                url: at.repo.url(),
                what: "archive".to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        unpacked.map_err(fail)?;
        let tmp = tmp.keep();
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(()),
            // Another run put the same commit in place first: same content.
            Err(_) if dest.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(fail(e))
            }
        }
    }
}
