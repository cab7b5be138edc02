//! Stage `load`, project level: finding the root, merging includes, discovery, distros, deploy
//! nodes, VM specs and the per-machine overlay, on small projects built in temp directories.

use std::path::{Path, PathBuf};

use ov_compiler::project::{find_root, NodeTarget, Project, ProjectError};

/// Write `files` (relative path → content) under a fresh temp dir.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

fn layer(name: &str) -> String {
    format!("layer:\n  name: {name}\n  rpm:\n    packages: [{name}]\n")
}

fn names(p: &Project) -> Vec<&str> {
    p.layers.keys().map(String::as_str).collect()
}

#[test]
fn a_bare_layers_directory_is_a_project_with_builtin_distros() {
    let a = layer("a");
    let dir = project(&[
        ("layers/a/layer.yml", &a),
        ("layers/group/b/layer.yml", &layer("b")),
    ]);
    let p = Project::load(dir.path()).unwrap();
    assert_eq!(names(&p), ["a", "b"]);
    let distros: Vec<&str> = p.distros.keys().map(String::as_str).collect();
    assert_eq!(distros, ["archlinux", "debian", "fedora", "ubuntu"]);
    assert_eq!(p.distros["archlinux"].formats, ["pac", "aur"]);
    assert_eq!(
        p.distros["ubuntu"].base_user.as_ref().unwrap().name,
        "ubuntu"
    );
    assert!(p.deployments.is_empty() && p.vms.is_empty());
}

#[test]
fn includes_merge_first_definition_wins() {
    let dir = project(&[
        (
            "overthink.yml",
            "version: 2\nincludes: [a.yml, b.yml]\ndistros:\n  fedora:\n    formats: {rpm: {}}\n",
        ),
        // A diamond: both include common.yml; it is merged once, not reported as a cycle.
        ("a.yml", "includes: [common.yml]\ndistros:\n  fedora:\n    formats: {dnf: {}}\n  alpine:\n    formats: {apk: {}}\n"),
        ("b.yml", "includes: [common.yml]\n"),
        // A multi-document stream: the second document adds to the first.
        ("common.yml", "distros:\n  debian:\n    formats: {deb: {}}\n---\ndistros:\n  ubuntu:\n    inherits: debian\n  alpine:\n    formats: {ignored: {}}\n"),
        ("layers/x/layer.yml", "layer:\n  alpine:3.20:\n    packages: [x]\n"),
    ]);
    let p = Project::load(dir.path()).unwrap();
    assert_eq!(p.distros["fedora"].formats, ["rpm"], "the root wins");
    assert_eq!(
        p.distros["alpine"].formats,
        ["apk"],
        "the first include wins over later ones"
    );
    assert_eq!(p.distros["ubuntu"].formats, ["deb"], "inherited");
    let formats: Vec<&str> = p.format_names.iter().map(String::as_str).collect();
    assert_eq!(formats, ["apk", "deb", "rpm"]);
    assert_eq!(names(&p), ["x"]);
}

