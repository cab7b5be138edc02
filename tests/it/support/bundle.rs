//! Test support, stand-in bundles: small archives laid out like real ones
//! (docs/bundle-runtime.md) whose `run.sh` follows the runtime contract — SHA256SUMS check,
//! ledger lock, `::ov::` progress lines, per-layer ledger records with `deployed_by` in root's
//! ledger (`/var/lib/overthink/installed/<user>/`), skip of applied layers, distinct exit codes,
//! and an `undo.sh` kept in the ledger that speaks the runtime's teardown events. They exercise
//! the transport and `ov deploy del` with layer scripts that are whatever a test needs.

use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

/// One layer of a stand-in bundle.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Name.
    pub name: String,
    /// Body of its only step script (run as root, bash, `set -euo pipefail` added).
    pub script: String,
    /// Body of its undo script.
    pub undo: String,
}

impl Layer {
    /// A layer with `script` and an undo that does nothing.
    pub fn new(name: &str, script: &str) -> Layer {
        Layer {
            name: name.to_string(),
            script: script.to_string(),
            undo: String::new(),
        }
    }

    /// Set the undo script body.
    pub fn undo(mut self, undo: &str) -> Layer {
        self.undo = undo.to_string();
        self
    }
}

/// A built stand-in bundle.
#[derive(Debug, Clone)]
pub struct Built {
    /// The archive (`<top>.tar.gz`, with `.sha256` beside it).
    pub path: PathBuf,
    /// Layer names and digests.
    pub layers: Vec<(String, String)>,
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

const LIB_SH: &str =
    "# lib.sh of the stand-in bundle\nov_as_user() { runuser -u \"$OV_USER\" -- \"$@\"; }\n";

/// The stand-in runtime. `@@...@@` placeholders are filled per bundle.
const RUN_SH: &str = r#"#!/usr/bin/env bash
# Stand-in bundle runtime for ov's transport tests (contract: docs/bundle-runtime.md).
set -uo pipefail
orig=("$@")
no_wait=0 force=0 user= bundle_sha=
while [ $# -gt 0 ]; do
  case $1 in
    --no-wait) no_wait=1 ;;
    --force) force=1 ;;
    --user) user=$2; shift ;;
    --bundle-sha256) bundle_sha=$2; shift ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$(id -u)" != 0 ]; then exec sudo -n bash "$0" "${orig[@]}" || exit 6; fi
top=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$top" || exit 3
if ! sha256sum -c --quiet --strict SHA256SUMS >/dev/null 2>&1; then
  echo "run.sh: SHA256SUMS mismatch" >&2
  echo "::ov:: end result=fail applied=0 skipped=0 msg=integrity"
  exit 3
fi
DEPLOY=@@DEPLOY@@
DEPLOY_ID=@@DEPLOY_ID@@
NLAYERS=@@N@@
user=${user:-@@USER@@}
pw=$(getent passwd "$user") || { echo "run.sh: no user $user" >&2; exit 2; }
home=$(printf '%s' "$pw" | cut -d: -f6)
uid=$(printf '%s' "$pw" | cut -d: -f3)
gid=$(printf '%s' "$pw" | cut -d: -f4)
ledger=/var/lib/overthink/installed/$user
for d in /var/lib/overthink /var/lib/overthink/installed "$ledger" "$ledger/deploys" "$ledger/layers"; do
  [ -d "$d" ] || install -d -m 0700 "$d"
done
exec 9>>"$ledger/.lock"
if [ "$no_wait" = 1 ]; then
  flock -n 9 || { echo "::ov:: end result=fail applied=0 skipped=0 msg=locked"; exit 5; }
else
  flock 9
