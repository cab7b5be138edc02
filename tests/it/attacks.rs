//! Stage: the bundle runtime on the target (run.sh, undo.sh, lib.sh and the push and teardown
//! that drive them), attacked from the unprivileged side. Threat model: root and the operator who
//! compiled the bundle are trusted; the account named by `--user` (`ovatk`), every other local
//! account (`ovother`) and layer contents other than raw `cmd:` bodies are not.
//! Invariant: root never reads for a decision, executes, sources, or writes through a path that a
//! non-root account can change; no other account reads what a run writes for root; the
//! operator's environment does not reach the steps. Black-box: the attacker edits, plants and
//! snoops as itself; the tests check outcomes on root-owned canaries, markers and dumps, through
//! every entry point that applies (`ov push host`, `ov push` over SSH, the bundle by hand,
//! `ov deploy del`, `undo.sh`).

use std::path::Path;
use std::time::Duration;

use crate::support::attack::{
    as_user, findings_in, home, needles_file, remove_kept, reset_accounts, root_dir, ssh_host,
    sweeps_in, view, work_entries, Canaries, Findings, Loop, Markers, Project, PushOpts, Session,
    Teardown, Via, ATTACKER, FD_THIEF, FORGER, OTHER, PLANTER, SNOOPER,
};
use crate::support::sshd::TestHost;

/// The environment variable a layer's `env:` sets, for a layer name.
fn env_var(layer: &str) -> String {
    format!(
        "OV_ATK_{}",
        layer.to_uppercase().replace(['-', '.', '+'], "_")
    )
}

/// A layer with an `env:` entry, a root `write:` of `<scratch>/<name>.conf` (what teardown must
/// remove) and a user-scope `cmd:`; `extra` is appended to its tasks.
fn layer(name: &str, scratch: &Path, extra: &str) -> (String, String) {
    (
        name.to_string(),
        format!(
            "layer:\n  name: {name}\n  env:\n    {var}: \"1\"\n  tasks:\n    - write: {dir}/{name}.conf\n      content: \"{name}\\n\"\n      mode: \"0644\"\n      user: root\n    - cmd: |\n        true\n      user: \"${{USER}}\"\n{extra}",
            var = env_var(name),
            dir = scratch.display()
        ),
    )
}

/// The entry points a push can take: this machine, the bundle by hand, and SSH when there is a
/// private sshd.
fn vias(host: &Option<TestHost>) -> Vec<Via<'_>> {
    let mut v = vec![Via::Host, Via::ByHand];
    if let Some(h) = host {
        v.push(Via::Ssh(h));
    }
    v
}

/// The teardown that goes with a push: `ov deploy del` the same way, by hand `undo.sh`.
fn teardown_for(via: &Via) -> Teardown {
    match via {
        Via::ByHand => Teardown::UndoSh,
        _ => Teardown::Del,
    }
}

/// A push and each teardown it can be paired with.
fn push_and_teardowns(host: &Option<TestHost>) -> Vec<(Via<'_>, Teardown)> {
    let mut v = vec![
        (Via::Host, Teardown::Del),
        (Via::Host, Teardown::UndoSh),
        (Via::ByHand, Teardown::UndoSh),
    ];
    if let Some(h) = host {
        v.push((Via::Ssh(h), Teardown::Del));
    }
    v
}

fn round_name(via: &Via, how: Teardown) -> String {
    match how {
        Teardown::Del => format!("{} / ov deploy del", via.name()),
        Teardown::UndoSh => format!("{} / bash undo.sh", via.name()),
    }
}

/// Whether teardown removed what each layer wrote as root (`<scratch>/<layer>.conf`).
fn check_torn_down(
    f: &mut Findings,
    round: &str,
    scratch: &Path,
    layers: &[String],
    code: Option<i32>,
) {
    for l in layers {
        let p = scratch.join(format!("{l}.conf"));
        if p.exists() {
            f.add(
                round,
                format!(
                    "teardown (exit {code:?}) left {}: it did not undo layer {l} from root's own record",
                    p.display()
                ),
            );
        }
    }
}

