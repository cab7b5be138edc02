//! Push faults against a real sshd: a target that comes up late, nothing listening, a wrong
//! key, a key others may read (OpenSSH ignores it), a changed host key, sudo wanting a password, a connection cut mid-run, two pushes at
//! once, bundles altered after compile, a failing layer, and cloud-init's answers.

use std::path::Path;
use std::time::{Duration, Instant};

use ov::apply::push::{push, PushError, PushOptions};
use ov::exit::{Exit, HasExit};
use ov::ssh::connect::WaitOptions;
use ov::ssh::error::ConnectError;
use ov::ssh::exec::ExecError;
use ov::ssh::master::SshExecutor;
use ov::target::cloud_init::{CloudInitError, CloudInitOptions, CloudInitOutcome};
use ov::ui::progress::{Event, Recorder, RunEvent};

use crate::ssh_push::{done, scratch, wait};
use crate::support::bundle::{build, rewrite_checksum, tamper_inner, Layer};
use crate::support::sshd::{Kind, TestHost, NOSUDO_USER, USER};

fn short(secs: u64) -> WaitOptions {
    WaitOptions {
        deadline: Duration::from_secs(secs),
        ..Default::default()
    }
}

#[test]
fn target_not_listening_yet_comes_up_later() {
    let Some(mut host) = TestHost::prepare(Kind::Netns) else {
        return;
    };
    let target = host.target(USER);
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut rec = Recorder::default();
        let r = SshExecutor::connect(target, short(60), &mut rec).map(|mut e| {
            use ov::ssh::exec::Executor as _;
            let n = e.attempts();
            let _ = e.close();
            n
        });
        let _ = tx.send(());
        (r, rec)
    });
    std::thread::sleep(Duration::from_secs(5));
    assert!(rx.try_recv().is_err(), "connected before sshd was started");
    host.start_sshd();
    let (r, rec) = waiter.join().expect("thread");
    let attempts = r.expect("connected once sshd came up");
    assert!(attempts > 3, "attempts {attempts}");
    assert!(started.elapsed() >= Duration::from_secs(5));
    let waits = rec
        .events
        .iter()
        .filter(|e| matches!(e, Event::WaitSsh { .. }))
        .count();
    assert_eq!(waits as u32, attempts - 1);
    assert!(rec
        .events
        .iter()
        .any(|e| matches!(e, Event::WaitSsh { reason, .. } if reason.contains("refused"))));
}

#[test]
fn nothing_listening_honours_the_deadline() {
    let Some(host) = TestHost::prepare(Kind::Loopback) else {
        return;
    };
    let t0 = Instant::now();
    let e = SshExecutor::connect(host.target(USER), short(3), &mut Recorder::default())
        .err()
        .expect("nothing listens");
    let took = t0.elapsed();
    assert!(matches!(e, ConnectError::Timeout { .. }), "{e}");
    assert_eq!(e.exit(), Exit::CannotConnect);
    assert!(e.to_string().contains("after 3s"), "{e}");
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(took < Duration::from_secs(9), "{took:?}");
}

#[test]
fn wrong_key_fails_at_once_without_retrying() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    let mut target = host.target(USER);
    target.identity = Some(host.wrong_key.clone());
    let mark = host.mark();
    let mut rec = Recorder::default();
    let t0 = Instant::now();
    let e = SshExecutor::connect(target, short(60), &mut rec)
        .err()
        .expect("auth fails");
    assert!(matches!(e, ConnectError::Auth { .. }), "{e}");
    assert!(e.to_string().contains("Permission denied"), "{e}");
    assert!(e.to_string().contains("wrong_key"), "{e}");
    refused_at_once(&e, &host, mark, &rec);
    assert!(t0.elapsed() < Duration::from_secs(20));
}

