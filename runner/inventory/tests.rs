//! Unit tests of the inventory readers, the merge, patterns and the SSH mapping.

use std::path::Path;

use serde_json::json;

use super::*;

fn ini(text: &str) -> Inventory {
    Inventory::parse(Path::new("hosts.ini"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn yml(text: &str) -> Inventory {
    Inventory::parse(Path::new("hosts.yml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn names(hosts: &[&Host]) -> Vec<String> {
    hosts.iter().map(|h| h.name.clone()).collect()
}

fn sel(inv: &Inventory, p: &str) -> Vec<String> {
    names(&inv.select(Some(p)).unwrap_or_else(|e| panic!("{p}: {e}")))
}

const NESTED: &str = "\
top1 a=1
[web]
web[01:03]
[db]
db1 ansible_host=10.0.0.9 role=primary
db2
[prod:children]
web
db
[prod:vars]
role=prod
level=1
[web:vars]
level=2
[all:vars]
level=0
role=any
";

#[test]
fn ini_groups_order_and_merge() {
    let inv = ini(NESTED);
    let order: Vec<&str> = inv.hosts().iter().map(|h| h.name.as_str()).collect();
    assert_eq!(order, ["top1", "web01", "web02", "web03", "db1", "db2"]);
    let db1 = inv.host("db1").unwrap();
    // Host vars beat groups; child groups beat parents; all is lowest.
    assert_eq!(db1.vars["role"], json!("primary"));
    assert_eq!(db1.vars["level"], json!(1));
    assert_eq!(inv.host("web02").unwrap().vars["level"], json!(2));
    assert_eq!(inv.host("top1").unwrap().vars["role"], json!("any"));
    assert_eq!(
        db1.groups.iter().cloned().collect::<Vec<_>>(),
        ["db", "prod"]
    );
    assert_eq!(
        inv.host("top1")
            .unwrap()
            .groups
            .iter()
            .cloned()
            .collect::<Vec<_>>(),
        ["ungrouped"]
    );
}

#[test]
fn same_depth_conflicts_go_by_priority_then_name() {
    let inv = ini("[a]\nh\n[b]\nh\n[a:vars]\nx=a\n[b:vars]\nx=b\n");
    assert_eq!(inv.host("h").unwrap().vars["x"], json!("b"));
    let inv = ini("[a]\nh\n[b]\nh\n[a:vars]\nx=a\nansible_group_priority=5\n[b:vars]\nx=b\n");
    assert_eq!(inv.host("h").unwrap().vars["x"], json!("a"));
}

#[test]
fn yaml_reads_the_same_model() {
    let inv = yml(
        "all:\n  vars:\n    level: 0\n  children:\n    prod:\n      vars: {level: 1}\n      children:\n        web:\n          hosts:\n            web[1:2]:\n              ansible_port: 2201\n          vars:\n            level: 2\n        db:\n          hosts: db1\n",
    );
    assert_eq!(
        inv.hosts()
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>(),
        ["web1", "web2", "db1"]
    );
    assert_eq!(inv.host("web1").unwrap().vars["level"], json!(2));
    assert_eq!(inv.host("db1").unwrap().vars["level"], json!(1));
    assert_eq!(inv.host("web2").unwrap().vars["ansible_port"], json!(2201));
}

#[test]
fn patterns_as_ansible() {
    let inv = ini(NESTED);
    assert_eq!(sel(&inv, "web"), ["web01", "web02", "web03"]);
    assert_eq!(sel(&inv, "db:web01"), ["web01", "db1", "db2"]);
    assert_eq!(sel(&inv, "prod:!web"), ["db1", "db2"]);
    assert_eq!(sel(&inv, "prod,&db,!db2"), ["db1"]);
    assert_eq!(sel(&inv, "!prod"), ["top1"]);
    assert_eq!(sel(&inv, "web0[!2]"), ["web01", "web03"]);
    assert_eq!(sel(&inv, "web*"), ["web01", "web02", "web03"]);
    assert_eq!(sel(&inv, "~db\\d"), ["db1", "db2"]);
    assert_eq!(sel(&inv, "web[0]"), ["web01"]);
    assert_eq!(sel(&inv, "web[-1]"), ["web03"]);
    assert_eq!(sel(&inv, "web[1:]"), ["web02", "web03"]);
    assert_eq!(sel(&inv, "all"), sel(&inv, "*"));
    assert_eq!(inv.select(None).unwrap().len(), 6);
}

#[test]
fn patterns_that_name_nothing_are_errors() {
    let inv = ini(NESTED);
    let e = inv.select(Some("web,nosuch")).unwrap_err();
    assert!(
        matches!(e, InventoryError::NoMatch { ref pattern, .. } if pattern == "nosuch"),
        "{e}"
    );
    let e = inv.select(Some("web:&db")).unwrap_err();
    assert!(matches!(e, InventoryError::Empty { .. }), "{e}");
    let e = inv.select(Some("web[7]")).unwrap_err();
    assert!(matches!(e, InventoryError::Pattern { .. }), "{e}");
    let e = inv.select(Some("~(")).unwrap_err();
    assert!(matches!(e, InventoryError::Pattern { .. }), "{e}");
}

#[test]
fn ini_errors_are_located() {
    let cases = [
        (
            "[web]\nh1\n[web:vars]\nbad line\n",
            4,
            1,
            "expected `key=value`",
        ),
        ("[web]\n  h1 x=1 y\n", 2, 10, "expected `key=value`"),
        ("[web]\nh1 x='a\n", 2, 6, "never closed"),
        ("[a:children]\nb\n", 2, 1, "never declared"),
        ("[x:vars]\nk=1\n", 1, 2, "never declared"),
        ("[a:children]\nb\n[b:children]\na\n", 4, 1, "loop"),
        ("[a:hostz]\n", 1, 4, "unknown type"),
        ("[a b]\n", 1, 1, "invalid section"),
        ("[a]\nweb[01:3]\n", 2, 1, "same width"),
    ];
    for (text, line, col, what) in cases {
        let e = Inventory::parse(Path::new("inv.ini"), text).unwrap_err();
        let InventoryError::Located(y) = &e else {
            panic!("{text:?}: not located: {e}")
        };
        assert_eq!((y.line, y.column), (line, col), "{text:?}: {e}");
        assert!(y.message.contains(what), "{text:?}: {e}");
        assert!(
            e.to_string()
                .starts_with(&format!("inv.ini:{line}:{col}: ")),
            "{e}"
        );
    }
}

#[test]
fn yaml_errors_are_located() {
    let cases = [
        ("all:\n  hosts:\n    - web1\n", 3, 5, "must be a mapping"),
        ("all:\n  hostz:\n    web1:\n", 2, 3, "unknown key"),
        (
            "all:\n  hosts:\n    web1: [1]\n",
            3,
            11,
            "must be a mapping",
        ),
        ("[1, 2]\n", 1, 1, "mapping of groups"),
        ("plugin: aws_ec2\n", 1, 1, "plugin"),
        ("all:\n  hosts:\n    web1:\n    web1:\n", 4, 5, "duplicate"),
    ];
    for (text, line, col, what) in cases {
        let e = Inventory::parse(Path::new("inv.yml"), text).unwrap_err();
        let InventoryError::Located(y) = &e else {
            panic!("{text:?}: not located: {e}")
        };
        assert_eq!((y.line, y.column), (line, col), "{text:?}: {e}");
        assert!(y.message.contains(what), "{text:?}: {e}");
    }
}

#[test]
fn ansible_list_json_reads() {
    let json = r#"{
        "_meta": {"hostvars": {"db1": {"ansible_host": "10.0.0.1", "level": 1},
                               "web01": {"ansible_port": 2222}}},
        "all": {"children": ["ungrouped", "prod", "empty"]},
        "prod": {"children": ["web", "db"]},
        "web": {"hosts": ["web01", "web02"]},
        "db": {"hosts": ["db1"]},
        "ungrouped": {"hosts": ["lonely"]}
    }"#;
    let inv = Inventory::from_ansible_json(Path::new("dyn"), json).unwrap();
    assert_eq!(
        inv.hosts()
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>(),
        ["lonely", "web01", "web02", "db1"]
    );
    assert_eq!(inv.host("db1").unwrap().vars["level"], json!(1));
    assert_eq!(sel(&inv, "prod:!db"), ["web01", "web02"]);
    assert!(inv.host("web02").unwrap().groups.contains("prod"));
    let t = inv.host("web01").unwrap().ssh_target().unwrap();
    assert_eq!((t.host.as_str(), t.port), ("web01", Some(2222)));
    for bad in [
        "[]",
        "{\"web\": {\"hosts\": [1]}}",
        "{\"_meta\": {\"hostvars\": []}}",
        "{\"a\": {\"children\": [\"a\"]}}",
    ] {
        let e = Inventory::from_ansible_json(Path::new("dyn"), bad).unwrap_err();
        assert!(
            matches!(e, InventoryError::AnsibleOutput { .. }),
            "{bad}: {e}"
        );
    }
}

#[test]
fn ssh_target_maps_ansible_vars() {
    let inv = ini(
        "[web]\nw1 ansible_host=10.1.2.3 ansible_port=2222 ansible_user=deploy ansible_ssh_private_key_file=~/.ssh/id_fleet ov_user=alice ov_distro=debian:12 ansible_ssh_common_args='-o StrictHostKeyChecking=accept-new -oUserKnownHostsFile=/tmp/kh' ansible_ssh_extra_args='-o \"ProxyJump jump@bastion\"'\nw2\n",
    );
    let t = inv.host("w1").unwrap().ssh_target().unwrap();
    assert_eq!(t.host, "10.1.2.3");
    assert_eq!(t.port, Some(2222));
    assert_eq!(t.user.as_deref(), Some("deploy"));
    assert!(t.identity.unwrap().ends_with(".ssh/id_fleet"));
    assert_eq!(t.ov_user.as_deref(), Some("alice"));
    assert_eq!(t.ov_distro.as_deref(), Some("debian:12"));
    assert_eq!(
        t.ssh_options,
        [
            (
                "StrictHostKeyChecking".to_string(),
                "accept-new".to_string()
            ),
            ("UserKnownHostsFile".into(), "/tmp/kh".into()),
            ("ProxyJump".into(), "jump@bastion".into()),
        ]
    );
    let t2 = inv.host("w2").unwrap().ssh_target().unwrap();
    assert_eq!((t2.host.as_str(), t2.port, t2.user), ("w2", None, None));
}

#[test]
fn ssh_target_refuses_what_does_not_map() {
    let cases = [
        (
            "h ansible_ssh_common_args='-o ProxyCommand=nc %h %p'",
            "ProxyCommand",
        ),
        (
            "h ansible_ssh_extra_args='-o LocalCommand=id -o PermitLocalCommand=yes'",
            "LocalCommand",
        ),
        ("h ansible_ssh_common_args='-F /tmp/cfg'", "not an `-o"),
        (
            "h ansible_ssh_common_args='-o ControlPath=/tmp/x'",
            "ControlPath",
        ),
        ("h ansible_port=70000", "not a port"),
        ("h ansible_host='{{ lookup(\"env\", \"X\") }}'", "Jinja"),
        ("h ansible_connection=docker", "SSH only"),
        ("h ansible_user=-oProxyCommand=x", "not a login"),
        ("h ansible_host=-oProxyCommand=x", "not a host"),
        ("h ansible_user=[1]", "must be text"),
    ];
    for (line, what) in cases {
        let inv = ini(line);
        let e = inv.host("h").unwrap().ssh_target().unwrap_err();
        assert!(matches!(e, InventoryError::Var { .. }), "{line}: {e}");
        assert!(e.to_string().contains(what), "{line}: {e}");
    }
}

#[test]
fn group_vars_beside_a_file_need_ansible() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("hosts.ini");
    std::fs::write(&f, "h1\n").unwrap();
    assert_eq!(Inventory::load(&f).unwrap().hosts().len(), 1);
    std::fs::create_dir(dir.path().join("group_vars")).unwrap();
    assert!(ansible::needs_ansible(&f).unwrap().is_some());
    assert!(ansible::needs_ansible(dir.path()).unwrap().is_some());
    let e = Inventory::load(&dir.path().join("missing.ini")).unwrap_err();
    assert!(matches!(e, InventoryError::Read { .. }), "{e}");
}

#[test]
fn no_extension_reads_yaml_or_ini() {
    let y = Inventory::parse(Path::new("hosts"), "all:\n  hosts:\n    a:\n").unwrap();
    assert_eq!(y.hosts()[0].name, "a");
    let i = Inventory::parse(Path::new("hosts"), "a\nb x=1\n").unwrap();
    assert_eq!(i.hosts().len(), 2);
}

#[test]
fn a_name_for_both_a_host_and_a_group_is_refused() {
    let e = Inventory::parse(Path::new("inv.ini"), "[web]\ndb\n[db]\nd1\n").unwrap_err();
    assert!(
        matches!(e, InventoryError::Ambiguous { ref name, .. } if name == "db"),
        "{e}"
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Text made of the pieces inventories are built from, in any order.
    fn inventory_text() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "[",
            "]",
            ":",
            "children",
            "vars",
            "web",
            "db",
            "all",
            "=",
            "'",
            "\"",
            "#",
            " ",
            "\n",
            "\t",
            "[01:03]",
            "h1",
            "x",
            "1",
            "-",
            "hosts",
            "  ",
            "{",
            "}",
            ",",
            "\\",
            "~",
            ":22",
            "[a:c]",
            "ansible_port",
            "é",
            "\r\n",
            ";",
            "*",
            "!",
            "&",
            "0755",
            "- ",
        ]);
        prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn no_input_panics(text in inventory_text(), pattern in inventory_text()) {
            for name in ["f.ini", "f.yml", "f"] {
                if let Ok(inv) = Inventory::parse(Path::new(name), &text) {
                    let _ = inv.select(Some(&pattern));
                    for h in inv.hosts() {
                        let _ = h.ssh_target();
                    }
                }
            }
            let _ = Inventory::from_ansible_json(Path::new("j"), &text);
        }
    }
}