/// 1. After a push, the attacker replaces the ledger's runtime copies (`lib.sh`, `undo.sh`) and
///    every layer's undo script under its `~/.config/overthink/installed/` with a payload, then
///    the operator tears down (`ov deploy del`, or `undo.sh` by hand). Root must not run the
///    payload (no marker says uid 0), and the teardown must still happen: each layer's root file
///    is gone, because teardown works from root's own ledger.
#[test]
fn teardown_never_runs_code_the_user_planted() {
    let Some(_s) = Session::begin() else {
        return;
    };
    let host = ssh_host();
    let mut f = Findings::default();
    for (via, how) in push_and_teardowns(&host) {
        let round = round_name(&via, how);
        reset_accounts();
        let scratch = root_dir("ov-it-atk-scratch.", 0o755);
        let markers = Markers::new();
        let layers = ["atk-one", "atk-two"].map(|n| layer(n, scratch.path(), ""));
        let mut p = Project::new(&layers, &[]);
        p.push(&via, &PushOpts::default()).expect_ok();
        for l in &p.layers {
            assert!(
                scratch.path().join(format!("{l}.conf")).is_file(),
                "[{round}] the push did not write {l}.conf"
            );
        }

        // The attack: the user's own files, rewritten as the user.
        let payload = markers.path().join("payload.sh");
        std::fs::write(&payload, markers.payload()).expect("payload");
        let v = view(ATTACKER);
        let mut targets = vec![v.join("lib.sh"), v.join("undo.sh")];
        targets.extend(
            p.layers
                .iter()
                .map(|l| v.join("layers").join(format!("{l}.undo.sh"))),
        );
        let list: String = targets
            .iter()
            .map(|t| format!(" '{}'", t.display()))
            .collect();
        as_user(
            ATTACKER,
            &format!(
                "set -e; mkdir -p '{}'; for f in{list}; do rm -f \"$f\"; cat '{}' >\"$f\"; chmod 0755 \"$f\"; done",
                v.join("layers").display(),
                payload.display()
            ),
        );
        let text = markers.payload();
        for t in &targets {
            assert_eq!(
                std::fs::read_to_string(t).ok().as_deref(),
                Some(text.as_str()),
                "[{round}] the attacker could not plant {}",
                t.display()
            );
        }

        let td = p.teardown(&via, how);
        f.markers(&round, "teardown", &markers);
        check_torn_down(&mut f, &round, scratch.path(), &p.layers, td.code);
    }
    f.assert_none("teardown must run only what root recorded, never the user's copies");
}

/// When the attacker plants a symlink of scenario 2.
#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    /// Before the first push (then push, push --force, teardown).
    BeforePush,
    /// After a clean first push (then push --force, teardown).
    AfterPush,
}

/// The symlinks of scenario 2: what the attacker plants (bash, as `ovatk`, with `$I` =
/// `~/.config/overthink/installed`, `$O` = `~/.config/overthink`, `$CF`/`$CF2` canary files, `$CD`
/// a canary directory, `$CE` a canary directory holding `<layer>.env`, `$L` the layer). Planted
/// before the first push unless the case starts with "after the push".
const SYMLINKS: &[(&str, &str)] = &[
    ("control: no attack", "true"),
    (
        "installed/.lock -> canary file",
        r#"mkdir -p "$I" && ln -s "$CF" "$I/.lock""#,
    ),
    (
        "installed/.tmp/journal -> canary file",
        r#"mkdir -p "$I/.tmp" && chmod 0700 "$I/.tmp" && ln -s "$CF" "$I/.tmp/journal""#,
    ),
    (
        "installed -> canary dir",
        r#"mkdir -p "$O" && ln -s "$CD" "$I""#,
    ),
    (
        "installed/layers -> canary dir",
        r#"mkdir -p "$I" && ln -s "$CD" "$I/layers""#,
    ),
    (
        "installed/deploys -> canary dir",
        r#"mkdir -p "$I" && ln -s "$CD" "$I/deploys""#,
    ),
    (
        "installed/.tmp -> canary dir",
        r#"mkdir -p "$I" && ln -s "$CD" "$I/.tmp""#,
    ),
    (
        "installed/.tmp/stage -> canary dir",
        r#"mkdir -p "$I/.tmp" && chmod 0700 "$I/.tmp" && ln -s "$CD" "$I/.tmp/stage""#,
    ),
    (
        "installed/layers/<layer>.d -> canary dir",
        r#"mkdir -p "$I/layers" && ln -s "$CD" "$I/layers/$L.d""#,
    ),
    (
        "installed/lib.sh, installed/undo.sh -> canary files",
        r#"mkdir -p "$I" && ln -s "$CF" "$I/lib.sh" && ln -s "$CF2" "$I/undo.sh""#,
    ),
    (
        "env.d -> canary dir holding <layer>.env",
        r#"mkdir -p "$O" && ln -s "$CE" "$O/env.d""#,
    ),
    (
        "~/.config/overthink -> canary dir",
        r#"mkdir -p "$HOME/.config" && ln -s "$CD" "$O""#,
    ),
    (
        "~/.config -> canary dir",
        r#"rm -rf "$HOME/.config" && ln -s "$CD" "$HOME/.config""#,
    ),
    (
        "~/.profile, ~/.bashrc -> canary files",
        r#"ln -sfn "$CF" "$HOME/.profile" && ln -sfn "$CF2" "$HOME/.bashrc""#,
    ),
    (
        "after the push: env.d -> canary dir holding <layer>.env",
        r#"rm -rf "$O/env.d" && ln -s "$CE" "$O/env.d""#,
    ),
    (
        "after the push: installed/layers/<layer>.d -> canary dir",
        r#"rm -rf "$I/layers/$L.d" && ln -s "$CD" "$I/layers/$L.d""#,
    ),
    (
        "after the push: ~/.profile, ~/.bashrc -> canary files",
        r#"ln -sfn "$CF" "$HOME/.profile" && ln -sfn "$CF2" "$HOME/.bashrc""#,
    ),
];