fi
cp lib.sh "$ledger/lib.sh"
cp undo.sh "$ledger/undo.sh"
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
ids_of() { # the quoted ids of a record's deployed_by, however it is laid out
  [ -f "$1" ] || return 0
  tr -d '\n' < "$1" | sed -n 's/.*"deployed_by": *\[\([^]]*\)\].*/\1/p' | grep -o '"[^"]*"' | paste -sd, - | sed 's/,/, /g'
}
write_record() { # name digest ids
  local f=$ledger/layers/$1.json
  printf '{\n  "layer": "%s",\n  "digest": "%s",\n  "deployed_by": [%s],\n  "deployed_at": "%s"\n}\n' \
    "$1" "$2" "$3" "$(now)" > "$f.tmp" && mv -f "$f.tmp" "$f"
}
with_id() { # existing-ids → ids plus ours
  case "$1" in *"\"$DEPLOY_ID\""*) printf '%s' "$1" ;; "") printf '"%s"' "$DEPLOY_ID" ;; *) printf '%s, "%s"' "$1" "$DEPLOY_ID" ;; esac
}
echo "::ov:: begin deploy=$DEPLOY layers=$NLAYERS"
applied=0 skipped=0 n=0 done_layers=
layer() { # name digest dir
  local name=$1 digest=$2 dir=$3 rec=$ledger/layers/$1.json s st t0
  n=$((n + 1))
  if [ "$force" = 0 ] && [ -f "$rec" ] && grep -q "\"digest\": \"$digest\"" "$rec"; then
    write_record "$name" "$digest" "$(with_id "$(ids_of "$rec")")"
    echo "::ov:: layer-skip layer=$name reason=applied"
    skipped=$((skipped + 1)); done_layers="$done_layers \"$name\""
    return 0
  fi
  echo "::ov:: layer-start layer=$name n=$n of=$NLAYERS"
  local state=/var/tmp/ov-state.$$.$name
  install -d -m 0700 -o "$uid" -g "$gid" "$state"
  t0=$SECONDS
  for s in "$dir"/[0-9]*.sh; do
    echo "::ov:: script-start layer=$name script=${s##*/}"
    OV_BUNDLE=$top OV_DEPLOY=$DEPLOY OV_DEPLOY_ID=$DEPLOY_ID OV_LAYER=$name OV_USER=$user \
    OV_UID=$uid OV_GID=$gid OV_HOME=$home OV_STATE=$state OV_LEDGER=$ledger \
    BUILD_ARCH=$(uname -m) DEBIAN_FRONTEND=noninteractive bash "$s" </dev/null
    st=$?
    echo "::ov:: script-end layer=$name script=${s##*/} status=$st secs=$((SECONDS - t0))"
    if [ "$st" != 0 ]; then
      echo "::ov:: layer-fail layer=$name script=${s##*/} status=$st"
      echo "::ov:: end result=fail applied=$applied skipped=$skipped"
      rm -rf "$state"
      exit 4
    fi
  done
  rm -rf "$ledger/layers/$name.d"; mv "$state" "$ledger/layers/$name.d"
  cp "$dir/undo.sh" "$ledger/layers/$name.undo.sh"
  write_record "$name" "$digest" "$(with_id "$(ids_of "$rec")")"
  echo "::ov:: layer-done layer=$name secs=$((SECONDS - t0))"
  applied=$((applied + 1)); done_layers="$done_layers \"$name\""
}
@@LAYERS@@
list=$(printf '%s' "$done_layers" | sed 's/^ //; s/" "/", "/g')
f=$ledger/deploys/$DEPLOY_ID.json
printf '{\n  "deploy_id": "%s",\n  "deploy": "%s",\n  "target": "%s",\n  "layers": [%s],\n  "bundle_sha256": "%s",\n  "deployed_at": "%s",\n  "ov_version": "test"\n}\n' \
  "$DEPLOY_ID" "$DEPLOY" "$DEPLOY" "$list" "$bundle_sha" "$(now)" > "$f.tmp" && mv -f "$f.tmp" "$f"
echo "::ov:: end result=ok applied=$applied skipped=$skipped"
"#;

/// The stand-in teardown, kept in the ledger by the stand-in run.sh: reverse order, refcounts in
/// `deployed_by`, each layer's stored undo script as root, the managed block stripped when no layer
/// is left; the runtime's `undo-*` events and exit codes (5 locked, 7 incomplete).
const UNDO_SH: &str = r#"#!/usr/bin/env bash
# Stand-in teardown for ov's transport tests (contract: docs/bundle-runtime.md, `undo.sh`).
set -u
id= user= no_wait=0
while [ $# -gt 0 ]; do
  case $1 in
    --deploy-id) id=$2; shift ;;
    --user) user=$2; shift ;;
    --no-wait) no_wait=1 ;;
    *) echo "undo.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
