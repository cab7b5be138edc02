//! Fleets, for real: the end-to-end deploy pushed with `ov push --inventory` to twelve chrooted
//! Debian hosts, each a real sshd in its own network namespace over its own overlay of one
//! debootstrapped root, plus one host that is down — one of the twelve lacks the marker the
//! deploy's gate layer checks, so its layer fails. Every healthy host is applied, the recap and
//! the exit status name the failing and the unreachable host, `--forks` bounds how many hosts
//! are worked on at once (from the trace of host start and end times), a re-push runs nothing,
//! and `ov status` and `ov deploy del` work across the fleet the same way.

use std::collections::BTreeMap;
use std::process::Output;

use serde_json::Value;

use crate::support::e2e::{self, text, DEPLOY, GATE, GATE_MARKER, LAYERS, LEDGER};
use crate::support::fleet::Fleet;

const HOSTS: usize = 12;
/// The host whose gate layer fails (its marker is missing).
const FAILING: &str = "t07";
const FORKS: usize = 4;

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Per host: its `host-end` event.
fn host_ends(lines: &[Value]) -> BTreeMap<String, Value> {
    lines
        .iter()
        .filter(|v| v["event"] == "host-end")
        .map(|v| {
            (
                v["host"].as_str().unwrap_or_default().to_string(),
                v.clone(),
            )
        })
        .collect()
}

/// The most hosts worked on at the same time, from the `host-end` events' start and length.
fn peak_concurrency(ends: &BTreeMap<String, Value>) -> usize {
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for v in ends.values() {
        if let (Some(t), Some(len)) = (v["t_ms"].as_u64(), v["elapsed_ms"].as_u64()) {
            edges.push((t, 1));
            // An end at the same millisecond as another's start is counted first.
            edges.push((t + len, -1));
        }
    }
    edges.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}

