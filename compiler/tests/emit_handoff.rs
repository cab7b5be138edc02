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
