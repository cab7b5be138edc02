//! Stage `render` with `bundle`: the rendered scripts under the real bundle runtime. The
//! every-kind deb plan is rendered, built into a bundle and unpacked; inside the sandbox (a
//! private mount namespace with overlays, stubbed package and service managers) a throw-away
//! account is created, `run.sh --user` applies the bundle — system scripts as root, user scripts
//! through `runuser` as that account — and `undo.sh` tears it down again.

mod render_support;

use ov_compiler::bundle;
use ov_compiler::plan::{Action, BuilderKind};
use render_support::*;

/// `plan`'s bundle unpacked in a new sandbox, readable by every account; the runtime switches to
/// the account with the real runuser.
fn unpacked_in_a_sandbox(plan: &ov_compiler::plan::InstallPlan) -> (Sandbox, std::path::PathBuf) {
    let b = bundle_plan(plan);
    let sb = Sandbox::new();
    std::fs::remove_file(sb.path("stubs/runuser")).expect("stub");
    let top = bundle::write_unpacked(&b, &sb.path("unpacked")).expect("unpack");
    sb.open_to_all();
    let _ = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(sb.path("unpacked"))
        .status();
    (sb, top)
}

/// The every-kind plan cut down to its `config` layer's tasks that `keep` accepts, for `user`.
fn config_tasks_plan(
    user: &str,
    keep: impl Fn(&ov_compiler::plan::TaskVerb) -> bool,
) -> ov_compiler::plan::InstallPlan {
    let mut plan = every_kind_plan("deb");
    plan.deploy.user = Some(user.to_string());
    plan.layers.retain(|l| l.name == "config");
    for l in &mut plan.layers {
        l.steps
            .retain(|s| matches!(&s.action, Action::Task { task, .. } if keep(&task.verb)));
    }
    assert!(!plan.layers[0].steps.is_empty());
    plan
}

/// A sandbox holding the bundle of `config_tasks_plan(user, keep)`, and the shell lines that make
/// `user`'s account in it; `None` where the sandbox or `useradd` is missing.
fn config_tasks_sandbox(
    user: &str,
    keep: impl Fn(&ov_compiler::plan::TaskVerb) -> bool,
) -> Option<(Sandbox, std::path::PathBuf, String)> {
    account_sandbox(user, || config_tasks_plan(user, keep))
}

/// Run `body` in `sb` (a script that ends with `echo done > "$T/out/checked"`) and return what
/// it left in `out/run.log`.
fn run_checked(sb: &Sandbox, body: &str) -> String {
    let (_, out) = sb.run_raw(body, &[]);
    assert_eq!(sb.read("out/checked"), "done\n", "{out}");
    sb.read("out/run.log")
}

/// The bundle of `plan()` unpacked in a new sandbox, and the shell lines that make `user`'s
/// account in it; `None` where the sandbox or `useradd` is missing.
fn account_sandbox(
    user: &str,
    plan: impl FnOnce() -> ov_compiler::plan::InstallPlan,
) -> Option<(Sandbox, std::path::PathBuf, String)> {
    if !Sandbox::available() || !have_tool("useradd", &["--help"]) {
        return None;
    }
    let (sb, top) = unpacked_in_a_sandbox(&plan());
    let account = format!(
        "id {user} >/dev/null 2>&1 || useradd -m -d /home/{user} -s /bin/bash {user} || exit 92\n\
         mkdir -p /home/{user} && chown {user}: /home/{user}\n"
    );
    Some((sb, top, account))
}

