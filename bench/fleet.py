"""bench/fleet.py — the fleet section of the benchmark (`bench/run.sh --sections fleet`): one
workload pushed to 1, 10 and 25 targets at once by `ov push --inventory … --forks 10`, by
`ansible-playbook` (forks 10, pipelining, ControlPersist) and by pyinfra (`--parallel 10`), over
the same inventory.

The targets: N private sshd instances on loopback ports (bench/target.sh, each with its own state
directory, host key and login account ovbf01…ovbfNN with passwordless sudo). They share this
machine's filesystem, so the workload is the 50-file workload in each account's own home
(`~/ovbench-fleet/<i>`, as the account — ov's user scope, Ansible and pyinfra without become)
rather than under /opt as root: every target then has its own files and its own ledger
(/var/lib/overthink/installed/<account>), and the end state is checked per account.

The ratio that matters is each contender's N-target time over its own 1-target time: how well it
spreads the work. Every target shares this machine's cores with the contender itself, so the
work the targets do is not free here as it would be on a real fleet: the figures are an upper
bound of what a fleet of separate machines costs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import gen

HERE = Path(__file__).resolve().parent
DIR_OF = "/tmp/ovbf-{:02d}"
USER_OF = "ovbf{:02d}"
SUBDIR = "ovbench-fleet"
N_FILES = 50
SIZES = [1, 10, 25]
FORKS = 10
CONTENDERS = ["ov", "ansible", "pyinfra"]
LABELS = {
    "ov": f"`ov push <deploy> --inventory … --forks {FORKS}` (compile + push)",
    "ansible": f"Ansible (`-f {FORKS}`, pipelining + ControlPersist)",
    "pyinfra": f"pyinfra (`--parallel {FORKS}`)",
}
REPS = {"full": 3, "quick": 1}


def content(i: int) -> str:
    return f"ovbench fleet file {i}\n"


def _yq(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def target_env(i: int) -> dict[str, str]:
    return {**os.environ, "OV_BENCH_TARGET_DIR": DIR_OF.format(i), "OV_BENCH_USER": USER_OF.format(i)}


def start_targets(n: int) -> list[dict[str, str]]:
    """Start targets 1..n (idempotent); their `target.sh env` as dicts."""
    out = []
    for i in range(1, n + 1):
        subprocess.run([str(HERE / "target.sh"), "start"], env=target_env(i), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = subprocess.run([str(HERE / "target.sh"), "env"], env=target_env(i), check=True,
                             capture_output=True, text=True).stdout
        out.append(dict(line.split("=", 1) for line in env.splitlines() if "=" in line))
    return out


def stop_targets(n: int) -> None:
    for i in range(1, n + 1):
        subprocess.run([str(HERE / "target.sh"), "stop"], env=target_env(i),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def home_of(user: str) -> Path:
    import pwd
    return Path(pwd.getpwnam(user).pw_dir)


def reset(targets: list[dict[str, str]]) -> None:
    """Nothing of a previous run survives on any target: the files and ov's ledger."""
    for t in targets:
        shutil.rmtree(home_of(t["OV_BENCH_USER"]) / SUBDIR, ignore_errors=True)
        shutil.rmtree(Path("/var/lib/overthink/installed") / t["OV_BENCH_USER"], ignore_errors=True)
        shutil.rmtree(home_of(t["OV_BENCH_USER"]) / ".config/overthink", ignore_errors=True)


def check(targets: list[dict[str, str]]) -> tuple[int, int]:
    """(targets whose N_FILES files are all right, targets)."""
    good = 0
    for t in targets:
        d = home_of(t["OV_BENCH_USER"]) / SUBDIR
        ok = True
        for i in range(1, N_FILES + 1):
            try:
                ok = ok and (d / str(i)).read_text() == content(i)
            except OSError:
                ok = False
        good += ok
    return good, len(targets)


