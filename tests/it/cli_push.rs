//! CLI tests, `ov push --dry-run`: compiles the demo, prints the bundle, target, every remote
//! command with its stdin and the bootstrap script, and connects to nothing — a listener on the
//! target port sees no connection, and nothing is written outside the bundle cache. The text is
//! pinned by a snapshot with the temp dir, port, digest, size and random run id filtered.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cli_common::{demo, expect_code, files_under, ov, run, Run};

struct Setup {
    dir: tempfile::TempDir,
    listener: TcpListener,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("home")).expect("home");
        // The key must exist, private as OpenSSH wants it (the target is resolved in full); it
        // is never used.
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "not a key\n").expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        listener.set_nonblocking(true).expect("nonblocking");
        Setup { dir, listener }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().expect("addr").port()
    }

    /// `ov -C demo compile vm:demo -o out/vm-demo.tar.gz`; the archive's path.
    fn compile(&self) -> PathBuf {
        let out = self.path("out/vm-demo.tar.gz");
        let c = run(ov()
            .arg("-C")
            .arg(demo())
            .args(["compile", "vm:demo", "-o"])
            .arg(&out));
        expect_code(&c, 0, "compile");
        out
    }

    /// Flip the last bit of a compiled bundle, so it no longer matches its `.sha256`.
    fn alter(&self, bundle: &Path) {
        let mut bytes = std::fs::read(bundle).expect("bundle");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(bundle, bytes).expect("write");
    }

    /// `ov -C demo push WHAT --dry-run …` against the listener's port.
    fn push(&self, what: &Path, extra: &[&str]) -> Run {
        run(ov()
            .env("HOME", self.path("home"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .arg("-C")
            .arg(demo())
            .arg("push")
            .arg(what)
            .arg("--dry-run")
            .arg("--identity")
            .arg(self.path("id_ed25519"))
            .arg("--known-hosts")
            .arg(self.path("known_hosts"))
            .args(["--port", &self.port().to_string()])
            .args(extra))
    }

    /// Nothing connected, nothing written but the bundle cache.
    fn assert_untouched(&self) {
        match self.listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok((_, peer)) => panic!("a dry run connected to the target (from {peer})"),
            Err(e) => panic!("accept: {e}"),
        }
        assert!(
            files_under(&self.path("home")).is_empty(),
            "wrote under HOME"
        );
        assert!(!self.path("known_hosts").exists(), "wrote known_hosts");
    }
}

#[test]
fn push_dry_run_prints_what_would_be_sent_and_run() {
    let s = Setup::new();
    let r = s.push(Path::new("vm:demo"), &[]);
    expect_code(&r, 0, "push --dry-run");
    s.assert_untouched();

    let bundle = s.path("cache/ov/bundles/vm-demo.tar.gz");
    let bytes = std::fs::read(&bundle).expect("the compiled bundle is cached");
    let sha = hex::encode(Sha256::digest(&bytes));
    let first = format!(
        "would push {} ({} bytes, sha256 {sha}) to debian@127.0.0.1:{}\n",
        bundle.display(),
        bytes.len(),
        s.port()
    );
    assert!(
        r.stdout.starts_with(&first),
        "want `{first}` in\n{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("\ndeploy vm:demo · 5 layer(s): demo-env, demo-tools, demo-config, demo-greeter, demo-backports\n"),
        "{}",
        r.stdout
    );
    // The bootstrap checks the upload against this very digest and runs as the deploy's user.
    assert!(
        r.stdout.contains(&format!("\nexpected={sha}\n")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(&format!(
        "--bundle-sha256 {sha} ${{print:+\"$print\"}} ${{clean:+--cleanup \"$clean\"}} --user debian"
    )));
    // The archive follows the bootstrap on its stdin: it reads exactly the archive's size.
    assert!(
        r.stdout.contains(&format!("\nsize={}\n", bytes.len())),
        "{}",
        r.stdout
    );

    // The bootstrap's first line reads exactly the rest of it: its length, which moves with the
    // digits of the archive's size, is checked here and filtered from the snapshot.
    let bootstrap = r
        .stdout
        .split_once("--- bootstrap (stdin of `sudo -n bash -s`) ---\n")
        .map(|(_, b)| b)
        .expect("the dry run shows the bootstrap");
    let (reader, script) = bootstrap.split_once('\n').expect("the reader line");
    let n: usize = reader
        .strip_prefix("IFS= read -r -N ")
        .and_then(|r| r.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("the reader line reads a counted block: {reader}"));
    assert_eq!(
        script.len(),
        n,
        "the reader reads {n} characters of the bootstrap"
    );
    assert!(
        reader.contains(&format!("[ \"${{#ov_script}}\" = {n} ]")),
        "{reader}"
    );

    let text = r
        .stdout
        .replace(&reader.to_string(), "[reader]")
        .replace(&s.dir.path().display().to_string(), "[tmp]")
        .replace(&sha, "[sha256]")
        .replace(&format!("({} bytes", bytes.len()), "([size] bytes")
        .replace(&format!("\nsize={}\n", bytes.len()), "\nsize=[size]\n")
        .replace(&format!(":{}\n", s.port()), ":[port]\n");
    insta::with_settings!({filters => vec![(r"vm-demo\.[0-9a-f]{12}\b", "vm-demo.[run]")]}, {
        insta::assert_snapshot!("push-dry-run", text);
    });
}

#[test]
fn push_dry_run_of_a_bundle_file_and_as_json() {
    let s = Setup::new();
    // Compile first, then push the file.
    let out = s.compile();
    let r = s.push(&out, &["--json"]);
    expect_code(&r, 0, "push FILE --dry-run --json");
    s.assert_untouched();
    assert!(
        !s.path("cache").exists(),
        "a given bundle is not compiled again"
    );
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stdout);
    let v: Value = serde_json::from_str(lines[0]).expect("JSON line");
    assert_eq!(v["event"], "dry-run");
    assert_eq!(v["target"], format!("debian@127.0.0.1:{}", s.port()));
    let commands = v["commands"].as_array().expect("commands");
    assert!(commands.len() >= 4, "{v}");
    let sha = hex::encode(Sha256::digest(std::fs::read(&out).expect("bundle")));
    assert!(v["bootstrap"].as_str().expect("bootstrap").contains(&sha));

    // A bundle altered after compile is refused even for a dry run (exit 4, integrity).
    s.alter(&out);
    let r = s.push(&out, &[]);
    expect_code(&r, 4, "push --dry-run of an altered bundle");
    assert!(
        r.stderr.contains("does not match its checksum"),
        "{}",
        r.stderr
    );
    s.assert_untouched();
}