pw=$(getent passwd "$user") || { echo "undo.sh: no user $user" >&2; exit 2; }
home=$(printf '%s' "$pw" | cut -d: -f6)
uid=$(printf '%s' "$pw" | cut -d: -f3)
gid=$(printf '%s' "$pw" | cut -d: -f4)
ledger=/var/lib/overthink/installed/$user
exec 9>>"$ledger/.lock"
if [ "$no_wait" = 1 ]; then flock -n 9 || exit 5; else flock 9 || exit 5; fi
rec=$ledger/deploys/$id.json
if [ ! -f "$rec" ]; then echo "::ov:: undo-end deploy_id=$id result=ok removed=0 kept=0"; exit 0; fi
items() { tr -d '\n' < "$1" | sed -n "s/.*\"$2\": *\[\([^]]*\)\].*/\1/p" | grep -o '"[^"]*"' | tr -d '"'; }
mapfile -t layers < <(items "$rec" layers)
echo "::ov:: undo-begin deploy_id=$id layers=${#layers[@]}"
fail=0 removed=0 kept=0
for ((i = ${#layers[@]} - 1; i >= 0; i--)); do
  l=${layers[i]} f=$ledger/layers/${layers[i]}.json
  [ -f "$f" ] || { echo "::ov:: undo-layer layer=$l action=gone"; continue; }
  rest=$(items "$f" deployed_by | grep -vxF -- "$id" | sed 's/.*/"&"/' | paste -sd, - | sed 's/,/, /g')
  if [ -n "$rest" ]; then
    tr -d '\n' < "$f" | sed "s/\"deployed_by\": *\[[^]]*\]/\"deployed_by\": [$rest]/" > "$f.tmp" && mv -f "$f.tmp" "$f"
    echo "::ov:: undo-layer layer=$l action=release"; kept=$((kept + 1)); continue
  fi
  echo "::ov:: undo-layer layer=$l action=teardown"
  st=0
  OV_BUNDLE=$ledger OV_STATE=$ledger/layers/$l.d OV_LAYER=$l OV_DEPLOY_ID=$id OV_USER=$user   OV_UID=$uid OV_GID=$gid OV_HOME=$home OV_LEDGER=$ledger bash "$ledger/layers/$l.undo.sh" </dev/null || st=$?
  if [ "$st" != 0 ]; then echo "::ov:: undo-fail layer=$l status=$st"; fail=1; continue; fi
  rm -rf -- "$f" "$ledger/layers/$l.undo.sh" "$ledger/layers/$l.d"
  echo "::ov:: undo-layer layer=$l action=removed"; removed=$((removed + 1))
done
[ "$fail" = 1 ] || rm -f -- "$rec"
if ! compgen -G "$ledger/layers/*.json" >/dev/null; then
  for p in "$home/.profile" "$home/.bashrc"; do
    [ -f "$p" ] || continue
    runuser -u "$user" -- awk -v b='# overthink:begin (managed by ov; do not edit inside this block)' -v e='# overthink:end'       '$0 == b { skip = 1; next } skip && $0 == e { skip = 0; next } !skip' "$p" > "$p.ov-tmp" && cat "$p.ov-tmp" > "$p"
    rm -f -- "$p.ov-tmp"
  done
fi
if [ "$fail" = 0 ]; then echo "::ov:: undo-end deploy_id=$id result=ok removed=$removed kept=$kept"; exit 0; fi
echo "::ov:: undo-end deploy_id=$id result=incomplete removed=$removed kept=$kept"; exit 7
"#;

/// Build a bundle for `deploy` (e.g. `vm:it`) into `dir`.
pub fn build(dir: &Path, deploy: &str, deploy_id: &str, user: &str, layers: &[Layer]) -> Built {
    let top = deploy.replace(':', "-");
    let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
    let mut calls = String::new();
    let mut digests = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let ldir = format!("layers/{:02}-{}", i + 1, l.name);
        let script = format!(
            "#!/usr/bin/env bash\nset -euo pipefail\n. \"$OV_BUNDLE/lib.sh\"\n{}\n",
            l.script
        );
        let undo = format!(
            "#!/usr/bin/env bash\nset -uo pipefail\n. \"$OV_BUNDLE/lib.sh\"\n{}\n",
            l.undo
        );
        let digest = sha256(format!("{script}\0{undo}").as_bytes());
        calls.push_str(&format!("layer {} {} {}\n", l.name, digest, ldir));
        digests.push((l.name.clone(), digest));
        files.push((format!("{ldir}/01-system.sh"), script.into_bytes(), 0o755));
        files.push((format!("{ldir}/undo.sh"), undo.into_bytes(), 0o755));
    }
    let run = RUN_SH
        .replace("@@DEPLOY@@", deploy)
        .replace("@@DEPLOY_ID@@", deploy_id)
        .replace("@@N@@", &layers.len().to_string())
        .replace("@@USER@@", user)
        .replace("@@LAYERS@@", &calls);
    files.push(("run.sh".into(), run.into_bytes(), 0o755));
    files.push(("lib.sh".into(), LIB_SH.as_bytes().to_vec(), 0o644));
    files.push(("undo.sh".into(), UNDO_SH.as_bytes().to_vec(), 0o755));
    // The manifest as `ov compile` writes it: `ov` reads no other shape.
    let manifest = serde_json::json!({
        "format_version": ov_compiler::manifest::BUNDLE_FORMAT,
        "ov_version": "test",
        "deploy": {
            "name": deploy,
            "id": deploy_id,
            "target": deploy,
            "distro": ["debian"],
            "package_formats": ["deb"],
            "user": user,
            "requested": [],
        },
        "gates": {"allow_repo_changes": false, "allow_root_tasks": false, "with_services": false},
        "layers": digests.iter().enumerate().map(|(i, (n, d))| serde_json::json!({
            "name": n,
            "version": null,
            "source": format!("layers/{n}"),
            "dir": format!("layers/{:02}-{n}", i + 1),
            "digest": d,
            "scripts": [],
            "undo": format!("layers/{:02}-{n}/undo.sh", i + 1),
            "payload": [],
            "skipped": [],
            "reverse_ops": [],
        })).collect::<Vec<_>>(),
        "overridden_templates": [],
        "mtime": 0,
    });
    files.push((
        "manifest.json".into(),
        serde_json::to_vec_pretty(&manifest).expect("json"),
        0o644,
    ));
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let sums: String = files
        .iter()
        .map(|(p, b, _)| format!("{}  {p}\n", sha256(b)))
        .collect();
    files.push(("SHA256SUMS".into(), sums.into_bytes(), 0o644));
    files.sort_by(|a, b| a.0.cmp(&b.0));

    let path = dir.join(format!("{top}.tar.gz"));
    write_archive(&path, &top, &files);
    Built {
        path,
        layers: digests,
    }
}

/// Write `files` under `top/` into a gzip'd tar and its `.sha256`.
pub fn write_archive(path: &Path, top: &str, files: &[(String, Vec<u8>, u32)]) {
    let f = std::fs::File::create(path).expect("create archive");
    let mut b = tar::Builder::new(GzEncoder::new(f, flate2::Compression::default()));
    for (name, body, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, format!("{top}/{name}"), &body[..])
            .expect("append");
    }
    b.into_inner().expect("tar").finish().expect("gzip");
    rewrite_checksum(path);
}

/// Recompute `<archive>.sha256` (as `ov compile` would).
pub fn rewrite_checksum(path: &Path) {
    let bytes = std::fs::read(path).expect("read archive");
    let name = path
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    std::fs::write(
        ov::bundle::checksum_path(path),
        format!("{}  {name}\n", sha256(&bytes)),
    )
    .expect("write .sha256");
}

/// Rebuild the archive with one file's content replaced, keeping SHA256SUMS as it was (an
/// archive someone altered and re-checksummed: only run.sh's own check can catch it).
pub fn tamper_inner(path: &Path, file: &str, new_content: &str) {
    use std::io::Read;
    let f = std::fs::File::open(path).expect("open");
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut files = Vec::new();
    let mut top = String::new();
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let p = e.path().expect("path").to_string_lossy().into_owned();
        let (t, rest) = p.split_once('/').expect("top/");
        top = t.to_string();
        let mode = e.header().mode().unwrap_or(0o644);
        let mut body = Vec::new();
        e.read_to_end(&mut body).expect("read");
        if rest == file {
            body = new_content.as_bytes().to_vec();
        }
        files.push((rest.to_string(), body, mode));
    }
    write_archive(path, &top, &files);
}