/// A connection refused for good: exit 5, after exactly one attempt, and no retry was announced.
fn refused_at_once(e: &ConnectError, host: &TestHost, mark: usize, rec: &Recorder) {
    assert_eq!(e.exit(), Exit::CannotConnect);
    assert_eq!(host.connects_since(mark), 1, "exactly one attempt");
    assert!(!rec
        .events
        .iter()
        .any(|e| matches!(e, Event::WaitSsh { .. })));
}

/// A private key of mode 0644: OpenSSH ignores it and the server says only "Permission denied
/// (publickey)". The error keeps OpenSSH's warning and says what to do (exit 5, one attempt);
/// `ov push -i KEY` refuses such a key before connecting at all.
#[test]
fn a_key_others_can_read_is_named_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    let open_key = host.dir().join("open_key");
    std::fs::copy(&host.client_key, &open_key).expect("copy key");
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    // 1. Through OpenSSH, as a key named in an `--ssh-config` reaches it.
    let mut target = host.target(USER);
    target.identity = Some(open_key.clone());
    let mark = host.mark();
    let mut rec = Recorder::default();
    let e = SshExecutor::connect(target, short(60), &mut rec)
        .err()
        .expect("the key is ignored");
    let msg = e.to_string();
    assert!(matches!(e, ConnectError::KeyPermissions { .. }), "{msg}");
    assert!(msg.contains("UNPROTECTED PRIVATE KEY FILE"), "{msg}");
    assert!(
        msg.contains(&format!(
            "Load key \"{}\": bad permissions",
            open_key.display()
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("`chmod 600 {}`", open_key.display())),
        "{msg}"
    );
    refused_at_once(&e, &host, mark, &rec);

    // 2. `ov push BUNDLE -i KEY`: refused before anything connects.
    use crate::cli_common::{demo, expect_code, ov, run};
    let work = tempfile::tempdir().expect("tempdir");
    let bundle = work.path().join("vm-demo.tar.gz");
    let r = run(ov()
        .arg("-C")
        .arg(demo())
        .args(["compile", "vm:demo", "-o"])
        .arg(&bundle));
    expect_code(&r, 0, "compile");
    let home = work.path().join("home");
    std::fs::create_dir(&home).expect("home");
    let mark = host.mark();
    let r = run(ov()
        .env("HOME", &home)
        .arg("-C")
        .arg(demo())
        .arg("push")
        .arg(&bundle)
        .args(["--host", &host.addr, "--port", &host.port.to_string()])
        .args(["--ssh-user", USER, "--wait-ssh", "10", "-i"])
        .arg(&open_key)
        .arg("--known-hosts")
        .arg(host.dir().join("known_hosts")));
    expect_code(&r, 5, "push with a key others may read");
    assert!(r.stderr.contains("has mode 0644"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("`chmod 600 {}`", open_key.display())),
        "{}",
        r.stderr
    );
    assert_eq!(host.connects_since(mark), 0, "nothing connected");
}

#[test]
fn changed_host_key_is_refused() {
    let Some(mut host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    let known_hosts = host.dir().join("known_hosts");
    {
        // First contact records the key (accept-new).
        let mut e = SshExecutor::connect(host.target(USER), short(10), &mut Recorder::default())
            .expect("first contact");
        use ov::ssh::exec::Executor as _;
        e.close().expect("close");
    }
    let recorded = std::fs::read_to_string(&known_hosts).expect("known_hosts written");
    // (Debian's ssh_config hashes host names, so only the count of lines is checked.)
    assert_eq!(recorded.lines().count(), 1, "{recorded}");

    host.rotate_host_key();
    let mark = host.mark();
    let e = SshExecutor::connect(host.target(USER), short(30), &mut Recorder::default())
        .err()
        .expect("changed key refused");
    let msg = e.to_string();
    assert!(matches!(e, ConnectError::HostKeyChanged { .. }), "{msg}");
    assert!(
        msg.contains(&format!("`{}` line 1", known_hosts.display())),
        "{msg}"
    );
    assert!(msg.contains("ssh-keygen -f"), "{msg}");
    assert_eq!(host.connects_since(mark), 1, "no retry on a changed key");
    assert_eq!(std::fs::read_to_string(&known_hosts).expect("kh"), recorded);
}

#[test]
fn sudo_wanting_a_password_fails_fast() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("sudo");
    let b = build(
        work.path(),
        "vm:sudo",
        "sudo001",
        NOSUDO_USER,
        &[Layer::new(
            "x",
            &format!("touch {}/ran", out.path().display()),
        )],
    );
    let mark = host.mark();
    let e = push(
        host.target(NOSUDO_USER),
        wait(),
        &PushOptions::new(&b.path),
        &mut Recorder::default(),
    )
    .expect_err("no passwordless sudo");
    let msg = e.to_string();
    assert!(
        matches!(e, PushError::Exec(ExecError::Sudo { .. })),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("user `{NOSUDO_USER}` needs passwordless sudo")),
        "{msg}"
    );
    assert!(msg.contains("password is required"), "{msg}");
    assert_eq!(e.exit(), Exit::CannotConnect);
    // sudo refused the run channel's entry: nothing stored, nothing run, no other channel.
    assert_eq!(host.sessions_since(mark), 1);
    assert!(!out.path().join("ran").exists());
}