fn when(case: &str) -> When {
    if case.starts_with("after the push") {
        When::AfterPush
    } else {
        When::BeforePush
    }
}

/// 2. Before a push (or after a first one) the attacker makes a path of the ledger/view (or of
///    env.d, `~/.config`, the profiles) a symlink to a root-owned canary; then push, push again
///    with `--force`, and tear down, through every entry point. Every canary keeps its content, owner and mode (and every
///    canary directory its listing) after each step. The first case plants nothing and must
///    push and tear down cleanly (the fixture works).
#[test]
fn root_never_follows_the_users_symlinks() {
    let Some(_s) = Session::begin() else {
        return;
    };
    let host = ssh_host();
    let scratch = root_dir("ov-it-atk-scratch.", 0o755);
    let name = "atk-sym";
    let mut p = Project::new(&[layer(name, scratch.path(), "")], &[]);
    let mut f = Findings::default();
    let env_file = format!("{name}.env");
    for via in vias(&host) {
        for (case, plant) in SYMLINKS {
            let round = format!("{} / {case}", via.name());
            reset_accounts();
            let mut c = Canaries::new(&[("envd", &[env_file.as_str()])]);
            let plant_now = |c: &Canaries| {
                as_user(
                    ATTACKER,
                    &format!(
                        "set -e; O=\"$HOME/.config/overthink\"; I=\"$O/installed\"; CF='{}'; CF2='{}'; CD='{}'; CE='{}'; L='{name}'; {plant}",
                        c.file("file1").display(),
                        c.file("file2").display(),
                        c.dir("dir1").display(),
                        c.dir("envd").display()
                    ),
                );
            };
            let control = *plant == "true";
            if when(case) == When::BeforePush {
                plant_now(&c);
            }
            let first = p.push(&via, &PushOpts::default());
            if control || when(case) == When::AfterPush {
                first.expect_ok();
            }
            f.canaries(&round, "the push", &mut c);
            if when(case) == When::AfterPush {
                plant_now(&c);
            }
            let again = p.push(
                &via,
                &PushOpts {
                    force: true,
                    ..Default::default()
                },
            );
            if control {
                again.expect_ok();
            }
            f.canaries(&round, "the push with --force", &mut c);
            let td = p.teardown(&via, teardown_for(&via));
            if control {
                td.expect_ok();
                check_torn_down(&mut f, &round, scratch.path(), &p.layers, td.code);
            }
            f.canaries(&round, "the teardown", &mut c);
        }
    }
    f.assert_none("root must not follow the user's symlinks");
}

/// 3. While a push of 30 small layers runs (and its teardown), a loop as the attacker keeps
///    planting symlinks to canaries at every path under `~/.config/overthink/installed/` (the
///    stage's `<layer>.json`, `.undo.sh`, `.d` included), swaps root-owned files it finds there
///    for symlinks, and tries every work directory it can see (/var/tmp/ov, /var/lib/overthink,
///    the directories on any command line). Every canary is unchanged, and the attacker never
///    gets to write into a root-owned work directory or file.
#[test]
fn symlinks_planted_during_a_run_never_redirect_root() {
    let Some(_s) = Session::begin() else {
        return;
    };
    let host = ssh_host();
    let scratch = root_dir("ov-it-atk-scratch.", 0o755);
    let layers: Vec<(String, String)> = (1..=30)
        .map(|i| {
            layer(
                &format!("atk-r{i:02}"),
                scratch.path(),
                "    - cmd: |\n        sleep 0.2\n      user: root\n",
            )
        })
        .collect();
    let mut p = Project::new(&layers, &[]);
    let mut f = Findings::default();
    for via in vias(&host) {
        let round = via.name().to_string();
        reset_accounts();
        let markers = Markers::new();
        let mut c = Canaries::new(&[]);
        let join = |v: Vec<std::path::PathBuf>| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut args = vec![
            home(ATTACKER).display().to_string(),
            join(c.files()),
            join(c.dirs()),
        ];
        args.extend(p.layers.iter().cloned());
        let attacker = Loop::start(ATTACKER, "planter", &markers, PLANTER, 240, &args);
        let push = p.push(&via, &PushOpts::default());
        f.canaries(&round, "the push under attack", &mut c);
        let td = p.teardown(&via, teardown_for(&via));
        attacker.more_sweeps(2, Duration::from_secs(5));
        let log = attacker.finish();
        f.canaries(&round, "the teardown under attack", &mut c);
        for w in findings_in(&log) {
            f.add(
                &round,
                format!("the attacker could write where root works: {w}"),
            );
        }
        let sweeps = sweeps_in(&log);
        assert!(
            sweeps >= 10,
            "[{round}] the attacker's loop swept only {sweeps} times:\n{log}"
        );
        eprintln!(
            "[{round}] push exit {:?}, teardown exit {:?}, {}",
            push.code,
            td.code,
            log.lines().last().unwrap_or("")
        );
    }
    f.assert_none("root must not follow symlinks planted during a run");
}

