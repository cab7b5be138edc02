//! Stage `load`, positive cases: what each part of a valid `layer.yml` becomes in the model
//! (every section of schema v3 a layer may hold), and how builder files are detected.

use std::path::{Path, PathBuf};

use ov_compiler::layer::{Layer, SectionKey, ServiceScope, TaskVerb};
use ov_compiler::layer_parse::{
    load_layer_dir, parse_layer, scan_builder_files, LayerError, ParseContext,
};

fn parse(text: &str) -> Layer {
    parse_with(text, &ParseContext::builtin())
}

fn parse_with(text: &str, ctx: &ParseContext) -> Layer {
    parse_layer("foo", Path::new("layers/foo/layer.yml"), text, ctx)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn env_and_vars_keep_scalars_as_written() {
    let l = parse(
        "layer:\n  env:\n    WLR_HEADLESS_OUTPUTS: 1\n    PY: 3.10\n    FLAG: no\n    EMPTY:\n    Q: \"x y\"\n    T: true\n  vars:\n    V: 0755\n  path_append:\n    - \"~/.local/bin\"\n    - /opt/x/bin\n",
    );
    assert_eq!(
        l.env,
        pairs(&[
            ("WLR_HEADLESS_OUTPUTS", "1"),
            ("PY", "3.10"),
            ("FLAG", "no"),
            ("EMPTY", ""),
            ("Q", "x y"),
            ("T", "true"),
        ])
    );
    assert_eq!(l.vars, pairs(&[("V", "0755")]));
    assert_eq!(l.path_append, ["~/.local/bin", "/opt/x/bin"]);
}

#[test]
fn package_sections_in_file_order_and_empty_ones_dropped() {
    let l = parse(
        "layer:
  rpm:
    packages: [a, b]
    options: [--allowerasing]
    copr: [owner/project]
    modules: [\"nodejs:20\"]
    exclude: [\"kernel*\"]
    repos:
      - {name: r, url: https://x/r.repo, gpgkey: https://x/key, gpgcheck: false, rpm: https://x/rel.rpm}
  deb:
    packages: []
  pac:
  ubuntu:24.04:
    repos:
      - {name: n, url: https://deb.example, key: https://deb.example/key, suite: nodistro, components: main}
    packages: [nodejs]
  debian, ubuntu:
    packages: [x]
  fedora:
    repos:
      - {name: only-repo}
  archlinux:
    packages: [y]
    keys: [ABCD]
",
    );
    let keys: Vec<&SectionKey> = l.package_sections.iter().map(|s| &s.key).collect();
    assert_eq!(
        keys,
        [
            &SectionKey::Format("rpm".into()),
            &SectionKey::Tags(vec!["ubuntu:24.04".into()]),
            &SectionKey::Tags(vec!["debian".into(), "ubuntu".into()]),
            &SectionKey::Tags(vec!["archlinux".into()]),
        ]
    );
    let rpm = &l.package_sections[0];
    assert_eq!(rpm.packages, ["a", "b"]);
    assert_eq!(rpm.options, ["--allowerasing"]);
    assert_eq!(rpm.copr, ["owner/project"]);
    assert_eq!(rpm.modules, ["nodejs:20"]);
    assert_eq!(rpm.exclude, ["kernel*"]);
    assert_eq!((rpm.pos.line, rpm.pos.column), (2, 3));
    let repo = &rpm.repos[0];
    assert_eq!(repo.gpgcheck.as_deref(), Some("false"));
    assert_eq!(repo.rpm.as_deref(), Some("https://x/rel.rpm"));
    let tag = &l.package_sections[1];
    assert_eq!(tag.repos[0].suite.as_deref(), Some("nodistro"));
    assert_eq!(tag.repos[0].key.as_deref(), Some("https://deb.example/key"));
    assert_eq!(l.package_sections[3].keys, ["ABCD"]);
}

#[test]
fn formats_come_from_the_context() {
    let mut ctx = ParseContext::builtin();
    ctx.formats.insert("apk".into());
    ctx.distros.insert("alpine".into());
    let l = parse_with(
        "layer:\n  apk:\n    packages: [curl]\n    keys: [k]\n  alpine:3.20:\n    packages: [jq]\n",
        &ctx,
    );
    assert_eq!(l.package_sections[0].key, SectionKey::Format("apk".into()));
    assert_eq!(l.package_sections[0].keys, ["k"]);
    assert_eq!(
        l.package_sections[1].key,
        SectionKey::Tags(vec!["alpine:3.20".into()])
    );
    // The same file without `apk` in build.yml is an unknown key.
    let e = parse_layer(
        "foo",
        Path::new("layer.yml"),
        "layer:\n  apk:\n    packages: [curl]\n",
        &ParseContext::builtin(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown key `apk`"), "{e}");
}

#[test]
fn every_task_verb_and_modifier() {
    let l = parse(
        r#"layer:
  tasks:
    - cmd: echo hi
      user: "${USER}"
      env: {A: 1}
      comment: greet
    - mkdir: "${HOME}/.x"
      mode: "0700"
    - copy: files/a.conf
      to: /etc/a.conf
      mode: "644"
      user: ""
    - copy: b.sh
    - write: /etc/motd
      content: |
        hello
    - link: /usr/bin/x
      to: /opt/x/bin/x
    - link: /usr/bin/y
      target: /opt/y
    - download: https://example.org/uv-${BUILD_ARCH}.tar.gz
      extract: tar.gz
      strip_components: 1
      include: [uv, uvx]
      to: /usr/local/bin
      uninstall: [/usr/local/bin/uv]
    - setcap: /usr/bin/sway
    - setcap: /usr/bin/r
      caps: cap_net_bind_service+ep
    - build: all
"#,
    );
    let verbs: Vec<&TaskVerb> = l.tasks.iter().map(|t| &t.verb).collect();
    assert_eq!(
        verbs[0],
        &TaskVerb::Cmd {
            body: "echo hi".into()
        }
    );
    assert_eq!(l.tasks[0].user.as_deref(), Some("${USER}"));
    assert_eq!(l.tasks[0].env, pairs(&[("A", "1")]));
    assert_eq!(l.tasks[0].comment.as_deref(), Some("greet"));
    assert_eq!((l.tasks[0].pos.line, l.tasks[0].pos.column), (3, 7));
    assert_eq!(
        verbs[1],
        &TaskVerb::Mkdir {
            path: "${HOME}/.x".into()
        }
    );
    assert_eq!(l.tasks[1].mode.as_deref(), Some("0700"));
    assert_eq!(
        verbs[2],
        &TaskVerb::Copy {
            src: "files/a.conf".into(),
            to: Some("/etc/a.conf".into())
        }
    );
    assert_eq!(l.tasks[2].user, None, "an empty user means root");
    assert_eq!(
        verbs[3],
        &TaskVerb::Copy {
            src: "b.sh".into(),
            to: None
        }
    );
    assert_eq!(
        verbs[4],
        &TaskVerb::Write {
            path: "/etc/motd".into(),
            content: "hello\n".into()
        }
    );
    assert_eq!(
        verbs[5],
        &TaskVerb::Link {
            path: "/usr/bin/x".into(),
            target: "/opt/x/bin/x".into()
        }
    );
    assert_eq!(
        verbs[6],
        &TaskVerb::Link {
            path: "/usr/bin/y".into(),
            target: "/opt/y".into()
        }
    );
    assert_eq!(
        verbs[7],
        &TaskVerb::Download {
            url: "https://example.org/uv-${BUILD_ARCH}.tar.gz".into(),
            to: Some("/usr/local/bin".into()),
            extract: Some("tar.gz".into()),
            include: vec!["uv".into(), "uvx".into()],
            strip_components: Some(1),
        }
    );
    assert_eq!(l.tasks[7].uninstall, ["/usr/local/bin/uv"]);
    assert_eq!(
        verbs[8],
        &TaskVerb::Setcap {
            path: "/usr/bin/sway".into(),
            caps: String::new()
        }
    );
    assert_eq!(
        verbs[9],
        &TaskVerb::Setcap {
            path: "/usr/bin/r".into(),
            caps: "cap_net_bind_service+ep".into()
        }
    );
    assert_eq!(verbs[10], &TaskVerb::Build { what: "all".into() });
}

#[test]
fn services_packaged_and_custom() {
    let l = parse(
        r#"layer:
  service:
    - name: sshd
      use_packaged: sshd.service
      enable: true
      scope: system
    - name: sway
      exec: "%(ENV_HOME)s/.local/bin/sway-wrapper"
      env:
        WLR_HEADLESS_OUTPUTS: 1
      restart: no
      priority: 10
      auto_start: true
      kind: eventlistener
      events: PROCESS_STATE
      start_secs: 3
      exit_codes: "0,2"
      working_directory: /tmp
      user: me
      after: network.target
      before: [b.target]
      stdout: /var/log/sway.log
      stop_timeout: 30
      scope: user
      overrides:
        env: {X: y}
        after: [a.target]
        exec: /bin/true
"#,
    );
    let [packaged, custom] = &l.services[..] else {
        panic!("{:?}", l.services)
    };
    assert_eq!(packaged.use_packaged.as_deref(), Some("sshd.service"));
    assert!(packaged.enable);
    assert_eq!(packaged.scope, ServiceScope::System);
    assert_eq!(custom.name, "sway");
    assert_eq!(custom.restart.as_deref(), Some("no"));
    assert_eq!(custom.env, pairs(&[("WLR_HEADLESS_OUTPUTS", "1")]));
    assert_eq!(
        custom.supervisord,
        pairs(&[
            ("priority", "10"),
            ("auto_start", "true"),
            ("kind", "eventlistener"),
            ("events", "PROCESS_STATE"),
            ("start_secs", "3"),
            ("exit_codes", "0,2"),
        ])
    );
    assert_eq!(custom.after, ["network.target"]);
    assert_eq!(custom.before, ["b.target"]);
    assert_eq!(custom.stop_timeout.as_deref(), Some("30"));
    assert_eq!(custom.scope, ServiceScope::User);
    assert!(
        !custom.enable,
        "enable defaults to false, as in the original"
    );
    let o = custom.overrides.as_ref().unwrap();
    assert_eq!(o.env, pairs(&[("X", "y")]));
    assert_eq!(o.exec.as_deref(), Some("/bin/true"));
    assert_eq!((custom.pos.line, custom.pos.column), (7, 7));
}

#[test]
fn secrets_artifacts_and_metadata() {
    let l = parse(
        r#"layer:
  name: foo
  info: some info
  status: testing
  version: 2026.100.1200
  depends: [a, "@github.com/org/repo/layers/x:v1"]
  layers: [b]
  secret_requires:
    - name: TOKEN
      description: needed
  secret_accepts:
    - name: API_KEY
      key: ov/api-key/x
      default: none
  artifacts:
    - name: kubeconfig
      path: /etc/k3s.yaml
      mode: "0600"
      optional: true
      retrieve_to: ~/.cache/k.yaml
      rewrite:
        - find: 127.0.0.1
          replace: ${HOST}
"#,
    );
    assert_eq!(
        l.description.as_deref(),
        Some("some info"),
        "info before status"
    );
    assert_eq!(l.version.as_deref(), Some("2026.100.1200"));
    assert_eq!(l.depends, ["a", "@github.com/org/repo/layers/x:v1"]);
    assert_eq!(l.layers, ["b"]);
    assert!(l.secrets[0].required && !l.secrets[1].required);
    assert_eq!(l.secrets[1].key.as_deref(), Some("ov/api-key/x"));
    assert_eq!(l.secrets[1].default.as_deref(), Some("none"));
    let a = &l.artifacts[0];
    assert_eq!(
        (a.name.as_str(), a.path.as_str()),
        ("kubeconfig", "/etc/k3s.yaml")
    );
    assert!(a.optional);
    assert_eq!(a.rewrite[0].find, "127.0.0.1");
    assert_eq!(a.rewrite[0].replace, "${HOST}");
    assert_eq!(
        parse("layer:\n  description: d\n  info: i\n")
            .description
            .as_deref(),
        Some("d")
    );
}

#[test]
fn container_only_keys_are_recorded_with_reasons() {
    let l = parse(
        "layer:\n  layers: [a]\n  tests:\n    - {id: x, file: /x}\n  security: {privileged: true}\n  ports: []\n  env_accepts:\n    - name: X\n",
    );
    let keys: Vec<&str> = l.container_only.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(
        keys,
        ["security", "env_accepts"],
        "empty `ports` is dropped; `tests` are the layer's checks"
    );
    assert_eq!(l.checks.len(), 1);
    assert!(l.container_only.iter().all(|c| !c.reason.is_empty()));
    // Checks and contracts are not content: a composing layer with only them still vanishes.
    assert!(!l.has_content());
    let l = parse("layer:\n  layers: [a]\n  ports: [8080]\n");
    assert!(l.has_content(), "ports counted as content in the original");
}

#[test]
fn empty_files_are_empty_layers() {
    for text in [
        "",
        "# only a comment\n",
        "layer:\n",
        "layer: ~\n",
        "layer: {}\n",
    ] {
        let l = parse(text);
        assert_eq!(l.name, "foo");
        assert!(!l.has_content(), "{text:?}");
    }
}

#[test]
fn directory_reanchors_the_source() {
    let l = parse("layer:\n  directory: src/files\n");
    assert_eq!(l.source_dir, PathBuf::from("layers/foo/src/files"));
    assert_eq!(parse("layer: {}\n").source_dir, PathBuf::from("layers/foo"));
    for bad in ["/etc", "../x", "a/../../b"] {
        let e = parse_layer(
            "foo",
            Path::new("layer.yml"),
            &format!("layer:\n  directory: \"{bad}\"\n"),
            &ParseContext::builtin(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("inside the layer directory"), "{e}");
    }
}

#[test]
fn builder_files_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(scan_builder_files(d), Default::default());
    for f in [
        "pyproject.toml",
        "pixi.toml",
        "pixi.lock",
        "build.sh",
        "package.json",
        "Cargo.toml",
        "b.service",
        "a.service",
        ".service",
    ] {
        std::fs::write(d.join(f), "").unwrap();
    }
    std::fs::create_dir(d.join("dir.service")).unwrap();
    let b = scan_builder_files(d);
    assert_eq!(
        b.pixi_manifest.as_deref(),
        Some("pixi.toml"),
        "pixi.toml wins"
    );
    assert!(b.pixi_lock && b.build_script && b.npm);
    assert!(!b.cargo, "Cargo.toml needs src/");
    assert_eq!(b.unit_files, ["a.service", "b.service"]);
    std::fs::create_dir(d.join("src")).unwrap();
    assert!(scan_builder_files(d).cargo);
    assert!(scan_builder_files(&d.join("missing")) == Default::default());
}

#[test]
fn load_layer_dir_names_the_layer_after_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let ld = dir.path().join("my-layer");
    std::fs::create_dir(&ld).unwrap();
    std::fs::write(
        ld.join("layer.yml"),
        "layer:\n  name: other\n  rpm: {packages: [x]}\n",
    )
    .unwrap();
    std::fs::write(ld.join("package.json"), "{}").unwrap();
    let l = load_layer_dir(&ld, &ParseContext::builtin()).unwrap();
    assert_eq!(l.name, "my-layer");
    assert_eq!(l.file, ld.join("layer.yml"));
    assert!(l.builder_files.npm);

    let missing = dir.path().join("empty");
    std::fs::create_dir(&missing).unwrap();
    let e = load_layer_dir(&missing, &ParseContext::builtin()).unwrap_err();
    assert!(matches!(e, LayerError::Read { .. }), "{e}");
    assert_eq!(e.path(), missing.join("layer.yml"));

    let bad = dir.path().join("bad name");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("layer.yml"), "layer: {}\n").unwrap();
    let e = load_layer_dir(&bad, &ParseContext::builtin()).unwrap_err();
    assert!(matches!(e, LayerError::InvalidName { .. }), "{e}");
}

#[test]
fn non_tag_unknown_keys_never_become_sections() {
    // The original kept any unknown key with `packages:` as a tag section.
    let e = parse_layer(
        "foo",
        Path::new("layer.yml"),
        "layer:\n  centos:\n    packages: [x]\n",
        &ParseContext::builtin(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("unknown key `centos` in `layer`"),
        "{e}"
    );
}

#[test]
fn checks_parse_into_typed_kinds_with_defaults() {
    use ov_compiler::layer::{CheckProbe, CheckScope, Matcher};
    let l = parse(
        r#"layer:
  tests:
    - id: a-file
      file: "${HOME}/.local/bin/a"
      mode: "0755"
      filetype: file
      contains:
        - contains: "exec a"
        - matches: "^exec "
    - id: a-version
      scope: deploy
      timeout: 2m
      command: a --version
      stdout: {contains: "a 1."}
      stderr: plain text
    - id: a-package
      package: a-tools
      package_map: {debian: a, "fedora:43": a-ng}
    - id: a-service
      service: a
      running: true
    - id: a-port
      addr: "127.0.0.1:${HOST_PORT:8080}"
      timeout: 5s
    - id: a-api
      http: http://127.0.0.1:8080/api
      method: POST
      status: 400
      body: [{contains: version}]
      allow_insecure: true
    - id: a-mcp
      mcp: call
      tool: list
      input: "{}"
    - id: a-k8s
      k8s: wait-nodes
      cluster: ${deploy_name}
      k8s_count: 1
"#,
    );
    let c = &l.checks;
    assert_eq!(c.len(), 8);
    assert_eq!(
        c.iter().map(|c| c.probe.kind()).collect::<Vec<_>>(),
        ["file", "command", "package", "service", "addr", "http", "mcp", "k8s"]
    );
    assert_eq!(
        c[0].probe,
        CheckProbe::File {
            path: "${HOME}/.local/bin/a".into(),
            exists: true,
            mode: Some("0755".into()),
            filetype: Some("file".into()),
            contains: vec![
                Matcher::Contains("exec a".into()),
                Matcher::Matches("^exec ".into())
            ],
        }
    );
    assert_eq!(c[0].scope, CheckScope::Build, "scope defaults to build");
    assert_eq!(
        (c[1].scope, c[1].timeout_secs),
        (CheckScope::Deploy, Some(120))
    );
    assert_eq!(
        c[1].probe,
        CheckProbe::Command {
            command: "a --version".into(),
            exit_status: 0,
            stdout: vec![Matcher::Contains("a 1.".into())],
            stderr: vec![Matcher::Contains("plain text".into())],
            in_container: None,
        }
    );
    assert_eq!(
        c[2].probe,
        CheckProbe::Package {
            name: "a-tools".into(),
            installed: true,
            package_map: vec![
                ("debian".into(), "a".into()),
                ("fedora:43".into(), "a-ng".into())
            ],
        }
    );
    assert_eq!(c[4].timeout_secs, Some(5));
    assert_eq!(
        c[5].probe,
        CheckProbe::Http {
            url: "http://127.0.0.1:8080/api".into(),
            status: 400,
            method: "POST".into(),
            body: vec![Matcher::Contains("version".into())],
            allow_insecure: true,
        }
    );
    assert_eq!(c[7].pos.line, 35);
}
