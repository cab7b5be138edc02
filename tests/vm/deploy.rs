//! End to end on a real Debian 12 guest: `ov deploy add vm:ovvm --with-services` starts while
//! the guest is still booting (the SSH wait rides out refused and reset connections, the
//! cloud-init wait outlives cloud-init restarting sshd), then applies a package from the guest's
//! apt repository, a file, env and a custom service as a systemd unit; `ov status`; a no-op
//! push; a push cut off by a reboot of the guest (exit 5, resumable) and the push that resumes
//! it; `ov deploy del` (unit stopped, disabled and removed, package removed). One boot.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, json_layers, json_lines, text, Guest, Operator, USER};

const DEPLOY: &str = "vm:ovvm";
/// The deploy's layers in install order (without `vm-reboot`, which only the reboot push adds).
const LAYERS: [&str; 4] = ["vm-file", "vm-env", "vm-hello", "vm-service"];
const UNIT: &str = "ov-vm-service-beat.service";
/// Root's ledger of the guest's `ovtest` account.
const LEDGER: &str = "/var/lib/overthink/installed/ovtest";
/// Waits sized for TCG on two shared cores (a boot to SSH takes about a minute).
const WAIT: [&str; 4] = ["--wait-ssh", "900", "--wait-cloud-init", "900"];

/// A seed command that, once `ov`'s `cloud-init status --wait` runs in the guest, ends the SSH
/// sessions and restarts sshd — as cloud-init does on systems where a restart takes the sessions
/// with it — while cloud-init is still in its final stage. (`ssh_pwauth: false` also restarts
/// sshd during the first boot, but Debian's unit keeps open sessions.) The patterns' `[x]` keep
/// pgrep and pkill from matching this shell itself.
const DROP_SESSIONS: &str = "runcmd:\n  - [sh, -c, 'for i in $(seq 600); do pgrep -f \"cloud-init status --wai[t]\" >/dev/null && break; sleep 1; done; sleep 2; pkill -f \"^sshd: ovtes[t]\"; systemctl restart ssh']\n";

/// A background `ov` run, killed and reaped if the test ends before it does.
struct Running(Option<Child>);

