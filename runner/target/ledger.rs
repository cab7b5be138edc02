//! Stage `runner`, ledger (target side, read-only here): reads the records `run.sh` keeps in root's
//! ledger, `/var/lib/overthink/installed/<user>/`, as root in one command over the open
//! connection, and compares them with a bundle's manifest (`ov status`). The copy in the user's
//! home is a view for other tools; nothing here reads it.
//! Invariant: one channel per read whatever the number of layers; unknown record fields are
//! kept (`extra`) so newer runtimes' records still read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::exit::{Exit, HasExit};
use crate::ssh::exec::{As, ExecError, Executor, Input, NullSink, Request};
use ov_compiler::manifest::Manifest;
use ov_compiler::remote;
use ov_compiler::render::Engine;

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
    /// `ID=DIGEST`: the digest each deploy applied — two deploys may compile a shared layer
    /// differently (other gates); absent in records from before it was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deploy_digests: Vec<String>,
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

impl LayerRecord {
    /// The digest deploy `id` applied: its own `deploy_digests` entry, else `digest`.
    pub fn digest_for(&self, id: &str) -> &str {
        self.deploy_digests
            .iter()
            .find_map(|e| e.strip_prefix(id).and_then(|r| r.strip_prefix('=')))
            .unwrap_or(&self.digest)
    }
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
        user: String,
        /// Target description.
        target: String,
    },
    /// The read script could not be written (a value no shell string can hold).
    #[error("cannot write the script that reads the ledger")]
    Script(#[from] ov_compiler::render::RenderError),
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
            LedgerError::NoUser { .. } | LedgerError::Script(_) => Exit::InvalidInput,
            LedgerError::Garbled { .. } => Exit::Other,
        }
    }
}

/// Where root keeps the ledgers on the target (one directory per account).
pub const ROOT_LEDGERS: &str = "/var/lib/overthink/installed";

/// Read the ledger of `user` on the target in one command: `remote/ledger-read.sh.j2` as root,
/// whose `::ov-ledger::` lines [`LedgerLines`] reads (the lines the push bootstrap prints).
pub fn read_ledger(exec: &mut dyn Executor, user: &str) -> Result<Ledger, LedgerError> {
    read_ledger_with(exec, &Engine::new(None)?, user)
}

/// [`read_ledger`] with `engine`'s templates (`--templates DIR` may have replaced them).
pub fn read_ledger_with(
    exec: &mut dyn Executor,
    engine: &Engine,
    user: &str,
) -> Result<Ledger, LedgerError> {
    let target = exec.describe();
    let script = remote::render_with(
        engine,
        &remote::LedgerRead {
            user,
            ledgers: ROOT_LEDGERS,
        },
    )?;
    let out = exec.exec(
        Request {
            argv: vec!["bash".into(), "-s".into()],
            who: As::Root,
            stdin: Input::Bytes(script.as_bytes()),
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
    parse_dump(&String::from_utf8_lossy(&out.stdout))
        .map_err(|reason| LedgerError::Garbled { target, reason })
}

/// Rebuilds the ledger from the `::ov-ledger::` lines `remote/ledger.sh.j2` prints: one framing
/// for both the push's run channel (where output arrives line by line, beside `run.sh`'s own
/// lines) and a read of its own. Each record line is an `l` line of its own, so a record's text
/// comes back byte for byte whatever it holds (a line that looks like a dump line included).
/// Only a dump that reached its `end` line counts; a `begin` starts over.
#[derive(Debug, Default)]
pub struct LedgerLines {
    current: Dump,
    in_file: bool,
    first_line: bool,
    done: Option<Dump>,
}

/// One dump as it arrives: the account's home, the ledger directory, whether it keeps `undo.sh`,
/// and each record as (path below the ledger directory, text).
#[derive(Debug, Default)]
struct Dump {
    home: Option<String>,
    dir: String,
    has_undo_script: bool,
    files: Vec<(String, String)>,
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
                self.current = Dump::default();
                self.in_file = false;
                self.done = None;
            }
            "home" => self.current.home = Some(arg.to_string()),
            "dir" => self.current.dir = arg.to_string(),
            "undo.sh" => self.current.has_undo_script = true,
            "file" => {
                self.current.files.push((arg.to_string(), String::new()));
                self.in_file = true;
                self.first_line = true;
            }
            "l" if self.in_file => {
                if let Some((_, text)) = self.current.files.last_mut() {
                    if !self.first_line {
                        text.push('\n');
                    }
                    text.push_str(arg);
                }
                self.first_line = false;
            }
            "end" => {
                self.in_file = false;
                self.done = Some(std::mem::take(&mut self.current));
            }
            _ => {}
        }
        true
    }

    /// The ledger, if a whole dump arrived.
    pub fn ledger(&self) -> Option<Result<Ledger, String>> {
        self.done.as_ref().map(Dump::ledger)
    }
}

