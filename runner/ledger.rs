//! Stage `runner`, ledger (target side, read-only here): reads the records `run.sh` keeps in root's
//! ledger, `/var/lib/overthink/installed/<user>/`, as root in one command over the open
//! connection, and compares them with a bundle's manifest (`ov status`). The copy in the user's
//! home is a view for other tools; nothing here reads it.
//! Invariant: one channel per read whatever the number of layers; unknown record fields are
//! kept (`extra`) so newer runtimes' records still read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::archive::ManifestLayer;
use crate::exit::{Exit, HasExit};
use crate::ssh::exec::{As, ExecError, Executor, Input, NullSink, Request};

/// `deploys/<deploy-id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRecord {
    /// Deploy id.
    #[serde(default)]
    pub deploy_id: String,
    /// Deploy name (`vm:arch`).
    #[serde(default)]
    pub deploy: String,
    /// Target (`vm:arch`, `host`).
    #[serde(default)]
    pub target: String,
    /// Layers in install order.
    #[serde(default)]
    pub layers: Vec<String>,
    /// sha256 of the bundle that wrote it.
    #[serde(default)]
    pub bundle_sha256: String,
    /// When.
    #[serde(default)]
    pub deployed_at: String,
    /// Which `ov`.
    #[serde(default)]
    pub ov_version: String,
    /// Anything else.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `layers/<layer>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Layer name.
    #[serde(default)]
    pub layer: String,
    /// Content digest of what was applied.
    #[serde(default)]
    pub digest: String,
    /// Deploy ids that need this layer (refcount).
    #[serde(default)]
    pub deployed_by: Vec<String>,
    /// When it was applied.
    #[serde(default)]
    pub deployed_at: String,
    /// `failed` when a step of the layer failed: the record keeps what the steps did so far (for
    /// undo and the next run), and the layer is not applied; absent when it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Anything else (steps, reverse ops, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Everything the ledger holds for one user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    /// The user's home on the target.
    pub home: String,
    /// Root's ledger directory for the user, `/var/lib/overthink/installed/<user>`.
    pub dir: String,
    /// Deploy records by id.
    pub deploys: BTreeMap<String, DeployRecord>,
    /// Layer records by name.
    pub layers: BTreeMap<String, LayerRecord>,
    /// The raw text of each layer record (teardown checks nothing changed in between).
    pub layer_texts: BTreeMap<String, String>,
    /// Files that did not parse: (path, message).
    pub unreadable: Vec<(String, String)>,
    /// The bundle runtime's teardown script is kept in the ledger (`undo.sh`).
    pub has_undo_script: bool,
}

impl Ledger {
    /// Deploy records whose `target` or `deploy` is `name`.
    pub fn deploys_for(&self, name: &str) -> Vec<&DeployRecord> {
        self.deploys
            .values()
            .filter(|d| d.target == name || d.deploy == name)
            .collect()
    }

    /// The layers deploy `id` has applied, in its install order (from its record, else from
    /// the layer records that name it).
    pub fn applied_layers(&self, id: &str) -> Vec<String> {
        if let Some(d) = self.deploys.get(id) {
            return d
                .layers
                .iter()
                .filter(|l| {
                    self.layers
                        .get(*l)
                        .is_some_and(|r| r.deployed_by.iter().any(|x| x == id))
                })
                .cloned()
                .collect();
        }
        self.layers
            .values()
            .filter(|r| r.deployed_by.iter().any(|x| x == id))
            .map(|r| r.layer.clone())
            .collect()
    }
}

/// Reading the ledger failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// No connection.
    #[error(transparent)]
    Connect(#[from] crate::ssh::error::ConnectError),
    /// The command failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The user does not exist there.
    #[error("user `{user}` does not exist on {target}")]
    NoUser {
        /// The user.
        user: String,
        /// Target description.
        target: String,
    },
    /// The answer was garbled.
    #[error("cannot read the ledger on {target}: {reason}")]
    Garbled {
        /// Target description.
        target: String,
        /// What was wrong.
        reason: String,
    },
}

