//! Stage `load`, remote layers: layer refs that name another git repository, the lock file that
//! pins each `host/org/repo@ref` to a commit, the repo cache's layout, and the loader that adds
//! remote layers to a project from checkouts already in the cache. Invariant: this module never
//! runs git or touches the network — the runner fetches; here a ref that is not locked, or a
//! locked commit that is not checked out, is reported as missing (with what would fetch it) —
//! and a remote layer is read exactly like a local one, from inside its own checkout.
//!
//! Refs are parsed in [`crate::origin`] (re-exported here); a ref without a ref name means the
//! default branch, which the lock pins all the same.
//! The URL fetched is `https://host/org/repo.git`; git's `url.<base>.insteadOf` redirects it
//! (mirrors, tests). Checkouts are keyed by commit (`<cache>/host/org/repo@<commit>/`), so two refs
//! of one repository never share a working tree.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

pub use crate::origin::{
    normalize_requests, LayerOrigin, RefError, RefProblem, RemoteRef, RemoteSource, RepoId,
    RepoRef, DEFAULT_REF,
};

use crate::layer::Layer;
use crate::layer_parse::{load_layer_dir, valid_layer_name, LayerError, ParseContext};
use crate::project::Project;
use crate::yaml::{self, Doc, YamlError, YamlErrorKind};

/// The lock file's name, in the project directory.
pub const LOCK_FILE: &str = "ov.lock";

/// The repo cache (`$OV_REPO_CACHE`, by default `~/.cache/ov/repos`): one bare repository per
/// remote repository (`host/org/repo.git`, fetched into by the runner) and one plain checkout per
/// commit (`host/org/repo@<commit>`, never changed once in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoCache {
    /// The cache directory.
    pub root: PathBuf,
}

impl RepoCache {
    /// The bare repository git fetches into.
    pub fn git_dir(&self, repo: &RepoId) -> PathBuf {
        self.root
            .join(&repo.host)
            .join(&repo.org)
            .join(format!("{}.git", repo.name))
    }

    /// The checkout of `commit`.
    pub fn checkout(&self, repo: &RepoId, commit: &str) -> PathBuf {
        self.root
            .join(&repo.host)
            .join(&repo.org)
            .join(format!("{}@{commit}", repo.name))
    }
}

/// `ov.lock`: the commit each `host/org/repo@ref` resolved to. Sorted by key, one small entry
/// each, so a diff shows exactly which ref moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    /// Commit (40 lowercase hex digits) by repository ref.
    pub entries: BTreeMap<RepoRef, String>,
}

/// Why `ov.lock` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The file exists but cannot be read.
    #[error("cannot read `{}`", path.display())]
    Read {
        /// The lock file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or not the lock file's shape.
    #[error("{0}")]
    Invalid(Box<YamlError>),
}

const LOCK_HEADER: &str = "\
# ov.lock: the commit each remote layer repository ref resolved to. Written by `ov fetch`
# (and by compile, plan and push when they fetch); `--update` moves the refs. Commit this file:
# every compile uses these commits until it is updated.
";

/// The lock file format's version (the `version:` key).
const LOCK_VERSION: u32 = 1;

