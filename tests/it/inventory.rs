//! Inventories, differentially against the real Ansible: for each fixture under
//! `tests/fixtures/inventory/`, `ov`'s reader and `ansible-inventory` agree on the hosts, each
//! host's groups and its merged variables (`--list` and `--host`); for a table of `-l` patterns
//! the hosts `ov` selects are the hosts Ansible's plays select; patterns Ansible cannot match
//! (with mismatches made errors) and inventories Ansible refuses are refused by `ov` too, with
//! located messages (snapshots).
//! Invariant: every expected value comes from Ansible at test time; nothing here is hard-coded
//! but the patterns and the fixtures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ov::inventory::{Inventory, InventoryError};
use serde_json::Value;

use crate::support::ansible;
use crate::support::fleet::Fleet;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inventory")
        .join(name)
}

/// An Ansible program with a quiet, reproducible environment (no user config, no colour).
fn ansible_cmd(program: &Path) -> Command {
    // An empty configuration: nothing of the machine's or the user's Ansible settings applies.
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ov-it-empty-ansible.cfg");
    if !cfg.exists() {
        std::fs::write(&cfg, "[defaults]\n").expect("write ansible.cfg");
    }
    let mut c = Command::new(program);
    c.env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_CONFIG", &cfg)
        .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "True")
        .env("ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED", "True")
        .env("ANSIBLE_LOCALHOST_WARNING", "False")
        .env("PYTHONWARNINGS", "ignore")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Ansible's view of an inventory: host → groups (but `all`), host → merged vars.
struct AnsibleView {
    groups: BTreeMap<String, BTreeSet<String>>,
    vars: BTreeMap<String, BTreeMap<String, Value>>,
}