def generate(dest: Path, targets: list[dict[str, str]]) -> None:
    """The inventory (shared by ov and Ansible), the ov project, the playbook, the pyinfra files."""
    shutil.rmtree(dest, ignore_errors=True)
    hosts = []
    for k, t in enumerate(targets, 1):
        hosts.append(
            f"t{k:02d} ansible_host={t['OV_BENCH_HOST']} ansible_port={t['OV_BENCH_PORT']} "
            f"ansible_user={t['OV_BENCH_USER']} ansible_ssh_private_key_file={t['OV_BENCH_KEY']} "
            f"ansible_ssh_common_args='-o UserKnownHostsFile={t['OV_BENCH_KNOWN_HOSTS']} "
            "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes' "
            f"ov_user={t['OV_BENCH_USER']} ansible_python_interpreter=/usr/bin/python3")
    _write(dest / "inventory.ini", "[fleet]\n" + "\n".join(hosts) + "\n")

    # ov: one layer of the account's own files; the deploy's VM names the distro.
    layer = ["layer:", "  name: fleet-files", "  tasks:", f'    - mkdir: "${{HOME}}/{SUBDIR}"',
             '      user: "${USER}"', '      mode: "0755"']
    for i in range(1, N_FILES + 1):
        layer += [f'    - write: "${{HOME}}/{SUBDIR}/{i}"', '      user: "${USER}"', '      mode: "0644"',
                  f"      content: {_yq(content(i))}"]
    _write(dest / "ov/layers/fleet-files/layer.yml", "\n".join(layer) + "\n")
    gen._write_project_files(dest / "ov", "fleet")
    _write(dest / "ov/deploy.yml", "\n".join([
        "version: 3", "deployments:", "  images:", "    fleet:", "      target: vm",
        "      vm_source: fleet", "      add_layers:", "        - fleet-files", "vm:", "  fleet:",
        "    source:", "      kind: cloud_image", "      base_user: debian", '      distro: "debian:12"',
        "    ssh:", "      key_source: none"]) + "\n")

    # Ansible: the same files, as the login account.
    play = ["# Generated by bench/fleet.py", "- name: ovbench fleet", "  hosts: fleet",
            "  gather_facts: false", "  tasks:", "    - name: dir",
            f"      ansible.builtin.file: {{path: '~/{SUBDIR}', state: directory, mode: '0755'}}"]
    for i in range(1, N_FILES + 1):
        play += [f"    - name: file {i}",
                 f"      ansible.builtin.copy: {{dest: '~/{SUBDIR}/{i}', content: {_yq(content(i))}, "
                 "mode: '0644'}"]
    _write(dest / "ansible/fleet.yml", "\n".join(play) + "\n")
    _write(dest / "ansible/ansible.cfg", "\n".join([
        "[defaults]", f"inventory = {dest / 'inventory.ini'}", "host_key_checking = True",
        "retry_files_enabled = False", "gathering = explicit", f"forks = {FORKS}",
        "[ssh_connection]", "pipelining = True",
        "ssh_args = -o ControlMaster=auto -o ControlPersist=60s -F /dev/null"]) + "\n")

    # pyinfra: the same inventory as Python, the same files as the login account.
    inv = ["# Generated by bench/fleet.py", "fleet = ["]
    for k, t in enumerate(targets, 1):
        inv.append(f"    ('t{k:02d}', {{"
                   f"'ssh_hostname': {t['OV_BENCH_HOST']!r}, 'ssh_port': {int(t['OV_BENCH_PORT'])}, "
                   f"'ssh_user': {t['OV_BENCH_USER']!r}, 'ssh_key': {t['OV_BENCH_KEY']!r}, "
                   f"'ssh_known_hosts_file': {t['OV_BENCH_KNOWN_HOSTS']!r}, "
                   "'ssh_strict_host_key_checking': 'yes', "
                   f"'home': {str(home_of(t['OV_BENCH_USER']))!r}}}),")
    inv.append("]")
    _write(dest / "pyinfra/inventory.py", "\n".join(inv) + "\n")
    dep = ["# Generated by bench/fleet.py", "from io import StringIO", "from pyinfra import host",
           "from pyinfra.operations import files", "",
           f"d = host.data.home + '/{SUBDIR}'",
           "files.directory(name='dir', path=d, mode='755')"]
    for i in range(1, N_FILES + 1):
        dep.append(f"files.put(name='file {i}', src=StringIO({content(i)!r}), dest=d + '/{i}', mode='644')")
    _write(dest / "pyinfra/fleet.py", "\n".join(dep) + "\n")