/// With `--json`, every failure of a push is one `error` line on stdout with its exit code and
/// the whole message — a deploy that does not resolve (exit 3) as much as a bundle refused on
/// its checksum (exit 4) — and nothing on stderr.
#[test]
fn push_failures_are_json_lines_with_json() {
    let s = Setup::new();
    let error_line = |r: &Run, code: i64| -> Value {
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{}", r.stdout);
        assert_eq!(r.stderr, "", "nothing on stderr");
        let v: Value = serde_json::from_str(lines[0]).expect("JSON line");
        assert_eq!(
            (v["event"].as_str(), v["exit"].as_i64()),
            (Some("error"), Some(code))
        );
        v
    };
    let r = s.push(Path::new("vm:nope"), &["--json"]);
    expect_code(&r, 3, "push of an unknown VM --json");
    let v = error_line(&r, 3);
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("unknown VM `nope`"),
        "{v}"
    );

    let out = s.compile();
    s.alter(&out);
    let r = s.push(&out, &["--json"]);
    expect_code(&r, 4, "push --dry-run --json of an altered bundle");
    let v = error_line(&r, 4);
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("does not match its checksum"),
        "{v}"
    );
}

/// `ov compile` says in one line which steps closed gates leave out and the flag that opens
/// each (the demo's repository and its package need `--allow-repo-changes`); `-q` and an open
/// gate say nothing.
#[test]
fn compile_names_the_steps_closed_gates_leave_out() {
    let s = Setup::new();
    let compile = |extra: &[&str]| {
        run(ov()
            .arg("-C")
            .arg(demo())
            .args(["compile", "vm:demo", "-o"])
            .arg(s.path("out/vm-demo.tar.gz"))
            .args(extra))
    };
    let c = compile(&[]);
    expect_code(&c, 0, "compile");
    assert_eq!(
        c.stderr,
        "note: 2 step(s) left out because a gate is closed: 2 need --allow-repo-changes \
         (demo-backports); `ov plan` lists them\n"
    );
    let c = compile(&["-q"]);
    expect_code(&c, 0, "compile -q");
    assert_eq!(c.stderr, "");
    assert!(c.stdout.starts_with("wrote "), "{}", c.stdout);
    let c = compile(&["--allow-repo-changes"]);
    expect_code(&c, 0, "compile --allow-repo-changes");
    assert_eq!(c.stderr, "");
}

/// `ov push <deploy>` compiles while the ssh master connects: a deploy that fails to compile is
/// reported as such, at once — the connect gives up instead of waiting out `--wait-ssh` for a
/// target that does not answer.
#[test]
fn push_reports_a_compile_error_at_once_while_the_target_does_not_answer() {
    let s = Setup::new();
    let proj = s.path("proj");
    let write = |rel: &str, text: &str| {
        let p = proj.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write(
        "overthink.yml",
        "version: 2\nincludes:\n  - build.yml\n  - deploy.yml\ndiscover:\n  layers:\n    - path: layers\n      recursive: true\n",
    );
    write(
        "build.yml",
        "distros:\n  debian:\n    formats:\n      deb: {}\n",
    );
    write(
        "deploy.yml",
        "version: 3\ndeployments:\n  images:\n    gate:\n      target: vm\n      vm_source: gate\n      add_layers:\n        - bad\nvm:\n  gate:\n    source:\n      kind: cloud_image\n      base_user: debian\n      distro: \"debian:12\"\n    ssh:\n      key_source: none\n",
    );
    // Loads and resolves; fails only when lowered (after the connect has started).
    write(
        "layers/bad/layer.yml",
        "layer:\n  name: bad\n  tasks:\n    - mkdir: relative/dir\n",
    );
    // A port nothing listens on: every connect attempt is refused and would be retried.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("listen")
        .local_addr()
        .expect("addr")
        .port()
        .to_string();
    let t0 = std::time::Instant::now();
    let r = run(ov()
        .env("HOME", s.path("home"))
        .env("XDG_CACHE_HOME", s.path("cache"))
        .arg("-C")
        .arg(&proj)
        .args(["push", "vm:gate", "--host", "127.0.0.1", "--port", &port])
        .args(["--wait-ssh", "60", "--identity"])
        .arg(s.path("id_ed25519"))
        .arg("--known-hosts")
        .arg(s.path("known_hosts")));
    expect_code(&r, 3, "push of a deploy that does not compile");
    assert!(
        r.stderr.contains(
            "layers/bad/layer.yml:4:7: layer `bad`: `mkdir` path `relative/dir` must be absolute"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("gave up waiting"), "{}", r.stderr);
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
}