/// The secrets scenario, snooped by `snooper`: a layer with a root `write:` (mode 0600) and a
/// root `copy:` (mode 0600) of secret content, and a root `cmd: sleep` so the run takes a few
/// seconds; a loop as `snooper` reads everything it can (see `SNOOPER`) during the push and
/// after a second push with `--keep`. Findings: every place the snooper read a secret.
fn secrets_scenario(snooper: &str) -> Findings {
    let mut f = Findings::default();
    let Some(_s) = Session::begin() else {
        return f;
    };
    let host = ssh_host();
    let scratch = root_dir("ov-it-atk-scratch.", 0o755);
    let secret = format!("ov-it-secret-{}", uuid::Uuid::new_v4().simple());
    let payload = format!("ov-it-payload-{}", uuid::Uuid::new_v4().simple());
    let name = "atk-secret";
    let yml = format!(
        "layer:\n  name: {name}\n  tasks:\n    - write: {dir}/secret.conf\n      content: \"{secret}\\n\"\n      mode: \"0600\"\n      user: root\n    - copy: secret.txt\n      to: {dir}/secret-copy.txt\n      mode: \"0600\"\n      user: root\n    - cmd: |\n        sleep 3\n      user: root\n    - cmd: |\n        sleep 1\n      user: \"${{USER}}\"\n",
        dir = scratch.path().display()
    );
    let payload_text = format!("{payload}\n");
    let mut p = Project::new(
        &[(name.to_string(), yml)],
        &[(name, "secret.txt", payload_text.as_str())],
    );
    for via in vias(&host) {
        let round = format!("{} / {snooper} snoops", via.name());
        reset_accounts();
        for s in ["secret.conf", "secret-copy.txt"] {
            let _ = std::fs::remove_file(scratch.path().join(s));
        }
        let markers = Markers::new();
        let needles = needles_file(&markers, snooper, &[&secret, &payload]);
        let args = vec![
            "files".to_string(),
            markers.path().display().to_string(),
            needles.display().to_string(),
            scratch.path().display().to_string(),
            home(ATTACKER).display().to_string(),
        ];
        let spy = Loop::start(snooper, "snooper", &markers, SNOOPER, 240, &args);
        let keep_before = work_entries();
        let mut pushes = vec![PushOpts::default()];
        if let Via::ByHand = via {
            // The operator keeps the bundle private; the runtime must not spread it.
            pushes[0].private_bundle = true;
        } else {
            pushes.push(PushOpts {
                keep: true,
                force: true,
                ..Default::default()
            });
        }
        for o in &pushes {
            let out = p.push(&via, o);
            spy.more_sweeps(3, Duration::from_secs(10));
            eprintln!("[{round}] push exit {:?}", out.code);
        }
        let log = spy.finish();
        remove_kept(&keep_before);
        for (file, want) in [("secret.conf", &secret), ("secret-copy.txt", &payload)] {
            let got = std::fs::read_to_string(scratch.path().join(file)).unwrap_or_default();
            assert_eq!(
                got.trim(),
                want.as_str(),
                "[{round}] the push did not write {file}"
            );
        }
        for l in findings_in(&log) {
            f.add(&round, format!("{snooper} read a secret of the run: {l}"));
        }
        let sweeps = sweeps_in(&log);
        assert!(
            sweeps >= 5,
            "[{round}] the snooper swept only {sweeps} times:\n{log}"
        );
    }
    f
}

