//! Push over a real SSH connection to a private sshd: the happy path, ledger and state,
//! master reuse (session counts), dry-run, `--keep`, status and teardown.

use std::path::Path;
use std::time::Duration;

use ov::apply::push::{push, PushOptions, PushOutcome, PushReport, StateTarget};
use ov::apply::teardown::{teardown_with, TeardownOptions, BLOCK_BEGIN, BLOCK_END};
use ov::exit::{Exit, HasExit};
use ov::ssh::connect::WaitOptions;
use ov::target::ledger::LayerMatch;
use ov::target::state::load_vm_state;
use ov::ui::progress::{Event, Recorder, RunEvent};

use crate::support::bundle::{build, Layer};
use crate::support::sshd::{home_of, Kind, TestHost, USER};

pub fn wait() -> WaitOptions {
    WaitOptions {
        deadline: Duration::from_secs(20),
        ..Default::default()
    }
}

pub fn done(o: PushOutcome) -> PushReport {
    match o {
        PushOutcome::Done(r) => *r,
        PushOutcome::DryRun(_) => panic!("expected a real push"),
    }
}

/// A scratch directory on the target machine (same filesystem) the layer scripts write to.
pub fn scratch(name: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(&format!("ov-it-{name}."))
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    d
}

fn marker_layers(out: &Path, names: &[&str]) -> Vec<Layer> {
    names
        .iter()
        .map(|n| {
            Layer::new(
                n,
                &format!(
                    "echo \"applying {n} as $(id -un)\"\necho \"$OV_LAYER $OV_DEPLOY_ID\" > {}/{n}",
                    out.display()
                ),
            )
        })
        .collect()
}