def busy_seconds() -> float:
    """CPU time this machine's cores have spent busy since boot (all processes: the contender,
    sshd and everything the targets run), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def argv_of(c: str, dest: Path, ov: Path, venv: Path) -> tuple[list[str], Path, dict[str, str]]:
    if c == "ov":
        return ([str(ov), "-C", str(dest / "ov"), "push", "vm:fleet", "--inventory",
                 str(dest / "inventory.ini"), "--forks", str(FORKS)], dest, {})
    if c == "ansible":
        return ([str(venv / "bin/ansible-playbook"), "fleet.yml"], dest / "ansible",
                {"ANSIBLE_CONFIG": str(dest / "ansible/ansible.cfg"), "ANSIBLE_NOCOLOR": "1"})
    if c == "pyinfra":
        return ([str(venv / "bin/pyinfra"), "-y", "--parallel", str(FORKS), "inventory.py", "fleet.py"],
                dest / "pyinfra", {})
    raise ValueError(c)


def run(b, timed, log, median) -> str:
    """Run the section for the Bench `b`; the markdown table it adds to the report."""
    sizes = SIZES
    reps = REPS["quick" if b.quick else "full"]
    available = [c for c in CONTENDERS if c == "ov" or (b.venv / "bin" /
                 ("ansible-playbook" if c == "ansible" else "pyinfra")).exists()]
    targets = start_targets(max(sizes))
    results: dict[tuple[str, int], list[float]] = {}
    busy_of: dict[tuple[str, int], list[float]] = {}
    failures: list[str] = []
    try:
        for n in sizes:
            dest = b.out / "fleet" / f"n{n}"
            generate(dest, targets[:n])
            for r in range(reps):
                for c in available[r % len(available):] + available[:r % len(available)]:
                    reset(targets[:n])
                    argv, cwd, extra = argv_of(c, dest, b.ov, b.venv)
                    logf = b.logs / "fleet" / f"{c}-n{n}-{r + 1}.log"
                    ctl = Path(tempfile.mkdtemp(prefix="ovbf-cp.", dir="/tmp"))
                    env = b.env(ANSIBLE_SSH_CONTROL_PATH_DIR=str(ctl),
                                ANSIBLE_LOCAL_TEMP=str(b.home / "ansible-tmp"), **extra)
                    busy0 = busy_seconds()
                    ms, rc, _ = timed(argv, logf, cwd=cwd, env=env)
                    busy = busy_seconds() - busy0
                    shutil.rmtree(ctl, ignore_errors=True)
                    good, want = check(targets[:n])
                    if rc != 0 or good != want:
                        failures.append(f"{c} at {n} target(s): exit {rc}, {good}/{want} targets right; see {logf}")
                        continue
                    results.setdefault((c, n), []).append(ms)
                    busy_of.setdefault((c, n), []).append(busy)
                    log(f"fleet {c} n={n}: {ms:.0f} ms, the machine busy {busy:.1f} CPU-s")
        reset(targets)
    finally:
        stop_targets(max(sizes))
    b.results["fleet"] = {f"{c}/{n}": v for (c, n), v in results.items()}
    lines = [f"### Fleet: {N_FILES} files per target, 1/10/25 targets, forks {FORKS} "
             f"(median of {reps} run(s))", "",
             "| contender | " + " | ".join(f"{n} target(s)" for n in sizes) + f" | {sizes[-1]} / 1 |",
             "|---|" + "---:|" * (len(sizes) + 1)]
    for c in available:
        meds = [median(results.get((c, n), [])) for n in sizes]
        cells = [f"{m / 1000:.2f} s" if m is not None else "—" for m in meds]
        ratio = f"{meds[-1] / meds[0]:.2f}×" if meds[0] and meds[-1] else "—"
        lines.append(f"| {LABELS[c]} | " + " | ".join(cells) + f" | {ratio} |")
    cores = os.cpu_count() or 1
    floor = [median(busy_of.get(("ov", n), [])) for n in sizes]
    lines.append("| ov: CPU time of the whole machine during the push ÷ its "
                 f"{cores} cores (the least the run could take here) | "
                 + " | ".join(f"{f / cores:.2f} s" if f is not None else "—" for f in floor) + " | |")
    ov_last = median(results.get(("ov", sizes[-1]), []))
    an_last = median(results.get(("ansible", sizes[-1]), []))
    ov_one = median(results.get(("ov", sizes[0]), []))
    if ov_last and ov_one:
        r = ov_last / ov_one
        lines += ["", f"Goal: {sizes[-1]} targets in under 3× the time of one: {r:.2f}× "
                      f"({'met' if r < 3 else 'missed'})."]
    if ov_last and an_last:
        r = an_last / ov_last
        lines += [f"Goal: at least 30× faster than Ansible at {sizes[-1]} targets: {r:.1f}× "
                  f"({'met' if r >= 30 else 'missed'})."]
    for f in failures:
        lines.append(f"\n**failed**: {f}")
        b.failed_sections.append(f"fleet: {f}")
    return "\n".join(lines) + "\n"