#[test]
fn run_sh_applies_and_undo_sh_removes_a_rendered_bundle() {
    if !Sandbox::available() || !have_tool("useradd", &["--help"]) {
        return;
    }
    let mut plan = every_kind_plan("deb");
    plan.deploy.user = Some("ovrender".to_string());
    for l in &mut plan.layers {
        // The zip download needs zip and unzip; the AUR builder needs pacman.
        l.steps.retain(|s| {
            !matches!(&s.action, Action::Builder { builder: BuilderKind::Aur, .. })
                && !matches!(&s.action, Action::Task { task, .. } if format!("{:?}", task.verb).contains(".zip"))
        });
    }
    let (sb, top) = unpacked_in_a_sandbox(&plan);
    let body = format!(
        r#"
id ovrender >/dev/null 2>&1 || useradd -m -d /home/ovrender -s /bin/bash ovrender || exit 92
mkdir -p /home/ovrender && chown ovrender: /home/ovrender
H=/home/ovrender
bash {top}/run.sh --user ovrender > "$T/out/run.log" 2>&1; echo $? > "$T/out/run.rc"
stat -c '%U %a' "$H/.config/sway/config" > "$T/out/sway-config" 2>&1
stat -c '%U %a' /opt/demo/banner > "$T/out/banner" 2>&1
cat /etc/demo/motd > "$T/out/motd" 2>&1
ls /var/lib/overthink/installed/ovrender/layers > "$T/out/ledger" 2>&1
ls "$H/.config/overthink/installed/layers" > "$T/out/view" 2>&1
cat /var/lib/overthink/installed/ovrender/layers/tools.d/packages.deb > "$T/out/facts" 2>&1
env -i HOME="$H" PATH=/usr/bin:/bin bash -c '. "$HOME/.profile"; printf %s "$NPM_CONFIG_PREFIX"' > "$T/out/profile"
bash {top}/run.sh --user ovrender > "$T/out/rerun.log" 2>&1; echo $? > "$T/out/rerun.rc"
bash {top}/undo.sh --user ovrender > "$T/out/undo.log" 2>&1; echo $? > "$T/out/undo.rc"
for f in /etc/demo/motd /usr/local/bin/uv "$H/.config/sway/config" "$H/.config/overthink/env.d/tools.env" \
         /etc/systemd/system/ov-services-sway.service /etc/apt/sources.list.d/nodesource.list; do
  if [ -e "$f" ]; then echo "$f" >> "$T/out/left"; fi
done
grep -c 'overthink:begin' "$H/.profile" > "$T/out/block-after" 2>/dev/null
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let (_, out) = sb.run_raw(&body, &[("STUB_INSTALLED", "jq")]);
    let log = sb.read("out/run.log");
    assert_eq!(sb.read("out/checked"), "done\n", "{out}");
    assert_eq!(sb.read("out/run.rc"), "0\n", "{log}\n{out}");
    assert!(!sb.pwned());
    assert!(log.contains("::ov:: end result=ok"), "{log}");
    assert_eq!(sb.read("out/sway-config").trim(), "ovrender 644", "{log}");
    assert_eq!(sb.read("out/banner").trim(), "ovrender 600", "{log}");
    assert!(sb.read("out/motd").starts_with("Welcome"), "{log}");
    // A layer's facts directory exists only when it recorded facts (`skipped` records none); its
    // backup index (`.bak.index`: what it created or replaced) only when its system steps wrote
    // files (`builders` writes as the user only), and no backup directory, as nothing written
    // here existed before.
    assert_eq!(
        sb.read("out/ledger"),
        "builders.d\nbuilders.json\nbuilders.undo.sh\nconfig.bak.index\nconfig.d\nconfig.json\nconfig.undo.sh\nservices.bak.index\nservices.d\nservices.json\nservices.undo.sh\nskipped.json\nskipped.undo.sh\ntools.bak.index\ntools.d\ntools.json\ntools.undo.sh\n",
        "{log}"
    );
    // The user's view holds the records only.
    assert_eq!(
        sb.read("out/view"),
        "builders.json\nconfig.json\nservices.json\nskipped.json\ntools.json\n",
        "{log}"
    );
    assert_eq!(sb.read("out/facts"), "ripgrep\n");
    assert_eq!(sb.read("out/profile"), "/home/ovrender/.npm-global");
    // A second run finds every layer applied.
    assert_eq!(
        sb.read("out/rerun.rc"),
        "0\n",
        "{}",
        sb.read("out/rerun.log")
    );
    assert!(
        sb.read("out/rerun.log").contains("layer-skip"),
        "{}",
        sb.read("out/rerun.log")
    );
    // Teardown.
    let undo = sb.read("out/undo.log");
    assert_eq!(sb.read("out/undo.rc"), "0\n", "{undo}");
    assert_eq!(sb.read("out/left"), "", "{undo}");
    assert_eq!(sb.read("out/block-after").trim(), "0", "{undo}");
    let stubs = sb.stub_log();
    assert!(
        stubs.contains("apt-get purge -y -q -o DPkg::Lock::Timeout=300 -- ripgrep"),
        "{stubs}"
    );
}

/// A bundle whose system scripts name only the core helpers (files, directories, links and
/// commands) has run.sh read `lib.sh` only up to the end of the core — and that is enough: it
/// applies, re-runs and tears down. The every-kind bundle (packages, services, ...) reads all.
#[test]
fn a_bundle_of_files_links_and_commands_runs_on_the_core_helpers_alone() {
    use ov_compiler::plan::{Action, RunAs, TaskVerb};
    let full = every_kind_plan("deb");
    assert!(!render_plan(&full, &fixture_root()).lib_core_only);
    let mut plan = full.clone();
    plan.deploy.user = Some("ovcore".to_string());
    plan.layers.retain(|l| l.name == "config");
    for l in &mut plan.layers {
        l.steps.retain(|s| match &s.action {
            Action::Task { task, .. } => matches!(
                task.verb,
                TaskVerb::Mkdir { .. }
                    | TaskVerb::Write { .. }
                    | TaskVerb::Link { .. }
                    | TaskVerb::Cmd { .. }
            ),
            Action::File { run_as, .. } => *run_as == RunAs::Root,
            _ => false,
        });
    }
    let kinds: Vec<String> = plan.layers[0]
        .steps
        .iter()
        .map(|s| s.kind().to_string())
        .collect();
    assert!(kinds.len() >= 4, "{kinds:?}");
    let rendered = render_plan(&plan, &fixture_root());
    assert!(rendered.lib_core_only, "{kinds:?}");
    if !Sandbox::available() || !have_tool("useradd", &["--help"]) {
        return;
    }
    let (sb, top) = unpacked_in_a_sandbox(&plan);
    let body = format!(
        r#"
id ovcore >/dev/null 2>&1 || useradd -m -d /home/ovcore -s /bin/bash ovcore || exit 92
mkdir -p /home/ovcore && chown ovcore: /home/ovcore
grep -c '^OV_M_LIB_CORE=1$' {top}/run.sh > "$T/out/flag"
bash {top}/run.sh --user ovcore > "$T/out/run.log" 2>&1; echo $? > "$T/out/run.rc"
bash {top}/run.sh --user ovcore --force > "$T/out/rerun.log" 2>&1; echo $? > "$T/out/rerun.rc"
bash {top}/undo.sh --user ovcore > "$T/out/undo.log" 2>&1; echo $? > "$T/out/undo.rc"
for f in /var/lib/overthink/installed/ovcore/layers/config.json /etc/demo/motd /usr/local/bin/demo-motd; do
  if [ -e "$f" ] || [ -L "$f" ]; then echo "$f"; fi
done > "$T/out/ledger"
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let (_, out) = sb.run_raw(&body, &[]);
    assert_eq!(sb.read("out/checked"), "done\n", "{out}");
    assert_eq!(sb.read("out/flag"), "1\n");
    let log = sb.read("out/run.log");
    assert_eq!(sb.read("out/run.rc"), "0\n", "{log}\n{out}");
    assert!(!log.contains("command not found"), "{log}");
    assert!(log.contains("::ov:: end result=ok applied=1"), "{log}");
    let rerun = sb.read("out/rerun.log");
    assert_eq!(sb.read("out/rerun.rc"), "0\n", "{rerun}");
    assert!(!rerun.contains("command not found"), "{rerun}");
    let undo = sb.read("out/undo.log");
    assert_eq!(sb.read("out/undo.rc"), "0\n", "{undo}");
    assert_eq!(sb.read("out/ledger"), "", "{undo}");
}

/// The run's scratch and the user's view across runs: the first run leaves no stage behind and a
/// view equal to root's records; what an interrupted run left in `.tmp` (a stage with files, an
/// older version's `.tmp/run.PID`) is gone after the next run; a re-run that only rewrites the
/// deploy record, and one that rewrites every record (`--force`), leave the view equal to the
/// ledger and no staging file in the home; a view the user's process cannot write is a warning,
/// not a failed run.
#[test]
fn the_view_follows_the_ledger_and_the_runs_scratch_comes_and_goes() {
    use ov_compiler::plan::TaskVerb;
    let Some((sb, top, account)) = config_tasks_sandbox("ovview", |v| {
        matches!(v, TaskVerb::Mkdir { .. } | TaskVerb::Write { .. })
    }) else {
        return;
    };
    let body = format!(
        r#"
{account}H=/home/ovview L=/var/lib/overthink/installed/ovview V=/home/ovview/.config/overthink/installed
same() {{ # the view holds exactly root's records
  (cd "$L" && find deploys layers -name '*.json' | sort) > "$T/out/l.$1"
  (cd "$V" && find . -mindepth 1 | sed 's|^\./||' | sort) > "$T/out/v.$1"
  while read -r f; do cmp -s "$L/$f" "$V/$f" || echo "differs: $f"; done < "$T/out/l.$1"
  printf 'deploys\nlayers\n' | cat - "$T/out/l.$1" | sort | diff - "$T/out/v.$1" && echo "view ok"
  ls -A "$H/.config/overthink"
  ls -A "$L/.tmp"
}}
bash {top}/run.sh --user ovview > "$T/out/run1.log" 2>&1; echo "rc $?" > "$T/out/1"
same 1 >> "$T/out/1" 2>&1
mkdir -p "$L/.tmp/stage/.runtime" "$L/.tmp/run.4242/batch" && echo x > "$L/.tmp/stage/config.json"
sleep 1.1
bash {top}/run.sh --user ovview > "$T/out/run2.log" 2>&1; echo "rc $?" > "$T/out/2"
same 2 >> "$T/out/2" 2>&1
bash {top}/run.sh --user ovview --force > "$T/out/run3.log" 2>&1; echo "rc $?" > "$T/out/3"
same 3 >> "$T/out/3" 2>&1
runuser -u ovview -- chmod 0500 "$V/deploys"
bash {top}/run.sh --user ovview > "$T/out/run4.log" 2>&1; echo "rc $?" > "$T/out/4"
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let (_, out) = sb.run_raw(&body, &[]);
    assert_eq!(sb.read("out/checked"), "done\n", "{out}");
    // After each run: the view equals the ledger, the home holds the view alone, and root's
    // scratch is gone but for the (empty) journal.
    let expect = "rc 0\nview ok\ninstalled\njournal\n";
    for n in ["1", "2", "3"] {
        assert_eq!(
            sb.read(&format!("out/{n}")),
            expect,
            "run {n}:\n{}",
            sb.read(&format!("out/run{n}.log"))
        );
    }
    assert!(
        sb.read("out/run2.log").contains("layer-skip"),
        "{}",
        sb.read("out/run2.log")
    );
    let run4 = sb.read("out/run4.log");
    assert_eq!(sb.read("out/4"), "rc 0\n", "{run4}");
    assert!(
        run4.contains("ov: warning: could not update the ledger view"),
        "{run4}"
    );
    assert!(!run4.contains("::ov:: ov:"), "{run4}");
}

/// The account can put anything where its own view is staged — here a FIFO at every name the
/// user's view process could write (its PID is small in a fresh PID namespace): opening one for
/// writing would block that process, and root, which waits for it, for ever. Each run still ends
/// (rc 0) with a warning about the view, whether it rewrites every record (`--force`: a staging
/// directory) or only the deploy record (a file beside it). (A run that hangs is killed with
/// its PID namespace after two minutes, and fails the test.)
#[test]
fn a_fifo_where_the_view_is_staged_is_a_warning_not_a_hang() {
    use ov_compiler::plan::TaskVerb;
    let Some((sb, top, account)) =
        config_tasks_sandbox("ovfifo", |v| matches!(v, TaskVerb::Mkdir { .. }))
    else {
        return;
    };
    let body = format!(
        r#"
{account}L=/var/lib/overthink/installed/ovfifo V=/home/ovfifo/.config/overthink/installed
bash {top}/run.sh --user ovfifo > "$T/out/run1.log" 2>&1; echo "rc $?" > "$T/out/1"
id=$(cd "$L/deploys" && ls)
runuser -u ovfifo -- bash -c '
  V=$1 id=$2
  dirs=() fifos=()
  for n in $(seq 1 400); do
    dirs+=("$V/.view.$n/deploys" "$V/.view.$n/layers")
    fifos+=("$V/.view.$n/deploys/$id" "$V/.view.$n/layers/config.json" "$V/deploys/.view.$n.json")
  done
  mkdir -p "${{dirs[@]}}" && mkfifo "${{fifos[@]}}"' planter "$V" "$id" || exit 93
for n in 2 3; do
  [ "$n" = 2 ] && force=--force || force=
  timeout 120 unshare --pid --fork --kill-child --mount-proc bash {top}/run.sh --user ovfifo $force > "$T/out/run$n.log" 2>&1 </dev/null
  echo "rc $?" > "$T/out/$n"
done
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let (_, out) = sb.run_raw(&body, &[]);
    assert_eq!(sb.read("out/checked"), "done\n", "{out}");
    assert_eq!(sb.read("out/1"), "rc 0\n", "{}", sb.read("out/run1.log"));
    for n in ["2", "3"] {
        let log = sb.read(&format!("out/run{n}.log"));
        assert_eq!(sb.read(&format!("out/{n}")), "rc 0\n", "run {n}:\n{log}");
        assert!(
            log.contains("ov: warning: could not update the ledger view"),
            "run {n}:\n{log}"
        );
    }
}

/// run.sh finds the target account in `/etc/passwd` itself when `nsswitch.conf` names the files
/// first for `passwd` (what `getent` would answer then), and asks `getent` when another source
/// comes first — both runs resolve the account and apply. (A logging `getent` goes first in the
/// PATH run.sh gives its processes.)
#[test]
fn the_account_comes_from_the_files_or_from_getent_as_nsswitch_says() {
    use ov_compiler::plan::TaskVerb;
    let Some((sb, top, account)) =
        config_tasks_sandbox("ovnss", |v| matches!(v, TaskVerb::Mkdir { .. }))
    else {
        return;
    };
    let body = format!(
        r#"
{account}printf '#!/bin/sh\nprintf "%%s\\n" "$*" >> %s\nexec /usr/bin/getent "$@"\n' "$T/out/getent.log" > /usr/local/sbin/getent
chmod 0755 /usr/local/sbin/getent
: > "$T/out/getent.log"
for n in 1 2; do
  if [ "$n" = 1 ]; then db='files systemd'; else db='systemd files'; fi
  {{ grep -v '^passwd:' /etc/nsswitch.conf; printf 'passwd:         %s\n' "$db"; }} > "$T/nss" && cat "$T/nss" > /etc/nsswitch.conf
  bash {top}/run.sh --user ovnss --force > "$T/out/run$n.log" 2>&1; echo "rc $?" > "$T/out/$n"
  cp "$T/out/getent.log" "$T/out/getent.$n"
done
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let (_, out) = sb.run_raw(&body, &[]);
    assert_eq!(sb.read("out/checked"), "done\n", "{out}");
    for n in ["1", "2"] {
        let log = sb.read(&format!("out/run{n}.log"));
        assert_eq!(sb.read(&format!("out/{n}")), "rc 0\n", "run {n}:\n{log}");
        assert!(
            log.contains("::ov:: end result=ok applied=1"),
            "run {n}:\n{log}"
        );
    }
    // The files first: no `getent passwd` at all; another source first: `getent passwd ovnss`
    // (once per run.sh: the bundle here is not root's alone, so run.sh runs again from a copy).
    let asked = |n: &str| {
        sb.read(&format!("out/getent.{n}"))
            .lines()
            .filter(|l| l.starts_with("passwd"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(asked("1"), Vec::<String>::new());
    let two = asked("2");
    assert!(
        !two.is_empty() && two.iter().all(|l| l == "passwd ovnss"),
        "{two:?}"
    );
}

/// A directory that root's `mkdir -p` was to make, made by another account first — the race
/// between the guard's walk and the `mkdir` (which takes a directory it finds), won here every
/// time by a `mkdir` first in the steps' PATH that makes it as the account: root refuses to write
/// into it and names it, and nothing of root's lands there. (Before the check the run wrote
/// root's file into the account's directory and exited 0; since it, a directory root made is
/// also not walked again by the next step: this is what makes that safe.)
#[test]
fn a_directory_another_account_made_first_is_not_written_into_as_root() {
    use ov_compiler::plan::TaskVerb;
    let Some((sb, top, account)) = config_tasks_sandbox(
        "ovrace",
        |v| matches!(v, TaskVerb::Write { path, .. } if path == "/etc/demo/motd"),
    ) else {
        return;
    };
    let body = format!(
        r#"
{account}rm -rf /etc/demo
printf '#!/bin/sh\nfor a; do [ "$a" = /etc/demo ] && /bin/mkdir -p /etc/demo && chown ovrace: /etc/demo; done\nexec /bin/mkdir "$@"\n' > /usr/local/sbin/mkdir
chmod 0755 /usr/local/sbin/mkdir
bash {top}/run.sh --user ovrace > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"
rm -f /usr/local/sbin/mkdir
if [ -e /etc/demo/motd ]; then echo written; else echo absent; fi > "$T/out/motd"
stat -c %U /etc/demo > "$T/out/owner"
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    // (the race was won: the directory is the account's)
    assert_eq!(sb.read("out/owner"), "ovrace\n", "{log}");
    assert_eq!(sb.read("out/rc"), "rc 4\n", "{log}");
    assert_eq!(sb.read("out/motd"), "absent\n", "{log}");
    assert!(
        log.contains(
            "refusing to write /etc/demo as root: /etc/demo was made by another account meanwhile"
        ),
        "{log}"
    );
}

/// What run.sh's `stat` before the first step covers for the guard of root's writes
/// (`OV_M_GUARD_DIRS`): the directories of the system steps' destinations and of what their undo
/// removes, each with every directory above it — not a user step's, not a skipped step's, not a
/// path known only at run time. Per layer, whether it runs root's own code, after which the guard
/// looks again (`OV_M_LAYER_ROOT`: a `cmd:` as root does, a `cmd:` as the target user does not).
#[test]
fn run_sh_asks_the_modes_of_the_directories_root_writes_into() {
    use ov_compiler::plan::{ReverseKind, Scope, Skip, TaskVerb};
    let write = |path: &str| TaskVerb::Write {
        path: path.into(),
        content: "x\n".into(),
    };
    let mut skipped = task_step(write("/srv/skipped/x.conf"), Scope::System, vec![]);
    skipped.skip = Some(Skip {
        reason: "container-only".into(),
        enable_with: None,
    });
    let steps = vec![
        task_step(
            write("/etc/ovg/a.conf"),
            Scope::System,
            vec![op(
                ReverseKind::RmFileSystem,
                Scope::System,
                &["/etc/ovg/a.conf"],
            )],
        ),
        task_step(
            TaskVerb::Mkdir {
                path: "/opt/ovg/data/".into(),
            },
            Scope::System,
            vec![],
        ),
        task_step(write("/home/u/.ovg.conf"), Scope::User, vec![]),
        task_step(write("${HOME}/ovg.conf"), Scope::System, vec![]),
        skipped,
    ];
    let cmd = |run_as| {
        let action = Action::Task {
            task: task(TaskVerb::Cmd {
                body: "true".into(),
            }),
            run_as,
            ctx_files: None,
        };
        step(action, Scope::System, vec![])
    };
    let root_cmd = vec![
        cmd(ov_compiler::plan::RunAs::Root),
        task_step(write("/opt/ovg/b.conf"), Scope::System, vec![]),
    ];
    let user_cmd = vec![cmd(ov_compiler::plan::RunAs::TargetUser)];
    let b = bundle_plan(&plan(
        "deb",
        vec![
            layer("ovg", steps),
            layer("ovr", root_cmd),
            layer("ovu", user_cmd),
        ],
    ));
    let run = b
        .files
        .iter()
        .find(|f| f.path == "run.sh")
        .map(|f| String::from_utf8(f.data.clone()).expect("utf-8"))
        .expect("run.sh");
    let line = |name: &str| {
        run.lines()
            .find(|l| l.starts_with(&format!("{name}=(")))
            .unwrap_or_else(|| panic!("{name}"))
            .to_string()
    };
    assert_eq!(
        line("OV_M_GUARD_DIRS"),
        "OV_M_GUARD_DIRS=( / /etc /etc/ovg /opt /opt/ovg /opt/ovg/data )"
    );
    assert_eq!(line("OV_M_LAYER_ROOT"), "OV_M_LAYER_ROOT=( 0 1 0 )");
}

/// For `ovgw`, a layer `gw` whose root `write:` goes to /opt/ovshared/app/conf.
fn shared_write_sandbox() -> Option<(Sandbox, std::path::PathBuf, String)> {
    system_layers_sandbox(
        "ovgw",
        vec![(
            "gw",
            vec![ov_compiler::plan::TaskVerb::Write {
                path: "/opt/ovshared/app/conf".into(),
                content: "root's\n".into(),
            }],
        )],
    )
}

/// A directory root writes into that is root's but that another account can write all the same
/// (group-writable, as Debian ships `/var/local` and `/var/mail`, or writable by all without the
/// sticky bit): that account can put a link where root's next directory goes, and root would
/// write through it. Here the account links `app` in such a directory to a canary directory of
/// root's before the run. Root must refuse (naming the directory and its mode) and write nothing
/// into the canary — first with the directory group-writable by the account's group, then
/// writable by all. A sticky directory writable by all (like /tmp) stays usable: without the link,
/// root makes its own `app` there and writes into it. (Before the check the first run wrote
/// root's file into the canary and exited 0.)
#[test]
fn root_never_writes_through_a_directory_another_account_can_write() {
    let Some((sb, top, account)) = shared_write_sandbox() else {
        return;
    };
    let body = format!(
        r#"
{account}rm -rf /opt/ovshared /etc/ovcanary
mkdir -p /opt/ovshared /etc/ovcanary
run() {{
  runuser -u ovgw -- ln -sfn /etc/ovcanary /opt/ovshared/app
  bash {top}/run.sh --user ovgw > "$T/out/run-$1.log" 2>&1; echo "rc $?" > "$T/out/rc-$1"
  ls -A /etc/ovcanary > "$T/out/canary-$1"
}}
chown root:ovgw /opt/ovshared && chmod 0775 /opt/ovshared && run group
chown root:root /opt/ovshared && chmod 0777 /opt/ovshared && run all
rm -f /opt/ovshared/app && chmod 1777 /opt/ovshared
bash {top}/run.sh --user ovgw > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc-sticky"
cat /opt/ovshared/app/conf > "$T/out/conf" 2>&1
stat -c %U /opt/ovshared/app >> "$T/out/conf" 2>&1
ls -A /etc/ovcanary > "$T/out/canary-sticky"
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    for (case, mode) in [("group", "775"), ("all", "777")] {
        let run = sb.read(&format!("out/run-{case}.log"));
        assert_eq!(sb.read(&format!("out/canary-{case}")), "", "{case}: {run}");
        assert_eq!(
            sb.read(&format!("out/rc-{case}")),
            "rc 4\n",
            "{case}: {run}"
        );
        assert!(
            run.contains(&format!(
                "refusing to write /opt/ovshared/app as root: /opt/ovshared can be changed by another account (mode {mode})"
            )),
            "{case}: {run}"
        );
    }
    assert_eq!(sb.read("out/rc-sticky"), "rc 0\n", "{log}");
    assert_eq!(sb.read("out/conf"), "root's\nroot\n", "{log}");
    assert_eq!(sb.read("out/canary-sticky"), "", "{log}");
}

/// Teardown removes what a layer wrote through the same guard: after the deploy an admin opened
/// /opt/ovshared to all (0777), and the account put a link where `app` was, to a canary directory
/// of root's holding a `conf` of its own. Undo must not remove the canary's file through the link
/// (it refuses, names the directory and its mode, and reports the layer's undo as failed). (Before,
/// undo's `rm -f` went through the link and the canary's file was gone.)
#[test]
fn undo_never_removes_through_a_directory_another_account_can_write() {
    let Some((sb, top, account)) = shared_write_sandbox() else {
        return;
    };
    let body = format!(
        r#"
{account}rm -rf /opt/ovshared /etc/ovcanary
mkdir -p /opt/ovshared /etc/ovcanary
bash {top}/run.sh --user ovgw > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"
chmod 0777 /opt/ovshared
rm -rf /opt/ovshared/app
echo canary > /etc/ovcanary/conf
runuser -u ovgw -- ln -s /etc/ovcanary /opt/ovshared/app
bash {top}/undo.sh --user ovgw > "$T/out/undo.log" 2>&1; echo "rc $?" > "$T/out/undo-rc"
cat /etc/ovcanary/conf > "$T/out/canary" 2>&1
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    let undo = sb.read("out/undo.log");
    assert_eq!(sb.read("out/rc"), "rc 0\n", "{log}");
    assert_eq!(sb.read("out/canary"), "canary\n", "{undo}");
    assert_ne!(sb.read("out/undo-rc"), "rc 0\n", "{undo}");
    assert!(
        undo.contains(
            "refusing to write /opt/ovshared as root: /opt/ovshared can be changed by another account (mode 777)"
        ),
        "{undo}"
    );
}

/// `run.sh --check --diff` as root reads a file only through a way no other account can change:
/// after the deploy /opt/ovshared became group-writable (root:ovgw 0775), and the account swapped
/// root's `app` for another directory of root's there whose `conf` holds a secret (renaming in
/// a directory it can write needs no ownership of what it renames). The check must say it cannot
/// tell (`unknown`), never `ok` or a diff — which would show the secret and let the account decide
/// what the check reports. (Before, only the owners on the way were looked at — all root's — and
/// the diff printed the secret.)
#[test]
fn check_never_reads_through_a_directory_another_account_can_write() {
    let Some((sb, top, account)) = shared_write_sandbox() else {
        return;
    };
    let body = format!(
        r#"
{account}rm -rf /opt/ovshared /etc/ovcanary
mkdir -p /opt/ovshared /etc/ovcanary
bash {top}/run.sh --user ovgw > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"
chown root:ovgw /opt/ovshared && chmod 0775 /opt/ovshared
mkdir /opt/ovshared/other && echo 'canary secret' > /opt/ovshared/other/conf
runuser -u ovgw -- sh -c 'mv /opt/ovshared/app /opt/ovshared/old && mv /opt/ovshared/other /opt/ovshared/app'
bash {top}/run.sh --check --diff --user ovgw > "$T/out/check.log" 2>&1; echo "rc $?" > "$T/out/check-rc"
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    let check = sb.read("out/check.log");
    assert_eq!(sb.read("out/rc"), "rc 0\n", "{log}");
    assert!(!check.contains("canary secret"), "{check}");
    assert!(
        check.contains(
            "unknown file /opt/ovshared/app/conf (a directory on the way is not root's alone)"
        ),
        "{check}"
    );
}

/// A `mkdir:` whose mode lets a group write the directory (2775, as for a shared web root) is
/// checked like any other: the way to it is root's alone, so `run.sh --check` after the run says
/// `ok`, not `unknown` — the directory's own mode is what the step sets, not a way to something.
#[test]
fn check_of_a_group_writable_mkdir_is_ok() {
    use ov_compiler::plan::TaskVerb;
    let mut shared = task(TaskVerb::Mkdir {
        path: "/opt/ovgroup".into(),
    });
    shared.mode = Some("2775".into());
    let Some((sb, top, account)) = system_tasks_sandbox("ovgw", vec![("shared", vec![shared])])
    else {
        return;
    };
    let body = format!(
        r#"
{account}rm -rf /opt/ovgroup
bash {top}/run.sh --user ovgw > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"
bash {top}/run.sh --check --user ovgw > "$T/out/check.log" 2>&1; echo "rc $?" > "$T/out/check-rc"
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    let check = sb.read("out/check.log");
    assert_eq!(sb.read("out/rc"), "rc 0\n", "{log}");
    assert!(check.contains("ok      directory /opt/ovgroup"), "{check}");
    assert_eq!(sb.read("out/check-rc"), "rc 0\n", "{check}");
}

/// For the guard's attacks: make `ovgw` and an empty canary directory of root's
/// (/etc/ovcanary), run `setup` (the attacker's preparation), then `run.sh` as root for `ovgw`;
/// the run's log. What the canary holds afterwards is in `out/canary`, the status in `out/rc`.
fn guard_attack(sb: &Sandbox, top: &std::path::Path, account: &str, setup: &str) -> String {
    let body = format!(
        r#"
{account}rm -rf /etc/ovcanary && mkdir -p /etc/ovcanary
{setup}
bash {top}/run.sh --user ovgw > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"
ls -A /etc/ovcanary > "$T/out/canary"
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    run_checked(sb, &body)
}

/// The run of [`guard_attack`] stopped at the guard (status 4, saying `refusal`), and nothing of
/// root's reached the canary.
fn assert_guard_refused(sb: &Sandbox, log: &str, refusal: &str) {
    assert_eq!(sb.read("out/canary"), "", "{log}");
    assert_eq!(sb.read("out/rc"), "rc 4\n", "{log}");
    assert!(log.contains(refusal), "{refusal}\n{log}");
}

/// A bundle whose root steps write into many directories (more than run.sh asks about at its
/// start) has them looked at once a layer is to run: the guard refuses the group-writable
/// directory all the same, after the layer before it made its seventy directories.
#[test]
fn many_directories_are_guarded_as_few_are() {
    use ov_compiler::plan::TaskVerb;
    let many = (0..70)
        .map(|i| TaskVerb::Mkdir {
            path: format!("/opt/ovmany/d{i:02}"),
        })
        .collect();
    let write = TaskVerb::Write {
        path: "/opt/ovshared/app/conf".into(),
        content: "root's\n".into(),
    };
    let Some((sb, top, account)) =
        system_layers_sandbox("ovgw", vec![("many", many), ("gw", vec![write])])
    else {
        return;
    };
    // (more than run.sh asks about at its start)
    let run = std::fs::read_to_string(top.join("run.sh")).expect("run.sh");
    let listed = run
        .lines()
        .find_map(|l| l.strip_prefix("OV_M_GUARD_DIRS=("))
        .map(|l| l.split_whitespace().count() - 1)
        .expect("OV_M_GUARD_DIRS");
    assert!(listed > 64, "{listed}");
    let log = guard_attack(
        &sb,
        &top,
        &account,
        "rm -rf /opt/ovshared /opt/ovmany && mkdir -p /opt/ovshared
chown root:ovgw /opt/ovshared && chmod 0775 /opt/ovshared
runuser -u ovgw -- ln -s /etc/ovcanary /opt/ovshared/app",
    );
    assert_guard_refused(
        &sb,
        &log,
        "refusing to write /opt/ovshared/app as root: /opt/ovshared can be changed by another account (mode 775)",
    );
    assert!(log.contains("layer-done layer=many"), "{log}");
}

/// The guard of root's writes decides from `stat`'s answer; when `stat` says nothing about a
/// directory on the way (here a `stat` first in the steps' PATH that leaves out every path under
/// /opt/ovshared, a directory writable by all, where the account links `app` to a canary), root
/// must refuse rather than take the silence for "missing" or "safe", and write nothing into the
/// canary.
#[test]
fn root_refuses_to_write_where_stat_cannot_say_who_may_change_the_way() {
    let Some((sb, top, account)) = shared_write_sandbox() else {
        return;
    };
    let log = guard_attack(
        &sb,
        &top,
        &account,
        r#"rm -rf /opt/ovshared && mkdir -p /opt/ovshared && chmod 0777 /opt/ovshared
runuser -u ovgw -- ln -s /etc/ovcanary /opt/ovshared/app
cat > /usr/local/sbin/stat <<'EOS'
#!/bin/bash
a=()
for x in "$@"; do case $x in /opt/ovshared*) ;; *) a+=("$x") ;; esac; done
exec /usr/bin/stat "${a[@]}"
EOS
chmod 0755 /usr/local/sbin/stat"#,
    );
    assert_guard_refused(
        &sb,
        &log,
        "refusing to write /opt/ovshared/app as root: cannot tell whether another account can change /opt/ovshared",
    );
}

/// An archive a root `download:` unpacks goes into the directories its destination already has,
/// and through links there (merged-/usr systems link directories): one of those that another
/// account can write (here `sub`, group-writable by the account's group) lets that account link
/// `sub/inner` to a canary directory of root's before the run. Root must refuse (naming `sub`)
/// and unpack nothing into the canary. (Before the check, tar wrote the archive's
/// `sub/inner/file` into the canary and the run exited 0.)
#[test]
fn an_archive_is_never_unpacked_through_a_directory_another_account_can_write() {
    use ov_compiler::plan::TaskVerb;
    let Some((sb, top, account)) = system_layers_sandbox(
        "ovgw",
        vec![(
            "dl",
            vec![TaskVerb::Download {
                url: "https://example.invalid/tool.tar.gz".into(),
                to: Some("/opt/ovdl".into()),
                extract: None,
                include: vec![],
                strip_components: Some(1),
            }],
        )],
    ) else {
        return;
    };
    let log = guard_attack(
        &sb,
        &top,
        &account,
        r#"rm -rf /opt/ovdl "$STUB_TREE"
mkdir -p /opt/ovdl/sub "$STUB_TREE/uv-x86_64/sub/inner"
echo archive > "$STUB_TREE/uv-x86_64/sub/inner/file"
chown root:ovgw /opt/ovdl/sub && chmod 0775 /opt/ovdl/sub
runuser -u ovgw -- ln -s /etc/ovcanary /opt/ovdl/sub/inner"#,
    );
    assert_guard_refused(
        &sb,
        &log,
        "refusing to write /opt/ovdl/sub as root: /opt/ovdl/sub can be changed by another account (mode 775)",
    );
}

/// A root `setcap:` on a program another account owns (here the account's own `tool` in a
/// directory of root's): root would give that account's program the capabilities. Root must
/// refuse and never call `setcap` on it; nor on a link, or through a directory another account
/// can write. (Before, the run called `setcap cap_net_raw+ep` on each and exited 0.)
#[test]
fn root_gives_capabilities_only_to_a_program_of_its_own() {
    let cases = [
        (
            "/opt/ovcap/tool",
            "cp /bin/true /opt/ovcap/tool && chown ovgw: /opt/ovcap/tool",
            "refusing to set capabilities on /opt/ovcap/tool as root: another account owns it or can change it",
        ),
        (
            "/opt/ovcap/link",
            "ln -s /bin/true /opt/ovcap/link",
            "refusing to set capabilities on /opt/ovcap/link as root: it is a link",
        ),
        (
            "/opt/ovcap/shared/tool",
            "mkdir /opt/ovcap/shared && cp /bin/true /opt/ovcap/shared/tool\n\
             chown root:ovgw /opt/ovcap/shared && chmod 0775 /opt/ovcap/shared",
            "refusing to write /opt/ovcap/shared as root: /opt/ovcap/shared can be changed by another account (mode 775)",
        ),
    ];
    for (path, setup, refusal) in cases {
        let Some((sb, top, account)) = system_layers_sandbox(
            "ovgw",
            vec![(
                "cap",
                vec![ov_compiler::plan::TaskVerb::Setcap {
                    path: path.into(),
                    caps: "cap_net_raw+ep".into(),
                }],
            )],
        ) else {
            return;
        };
        let setup = format!("rm -rf /opt/ovcap && mkdir -p /opt/ovcap\n{setup}");
        let log = guard_attack(&sb, &top, &account, &setup);
        let calls = sb.read("stub.log");
        assert!(
            !calls
                .lines()
                .any(|l| l.starts_with("setcap cap_net_raw+ep")),
            "{path}: {calls}\n{log}"
        );
        assert_guard_refused(&sb, &log, refusal);
    }
}

/// A layer's `mkdir:` whose `mode:` opens a directory to every account (0777, no sticky bit),
/// and a later layer's root `write:` below it: between the two, another account can put a link
/// where root's next directory goes (here the first layer's own `cmd:` does it, run as the
/// account — not root's code, so nothing makes the guard look again). The run's table knows the
/// mode the first layer gave the directory, so root refuses the write and nothing lands in the
/// canary. (Before, a directory made during the run was trusted as root's own, and root wrote
/// into the canary.)
#[test]
fn a_directory_a_layer_opened_to_all_is_not_written_through_by_a_later_layer() {
    use ov_compiler::plan::{RunAs, TaskVerb};
    let mut open = task(TaskVerb::Mkdir {
        path: "/opt/ovopen".into(),
    });
    open.mode = Some("0777".into());
    let plant = task(TaskVerb::Cmd {
        body: "ln -s /etc/ovcanary /opt/ovopen/app".into(),
    });
    let write = task(TaskVerb::Write {
        path: "/opt/ovopen/app/conf".into(),
        content: "root's\n".into(),
    });
    let Some((sb, top, account)) = system_tasks_as_sandbox(
        "ovgw",
        vec![
            (
                "opener",
                vec![(open, RunAs::Root), (plant, RunAs::TargetUser)],
            ),
            ("writer", vec![(write, RunAs::Root)]),
        ],
    ) else {
        return;
    };
    let log = guard_attack(&sb, &top, &account, "rm -rf /opt/ovopen");
    assert_guard_refused(
        &sb,
        &log,
        "refusing to write /opt/ovopen/app as root: /opt/ovopen can be changed by another account (mode 0777)",
    );
}

/// Root's own code (here a `cmd:`; a package's maintainer scripts or a started service alike) can
/// open a directory to other accounts after run.sh's table was made: this one makes /opt/ovopen
/// writable by all, and the account at once puts a link where root's next directory goes. A later
/// layer's root `write:` below it must see the new mode — the table had the directory as missing,
/// which meant "made during the run by root" — and refuse, with nothing in the canary. (Before,
/// root wrote through the link into the canary and the run ended 0.)
#[test]
fn a_directory_root_code_opened_is_not_written_through_by_a_later_layer() {
    root_code_opens_the_way("mkdir -m 0777 /opt/ovopen", false, "rm -rf /opt/ovopen");
}

/// The same within one layer, for a directory that was there, root's and closed when run.sh
/// looked: the layer's `cmd:` opens it (chmod 0777) and the account links `app` to the canary;
/// the same layer's next step, a root `write:` below it, must look again and refuse. (Before,
/// the table's 755 was believed and root wrote into the canary.)
#[test]
fn a_directory_root_code_opened_is_not_written_through_by_the_next_step() {
    root_code_opens_the_way(
        "chmod 0777 /opt/ovopen",
        true,
        "rm -rf /opt/ovopen && mkdir -m 0755 /opt/ovopen",
    );
}

/// A root `cmd:` running `opening` (which leaves /opt/ovopen writable by all) and then, as the
/// account, linking /opt/ovopen/app to the canary; a root `write:` of /opt/ovopen/app/conf after
/// it, in the same layer or the next. Root must refuse, naming the mode `stat` now gives.
fn root_code_opens_the_way(opening: &str, same_layer: bool, setup: &str) {
    use ov_compiler::plan::TaskVerb;
    let open = task(TaskVerb::Cmd {
        body: format!("{opening}\nrunuser -u ovgw -- ln -s /etc/ovcanary /opt/ovopen/app"),
    });
    let write = task(TaskVerb::Write {
        path: "/opt/ovopen/app/conf".into(),
        content: "root's\n".into(),
    });
    let layers = if same_layer {
        vec![("both", vec![open, write])]
    } else {
        vec![("opener", vec![open]), ("writer", vec![write])]
    };
    let Some((sb, top, account)) = system_tasks_sandbox("ovgw", layers) else {
        return;
    };
    let log = guard_attack(&sb, &top, &account, setup);
    assert_guard_refused(
        &sb,
        &log,
        "refusing to write /opt/ovopen/app as root: /opt/ovopen can be changed by another account (mode 777)",
    );
}

/// A plan of system layers `(name, tasks)` (root's tasks, system scope) for `user`, unpacked in a
/// new sandbox, and the shell lines that make the account; `None` without the sandbox.
fn system_layers_sandbox(
    user: &str,
    layers: Vec<(&str, Vec<ov_compiler::plan::TaskVerb>)>,
) -> Option<(Sandbox, std::path::PathBuf, String)> {
    let layers = layers
        .into_iter()
        .map(|(name, verbs)| (name, verbs.into_iter().map(task).collect()))
        .collect();
    system_tasks_sandbox(user, layers)
}

/// [`system_layers_sandbox`] for whole tasks (a `mkdir:` with its `mode:`, say).
fn system_tasks_sandbox(
    user: &str,
    layers: Vec<(&str, Vec<ov_compiler::plan::Task>)>,
) -> Option<(Sandbox, std::path::PathBuf, String)> {
    let layers = layers
        .into_iter()
        .map(|(name, tasks)| {
            let tasks = tasks
                .into_iter()
                .map(|t| (t, ov_compiler::plan::RunAs::Root))
                .collect();
            (name, tasks)
        })
        .collect();
    system_tasks_as_sandbox(user, layers)
}

/// [`system_tasks_sandbox`] with the account each task runs as.
fn system_tasks_as_sandbox(
    user: &str,
    layers: Vec<(
        &str,
        Vec<(ov_compiler::plan::Task, ov_compiler::plan::RunAs)>,
    )>,
) -> Option<(Sandbox, std::path::PathBuf, String)> {
    use ov_compiler::plan::{ReverseKind, Scope};
    account_sandbox(user, || {
        let layers = layers
            .into_iter()
            .map(|(name, tasks)| {
                let steps = tasks
                    .into_iter()
                    .map(|(task, run_as)| {
                        let reverse = match &task.verb {
                            ov_compiler::plan::TaskVerb::Write { path, .. } => vec![op(
                                ReverseKind::RmFileSystem,
                                Scope::System,
                                &[path.as_str()],
                            )],
                            _ => vec![],
                        };
                        let action = Action::Task {
                            task,
                            run_as,
                            ctx_files: None,
                        };
                        step(action, Scope::System, reverse)
                    })
                    .collect();
                layer(name, steps)
            })
            .collect();
        let mut p = plan("deb", layers);
        p.deploy.user = Some(user.to_string());
        p
    })
}

/// One layer `name` of tasks, each with the account it runs as and its scope (a user-scope
/// task between system ones splits the layer into scripts), for `ovgw`, unpacked in a new
/// sandbox, and the shell lines that make the account; `None` without the sandbox.
fn scoped_tasks_sandbox(
    name: &str,
    tasks: Vec<(
        ov_compiler::plan::Task,
        ov_compiler::plan::RunAs,
        ov_compiler::plan::Scope,
    )>,
) -> Option<(Sandbox, std::path::PathBuf, String)> {
    account_sandbox("ovgw", || {
        let steps = tasks
            .into_iter()
            .map(|(task, run_as, scope)| {
                let action = Action::Task {
                    task,
                    run_as,
                    ctx_files: None,
                };
                step(action, scope, vec![])
            })
            .collect();
        let mut p = plan("deb", vec![layer(name, steps)]);
        p.deploy.user = Some("ovgw".to_string());
        p
    })
}

/// A layer's record is written before the next layer begins. When it cannot be written (here the
/// layer's own `cmd:` puts a directory where it goes), the run stops with status 8 and names that
/// layer, and the next layer does not run: a later layer never begins before the ledger holds
/// the one before it (so a crash or a reboot it causes cannot lose what that one did).
#[test]
fn a_record_that_cannot_be_written_stops_the_run_before_the_next_layer() {
    use ov_compiler::plan::TaskVerb;
    let Some((sb, top, account)) = system_layers_sandbox(
        "ovpipe",
        vec![
            (
                "pa",
                vec![TaskVerb::Cmd {
                    body: "mkdir \"$OV_LEDGER/.tmp/stage/pa.json\"".into(),
                }],
            ),
            (
                "pb",
                vec![TaskVerb::Write {
                    path: "/etc/ovpipe/b.conf".into(),
                    content: "b\n".into(),
                }],
            ),
        ],
    ) else {
        return;
    };
    let body = format!(
        r#"
{account}L=/var/lib/overthink/installed/ovpipe
bash {top}/run.sh --user ovpipe > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"
ls "$L/layers" > "$T/out/layers"
if [ -e /etc/ovpipe/b.conf ]; then echo written; else echo absent; fi > "$T/out/b-run"
ls -A "$L/.tmp" > "$T/out/tmp"
bash {top}/undo.sh --user ovpipe > "$T/out/undo.log" 2>&1; echo "rc $?" > "$T/out/undo-rc"
if [ -e /etc/ovpipe/b.conf ]; then echo written; else echo absent; fi > "$T/out/b-undo"
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    assert_eq!(sb.read("out/rc"), "rc 8\n", "{log}");
    assert!(
        log.contains("::ov:: layer-fail layer=pa script=ledger status=8"),
        "{log}"
    );
    assert!(
        log.contains(
            "::ov:: end result=fail applied=0 skipped=0 msg=cannot write the ledger record of pa"
        ),
        "{log}"
    );
    // pb never began: nothing of it on the machine or in the ledger.
    assert_eq!(sb.read("out/b-run"), "absent\n", "{log}");
    assert!(!log.contains("layer-start layer=pb"), "{log}");
    assert!(!sb.read("out/layers").contains(".json"), "{log}");
    // (and the run's scratch is gone)
    assert!(!sb.read("out/tmp").contains("stage"), "{log}");
    let undo = sb.read("out/undo.log");
    assert_eq!(sb.read("out/undo-rc"), "rc 0\n", "{undo}");
    assert_eq!(sb.read("out/b-undo"), "absent\n", "{undo}");
}

/// A run stopped (SIGTERM) while a layer's script runs: the script finishes first (run.sh ends
/// after it, leaving no process behind), the layer before is recorded, the stopped one is not,
/// and the status is 143.
#[test]
fn a_run_stopped_while_a_script_runs_waits_for_it_and_keeps_the_layer_before() {
    use ov_compiler::plan::TaskVerb;
    let Some((sb, top, account)) = system_layers_sandbox(
        "ovpipe",
        vec![
            (
                "pa",
                vec![TaskVerb::Write {
                    path: "/etc/ovpipe/a.conf".into(),
                    content: "a\n".into(),
                }],
            ),
            (
                "pb",
                vec![TaskVerb::Cmd {
                    body: "touch /var/tmp/ovpipe-started; sleep 2; touch /var/tmp/ovpipe-finished"
                        .into(),
                }],
            ),
        ],
    ) else {
        return;
    };
    let body = format!(
        r#"
{account}L=/var/lib/overthink/installed/ovpipe
rm -f /var/tmp/ovpipe-started /var/tmp/ovpipe-finished
bash {top}/run.sh --user ovpipe > "$T/out/run.log" 2>&1 &
pid=$!
for i in $(seq 100); do [ -e /var/tmp/ovpipe-started ] && break; sleep 0.05; done
kill -TERM "$pid"
wait "$pid"; echo "rc $?" > "$T/out/rc"
if [ -e /var/tmp/ovpipe-finished ]; then echo finished; else echo running; fi > "$T/out/pb"
ls "$L/layers" > "$T/out/layers"
grep -c '"result": "failed"' "$L/layers/pa.json" > "$T/out/pa-failed"
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    assert_eq!(sb.read("out/rc"), "rc 143\n", "{log}");
    assert_eq!(sb.read("out/pb"), "finished\n", "{log}");
    let layers = sb.read("out/layers");
    assert!(layers.contains("pa.json"), "{layers}\n{log}");
    assert!(!layers.contains("pb.json"), "{layers}\n{log}");
    assert_eq!(sb.read("out/pa-failed"), "0\n", "{log}");
}

/// run.sh and ov's own processes work in the C locale (a UTF-8 one from the caller costs every
/// process its loading), and code that is not ov's gets the caller's back: a root `cmd:`, one run
/// as the target user and a user-scope step see the caller's LANG, LC_TIME and LC_ALL (none when
/// the caller had none), while the `install` of a root `mkdir:` sees LC_ALL=C.
#[test]
fn steps_get_the_callers_locale_and_ovs_own_processes_the_c_locale() {
    use ov_compiler::plan::{RunAs, TaskVerb};
    let dump = |name: &str| {
        task(TaskVerb::Cmd {
            body: format!(
                "printf '%s|%s|%s\\n' \"${{LANG-}}\" \"${{LC_TIME-}}\" \"${{LC_ALL-none}}\" >/tmp/ovloc/{name}"
            ),
        })
    };
    let mut mkdir = task(TaskVerb::Mkdir {
        path: "/opt/ovloc".into(),
    });
    mkdir.mode = Some("0755".into());
    let Some((sb, top, account)) = system_tasks_as_sandbox(
        "ovloc",
        vec![(
            "loc",
            vec![
                (dump("root"), RunAs::Root),
                (mkdir, RunAs::Root),
                (dump("user"), RunAs::TargetUser),
            ],
        )],
    ) else {
        return;
    };
    let body = format!(
        r#"
{account}mkdir -m 1777 /tmp/ovloc
# ov's `install`, seen through a wrapper first in run.sh's PATH
printf '%s\n' '#!/bin/bash' 'printf "%s\n" "${{LC_ALL-none}}" >>/tmp/ovloc/install' 'exec /usr/bin/install "$@"' >/usr/local/sbin/install
chmod 755 /usr/local/sbin/install
for caller in 'LANG=C.UTF-8 LC_TIME=C.UTF-8' 'LANG=C.UTF-8 LC_ALL=C.UTF-8'; do
  rm -rf /opt/ovloc /var/lib/overthink /tmp/ovloc/*
  env -u LC_ALL $caller bash {top}/run.sh --user ovloc > "$T/out/run.log" 2>&1 || cat "$T/out/run.log"
  for f in root user install; do printf '%s: %s\n' "$f" "$(cat /tmp/ovloc/$f)"; done >> "$T/out/seen"
done
rm -f /usr/local/sbin/install
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    assert_eq!(
        sb.read("out/seen"),
        "root: C.UTF-8|C.UTF-8|none\nuser: C.UTF-8|C.UTF-8|none\ninstall: C\n\
         root: C.UTF-8||C.UTF-8\nuser: C.UTF-8||C.UTF-8\ninstall: C\n",
        "{log}"
    );
}

/// A layer split into scripts by a user-scope step (01-system, 02-user, 03-system): its first
/// script's `mkdir:` leaves /opt/ovdrop writable by all, the user step links `app` in it to the
/// canary, and the third script's root `write:` below it must look at the way again and refuse.
/// (Before, each script was a subshell of run.sh, which heard of the first one's mode only when
/// the layer ended: the third trusted the directory as made by root and wrote into the canary.)
#[test]
fn a_directory_a_script_opened_is_not_written_through_by_the_layers_next_script() {
    use ov_compiler::plan::{RunAs, Scope, TaskVerb};
    let mut open = task(TaskVerb::Mkdir {
        path: "/opt/ovdrop".into(),
    });
    open.mode = Some("0777".into());
    let plant = task(TaskVerb::Cmd {
        body: "ln -s /etc/ovcanary /opt/ovdrop/app".into(),
    });
    let write = task(TaskVerb::Write {
        path: "/opt/ovdrop/app/conf".into(),
        content: "root's\n".into(),
    });
    let Some((sb, top, account)) = scoped_tasks_sandbox(
        "split",
        vec![
            (open, RunAs::Root, Scope::System),
            (plant, RunAs::TargetUser, Scope::User),
            (write, RunAs::Root, Scope::System),
        ],
    ) else {
        return;
    };
    assert!(top.join("layers/01-split/03-system.sh").is_file());
    let log = guard_attack(&sb, &top, &account, "rm -rf /opt/ovdrop");
    assert_guard_refused(
        &sb,
        &log,
        "refusing to write /opt/ovdrop/app as root: /opt/ovdrop can be changed by another account (mode 777)",
    );
}

/// An archive's directory that other accounts could write (0777 in the archive) is unpacked
/// closed: a later step's root `write:` below it then writes into a directory of root's, and the
/// account (a `cmd:` as the target user between the two) cannot link anything into it. (Before,
/// tar kept the mode, the guard took the directory for one root had made, and root wrote through
/// the account's link into the canary.)
#[test]
fn an_archives_open_directory_is_unpacked_closed() {
    use ov_compiler::plan::{RunAs, TaskVerb};
    let dl = task(TaskVerb::Download {
        url: "https://example.invalid/tool.tar.gz".into(),
        to: Some("/opt/ovdl".into()),
        extract: None,
        include: vec![],
        strip_components: Some(1),
    });
    let plant = task(TaskVerb::Cmd {
        body: "ln -s /etc/ovcanary /opt/ovdl/share/app || true".into(),
    });
    let write = task(TaskVerb::Write {
        path: "/opt/ovdl/share/app/conf".into(),
        content: "root's\n".into(),
    });
    let Some((sb, top, account)) = system_tasks_as_sandbox(
        "ovgw",
        vec![(
            "dl",
            vec![
                (dl, RunAs::Root),
                (plant, RunAs::TargetUser),
                (write, RunAs::Root),
            ],
        )],
    ) else {
        return;
    };
    let body = format!(
        r#"
{account}rm -rf /etc/ovcanary /opt/ovdl "$STUB_TREE/uv-x86_64" && mkdir -p /etc/ovcanary
mkdir -p "$STUB_TREE/uv-x86_64/share" && chmod 0777 "$STUB_TREE/uv-x86_64/share"
echo tool > "$STUB_TREE/uv-x86_64/tool" && chmod 0666 "$STUB_TREE/uv-x86_64/tool"
bash {top}/run.sh --user ovgw > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"
ls -A /etc/ovcanary > "$T/out/canary"
stat -c '%a %n' /opt/ovdl/share /opt/ovdl/tool > "$T/out/modes" 2>&1
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    assert_eq!(sb.read("out/canary"), "", "{log}");
    assert_eq!(sb.read("out/rc"), "rc 0\n", "{log}");
    assert_eq!(
        sb.read("out/modes"),
        "755 /opt/ovdl/share\n644 /opt/ovdl/tool\n",
        "{log}"
    );
}

/// A link on the way counts by the whole way to its target, not only by the directory it ends
/// in: /opt/ovshared is root's link to /home/ovgw/real, a directory of root's inside the
/// account's home, and the account (which can rename what its home holds) swaps `real` for a
/// link to the canary — which is root's and closed, so a guard that looked only at where the
/// link ends let root write there. The run must refuse, naming the account's home, and write
/// nothing into the canary. Teardown alike: after a deploy into a real /opt/ovshared, the
/// directory moves into the home behind such a link, the account re-points it at a canary
/// holding a `conf`, and undo must not remove that file. (Before, root wrote into the canary,
/// and undo removed the canary's file; both ended 0.)
#[test]
fn a_link_on_the_way_counts_by_the_way_to_its_target() {
    let Some((sb, top, account)) = shared_write_sandbox() else {
        return;
    };
    let body = format!(
        r#"
{account}rm -rf /opt/ovshared /etc/ovcanary /home/ovgw/real /home/ovgw/real.old && mkdir -p /etc/ovcanary
mkdir -m 0755 /home/ovgw/real && ln -s /home/ovgw/real /opt/ovshared
runuser -u ovgw -- sh -c 'mv ~/real ~/real.old && ln -s /etc/ovcanary ~/real'
bash {top}/run.sh --user ovgw > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"
ls -A /etc/ovcanary > "$T/out/canary"
rm -rf /opt/ovshared /home/ovgw/real /home/ovgw/real.old /var/lib/overthink
mkdir /opt/ovshared
bash {top}/run.sh --user ovgw > "$T/out/run2.log" 2>&1; echo "rc $?" > "$T/out/rc2"
mv /opt/ovshared /home/ovgw/real && ln -s /home/ovgw/real /opt/ovshared
echo canary > /etc/ovcanary/conf
runuser -u ovgw -- sh -c 'mv ~/real ~/real.old && ln -s /etc/ovcanary ~/real'
bash {top}/undo.sh --user ovgw > "$T/out/undo.log" 2>&1; echo "rc $?" > "$T/out/undo-rc"
cat /etc/ovcanary/conf > "$T/out/canary2" 2>&1
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    assert_guard_refused(
        &sb,
        &log,
        "refusing to write /opt/ovshared/app as root: /home/ovgw belongs to another account",
    );
    let undo = sb.read("out/undo.log");
    assert_eq!(sb.read("out/rc2"), "rc 0\n", "{}", sb.read("out/run2.log"));
    assert_eq!(sb.read("out/canary2"), "canary\n", "{undo}");
    assert_ne!(sb.read("out/undo-rc"), "rc 0\n", "{undo}");
    assert!(
        undo.contains("/home/ovgw belongs to another account"),
        "{undo}"
    );
}

/// A system task with `user: NAME` makes its missing directories for that account. Root must be
/// done in them before it gives them away — else the account, which may change anything in a
/// directory it owns, acts between two of root's operations. Each case has the account act at
/// the worst moment (a wrapper first in run.sh's PATH runs its move as the account just before
/// root's command): before the `chmod` of a `write:`'s new file (its link in place of root's
/// file: the chmod went through it and opened a secret of root's), before the `tar` that merges
/// a download (its link where the archive's `bin` goes: tar wrote into the canary). (Before, both
/// directories were the account's by then, and both attacks worked.)
#[test]
fn root_is_done_in_a_directory_before_it_gives_it_to_an_account() {
    use ov_compiler::plan::{RunAs, TaskVerb};
    let mut write = task(TaskVerb::Write {
        path: "/opt/ovown/bin/start.sh".into(),
        content: "#!/bin/sh\n".into(),
    });
    write.mode = Some("0755".into());
    let dl = task(TaskVerb::Download {
        url: "https://example.invalid/tool.tar.gz".into(),
        to: Some("/opt/ovtool".into()),
        extract: None,
        include: vec![],
        strip_components: Some(1),
    });
    let cases = [
        (
            write,
            r#"printf '%s\n' '#!/bin/bash' 'for a; do case $a in */.ov-tmp.*) runuser -u ovgw -- sh -c '"'"'ln -s /etc/ovcanary/secret "$1.l" && mv -f "$1.l" "$1"'"'"' x "$a" 2>/dev/null ;; esac; done' 'exec /usr/bin/chmod "$@"' >/usr/local/sbin/chmod"#,
            "600 root\n",
            "755 ovgw\n",
        ),
        (
            dl,
            r#"rm -rf "$STUB_TREE/uv-x86_64" && mkdir -p "$STUB_TREE/uv-x86_64/bin" && echo tool > "$STUB_TREE/uv-x86_64/bin/tool"
printf '%s\n' '#!/bin/bash' 'prev=; for a; do [ "$prev" = -C ] && case " $* " in *" --keep-directory-symlink "*) runuser -u ovgw -- ln -s /etc/ovcanary "$a/bin" 2>/dev/null ;; esac; prev=$a; done' 'exec /usr/bin/tar "$@"' >/usr/local/sbin/tar"#,
            "600 root\n",
            "755 ovgw\n",
        ),
    ];
    for (i, (task, wrapper, canary, made)) in cases.into_iter().enumerate() {
        let Some((sb, top, account)) = system_tasks_as_sandbox(
            "ovgw",
            vec![("own", vec![(task, RunAs::Named("ovgw".into()))])],
        ) else {
            return;
        };
        let body = format!(
            r#"
{account}rm -rf /etc/ovcanary /opt/ovown /opt/ovtool && mkdir -p /etc/ovcanary
echo secret > /etc/ovcanary/secret && chmod 0600 /etc/ovcanary/secret
{wrapper}
chmod 755 /usr/local/sbin/*
bash {top}/run.sh --user ovgw > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"
rm -f /usr/local/sbin/chmod /usr/local/sbin/tar
stat -c '%a %U' /etc/ovcanary/secret > "$T/out/canary"
ls -A /etc/ovcanary >> "$T/out/canary"
stat -c '%a %U' /opt/ovown/bin /opt/ovtool/bin 2>/dev/null | head -1 > "$T/out/made"
echo done > "$T/out/checked"
"#,
            top = top.display()
        );
        let log = run_checked(&sb, &body);
        assert_eq!(sb.read("out/rc"), "rc 0\n", "case {i}: {log}");
        assert_eq!(
            sb.read("out/canary"),
            format!("{canary}secret\n"),
            "case {i}: {log}"
        );
        assert_eq!(sb.read("out/made"), made, "case {i}: {log}");
    }
}

/// Teardown removes the empty directories a layer made only through a way root alone decides:
/// after a deploy that made /opt/ovsvc/data/cache for the account, the account (owner of
/// /opt/ovsvc) replaces `data` with a link to a canary directory holding an empty `cache` of
/// root's. Undo must leave that `cache` alone. (Before, its `rmdir` went through the link.)
#[test]
fn undo_removes_no_directory_through_a_link_the_account_put_on_the_way() {
    use ov_compiler::plan::{RunAs, TaskVerb};
    let mk = task(TaskVerb::Mkdir {
        path: "/opt/ovsvc/data/cache".into(),
    });
    let Some((sb, top, account)) = system_tasks_as_sandbox(
        "ovgw",
        vec![("own", vec![(mk, RunAs::Named("ovgw".into()))])],
    ) else {
        return;
    };
    let body = format!(
        r#"
{account}rm -rf /etc/ovcanary /opt/ovsvc && mkdir -p /etc/ovcanary/cache
bash {top}/run.sh --user ovgw > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"
runuser -u ovgw -- sh -c 'rmdir /opt/ovsvc/data/cache /opt/ovsvc/data && ln -s /etc/ovcanary /opt/ovsvc/data'
bash {top}/undo.sh --user ovgw > "$T/out/undo.log" 2>&1
ls -A /etc/ovcanary > "$T/out/canary"
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    assert_eq!(sb.read("out/rc"), "rc 0\n", "{log}");
    assert_eq!(
        sb.read("out/canary"),
        "cache\n",
        "{}",
        sb.read("out/undo.log")
    );
}

/// A `cmd:` run as a named account carries its text, `env:` values included, to that account's
/// shell on a descriptor, never as an argument: another account reading every process's
/// arguments (/proc/PID/cmdline) while the task runs finds nothing of it. (Before, the task's
/// text was `bash -c`'s argument, and the secret was there for every account to read.)
#[test]
fn a_task_run_as_an_account_shows_no_one_its_text() {
    use ov_compiler::plan::{RunAs, TaskVerb};
    let mut cmd = task(TaskVerb::Cmd {
        body: "sleep 1.5; printf '%s' \"${OV_TEST_SECRET:+the task ran with its env}\" > /var/tmp/ovnamed.ran".into(),
    });
    cmd.env = vec![("OV_TEST_SECRET".into(), "ov-secret-4b1d".into())];
    let Some((sb, top, account)) = system_tasks_as_sandbox(
        "ovgw",
        vec![("named", vec![(cmd, RunAs::Named("ovgw".into()))])],
    ) else {
        return;
    };
    let body = format!(
        r#"
{account}: > "$T/out/seen"; chmod 666 "$T/out/seen"
# (the needle from a file, made in two halves: no process's arguments but the task's may hold it)
printf '%s-%s\n' ov-secret 4b1d > "$T/out/needle"; chmod 644 "$T/out/needle"
runuser -u ovgw -- bash -c 'while [ ! -e "$1.stop" ]; do for f in /proc/[0-9]*/cmdline; do tr "\0" " " < "$f" 2>/dev/null; echo; done | grep -a -F -f "$2" >> "$1"; done' x "$T/out/seen" "$T/out/needle" &
rm -f /var/tmp/ovnamed.ran
bash {top}/run.sh --user ovgw > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"
touch "$T/out/seen.stop"; wait
cat /var/tmp/ovnamed.ran > "$T/out/ran" 2>&1
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    assert_eq!(sb.read("out/rc"), "rc 0\n", "{log}");
    assert_eq!(sb.read("out/ran"), "the task ran with its env", "{log}");
    assert_eq!(sb.read("out/seen"), "", "{log}");
}

/// run.sh run by hand from a root terminal: a process of the account's (a `cmd:` run as the
/// target user from a root script, and a user-scope step) must not reach that terminal. Each
/// pushes a command into the terminal's input (TIOCSTI on /dev/tty); after run.sh the terminal's
/// next line is read, as root's shell would read it. Nothing may be there. (Before, the account's
/// processes shared root's session, and the line came back as root's next command.) Where the
/// kernel refuses TIOCSTI altogether (`dev.tty.legacy_tiocsti = 0`) this passes either way.
#[test]
fn the_accounts_processes_cannot_type_into_roots_terminal() {
    use ov_compiler::plan::{RunAs, Scope, TaskVerb};
    if !have_tool("script", &["--version"]) || !have_tool("perl", &["-v"]) {
        return;
    }
    let inject = |what: &str| {
        task(TaskVerb::Cmd {
            body: format!(
                "perl -e 'open(my $t, \"+<\", \"/dev/tty\") or exit 0; ioctl($t, 0x5412, $_) for split //, \"echo {what}\\n\"' || true"
            ),
        })
    };
    let (a, b) = (inject("typed-by-a"), inject("typed-by-b"));
    let Some((sb, top, account)) = scoped_tasks_sandbox(
        "tty",
        vec![
            (a, RunAs::TargetUser, Scope::System),
            (b, RunAs::TargetUser, Scope::User),
        ],
    ) else {
        return;
    };
    let body = format!(
        r#"
{account}export T
# (script's input: a pipe that stays open and says nothing, so the terminal's next line is only
# what was typed into it)
mkfifo "$T/out/in"; sleep 60 > "$T/out/in" & held=$!
script -qec 'bash {top}/run.sh --user ovgw > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"; IFS= read -r -t 3 line; printf "%s" "$line" > "$T/out/typed"' /dev/null < "$T/out/in" > /dev/null 2>&1
kill "$held"
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    assert_eq!(sb.read("out/rc"), "rc 0\n", "{log}");
    assert_eq!(sb.read("out/typed"), "", "{log}");
}

/// The view in the home holds the records, which name what root's steps did (a `cmd:`'s first
/// line, a download's address): it is the account's alone, as root's ledger is root's — no
/// other account reads it. (Before, the view was written 0755/0644.)
#[test]
fn the_view_is_the_accounts_alone() {
    let Some((sb, top, account)) = shared_write_sandbox() else {
        return;
    };
    let body = format!(
        r#"
{account}rm -rf /opt/ovshared /var/lib/overthink /home/ovgw/.config
bash {top}/run.sh --user ovgw > "$T/out/run.log" 2>&1; echo "rc $?" > "$T/out/rc"
cd /home/ovgw/.config/overthink/installed && find . -printf '%m %p\n' | sort -k2 > "$T/out/modes"
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let log = run_checked(&sb, &body);
    assert_eq!(sb.read("out/rc"), "rc 0\n", "{log}");
    assert_eq!(
        sb.read("out/modes"),
        "700 .\n700 ./deploys\n600 ./deploys/0123456789abcdef.json\n700 ./layers\n600 ./layers/gw.json\n",
        "{log}"
    );
}
