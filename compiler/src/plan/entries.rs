//! Stage `plan`: the layer entries a step carries — a task, a repository, a service — as the IR's
//! own types, so the contract between `lower` and `render` does not move when the layer model
//! does; `lower` converts into them after applying `vars:` and normalising paths.

use serde::Serialize;

/// A source position in a YAML file, 1-based, as shown to people in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Pos {
    /// Line, starting at 1.
    pub line: u32,
    /// Column, starting at 1.
    pub column: u32,
}

/// A repository entry; which fields apply depends on the format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Repo {
    /// Repository name (file name stem / pacman section).
    pub name: Option<String>,
    /// rpm: URL of a `.repo` file; deb: archive base URL.
    pub url: Option<String>,
    /// rpm: key URL to `rpm --import`.
    pub gpgkey: Option<String>,
    /// rpm: `"false"` disables gpg checking.
    pub gpgcheck: Option<String>,
    /// rpm: URL of a release package to install first.
    pub rpm: Option<String>,
    /// deb: key URL, dearmored into `/etc/apt/keyrings/<name>.gpg`.
    pub key: Option<String>,
    /// deb: explicit `signed-by` path.
    pub signed_by: Option<String>,
    /// deb: suite (default `stable`; `/` means a flat repository).
    pub suite: Option<String>,
    /// deb: components (default `main`).
    pub components: Option<String>,
    /// deb: a PPA name for `add-apt-repository`.
    pub ppa: Option<String>,
    /// pac: `Server =` URL.
    pub server: Option<String>,
    /// pac: `SigLevel =` (default `Optional TrustAll`).
    pub siglevel: Option<String>,
}

/// One entry of `tasks:`: exactly one verb plus modifiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    /// The verb and its own arguments.
    pub verb: TaskVerb,
    /// `user:` as written (`root`, `0`, `${USER}`, `uid:gid`, a name); `None` means root.
    pub user: Option<String>,
    /// `mode:` as an octal string such as `0755`.
    pub mode: Option<String>,
    /// `env:` exported before the task runs (file order).
    pub env: Vec<(String, String)>,
    pub comment: Option<String>,
    /// `uninstall:` — explicit teardown targets (download tasks into shared directories).
    pub uninstall: Vec<String>,
    /// Where the task's first key stands, for messages.
    pub pos: Pos,
}

/// The eight task verbs of the original, with their verb-specific fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verb", rename_all = "lowercase")]
pub enum TaskVerb {
    /// `cmd:` — raw shell, run with `bash`; the only way layer text reaches a script unquoted.
    Cmd {
        /// The shell body.
        body: String,
    },
    /// `mkdir:` — create a directory (and parents).
    Mkdir {
        /// Directory path (may use `${HOME}`, `~/`, …).
        path: String,
    },
    /// `copy:` — install a file from the layer directory.
    Copy {
        /// Source path relative to the layer's source directory.
        src: String,
        /// Destination (`to:`); defaults to `src` as in the original host renderer.
        to: Option<String>,
    },
    /// `write:` — write literal content to a file.
    Write {
        /// Destination path.
        path: String,
        content: String,
    },
    /// `link:` — create a symlink.
    Link {
        /// The link's path.
        path: String,
        /// `target:` (falls back to `to:`).
        target: String,
    },
    /// `download:` — fetch a URL, optionally extract it.
    Download {
        /// URL (may contain `${BUILD_ARCH}` / `${ARCH}`).
        url: String,
        /// `to:` destination (file for `extract: none`, directory otherwise).
        to: Option<String>,
        /// `extract:` (`tar.gz`, `tar.xz`, `tar.zst`, `zip`, `sh`, `none`); detected from the URL if absent.
        extract: Option<String>,
        /// `include:` — members to extract.
        include: Vec<String>,
        strip_components: Option<u32>,
    },
    /// `setcap:` — set (or, with empty caps, remove) file capabilities.
    Setcap {
        path: String,
        /// `caps:`; empty means strip all capabilities (`setcap -r`).
        caps: String,
    },
    /// `build:` — a marker for the container generator; a no-op here.
    Build {
        /// Usually `all`.
        what: String,
    },
}