/// 4. Another local account (`ovother`) never reads a run's secrets: not the content of a root
///    `write:` with mode 0600, not a `copy:` payload with mode 0600 — not in the work
///    directories, not in anything a command line names, not while the run goes on, not after
///    a push with `--keep`.
#[test]
fn other_users_never_read_a_runs_secrets() {
    secrets_scenario(OTHER).assert_none("no other account may read what a run writes for root");
}

/// 4b (beyond the list). The target account itself is not trusted either: what a system-scope
///    step writes for root with mode 0600 must stay out of its reach too.
#[test]
fn the_target_user_never_reads_system_secrets() {
    secrets_scenario(ATTACKER)
        .assert_none("the --user account may not read what a run writes for root");
}

/// 5. The operator's environment (`AWS_SECRET_ACCESS_KEY`, `OV_CANARY`) does not reach the
///    steps: a root `cmd:` and a user-scope `cmd:` dump `env` and `/proc/self/environ`; neither
///    dump holds a canary, through `ov push host`, `bash run.sh` by hand and `ov push` over SSH
///    with those variables set. And while the user-scope step runs, the attacker reads
///    `/proc/<pid>/environ` of every process it can: no canary there either.
#[test]
fn the_operators_environment_never_reaches_the_steps() {
    let Some(_s) = Session::begin() else {
        return;
    };
    let host = ssh_host();
    let mut f = Findings::default();
    for via in vias(&host) {
        let round = via.name().to_string();
        reset_accounts();
        let markers = Markers::new();
        let m = markers.path().display().to_string();
        let aws = format!("ov-it-aws-{}", uuid::Uuid::new_v4().simple());
        let canary = format!("ov-it-env-{}", uuid::Uuid::new_v4().simple());
        let name = "atk-env";
        let yml = format!(
            "layer:\n  name: {name}\n  tasks:\n    - cmd: |\n        env >{m}/root-env.txt\n        tr '\\0' '\\n' </proc/self/environ >{m}/root-environ.txt\n      user: root\n    - cmd: |\n        env >{m}/user-env.txt\n        tr '\\0' '\\n' </proc/self/environ >{m}/user-environ.txt\n        sleep 2.5\n      user: \"${{USER}}\"\n"
        );
        let mut p = Project::new(&[(name.to_string(), yml)], &[]);
        let needles = needles_file(&markers, ATTACKER, &[&aws, &canary]);
        let args = vec![
            "environ".to_string(),
            m.clone(),
            needles.display().to_string(),
        ];
        let spy = Loop::start(ATTACKER, "environ", &markers, SNOOPER, 240, &args);
        let out = p.push(
            &via,
            &PushOpts {
                env: vec![
                    ("AWS_SECRET_ACCESS_KEY".into(), aws.clone()),
                    ("OV_CANARY".into(), canary.clone()),
                ],
                ..Default::default()
            },
        );
        spy.more_sweeps(2, Duration::from_secs(5));
        let log = spy.finish();
        out.expect_ok();
        for dump in [
            "root-env.txt",
            "root-environ.txt",
            "user-env.txt",
            "user-environ.txt",
        ] {
            let text = std::fs::read_to_string(markers.path().join(dump))
                .unwrap_or_else(|e| panic!("[{round}] the step wrote no {dump}: {e}"));
            for (what, needle) in [("AWS_SECRET_ACCESS_KEY", &aws), ("OV_CANARY", &canary)] {
                if text.contains(needle.as_str()) {
                    f.add(&round, format!("{dump} holds the operator's {what}"));
                }
            }
        }
        for l in findings_in(&log) {
            f.add(
                &round,
                format!("{ATTACKER} read the operator's environment: {l}"),
            );
        }
        if !log
            .lines()
            .any(|l| l.starts_with("SEEN ") && l.contains("sleep 2.5"))
        {
            eprintln!("[{round}] note: {ATTACKER} could not read the environment of the user step");
        }
    }
    f.assert_none("the operator's environment must not reach the steps");
}

/// Edits of scenario E1 (bash as `ovatk`; `$I` the view, `$L` the first layer, `$EMPTY` an empty
/// canary directory).
const RECORD_EDITS: &[(&str, &str)] = &[
    (
        "layers/<layer>.json lists a canary directory as created by the layer",
        r#"f="$I/layers/$L.json"; mkdir -p "$I/layers"
if [ -f "$f" ] && grep -q '"created_dirs"' "$f"; then
  perl -0pi -e 's/"created_dirs": \[/"created_dirs": ["$ENV{EMPTY}", /' "$f"
elif [ -f "$f" ]; then
  perl -0pi -e 's/\n\}\s*\z/,\n  "created_dirs": ["$ENV{EMPTY}"]\n}\n/' "$f"
else
  printf '{"layer": "%s", "created_dirs": ["%s"]}\n' "$L" "$EMPTY" >"$f"
fi
grep -qF "$EMPTY" "$f""#,
    ),
    (
        "deploys/*.json removed",
        r#"mkdir -p "$I/deploys"; rm -f "$I"/deploys/*.json; ! ls "$I"/deploys/*.json 2>/dev/null"#,
    ),
];