/// Whether `s` is a full commit id as the lock records it.
pub fn is_commit_id(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Lock {
    /// Reads `path`; a missing file is an empty lock.
    pub fn read(path: &Path) -> Result<Lock, LockError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Lock::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lock::default()),
            Err(source) => Err(LockError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses the text of a lock file (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Lock, LockError> {
        let invalid = |e: YamlError| LockError::Invalid(Box::new(e));
        let root = yaml::parse_node(path, text).map_err(invalid)?;
        let doc = Doc::new(path, text);
        let mut lock = Lock::default();
        if root.is_null() {
            return Ok(lock);
        }
        for (k, v) in doc.map(&root, "ov.lock").map_err(invalid)? {
            match doc.key(k, "ov.lock").map_err(invalid)?.as_str() {
                "version" => {
                    let version: u32 = doc.uint(v, "version").map_err(invalid)?;
                    if version != LOCK_VERSION {
                        return Err(invalid(doc.error(
                            v.pos,
                            YamlErrorKind::Invalid,
                            format!("`ov.lock` version {version} is not one this ov reads (it reads {LOCK_VERSION})"),
                        )));
                    }
                }
                "repos" => {
                    if v.is_null() {
                        continue;
                    }
                    for (rk, rv) in doc.map(v, "repos").map_err(invalid)? {
                        let key = doc.key(rk, "repos").map_err(invalid)?;
                        let at = RepoRef::parse(&key).map_err(|e| {
                            invalid(doc.error(rk.pos, YamlErrorKind::Invalid, e.to_string()))
                        })?;
                        let mut commit = None;
                        let what = format!("repos.{key}");
                        for (ek, ev) in doc.map(rv, &what).map_err(invalid)? {
                            match doc.key(ek, &what).map_err(invalid)?.as_str() {
                                "commit" => {
                                    let c = doc.string(ev, "commit").map_err(invalid)?;
                                    if !is_commit_id(&c) {
                                        return Err(invalid(doc.error(
                                            ev.pos,
                                            YamlErrorKind::Invalid,
                                            format!("`commit` must be a full commit id (40 lowercase hex digits), found `{c}`"),
                                        )));
                                    }
                                    commit = Some(c);
                                }
                                other => {
                                    return Err(invalid(doc.error(
                                        ek.pos,
                                        YamlErrorKind::UnknownKey,
                                        format!("unknown key `{other}` in `{what}`"),
                                    )))
                                }
                            }
                        }
                        let Some(commit) = commit else {
                            return Err(invalid(doc.error(
                                rk.pos,
                                YamlErrorKind::MissingKey,
                                format!("`{what}` needs `commit:`"),
                            )));
                        };
                        lock.entries.insert(at, commit);
                    }
                }
                other => {
                    return Err(invalid(
                        doc.error(
                            k.pos,
                            YamlErrorKind::UnknownKey,
                            format!("unknown key `{other}` in `ov.lock`"),
                        )
                        .with_hint("valid keys here: `repos`, `version`"),
                    ))
                }
            }
        }
        Ok(lock)
    }

    /// The file's text: a header, the version, then one entry per ref in sorted order. The same
    /// lock always gives the same bytes.
    pub fn to_text(&self) -> String {
        let mut s = String::from(LOCK_HEADER);
        s.push_str(&format!("version: {LOCK_VERSION}\nrepos:"));
        if self.entries.is_empty() {
            s.push_str(" {}\n");
            return s;
        }
        s.push('\n');
        for (at, commit) in &self.entries {
            // Keys and commits are checked to hold only characters YAML reads plainly.
            s.push_str(&format!("  {at}:\n    commit: {commit}\n"));
        }
        s
    }
}

/// Why remote layers could not be added to the project.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A ref in a layer file or the request that does not parse.
    #[error("{source} ({})", by_text(required_by.as_deref()))]
    BadRef {
        /// The layer that names it; `None`: requested.
        required_by: Option<String>,
        #[source]
        source: RefError,
    },
    /// A ref that was never fetched, or whose locked commit is not in the cache.
    #[error(transparent)]
    NotFetched(Box<MissingRepo>),
    /// The commit holds no layer at the path.
    #[error("`{}` at commit {commit} has no layer at `{path}` (no `{path}/layer.yml`) (needed for `{reference}`)", at)]
    NoLayer {
        /// The repository ref, `host/org/repo@ref`.
        at: String,
        /// The locked commit.
        commit: String,
        /// The path inside the repository.
        path: String,
        /// The ref as written.
        reference: String,
    },
    /// A path of a remote layer that leads outside its checkout or layer directory.
    #[error("remote layer `{layer}` (`{reference}`): `{file}` {why}; a remote layer's files must stay inside its own directory")]
    Escapes {
        /// The layer name.
        layer: String,
        /// The ref as written.
        reference: String,
        /// The file, relative to the layer directory.
        file: String,
        /// What it does.
        why: String,
    },
    /// The remote layer's `layer.yml` is not valid.
    #[error("remote layer `{reference}` (commit {commit}): {source}")]
    Layer {
        /// The ref as written.
        reference: String,
        /// The locked commit.
        commit: String,
        #[source]
        source: Box<LayerError>,
    },
    /// Two different layers would share a name (names key the ledger on the target).
    #[error("two layers are named `{name}`: {first} and {second}; layer names must be unique in a deploy (they key the target's ledger)")]
    NameConflict {
        /// The shared name.
        name: String,
        /// The first one, described.
        first: String,
        /// The second one, described.
        second: String,
    },
}

/// A repository ref the lock or the cache lacks, and what would fetch it.
#[derive(Debug, thiserror::Error)]
#[error(
    "remote layer repository `{at}` {} (needed for `{reference}`); fetch it: `{command}`",
    missing_text(commit.as_deref(), checkout)
)]
pub struct MissingRepo {
    /// The repository ref.
    pub at: RepoRef,
    /// The ref of the layer that needs it, in its command-line spelling.
    pub reference: String,
    /// The locked commit, when the lock has one.
    pub commit: Option<String>,
    /// Where its checkout is (or would be) in the cache.
    pub checkout: PathBuf,
    /// The command that fetches it.
    pub command: String,
}

