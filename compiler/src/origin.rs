//! Stage `load`, where layers come from: remote layer refs in their two spellings, the
//! repository and ref they name, and [`LayerOrigin`], which a plan's layer carries for
//! provenance. Invariant: pure parsing and plain types — no file system, no git — so every other
//! stage may name them without depending on the loader in [`crate::repo`].
//!
//! Two spellings name one remote layer:
//! - in `depends:`/`layers:` (and deploy nodes' `add_layers:`): `@host/org/repo/path/to/layer[:ref]`;
//! - on the command line: `host/org/repo/path/to/layer[@ref]` (the `@` form works there too).
//!
//! Without a ref the repository's default branch (`HEAD`) is meant. Every part is restricted to
//! characters that are safe as a URL path, a file name and a git argument (none starts with `-`).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The ref meant when none is given: the repository's default branch.
pub const DEFAULT_REF: &str = "HEAD";

/// A git repository on a host: `github.com/team/configs`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoId {
    /// `github.com`, `gitlab.com`, a private git host.
    pub host: String,
    /// Organisation or user.
    pub org: String,
    /// Repository name (without `.git`).
    pub name: String,
}

impl RepoId {
    /// The URL `git fetch` is given; `url.<base>.insteadOf` may rewrite it.
    pub fn url(&self) -> String {
        format!("https://{}/{}/{}.git", self.host, self.org, self.name)
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.host, self.org, self.name)
    }
}

/// A repository at a ref (tag, branch, commit or `HEAD`): one entry of the lock file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoRef {
    /// The repository.
    pub repo: RepoId,
    /// The ref as written (`HEAD` when none was).
    pub reference: String,
}

impl RepoRef {
    /// Parses a lock key, `host/org/repo@ref`.
    pub fn parse(key: &str) -> Result<RepoRef, RefError> {
        let bad = |problem| RefError {
            reference: key.to_string(),
            problem,
        };
        let (repo, reference) = key.rsplit_once('@').ok_or_else(|| bad(RefProblem::Shape))?;
        let segments: Vec<&str> = repo.split('/').collect();
        let [host, org, name] = segments[..] else {
            return Err(bad(RefProblem::Shape));
        };
        check_host(host).map_err(bad)?;
        check_segment(org).map_err(bad)?;
        check_segment(name).map_err(bad)?;
        check_ref(reference).map_err(bad)?;
        Ok(RepoRef {
            repo: RepoId {
                host: host.to_string(),
                org: org.to_string(),
                name: name.to_string(),
            },
            reference: reference.to_string(),
        })
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repo, self.reference)
    }
}

/// A parsed remote layer ref: which repository, at which ref, and the layer's directory in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteRef {
    /// The repository and ref.
    pub at: RepoRef,
    /// The layer directory inside the repository, e.g. `layers/sshkeys` (`/`-separated).
    pub path: String,
}

/// Why a remote layer ref is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid remote layer ref `{reference}`: {problem}")]
pub struct RefError {
    /// The ref as written.
    pub reference: String,
    /// What is wrong with it.
    pub problem: RefProblem,
}

/// What is wrong with a remote layer ref.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefProblem {
    /// Too few parts.
    #[error("expected `<host>/<org>/<repo>/<path to layer>[@<ref>]` (or `@<host>/<org>/<repo>/<path to layer>[:<ref>]` in a layer file)")]
    Shape,
    /// A host that is not a DNS name.
    #[error("`{0}` is not a host name (letters, digits, `-` and `.`; no port: point `url.<base>.insteadOf` at another port)")]
    Host(String),
    /// An empty, `.`/`..` or otherwise unusable path part.
    #[error("path part `{0}` is not allowed (letters, digits, `.`, `_`, `-`; not `.`, `..` or starting with `.` or `-`)")]
    Segment(String),
    /// `@`/`:` with nothing after it.
    #[error("the ref after `@` (or `:`) is empty")]
    EmptyRef,
    /// A ref git would not take, or that could be read as an option.
    #[error("ref `{0}` is not a tag, branch or commit name ov accepts (letters, digits, `.`, `_`, `+`, `-`; not starting with `-` or `.`, no `..`)")]
    Ref(String),
}