#[test]
fn connection_cut_mid_run_then_the_next_push_resumes() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("cut");
    let o = out.path().display().to_string();
    let slow = format!(
        "if [ -e {o}/slow ]; then touch {o}/slow-started; for i in $(seq 1 300); do echo tick $i; sleep 0.1; done; fi\ntouch {o}/second"
    );
    let b = build(
        work.path(),
        "vm:cut",
        "cut0001",
        USER,
        &[
            Layer::new("first", &format!("touch {o}/first")),
            Layer::new("second", &slow),
            Layer::new("third", &format!("touch {o}/third")),
        ],
    );
    std::fs::write(out.path().join("slow"), "").expect("flag");
    let target = host.target(USER);
    let path = b.path.clone();
    let pusher = std::thread::spawn(move || {
        let mut rec = Recorder::default();
        let r = push(target, wait(), &PushOptions::new(&path), &mut rec);
        (r, rec)
    });
    let t0 = Instant::now();
    while !out.path().join("slow-started").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "slow layer never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(host.kill_connections() > 0);
    let (r, rec) = pusher.join().expect("thread");
    let e = r.expect_err("the cut must fail the push");
    assert!(matches!(e, PushError::Interrupted { .. }), "{e}");
    assert!(e.to_string().contains("push again to resume"), "{e}");
    assert_eq!(e.exit(), Exit::CannotConnect);
    assert!(rec
        .events
        .iter()
        .any(|e| matches!(e, Event::Output { line, .. } if line.starts_with("tick"))));
    assert!(out.path().join("first").exists());
    assert!(!out.path().join("third").exists());
    // On the target the orphaned run dies on its next write into the cut connection, and the
    // bootstrap removes its work directory on the way out.
    let t0 = Instant::now();
    let leftovers = || {
        std::fs::read_dir(ov::apply::push::REMOTE_BASE)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("vm-cut."))
                    .count()
            })
            .unwrap_or(0)
    };
    while leftovers() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "remote work dir left behind"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Fix the cause and push again: `first` is skipped, the rest runs.
    std::fs::remove_file(out.path().join("slow")).expect("unflag");
    let mut rec = Recorder::default();
    let r = done(
        push(
            host.target(USER),
            wait(),
            &PushOptions::new(&b.path),
            &mut rec,
        )
        .expect("resume"),
    );
    assert_eq!((r.applied, r.skipped), (2, 1));
    assert!(rec
        .run_events()
        .iter()
        .any(|e| matches!(e, RunEvent::LayerSkip { layer, .. } if layer == "first")));
    assert!(out.path().join("third").exists());
    assert_eq!(r.applied_layers, vec!["first", "second", "third"]);
}

