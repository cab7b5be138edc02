//! Remote layers with real git and no network: each test makes a git repository holding layers
//! at tags `v1` and `v2` (different content), and redirects `https://github.com/` to it with
//! `url.<base>.insteadOf` in a `GIT_CONFIG_GLOBAL` file of its own — exactly what a mirror does.
//! Then the seed's command-line form plans, compiles and (in a Debian root) deploys its layer;
//! `ov.lock` pins the commit, a tag moved upstream changes nothing until `--update`; `--offline`
//! with an empty cache fails with the `ov fetch` that fills it (and that command works); a remote
//! layer whose files leave its directory is refused; the lock file is byte-stable.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{output_text as text, ov_at_home, require};
use crate::support::e2e;
use crate::support::rootfs::{self, Root};

const SSHKEYS: &str = "github.com/team/configs/layers/sshkeys";

/// A test's world: the upstream repository, a project, a HOME with the git config.
struct World {
    dir: tempfile::TempDir,
    /// v1's and v2's commits.
    v1: String,
    v2: String,
}

impl World {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn upstream(&self) -> PathBuf {
        self.path("mirror/team/configs.git")
    }

    fn project(&self) -> PathBuf {
        self.path("project")
    }

    fn lock(&self) -> String {
        std::fs::read_to_string(self.project().join("ov.lock")).expect("ov.lock")
    }

    /// `ov -C project …` at this world's HOME, its repo cache `cache` (relative to the world).
    fn ov(&self, cache: &str) -> Command {
        let mut c = ov_at_home(&self.path("home"), &self.project());
        c.env("GIT_CONFIG_GLOBAL", self.path("gitconfig"))
            .env("OV_REPO_CACHE", self.path(cache));
        c
    }

    fn ov_ok(&self, args: &[&str]) -> Output {
        let out = self.ov("cache").args(args).output().expect("ov runs");
        assert_eq!(out.status.code(), Some(0), "ov {args:?}: {}", text(&out));
        out
    }

    /// `git ARGS` in the upstream repository, which must succeed; its stdout, trimmed.
    fn git(&self, args: &[&str]) -> String {
        git(&self.upstream(), args)
    }

