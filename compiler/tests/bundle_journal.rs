//! Stage `bundle` runtime: a run killed outright (SIGKILL: no trap runs) leaves the layers it
//! finished in the journal only; the next run records them and skips them, and `undo.sh`
//! records them before it tears the deploy down. Runs the real bundle in the render sandbox (a
//! private mount namespace with overlays on /etc, /opt, /home, …).

mod render_support;

use ov_compiler::bundle;
use ov_compiler::plan::TaskVerb;
use ov_compiler::plan::{ReverseKind, Scope};
use render_support::*;

/// A layer that touches `/opt/jt/NAME` (its undo removes it) after running `before`.
fn touch_layer(name: &str, before: &str) -> ov_compiler::plan::LayerPlan {
    layer(
        name,
        vec![task_step(
            TaskVerb::Cmd {
                body: format!("{before}touch /opt/jt/{name}"),
            },
            Scope::System,
            vec![op(
                ReverseKind::RmFileSystem,
                Scope::System,
                &[&format!("/opt/jt/{name}")],
            )],
        )],
    )
}

#[test]
fn a_killed_run_is_recorded_by_the_next_run_and_by_undo() {
    if !Sandbox::available() || !have_tool("useradd", &["--help"]) {
        return;
    }
    // `j2` kills run.sh itself (a system script runs in a subshell of run.sh, so `$$` is
    // run.sh) while /opt/jt/arm exists, consuming the flag.
    let mut p = plan(
        "deb",
        vec![
            touch_layer("j1", ""),
            touch_layer(
                "j2",
                "if [ -e /opt/jt/arm ]; then rm /opt/jt/arm; kill -KILL $$; sleep 5; fi\n",
            ),
            touch_layer("j3", ""),
        ],
    );
    p.deploy.user = Some("ovjournal".to_string());
    let b = bundle_plan(&p);
    let sb = Sandbox::new();
    let top = bundle::write_unpacked(&b, &sb.path("unpacked")).expect("unpack");
    sb.open_to_all();
    let body = format!(
        r#"
id ovjournal >/dev/null 2>&1 || useradd -m -d /home/ovjournal -s /bin/bash ovjournal || exit 92
mkdir -p /home/ovjournal && chown ovjournal: /home/ovjournal
L=/var/lib/overthink/installed/ovjournal
mkdir -p /opt/jt && touch /opt/jt/arm
bash {top}/run.sh > "$T/out/run1.log" 2>&1; echo $? > "$T/out/run1.rc"
ls "$L/layers" > "$T/out/ledger1" 2>&1
cat "$L/.tmp/journal" > "$T/out/journal1" 2>&1
bash {top}/run.sh > "$T/out/run2.log" 2>&1; echo $? > "$T/out/run2.rc"
ls "$L/layers" > "$T/out/ledger2" 2>&1
stat -c '%U %a' "$L/layers/j1.json" "$L/layers/j1.undo.sh" > "$T/out/owners2" 2>&1
ls /opt/jt > "$T/out/files2" 2>&1
touch /opt/jt/arm
bash {top}/run.sh --force > "$T/out/run3.log" 2>&1; echo $? > "$T/out/run3.rc"
cat "$L/.tmp/journal" > "$T/out/journal3" 2>&1
bash {top}/undo.sh > "$T/out/undo.log" 2>&1; echo $? > "$T/out/undo.rc"
ls -A "$L" > "$T/out/ledger-after" 2>&1
ls -A /opt/jt > "$T/out/files-after" 2>&1
echo done > "$T/out/checked"
"#,
        top = top.display()
    );
    let (_, out) = sb.run_raw(&body, &[]);
    assert_eq!(sb.read("out/checked"), "done\n", "{out}");

    // 1. Killed in j2: j1 finished, but only the journal says so.
    let log1 = sb.read("out/run1.log");
    assert_eq!(sb.read("out/run1.rc"), "137\n", "{log1}");
    assert!(log1.contains("::ov:: layer-done layer=j1 "), "{log1}");
    assert!(!log1.contains("layer-done layer=j2"), "{log1}");
    assert_eq!(sb.read("out/ledger1"), "", "{log1}");
    assert_eq!(sb.read("out/journal1"), "j1\n");

    // 2. The next run records j1 from the journal and skips it; j2 and j3 run.
    let log2 = sb.read("out/run2.log");
    assert_eq!(sb.read("out/run2.rc"), "0\n", "{log2}");
    assert!(
        log2.contains("::ov:: layer-skip layer=j1 reason=applied"),
        "{log2}"
    );
    assert!(log2.contains("::ov:: layer-done layer=j2 "), "{log2}");
    assert!(log2.contains("::ov:: layer-done layer=j3 "), "{log2}");
    assert_eq!(
        sb.read("out/ledger2"),
        "j1.json\nj1.undo.sh\nj2.json\nj2.undo.sh\nj3.json\nj3.undo.sh\n"
    );
    let owners = sb.read("out/owners2");
    assert_eq!(owners.lines().count(), 2, "{owners}");
    for line in owners.lines() {
        let (owner, mode) = line.split_once(' ').expect("owner and mode");
        let mode = u32::from_str_radix(mode, 8).expect("octal mode");
        assert!(
            owner == "root" && mode & 0o077 == 0,
            "records are root's alone:\n{owners}"
        );
    }
    assert_eq!(sb.read("out/files2"), "j1\nj2\nj3\n");

    // 3. Killed again after re-applying j1 (--force); undo.sh records j1 first, then tears all
    // three down.
    assert_eq!(
        sb.read("out/run3.rc"),
        "137\n",
        "{}",
        sb.read("out/run3.log")
    );
    assert_eq!(sb.read("out/journal3"), "j1\n");
    let undo = sb.read("out/undo.log");
    assert_eq!(sb.read("out/undo.rc"), "0\n", "{undo}");
    assert!(undo.contains("result=ok removed=3 kept=0"), "{undo}");
    assert_eq!(sb.read("out/files-after"), "", "{undo}");
    assert_eq!(sb.read("out/ledger-after"), ".lock\n", "{undo}");
    assert!(!sb.pwned());
}