#[test]
fn push_applies_layers_and_records_ledger_and_state() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("push");
    let b = build(
        work.path(),
        "vm:it",
        "dep0001",
        USER,
        &marker_layers(out.path(), &["alpha", "beta", "gamma"]),
    );
    // A state file with other entries, fields and comments that must survive byte for byte.
    let state_file = work.path().join("config/ov/deploy.yml");
    std::fs::create_dir_all(state_file.parent().expect("parent")).expect("mkdir");
    let original = "# my machines\nimages:\n  vm:other:   # keep this comment\n    target: vm\n    vm_state:\n      ssh_port: 2300\n  vm:it:\n    target: vm\n    vm_source: it\n    custom_field: {a: 1}\n    vm_state:\n      backend: auto  # written by vm create\n\n# end\n";
    std::fs::write(&state_file, original).expect("write state");

    let mut opts = PushOptions::new(&b.path);
    opts.state = Some(StateTarget {
        file: state_file.clone(),
        key: "vm:it".into(),
        vm: "it".into(),
    });
    let mut rec = Recorder::default();
    let target = host.target(USER);
    let r = done(push(target.clone(), wait(), &opts, &mut rec).expect("push"));

    assert_eq!((r.applied, r.skipped), (3, 0));
    assert_eq!(r.applied_layers, vec!["alpha", "beta", "gamma"]);
    for n in ["alpha", "beta", "gamma"] {
        let m = std::fs::read_to_string(out.path().join(n)).expect("marker");
        assert_eq!(m, format!("{n} dep0001\n"));
        let lr = &r.ledger.layers[n];
        let digest = &b.layers.iter().find(|(l, _)| l == n).expect("layer").1;
        assert_eq!(&lr.digest, digest);
        assert_eq!(lr.deployed_by, vec!["dep0001"]);
    }
    assert_eq!(r.ledger.deploys["dep0001"].target, "vm:it");
    assert_eq!(r.ledger.deploys["dep0001"].bundle_sha256, r.bundle_sha256);
    // Output and events streamed through.
    assert!(rec
        .events
        .iter()
        .any(|e| matches!(e, Event::Output { line, .. } if line == "applying beta as root")));
    assert!(rec.run_events().iter().any(|e| matches!(
        e,
        RunEvent::End {
            ok: true,
            applied: 3,
            ..
        }
    )));
    // The remote work directory is gone.
    assert!(
        !Path::new(&r.remote_dir).exists(),
        "{} left behind",
        r.remote_dir
    );

    // deploy.yml: our fields set, everything else byte-identical.
    let s = r.state.clone().expect("state");
    let saved = load_vm_state(&state_file, "vm:it")
        .expect("load")
        .expect("entry");
    assert_eq!(saved, s);
    assert_eq!(s.ssh_user.as_deref(), Some(USER));
    assert_eq!(s.ssh_port, Some(host.port));
    assert_eq!(
        s.applied_layers.as_deref(),
        Some(&["alpha".to_string(), "beta".into(), "gamma".into()][..])
    );
    assert_eq!(s.bundle_sha256.as_deref(), Some(r.bundle_sha256.as_str()));
    let id = s.instance_id.clone().expect("instance id");
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let key = host.client_key.to_string_lossy();
    let expected = format!(
        "# my machines\nimages:\n  vm:other:   # keep this comment\n    target: vm\n    vm_state:\n      ssh_port: 2300\n  vm:it:\n    target: vm\n    vm_source: it\n    custom_field: {{a: 1}}\n    vm_state:\n      backend: auto  # written by vm create\n      instance_id: {id}\n      ssh_host: 127.0.0.1\n      ssh_user: {USER}\n      ssh_port: {}\n      ssh_key_path: {key}\n      user: {USER}\n      last_deploy: \"{}\"\n      applied_layers:\n        - alpha\n        - beta\n        - gamma\n      bundle_sha256: {}\n\n# end\n",
        host.port,
        s.last_deploy.as_deref().expect("time"),
        r.bundle_sha256
    );
    assert_eq!(
        std::fs::read_to_string(&state_file).expect("read"),
        expected
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&state_file)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Again: everything skipped, same instance id.
    let r2 = done(push(target, wait(), &opts, &mut Recorder::default()).expect("push again"));
    assert_eq!((r2.applied, r2.skipped), (0, 3));
    let s2 = r2.state.expect("state");
    assert_eq!(s2.instance_id.as_deref(), Some(id.as_str()));
    assert_eq!(r2.applied_layers, vec!["alpha", "beta", "gamma"]);
}

#[test]
fn push_to_a_host_in_its_own_network_namespace() {
    let Some(host) = TestHost::start(Kind::Netns) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("netns");
    let b = build(
        work.path(),
        "vm:ns",
        "depns01",
        USER,
        &marker_layers(out.path(), &["one"]),
    );
    let mark = host.mark();
    let r = done(
        push(
            host.target(USER),
            wait(),
            &PushOptions::new(&b.path),
            &mut Recorder::default(),
        )
        .expect("push"),
    );
    assert_eq!(r.applied, 1);
    assert!(
        r.target.starts_with(&format!("{USER}@10.213.")),
        "{}",
        r.target
    );
    assert_eq!(host.connections_since(mark), 1);
    assert!(host.host_side_ip().is_some());
    // The session came from the other side of the veth pair, not from loopback.
    let log = std::fs::read_to_string(&host.log).expect("log");
    assert!(
        log.contains(&format!("from {}", host.host_side_ip().expect("ip"))),
        "{log}"
    );
}

