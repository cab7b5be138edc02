//! `ov compile --emit cloud-init` on a real first boot: a Debian 13 guest whose NoCloud seed
//! carries the emitted user-data verbatim (as a second part beside the guest's own user and
//! keys). cloud-init writes the bundle and runs it at first boot — no SSH push — and afterwards
//! `ov status` over SSH finds the ledger the run left, matching what the project compiles now.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{self, text, Guest, Operator};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/emit")
}

#[test]
fn emitted_user_data_applies_the_bundle_at_first_boot_and_status_shows_the_ledger() {
    support::vm_test(|| {
        let image = support::image("trixie");
        // The user-data, emitted from the fixture before the guest exists (the port in the project
        // does not reach the bundle).
        let out_dir = tempfile::tempdir().expect("out");
        let ud = out_dir.path().join("user-data");
        let home = tempfile::tempdir().expect("home");
        let out = crate::common::ov_at_home(home.path(), &fixture())
            .args(["compile", "vm:emit", "--emit", "cloud-init"])
            .arg(&ud)
            .args(["--max-user-data", "256K"])
            .output()
            .expect("ov runs");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        let user_data = std::fs::read_to_string(&ud).expect("plain user-data");
        assert!(user_data.starts_with("#cloud-config\n"));

        let mut g = Guest::boot_with_part(&image, &user_data);
        // (`status --wait` exits 2 on a degraded boot: wait for the boot to finish instead.)
        assert!(
            g.wait_for(
                "test -e /var/lib/cloud/instance/boot-finished",
                Duration::from_secs(1200)
            ),
            "cloud-init did not finish\n{}",
            g.serial_tail(60)
        );
        // No module failed (a failing runcmd would be an error of `scripts_user`). Trixie's
        // cloud-init 25.1 finds the guest's own `ssh_genkeytypes: []` too short (a schema warning:
        // `degraded`); nothing of the emitted part may be.
        let status = g.ssh("cloud-init status --format json");
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
        assert_eq!(
            v["errors"],
            serde_json::json!([]),
            "cloud-init reported errors: {v:#}\n{}",
            g.sh("sudo tail -n 40 /var/log/cloud-init-output.log")
        );
        let schema = g.ssh("sudo cloud-init schema --system 2>&1");
        let schema = String::from_utf8_lossy(&schema.stdout);
        assert!(
            !schema.contains("write_files") && !schema.contains("runcmd"),
            "{schema}"
        );
        // The first boot applied it: the layer's file, the ledger, the run's lines in cloud-init's log.
        assert_eq!(g.sh("cat /etc/ov-emit.conf"), "written-by=ov\n");
        let log = g.sh("sudo cat /var/log/cloud-init-output.log");
        assert!(
            log.contains("ov: applying vm-emit.tar.gz for ovtest at first boot")
                && log.contains("::ov:: end result=ok applied=2"),
            "{log}"
        );
        assert_eq!(
            g.sh("sudo sh -c 'cd /var/lib/overthink/installed/ovtest/layers && ls -- *.json'"),
            "emit-env.json\nemit-file.json\n"
        );
        // Nothing staged is left but the digest; the work directory is empty.
        assert_eq!(
        g.sh("sudo ls /var/lib/overthink/cloud-init/ /var/lib/overthink/work/"),
        "/var/lib/overthink/cloud-init/:\nvm-emit.firstboot.sh\nvm-emit.tar.gz.sha256\n\n/var/lib/overthink/work/:\n"
    );

        // `ov status` over SSH: the ledger holds what the project compiles now.
        let op = Operator::with_fixture(&g, "emit", &fixture());
        let out = op.ov(&["status", "vm:emit", "--exit-code", "--wait-ssh", "300"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        for l in ["emit-file", "emit-env"] {
            assert!(
                stdout
                    .lines()
                    .any(|line| line.split_whitespace().collect::<Vec<_>>() == [l, "applied"]),
                "{l} is not shown applied: {stdout}"
            );
        }
    });
}