/// E1 (beyond the list). The view's records are informational: after a push the attacker edits
///    them (a canary directory claimed as created by the layer, or the deploy record deleted),
///    then the operator tears down. The empty canary directory survives, and teardown still
///    removes what each layer wrote as root.
#[test]
fn teardown_ignores_records_the_user_edited() {
    let Some(_s) = Session::begin() else {
        return;
    };
    let host = ssh_host();
    let mut f = Findings::default();
    for (via, how) in push_and_teardowns(&host) {
        for (edit, script) in RECORD_EDITS {
            let round = format!("{} / {edit}", round_name(&via, how));
            reset_accounts();
            let scratch = root_dir("ov-it-atk-scratch.", 0o755);
            let mut c = Canaries::new(&[]);
            let layers = [layer("atk-rec", scratch.path(), "")];
            let mut p = Project::new(&layers, &[]);
            p.push(&via, &PushOpts::default()).expect_ok();
            as_user(
                ATTACKER,
                &format!(
                    "set -e; export EMPTY='{}'; I='{}'; L='{}'; {script}",
                    c.dir("empty").display(),
                    view(ATTACKER).display(),
                    p.layers[0]
                ),
            );
            let td = p.teardown(&via, how);
            f.canaries(&round, "the teardown", &mut c);
            check_torn_down(&mut f, &round, scratch.path(), &p.layers, td.code);
        }
    }
    f.assert_none("teardown must decide from root's own ledger, not the user's view");
}

/// E2 (beyond the list). Whether a layer is applied is root's knowledge: the attacker saves its
///    view's records after a push, the operator tears down, the attacker puts the records back,
///    the operator pushes again. The layer runs again (its root file is there afterwards).
#[test]
fn replayed_records_never_make_a_push_skip_a_layer() {
    let Some(_s) = Session::begin() else {
        return;
    };
    let host = ssh_host();
    let mut f = Findings::default();
    for via in vias(&host) {
        let round = via.name().to_string();
        reset_accounts();
        let scratch = root_dir("ov-it-atk-scratch.", 0o755);
        let layers = [layer("atk-replay", scratch.path(), "")];
        let mut p = Project::new(&layers, &[]);
        let conf = scratch.path().join("atk-replay.conf");
        p.push(&via, &PushOpts::default()).expect_ok();
        let i = view(ATTACKER).display().to_string();
        as_user(
            ATTACKER,
            &format!("set -e; mkdir -p \"$HOME/stash\"; cp -a '{i}/deploys' '{i}/layers' \"$HOME/stash/\"; ls \"$HOME\"/stash/layers/*.json \"$HOME\"/stash/deploys/*.json >/dev/null"),
        );
        p.teardown(&via, teardown_for(&via)).expect_ok();
        assert!(!conf.exists(), "[{round}] teardown left {}", conf.display());
        as_user(
            ATTACKER,
            &format!("set -e; mkdir -p '{i}'; cp -a \"$HOME/stash/.\" '{i}/'"),
        );
        let again = p.push(&via, &PushOpts::default());
        if !conf.exists() {
            f.add(
                &round,
                format!(
                    "the push after the replay (exit {:?}) skipped the layer: {} is missing",
                    again.code,
                    conf.display()
                ),
            );
        }
    }
    f.assert_none("root must decide what is applied from its own ledger");
}

/// E3 (beyond the list). A user-scope step runs as the attacker's account, so every descriptor
///    it inherits is the attacker's: while it runs, the attacker takes each root-owned file
///    it holds open for writing (`pidfd_getfd`) and appends the path of an empty canary
///    directory. Today that is run.sh's descriptor 8 (`$OV_RUN_DIR/created`), which root reads
///    back into the layer's `created_dirs` and removes at teardown. No such descriptor may
///    reach a user step, and the canary survives the teardown.
#[test]
fn user_steps_inherit_no_root_descriptor_root_reads_back() {
    let Some(_s) = Session::begin() else {
        return;
    };
    let host = ssh_host();
    let mut f = Findings::default();
    for via in vias(&host) {
        let round = via.name().to_string();
        reset_accounts();
        let scratch = root_dir("ov-it-atk-scratch.", 0o755);
        let markers = Markers::new();
        let mut c = Canaries::new(&[]);
        // A user-scope step, and a process a root step starts as the user (the library's own
        // `ov_as_user`, as AUR builds and services do) while the run's output is root's log.
        let layers = [layer(
            "atk-fd",
            scratch.path(),
            "    - cmd: |\n        sleep 3\n      user: \"${USER}\"\n    - cmd: |\n        ov_as_user sleep 3\n      user: root\n",
        )];
        let mut p = Project::new(&layers, &[]);
        let thief = Loop::start(
            ATTACKER,
            "thief",
            &markers,
            FD_THIEF,
            240,
            &[c.dir("empty").display().to_string()],
        );
        let push = p.push(&via, &PushOpts::default());
        let log = thief.finish();
        push.expect_ok();
        f.canaries(&round, "the push", &mut c);
        let td = p.teardown(&via, teardown_for(&via));
        f.canaries(&round, "the teardown", &mut c);
        check_torn_down(&mut f, &round, scratch.path(), &p.layers, td.code);
        for w in findings_in(&log) {
            f.add(
                &round,
                format!(
                    "the attacker wrote through a root-owned descriptor its step inherited: {w}"
                ),
            );
        }
    }
    f.assert_none("user steps must inherit no root-owned writable descriptor");
}