/// One push of a 1-layer and of a 100-layer bundle: same number of channels, one connection.
#[test]
fn ssh_master_reuse_session_counts() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let mut counts = Vec::new();
    for (n, id) in [(1usize, "reuse001"), (100, "reuse100")] {
        let dir = work.path().join(id);
        std::fs::create_dir(&dir).expect("mkdir");
        let layers: Vec<Layer> = (0..n)
            .map(|i| Layer::new(&format!("l{id}x{i:03}"), "true"))
            .collect();
        let b = build(&dir, "vm:reuse", id, USER, &layers);
        let mark = host.mark();
        let r = done(
            push(
                host.target(USER),
                wait(),
                &PushOptions::new(&b.path),
                &mut Recorder::default(),
            )
            .expect("push"),
        );
        assert_eq!(r.applied as usize, n);
        let sessions = host.sessions_since(mark);
        let connections = host.connections_since(mark);
        eprintln!(
            "MEASURED: {n} layer(s): {sessions} ssh sessions over {connections} connection(s)"
        );
        counts.push((sessions, connections));
    }
    assert_eq!(
        counts[0], counts[1],
        "channels must not depend on the layer count"
    );
    // One channel: its entry becomes root, the archive goes up on its stdin and the ledger comes
    // back on its stdout (no probe channel); waiting for cloud-init would add two.
    assert_eq!(counts[0].0, 1, "{counts:?}");
    assert_eq!(counts[0].1, 1, "one TCP connection per push");
}

/// Only the run channel's entry can say cloud-init is there (before the bootstrap speaks): a step
/// that prints the same line makes ov neither wait for cloud-init nor run the bundle again.
#[test]
fn a_step_cannot_make_the_push_wait_for_cloud_init() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let b = build(
        work.path(),
        "vm:enter",
        "enter001",
        USER,
        &[Layer::new("says", "echo '::ov:: enter cloud-init=present'")],
    );
    let mark = host.mark();
    let r = done(
        push(
            host.target(USER),
            wait(),
            &PushOptions::new(&b.path),
            &mut Recorder::default(),
        )
        .expect("push"),
    );
    assert_eq!(r.applied, 1);
    assert_eq!(
        r.cloud_init,
        ov::target::cloud_init::CloudInitOutcome::Absent
    );
    assert_eq!(
        host.sessions_since(mark),
        1,
        "one channel: no wait, no second run"
    );
}

#[test]
fn dry_run_connects_to_nothing_and_keep_leaves_the_work_dir() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("dry");
    let b = build(
        work.path(),
        "vm:dry",
        "dry0001",
        USER,
        &marker_layers(out.path(), &["x"]),
    );

    let mark = host.mark();
    let mut opts = PushOptions::new(&b.path);
    opts.dry_run = true;
    let plan = match push(host.target(USER), wait(), &opts, &mut Recorder::default()).expect("dry")
    {
        PushOutcome::DryRun(p) => p,
        PushOutcome::Done(_) => panic!("dry run ran"),
    };
    assert_eq!(host.connects_since(mark), 0);
    assert!(!out.path().join("x").exists());
    let text = plan.render();
    assert!(text.contains("sudo -n -- bash -s"), "{text}");
    assert!(text.contains(&b.path.display().to_string()), "{text}");
    assert!(plan.bootstrap.contains("run.sh"), "{}", plan.bootstrap);

    let mut opts = PushOptions::new(&b.path);
    opts.keep = true;
    let r = done(push(host.target(USER), wait(), &opts, &mut Recorder::default()).expect("push"));
    let kept = Path::new(&r.remote_dir);
    assert!(
        kept.join("vm-dry/run.sh").exists(),
        "{} missing",
        kept.display()
    );
    assert!(kept.join("vm-dry.tar.gz").exists());
    std::fs::remove_dir_all(kept).expect("cleanup");
}