impl TaskVerb {
    /// The verb's YAML key.
    pub fn name(&self) -> &'static str {
        match self {
            TaskVerb::Cmd { .. } => "cmd",
            TaskVerb::Mkdir { .. } => "mkdir",
            TaskVerb::Copy { .. } => "copy",
            TaskVerb::Write { .. } => "write",
            TaskVerb::Link { .. } => "link",
            TaskVerb::Download { .. } => "download",
            TaskVerb::Setcap { .. } => "setcap",
            TaskVerb::Build { .. } => "build",
        }
    }
}

/// What a `download:` does with what it fetched: `tar.gz`, `tar.xz`, `tar.zst`, `zip`, `sh` (run
/// it) or `none` (keep the file at `to`). An `extract:` given is normalised (`tgz`, `txz`, `tzst`;
/// empty means `none`); without one, the URL's suffix decides (any case; query and fragment
/// ignored). `None` for an `extract:` that names no known format.
pub fn download_extract(url: &str, extract: Option<&str>) -> Option<&'static str> {
    if let Some(e) = extract {
        return match e {
            "tar.gz" | "tgz" => Some("tar.gz"),
            "tar.xz" | "txz" => Some("tar.xz"),
            "tar.zst" | "tzst" => Some("tar.zst"),
            "zip" => Some("zip"),
            "sh" => Some("sh"),
            "none" | "" => Some("none"),
            _ => None,
        };
    }
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    let by_suffix = [
        (".tar.gz", "tar.gz"),
        (".tgz", "tar.gz"),
        (".tar.xz", "tar.xz"),
        (".txz", "tar.xz"),
        (".tar.zst", "tar.zst"),
        (".tzst", "tar.zst"),
        (".zip", "zip"),
        (".sh", "sh"),
    ];
    Some(
        by_suffix
            .iter()
            .find(|(suffix, _)| path.ends_with(suffix))
            .map_or("none", |(_, kind)| kind),
    )
}

/// Where a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceScope {
    /// A system unit (default).
    #[default]
    System,
    /// A user unit of the target user.
    User,
}

/// One `service:` entry: either a packaged unit to enable, or a custom service to render as a unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceEntry {
    pub name: String,
    /// `use_packaged:` — an existing unit (`.service` appended when no unit suffix is given).
    pub use_packaged: Option<String>,
    /// `exec:` — command line of a custom service (may use supervisord `%(ENV_X)s` references).
    pub exec: Option<String>,
    /// `env:` (file order).
    pub env: Vec<(String, String)>,
    /// `restart:` — `no|on-failure|always|unless-stopped`.
    pub restart: Option<String>,
    pub working_directory: Option<String>,
    /// `user:` — the account the service runs as.
    pub user: Option<String>,
    /// `after:` units.
    pub after: Vec<String>,
    /// `before:` units.
    pub before: Vec<String>,
    /// `stdout:` — log destination.
    pub stdout: Option<String>,
    /// `stop_timeout:` seconds.
    pub stop_timeout: Option<String>,
    pub scope: ServiceScope,
    pub enable: bool,
    /// `overrides:` — drop-in env/after/exec for packaged units.
    pub overrides: Option<ServiceOverrides>,
    /// supervisord lifecycle keys (`kind`, `events`, `auto_start`, `start_retries`, `start_secs`,
    /// `stop_signal`, `exit_codes`, `priority`) kept verbatim; only some translate to systemd.
    pub supervisord: Vec<(String, String)>,
    /// Where the entry starts.
    pub pos: Pos,
}

/// `overrides:` of a service entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceOverrides {
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Extra ordering.
    pub after: Vec<String>,
    /// Replacement command line.
    pub exec: Option<String>,
}