/// 6. A system step (`user: root`) whose destination lies in a directory the attacker owns: the
///    attacker makes a directory on the way a symlink to a root-owned canary directory. Root must
///    not write through it: the step is refused (naming the directory), the canary is unchanged.
#[test]
fn root_never_writes_into_a_directory_the_user_owns() {
    let Some(_s) = Session::begin() else {
        return;
    };
    let name = "atk-intohome";
    let dest = home(ATTACKER).join("atk-sub/note");
    let yml = format!(
        "layer:\n  name: {name}\n  tasks:\n    - write: {}\n      content: \"root wrote this\\n\"\n      mode: \"0644\"\n      user: root\n",
        dest.display()
    );
    let mut p = Project::new(&[(name.to_string(), yml)], &[]);
    let mut f = Findings::default();
    for via in [Via::Host, Via::ByHand] {
        let round = via.name().to_string();
        reset_accounts();
        let mut c = Canaries::new(&[]);
        as_user(
            ATTACKER,
            &format!("ln -s '{}' \"$HOME/atk-sub\"", c.dir("dir1").display()),
        );
        let out = p.push(&via, &PushOpts::default());
        f.canaries(&round, "the push", &mut c);
        if out.ok() {
            f.add(
                &round,
                "the push wrote into the attacker's directory and exited 0",
            );
        } else if !out.text.contains("belongs to another account") {
            f.add(
                &round,
                format!("the refusal does not say why:\n{}", out.text),
            );
        }
    }
    f.assert_none("root must not write through a directory the user owns");
}

/// 7. The operator unpacks a bundle where the target user can change it (here: a tree the
///    attacker owns) and runs it as root. After the integrity check has passed and the first
///    layer runs, the attacker rewrites the second layer's script with its payload. Root must run
///    what it verified: no marker says uid 0, and the second layer is applied as compiled.
#[test]
fn root_runs_the_bundle_it_verified_not_one_edited_mid_run() {
    let Some(_s) = Session::begin() else {
        return;
    };
    let scratch = root_dir("ov-it-atk-scratch.", 0o755);
    let started = scratch.path().join("first-started");
    let first = (
        "atk-first".to_string(),
        format!(
            "layer:\n  name: atk-first\n  tasks:\n    - cmd: |\n        touch {}\n        sleep 3\n      user: root\n",
            started.display()
        ),
    );
    let second = (
        "atk-second".to_string(),
        format!(
            "layer:\n  name: atk-second\n  depends:\n    - atk-first\n  tasks:\n    - write: {}/atk-second.conf\n      content: \"second\\n\"\n      mode: \"0644\"\n      user: root\n",
            scratch.path().display()
        ),
    );
    let mut p = Project::new(&[first, second], &[]);
    reset_accounts();
    let markers = Markers::new();
    let top = p.unpack_owned_by(ATTACKER);
    let child = p.spawn_script(&top.join("run.sh"), &["--user", ATTACKER]);
    // As the attacker: wait for the first layer to run, then overwrite the second one's script.
    let script = top.join("layers/02-atk-second/01-system.sh");
    let edit = as_user(
        ATTACKER,
        &format!(
            "for i in $(seq 200); do [ -e '{}' ] && break; sleep 0.05; done; printf '%s\\n' '{}' > '{}' && echo edited",
            started.display(),
            markers.payload().replace('\'', "'\\''"),
            script.display()
        ),
    );
    let out = child.wait_with_output().expect("run.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&edit.stdout).contains("edited"),
        "the attacker could not edit the bundle it owns: {edit:?}"
    );
    let mut f = Findings::default();
    f.markers("bash run.sh by hand", "the run", &markers);
    if !scratch.path().join("atk-second.conf").exists() {
        f.add(
            "bash run.sh by hand",
            format!(
                "the second layer was not applied as compiled (exit {:?}):\n{text}",
                out.status.code()
            ),
        );
    }
    let td = p.teardown(&Via::Host, Teardown::Del);
    td.expect_ok();
    f.assert_none("root must run the bundle it verified");
}

