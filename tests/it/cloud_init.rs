//! The cloud-init wait of `ov push` against the real `cloud-init` package of Debian 13 on a
//! separate chroot host (support/cloudhost.rs): every state is produced by cloud-init's own boot
//! stages or by the files `cloud-init status` reads, never by a stand-in program — not started,
//! done, degraded, error (with and without `ignore_errors`, through the library and the `ov`
//! binary), disabled (right after a failed run, and after a reboot), not installed, and still
//! running when the push begins.
//! Invariant: whatever cloud-init says, the push either goes on (and its layer sees cloud-init
//! finished) or stops before anything is uploaded or recorded.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use ov::apply::push::{push, PushError, PushOptions, PushOutcome, PushReport};
use ov::exit::{Exit, HasExit};
use ov::ssh::connect::WaitOptions;
use ov::target::cloud_init::{CloudInitError, CloudInitOptions, CloudInitOutcome};
use ov::ui::progress::{Event, Recorder};

use crate::support::bundle::{build, Built, Layer};
use crate::support::cloudhost::{CloudHost, USER};

/// Where the layers of these bundles write what they saw (inside the root, on disk).
const SEEN: &str = "var/tmp/ov-it-seen";

/// A one-layer bundle for `case` whose layer records, when it runs, what `cloud-init status`
/// says at that moment (or that cloud-init is not installed).
fn bundle(work: &Path, case: &str) -> Built {
    let dir = work.join(case);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let script = format!(
        "mkdir -p /{SEEN}\n\
if command -v cloud-init >/dev/null; then cloud-init status --format json > /{SEEN}/{case}.json || true\n\
else echo '{{\"status\": \"not installed\"}}' > /{SEEN}/{case}.json; fi"
    );
    build(
        &dir,
        &format!("vm:ci-{case}"),
        &format!("ci-{case}"),
        USER,
        &[Layer::new(&format!("ci-{case}"), &script)],
    )
}

/// What the layer of `case` saw of cloud-init; `None` if the layer never ran.
fn seen(host: &CloudHost, case: &str) -> Option<Value> {
    let text = std::fs::read_to_string(host.path(&format!("{SEEN}/{case}.json"))).ok()?;
    Some(serde_json::from_str(&text).expect("the layer wrote JSON"))
}

fn opts(b: &Built, ignore_errors: bool, deadline: Duration) -> PushOptions {
    let mut o = PushOptions::new(&b.path);
    o.cloud_init = CloudInitOptions {
        ignore_errors,
        deadline,
        ..CloudInitOptions::default()
    };
    o
}

fn wait() -> WaitOptions {
    WaitOptions {
        deadline: Duration::from_secs(30),
        ..WaitOptions::default()
    }
}

fn push_case(
    host: &CloudHost,
    b: &Built,
    ignore_errors: bool,
    deadline: Duration,
) -> (Result<PushReport, PushError>, Recorder) {
    let mut rec = Recorder::default();
    let r = push(
        host.target(),
        wait(),
        &opts(b, ignore_errors, deadline),
        &mut rec,
    )
    .map(|o| match o {
        PushOutcome::Done(r) => *r,
        PushOutcome::DryRun(_) => panic!("expected a real push"),
    });
    (r, rec)
}

/// The cloud-init notes the push showed, as `state` plus detail lines.
fn notes(rec: &Recorder) -> Vec<(String, Vec<String>)> {
    rec.events
        .iter()
        .filter_map(|e| match e {
            Event::CloudInit { state, detail } => Some((state.clone(), detail.clone())),
            _ => None,
        })
        .collect()
}