#[test]
fn include_depth_is_limited() {
    let mut files = vec![(
        "overthink.yml".to_string(),
        "includes: [f1.yml]\n".to_string(),
    )];
    for i in 1..=9 {
        files.push((format!("f{i}.yml"), format!("includes: [f{}.yml]\n", i + 1)));
    }
    files.push(("f10.yml".into(), "{}\n".into()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let dir = project(&refs);
    let e = Project::load(dir.path()).unwrap_err();
    assert!(e.to_string().contains("deeper than 8"), "{e}");
    assert!(e.to_string().contains("f8.yml:1:"), "{e}");
}

#[test]
fn vms_yml_is_refused() {
    let dir = project(&[
        ("overthink.yml", "includes: [vms.yml]\n"),
        ("vms.yml", "vms: {}\n"),
    ]);
    let e = Project::load(dir.path()).unwrap_err();
    assert!(
        e.to_string().contains("`vms.yml` is no longer accepted"),
        "{e}"
    );
}

/// An include outside the project's directory is refused where it is written, before it is read
/// (its lines would be quoted in errors); includes in subdirectories, also by `..` within the
/// project or by an absolute path into it, still work.
#[test]
fn an_include_outside_the_project_is_refused() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("secret.yml"), "token: s3cret\n").unwrap();
    let proj = outer.path().join("proj");
    for inc in [
        "../secret.yml".to_string(),
        outer.path().join("secret.yml").display().to_string(),
    ] {
        std::fs::create_dir_all(&proj).unwrap();
        std::fs::write(
            proj.join("overthink.yml"),
            format!("includes: [\"{inc}\"]\n"),
        )
        .unwrap();
        let e = Project::load(&proj).unwrap_err().to_string();
        assert!(
            e.contains("is outside the project") && e.contains("overthink.yml:1:"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
    }
    let inside = proj.join("conf/deploy.yml").display().to_string();
    std::fs::create_dir_all(proj.join("conf")).unwrap();
    std::fs::write(proj.join("conf/deploy.yml"), "vm:\n  box: {}\n").unwrap();
    for inc in ["conf/../conf/deploy.yml", inside.as_str()] {
        std::fs::write(
            proj.join("overthink.yml"),
            format!("includes: [\"{inc}\"]\n"),
        )
        .unwrap();
        let p = Project::load(&proj).unwrap_or_else(|e| panic!("{inc}: {e}"));
        assert!(p.vms.contains_key("box"), "{inc}");
    }
}

#[test]
fn discover_forms_and_recursion() {
    let dir = project(&[
        (
            "overthink.yml",
            "discover:\n  layers:\n    - path: flat\n      recursive: false\n    - deep\n",
        ),
        ("flat/a/layer.yml", &layer("a")),
        ("flat/group/b/layer.yml", &layer("b")),
        ("deep/x/y/c/layer.yml", &layer("c")),
        ("deep/.hidden/d/layer.yml", &layer("d")),
        ("layers/e/layer.yml", &layer("e")),
    ]);
    let p = Project::load(dir.path()).unwrap();
    assert_eq!(
        names(&p),
        ["a", "c"],
        "non-recursive skips depth 2, hidden dirs are skipped, `layers/` is not scanned"
    );

    let dir = project(&[("overthink.yml", "discover:\n  layers: nowhere\n")]);
    let e = Project::load(dir.path()).unwrap_err();
    assert!(
        e.to_string().contains("discover path") && e.to_string().contains("overthink.yml:2:11"),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn symlink_loops_do_not_hang_discovery() {
    let dir = project(&[("layers/a/layer.yml", &layer("a"))]);
    std::os::unix::fs::symlink(dir.path().join("layers"), dir.path().join("layers/a/loop"))
        .unwrap();
    let p = Project::load(dir.path()).unwrap();
    assert_eq!(names(&p), ["a"]);
}

#[test]
fn deploy_nodes_targets_and_defaults() {
    let dir = project(&[
        (
            "overthink.yml",
            r#"version: 2
deployments:
  images:
    box:
      vm_source: box
      add_layers: [a]
      install_opts: {allow_root_tasks: true, builder_image: x}
      disposable: true
      lifecycle: dev
      env: [A=1]
      tests: []
      children:
        inner: {target: container, add_layers: [a]}
        kube: {target: kubernetes}
    host: {add_layers: [a]}
    web: {image: some-image}
vm:
  box:
    source: {kind: cloud_image, base_user: debian, distro: "debian:12", url: https://x}
    ssh: {user: admin, port: 2230, key_source: generate}
    ram: 4G
"#,
        ),
        ("layers/a/layer.yml", &layer("a")),
    ]);
    let p = Project::load(dir.path()).unwrap();
    let b = &p.deployments["box"];
    assert_eq!(b.target, NodeTarget::Vm, "a node with vm_source is a VM");
    assert!(b.install_opts.allow_root_tasks && !b.install_opts.with_services);
    assert_eq!(b.children["inner"].target, NodeTarget::Pod);
    assert_eq!(b.children["kube"].target, NodeTarget::K8s);
    assert_eq!(p.node("box.inner").unwrap().add_layers, ["a"]);
    assert!(p.node("box.nope").is_none());
    assert_eq!(p.deployments["host"].target, NodeTarget::Host);
    assert_eq!(p.deployments["web"].target, NodeTarget::Pod);
    let vm = &p.vms["box"];
    assert_eq!(vm.ssh_user.as_deref(), Some("admin"));
    assert_eq!(vm.ssh_port, Some(2230));
    assert_eq!(vm.distro.as_deref(), Some("debian:12"));
}

#[test]
fn strict_where_consumed() {
    let cases: &[(&str, &str)] = &[
        (
            "vm:\n  box:\n    shh: {port: 22}\n",
            "unknown key `shh` in `vm.box`",
        ),
        (
            "vm:\n  box:\n    source: {distro: debain}\n",
            "unknown distro `debain`",
        ),
        (
            "vm:\n  box:\n    ssh: {port: 70000}\n",
            "out of range: 70000; it must be from 0 to 65535",
        ),
        (
            "deployments:\n  images:\n    n: {target: vm}\n",
            "no `vm_source`",
        ),
        (
            "deployments:\n  images:\n    n: {target: lxc}\n",
            "must be one of",
        ),
        (
            "deployments:\n  images:\n    n: {install_opts: {with_service: true}}\n",
            "did you mean `with_services`",
        ),
        (
            "deployments:\n  images:\n    a.b: {}\n",
            "cannot be a deploy node name",
        ),
        (
            "distros:\n  deb: {formats: {deb: {}}, inherit: x}\n",
            "did you mean `inherits`",
        ),
        (
            "distros:\n  a: {inherits: b}\n  b: {inherits: a}\n",
            "inheritance cycle",
        ),
        (
            "distros:\n  a: {base_user: {name: u, uid: 1}}\n",
            "needs `name`, `uid`, `gid` and `home`",
        ),
        ("version: 1\n", "unsupported project file version 1"),
        ("- just\n- a list\n", "expected a mapping"),
    ];
    for (text, want) in cases {
        let dir = project(&[("overthink.yml", text)]);
        let e = Project::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains(want), "{text:?}: {e}");
        assert!(e.to_string().contains("overthink.yml:"), "located: {e}");
    }
}

#[test]
fn lenient_at_the_top_level() {
    let dir = project(&[(
        "overthink.yml",
        "version: 2\nimages: {x: {layers: [a]}}\ncluster: {nodes: 3}\ninits: {systemd: {model: file_copy}}\nbuilders:\n  yay: {detect_config: pac2}\ndistros:\n  arch: {formats: {pac2: {}, pac: {}}}\n",
    )]);
    let p = Project::load(dir.path()).unwrap();
    assert_eq!(
        p.distros["arch"].formats,
        ["pac", "pac2"],
        "builder-backed formats go last"
    );
}

#[test]
fn find_root_rules() {
    let dir = project(&[
        ("proj/overthink.yml", "version: 2\n"),
        ("proj/sub/deeper/.keep", ""),
        ("bare/layers/a/layer.yml", &layer("a")),
        ("bare/x/.keep", ""),
        ("nothing/.keep", ""),
    ]);
    let d = dir.path();
    assert_eq!(
        find_root(None, None, &d.join("proj/sub/deeper")).unwrap(),
        d.join("proj")
    );
    assert_eq!(
        find_root(None, None, &d.join("bare/x")).unwrap(),
        d.join("bare")
    );
    assert_eq!(
        find_root(Some(Path::new("proj")), Some(Path::new("bare")), d).unwrap(),
        d.join("proj")
    );
    assert_eq!(
        find_root(None, Some(Path::new("bare")), d).unwrap(),
        d.join("bare")
    );
    assert_eq!(
        find_root(Some(Path::new("proj/overthink.yml")), None, d).unwrap(),
        d.join("proj")
    );
    let e = find_root(Some(Path::new("nothing")), None, d).unwrap_err();
    assert!(matches!(e, ProjectError::NotAProject { .. }), "{e}");
    assert!(Project::load(&d.join("nothing")).is_err());
    // Walking up from a directory with no project anywhere above (the temp root's parents may
    // hold one on a developer machine, so only check the error shape when it happens).
    if let Err(e) = find_root(None, None, &d.join("nothing")) {
        assert!(matches!(e, ProjectError::NotFound { .. }), "{e}");
    }
}

#[test]
fn the_example_project_loads() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    if !root.join("overthink.yml").is_file() {
        eprintln!("skipping: no example project at {}", root.display());
        return;
    }
    let p = Project::load(&root).unwrap_or_else(|e| panic!("{e}"));
    assert!(p.layers.contains_key("demo-tools") && p.layers.contains_key("demo-backports"));
    assert_eq!(p.deployments["demo-vm"].vm_source.as_deref(), Some("demo"));
    assert_eq!(p.vms["demo"].distro.as_deref(), Some("debian:12"));
    assert_eq!(p.vms["demo"].ssh_port, Some(2230));
}
