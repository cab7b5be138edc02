//! Stage `emit` (hand-off to Ansible and cloud-init): with awkward values in every field that
//! reaches the emitted files (YAML syntax, Ansible template syntax, shell syntax, line breaks,
//! Unicode separators), every YAML file parses with PyYAML — the parser Ansible and cloud-init
//! use — and gives back exactly those values as plain strings; the first-boot script passes
//! `bash -n` and ShellCheck and holds each value as one quoted word. The output is deterministic.

mod render_support;

use std::process::{Command, Stdio};

use ov_compiler::bundle::Bundle;
use ov_compiler::emit;
use ov_compiler::render::Engine;
use render_support::*;

const ODD_USER: &str =
    "we'ird \"x\" $(touch /tmp/ov-pwn) {{ lookup('pipe', 'id') }} # - [a]: b\n\t\u{2028}é";
const ODD_DEPLOY: &str = "vm:{% raw %}x{{ y }}\"'\n- z: [1]";

fn odd_bundle() -> Bundle {
    let mut b = bundle_plan(&plan("deb", vec![tasks_layer()]));
    b.manifest.deploy.user = Some(ODD_USER.to_string());
    b.manifest.deploy.name = ODD_DEPLOY.to_string();
    b
}

/// PyYAML's reading of `text` (with `!unsafe` read as a plain string, as Ansible keeps its
/// value), as JSON; `None` when python3 with PyYAML is not here (a failure under CI).
fn pyyaml(text: &str) -> Option<serde_json::Value> {
    const LOAD: &str = "import json, sys, yaml\n\
class L(yaml.SafeLoader):\n    pass\n\
L.add_constructor('!unsafe', lambda l, n: l.construct_scalar(n))\n\
print(json.dumps(yaml.load(sys.stdin.read(), Loader=L)))\n";
    let have = Command::new("python3")
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(!under_ci(), "python3 with PyYAML is required under CI");
        eprintln!("skipping the YAML reading: python3 with PyYAML is not available");
        return None;
    }
    let mut c = Command::new("python3")
        .args(["-c", LOAD])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(&mut c.stdin.take().expect("stdin"), text.as_bytes()).expect("write");
    let out = c.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "PyYAML rejects:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("json"))
}

#[test]
fn ansible_files_read_back_every_value_exactly() {
    let engine = Engine::new(None).expect("engine");
    let b = odd_bundle();
    let files = emit::ansible(&b, &engine).expect("emits");
    assert_eq!(
        files,
        emit::ansible(&b, &engine).expect("emits"),
        "deterministic"
    );
    let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let archive = b.archive_name();
    assert_eq!(
        names,
        [
            "README.md".to_string(),
            "playbook.yml".into(),
            format!("roles/ov_bundle/files/{archive}"),
            format!("roles/ov_bundle/files/{archive}.sha256"),
            "roles/ov_bundle/tasks/main.yml".into(),
            "roles/ov_bundle/vars/main.yml".into(),
        ]
    );
    let get = |p: &str| {
        String::from_utf8(
            files
                .iter()
                .find(|f| f.path == p)
                .expect("file")
                .data
                .clone(),
        )
        .expect("utf-8")
    };
    let Some(vars) = pyyaml(&get("roles/ov_bundle/vars/main.yml")) else {
        return;
    };
    assert_eq!(vars["ov_bundle_user"], ODD_USER);
    assert_eq!(vars["ov_bundle_deploy"], ODD_DEPLOY);
    assert_eq!(vars["ov_bundle_sha256"], b.sha256.as_str());
    assert_eq!(vars["ov_bundle_archive"], archive.as_str());
    assert_eq!(vars["ov_bundle_work"], emit::WORK_BASE);
    // Every value the compile fills in is tagged `!unsafe`: Ansible never templates it.
    for line in get("roles/ov_bundle/vars/main.yml")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim_end().ends_with(':'))
    {
        assert!(
            line.contains(": !unsafe \"") || line.starts_with("  - !unsafe \""),
            "{line}"
        );
    }
    let play = pyyaml(&get("playbook.yml")).expect("read");
    assert_eq!(play[0]["name"], format!("ov deploy {ODD_DEPLOY}"));
    assert_eq!(play[0]["become"], true);
    let tasks = pyyaml(&get("roles/ov_bundle/tasks/main.yml")).expect("read");
    // Only ansible.builtin modules.
    let mut modules = Vec::new();
    let mut stack: Vec<&serde_json::Value> = tasks.as_array().expect("list").iter().collect();
    while let Some(t) = stack.pop() {
        for (k, v) in t.as_object().expect("task") {
            if ["block", "always", "rescue"].contains(&k.as_str()) {
                stack.extend(v.as_array().expect("tasks"));
            } else if k.contains('.') {
                modules.push(k.clone());
            }
        }
    }
    assert!(!modules.is_empty());
    assert!(
        modules.iter().all(|m| m.starts_with("ansible.builtin.")),
        "{modules:?}"
    );
}