fn by_text(required_by: Option<&str>) -> String {
    match required_by {
        Some(by) => format!("required by `{by}`"),
        None => "requested".to_string(),
    }
}

fn missing_text(commit: Option<&str>, checkout: &Path) -> String {
    match commit {
        None => format!("is not in `{LOCK_FILE}` and has not been fetched"),
        Some(c) => format!(
            "is locked to commit {c}, which is not in the repo cache (`{}`)",
            checkout.display()
        ),
    }
}

/// What [`load_remote_layers`] found: every repository ref the request needs, and those it could
/// not read yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteLoad {
    /// Every repository ref reached (loaded or not).
    pub needed: BTreeSet<RepoRef>,
    /// Refs not locked or not checked out, each with the first layer ref that needed it.
    pub missing: BTreeMap<RepoRef, RemoteRef>,
}

impl RemoteLoad {
    /// `Ok` when nothing is missing; else the error for the first missing ref, telling the user
    /// to run `command`.
    pub fn complete(
        &self,
        lock: &Lock,
        cache: &RepoCache,
        command: &str,
    ) -> Result<(), RemoteError> {
        let Some((at, wanted)) = self.missing.iter().next() else {
            return Ok(());
        };
        let commit = lock.entries.get(at).cloned();
        let checkout = match &commit {
            Some(c) => cache.checkout(&at.repo, c),
            None => cache.checkout(&at.repo, "<commit>"),
        };
        Err(RemoteError::NotFetched(Box::new(MissingRepo {
            at: at.clone(),
            reference: wanted.to_string(),
            commit,
            checkout,
            command: command.to_string(),
        })))
    }
}