#[test]
fn status_compares_the_target_with_a_manifest() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("status");
    let b = build(
        work.path(),
        "vm:st",
        "st00001",
        USER,
        &marker_layers(out.path(), &["p", "q"]),
    );
    done(
        push(
            host.target(USER),
            wait(),
            &PushOptions::new(&b.path),
            &mut Recorder::default(),
        )
        .expect("push"),
    );

    let info = ov::bundle::open_bundle(&b.path).expect("bundle");
    let mark = host.mark();
    let s = ov::target::ledger::status(
        host.target(USER),
        wait(),
        None,
        Some(&info),
        &mut Recorder::default(),
    )
    .expect("status");
    assert_eq!(host.sessions_since(mark), 1);
    assert!(s.up_to_date(), "{s:?}");
    assert!(s.layers.iter().all(|l| !l.deployed_at.is_empty()));

    // A newer bundle where `q` changed and `r` is new.
    let dir2 = work.path().join("v2");
    std::fs::create_dir(&dir2).expect("mkdir");
    let mut layers = marker_layers(out.path(), &["p", "r"]);
    layers.insert(1, Layer::new("q", "echo changed"));
    let b2 = build(&dir2, "vm:st", "st00001", USER, &layers);
    let info2 = ov::bundle::open_bundle(&b2.path).expect("bundle");
    let s = ov::target::ledger::status(
        host.target(USER),
        wait(),
        None,
        Some(&info2),
        &mut Recorder::default(),
    )
    .expect("status");
    assert_eq!(s.comparison[0], ("p".to_string(), LayerMatch::Applied));
    assert!(matches!(&s.comparison[1], (n, LayerMatch::Differs { .. }) if n == "q"));
    assert_eq!(s.comparison[2], ("r".to_string(), LayerMatch::Missing));
    assert!(!s.up_to_date());
}

#[test]
fn teardown_reverse_order_refcounts_and_managed_block() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("undo");
    let journal = out.path().join("journal");
    let layer = |n: &str| {
        Layer::new(n, &format!("echo install {n} >> {}", journal.display())).undo(&format!(
            "echo \"undo {n} $OV_DEPLOY_ID\" >> {}",
            journal.display()
        ))
    };
    let da = work.path().join("a");
    let db = work.path().join("b");
    std::fs::create_dir(&da).expect("mkdir");
    std::fs::create_dir(&db).expect("mkdir");
    let a = build(
        &da,
        "vm:td",
        "deployA",
        USER,
        &[layer("base"), layer("only-a1"), layer("only-a2")],
    );
    let b = build(
        &db,
        "vm:td2",
        "deployB",
        USER,
        &[layer("base"), layer("only-b")],
    );
    for bundle in [&a, &b] {
        done(
            push(
                host.target(USER),
                wait(),
                &PushOptions::new(&bundle.path),
                &mut Recorder::default(),
            )
            .expect("push"),
        );
    }
    // A managed block in the user's profile, between lines of the user's own.
    let profile = home_of(USER).join(".profile");
    let before = std::fs::read_to_string(&profile).unwrap_or_default();
    let with_block = format!("{before}# mine\n{BLOCK_BEGIN}\nfor f in ~/.config/overthink/env.d/*.env; do . \"$f\"; done\n{BLOCK_END}\nexport MINE=1\n");
    std::fs::write(&profile, &with_block).expect("profile");
    std::fs::write(&journal, "").expect("reset journal");

    let mut exec =
        ov::ssh::master::SshExecutor::connect(host.target(USER), wait(), &mut Recorder::default())
            .expect("connect");
    use ov::ssh::exec::Executor as _;

    // Dry run: the plan, nothing done.
    let dry = teardown_with(
        &mut exec,
        &TeardownOptions {
            name: "vm:td".into(),
            dry_run: true,
            ..Default::default()
        },
        &mut Recorder::default(),
    )
    .expect("dry run");
    assert!(dry.plan.is_some());
    assert_eq!(std::fs::read_to_string(&journal).expect("journal"), "");

    let r = teardown_with(
        &mut exec,
        &TeardownOptions {
            name: "vm:td".into(),
            ..Default::default()
        },
        &mut Recorder::default(),
    )
    .expect("teardown A");
    assert_eq!(r.undone, vec!["only-a2", "only-a1"]);
    assert_eq!(r.released, vec!["base"]);
    assert_eq!(
        std::fs::read_to_string(&journal).expect("journal"),
        "undo only-a2 deployA\nundo only-a1 deployA\n"
    );
    let ledger = ov::target::ledger::read_ledger(&mut exec, USER).expect("ledger");
    assert_eq!(ledger.layers["base"].deployed_by, vec!["deployB"]);
    assert!(!ledger.deploys.contains_key("deployA"));
    assert!(ledger.deploys.contains_key("deployB"));
    // Layers remain: the block stays.
    assert_eq!(
        std::fs::read_to_string(&profile).expect("profile"),
        with_block
    );

    let r = teardown_with(
        &mut exec,
        &TeardownOptions {
            name: "vm:td2".into(),
            ..Default::default()
        },
        &mut Recorder::default(),
    )
    .expect("teardown B");
    assert_eq!(r.undone, vec!["only-b", "base"]);
    let ledger = ov::target::ledger::read_ledger(&mut exec, USER).expect("ledger");
    assert!(
        ledger.layers.is_empty() && ledger.deploys.is_empty(),
        "{ledger:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&profile).expect("profile"),
        format!("{before}# mine\nexport MINE=1\n")
    );
    // Nothing left: a second del says so and succeeds.
    let r = teardown_with(
        &mut exec,
        &TeardownOptions {
            name: "vm:td2".into(),
            ..Default::default()
        },
        &mut Recorder::default(),
    )
    .expect("nothing to do");
    assert!(r.nothing_recorded);
    exec.close().expect("close");
    std::fs::write(&profile, before).expect("restore profile");
}