fn check_host(host: &str) -> Result<(), RefProblem> {
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !host.starts_with(['-', '.'])
        && !host.ends_with(['-', '.'])
        && !host.contains("..");
    ok.then_some(())
        .ok_or_else(|| RefProblem::Host(host.to_string()))
}

fn check_segment(seg: &str) -> Result<(), RefProblem> {
    let ok = !seg.is_empty()
        && !seg.starts_with(['.', '-'])
        && seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    ok.then_some(())
        .ok_or_else(|| RefProblem::Segment(seg.to_string()))
}

fn check_ref(r: &str) -> Result<(), RefProblem> {
    if r.is_empty() {
        return Err(RefProblem::EmptyRef);
    }
    let ok = !r.starts_with(['-', '.'])
        && !r.ends_with(['.'])
        && !r.contains("..")
        && !r.ends_with(".lock")
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    ok.then_some(())
        .ok_or_else(|| RefProblem::Ref(r.to_string()))
}

impl RemoteRef {
    /// Parses the layer-file form `@host/org/repo/path/to/layer[:ref]`.
    pub fn parse_at(reference: &str) -> Result<RemoteRef, RefError> {
        let bad = |problem| RefError {
            reference: reference.to_string(),
            problem,
        };
        let body = reference
            .strip_prefix('@')
            .ok_or_else(|| bad(RefProblem::Shape))?;
        // The ref follows a `:` after the last `/` (hosts carry no port here).
        let last_slash = body.rfind('/').unwrap_or(0);
        let (path, version) = match body[last_slash..].find(':') {
            Some(i) => (&body[..last_slash + i], Some(&body[last_slash + i + 1..])),
            None => (body, None),
        };
        RemoteRef::from_parts(path, version).map_err(bad)
    }

    /// Parses the command-line form `host/org/repo/path/to/layer[@ref]`, or the layer-file form.
    /// `Ok(None)`: a plain layer name (no `/`), which names a layer of the project.
    pub fn parse_cli(reference: &str) -> Result<Option<RemoteRef>, RefError> {
        if reference.starts_with('@') {
            return RemoteRef::parse_at(reference).map(Some);
        }
        if !reference.contains('/') {
            return Ok(None);
        }
        let (path, version) = match reference.split_once('@') {
            Some((p, v)) => (p, Some(v)),
            None => (reference, None),
        };
        RemoteRef::from_parts(path, version)
            .map(Some)
            .map_err(|problem| RefError {
                reference: reference.to_string(),
                problem,
            })
    }

    fn from_parts(path: &str, version: Option<&str>) -> Result<RemoteRef, RefProblem> {
        let segments: Vec<&str> = path.split('/').collect();
        let [host, org, name, sub @ ..] = &segments[..] else {
            return Err(RefProblem::Shape);
        };
        if sub.is_empty() {
            return Err(RefProblem::Shape);
        }
        check_host(host)?;
        check_segment(org)?;
        // `repo.git` names the same repository as `repo`.
        let name = name.strip_suffix(".git").unwrap_or(name);
        check_segment(name)?;
        for seg in sub {
            check_segment(seg)?;
        }
        let reference = match version {
            Some(v) => {
                check_ref(v)?;
                v.to_string()
            }
            None => DEFAULT_REF.to_string(),
        };
        Ok(RemoteRef {
            at: RepoRef {
                repo: RepoId {
                    host: host.to_string(),
                    org: org.to_string(),
                    name: name.to_string(),
                },
                reference,
            },
            path: sub.join("/"),
        })
    }

    /// The layer's name: the last part of its path.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The layer-file spelling, `@host/org/repo/path:ref`.
    pub fn at_form(&self) -> String {
        format!("@{}/{}:{}", self.at.repo, self.path, self.at.reference)
    }
}

impl fmt::Display for RemoteRef {
    /// The command-line spelling, `host/org/repo/path@ref`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.at.repo, self.path, self.at.reference)
    }
}