/// Rebuild the archive with one file's content replaced and `SHA256SUMS` regenerated to match
/// (every other file, `SHA256SUMS.sig` among them, kept as it was): what someone who can replace
/// the archive and its `.sha256` does. Only a signature over the old `SHA256SUMS` catches it.
pub fn tamper_and_resum(path: &Path, file: &str, new_content: &str) {
    use std::io::Read;
    let f = std::fs::File::open(path).expect("open");
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut files = Vec::new();
    let mut top = String::new();
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        if e.header().entry_type().is_dir() {
            continue;
        }
        let p = e.path().expect("path").to_string_lossy().into_owned();
        let (t, rest) = p.split_once('/').expect("top/");
        top = t.to_string();
        let mode = e.header().mode().unwrap_or(0o644);
        let mut body = Vec::new();
        e.read_to_end(&mut body).expect("read");
        if rest == file {
            body = new_content.as_bytes().to_vec();
        }
        files.push((rest.to_string(), body, mode));
    }
    let mut sums: Vec<(String, String)> = files
        .iter()
        .filter(|(n, _, _)| n != "SHA256SUMS" && n != "SHA256SUMS.sig")
        .map(|(n, b, _)| (n.clone(), sha256(b)))
        .collect();
    sums.sort();
    let text: String = sums.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    for f in files.iter_mut().filter(|f| f.0 == "SHA256SUMS") {
        f.1 = text.clone().into_bytes();
    }
    write_archive(path, &top, &files);
}