fn ansible_list(program: &Path, inv: &Path) -> AnsibleView {
    let out = ansible_cmd(program)
        .arg("-i")
        .arg(inv)
        .arg("--list")
        .output()
        .expect("ansible-inventory runs");
    let list: BTreeMap<String, Value> =
        serde_json::from_str(&ok(out, "ansible-inventory --list")).expect("json");
    let hostvars = list["_meta"]["hostvars"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().expect("name").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    // Every host of a group: its own, and (recursively) its children's.
    fn members(
        list: &BTreeMap<String, Value>,
        g: &str,
        strings: &dyn Fn(&Value) -> Vec<String>,
        out: &mut BTreeSet<String>,
    ) {
        let Some(body) = list.get(g) else { return };
        out.extend(strings(&body["hosts"]));
        for c in strings(&body["children"]) {
            members(list, &c, strings, out);
        }
    }
    let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for g in list.keys().filter(|g| *g != "_meta" && *g != "all") {
        let mut hosts = BTreeSet::new();
        members(&list, g, &strings, &mut hosts);
        for h in hosts {
            groups.entry(h).or_default().insert(g.clone());
        }
    }
    let mut all = BTreeSet::new();
    members(&list, "all", &strings, &mut all);
    let vars = all
        .iter()
        .map(|h| {
            let v = hostvars
                .get(h)
                .and_then(Value::as_object)
                .map(|m| m.clone().into_iter().collect())
                .unwrap_or_default();
            (h.clone(), v)
        })
        .collect();
    for h in &all {
        groups.entry(h.clone()).or_default();
    }
    AnsibleView { groups, vars }
}

fn ansible_host_vars(program: &Path, inv: &Path, host: &str) -> BTreeMap<String, Value> {
    let out = ansible_cmd(program)
        .arg("-i")
        .arg(inv)
        .args(["--host", host])
        .output()
        .expect("ansible-inventory runs");
    serde_json::from_str(&ok(out, "ansible-inventory --host")).expect("json")
}

const FIXTURES: [&str; 4] = ["fleet.ini", "fleet.yml", "pending.ini", "types.ini"];

#[test]
fn hosts_groups_and_vars_match_ansible_inventory() {
    let Some(program) = ansible::program("ansible-inventory") else {
        return;
    };
    for name in FIXTURES {
        let path = fixture(name);
        let ours = Inventory::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs = ansible_list(&program, &path);
        let our_hosts: BTreeSet<&str> = ours.hosts().iter().map(|h| h.name.as_str()).collect();
        let their_hosts: BTreeSet<&str> = theirs.groups.keys().map(String::as_str).collect();
        assert_eq!(our_hosts, their_hosts, "{name}: hosts");
        assert!(our_hosts.len() >= 3, "{name}: a fixture worth comparing");
        for h in ours.hosts() {
            assert_eq!(
                h.groups, theirs.groups[&h.name],
                "{name}: groups of {}",
                h.name
            );
            assert_eq!(
                h.vars, theirs.vars[&h.name],
                "{name}: vars of {} (--list)",
                h.name
            );
        }
        // Ansible's order of `all` (deterministic for these fixtures: within each generation of
        // groups at most one has children, so Ansible's set order does not show).
        let listed = ok(
            ansible_cmd(&program.with_file_name("ansible"))
                .arg("all")
                .arg("-i")
                .arg(&path)
                .arg("--list-hosts")
                .output()
                .expect("ansible runs"),
            "ansible --list-hosts",
        );
        let their_order: Vec<&str> = listed.lines().skip(1).map(str::trim).collect();
        let our_order: Vec<&str> = ours.hosts().iter().map(|h| h.name.as_str()).collect();
        assert_eq!(our_order, their_order, "{name}: order");
        // `--host` for the hosts where the fixtures' conflicts meet.
        for host in ["web03", "db-b", "db-c", "l2", "db1"] {
            if let Some(h) = ours.host(host) {
                assert_eq!(
                    h.vars,
                    ansible_host_vars(&program, &path, host),
                    "{name}: vars of {host} (--host)"
                );
            }
        }
    }
}

/// Patterns every part of which Ansible matches on both fleet fixtures (the same names in INI
/// and YAML); a few leave no host (then ov refuses, where Ansible plays nothing).
const PATTERNS: &[&str] = &[
    "all",
    "*",
    "web",
    "prod",
    "web:db",
    "web,db",
    "eu:us",
    "prod:!web",
    "prod:&cache",
    "web:&cache",
    "!web",
    "all:!ungrouped",
    "ungrouped",
    "web*",
    "db-?",
    "*.example.com",
    "~db-[ab]",
    "~us[0-9]",
    "web[0]",
    "web[-1]",
    "web[1:]",
    "web[1:2]",
    "us[1]",
    "web01,db-a",
    "web01:bastion",
    "prod:!eu:&cache",
    "prod:!web:&cache",
    "cache,!web03,db",
    "eu:&mixed:!db",
    "web0[!2]",
    "db-[ac]",
    "mixed,us,&prod,!us3.example.com",
    "web:&eu:!web-canary",
];

#[test]
fn patterns_select_what_ansible_selects() {
    let Some(program) = ansible::program("ansible-playbook") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // One play per pattern: one Ansible run lists the hosts of every pattern.
    let plays: Vec<Value> = PATTERNS
        .iter()
        .map(|p| serde_json::json!({"hosts": p, "gather_facts": false, "tasks": []}))
        .collect();
    let book = dir.path().join("patterns.yml");
    std::fs::write(&book, serde_json::to_string(&plays).expect("json")).expect("write playbook");
    for name in ["fleet.ini", "fleet.yml"] {
        let path = fixture(name);
        let out = ansible_cmd(&program)
            .arg("-i")
            .arg(&path)
            .arg(&book)
            .arg("--list-hosts")
            .output()
            .expect("ansible-playbook runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !stderr.contains("Could not match"),
            "{name}: every table pattern must match in Ansible: {stderr}"
        );
        let listed = parse_list_hosts(&ok(out, "ansible-playbook --list-hosts"));
        assert_eq!(listed.len(), PATTERNS.len(), "{name}: one listing per play");
        let inv = Inventory::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut empty = 0;
        for (pattern, theirs) in PATTERNS.iter().zip(listed) {
            if theirs.is_empty() {
                // Ansible plays nothing; ov refuses a push to nothing.
                let e = inv.select(Some(pattern)).err();
                assert!(
                    matches!(e, Some(InventoryError::Empty { .. })),
                    "{name}: `{pattern}` selects nothing in Ansible, ov: {e:?}"
                );
                empty += 1;
                continue;
            }
            let ours: BTreeSet<String> = inv
                .select(Some(pattern))
                .unwrap_or_else(|e| panic!("{name}: `{pattern}`: {e}"))
                .iter()
                .map(|h| h.name.clone())
                .collect();
            assert_eq!(ours, theirs, "{name}: `{pattern}`");
        }
        assert!(
            empty <= 2,
            "{name}: the table is mostly patterns that select hosts"
        );
    }
}

/// The host lists of `ansible-playbook --list-hosts`, play by play.
fn parse_list_hosts(text: &str) -> Vec<BTreeSet<String>> {
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    let mut in_hosts = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("hosts (") {
            out.push(BTreeSet::new());
            in_hosts = true;
        } else if t.is_empty() || t.starts_with("play #") || t.starts_with("pattern:") {
            in_hosts = false;
        } else if in_hosts {
            out.last_mut().expect("a play").insert(t.to_string());
        }
    }
    out
}