/// Requested layers with the command-line remote form rewritten to the layer-file form the
/// resolver reads (`github.com/o/r/layers/x@v1` → `@github.com/o/r/layers/x:v1`); plain names
/// stay as they are.
pub fn normalize_requests(requested: &[String]) -> Result<Vec<String>, RefError> {
    requested
        .iter()
        .map(|r| {
            Ok(match RemoteRef::parse_cli(r)? {
                Some(remote) => remote.at_form(),
                None => r.clone(),
            })
        })
        .collect()
}

/// Where a resolved layer came from; carried into the plan for provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LayerOrigin {
    /// A directory of the project.
    Local {
        /// The layer directory relative to the project root (`/`-separated).
        path: String,
    },
    /// A directory of a git repository at a locked commit.
    Remote {
        /// `host/org/repo`.
        repo: String,
        /// The ref as requested (tag, branch, commit or `HEAD`).
        reference: String,
        /// The commit the lock file pins the ref to (40 hex digits).
        commit: String,
        /// The layer directory inside the repository (`/`-separated).
        path: String,
    },
}

impl std::fmt::Display for LayerOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerOrigin::Local { path } => write!(f, "local {path}"),
            LayerOrigin::Remote {
                repo,
                reference,
                commit,
                path,
            } => write!(f, "{repo}/{path}@{reference} (commit {commit})"),
        }
    }
}

impl LayerOrigin {
    /// Whether this is a project directory.
    pub fn is_local(&self) -> bool {
        matches!(self, LayerOrigin::Local { .. })
    }
}

/// Where a remote layer was read from (set by [`load_remote_layers`] on the [`Layer`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteSource {
    /// The repository and the ref it was requested at.
    pub at: RepoRef,
    /// The locked commit.
    pub commit: String,
    /// The layer directory inside the repository.
    pub path: String,
    /// The checkout the layer was read from (`<cache>/host/org/repo@<commit>`).
    #[serde(skip)]
    pub checkout: PathBuf,
}

impl RemoteSource {
    /// The origin a plan records.
    pub fn origin(&self) -> LayerOrigin {
        LayerOrigin::Remote {
            repo: self.at.repo.to_string(),
            reference: self.at.reference.clone(),
            commit: self.commit.clone(),
            path: self.path.clone(),
        }
    }

    /// How a bundle's manifest names the layer's source: `host/org/repo/path@commit`.
    pub fn source_text(&self) -> String {
        format!("{}/{}@{}", self.at.repo, self.path, self.commit)
    }
}