impl Running {
    fn wait(mut self, deadline: Duration) -> std::process::Output {
        support::wait_watched(self.0.take().expect("running"), Some(deadline))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn package_installed(g: &Guest, pkg: &str) -> bool {
    g.ssh(&format!("dpkg-query -W -f='${{Status}}' {pkg}"))
        .stdout
        .starts_with(b"install ok installed")
}

/// `systemctl ARGS` in the guest: (exit status, first line of stdout).
fn systemctl(g: &Guest, args: &str) -> (Option<i32>, String) {
    let out = g.ssh(&format!("systemctl {args}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
    )
}

fn vm_state(op: &Operator) -> Value {
    let doc: Value = serde_saphyr::from_str(&op.state_text()).expect("deploy.yml parses");
    doc["images"][DEPLOY]["vm_state"].clone()
}

#[test]
fn deploy_to_a_booting_guest_with_services_reboot_mid_push_and_del() {
    support::vm_test(|| {
        let image = support::image("bookworm");
        let mut g = Guest::boot(&image, DROP_SESSIONS);
        let op = Operator::new(&g, "ovvm");

        // deploy add, right after QEMU started: nothing listens yet.
        let mut args = vec!["deploy", "add", DEPLOY, "--with-services", "--json"];
        args.extend(WAIT);
        let out = op.ov(&args);
        let boot = g.uptime();
        g.expect_exit(&out, 0);
        let lines = json_lines(&out);
        let waits: Vec<&Value> = lines.iter().filter(|v| v["event"] == "wait-ssh").collect();
        assert!(
            !waits.is_empty(),
            "ov started before the guest's sshd, so it had to wait: {}",
            text(&out)
        );
        let reasons: std::collections::BTreeSet<String> = waits
            .iter()
            .filter_map(|v| v["reason"].as_str().map(str::to_string))
            .collect();
        eprintln!("ssh wait: {} retries; reasons: {reasons:?}", waits.len());
        let connected = lines
            .iter()
            .find(|v| v["event"] == "connected")
            .unwrap_or_else(|| panic!("no connected event: {}", text(&out)));
        assert!(connected["attempts"].as_u64().is_some_and(|n| n > 1));
        let cloud: Vec<String> = lines
            .iter()
            .filter(|v| v["event"] == "cloud-init")
            .filter_map(|v| v["state"].as_str().map(str::to_string))
            .collect();
        eprintln!("cloud-init states seen by ov: {cloud:?}");
        assert_eq!(cloud.last().map(String::as_str), Some("done"), "{cloud:?}");
        assert!(
            cloud.iter().any(|s| s.contains("reconnecting")),
            "the seed dropped ov's session during the cloud-init wait: {cloud:?}"
        );
        assert_eq!(json_layers(&lines, "layer-done"), LAYERS, "{}", text(&out));
        eprintln!("guest up and deployed {boot:.0}s after qemu started");
        // cloud-init finished before the first layer ran, and for good.
        assert_eq!(g.sh("cloud-init status").trim(), "status: done");

        // What the layers did, seen with the test's own ssh.
        assert!(package_installed(&g, "hello"));
        assert_eq!(g.sh("cat /etc/ov-vm.conf"), "written-by=ov\n");
        assert_eq!(
            g.sh("bash -lc 'printf \"%s\\n\" \"$OV_VM_GREETING\"'"),
            "hello from ov\n"
        );
        assert_eq!(
            systemctl(&g, &format!("is-active {UNIT}")),
            (Some(0), "active".into())
        );
        assert_eq!(
            systemctl(&g, &format!("is-enabled {UNIT}")),
            (Some(0), "enabled".into())
        );
        let state = format!("/home/{USER}/ov-vm-beat");
        assert_eq!(g.sh(&format!("cat {state}")), "Hello, world!\n");
        let exec = g.sh(&format!("systemctl show -P ExecStart {UNIT}"));
        assert!(exec.contains("/usr/local/bin/ov-vm-beat"), "{exec}");
        // The custom unit runs as the deploy's user, not root: its settings, its running program
        // and the file the program wrote say so.
        assert_eq!(
            g.sh(&format!(
                "systemctl show -P User {UNIT}; systemctl show -P Group {UNIT}"
            )),
            format!("{USER}\n{}\n", g.sh(&format!("id -g {USER}")).trim())
        );
        assert_eq!(
            g.sh(&format!(
                "ps -o user= -p \"$(systemctl show -P MainPID {UNIT})\""
            ))
            .trim(),
            USER
        );
        assert_eq!(g.sh(&format!("stat -c %U {state}")).trim(), USER);
        assert_eq!(
            g.sh("sudo ls -A /var/lib/overthink/work"),
            "",
            "the upload is removed"
        );
        // The glob is root's to expand: the login user cannot list root's ledger.
        let deploys = g.sh(&format!("sudo sh -c 'cat {LEDGER}/deploys/*.json'"));
        let record: Value = serde_json::from_str(deploys.trim()).expect("one ledger record");
        assert_eq!(record["result"], "ok");
        assert_eq!(record["layers"], serde_json::json!(LAYERS));
        let vs = vm_state(&op);
        assert_eq!(vs["applied_layers"], serde_json::json!(LAYERS));
        assert_eq!(vs["ssh_user"], USER);
        assert_eq!(vs["ssh_port"], g.port);

        // status: every layer recorded and matching what compiles now.
        let out = op.ov(&["status", DEPLOY, "--with-services"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        for l in LAYERS {
            assert!(
                stdout
                    .lines()
                    .any(|line| line.split_whitespace().collect::<Vec<_>>() == [l, "applied"]),
                "{l} does not match: {stdout}"
            );
        }

        // Check mode sees a service that is enabled but stopped (a run would start it), and nothing
        // once it runs again.
        let _ = g.ssh(&format!("sudo systemctl stop {UNIT}"));
        let out = op.ov(&["push", DEPLOY, "--with-services", "--check"]);
        assert_eq!(out.status.code(), Some(10), "{}", text(&out));
        assert!(
            text(&out).contains(&format!(
                "change  service {UNIT} running (inactive; a run starts it)"
            )),
            "{}",
            text(&out)
        );
        let _ = g.ssh(&format!("sudo systemctl start {UNIT}"));
        let out = op.ov(&["push", DEPLOY, "--with-services", "--check"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));

        // A second push changes nothing.
        let mut args = vec!["push", DEPLOY, "--with-services", "--json"];
        args.extend(WAIT);
        let out = op.ov(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let lines = json_lines(&out);
        assert_eq!(json_layers(&lines, "layer-skip"), LAYERS, "{}", text(&out));
        assert!(
            json_layers(&lines, "layer-start").is_empty(),
            "{}",
            text(&out)
        );

        // A push whose extra layer is still running when the guest reboots.
        let mut args = vec!["push", DEPLOY, "vm-reboot", "--with-services"];
        args.extend(WAIT);
        eprintln!("$ ov {} (in the background)", args.join(" "));
        let running = Running(Some(
            op.command(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("ov starts"),
        ));
        assert!(
            g.wait_for("test -e /var/lib/ov-vm/started", Duration::from_secs(600)),
            "the vm-reboot layer never started\n{}",
            g.serial_tail(40)
        );
        let t_reboot = Instant::now();
        // The ssh running this may itself be cut off by the reboot: its status does not matter.
        let _ = g.ssh("sudo systemctl reboot");
        let out = running.wait(Duration::from_secs(600));
        eprintln!(
            "ov noticed the reboot after {:.1}s",
            t_reboot.elapsed().as_secs_f64()
        );
        assert_eq!(out.status.code(), Some(5), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("the interrupted push said:\n{stderr}");
        assert!(
            stderr.contains("was lost during the run") && stderr.contains("push again to resume"),
            "a clear transport error: {}",
            text(&out)
        );
        assert_eq!(
            vm_state(&op)["applied_layers"],
            serde_json::json!(LAYERS),
            "the failed push recorded nothing"
        );

        // The next push waits for the guest to come back, skips what is applied and completes.
        let mut args = vec!["push", DEPLOY, "vm-reboot", "--with-services", "--json"];
        args.extend(WAIT);
        let out = op.ov(&args);
        g.expect_exit(&out, 0);
        let lines = json_lines(&out);
        assert_eq!(json_layers(&lines, "layer-skip"), LAYERS, "{}", text(&out));
        assert_eq!(json_layers(&lines, "layer-done"), ["vm-reboot"]);
        assert_eq!(
            g.sh("cat /var/lib/ov-vm/resumed"),
            "ov-vm: second run, after the reboot\n"
        );
        // Neither the interrupted run's upload nor this one's is left behind (/var/tmp survives
        // reboots).
        assert_eq!(
            g.sh("sudo ls -A /var/lib/overthink/work"),
            "",
            "uploads left behind"
        );
        // The unit came back by itself: it is enabled.
        assert_eq!(
            systemctl(&g, &format!("is-active {UNIT}")),
            (Some(0), "active".into())
        );
        assert_eq!(
            vm_state(&op)["applied_layers"],
            serde_json::json!(["vm-file", "vm-env", "vm-hello", "vm-service", "vm-reboot"])
        );

        // deploy del: the unit stopped, disabled and removed; the package removed; the file gone.
        let mut args = vec!["deploy", "del", DEPLOY];
        args.extend(&WAIT[..2]);
        let out = op.ov(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("5 layer(s) undone"),
            "{}",
            text(&out)
        );
        let (code, state) = systemctl(&g, &format!("is-active {UNIT}"));
        assert_ne!(code, Some(0), "{state}");
        assert_eq!(state, "inactive");
        let (code, state) = systemctl(&g, &format!("is-enabled {UNIT}"));
        assert_ne!(code, Some(0), "still enabled: {state}");
        assert_eq!(
            g.sh(&format!(
                "test -e /etc/systemd/system/{UNIT} && echo present || echo gone"
            )),
            "gone\n"
        );
        assert!(!package_installed(&g, "hello"));
        assert_eq!(
            g.sh("test -e /etc/ov-vm.conf && echo present || echo gone"),
            "gone\n"
        );
        assert_eq!(
            g.sh("bash -lc 'printf \"[%s]\\n\" \"${OV_VM_GREETING-}\"'"),
            "[]\n"
        );
        let out = op.ov(&["status", DEPLOY]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("no layers recorded"),
            "{}",
            text(&out)
        );
        assert_eq!(vm_state(&op)["applied_layers"], serde_json::json!([]));
    });
}