/// Adds to `project.layers` every remote layer that `requested` (layer names and `@` refs, see
/// [`normalize_requests`]) reaches through `depends:`/`layers:`, read from the checkouts of the
/// commits `lock` pins. A remote layer's plain-name `depends:`/`layers:` name its siblings in the
/// same repository at the same commit when the repository has them, else layers of the project.
///
/// Refs that are not locked, or whose commit is not checked out, are returned in
/// [`RemoteLoad::missing`] (the runner fetches them and calls again; loading is idempotent).
pub fn load_remote_layers(
    project: &mut Project,
    requested: &[String],
    lock: &Lock,
    cache: &RepoCache,
) -> Result<RemoteLoad, RemoteError> {
    let ctx = project.parse_context();
    let mut out = RemoteLoad::default();
    // (reference as written, who named it, whose repository a plain name is looked up in)
    let mut queue: VecDeque<(String, Option<String>)> =
        requested.iter().map(|r| (r.clone(), None)).collect();
    let mut seen_names: BTreeSet<String> = BTreeSet::new();
    let mut seen_remote: BTreeSet<RemoteRef> = BTreeSet::new();
    while let Some((reference, by)) = queue.pop_front() {
        let remote = if reference.starts_with('@') {
            RemoteRef::parse_at(&reference).map_err(|source| RemoteError::BadRef {
                required_by: by.clone(),
                source,
            })?
        } else {
            // A plain name: a sibling in the requiring remote layer's repository, else the project's.
            let bare = reference.split_once(':').map_or(&reference[..], |(b, _)| b);
            if let Some(sibling) = by
                .as_deref()
                .and_then(|b| project.layers.get(b))
                .and_then(|l| l.remote.as_ref())
                .and_then(|src| sibling_ref(src, bare))
            {
                sibling
            } else {
                if seen_names.insert(bare.to_string()) {
                    if let Some(layer) = project.layers.get(bare) {
                        queue.extend(refs_of(layer));
                    }
                }
                continue;
            }
        };
        if !seen_remote.insert(remote.clone()) {
            continue;
        }
        out.needed.insert(remote.at.clone());
        let Some(commit) = lock.entries.get(&remote.at) else {
            out.missing.entry(remote.at.clone()).or_insert(remote);
            continue;
        };
        let checkout = cache.checkout(&remote.at.repo, commit);
        if !checkout.is_dir() {
            out.missing.entry(remote.at.clone()).or_insert(remote);
            continue;
        }
        let layer = load_one(&remote, commit, &checkout, &ctx)?;
        let name = layer.name.clone();
        match project.layers.get(&name) {
            Some(existing) if same_layer(existing, &layer) => {}
            Some(existing) => {
                return Err(RemoteError::NameConflict {
                    name,
                    first: describe(existing),
                    second: describe(&layer),
                })
            }
            None => {
                queue.extend(refs_of(&layer));
                project.layers.insert(name, layer);
            }
        }
    }
    Ok(out)
}

/// The `depends:` and `layers:` of `layer`, each with the layer that names it.
fn refs_of(layer: &Layer) -> Vec<(String, Option<String>)> {
    layer
        .depends
        .iter()
        .chain(&layer.layers)
        .map(|r| (r.clone(), Some(layer.name.clone())))
        .collect()
}

/// The sibling `name` of a remote layer, when its repository has one at the same commit.
fn sibling_ref(src: &RemoteSource, name: &str) -> Option<RemoteRef> {
    if !valid_layer_name(name) {
        return None;
    }
    let path = match src.path.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/{name}"),
        None => name.to_string(),
    };
    src.checkout
        .join(&path)
        .join("layer.yml")
        .is_file()
        .then(|| RemoteRef {
            at: src.at.clone(),
            path,
        })
}

fn same_layer(a: &Layer, b: &Layer) -> bool {
    match (&a.remote, &b.remote) {
        (Some(x), Some(y)) => x.at.repo == y.at.repo && x.commit == y.commit && x.path == y.path,
        _ => false,
    }
}

fn describe(layer: &Layer) -> String {
    match &layer.remote {
        Some(src) => format!(
            "`{}/{}@{}` (commit {})",
            src.at.repo, src.path, src.at.reference, src.commit
        ),
        None => format!("the project's `{}`", layer.file.display()),
    }
}