impl Dump {
    fn ledger(&self) -> Result<Ledger, String> {
        let mut ledger = Ledger {
            home: self.home.clone().ok_or("missing home")?,
            dir: self.dir.clone(),
            has_undo_script: self.has_undo_script,
            ..Ledger::default()
        };
        for (name, text) in &self.files {
            if let Some(file) = name.strip_prefix("deploys/") {
                match serde_json::from_str::<DeployRecord>(text) {
                    Ok(mut d) => {
                        if d.deploy_id.is_empty() {
                            d.deploy_id = file.trim_end_matches(".json").to_string();
                        }
                        ledger.deploys.insert(d.deploy_id.clone(), d);
                    }
                    Err(e) => ledger.unreadable.push((name.clone(), e.to_string())),
                }
            } else if let Some(file) = name.strip_prefix("layers/") {
                let layer = file.trim_end_matches(".json").to_string();
                match serde_json::from_str::<LayerRecord>(text) {
                    Ok(mut r) => {
                        if r.layer.is_empty() {
                            r.layer = layer.clone();
                        }
                        ledger.layer_texts.insert(layer.clone(), text.clone());
                        ledger.layers.insert(layer, r);
                    }
                    Err(e) => ledger.unreadable.push((name.clone(), e.to_string())),
                }
            }
        }
        Ok(ledger)
    }
}

