//! Stages `load` and `plan` (shared): the entries a layer declares — a task, a repository, a
//! service — defined once. `layer_parse` builds them from `layer.yml` as written; `lower` applies
//! the layer's `vars:`, normalises paths and puts them into plan steps; `render` reads them from
//! the plan. The IR does not import the layer model: both use this vocabulary, so the two cannot
//! drift apart, and the serialised form is the plan's (`ov plan --json`).
//! Invariant: nothing here reads files or decides anything; the docs say what each field means
//! in a layer and what the scripts do with it.

use serde::Serialize;

/// A source position in a YAML file, 1-based: shown in error messages, and kept in a plan so a
/// step can be traced to its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Pos {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

/// A repository of a `prepare` step, holding only the parts that need the network or edit a
/// shared file (what one file written at compile time covers is a `RepoChange` step instead).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Repo {
    /// Stem of the repository and keyring files, or the pacman section; a PPA has none.
    pub name: Option<String>,
    /// rpm: a `.repo` file to download; deb: the archive, absent when a `RepoChange` wrote the
    /// sources file (the step then only fetches `key`).
    pub url: Option<String>,
    /// rpm: a key the step imports with `rpm --import`.
    pub gpgkey: Option<String>,
    /// rpm: `false`, `0` or `no` keeps gpg checking off, for the install too.
    pub gpgcheck: Option<String>,
    /// rpm: a release package installed before the packages.
    pub rpm: Option<String>,
    /// deb: a key the step fetches and dearmors to `signed_by`; pac: a key to receive and sign.
    pub key: Option<String>,
    /// deb: the keyring the sources entry names (`/etc/apt/keyrings/<name>.gpg` unless given).
    pub signed_by: Option<String>,
    /// deb: the suite, `stable` when absent; `/` is a flat repository.
    pub suite: Option<String>,
    /// deb: the components, `main` when absent.
    pub components: Option<String>,
    /// deb: a PPA the step adds with `add-apt-repository`.
    pub ppa: Option<String>,
    /// pac: the `Server =` line of the section the step appends to `/etc/pacman.conf`.
    pub server: Option<String>,
    /// pac: its `SigLevel =`, `Optional TrustAll` when absent.
    pub siglevel: Option<String>,
}

/// What a `Task` step runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    /// The verb, with the layer's `vars:` applied to its paths and URLs.
    pub verb: TaskVerb,
    /// The account as the layer named it; the step's `run_as` is what the scripts act on.
    pub user: Option<String>,
    /// Octal mode of what the task creates (`0755`).
    pub mode: Option<String>,
    /// Exported before a `cmd:` body runs: the layer's `vars:`, then the task's own `env:`.
    pub env: Vec<(String, String)>,
    /// The layer's note on the task; not rendered.
    pub comment: Option<String>,
    /// The paths the layer said undo the task; the step's `reverse` is what teardown uses.
    pub uninstall: Vec<String>,
    /// Where the task stands in `layer.yml`.
    pub pos: Pos,
}

/// A task's verb with its arguments; paths are as the scripts resolve them on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verb", rename_all = "lowercase")]
pub enum TaskVerb {
    /// Raw shell, run by bash in a subshell; the only layer text that reaches a script unquoted.
    Cmd {
        /// The shell text; `${OV_CTX}` is the layer's payload directory.
        body: String,
    },
    /// A directory, made with its parents.
    Mkdir {
        /// Where.
        path: String,
    },
    /// A payload file installed on the target (lowered to a `File` step, never run as a task).
    Copy {
        /// Relative to the layer directory.
        src: String,
        /// Destination; `src` when absent.
        to: Option<String>,
    },
    /// A file written with literal text.
    Write {
        /// Where.
        path: String,
        /// Its whole text.
        content: String,
    },
    /// A symbolic link.
    Link {
        /// The link itself.
        path: String,
        /// What it points at (a relative target is relative to the link's directory).
        target: String,
    },
    /// A fetched URL, kept, extracted or run as [`download_extract`] says.
    Download {
        /// What to fetch.
        url: String,
        /// The file (`none`) or directory (an archive) it lands in; absent only for `sh`.
        to: Option<String>,
        /// How to treat it; from the URL's suffix when absent.
        extract: Option<String>,
        /// Archive members to extract (all when empty).
        include: Vec<String>,
        /// Leading path components dropped from a tar archive's members.
        strip_components: Option<u32>,
    },
    /// File capabilities set, or removed when `caps` is empty.
    Setcap {
        /// The file.
        path: String,
        /// In `setcap` syntax (`cap_net_bind_service=+ep`).
        caps: String,
    },
    /// A container-build marker; the step is skipped on a host.
    Build {
        /// What the layer asked to build (usually `all`).
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

/// Which systemd manager a service's unit belongs to (the step's `scope` says the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceScope {
    /// The system manager.
    #[default]
    System,
    /// The target user's manager (`systemctl --user`).
    User,
}

/// A service as a `ServicePackaged` step (a drop-in for `overrides`) or a `ServiceCustom` step (a
/// whole unit) renders it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceEntry {
    /// The service's name in the layer; a custom unit is `ov-<layer>-<name>.service`.
    pub name: String,
    /// The unit the distro ships (a packaged service).
    pub use_packaged: Option<String>,
    /// A supervisord command line, split as supervisord does into `ExecStart=`.
    pub exec: Option<String>,
    /// `Environment=` lines of the unit.
    pub env: Vec<(String, String)>,
    /// `Restart=`; `unless-stopped` becomes `always`.
    pub restart: Option<String>,
    /// `WorkingDirectory=`.
    pub working_directory: Option<String>,
    /// `User=` of a system unit (the target user when absent, none for `root`); a user unit
    /// runs in the target user's manager.
    pub user: Option<String>,
    /// `After=` units.
    pub after: Vec<String>,
    /// `Before=` units.
    pub before: Vec<String>,
    /// Where standard output is appended (`StandardOutput=append:`) when an absolute path.
    pub stdout: Option<String>,
    /// `TimeoutStopSec=`, in seconds.
    pub stop_timeout: Option<String>,
    /// The manager the unit belongs to.
    pub scope: ServiceScope,
    /// Whether the step enables (and starts) the unit.
    pub enable: bool,
    /// What a packaged service's drop-in changes.
    pub overrides: Option<ServiceOverrides>,
    /// supervisord keys as written; `stop_signal` and `exit_codes` become unit settings, the
    /// rest a comment in the unit.
    pub supervisord: Vec<(String, String)>,
    /// Where the entry stands in `layer.yml`.
    pub pos: Pos,
}

/// The drop-in of a packaged service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceOverrides {
    /// `Environment=` lines of the drop-in, after the entry's own `env`.
    pub env: Vec<(String, String)>,
    /// Added `After=` units.
    pub after: Vec<String>,
    /// A replacement `ExecStart=`.
    pub exec: Option<String>,
}