impl Serialize for RepoRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(s: &str) -> RemoteRef {
        RemoteRef::parse_cli(s).unwrap().unwrap()
    }

    fn cli_err(s: &str) -> String {
        RemoteRef::parse_cli(s).unwrap_err().to_string()
    }

    #[test]
    fn command_line_form_parses() {
        let r = cli("github.com/team/configs/layers/sshkeys@v1");
        assert_eq!(r.at.repo.to_string(), "github.com/team/configs");
        assert_eq!(r.at.reference, "v1");
        assert_eq!(r.path, "layers/sshkeys");
        assert_eq!(r.name(), "sshkeys");
        assert_eq!(r.at.to_string(), "github.com/team/configs@v1");
        assert_eq!(r.at.repo.url(), "https://github.com/team/configs.git");
        assert_eq!(r.at_form(), "@github.com/team/configs/layers/sshkeys:v1");
        assert_eq!(r.to_string(), "github.com/team/configs/layers/sshkeys@v1");
        // Any host; no ref means the default branch; `.git` is the same repository.
        let r = cli("git.example.org/ops/base.git/sshkeys");
        assert_eq!(r.at.to_string(), "git.example.org/ops/base@HEAD");
        assert_eq!(r.path, "sshkeys");
        // A commit id is a ref.
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(cli(&format!("gitlab.com/a/b/c@{sha}")).at.reference, sha);
    }

    #[test]
    fn plain_names_are_not_remote() {
        assert_eq!(RemoteRef::parse_cli("ripgrep").unwrap(), None);
        assert_eq!(RemoteRef::parse_cli("ripgrep:1.2").unwrap(), None);
    }

    #[test]
    fn layer_file_form_parses_and_both_forms_agree() {
        let r = RemoteRef::parse_at("@github.com/team/configs/layers/sshkeys:v1").unwrap();
        assert_eq!(r, cli("github.com/team/configs/layers/sshkeys@v1"));
        assert_eq!(
            RemoteRef::parse_cli("@github.com/team/configs/layers/sshkeys:v1").unwrap(),
            Some(r)
        );
        let r = RemoteRef::parse_at("@github.com/o/r/x").unwrap();
        assert_eq!(r.at.reference, "HEAD");
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        let cases = [
            (
                "github.com/team/configs",
                "expected `<host>/<org>/<repo>/<path to layer>[@<ref>]`",
            ),
            (
                "github.com/team",
                "expected `<host>/<org>/<repo>/<path to layer>[@<ref>]`",
            ),
            (
                "github.com/team/configs/layers/x@",
                "the ref after `@` (or `:`) is empty",
            ),
            (
                "github.com/team/configs/../x@v1",
                "path part `..` is not allowed",
            ),
            (
                "github.com/team/configs/layers//x",
                "path part `` is not allowed",
            ),
            (
                "github.com/team/configs/layers/.hidden",
                "path part `.hidden` is not allowed",
            ),
            ("github.com/-x/configs/a", "path part `-x` is not allowed"),
            (
                "github.com:22/team/configs/a",
                "`github.com:22` is not a host name",
            ),
            ("-oProxy/team/configs/a", "`-oProxy` is not a host name"),
            (
                "github.com/team/configs/a@--upload-pack=x",
                "ref `--upload-pack=x` is not a tag",
            ),
            (
                "github.com/team/configs/a@v1..v2",
                "ref `v1..v2` is not a tag",
            ),
            (
                "github.com/team/configs/a@feature/x",
                "ref `feature/x` is not a tag",
            ),
            (
                "github.com/team/con figs/a",
                "path part `con figs` is not allowed",
            ),
        ];
        for (input, want) in cases {
            let msg = cli_err(input);
            assert!(
                msg.starts_with(&format!("invalid remote layer ref `{input}`: ")),
                "{input}: {msg}"
            );
            assert!(msg.contains(want), "{input}: {msg}");
        }
        let msg = RemoteRef::parse_at("@github.com/o/r/layers/x:")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("the ref after `@` (or `:`) is empty"), "{msg}");
        assert!(RemoteRef::parse_at("github.com/o/r/x").is_err());
        assert!(RemoteRef::parse_at("@github.com/o/r/../x:v1").is_err());
    }

    #[test]
    fn normalize_rewrites_only_remote_requests() {
        let req = vec![
            "ripgrep".to_string(),
            "github.com/team/configs/layers/sshkeys@v1".to_string(),
            "@gitlab.com/a/b/c:v2".to_string(),
        ];
        assert_eq!(
            normalize_requests(&req).unwrap(),
            [
                "ripgrep",
                "@github.com/team/configs/layers/sshkeys:v1",
                "@gitlab.com/a/b/c:v2"
            ]
        );
        assert!(normalize_requests(&["github.com/x".to_string()]).is_err());
    }

    #[test]
    fn origin_serialises_with_a_kind_tag() {
        let local = LayerOrigin::Local {
            path: "layers/x".into(),
        };
        assert_eq!(
            serde_json::to_string(&local).unwrap(),
            r#"{"kind":"local","path":"layers/x"}"#
        );
        let remote = LayerOrigin::Remote {
            repo: "github.com/o/r".into(),
            reference: "v1".into(),
            commit: "c".into(),
            path: "layers/x".into(),
        };
        assert_eq!(
            serde_json::to_string(&remote).unwrap(),
            r#"{"kind":"remote","repo":"github.com/o/r","reference":"v1","commit":"c","path":"layers/x"}"#
        );
    }
}