#[test]
fn two_pushes_at_once_never_interleave() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("twice");
    let journal = out.path().join("journal");
    let layer = |name: &str| {
        Layer::new(
            name,
            &format!(
                "echo \"start $OV_DEPLOY_ID\" >> {j}; touch {o}/started-$OV_DEPLOY_ID; sleep 1.5; echo \"end $OV_DEPLOY_ID\" >> {j}",
                j = journal.display(),
                o = out.path().display()
            ),
        )
    };
    let mk = |id: &str, layer_name: &str| {
        let d = work.path().join(id);
        std::fs::create_dir(&d).expect("mkdir");
        build(&d, &format!("vm:{id}"), id, USER, &[layer(layer_name)])
    };
    let a = mk("twiceA", "slow-a");
    let b = mk("twiceB", "slow-b");

    // Both wait for the lock in turn.
    let spawn = |path: std::path::PathBuf, no_wait: bool| {
        let target = host.target(USER);
        std::thread::spawn(move || {
            let mut o = PushOptions::new(&path);
            o.no_wait_lock = no_wait;
            push(target, wait(), &o, &mut Recorder::default())
        })
    };
    let ta = spawn(a.path.clone(), false);
    let tb = spawn(b.path.clone(), false);
    let ra = ta.join().expect("thread a");
    let rb = tb.join().expect("thread b");
    assert!(ra.is_ok() && rb.is_ok(), "{:?} / {:?}", ra.err(), rb.err());
    let j = std::fs::read_to_string(&journal).expect("journal");
    let lines: Vec<&str> = j.lines().collect();
    assert_eq!(lines.len(), 4, "{j}");
    assert_eq!(lines[0].replace("start", "end"), lines[1], "{j}");
    assert_eq!(lines[2].replace("start", "end"), lines[3], "{j}");

    // With --no-wait the second is refused while the first holds the lock.
    host.clear_ledger(USER);
    std::fs::write(&journal, "").expect("reset");
    for id in ["twiceA", "twiceB"] {
        let _ = std::fs::remove_file(out.path().join(format!("started-{id}")));
    }
    let ta = spawn(a.path.clone(), false);
    let t0 = Instant::now();
    while !out.path().join("started-twiceA").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "first push never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rb = spawn(b.path.clone(), true).join().expect("thread b");
    let e = rb.expect_err("refused while locked");
    assert!(matches!(e, PushError::Locked { .. }), "{e}");
    assert_eq!(e.exit(), Exit::Locked);
    ta.join().expect("thread a").expect("first push");
    assert!(!out.path().join("started-twiceB").exists());
}

#[test]
fn bundle_altered_after_compile_is_refused_before_anything_runs() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("tamper");
    let b = build(
        work.path(),
        "vm:tamper",
        "tamper01",
        USER,
        &[Layer::new(
            "t",
            &format!("touch {}/ran", out.path().display()),
        )],
    );
    // 1. The archive changed after compile: refused locally, nothing connects.
    let original = std::fs::read(&b.path).expect("read");
    let mut bytes = original.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&b.path, &bytes).expect("write");
    let mark = host.mark();
    let e = push(
        host.target(USER),
        wait(),
        &PushOptions::new(&b.path),
        &mut Recorder::default(),
    )
    .expect_err("tampered archive");
    assert_eq!(e.exit(), Exit::Integrity, "{e}");
    assert!(e.to_string().contains("altered after compile"), "{e}");
    assert_eq!(host.connects_since(mark), 0);

    // 2. A script changed inside and the archive re-checksummed: run.sh's SHA256SUMS check
    //    refuses on the target, before any layer runs.
    std::fs::write(&b.path, &original).expect("restore");
    tamper_inner(
        &b.path,
        "layers/01-t/01-system.sh",
        "#!/usr/bin/env bash\necho evil\n",
    );
    let e = push(
        host.target(USER),
        wait(),
        &PushOptions::new(&b.path),
        &mut Recorder::default(),
    )
    .expect_err("inner tamper");
    assert!(matches!(e, PushError::RemoteIntegrity { .. }), "{e}");
    assert_eq!(e.exit(), Exit::Integrity);
    assert!(!out.path().join("ran").exists());

    // 3. A missing .sha256 is invalid input.
    std::fs::remove_file(ov::bundle::checksum_path(&b.path)).expect("rm");
    let e = push(
        host.target(USER),
        wait(),
        &PushOptions::new(&b.path),
        &mut Recorder::default(),
    )
    .expect_err("no checksum");
    assert_eq!(e.exit(), Exit::InvalidInput, "{e}");
    rewrite_checksum(&b.path);
}