#[test]
fn user_data_reads_back_the_archive_digest_and_a_script_that_passes_shellcheck() {
    let engine = Engine::new(None).expect("engine");
    let b = odd_bundle();
    let ud = emit::cloud_init(&b, &engine, 1 << 30).expect("emits");
    assert!(!ud.is_gzip);
    assert_eq!(ud, emit::cloud_init(&b, &engine, 1 << 30).expect("emits"));
    let text = String::from_utf8(ud.data.clone()).expect("utf-8");
    assert!(text.starts_with("#cloud-config\n"));
    let script = {
        let v = pyyaml(&text);
        let Some(v) = v else { return };
        let files = v["write_files"].as_array().expect("write_files");
        assert_eq!(files.len(), 3);
        assert_eq!(
            files[1]["content"].as_str().expect("digest"),
            b.sha256_text()
        );
        let script_path = files[2]["path"].as_str().expect("path");
        assert_eq!(v["runcmd"], serde_json::json!([["bash", script_path]]));
        assert_eq!(files[0]["encoding"], "b64");
        let decoded = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                std::io::Write::write_all(
                    &mut c.stdin.take().expect("stdin"),
                    files[0]["content"].as_str().expect("b64").as_bytes(),
                )?;
                c.wait_with_output()
            })
            .expect("base64 -d");
        assert_eq!(decoded.stdout, b.archive, "the archive, byte for byte");
        files[2]["content"].as_str().expect("script").to_string()
    };
    if have_tool("bash", &["--version"]) {
        bash_n("firstboot", &script).expect("bash -n");
    }
    if have_tool("shellcheck", &["--version"]) {
        shellcheck("firstboot", &script).expect("shellcheck");
    }
    // The odd user is one quoted word: bash reads back exactly it.
    // (It may span lines: from `user=` to the line after it, `umask 077`.)
    let from = script.find("\nuser=").expect("user=") + 1;
    let line = &script[from..from + script[from..].find("\numask 077").expect("umask")];
    let out = Command::new("bash")
        .args(["-c", &format!("{line}\nprintf %s \"$user\"")])
        .output()
        .expect("bash");
    assert_eq!(String::from_utf8_lossy(&out.stdout), ODD_USER);
}

#[test]
fn user_data_over_the_limit_is_gzip_compressed_or_refused() {
    let engine = Engine::new(None).expect("engine");
    let mut b = bundle_plan(&plan("deb", vec![tasks_layer()]));
    b.manifest.deploy.user = Some("ovtest".into());
    let plain = emit::cloud_init(&b, &engine, 1 << 30).expect("emits");
    let gz = emit::cloud_init(&b, &engine, plain.plain as u64 - 1).expect("gzip fits");
    assert!(gz.is_gzip && gz.data.len() == plain.gzipped && gz.data.starts_with(&[0x1f, 0x8b]));
    let err = emit::cloud_init(&b, &engine, plain.gzipped as u64 - 1).expect_err("too large");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "is {} bytes ({} gzip-compressed)",
            plain.plain, plain.gzipped
        )) && msg.contains(&format!("limit of {} bytes", plain.gzipped - 1)),
        "{msg}"
    );
    b.manifest.deploy.user = None;
    let err = emit::cloud_init(&b, &engine, 1 << 30).expect_err("no user");
    assert!(matches!(err, emit::EmitError::NoUser { .. }), "{err}");
}

/// The URL of the `--bundle-url` tests: one word to any shell or downloader, full of what a shell
/// would take for syntax.
const ODD_URL: &str = "https://h.example/b/x.tar.gz?a=1&b=$(touch${IFS}/tmp/ov-pwn);`id`'x\"#y";