#[test]
fn failed_undo_keeps_records_and_reports_incomplete() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let b = build(
        work.path(),
        "vm:uf",
        "undofail",
        USER,
        &[
            Layer::new("ok1", "true"),
            Layer::new("bad", "true").undo("echo cannot undo >&2; exit 3"),
        ],
    );
    done(
        push(
            host.target(USER),
            wait(),
            &PushOptions::new(&b.path),
            &mut Recorder::default(),
        )
        .expect("push"),
    );
    let mut exec =
        ov::ssh::master::SshExecutor::connect(host.target(USER), wait(), &mut Recorder::default())
            .expect("connect");
    let e = teardown_with(
        &mut exec,
        &TeardownOptions {
            name: "vm:uf".into(),
            ..Default::default()
        },
        &mut Recorder::default(),
    )
    .expect_err("incomplete");
    assert_eq!(e.exit(), Exit::RemoteStep);
    assert!(e.to_string().contains("`bad` (status 3)"), "{e}");
    let ledger = ov::target::ledger::read_ledger(&mut exec, USER).expect("ledger");
    assert!(ledger.layers.contains_key("bad"));
    assert!(!ledger.layers.contains_key("ok1"));
    assert!(ledger.deploys.contains_key("undofail"));
}

/// The whole `ov push vm:<vm>` path: key and known_hosts from the per-VM directory, state in
/// deploy.yml, then `ov status` and `ov deploy del --purge`.
#[test]
fn vm_commands_end_to_end() {
    use ov::commands::deploy_del::{del as run_del, DelCommand};
    use ov::commands::push::{push as run_push, PushCommand};
    use ov::commands::status::{status as run_status, StatusCommand};
    use ov::commands::{Common, Destination};
    use ov::target::resolve::{ConnectOptions, Paths};
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let home = tempfile::tempdir().expect("tempdir");
    let paths = Paths::under(home.path());
    let vm_dir = paths.vm_dir("it");
    std::fs::create_dir_all(&vm_dir).expect("mkdir");
    std::fs::copy(&host.client_key, vm_dir.join("id_ed25519")).expect("key");
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("cmd");
    let b = build(
        work.path(),
        "vm:it",
        "cmd00001",
        USER,
        &marker_layers(out.path(), &["k1", "k2"]),
    );
    let common = Common {
        destination: Destination::Remote(Box::new(ConnectOptions {
            vm: Some("it".into()),
            port: Some(host.port),
            spec_user: Some(USER.into()),
            ..Default::default()
        })),
        wait_ssh: Duration::from_secs(20),
        json: true,
        verbosity: Default::default(),
        paths: Some(paths.clone()),
    };
    run_push(&PushCommand {
        common: common.clone(),
        options: PushOptions::new(b.path.clone()),
    })
    .expect("push");
    assert!(out.path().join("k2").exists());
    // accept-new recorded the host key in the VM's own known_hosts.
    let kh = std::fs::read_to_string(vm_dir.join("known_hosts")).expect("known_hosts");
    assert_eq!(kh.lines().count(), 1);
    let state = load_vm_state(&paths.deploy_state_file(), "vm:it")
        .expect("load")
        .expect("state");
    assert_eq!(state.ssh_port, Some(host.port));
    assert_eq!(state.ssh_user.as_deref(), Some(USER));
    assert_eq!(
        state.ssh_key_path.as_deref(),
        Some(vm_dir.join("id_ed25519").to_string_lossy().as_ref())
    );
    assert_eq!(
        state.applied_layers,
        Some(vec!["k1".to_string(), "k2".to_string()])
    );

    // The saved state is enough to reach the VM again (no port given this time).
    let saved_only = Common {
        destination: Destination::Remote(Box::new(ConnectOptions {
            vm: Some("it".into()),
            ..Default::default()
        })),
        ..common.clone()
    };
    run_status(&StatusCommand {
        common: saved_only.clone(),
        bundle: Some(b.path.clone()),
        user: None,
        exit_code: true,
    })
    .expect("status");
    run_del(&DelCommand {
        common: saved_only,
        options: TeardownOptions {
            name: "vm:it".into(),
            purge: true,
            ..Default::default()
        },
    })
    .expect("del");
    assert_eq!(
        load_vm_state(&paths.deploy_state_file(), "vm:it").expect("load"),
        None
    );
    let ledger = std::path::Path::new(crate::support::sshd::ROOT_LEDGERS).join(USER);
    assert!(!ledger.join("layers/k1.json").exists());
    assert!(!ledger.join("deploys/cmd00001.json").exists());
}