/// Reads one remote layer from its checkout, refusing any path that leads out of it.
fn load_one(
    remote: &RemoteRef,
    commit: &str,
    checkout: &Path,
    ctx: &ParseContext,
) -> Result<Layer, RemoteError> {
    let written = remote.to_string();
    let dir = checkout.join(&remote.path);
    let escapes = |file: &str, why: &str| RemoteError::Escapes {
        layer: remote.name().to_string(),
        reference: written.clone(),
        file: file.to_string(),
        why: why.to_string(),
    };
    let no_layer = || RemoteError::NoLayer {
        at: remote.at.to_string(),
        commit: commit.to_string(),
        path: remote.path.clone(),
        reference: written.clone(),
    };
    // Each part of the path must be a real directory of the checkout: a symlinked part could
    // point anywhere on this machine.
    let mut walked = checkout.to_path_buf();
    for part in remote.path.split('/') {
        walked.push(part);
        match std::fs::symlink_metadata(&walked) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(escapes(part, "is a symbolic link in the layer's path"))
            }
            Ok(m) if m.is_dir() => {}
            _ => return Err(no_layer()),
        }
    }
    match std::fs::symlink_metadata(dir.join("layer.yml")) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(escapes("layer.yml", "is a symbolic link"))
        }
        Ok(m) if m.is_file() => {}
        _ => return Err(no_layer()),
    }
    check_links(&dir, &dir, &escapes)?;
    let mut layer = load_layer_dir(&dir, ctx).map_err(|e| RemoteError::Layer {
        reference: written.clone(),
        commit: commit.to_string(),
        source: Box::new(e),
    })?;
    layer.remote = Some(RemoteSource {
        at: remote.at.clone(),
        commit: commit.to_string(),
        path: remote.path.clone(),
        checkout: checkout.to_path_buf(),
    });
    Ok(layer)
}