#[test]
fn user_data_with_a_bundle_url_carries_only_a_script_that_reads_back_the_url_and_passes_shellcheck()
{
    let engine = Engine::new(None).expect("engine");
    let b = odd_bundle();
    let ud = emit::cloud_init_fetching(&b, &engine, emit::DEFAULT_MAX_USER_DATA, ODD_URL)
        .expect("fits AWS EC2's limit");
    assert!(!ud.is_gzip, "a few KiB: plain");
    let text = String::from_utf8(ud.data).expect("utf-8");
    assert!(text.starts_with("#cloud-config\n"));
    let Some(v) = pyyaml(&text) else { return };
    let keys: Vec<&String> = v.as_object().expect("a mapping").keys().collect();
    assert_eq!(keys, ["runcmd"], "nothing but the one command: {v:#}");
    let cmd = v["runcmd"][0].as_array().expect("one command");
    assert_eq!(cmd.len(), 4, "{cmd:?}");
    assert_eq!(
        (cmd[0].as_str(), cmd[1].as_str()),
        (Some("bash"), Some("-c"))
    );
    assert_eq!(cmd[3], "ov-firstboot");
    let script = cmd[2].as_str().expect("the script");
    assert!(
        !script.contains(emit::CLOUD_INIT_DIR),
        "nothing is read from beside it"
    );
    if have_tool("bash", &["--version"]) {
        bash_n("firstboot-url", script).expect("bash -n");
    }
    if have_tool("shellcheck", &["--version"]) {
        shellcheck("firstboot-url", script).expect("shellcheck");
    }
    // The URL, the size and the digest are single quoted words: bash reads back exactly them.
    let value = |name: &str| {
        let from = script.find(&format!("\n{name}=")).expect(name) + 1;
        let to = from + script[from..].find('\n').expect("end of line");
        let out = Command::new("bash")
            .args([
                "-c",
                &format!("{}\nprintf %s \"${name}\"", &script[from..to]),
            ])
            .output()
            .expect("bash");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(value("url"), ODD_URL);
    assert_eq!(value("size"), b.archive.len().to_string());
    assert_eq!(value("expected"), b.sha256);

    for bad in ["ftp://h/x", "https://h/a b", "h/x.tar.gz"] {
        let err = emit::cloud_init_fetching(&b, &engine, 1 << 30, bad).expect_err(bad);
        assert!(
            matches!(err, emit::EmitError::BadUrl { .. }) && err.to_string().contains(bad),
            "{err}"
        );
    }
}

/// The first-boot script's download, each way it has (curl, else wget, else python3), run for
/// real against a server on this machine's loopback: the bytes served arrive whole; a missing
/// file fails every way; more bytes than the bundle has are refused (curl) or cut one byte past
/// its size (wget, python3). A way whose tool is not
/// here is skipped with a message (under CI, .ci/run installs curl and wget).
#[test]
fn the_first_boot_download_works_with_curl_wget_and_python3() {
    let engine = Engine::new(None).expect("engine");
    let mut b = bundle_plan(&plan("deb", vec![tasks_layer()]));
    b.manifest.deploy.user = Some("ovtest".into());
    let ud = emit::cloud_init_fetching(&b, &engine, 1 << 30, "http://127.0.0.1:1/x").expect("ud");
    let text = String::from_utf8(ud.data).expect("utf-8");
    let Some(v) = pyyaml(&text) else { return };
    let script = v["runcmd"][0][2].as_str().expect("script").to_string();
    let from = script.find("ov_fetch() {").expect("ov_fetch");
    let fetch = &script[from..from + script[from..].find("\n}\n").expect("its end") + 3];

    let dir = tempfile::tempdir().expect("tmp");
    let www = dir.path().join("www");
    std::fs::create_dir(&www).expect("www");
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(www.join("b.tar.gz"), &body).expect("serve");
    let mut server = Command::new("python3")
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&www)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 http.server");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().expect("stdout")),
        &mut first,
    )
    .expect("the server's first line");
    // `Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ...`
    let port = first
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .expect("port")
        .to_string();

    let bash = which("bash").expect("bash");
    for tool in ["curl", "wget", "python3"] {
        let Ok(found) = which(tool) else {
            assert!(
                !under_ci(),
                "{tool} is required under CI (.ci/run installs it)"
            );
            eprintln!("skipping the {tool} download: {tool} is not installed");
            continue;
        };
        // Only this tool (and what the function itself runs) on the PATH.
        let bin = dir.path().join(format!("bin-{tool}"));
        std::fs::create_dir(&bin).expect("bin");
        for t in [
            found,
            which("rm").expect("rm"),
            which("head").expect("head"),
            which("stat").expect("stat"),
        ] {
            std::os::unix::fs::symlink(&t, bin.join(t.file_name().expect("name"))).expect("ln");
        }
        let run = |file: &str, size: usize| {
            let out_dir = dir.path().join(format!("out-{tool}-{file}-{size}"));
            std::fs::create_dir(&out_dir).expect("out");
            let out = Command::new(&bash)
                .args(["-c", &format!("{fetch}\nov_fetch")])
                .env_clear()
                .env("PATH", &bin)
                .env("url", format!("http://127.0.0.1:{port}/{file}"))
                .env("size", size.to_string())
                .env("archive", "got")
                .current_dir(&out_dir)
                .stdin(Stdio::null())
                .output()
                .expect("bash");
            (out, std::fs::read(out_dir.join("got")).ok())
        };
        let (out, got) = run("b.tar.gz", body.len());
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            got.as_deref() == Some(&body[..]),
            "{tool}: the bytes served"
        );
        let (out, _) = run("missing.tar.gz", body.len());
        assert!(!out.status.success(), "{tool}: a 404 is a failure");
        // More bytes than the bundle has: curl fails; wget and python3 stop one byte past (the
        // size check after them refuses that).
        let (out, got) = run("b.tar.gz", body.len() - 2);
        if tool == "curl" {
            assert!(
                !out.status.success(),
                "curl: more bytes than the bundle has"
            );
        } else {
            assert!(
                out.status.success(),
                "{tool}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(got.map(|g| g.len()), Some(body.len() - 1), "{tool}");
        }
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// `tool`'s program on this process's PATH (or /usr/bin), skipping wrapper scripts (a version
/// manager's shims need more than a PATH of one tool).
fn which(tool: &str) -> Result<std::path::PathBuf, ()> {
    let wrapper = |p: &std::path::Path| std::fs::read(p).is_ok_and(|b| b.starts_with(b"#!"));
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([std::path::PathBuf::from("/usr/bin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file() && !wrapper(p))
        .ok_or(())
}