/// Nothing of `case` reached the target: no upload left, no layer ran, no ledger record.
fn assert_nothing_ran(host: &CloudHost, case: &str) {
    assert_eq!(seen(host, case), None, "{case}: the layer ran");
    assert!(
        !host.ledger_layers().contains(&format!("ci-{case}.json")),
        "{case}: a ledger record was written: {:?}",
        host.ledger_layers()
    );
    let uploads = std::fs::read_dir(host.path("var/tmp/ov"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(uploads, 0, "{case}: something was uploaded");
}

/// `cloud-init status` in the host right now, checked to be the state a case means to test.
fn require_state(host: &CloudHost, status: &str, extended: &str, exit: i32) -> Value {
    let (v, code) = host.status();
    assert_eq!(
        (v["status"].as_str(), v["extended_status"].as_str(), code),
        (Some(status), Some(extended), exit),
        "cloud-init is not in the state this case needs: {v:#}"
    );
    v
}

/// The `ov` binary, pushing `vm:ci` of a one-layer project (compiled by `ov` itself) to the host;
/// its layer records what `cloud-init status` says, like [`bundle`]'s, as case `cli`.
struct Cli {
    project: std::path::PathBuf,
    home: std::path::PathBuf,
    args: Vec<String>,
}

impl Cli {
    fn new(host: &CloudHost, work: &Path) -> Cli {
        let project = work.join("project");
        let home = work.join("home");
        let files = [
            (
                "overthink.yml",
                "version: 2\nincludes:\n  - build.yml\n  - deploy.yml\ndiscover:\n  layers:\n    - path: layers\n".to_string(),
            ),
            ("build.yml", "distros:\n  debian:\n    formats:\n      deb: {}\n".to_string()),
            (
                "deploy.yml",
                format!(
                    "version: 3\ndeployments:\n  images:\n    ci:\n      target: vm\n      vm_source: ci\n      add_layers:\n        - ci-cli\n      install_opts:\n        allow_root_tasks: true\n\
vm:\n  ci:\n    source:\n      kind: cloud_image\n      base_user: {USER}\n      distro: \"debian:13\"\n    ssh:\n      user: {USER}\n      port: 22\n"
                ),
            ),
            (
                "layers/ci-cli/layer.yml",
                format!(
                    "layer:\n  name: ci-cli\n  description: records what cloud-init says when the layer runs\n  tasks:\n    - cmd: |\n        mkdir -p /{SEEN}\n        cloud-init status --format json > /{SEEN}/cli.json || true\n      user: root\n"
                ),
            ),
        ];
        for (name, body) in files {
            let p = project.join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, body).expect("write project file");
        }
        std::fs::create_dir_all(&home).expect("home");
        let t = host.target();
        let args = [
            "push",
            "vm:ci",
            "--host",
            t.host.as_str(),
            "--port",
            "22",
            "--ssh-user",
            USER,
            "--wait-ssh",
            "30",
            "--wait-cloud-init",
            "60",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "-i".to_string(),
            host.client_key.display().to_string(),
            "--known-hosts".to_string(),
            home.join("known_hosts").display().to_string(),
        ])
        .collect();
        Cli {
            project,
            home,
            args,
        }
    }

    fn push(&self, extra: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_ov"))
            .arg("-C")
            .arg(&self.project)
            .args(&self.args)
            .args(extra)
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("OV_PROJECT")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("ov runs")
    }

    fn text(&self, out: &std::process::Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// Print how long the case took (the figures in the test log; nothing is asserted on them).
fn lap(clock: &mut Instant, case: &str) {
    eprintln!(
        "cloud-init case {case}: {:.1}s",
        clock.elapsed().as_secs_f64()
    );
    *clock = Instant::now();
}

#[test]
fn real_cloud_init_states_decide_whether_the_push_goes_on() {
    let Some(host) = CloudHost::start() else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let version = host.sh("cloud-init --version 2>&1");
    eprintln!("cloud-init on the target: {}", version.trim());

    let mut clock = Instant::now();
    // Not started: installed but never booted in this root (no status.json). `--wait` waits
    // for it to start, so our deadline ends the push — before anything is uploaded.
    let v = require_state(&host, "not started", "not started", 0);
    assert_eq!(v["boot_status_code"], "enabled-by-sysvinit", "{v:#}");
    let b = bundle(work.path(), "unstarted");
    let t0 = Instant::now();
    let (r, _) = push_case(&host, &b, false, Duration::from_secs(3));
    let e = r.expect_err("not started: our deadline ends the wait");
    assert!(
        matches!(
            e,
            PushError::CloudInit(CloudInitError::Timeout { secs: 3, .. })
        ),
        "{e}"
    );
    assert_eq!(e.exit(), Exit::CloudInit);
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_nothing_ran(&host, "unstarted");
    lap(&mut clock, "not started");

    // Done: a clean boot whose user-data command succeeds.
    let stages =
        host.boot("#cloud-config\nruncmd:\n  - [sh, -c, 'echo ov-it > /var/tmp/ov-it-runcmd']\n");
    let v = require_state(&host, "done", "done", 0);
    assert_eq!(v["errors"], serde_json::json!([]), "{v:#}\n{stages}");
    assert!(host.path("var/tmp/ov-it-runcmd").is_file(), "{stages}");
    let b = bundle(work.path(), "done");
    let (r, rec) = push_case(&host, &b, false, Duration::from_secs(60));
    let rep = r.expect("done: the push goes on");
    assert_eq!(rep.cloud_init, CloudInitOutcome::Done);
    assert_eq!(rep.applied, 1);
    assert!(
        notes(&rec).iter().any(|(s, _)| s == "done"),
        "{:?}",
        notes(&rec)
    );
    assert_eq!(seen(&host, "done").expect("layer ran")["status"], "done");
    lap(&mut clock, "done");

    // Degraded: user-data with a key cloud-init does not know fails its schema validation, a
    // recoverable error ("degraded done", exit 2). The push goes on and shows the warning.
    let stages = host.boot("#cloud-config\nov_it_no_such_module: true\n");
    let v = require_state(&host, "done", "degraded done", 2);
    let warning = "cloud-config failed schema validation!";
    assert!(
        v["recoverable_errors"]["WARNING"]
            .as_array()
            .is_some_and(|w| w
                .iter()
                .any(|m| m.as_str().is_some_and(|m| m.starts_with(warning)))),
        "{v:#}\n{stages}"
    );
    let b = bundle(work.path(), "degraded");
    let (r, rec) = push_case(&host, &b, false, Duration::from_secs(60));
    let rep = r.expect("degraded: the push goes on");
    match &rep.cloud_init {
        CloudInitOutcome::Degraded(r) => assert!(
            r.iter()
                .any(|m| m.starts_with(&format!("WARNING: {warning}"))),
            "{r:?}"
        ),
        other => panic!("degraded: unexpected {other:?}"),
    }
    assert!(
        notes(&rec)
            .iter()
            .any(|(s, d)| s.starts_with("degraded") && d.iter().any(|m| m.contains(warning))),
        "the warning is shown: {:?}",
        notes(&rec)
    );
    assert_eq!(rep.applied, 1);
    assert!(seen(&host, "degraded").is_some(), "degraded: the layer ran");
    lap(&mut clock, "degraded");

    // Error: a user-data command fails, so the final stage's `scripts-user` fails ("error",
    // exit 1). `ov push` stops with exit 6 showing cloud-init's errors; nothing is uploaded.
    let stages =
        host.boot("#cloud-config\nruncmd:\n  - [sh, -c, 'echo ov-it-failing >&2; exit 3']\n");
    let v = require_state(&host, "error", "error - done", 1);
    let runparts = "Runparts: 1 failures (runcmd) in 1 attempted commands";
    assert!(
        v["errors"].to_string().contains(runparts),
        "{v:#}\n{stages}"
    );
    let b = bundle(work.path(), "error");
    let (r, _) = push_case(&host, &b, false, Duration::from_secs(60));
    let e = r.expect_err("error: the push stops");
    assert_eq!(e.exit(), Exit::CloudInit);
    assert_eq!(e.exit().code(), 6);
    match &e {
        PushError::CloudInit(CloudInitError::Failed { errors, .. }) => {
            assert!(errors.iter().any(|m| m.contains(runparts)), "{errors:?}")
        }
        other => panic!("error: unexpected {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(runparts) && msg.contains("--ignore-cloud-init-errors"),
        "{msg}"
    );
    assert_nothing_ran(&host, "error");
    // The same through the `ov` binary with a bundle it compiles from a project: exit status 6.
    let cli = Cli::new(&host, work.path());
    let out = cli.push(&[]);
    assert_eq!(out.status.code(), Some(6), "{}", cli.text(&out));
    assert!(cli.text(&out).contains(runparts), "{}", cli.text(&out));
    assert_nothing_ran(&host, "cli");
    // With ignore_errors the push goes on, still naming the errors.
    let (r, rec) = push_case(&host, &b, true, Duration::from_secs(60));
    let rep = r.expect("error ignored: the push goes on");
    match &rep.cloud_init {
        CloudInitOutcome::IgnoredErrors(errors) => {
            assert!(errors.iter().any(|m| m.contains(runparts)), "{errors:?}")
        }
        other => panic!("error ignored: unexpected {other:?}"),
    }
    assert!(
        notes(&rec).iter().any(
            |(s, d)| s.starts_with("failed (ignored") && d.iter().any(|m| m.contains(runparts))
        ),
        "{:?}",
        notes(&rec)
    );
    assert_eq!(seen(&host, "error").expect("layer ran")["status"], "error");
    assert!(host.ledger_layers().contains(&"ci-error.json".to_string()));
    let out = cli.push(&["--ignore-cloud-init-errors"]);
    assert_eq!(out.status.code(), Some(0), "{}", cli.text(&out));
    assert_eq!(seen(&host, "cli").expect("layer ran")["status"], "error");
    assert!(host.ledger_layers().contains(&"ci-cli.json".to_string()));
    lap(&mut clock, "error, error ignored");

    // Disabled: cloud-init honours its marker file /etc/cloud/cloud-init.disabled only on a
    // machine booted with systemd, which it recognises by systemd's own boot marker, the
    // directory /run/systemd/system. Both are files here; no systemd runs.
    host.sh("mkdir -p /run/systemd/system && touch /etc/cloud/cloud-init.disabled");
    // Disabled right after that failed run, before a reboot: cloud-init still reports this
    // boot's errors ("error - disabled", exit 1), and the push stops on them.
    let v = require_state(&host, "error", "error - disabled", 1);
    assert_eq!(v["boot_status_code"], "disabled-by-marker-file", "{v:#}");
    let b = bundle(work.path(), "disabled-after-error");
    let (r, _) = push_case(&host, &b, false, Duration::from_secs(60));
    let e = r.expect_err("errors of this boot stop the push even when disabled since");
    assert!(
        matches!(&e, PushError::CloudInit(CloudInitError::Failed { errors, .. }) if errors.iter().any(|m| m.contains(runparts))),
        "{e}"
    );
    assert_nothing_ran(&host, "disabled-after-error");
    // After a reboot /run is empty again and the disabled cloud-init does not run: "disabled".
    host.sh("rm -rf /run/cloud-init");
    let v = require_state(&host, "disabled", "disabled", 0);
    assert_eq!(v["boot_status_code"], "disabled-by-marker-file", "{v:#}");
    let b = bundle(work.path(), "disabled");
    let (r, rec) = push_case(&host, &b, false, Duration::from_secs(60));
    let rep = r.expect("disabled: the push goes on");
    assert_eq!(rep.cloud_init, CloudInitOutcome::Disabled);
    assert!(
        notes(&rec)
            .iter()
            .any(|(s, _)| s == "disabled on the target"),
        "{:?}",
        notes(&rec)
    );
    assert_eq!(
        seen(&host, "disabled").expect("layer ran")["status"],
        "disabled"
    );
    host.sh("rm -f /etc/cloud/cloud-init.disabled && rmdir /run/systemd/system /run/systemd");
    lap(&mut clock, "disabled (after error, after reboot)");

    // Not installed: the package purged from the target (last: it cannot come back offline).
    host.sh("dpkg --purge cloud-init >/dev/null");
    assert!(!host.run("command -v cloud-init").status.success());
    let b = bundle(work.path(), "absent");
    let (r, rec) = push_case(&host, &b, false, Duration::from_secs(60));
    let rep = r.expect("absent: the push goes on");
    assert_eq!(rep.cloud_init, CloudInitOutcome::Absent);
    assert_eq!(
        notes(&rec),
        vec![(
            "not installed on the target; not waiting".to_string(),
            vec![]
        )]
    );
    assert_eq!(
        seen(&host, "absent").expect("layer ran")["status"],
        "not installed"
    );
    lap(&mut clock, "not installed");
}

#[test]
fn real_cloud_init_still_running_is_waited_for_until_done() {
    let Some(mut host) = CloudHost::start() else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    // The final stage runs a user-data command that waits for the test's word: until it ends,
    // status.json says `"stage": "modules-final"` and there is no result.json — "running".
    host.boot_in_background(
        "#cloud-config\nruncmd:\n  - [sh, -c, 'while [ ! -e /var/tmp/ov-it-go ]; do sleep 0.1; done']\n",
    );
    let b = bundle(work.path(), "running");
    let target = host.target();
    let o = opts(&b, false, Duration::from_secs(60));
    let (r, rec) = std::thread::scope(|s| {
        let pusher = s.spawn(move || {
            let mut rec = Recorder::default();
            let r = push(target, wait(), &o, &mut rec);
            (r, rec)
        });
        // The push reaches cloud-init's own `--wait` while cloud-init is running …
        let t0 = Instant::now();
        while !host.cloud_init_waiting() {
            assert!(
                !pusher.is_finished() && t0.elapsed() < Duration::from_secs(30),
                "the push never waited for cloud-init"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // … and stays there (3 s, as a boot's last stage might take) until cloud-init is done.
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            !pusher.is_finished(),
            "the push went on while cloud-init ran"
        );
        assert_eq!(host.status().0["status"], "running");
        std::fs::write(host.path("var/tmp/ov-it-go"), "").expect("release the runcmd");
        pusher.join().expect("push thread")
    });
    let rep = match r.expect("running, then done: the push goes on") {
        PushOutcome::Done(r) => *r,
        PushOutcome::DryRun(_) => panic!("expected a real push"),
    };
    assert_eq!(rep.cloud_init, CloudInitOutcome::Done);
    let states: Vec<String> = notes(&rec).into_iter().map(|(s, _)| s).collect();
    assert_eq!(states, vec!["waiting", "done"]);
    // The layer ran after cloud-init had finished.
    let at_layer = seen(&host, "running").expect("layer ran");
    assert_eq!(at_layer["status"], "done", "{at_layer:#}");
    assert!(
        at_layer["modules-final"]["finished"].is_number(),
        "{at_layer:#}"
    );
}