impl HasExit for LedgerError {
    fn exit(&self) -> Exit {
        match self {
            LedgerError::Connect(e) => e.exit(),
            LedgerError::Exec(e) => e.exit(),
            LedgerError::NoUser { .. } => Exit::InvalidInput,
            LedgerError::Garbled { .. } => Exit::Other,
        }
    }
}

/// Where root keeps the ledgers on the target (one directory per account).
pub const ROOT_LEDGERS: &str = "/var/lib/overthink/installed";

/// The read script (as root): NUL-framed `name\0content\0` pairs (JSON never holds a NUL). It
/// reads root's ledger only when every directory on its path is root's and closed to others.
const READ_SCRIPT: &str = r#"set -u
case $1 in [A-Za-z0-9_]*) ;; *) exit 3 ;; esac
case $1 in *[!A-Za-z0-9._-]*) exit 3 ;; esac
home=$(getent passwd "$1" | cut -d: -f6)
[ -n "$home" ] || exit 3
d=/var/lib/overthink/installed/$1
printf 'home\0%s\0dir\0%s\0' "$home" "$d"
[ -d "$d" ] || exit 0
for p in /var /var/lib /var/lib/overthink /var/lib/overthink/installed "$d"; do
  s=$(stat -c '%u %a %F' -- "$p") || exit 4
  case $s in "0 "*" directory") ;; *) echo "$p is not a directory of root's" >&2; exit 4 ;; esac
  m=${s#0 }; m=${m%% *}
  if [ $((8#$m & 8#022)) != 0 ]; then echo "$p can be written by other accounts" >&2; exit 4; fi
done
[ -f "$d/undo.sh" ] && printf 'undo.sh\0\0'
for f in "$d"/deploys/*.json "$d"/layers/*.json; do
  [ -f "$f" ] || continue
  printf '%s\0' "${f#"$d"/}"
  cat -- "$f" </dev/null
  printf '\0'
done
"#;

/// Read the ledger of `user` on the target in one command.
pub fn read_ledger(exec: &mut dyn Executor, user: &str) -> Result<Ledger, LedgerError> {
    let target = exec.describe();
    let out = exec.exec(
        Request {
            argv: vec!["bash".into(), "-s".into(), "--".into(), user.to_string()],
            who: As::Root,
            stdin: Input::Bytes(READ_SCRIPT.as_bytes()),
            capture_stdout: true,
        },
        &mut NullSink,
    )?;
    if out.status == Some(3) {
        return Err(LedgerError::NoUser {
            user: user.to_string(),
            target,
        });
    }
    exec.check("read the ledger", &out)?;
    parse_framed(&out.stdout).map_err(|reason| LedgerError::Garbled { target, reason })
}

/// The ledger printed at the end of the push's run channel, so no separate session reads it
/// back: a bash function for the bootstrap (`ov_ledger_dump USER`, run as root after run.sh, with
/// `ov_ledgers` set to [`ROOT_LEDGERS`]).
/// Each file is one `file NAME` line and one `l TEXT` line per line of it (the newlines of the
/// file become line breaks, one substitution in bash: no process per file), so the text
/// [`LedgerLines`] rebuilds is byte for byte the file's.
pub const DUMP_FUNCTION: &str = r#"ov_ledger_dump() {
  local pw home d f text n=$'\n'
  [[ $1 =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*$ ]] || return 0
  pw=$(getent passwd "$1") || return 0
  IFS=: read -r _ _ _ _ _ home _ <<<"$pw"
  [ -n "$home" ] || return 0
  d=${ov_ledgers:?}/$1
  printf '::ov-ledger:: begin\n::ov-ledger:: home %s\n::ov-ledger:: dir %s\n' "$home" "$d"
  [ -f "$d/undo.sh" ] && printf '::ov-ledger:: undo.sh\n'
  for f in "$d"/deploys/*.json "$d"/layers/*.json; do
    [ -f "$f" ] || continue
    text=
    IFS= read -r -d '' text <"$f" || [ -n "$text" ] || true
    printf '::ov-ledger:: file %s\n::ov-ledger:: l %s\n' "${f#"$d"/}" "${text//"$n"/"$n::ov-ledger:: l "}"
  done
  printf '::ov-ledger:: end\n'
}
"#;

/// Rebuilds the ledger from the `::ov-ledger::` lines of [`DUMP_FUNCTION`] (in the framing
/// [`parse_framed`] reads). Only a dump that reached its `end` line counts; a `begin` starts over.
#[derive(Debug, Default)]
pub struct LedgerLines {
    framed: Vec<u8>,
    in_file: bool,
    first_line: bool,
    done: Option<Vec<u8>>,
}

impl LedgerLines {
    /// What every dump line starts with.
    pub const PREFIX: &'static str = "::ov-ledger:: ";

    /// Take one output line; false when it is not a dump line (it is output like any other).
    pub fn feed(&mut self, line: &str) -> bool {
        let Some(rest) = line.strip_prefix(Self::PREFIX) else {
            return false;
        };
        let (what, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        match what {
            "begin" => {
                // Only the last dump counts (a step could print these lines too).
                self.framed.clear();
                self.in_file = false;
                self.done = None;
            }
            "home" | "dir" => {
                self.framed.extend_from_slice(what.as_bytes());
                self.framed.push(0);
                self.framed.extend_from_slice(arg.as_bytes());
                self.framed.push(0);
            }
            "undo.sh" => self.framed.extend_from_slice(b"undo.sh\0\0"),
            "file" => {
                self.close_file();
                self.framed.extend_from_slice(arg.as_bytes());
                self.framed.push(0);
                self.in_file = true;
                self.first_line = true;
            }
            "l" if self.in_file => {
                if !self.first_line {
                    self.framed.push(b'\n');
                }
                // A NUL would end the frame early; ov's records never hold one.
                self.framed
                    .extend(arg.bytes().map(|b| if b == 0 { b' ' } else { b }));
                self.first_line = false;
            }
            "end" => {
                self.close_file();
                self.done = Some(std::mem::take(&mut self.framed));
            }
            _ => {}
        }
        true
    }

    fn close_file(&mut self) {
        if self.in_file {
            self.framed.push(0);
            self.in_file = false;
        }
    }

    /// The ledger, if a whole dump arrived.
    pub fn ledger(&self) -> Option<Result<Ledger, String>> {
        self.done.as_deref().map(parse_framed)
    }
}

/// Parse the read script's output.
pub fn parse_framed(bytes: &[u8]) -> Result<Ledger, String> {
    let mut parts = bytes.split(|b| *b == 0);
    let mut ledger = Ledger::default();
    match (parts.next(), parts.next()) {
        (Some(b"home"), Some(h)) => {
            ledger.home = String::from_utf8_lossy(h).into_owned();
        }
        _ => return Err("missing home".into()),
    }
    while let Some(name) = parts.next() {
        if name.is_empty() {
            // The trailing empty part after the last NUL.
            break;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if name == "undo.sh" {
            ledger.has_undo_script = true;
            parts.next();
            continue;
        }
        if name == "dir" {
            ledger.dir = parts
                .next()
                .map(|d| String::from_utf8_lossy(d).into_owned())
                .unwrap_or_default();
            continue;
        }
        let body = parts
            .next()
            .ok_or_else(|| format!("truncated at `{name}`"))?;
        let text = String::from_utf8_lossy(body).into_owned();
        if let Some(file) = name.strip_prefix("deploys/") {
            match serde_json::from_str::<DeployRecord>(&text) {
                Ok(mut d) => {
                    if d.deploy_id.is_empty() {
                        d.deploy_id = file.trim_end_matches(".json").to_string();
                    }
                    ledger.deploys.insert(d.deploy_id.clone(), d);
                }
                Err(e) => ledger.unreadable.push((name, e.to_string())),
            }
        } else if let Some(file) = name.strip_prefix("layers/") {
            let layer = file.trim_end_matches(".json").to_string();
            match serde_json::from_str::<LayerRecord>(&text) {
                Ok(mut r) => {
                    if r.layer.is_empty() {
                        r.layer = layer.clone();
                    }
                    ledger.layer_texts.insert(layer.clone(), text);
                    ledger.layers.insert(layer, r);
                }
                Err(e) => ledger.unreadable.push((name, e.to_string())),
            }
        }
    }
    Ok(ledger)
}

/// How one layer of a manifest compares with the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerMatch {
    /// Applied with the same digest.
    Applied,
    /// Applied, but with another digest.
    Differs {
        /// Digest on the target.
        recorded: String,
    },
    /// Recorded as failed: some steps ran, the layer is not applied.
    Failed,
    /// Not recorded on the target.
    Missing,
}

/// `ov status`: what the target records, and how it compares with a manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// Target description.
    pub target: String,
    /// Ledger directory on the target.
    pub ledger: String,
    /// Every layer recorded: name, digest, time, deployed_by.
    pub layers: Vec<LayerRecord>,
    /// Deploy records.
    pub deploys: Vec<DeployRecord>,
    /// Per manifest layer (when a manifest was given).
    pub comparison: Vec<(String, LayerMatch)>,
    /// Layers recorded for the manifest's deploy but not in the manifest.
    pub extra: Vec<String>,
}

impl StatusReport {
    /// True when every manifest layer is applied with its digest.
    pub fn up_to_date(&self) -> bool {
        self.comparison
            .iter()
            .all(|(_, m)| matches!(m, LayerMatch::Applied))
    }
}

/// Compare a ledger with manifest layers (`deploy_id`: the manifest's deploy, for extras).
pub fn compare(
    target: &str,
    ledger: &Ledger,
    manifest: Option<(&[ManifestLayer], Option<&str>)>,
) -> StatusReport {
    let mut comparison = Vec::new();
    let mut extra = Vec::new();
    if let Some((layers, deploy_id)) = manifest {
        for l in layers {
            let m = match ledger.layers.get(&l.name) {
                None => LayerMatch::Missing,
                Some(r) if r.result.as_deref() == Some("failed") => LayerMatch::Failed,
                Some(r) if r.digest == l.digest => LayerMatch::Applied,
                Some(r) => LayerMatch::Differs {
                    recorded: r.digest.clone(),
                },
            };
            comparison.push((l.name.clone(), m));
        }
        if let Some(id) = deploy_id {
            for name in ledger.applied_layers(id) {
                if !layers.iter().any(|l| l.name == name) {
                    extra.push(name);
                }
            }
        }
    }
    StatusReport {
        target: target.to_string(),
        ledger: ledger.dir.clone(),
        layers: ledger.layers.values().cloned().collect(),
        deploys: ledger.deploys.values().cloned().collect(),
        comparison,
        extra,
    }
}

/// `ov status` over SSH: read the ledger of `user` (default: the login user) and compare it
/// with `bundle`'s manifest when given. One connection, one channel.
pub fn status(
    target: crate::ssh::endpoint::Target,
    wait: crate::ssh::connect::WaitOptions,
    user: Option<&str>,
    bundle: Option<&crate::archive::BundleInfo>,
    progress: &mut dyn crate::ui::progress::Progress,
) -> Result<StatusReport, LedgerError> {
    let mut exec = crate::ssh::master::SshExecutor::connect(target, wait, progress)?;
    let result = status_with(&mut exec, user, bundle);
    let _ = exec.close();
    result
}

/// `ov status` over an open executor.
pub fn status_with(
    exec: &mut dyn Executor,
    user: Option<&str>,
    bundle: Option<&crate::archive::BundleInfo>,
) -> Result<StatusReport, LedgerError> {
    let user = user
        .map(str::to_string)
        .or_else(|| bundle.and_then(|b| b.user.clone()))
        .unwrap_or_else(|| exec.login_user().to_string());
    let ledger = read_ledger(exec, &user)?;
    Ok(compare(
        &exec.describe(),
        &ledger,
        bundle.map(|b| (b.layers.as_slice(), b.deploy_id.as_deref())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_lines_rebuild_the_files_byte_for_byte() {
        let t = tempfile::tempdir().expect("tempdir");
        let home = t.path().join("home");
        let d = t.path().join("ledgers/u");
        std::fs::create_dir_all(d.join("layers")).expect("mkdir");
        std::fs::create_dir_all(d.join("deploys")).expect("mkdir");
        let a = "{\n  \"layer\": \"a\",\n  \"deployed_by\": [\"d1\"]\n}\n";
        let b = "{\"layer\":\"b\",\"digest\":\"x & y\\\\n\"}"; // no final newline
        let dep = "{\"deploy_id\":\"d1\",\"layers\":[\"a\"]}\n\n";
        std::fs::write(d.join("layers/a.json"), a).expect("write");
        std::fs::write(d.join("layers/b.json"), b).expect("write");
        std::fs::write(d.join("deploys/d1.json"), dep).expect("write");
        std::fs::write(d.join("undo.sh"), "").expect("write");
        // getent stand-in: the account `u` lives in the temporary home.
        let bin = t.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir");
        let getent = bin.join("getent");
        std::fs::write(
            &getent,
            format!("#!/bin/sh\necho 'u:x:1:1::{}:/bin/sh'\n", home.display()),
        )
        .expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&getent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{DUMP_FUNCTION}\necho '::ov-ledger:: end'\nov_ledgers={}\nov_ledger_dump u",
                t.path().join("ledgers").display()
            ))
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .expect("bash");
        assert!(out.status.success());
        let mut lines = LedgerLines::default();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            assert!(lines.feed(line), "{line}");
        }
        assert!(!lines.feed("::ov:: end result=ok"));
        let l = lines.ledger().expect("a whole dump").expect("parses");
        assert_eq!(l.home, home.display().to_string());
        assert_eq!(l.dir, d.display().to_string());
        assert!(l.has_undo_script);
        assert_eq!(l.layer_texts["a"], a);
        assert_eq!(l.layer_texts["b"], b);
        assert_eq!(l.layers["b"].digest, "x & y\\n");
        assert_eq!(l.applied_layers("d1"), vec!["a".to_string()]);
        // A dump cut short (no `end`) does not count, and a new `begin` drops an earlier dump.
        assert!(lines.feed("::ov-ledger:: begin"));
        assert!(lines.ledger().is_none());
        let mut cut = LedgerLines::default();
        cut.feed("::ov-ledger:: begin");
        cut.feed("::ov-ledger:: home /h");
        assert!(cut.ledger().is_none());
    }

    #[test]
    fn parses_framed_output() {
        let mut b = Vec::new();
        b.extend_from_slice(b"home\0/home/u\0dir\0/var/lib/overthink/installed/u\0undo.sh\0\0");
        b.extend_from_slice(b"deploys/d1.json\0{\"deploy_id\":\"d1\",\"target\":\"vm:x\",\"layers\":[\"a\",\"b\"],\"new_field\":1}\0");
        b.extend_from_slice(
            b"layers/a.json\0{\"layer\":\"a\",\"digest\":\"x\",\"deployed_by\":[\"d1\"]}\0",
        );
        b.extend_from_slice(b"layers/b.json\0not json\0");
        let l = parse_framed(&b).expect("parse");
        assert_eq!(l.dir, "/var/lib/overthink/installed/u");
        assert!(l.has_undo_script);
        assert_eq!(l.deploys["d1"].extra["new_field"], 1);
        assert_eq!(l.applied_layers("d1"), vec!["a".to_string()]);
        assert_eq!(l.unreadable.len(), 1);
        assert_eq!(l.deploys_for("vm:x").len(), 1);

        let manifest = [
            ManifestLayer {
                name: "a".into(),
                digest: "x".into(),
            },
            ManifestLayer {
                name: "c".into(),
                digest: "z".into(),
            },
        ];
        let s = compare("t", &l, Some((&manifest, Some("d1"))));
        assert_eq!(
            s.comparison,
            vec![
                ("a".to_string(), LayerMatch::Applied),
                ("c".to_string(), LayerMatch::Missing)
            ]
        );
        assert!(!s.up_to_date());
    }

    #[test]
    fn read_script_is_valid_bash() {
        let st = std::process::Command::new("bash")
            .args(["-n", "-c", READ_SCRIPT])
            .status()
            .expect("bash");
        assert!(st.success());
    }
}