    /// Adds `files` (path, content) upstream, commits and tags `tag`; the commit.
    fn commit(&self, files: &[(&str, &str)], tag: &str) -> String {
        for (p, content) in files {
            let path = self.upstream().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", tag]);
        self.git(&["tag", "-f", tag]);
        self.git(&["rev-parse", "HEAD"])
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
        .args(["-c", "init.defaultBranch=main"])
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `sshkeys` (depends on its sibling `base`) writes which version it is and copies a file.
fn sshkeys(version: &str) -> String {
    format!(
        "layer:\n  depends: [base]\n  tasks:\n    - write: /etc/ssh/keys-version\n      content: \"{version}\\n\"\n      user: root\n    - copy: keys.txt\n      to: /etc/ssh/keys.txt\n      user: root\n"
    )
}

/// The upstream repository at v1 and v2, the redirect, and an empty project; `None` without git.
fn world() -> Option<World> {
    if !require("remote layer test", &["git"], false, ".ci/run installs git") {
        return None;
    }
    let dir = tempfile::tempdir().expect("tmp");
    for d in ["mirror/team/configs.git", "home", "project/layers/local"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    std::fs::write(
        dir.path().join("project/layers/local/layer.yml"),
        "layer:\n  env:\n    LOCAL: \"1\"\n",
    )
    .unwrap();
    // The redirect a mirror would use: every github.com URL goes to the local directory.
    std::fs::write(
        dir.path().join("gitconfig"),
        format!(
            "[url \"file://{}/mirror/\"]\n\tinsteadOf = https://github.com/\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut w = World {
        dir,
        v1: String::new(),
        v2: String::new(),
    };
    git(&w.upstream(), &["init", "-q"]);
    w.v1 = w.commit(
        &[
            ("layers/sshkeys/layer.yml", &sshkeys("one")),
            ("layers/sshkeys/keys.txt", "key-one\n"),
            ("layers/base/layer.yml", "layer:\n  env:\n    BASE: \"1\"\n"),
        ],
        "v1",
    );
    w.v2 = w.commit(
        &[
            ("layers/sshkeys/layer.yml", &sshkeys("two")),
            ("layers/sshkeys/keys.txt", "key-two\n"),
        ],
        "v2",
    );
    Some(w)
}

/// `ov plan --json` of `host` (Debian 12) with `extra` arguments.
fn plan(w: &World, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["plan", "host", "--distro", "debian:12", "--json"];
    args.extend_from_slice(extra);
    let out = w.ov_ok(&args);
    serde_json::from_slice(&out.stdout).expect("plan JSON")
}

/// The `content:` sshkeys writes in `plan`, and the commit its origin names.
fn sshkeys_version(plan: &serde_json::Value) -> (String, String) {
    let layer = plan["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .find(|l| l["name"] == "sshkeys")
        .expect("sshkeys in the plan");
    let text = layer.to_string();
    let version = ["one", "two"]
        .into_iter()
        .find(|v| text.contains(&format!("{v}\\n")))
        .unwrap_or_else(|| panic!("no version in {text}"));
    let commit = layer["origin"]["commit"].as_str().expect("origin commit");
    (version.to_string(), commit.to_string())
}

fn lock_entry(at: &str, commit: &str) -> String {
    format!("  {at}:\n    commit: {commit}\n")
}

#[test]
fn command_line_form_is_fetched_locked_and_kept_until_update() {
    let Some(w) = world() else { return };
    let seed = format!("{SSHKEYS}@v1");
    let p = plan(&w, &["--add-layer", &seed]);
    let names: Vec<&str> = p["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "sshkeys"], "the sibling dependency first");
    assert_eq!(sshkeys_version(&p), ("one".to_string(), w.v1.clone()));
    // The sibling comes from the same repository at the same commit.
    assert_eq!(
        p["layers"][0]["origin"],
        serde_json::json!({"kind": "remote", "repo": "github.com/team/configs",
            "reference": "v1", "commit": w.v1, "path": "layers/base"})
    );
    let lock = w.lock();
    assert!(
        lock.ends_with(&format!(
            "version: 1\nrepos:\n{}",
            lock_entry("github.com/team/configs@v1", &w.v1)
        )),
        "{lock}"
    );

    // Upstream moves the tag: the lock holds, byte for byte.
    w.git(&["tag", "-f", "v1", &w.v2]);
    let p = plan(&w, &[&seed]);
    assert_eq!(sshkeys_version(&p), ("one".to_string(), w.v1.clone()));
    assert_eq!(w.lock(), lock);

    // `--update` moves it (compile takes the flag too).
    let out = w.path("out");
    w.ov_ok(&[
        "compile",
        "host",
        "--distro",
        "debian:12",
        &seed,
        "--update",
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(out.join("host/files/sshkeys/keys.txt")).unwrap(),
        "key-two\n"
    );
    assert_eq!(
        w.lock(),
        lock.replace(&w.v1, &w.v2),
        "the entry moved to the new commit"
    );
    // The bundle's provenance says where the layer came from: the repository at that commit.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("host/manifest.json")).unwrap()).unwrap();
    let layer = manifest["layers"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "sshkeys"))
        .unwrap_or_else(|| panic!("no sshkeys layer: {manifest}"));
    assert_eq!(layer["origin"]["kind"], "remote", "{layer}");
    assert_eq!(
        layer["origin"]["repo"], "github.com/team/configs",
        "{layer}"
    );
    assert_eq!(layer["origin"]["commit"], w.v2.as_str(), "{layer}");
    let p = plan(&w, &[&seed]);
    assert_eq!(sshkeys_version(&p), ("two".to_string(), w.v2.clone()));
}

#[test]
fn fetch_pins_refs_of_layer_files_and_the_lock_is_byte_stable() {
    let Some(w) = world() else { return };
    // A project layer that needs the remote one, in the layer-file form.
    std::fs::create_dir_all(w.project().join("layers/app")).unwrap();
    std::fs::write(
        w.project().join("layers/app/layer.yml"),
        format!("layer:\n  depends:\n    - \"@{SSHKEYS}:v2\"\n  env:\n    APP: \"1\"\n"),
    )
    .unwrap();
    // Git settings in the environment (a surrounding hook's, say) do not reach the git that
    // `ov` runs: this one would refuse the `file://` the redirect leads to.
    let out = w
        .ov("cache")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "protocol.file.allow")
        .env("GIT_CONFIG_VALUE_0", "never")
        .env("GIT_DIR", w.path("not-a-repo"))
        .arg("fetch")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("github.com/team/configs@v2 {} (newly locked)\n", w.v2)
    );
    let first = w.lock();
    assert!(
        first.contains(&lock_entry("github.com/team/configs@v2", &w.v2)),
        "{first}"
    );
    let out = w.ov_ok(&["fetch"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("github.com/team/configs@v2 {} (locked)\n", w.v2)
    );
    assert_eq!(w.lock(), first, "a second fetch writes the same bytes");
    w.ov_ok(&["fetch", "--update"]);
    assert_eq!(w.lock(), first, "nothing moved upstream: the same bytes");

    // Offline, with no git on PATH at all: the lock and the cache are enough.
    let out = w
        .ov("cache")
        .env("PATH", w.path("no-tools"))
        .args(["plan", "host", "--distro", "debian:12", "app", "--offline"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("layers  3: base, sshkeys, app"), "{plan}");
}

#[test]
fn offline_with_an_empty_cache_names_the_repo_and_the_fetch_command() {
    let Some(w) = world() else { return };
    let seed = format!("{SSHKEYS}@v1");
    let args = [
        "compile",
        "host",
        "--distro",
        "debian:12",
        "--add-layer",
        &seed,
    ];
    let out = w
        .ov("empty-cache")
        .args(args)
        .arg("--offline")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let fetch = format!(
        "ov -C {} fetch host --add-layer {seed} --distro debian:12",
        w.project().display()
    );
    assert!(
        stderr.contains("remote layer repository `github.com/team/configs@v1` is not in `ov.lock` and has not been fetched")
            && stderr.contains(&format!("fetch it: `{fetch}`")),
        "{stderr}"
    );
    assert!(
        !w.project().join("ov.lock").exists(),
        "offline writes nothing"
    );
    assert!(!w.path("empty-cache").exists(), "offline fetches nothing");

    // The command it names does fill the cache: the same offline compile then works.
    let words: Vec<&str> = fetch.split(' ').collect();
    let out = Command::new(env!("CARGO_BIN_EXE_ov"))
        .env_clear()
        .envs(
            w.ov("empty-cache")
                .get_envs()
                .filter_map(|(k, v)| Some((k, v?))),
        )
        .args(&words[1..])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{fetch}: {}", text(&out));
    let out = w
        .ov("empty-cache")
        .current_dir(w.path("."))
        .args(args)
        .args(["--offline", "-o"])
        .arg(w.path("host.tar.gz"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_remote_layer_whose_files_leave_its_directory_is_refused() {
    let Some(w) = world() else { return };
    std::fs::create_dir_all(w.upstream().join("layers/linked")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", w.upstream().join("layers/linked/pw")).unwrap();
    w.commit(
        &[
            (
                "layers/climbs/layer.yml",
                "layer:\n  tasks:\n    - copy: ../sshkeys/keys.txt\n      to: /etc/x\n      user: root\n",
            ),
            (
                "layers/linked/layer.yml",
                "layer:\n  tasks:\n    - copy: pw\n      to: /etc/x\n      user: root\n",
            ),
        ],
        "v3",
    );
    let cases = [
        (
            "climbs",
            "`layer.tasks[0].copy` must be a path inside the layer directory, found `../sshkeys/keys.txt`",
        ),
        (
            "linked",
            "remote layer `linked` (`github.com/team/configs/layers/linked@v3`): `pw` is a symbolic link that points outside the layer directory",
        ),
    ];
    for (layer, want) in cases {
        let seed = format!("github.com/team/configs/layers/{layer}@v3");
        let out = w
            .ov("cache")
            .args(["plan", "host", "--distro", "debian:12", &seed])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{layer}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{layer}: {stderr}");
        assert!(stderr.contains(layer), "{layer}: {stderr}");
    }
}

#[test]
fn the_seed_form_deploys_its_layer_in_a_debian_root() {
    let Some(w) = world() else { return };
    if !rootfs::available() {
        return;
    }
    let root = Root::new(&rootfs::tarball(&e2e::spec()));
    root.sh("useradd -m -s /bin/bash tester && rm -f /etc/resolv.conf");
    let out_dir = root.path("/var/tmp/ov/b");
    w.ov_ok(&[
        "compile",
        "host",
        "--distro",
        "debian:12",
        &format!("{SSHKEYS}@v1"),
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    let run = root.run(&["bash", "/var/tmp/ov/b/host/run.sh", "--user", "tester"]);
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(
        root.sh("cat /etc/ssh/keys-version /etc/ssh/keys.txt"),
        "one\nkey-one\n"
    );
    // The sibling `base` ran too, for the user.
    assert_eq!(
        root.sh("runuser -u tester -- bash -lc 'printf %s \"$BASE\"'"),
        "1"
    );
}
