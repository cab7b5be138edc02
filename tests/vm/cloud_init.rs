//! cloud-init outcomes from real first boots: a Debian 12 guest whose seed's `runcmd` fails
//! (status `error`, cloud-init exits 1: `ov deploy add` exits 6 showing cloud-init's errors and
//! applies nothing; with `--ignore-cloud-init-errors` it goes on), and a Debian 13 guest whose
//! seed has a key cloud-init does not know (schema warning, status `degraded`, exit 2 — newer
//! than Debian 12's cloud-init 22.4: `ov` goes on, shows the warning, and the bundle applies —
//! without `--with-services`, so the service layer installs its program but no unit).
//! One boot each; `ov` starts while the guest boots.

use crate::support::{self, text, Guest, Operator};

const WAIT: [&str; 4] = ["--wait-ssh", "900", "--wait-cloud-init", "900"];
const LEDGER: &str = "/home/ovtest/.config/overthink";

fn cloud_init_version(g: &Guest) -> String {
    g.sh("cloud-init --version 2>&1").trim().to_string()
}

fn hello_installed(g: &Guest) -> bool {
    g.ssh("dpkg-query -W -f='${Status}' hello")
        .stdout
        .starts_with(b"install ok installed")
}

#[test]
fn a_failing_runcmd_stops_deploy_add_with_exit_6_and_cloud_init_errors() {
    support::vm_test(|| {
        let image = support::image("bookworm");
        let g = Guest::boot(
            &image,
            "runcmd:\n  - [sh, -c, 'echo ov-vm-tests: this runcmd fails on purpose >&2; exit 3']\n",
        );
        let op = Operator::new(&g, "ovvm");
        let mut args = vec!["deploy", "add", "vm:ovvm", "vm-hello"];
        args.extend(WAIT);
        let out = op.ov(&args);
        g.expect_exit(&out, 6);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("ov said:\n{stderr}");
        assert!(
            stderr.contains("cloud-init on ovtest@127.0.0.1")
                && stderr.contains("finished with errors")
                && stderr.contains("--ignore-cloud-init-errors"),
            "{}",
            text(&out)
        );
        // cloud-init's own error: the user scripts (runcmd) failed.
        assert!(
            stderr.contains("scripts-user") || stderr.contains("scripts_user"),
            "cloud-init's errors are shown: {}",
            text(&out)
        );
        eprintln!("{} (bookworm guest)", cloud_init_version(&g));
        let status = g.ssh("cloud-init status");
        assert_eq!(status.status.code(), Some(1), "{status:?}");
        // Nothing applied, nothing recorded.
        assert!(!hello_installed(&g));
        assert_eq!(
            g.sh(&format!(
                "sudo test -e {LEDGER} && echo present || echo absent"
            )),
            "absent\n"
        );
        assert!(
            !op.state_text().contains("applied_layers"),
            "{}",
            op.state_text()
        );

        // Told to ignore them, the same deploy goes on.
        args.push("--ignore-cloud-init-errors");
        let out = op.ov(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(hello_installed(&g));
        assert_eq!(g.sh("cat /etc/ov-vm.conf"), "written-by=ov\n");
    });
}

#[test]
fn a_degraded_first_boot_on_debian_13_goes_on_and_shows_the_warning() {
    support::vm_test(|| {
        let image = support::image("trixie");
        let g = Guest::boot(&image, "ov_vm_tests_no_such_module: true\n");
        let op = Operator::new(&g, "ovvm13");
        let mut args = vec!["deploy", "add", "vm:ovvm13"];
        args.extend(WAIT);
        let out = op.ov(&args);
        g.expect_exit(&out, 0);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("ov said:\n{stderr}");
        assert!(
            stderr.contains("degraded") && stderr.contains("cloud-config failed schema validation"),
            "cloud-init's warning is shown: {}",
            text(&out)
        );
        eprintln!("{} (trixie guest)", cloud_init_version(&g));
        // cloud-init itself says so: degraded, exit 2.
        let status = g.ssh("cloud-init status --format json");
        assert_eq!(status.status.code(), Some(2), "{status:?}");
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
        assert_eq!(v["extended_status"], "degraded done", "{v:#}");
        // The bundle applied — without `--with-services`, the service layer's files but not its unit.
        assert!(hello_installed(&g));
        assert_eq!(g.sh("cat /etc/ov-vm.conf"), "written-by=ov\n");
        assert_eq!(g.sh("hello"), "Hello, world!\n");
        assert_eq!(g.sh("test -x /usr/local/bin/ov-vm-beat && echo ok"), "ok\n");
        assert_eq!(
        g.sh(
            "test -e /etc/systemd/system/ov-vm-service-beat.service && echo present || echo absent"
        ),
        "absent\n"
    );
        let active = g.ssh("systemctl is-active ov-vm-service-beat.service");
        assert_ne!(active.status.code(), Some(0), "{active:?}");
    });
}