/// The `host` target: the same bundle through the local executor.
#[test]
fn local_executor_pushes_and_tears_down() {
    use ov::commands::deploy_del::{del as run_del, DelCommand};
    use ov::commands::push::{push as run_push, PushCommand};
    use ov::commands::{Common, Destination};
    // No sshd needed, but the users and the serialisation of the test hosts are.
    let Some(host) = TestHost::prepare(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("local");
    let b = build(
        work.path(),
        "host",
        "local001",
        USER,
        &marker_layers(out.path(), &["here"]),
    );
    let common = Common {
        destination: Destination::Local,
        wait_ssh: Duration::from_secs(1),
        json: false,
        verbosity: Default::default(),
        paths: None,
    };
    let push = PushCommand {
        common: common.clone(),
        options: PushOptions {
            cloud_init: ov::target::cloud_init::CloudInitOptions {
                wait: false,
                ..Default::default()
            },
            ..PushOptions::new(b.path.clone())
        },
    };
    run_push(&push).expect("push");
    assert_eq!(
        std::fs::read_to_string(out.path().join("here")).expect("marker"),
        "here local001\n"
    );
    let del = DelCommand {
        common,
        options: TeardownOptions {
            name: "host".into(),
            user: Some(USER.into()),
            ..Default::default()
        },
    };
    run_del(&del).expect("del");
    assert!(!std::path::Path::new(crate::support::sshd::ROOT_LEDGERS)
        .join(USER)
        .join("layers/here.json")
        .exists());
}

/// The master goes away with the executor, also after a failed command.
#[test]
fn master_is_closed_after_errors() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    use ov::ssh::exec::{As, Executor as _, NullSink, Request};
    let mut exec =
        ov::ssh::master::SshExecutor::connect(host.target(USER), wait(), &mut Recorder::default())
            .expect("connect");
    let socket = exec.control_socket().expect("socket").to_path_buf();
    assert!(socket.exists());
    assert!(socket.as_os_str().len() < 108, "{}", socket.display());
    let out = exec
        .exec(
            Request::new(&["sh", "-c", "echo no >&2; exit 9"], As::Login),
            &mut NullSink,
        )
        .expect("runs");
    assert_eq!(out.status, Some(9));
    assert_eq!(out.stderr, vec!["no"]);
    drop(exec);
    assert!(!socket.exists(), "control socket {} left", socket.display());
    assert!(!socket.parent().expect("dir").exists());
}