#[test]
fn failing_layer_reports_layer_script_status_and_tail() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("fail");
    let flag = out.path().join("broken");
    std::fs::write(&flag, "").expect("flag");
    let b = build(
        work.path(),
        "vm:fail",
        "fail0001",
        USER,
        &[
            Layer::new("good", "echo fine"),
            Layer::new(
                "bad",
                &format!(
                    "echo preparing\nif [ -e {} ]; then echo boom-stdout; echo boom-stderr >&2; exit 7; fi",
                    flag.display()
                ),
            ),
            Layer::new("after", "true"),
        ],
    );
    let e = push(
        host.target(USER),
        wait(),
        &PushOptions::new(&b.path),
        &mut Recorder::default(),
    )
    .expect_err("layer fails");
    assert_eq!(e.exit(), Exit::RemoteStep);
    match &e {
        PushError::StepFailed { failure, .. } => {
            assert_eq!(failure.layer, "bad");
            assert_eq!(failure.script, "01-system.sh");
            assert_eq!(failure.status, 7);
            // stdout and stderr are separate streams: their relative order is not kept.
            let mut tail = failure.tail.clone();
            tail.sort();
            assert_eq!(tail, vec!["boom-stderr", "boom-stdout", "preparing"]);
        }
        other => panic!("unexpected {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("layer `bad` failed") && msg.contains("boom-stderr"),
        "{msg}"
    );
    // The completed layer is recorded, the failed one is not: a re-push resumes.
    std::fs::remove_file(&flag).expect("fix");
    let r = done(
        push(
            host.target(USER),
            wait(),
            &PushOptions::new(&b.path),
            &mut Recorder::default(),
        )
        .expect("resume"),
    );
    assert_eq!((r.applied, r.skipped), (2, 1));
}

/// A stand-in `cloud-init` (the real one needs a booted system; hooks for it are the
/// `program` option). Modes: done, degraded, error, disabled, old (no --format), restart.
fn fake_cloud_init(dir: &Path, mode: &str) -> String {
    let p = dir.join("fake-cloud-init");
    let script = format!(
        r#"#!/bin/bash
mode={mode}
count_file={count}
n=$(cat "$count_file" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$count_file"
case " $* " in *" --format json "*) json=1 ;; *) json=0 ;; esac
case $mode in
  done) echo '{{"status":"done","extended_status":"done","errors":[],"recoverable_errors":{{}}}}'; exit 0 ;;
  degraded) echo '{{"status":"done","extended_status":"degraded done","errors":[],"recoverable_errors":{{"WARNING":["Failed to set locale"]}}}}'; exit 2 ;;
  error) echo '{{"status":"error","extended_status":"error","errors":["(scripts_user) Runparts: 1 failures"],"recoverable_errors":{{}}}}'; exit 1 ;;
  disabled) echo '{{"status":"disabled","extended_status":"disabled","errors":[],"recoverable_errors":{{}}}}'; exit 0 ;;
  old) if [ $json = 1 ]; then echo "usage: cloud-init status [-h] [-l] [-w]" >&2; exit 2; fi; echo "status: done"; exit 0 ;;
  restart) if [ $n = 1 ]; then touch {dir}/waiting; sleep 8; fi; echo '{{"status":"done","errors":[]}}'; exit 0 ;;
esac
"#,
        count = dir.join("count").display(),
        dir = dir.display()
    );
    std::fs::write(&p, script).expect("write fake");
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let _ = std::fs::remove_file(dir.join("count"));
    p.to_string_lossy().into_owned()
}