/// Every symbolic link below `dir` must lead to a place inside `top` (the layer directory).
fn check_links(
    top: &Path,
    dir: &Path,
    escapes: &dyn Fn(&str, &str) -> RemoteError,
) -> Result<(), RemoteError> {
    let rel = |p: &Path| {
        p.strip_prefix(top)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Err(escapes(&rel(dir), "cannot be read"));
    };
    let real_top = top
        .canonicalize()
        .map_err(|_| escapes(".", "cannot be resolved"))?;
    for entry in entries {
        let entry = entry.map_err(|_| escapes(&rel(dir), "cannot be read"))?;
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            return Err(escapes(&rel(&path), "cannot be read"));
        };
        if kind.is_symlink() {
            match path.canonicalize() {
                Ok(real) if real.starts_with(&real_top) => {}
                Ok(_) => {
                    return Err(escapes(
                        &rel(&path),
                        "is a symbolic link that points outside the layer directory",
                    ))
                }
                Err(_) => {
                    return Err(escapes(
                        &rel(&path),
                        "is a symbolic link that leads nowhere inside the layer directory",
                    ))
                }
            }
        } else if kind.is_dir() {
            check_links(top, &path, escapes)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_text_is_sorted_stable_and_reads_back() {
        let mut lock = Lock::default();
        let c1 = "1111111111111111111111111111111111111111".to_string();
        let c2 = "2222222222222222222222222222222222222222".to_string();
        lock.entries
            .insert(RepoRef::parse("gitlab.com/z/z@v2").unwrap(), c2.clone());
        lock.entries.insert(
            RepoRef::parse("github.com/team/configs@v1").unwrap(),
            c1.clone(),
        );
        let text = lock.to_text();
        assert!(
            text.ends_with(&format!(
                "version: 1\nrepos:\n  github.com/team/configs@v1:\n    commit: {c1}\n  gitlab.com/z/z@v2:\n    commit: {c2}\n"
            )),
            "{text}"
        );
        let back = Lock::parse(Path::new("ov.lock"), &text).unwrap();
        assert_eq!(back, lock);
        assert_eq!(back.to_text(), text);
        assert_eq!(
            Lock::parse(Path::new("ov.lock"), &Lock::default().to_text()).unwrap(),
            Lock::default()
        );
    }

    #[test]
    fn bad_lock_files_point_at_the_line() {
        let cases = [
            (
                "version: 1\nrepos:\n  github.com/o/r@v1:\n    commit: abc\n",
                "ov.lock:4:",
                "full commit id",
            ),
            (
                "version: 1\nrepos:\n  github.com/o@v1:\n    commit: abc\n",
                "ov.lock:3:",
                "invalid remote layer ref",
            ),
            ("version: 2\n", "ov.lock:1:", "version 2"),
            ("versoin: 1\n", "ov.lock:1:", "unknown key `versoin`"),
            (
                "repos:\n  github.com/o/r/x@v1: {}\n",
                "ov.lock:2:",
                "invalid remote layer ref",
            ),
            (
                "repos:\n  github.com/o/r@v1: {}\n",
                "ov.lock:2:",
                "needs `commit:`",
            ),
        ];
        for (text, at, want) in cases {
            let msg = Lock::parse(Path::new("ov.lock"), text)
                .unwrap_err()
                .to_string();
            assert!(msg.contains(at) && msg.contains(want), "{text:?}: {msg}");
        }
    }

    #[test]
    fn cache_layout_keys_checkouts_by_commit() {
        let cache = RepoCache {
            root: PathBuf::from("/c"),
        };
        let repo = RemoteRef::parse_cli("github.com/o/r/x@v1")
            .unwrap()
            .unwrap()
            .at
            .repo;
        assert_eq!(cache.git_dir(&repo), Path::new("/c/github.com/o/r.git"));
        assert_eq!(
            cache.checkout(&repo, "abc"),
            Path::new("/c/github.com/o/r@abc")
        );
    }

    /// A project whose `app` needs `@github.com/o/r/layers/x:v1`, and an empty cache.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    impl Fixture {
        fn new() -> Fixture {
            let f = Fixture {
                dir: tempfile::tempdir().unwrap(),
            };
            f.write(
                "project/layers/app/layer.yml",
                "layer:\n  depends:\n    - \"@github.com/o/r/layers/x:v1\"\n  env:\n    APP: \"1\"\n",
            );
            f
        }

        fn write(&self, rel: &str, text: &str) {
            let p = self.dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }

        fn cache(&self) -> RepoCache {
            RepoCache {
                root: self.dir.path().join("cache"),
            }
        }

        /// The checkout of COMMIT: `x` (depends on its sibling `y`) and `y`.
        fn check_out(&self) -> PathBuf {
            let c = format!("cache/github.com/o/r@{COMMIT}");
            self.write(
                &format!("{c}/layers/x/layer.yml"),
                "layer:\n  depends: [y]\n  env:\n    X: \"1\"\n",
            );
            self.write(
                &format!("{c}/layers/y/layer.yml"),
                "layer:\n  env:\n    Y: \"1\"\n",
            );
            self.dir.path().join(c)
        }

        fn project(&self) -> Project {
            Project::load(&self.dir.path().join("project")).unwrap()
        }

        fn load(&self, lock: &Lock) -> Result<(Project, RemoteLoad), RemoteError> {
            let mut p = self.project();
            let load = load_remote_layers(&mut p, &["app".to_string()], lock, &self.cache())?;
            Ok((p, load))
        }
    }

    fn locked() -> Lock {
        let mut lock = Lock::default();
        lock.entries.insert(
            RepoRef::parse("github.com/o/r@v1").unwrap(),
            COMMIT.to_string(),
        );
        lock
    }

    #[test]
    fn loader_says_what_is_missing_then_reads_the_locked_checkout() {
        let f = Fixture::new();
        let at = RepoRef::parse("github.com/o/r@v1").unwrap();
        // Not in the lock.
        let (_, load) = f.load(&Lock::default()).unwrap();
        assert_eq!(load.needed, BTreeSet::from([at.clone()]));
        let msg = load
            .complete(&Lock::default(), &f.cache(), "ov fetch app")
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "remote layer repository `github.com/o/r@v1` is not in `ov.lock` and has not been fetched (needed for `github.com/o/r/layers/x@v1`); fetch it: `ov fetch app`"
        );
        // Locked, but not in the cache.
        let (_, load) = f.load(&locked()).unwrap();
        let msg = load
            .complete(&locked(), &f.cache(), "ov fetch app")
            .unwrap_err()
            .to_string();
        let checkout = f.cache().checkout(&at.repo, COMMIT);
        assert!(
            msg.contains(&format!(
                "is locked to commit {COMMIT}, which is not in the repo cache (`{}`)",
                checkout.display()
            )),
            "{msg}"
        );
        // Checked out: `x` and its sibling `y` come from the same commit.
        f.check_out();
        let (project, load) = f.load(&locked()).unwrap();
        assert!(load.missing.is_empty());
        load.complete(&locked(), &f.cache(), "unused").unwrap();
        let src = |n: &str| project.layers[n].remote.clone().expect("remote");
        assert_eq!(src("x").path, "layers/x");
        assert_eq!(src("y").path, "layers/y");
        assert_eq!(src("y").commit, COMMIT);
        assert!(project.layers["app"].remote.is_none());
        let order = crate::resolve::resolve(&project.layers, &["app".to_string()]).unwrap();
        assert_eq!(order, ["y", "x", "app"]);
        // Loading again into the loaded project changes nothing.
        let mut again = project.clone();
        load_remote_layers(&mut again, &["app".to_string()], &locked(), &f.cache()).unwrap();
        assert_eq!(again.layers.len(), project.layers.len());
    }

    #[test]
    fn loader_refuses_links_out_missing_layers_and_name_clashes() {
        // A link out of the layer directory.
        let f = Fixture::new();
        let co = f.check_out();
        std::os::unix::fs::symlink("/etc", co.join("layers/x/conf")).unwrap();
        let msg = f.load(&locked()).unwrap_err().to_string();
        assert_eq!(
            msg,
            "remote layer `x` (`github.com/o/r/layers/x@v1`): `conf` is a symbolic link that points outside the layer directory; a remote layer's files must stay inside its own directory"
        );
        // A link inside it is fine.
        std::fs::remove_file(co.join("layers/x/conf")).unwrap();
        std::os::unix::fs::symlink("layer.yml", co.join("layers/x/alias.yml")).unwrap();
        f.load(&locked()).unwrap();

        // The layer directory itself a link.
        let f = Fixture::new();
        let co = f.check_out();
        std::fs::rename(co.join("layers/x"), co.join("real-x")).unwrap();
        std::os::unix::fs::symlink("../real-x", co.join("layers/x")).unwrap();
        let msg = f.load(&locked()).unwrap_err().to_string();
        assert!(
            msg.contains("`x` is a symbolic link in the layer's path"),
            "{msg}"
        );

        // No layer at the path.
        let f = Fixture::new();
        let co = f.check_out();
        std::fs::remove_dir_all(co.join("layers/x")).unwrap();
        let msg = f.load(&locked()).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!("`github.com/o/r@v1` at commit {COMMIT} has no layer at `layers/x` (no `layers/x/layer.yml`) (needed for `github.com/o/r/layers/x@v1`)")
        );

        // A project layer of the same name.
        let f = Fixture::new();
        f.check_out();
        f.write(
            "project/layers/x/layer.yml",
            "layer:\n  env:\n    LOCAL: \"1\"\n",
        );
        let msg = f.load(&locked()).unwrap_err().to_string();
        assert!(
            msg.starts_with("two layers are named `x`: the project's `")
                && msg.contains(&format!(
                    "and `github.com/o/r/layers/x@v1` (commit {COMMIT})"
                )),
            "{msg}"
        );
    }
}