/// `deploy del` runs the `undo.sh` kept in root's ledger (as root, with the deploy id and user)
/// and reads its events.
#[test]
fn teardown_runs_the_ledgers_own_undo_script_as_root() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("ledger-undo");
    let id = "0123456789abcdef";
    let b = build(work.path(), "vm:lu", id, USER, &[Layer::new("lu1", "true")]);
    done(
        push(
            host.target(USER),
            wait(),
            &PushOptions::new(&b.path),
            &mut Recorder::default(),
        )
        .expect("push"),
    );
    // A stand-in for the runtime's undo.sh: records how it was called, reports one layer.
    let ledger = std::path::Path::new(crate::support::sshd::ROOT_LEDGERS).join(USER);
    std::fs::write(
        ledger.join("undo.sh"),
        format!(
            "echo \"$(id -un) $*\" > {}/called\necho '::ov:: undo-begin deploy=vm:lu'\necho '::ov:: undo-layer layer=lu1 action=teardown'\necho '::ov:: undo-layer layer=lu1 action=removed'\necho '::ov:: undo-end result=ok removed=1 kept=0'\n",
            out.path().display()
        ),
    )
    .expect("write undo.sh");
    let mut exec =
        ov::ssh::master::SshExecutor::connect(host.target(USER), wait(), &mut Recorder::default())
            .expect("connect");
    let r = teardown_with(
        &mut exec,
        &TeardownOptions {
            name: "vm:lu".into(),
            no_wait_lock: true,
            ..Default::default()
        },
        &mut Recorder::default(),
    )
    .expect("teardown");
    assert_eq!(r.script, Some(ov::apply::teardown::TeardownScript::Ledger));
    assert_eq!(r.undone, vec!["lu1"]);
    assert_eq!(
        std::fs::read_to_string(out.path().join("called")).expect("called"),
        format!("root --deploy-id {id} --user {USER} --no-wait\n")
    );
}

/// `--ssh-config FILE`: the destination is a Host alias; user, port, key and known_hosts come
/// from the file.
#[test]
fn ssh_config_file_supplies_the_connection() {
    use ov::ssh::exec::{As, Executor as _, Request};
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    let cfg = host.dir().join("client_config");
    std::fs::write(
        &cfg,
        format!(
            "Host ov-cfgtest\n  HostName {}\n  Port {}\n  User {USER}\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n",
            host.addr,
            host.port,
            host.client_key.display(),
            host.dir().join("cfg_known_hosts").display()
        ),
    )
    .expect("write config");
    let root = tempfile::tempdir().expect("tempdir");
    let target = ov::target::resolve::resolve(
        &ov::target::resolve::ConnectOptions {
            vm: Some("cfgtest".into()),
            ssh_config: Some(cfg),
            ..Default::default()
        },
        None,
        &ov::target::resolve::Paths::under(root.path()),
    )
    .expect("resolve");
    assert_eq!(target.host, "ov-cfgtest");
    let mut exec = ov::ssh::master::SshExecutor::connect(target, wait(), &mut Recorder::default())
        .expect("connect through the config");
    let mut req = Request::new(&["id", "-un"], As::Login);
    req.capture_stdout = true;
    let out = exec.exec(req, &mut ov::ssh::exec::NullSink).expect("id");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), USER);
    exec.close().expect("close");
    assert!(host.dir().join("cfg_known_hosts").exists());
}