#[test]
fn cloud_init_answers_decide_whether_to_go_on() {
    let Some(host) = TestHost::start(Kind::Loopback) else {
        return;
    };
    host.clear_ledger(USER);
    let work = tempfile::tempdir().expect("tempdir");
    let out = scratch("ci");
    let b = build(
        work.path(),
        "vm:ci",
        "ci000001",
        USER,
        &[Layer::new("c", "true")],
    );
    let push_with = |program: String, ignore: bool| {
        let mut o = PushOptions::new(&b.path);
        o.cloud_init = CloudInitOptions {
            program,
            ignore_errors: ignore,
            deadline: Duration::from_secs(60),
            wait: true,
        };
        let mut rec = Recorder::default();
        let r = push(host.target(USER), wait(), &o, &mut rec);
        (r, rec)
    };

    let mark = host.mark();
    let (r, _) = push_with(fake_cloud_init(out.path(), "done"), false);
    assert_eq!(done(r.expect("done")).cloud_init, CloudInitOutcome::Done);
    assert_eq!(
        host.sessions_since(mark),
        3,
        "the run channel stopped at its entry, cloud-init, the run channel again"
    );

    let (r, rec) = push_with(fake_cloud_init(out.path(), "degraded"), false);
    assert_eq!(
        done(r.expect("degraded goes on")).cloud_init,
        CloudInitOutcome::Degraded(vec!["WARNING: Failed to set locale".into()])
    );
    assert!(rec.events.iter().any(|e| matches!(e, Event::CloudInit { detail, .. } if detail.iter().any(|d| d.contains("locale")))));

    let mark = host.mark();
    let (r, _) = push_with(fake_cloud_init(out.path(), "error"), false);
    let e = r.expect_err("error stops");
    assert!(
        matches!(e, PushError::CloudInit(CloudInitError::Failed { .. })),
        "{e}"
    );
    assert_eq!(e.exit(), Exit::CloudInit);
    assert!(e.to_string().contains("Runparts"), "{e}");
    assert_eq!(
        host.sessions_since(mark),
        2,
        "the run channel stopped at its entry (before sudo), and cloud-init; nothing ran"
    );

    let (r, _) = push_with(fake_cloud_init(out.path(), "error"), true);
    assert!(matches!(
        done(r.expect("ignored")).cloud_init,
        CloudInitOutcome::IgnoredErrors(_)
    ));

    let (r, _) = push_with(fake_cloud_init(out.path(), "disabled"), false);
    assert_eq!(
        done(r.expect("disabled")).cloud_init,
        CloudInitOutcome::Disabled
    );

    let (r, _) = push_with(fake_cloud_init(out.path(), "old"), false);
    assert_eq!(
        done(r.expect("plain fallback")).cloud_init,
        CloudInitOutcome::Done
    );

    let (r, _) = push_with(
        out.path()
            .join("no-such-cloud-init")
            .to_string_lossy()
            .into_owned(),
        false,
    );
    assert_eq!(
        done(r.expect("absent")).cloud_init,
        CloudInitOutcome::Absent
    );

    // sshd "restarting" while cloud-init runs: the connection drops, we reconnect and ask again.
    let program = fake_cloud_init(out.path(), "restart");
    let _ = std::fs::remove_file(out.path().join("waiting"));
    let mark = host.mark();
    let r = std::thread::scope(|s| {
        let h = s.spawn(|| push_with(program.clone(), false));
        let t0 = Instant::now();
        while !out.path().join("waiting").exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "cloud-init wait never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        host.kill_connections();
        h.join().expect("thread")
    });
    let (r, rec) = r;
    assert_eq!(
        done(r.expect("survives the drop")).cloud_init,
        CloudInitOutcome::Done
    );
    assert_eq!(host.connections_since(mark), 2);
    assert_eq!(
        rec.events
            .iter()
            .filter(|e| matches!(e, Event::Connected { .. }))
            .count(),
        2
    );
}