/// Patterns Ansible refuses (with unmatched patterns made errors) or that leave no host.
const BAD_PATTERNS: &[&str] = &[
    "nosuch",
    "web:nosuch",
    "web:&nosuch",
    "web:!nosuch",
    "nosuch*",
    "web:&db",
    "web[99]",
];

#[test]
fn patterns_ansible_refuses_are_refused() {
    let Some(program) = ansible::program("ansible") else {
        return;
    };
    let path = fixture("fleet.ini");
    let inv = Inventory::load(&path).expect("fixture");
    for pattern in BAD_PATTERNS {
        let out = ansible_cmd(&program)
            .arg("all")
            .arg("-i")
            .arg(&path)
            .args(["--limit", pattern, "--list-hosts"])
            .env("ANSIBLE_HOST_PATTERN_MISMATCH", "error")
            .output()
            .expect("ansible runs");
        assert!(
            !out.status.success(),
            "Ansible accepts `{pattern}`: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let e = inv
            .select(Some(pattern))
            .err()
            .unwrap_or_else(|| panic!("ov accepts `{pattern}`"));
        assert!(
            matches!(
                e,
                InventoryError::NoMatch { .. }
                    | InventoryError::Empty { .. }
                    | InventoryError::Pattern { .. }
            ),
            "`{pattern}`: {e}"
        );
    }
    // An @file of patterns, as Ansible's `--limit @FILE`.
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("retry");
    std::fs::write(&list, "web01\ndb-a\n\n!db-a\n").expect("write");
    let ours: Vec<String> = inv
        .select(Some(&format!("@{}", list.display())))
        .expect("limit file")
        .iter()
        .map(|h| h.name.clone())
        .collect();
    let theirs = ok(
        ansible_cmd(&program)
            .arg("all")
            .arg("-i")
            .arg(&path)
            .arg("--limit")
            .arg(format!("@{}", list.display()))
            .arg("--list-hosts")
            .output()
            .expect("ansible runs"),
        "ansible --limit @file",
    );
    let theirs: BTreeSet<String> = theirs
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(ours.into_iter().collect::<BTreeSet<_>>(), theirs);
}

/// Broken inventories: (file, whether Ansible refuses it too — ov is stricter where Ansible
/// only warns).
const BAD_FILES: &[(&str, bool)] = &[
    ("vars-line.ini", true),
    ("host-var.ini", true),
    ("undeclared-child.ini", true),
    ("group-loop.ini", true),
    ("range-width.ini", true),
    ("open-quote.ini", true),
    ("hosts-list.yml", true),
    ("host-vars-scalar.yml", true),
    ("duplicate-host.yml", false),
];

#[test]
fn broken_inventories_are_refused_with_their_position() {
    let program = ansible::program("ansible-inventory");
    for (name, ansible_refuses) in BAD_FILES {
        let path = fixture(&format!("bad/{name}"));
        if let (Some(program), true) = (&program, ansible_refuses) {
            let out = ansible_cmd(program)
                .arg("-i")
                .arg(&path)
                .arg("--list")
                .output()
                .expect("ansible-inventory runs");
            assert!(!out.status.success(), "Ansible accepts {name}");
        }
        let e = Inventory::load(&path)
            .err()
            .unwrap_or_else(|| panic!("ov accepts {name}"));
        assert!(matches!(e, InventoryError::Located(_)), "{name}: {e}");
        let root = format!("{}/", env!("CARGO_MANIFEST_DIR"));
        insta::assert_snapshot!(
            format!("bad-{}", name.replace('.', "-")),
            e.to_string().replace(&root, "")
        );
    }
}

/// A source only Ansible reads (a directory: a static file plus `group_vars/`, and an
/// executable script) goes through `ansible-inventory`; the result agrees with Ansible, and
/// without Ansible the error says what to do.
#[test]
fn other_sources_go_through_ansible_inventory() {
    let Some(program) = ansible::program("ansible-inventory") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let inv_dir = dir.path().join("inventory");
    std::fs::create_dir_all(inv_dir.join("group_vars")).expect("mkdir");
    std::fs::write(
        inv_dir.join("hosts.ini"),
        "[web]\nw[1:3]\n[db]\nd1 level=host\n",
    )
    .expect("write");
    std::fs::write(
        inv_dir.join("group_vars/web.yml"),
        "level: web\nansible_port: 2200\n",
    )
    .expect("write");
    std::fs::write(inv_dir.join("group_vars/all.yml"), "level: all\n").expect("write");
    let ours = Inventory::load_using(&inv_dir, Some(&program)).unwrap_or_else(|e| panic!("{e}"));
    let theirs = ansible_list(&program, &inv_dir);
    assert_eq!(ours.hosts().len(), 4);
    for h in ours.hosts() {
        assert_eq!(h.vars, theirs.vars[&h.name], "vars of {}", h.name);
        assert_eq!(h.groups, theirs.groups[&h.name], "groups of {}", h.name);
    }
    assert_eq!(
        ours.host("w2")
            .expect("w2")
            .ssh_target()
            .expect("target")
            .port,
        Some(2200)
    );
    // A static file with group_vars/ beside it is read by Ansible too (its vars count).
    let beside = Inventory::load_using(&inv_dir.join("hosts.ini"), Some(&program)).expect("load");
    assert_eq!(beside.host("w1").expect("w1").vars["level"], "web");

    use std::os::unix::fs::PermissionsExt;
    let script = dir.path().join("dynamic.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nif [ \"$1\" = --list ]; then echo '{\"app\": {\"hosts\": [\"a1\", \"a2\"], \"vars\": {\"tier\": \"app\"}}, \"_meta\": {\"hostvars\": {\"a1\": {\"ansible_host\": \"10.9.0.1\"}}}}'; else echo '{}'; fi\n",
    )
    .expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let dynamic = Inventory::load_using(&script, Some(&program)).unwrap_or_else(|e| panic!("{e}"));
    let theirs = ansible_list(&program, &script);
    for h in dynamic.hosts() {
        assert_eq!(h.vars, theirs.vars[&h.name], "vars of {}", h.name);
    }
    assert_eq!(
        dynamic
            .host("a1")
            .expect("a1")
            .ssh_target()
            .expect("target")
            .host,
        "10.9.0.1"
    );

    // A source Ansible cannot parse is an error, not an empty fleet.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).expect("mkdir");
    std::fs::write(
        broken.join("hosts.ini"),
        "[web]\nh1\n[web:vars]\nno value here\n",
    )
    .expect("write");
    let e = Inventory::load_using(&broken, Some(&program)).expect_err("broken source");
    assert!(matches!(e, InventoryError::AnsibleFailed { .. }), "{e}");

    let missing =
        Inventory::load_using(&inv_dir, Some(Path::new("/nonexistent/ansible-inventory")));
    assert!(missing.is_err());
}

/// The fleet harness: 12 real hosts and a down one start (timed), the inventory it writes reads
/// back through `ov`'s own reader, and plain `ssh` with exactly those values logs into every
/// running host (whose host name is its inventory name) and fails fast on the down one; then
/// everything is torn down.
#[test]
fn fleet_harness_starts_twelve_hosts_reachable_by_the_inventory() {
    let Some(fleet) = Fleet::start_default(12, 1) else {
        return;
    };
    assert!(
        fleet.started_in < std::time::Duration::from_secs(120),
        "12 hosts took {:?}",
        fleet.started_in
    );
    let path = fleet.write_inventory("[odd]\nt01\nt03\n");
    let inv = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(inv.select(Some("fleet")).expect("fleet").len(), 12);
    assert_eq!(inv.select(Some("odd")).expect("odd").len(), 2);
    let targets: Vec<_> = inv
        .hosts()
        .iter()
        .map(|h| h.ssh_target().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let t0 = std::time::Instant::now();
    let results: Vec<(String, Output)> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                s.spawn(move || {
                    let mut c = Command::new("ssh");
                    c.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]);
                    for (k, v) in &t.ssh_options {
                        c.arg("-o").arg(format!("{k}={v}"));
                    }
                    if let Some(p) = t.port {
                        c.arg("-p").arg(p.to_string());
                    }
                    if let Some(i) = &t.identity {
                        c.arg("-i").arg(i);
                    }
                    if let Some(u) = &t.user {
                        c.arg("-l").arg(u);
                    }
                    c.arg(&t.host).args(["--", "hostname"]);
                    (t.name.clone(), c.output().expect("ssh runs"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ssh thread"))
            .collect()
    });
    eprintln!(
        "fleet: 13 ssh logins (one down) in {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    for (name, out) in &results {
        if name.starts_with("down") {
            assert!(!out.status.success(), "{name} is down");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("refused"),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        }
        let m = fleet.member(name).expect("a member");
        assert!(
            out.status.success(),
            "ssh to {name} failed: {}\nsshd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            m.host.log_text()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), name);
    }
    assert_eq!(results.len(), 13);
    // Every host key landed in the one known_hosts file.
    let known = std::fs::read_to_string(fleet.known_hosts()).expect("known_hosts");
    assert_eq!(known.lines().count(), 12, "{known}");
    drop(fleet);
}