/// Parse a whole dump (the output of `remote/ledger-read.sh.j2`).
pub fn parse_dump(text: &str) -> Result<Ledger, String> {
    let mut lines = LedgerLines::default();
    // Split on `\n` alone: a record's `\r` is its own.
    for line in text.split('\n') {
        lines.feed(line);
    }
    lines
        .ledger()
        .unwrap_or_else(|| Err("the answer ended before its `end` line".into()))
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

/// Compare a ledger with a bundle's manifest (its layers; its deploy, for extras).
pub fn compare(target: &str, ledger: &Ledger, manifest: Option<&Manifest>) -> StatusReport {
    let mut comparison = Vec::new();
    let mut extra = Vec::new();
    if let Some(m) = manifest {
        let layers = &m.layers;
        for l in layers {
            let m = match ledger.layers.get(&l.name) {
                None => LayerMatch::Missing,
                Some(r) if r.result.as_deref() == Some("failed") => LayerMatch::Failed,
                Some(r) if r.digest_for(&m.deploy.id) == l.digest => LayerMatch::Applied,
                Some(r) => LayerMatch::Differs {
                    recorded: r.digest_for(&m.deploy.id).to_string(),
                },
            };
            comparison.push((l.name.clone(), m));
        }
        for name in ledger.applied_layers(&m.deploy.id) {
            if !layers.iter().any(|l| l.name == name) {
                extra.push(name);
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
    bundle: Option<&crate::bundle::BundleInfo>,
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
    bundle: Option<&crate::bundle::BundleInfo>,
) -> Result<StatusReport, LedgerError> {
    let user = user
        .map(str::to_string)
        .or_else(|| bundle.and_then(|b| b.manifest.deploy.user.clone()))
        .unwrap_or_else(|| exec.login_user().to_string());
    let ledger = read_ledger(exec, &user)?;
    Ok(compare(
        &exec.describe(),
        &ledger,
        bundle.map(|b| &b.manifest),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump of root's ledger of `u` under `ledgers`, by the real read script, with stand-ins
    /// for `getent` (the account lives in `home`) and `stat` (the temporary directories are not
    /// root's alone; the check itself is exercised against real directories by the push tests).
    fn dump(ledgers: &std::path::Path, home: &std::path::Path) -> String {
        use std::os::unix::fs::PermissionsExt;
        let bin = ledgers.with_file_name("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        for (tool, body) in [
            (
                "getent",
                format!("echo 'u:x:1:1::{}:/bin/sh'", home.display()),
            ),
            ("stat", "for a; do echo '0 700 directory'; done".to_string()),
        ] {
            let path = bin.join(tool);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let script = ov_compiler::remote::render(&ov_compiler::remote::LedgerRead {
            user: "u",
            ledgers: &ledgers.to_string_lossy(),
        })
        .expect("renders");
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("echo '::ov-ledger:: end'\n{script}"))
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .expect("bash");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    }

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
        let text = dump(&t.path().join("ledgers"), &home);
        let mut lines = LedgerLines::default();
        for line in text.lines() {
            assert!(lines.feed(line), "{line}");
        }
        assert!(!lines.feed("::ov:: end result=ok"));
        let l = lines.ledger().expect("a whole dump").expect("parses");
        assert_eq!(l, parse_dump(&text).expect("parses"));
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
        assert!(parse_dump("::ov-ledger:: begin\n::ov-ledger:: home /h\n").is_err());
    }

    #[test]
    fn each_deploy_compares_the_digest_it_applied_of_a_shared_layer() {
        let text = "::ov-ledger:: begin
::ov-ledger:: home /home/u
::ov-ledger:: dir /var/lib/overthink/installed/u
::ov-ledger:: file layers/a.json
::ov-ledger:: l {\"layer\":\"a\",\"digest\":\"y\",\"deployed_by\":[\"d1\",\"d2\"],\"deploy_digests\":[\"d1=x\",\"d2=y\"]}
::ov-ledger:: end
";
        let l = parse_dump(text).expect("parse");
        // d1 compiled `a` without a gate d2 opened: its own digest, not the last one applied.
        for (id, digest) in [("d1", "x"), ("d2", "y")] {
            let manifest = crate::bundle::test_manifest("vm:x", id, "u", &[("a", digest)]);
            let s = compare("t", &l, Some(&manifest));
            assert_eq!(
                s.comparison,
                vec![("a".to_string(), LayerMatch::Applied)],
                "{id}"
            );
        }
        let manifest = crate::bundle::test_manifest("vm:x", "d1", "u", &[("a", "y")]);
        assert_eq!(
            compare("t", &l, Some(&manifest)).comparison,
            vec![(
                "a".to_string(),
                LayerMatch::Differs {
                    recorded: "x".to_string()
                }
            )]
        );
        // A record from before `deploy_digests`: its `digest` for every deploy.
        let old = LayerRecord {
            deploy_digests: Vec::new(),
            ..l.layers["a"].clone()
        };
        assert_eq!(old.digest_for("d1"), "y");
    }

    #[test]
    fn parses_a_dump() {
        let text = "::ov-ledger:: begin
::ov-ledger:: home /home/u
::ov-ledger:: dir /var/lib/overthink/installed/u
::ov-ledger:: undo.sh
::ov-ledger:: file deploys/d1.json
::ov-ledger:: l {\"deploy_id\":\"d1\",\"target\":\"vm:x\",\"layers\":[\"a\",\"b\"],\"new_field\":1}
::ov-ledger:: file layers/a.json
::ov-ledger:: l {\"layer\":\"a\",\"digest\":\"x\",\"deployed_by\":[\"d1\"]}
::ov-ledger:: file layers/b.json
::ov-ledger:: l not json
::ov-ledger:: end
";
        let l = parse_dump(text).expect("parse");
        assert_eq!(l.dir, "/var/lib/overthink/installed/u");
        assert!(l.has_undo_script);
        assert_eq!(l.deploys["d1"].extra["new_field"], 1);
        assert_eq!(l.applied_layers("d1"), vec!["a".to_string()]);
        assert_eq!(l.unreadable.len(), 1);
        assert_eq!(l.deploys_for("vm:x").len(), 1);

        let manifest = crate::bundle::test_manifest("vm:x", "d1", "u", &[("a", "x"), ("c", "z")]);
        let s = compare("t", &l, Some(&manifest));
        assert_eq!(
            s.comparison,
            vec![
                ("a".to_string(), LayerMatch::Applied),
                ("c".to_string(), LayerMatch::Missing)
            ]
        );
        assert!(!s.up_to_date());
    }
}