#[test]
fn a_push_to_an_inventory_applies_every_healthy_host_and_recaps_the_rest() {
    let Some(fleet) = Fleet::start_default(HOSTS, 1) else {
        return;
    };
    for m in &fleet.members {
        if m.name != FAILING {
            m.host.sh(&format!("touch {GATE_MARKER}"));
        }
    }
    let inventory = fleet.write_inventory("");
    let home = tempfile::Builder::new()
        .prefix("ov-it-home.")
        .tempdir()
        .expect("home");
    let ov = |args: &[&str]| -> Output {
        let out = e2e::ov(home.path())
            .args(args)
            .arg("--inventory")
            .arg(&inventory)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("ov runs");
        eprintln!(
            "$ ov {} --inventory … -> {:?}",
            args.join(" "),
            out.status.code()
        );
        out
    };

    // The first push: every healthy host applied; the failing and the down host in the recap.
    let forks = FORKS.to_string();
    let out = ov(&["push", DEPLOY, "--forks", &forks, "--json"]);
    assert_eq!(out.status.code(), Some(11), "{}", text(&out));
    let lines = json_lines(&out);
    let ends = host_ends(&lines);
    assert_eq!(ends.len(), HOSTS + 1, "one end per host: {}", text(&out));
    for m in &fleet.members {
        let end = &ends[&m.name];
        if m.name == FAILING {
            assert_eq!(end["result"], "failed", "{end}");
            assert_eq!(end["exit"], 7, "{end}");
            assert_eq!(end["layer"], GATE, "{end}");
            // The layers after the gate never ran there.
            let gate = LAYERS.iter().position(|l| *l == GATE).expect("gate");
            for l in &LAYERS[gate + 1..] {
                assert!(
                    !m.host.path(&format!("{LEDGER}/layers/{l}.json")).exists(),
                    "{l}"
                );
            }
        } else {
            assert_eq!(end["result"], "changed", "{}: {end}", m.name);
            assert_eq!(end["applied"], LAYERS.len(), "{end}");
            for l in LAYERS {
                assert!(
                    m.host.path(&format!("{LEDGER}/layers/{l}.json")).exists(),
                    "{} records {l}",
                    m.name
                );
            }
        }
    }
    assert_eq!(ends["down1"]["result"], "unreachable", "{}", text(&out));
    // Every event of a host says which; the recap closes the run.
    assert!(
        lines
            .iter()
            .filter(|v| v["event"] != "recap")
            .all(|v| v["host"].is_string() || v["event"] == "error"),
        "{}",
        text(&out)
    );
    let recap = lines
        .iter()
        .find(|v| v["event"] == "recap")
        .unwrap_or_else(|| panic!("no recap: {}", text(&out)));
    assert_eq!(
        (&recap["changed"], &recap["failed"], &recap["unreachable"]),
        (&Value::from(HOSTS - 1), &Value::from(1), &Value::from(1))
    );
    // Real parallelism, and never more than --forks at once.
    let peak = peak_concurrency(&ends);
    assert!(
        (2..=FORKS).contains(&peak),
        "peak {peak} with --forks {FORKS}"
    );

    // Fixed on the failing host, a re-push (plain output, as in a pipe) runs nothing on the
    // others and finishes the failing one.
    fleet
        .member(FAILING)
        .expect("failing host")
        .host
        .sh(&format!("touch {GATE_MARKER}"));
    let out = ov(&["push", DEPLOY, "-l", "fleet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains(&format!(
            "RECAP push: {HOSTS} host(s): {HOSTS} ok, 1 changed"
        )),
        "{stderr}"
    );
    for m in &fleet.members {
        let line = stderr
            .lines()
            .rfind(|l| l.trim_start().starts_with(&format!("{} ", m.name)))
            .unwrap_or_else(|| panic!("no recap line for {}: {stderr}", m.name))
            .to_string();
        let skipped = LAYERS.iter().position(|l| *l == GATE).expect("gate");
        let want = if m.name == FAILING {
            format!(
                "changed      {} applied, {skipped} already applied",
                LAYERS.len() - skipped
            )
        } else {
            format!("ok           0 applied, {} already applied", LAYERS.len())
        };
        assert!(line.contains(&want), "{line}\n{stderr}");
    }
    assert!(
        !stderr.contains("down1"),
        "-l fleet leaves the down host out: {stderr}"
    );

    // status across the fleet: every host holds what the project compiles now; the down one
    // makes the command fail, and says so.
    let out = ov(&["status", DEPLOY, "--exit-code", "-l", "fleet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = ov(&["status", DEPLOY, "--json"]);
    assert_eq!(out.status.code(), Some(11), "{}", text(&out));
    let ends_status = host_ends(&json_lines(&out));
    assert!(
        fleet
            .members
            .iter()
            .all(|m| ends_status[&m.name]["result"] == "ok"),
        "{}",
        text(&out)
    );
    assert_eq!(ends_status["down1"]["result"], "unreachable");

    // In a terminal (`script` gives it a pty): the live lines are redrawn and cleared, and what
    // stays is one line per finished host, then the recap.
    let inv = inventory.to_str().expect("utf-8 path");
    let out = e2e::in_terminal(
        home.path(),
        &["status", DEPLOY, "-l", "fleet", "--inventory", inv],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = strip_ansi(&String::from_utf8_lossy(&out.stdout));
    assert!(
        shown.contains(&format!("RECAP status: {HOSTS} host(s): {HOSTS} ok")),
        "{shown}"
    );
    for m in &fleet.members {
        assert!(
            shown
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{} ", m.name))
                    && l.contains("up to date (7 layer(s) recorded)")),
            "{}: {shown}",
            m.name
        );
    }

    // deploy del across the fleet, --forks 1 (one host at a time: the trace shows no overlap).
    let out = ov(&[
        "deploy", "del", DEPLOY, "-l", "fleet", "--forks", "1", "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ends_del = host_ends(&json_lines(&out));
    assert_eq!(peak_concurrency(&ends_del), 1);
    for m in &fleet.members {
        assert_eq!(
            ends_del[&m.name]["undone"].as_array().map(Vec::len),
            Some(LAYERS.len())
        );
        assert!(
            !m.host
                .run("dpkg-query -W -f='${Status}' hello")
                .stdout
                .starts_with(b"install ok installed"),
            "{}: hello is gone",
            m.name
        );
    }
}

/// The text without terminal escape sequences (colour, cursor moves, line clears).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}