/// 8. A bundle with a set-user-id file that SHA256SUMS does not list, pushed with `--keep`.
///    Nothing runs, and nothing of it may stay on the target that another account could use: no
///    set-id file under any work directory.
#[test]
fn a_kept_upload_leaves_no_set_id_file() {
    let Some(_s) = Session::begin() else {
        return;
    };
    let scratch = root_dir("ov-it-atk-scratch.", 0o755);
    let mut p = Project::new(&[layer("atk-suid", scratch.path(), "")], &[]);
    reset_accounts();
    let top = p.unpack_owned_by("root");
    // Every file of the real bundle, plus one set-uid program nobody listed.
    let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
    for e in walk(&top) {
        let rel = e.strip_prefix(&top).expect("inside").display().to_string();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&e).expect("meta").permissions(),
        ) & 0o777;
        files.push((rel, std::fs::read(&e).expect("read"), mode));
    }
    files.push((
        "files/atk-suid/suid".into(),
        b"#!/bin/sh\nid\n".to_vec(),
        0o4755,
    ));
    files.sort();
    let work = tempfile::tempdir().expect("tempdir");
    let archive = work.path().join("host.tar.gz");
    crate::support::bundle::write_archive(&archive, "host", &files);
    let before = work_entries();
    let out = p.ov_output(&[
        "push".as_ref(),
        archive.as_os_str(),
        "--keep".as_ref(),
        "--user".as_ref(),
        ATTACKER.as_ref(),
    ]);
    let mut f = Findings::default();
    if out.status.success() {
        f.add(
            "ov push <bundle> --keep",
            "a bundle with an unlisted file was run",
        );
    }
    for e in work_entries().difference(&before) {
        for file in walk(e) {
            let mode = std::fs::symlink_metadata(&file)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
                .unwrap_or(0);
            if mode & 0o6000 != 0 {
                f.add(
                    "ov push <bundle> --keep",
                    format!(
                        "set-id file left on the target: {} ({mode:o})",
                        file.display()
                    ),
                );
            }
        }
    }
    remove_kept(&before);
    for e in work_entries().difference(&before) {
        let _ = std::fs::remove_dir_all(e);
    }
    f.assert_none("a kept upload holds nothing another account could use");
}

/// Every regular file below `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => out.extend(walk(&p)),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

/// 9. While a user-scope step runs, the attacker writes into that step's standard output (its own
///    process: `/proc/PID/fd/1`) what run.sh would print: a `layer-done` for a layer that does
///    not exist, a whole ledger dump naming it, an `end` line. `ov` must not take any of it for
///    run.sh's word: no event names the forged layer, and the state `ov` saves does not list it.
#[test]
fn a_users_process_cannot_speak_for_run_sh() {
    let Some(_s) = Session::begin() else {
        return;
    };
    let host = ssh_host();
    let forged = "forged-by-ovatk";
    let mut f = Findings::default();
    for via in [Via::Host].into_iter().chain(host.as_ref().map(Via::Ssh)) {
        let round = via.name().to_string();
        reset_accounts();
        let scratch = root_dir("ov-it-atk-scratch.", 0o755);
        let markers = Markers::new();
        let layers = [layer(
            "atk-speak",
            scratch.path(),
            "    - cmd: |\n        sleep 3\n      user: \"${USER}\"\n",
        )];
        let mut p = Project::new(&layers, &[]);
        let forger = Loop::start(
            ATTACKER,
            "forger",
            &markers,
            FORGER,
            60,
            &[forged.to_string()],
        );
        let out = p.push(
            &via,
            &PushOpts {
                json: true,
                ..Default::default()
            },
        );
        let log = forger.finish();
        out.expect_ok();
        if !log.contains("WROTE") {
            f.add(
                &round,
                format!("the forger reached no step's output:\n{log}"),
            );
        }
        for line in out.stdout.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["event"] != "output" && line.contains(forged) {
                f.add(
                    &round,
                    format!("ov took the user's line for run.sh's: {line}"),
                );
            }
        }
        if p.state_text().contains(forged) {
            f.add(&round, "ov saved a forged layer in its state");
        }
        p.teardown(&via, teardown_for(&via)).expect_ok();
    }
    f.assert_none("only run.sh speaks for run.sh");
}
