"""bench/gen.py — writes the same push workload for every contender (ov project, Ansible playbooks,
pyinfra deploys, the floor's one shell script) and checks the end state on the target.

Workloads (every path under /opt/ovbench, everything as root through sudo):
  files   one directory and N small files /opt/ovbench/<i> ("ovbench file <i>\n", mode 0644)
  layers  N layers; layer i = mkdir /opt/ovbench/layers/<iiii>, write .../conf
          ("ovbench layer <iiii>\n", mode 0644) and a cmd writing .../cmd.out ("ovbench cmd <iiii>\n")
The target is this machine (a private sshd on loopback), so the end state is checked on the local
filesystem: checking it adds no SSH session to the counts.

The packages workloads (5 and 20 layers of 1-3 real Debian packages, `PKG_LAYERS`) go to
bench/pkgtarget.sh's disposable Debian 12 host instead; their end state is read inside that host
(dpkg), also without SSH.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = "/opt/ovbench"
LAYER_ROOT = f"{ROOT}/layers"


@dataclass(frozen=True)
class Workload:
    """One push workload: `kind` is "files", "layers" or "packages", `n` how many files or layers."""

    key: str
    kind: str
    n: int

    @property
    def vm(self) -> str:
        """The `vm:` entity (and deploy node) of the ov project that carries this workload."""
        return f"ovb-{self.key}"

    def describe(self) -> str:
        if self.kind == "files":
            return f"{self.n} files as root"
        if self.kind == "packages":
            return f"{self.n} layers x 1-3 Debian packages ({len(pkg_all(self))} packages)"
        return f"{self.n} layer(s) x (mkdir, write, cmd)"


def file_content(i: int) -> str:
    return f"ovbench file {i}\n"


def layer_name(i: int) -> str:
    return f"bench-{i:04d}"


def layer_dir(i: int) -> str:
    return f"{LAYER_ROOT}/{i:04d}"


def layer_conf(i: int) -> str:
    return f"ovbench layer {i:04d}\n"


def layer_cmd_out(i: int) -> str:
    return f"ovbench cmd {i:04d}\n"


def layer_cmd(i: int) -> str:
    # The same shell for every contender's "cmd" (ov `cmd:`, Ansible `shell`, pyinfra `server.shell`).
    return f"printf '%s\\n' 'ovbench cmd {i:04d}' > {layer_dir(i)}/cmd.out"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _yq(s: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    import json

    return json.dumps(s)


# ----------------------------------------------------------------------------------------- floor
def floor_script(w: Workload) -> str:
    """One bash script doing the work, idempotently (a re-run compares and writes nothing)."""
    out = [
        "# The floor: fed to `ssh target 'sudo -n bash -s'` - the least a push can do.",
        "set -euo pipefail",
        "w() { # path content: write atomically unless already equal",
        '  [ -f "$1" ] && [ "$(cat "$1")" = "$2" ] && return 0',
        "  printf '%s\\n' \"$2\" > \"$1.tmp\" && chmod 644 \"$1.tmp\" && mv \"$1.tmp\" \"$1\"",
        "}",
    ]
    if w.kind == "files":
        out.append(f"install -d -m 755 {ROOT}")
        for i in range(1, w.n + 1):
            out.append(f"w {ROOT}/{i} {shlex.quote(file_content(i).rstrip())}")
    else:
        for i in range(1, w.n + 1):
            d = layer_dir(i)
            out.append(f"install -d -m 755 {d}")
            out.append(f"w {d}/conf {shlex.quote(layer_conf(i).rstrip())}")
            out.append(layer_cmd(i))
    return "\n".join(out) + "\n"


# -------------------------------------------------------------------------------------------- ov
def ov_layer_files(n: int) -> str:
    out = ["layer:", "  name: bench-files", "  tasks:", f"    - mkdir: {ROOT}", "      user: root",
           '      mode: "0755"']
    for i in range(1, n + 1):
        out += [f"    - write: {ROOT}/{i}", "      user: root", '      mode: "0644"',
                f"      content: {_yq(file_content(i))}"]
    return "\n".join(out) + "\n"


def ov_layer(i: int) -> str:
    return "\n".join([
        "layer:",
        f"  name: {layer_name(i)}",
        "  tasks:",
        f"    - mkdir: {layer_dir(i)}",
        "      user: root",
        '      mode: "0755"',
        f"    - write: {layer_dir(i)}/conf",
        "      user: root",
        '      mode: "0644"',
        f"      content: {_yq(layer_conf(i))}",
        f"    - cmd: {_yq(layer_cmd(i))}",
        "      user: root",
    ]) + "\n"


def ov_layers_of(w: Workload) -> list[str]:
    if w.kind == "files":
        return ["bench-files"]
    return [layer_name(i) for i in range(1, w.n + 1)]


def _write_project_files(dest: Path, what: str) -> None:
    """overthink.yml (discovering `layers/`, including build.yml and deploy.yml) and a build.yml
    with one distro, debian, using the deb format."""
    _write(dest / "overthink.yml", "\n".join([
        f"# Generated by bench/gen.py: the ov side of the {what} benchmark.",
        "version: 2",
        "includes:",
        "  - build.yml",
        "  - deploy.yml",
        "discover:",
        "  layers:",
        "    - path: layers",
        "      recursive: true",
    ]) + "\n")
    _write(dest / "build.yml", "distros:\n  debian:\n    formats:\n      deb: {}\n")


def write_ov_project(dest: Path, w: Workload, target: dict[str, str]) -> None:
    """An overthink project holding just this workload's layers (a project with more layers
    costs ov more: it loads every layer it discovers), one `vm:` entity and one deploy node
    (which pre-sets `allow_root_tasks`, since every task runs as root)."""
    _write_project_files(dest, "push")
    if w.kind == "files":
        _write(dest / "layers/bench-files/layer.yml", ov_layer_files(w.n))
    else:
        for i in range(1, w.n + 1):
            _write(dest / f"layers/{layer_name(i)}/layer.yml", ov_layer(i))
    dep = ["version: 3", "deployments:", "  images:",
           f"    {w.vm}:", "      target: vm", f"      vm_source: {w.vm}", "      add_layers:"]
    dep += [f"        - {name}" for name in ov_layers_of(w)]
    dep += ["      install_opts:", "        allow_root_tasks: true", "vm:",
            f"  {w.vm}:", "    source:", "      kind: cloud_image", "      base_user: debian",
            '      distro: "debian:12"', "    ssh:", f"      user: {target['OV_BENCH_USER']}",
            f"      port: {target['OV_BENCH_PORT']}", "      key_source: none"]
    _write(dest / "deploy.yml", "\n".join(dep) + "\n")


# --------------------------------------------------------------------------------------- Ansible
ANSIBLE_CONFIGS = {
    # pipelining on, one ControlMaster kept for the play (what a tuned setup uses)
    "ansible-fast": ("True", "-o ControlMaster=auto -o ControlPersist=60s"),
    # ansible-core's defaults: no pipelining; its default ssh_args
    "ansible-default": ("False", "-C -o ControlMaster=auto -o ControlPersist=60s"),
}


def _ansible_inventory(dest: Path, target: dict[str, str]) -> None:
    _write(dest / "inventory.ini", "\n".join([
        "[bench]",
        f"target ansible_host={target['OV_BENCH_HOST']} ansible_port={target['OV_BENCH_PORT']} "
        f"ansible_user={target['OV_BENCH_USER']} ansible_ssh_private_key_file={target['OV_BENCH_KEY']} "
        "ansible_python_interpreter=/usr/bin/python3",
    ]) + "\n")


def _ansible_cfg(path: Path, name: str, pipelining: str, ssh_args: str, target: dict[str, str]) -> None:
    _write(path, "\n".join([
        f"# {name}: pipelining={pipelining}",
        "[defaults]",
        "inventory = inventory.ini",
        "host_key_checking = True",
        "retry_files_enabled = False",
        "gathering = explicit",
        "interpreter_python = /usr/bin/python3",
        "[ssh_connection]",
        f"pipelining = {pipelining}",
        f"ssh_args = {ssh_args} -F /dev/null -o UserKnownHostsFile={target['OV_BENCH_KNOWN_HOSTS']}"
        " -o IdentitiesOnly=yes",
    ]) + "\n")


def write_ansible(dest: Path, workloads: list[Workload], target: dict[str, str]) -> None:
    _ansible_inventory(dest, target)
    for name, (pipelining, ssh_args) in ANSIBLE_CONFIGS.items():
        _ansible_cfg(dest / f"{name}.cfg", name, pipelining, ssh_args, target)
    for w in workloads:
        out = ["# Generated by bench/gen.py", f"- name: ovbench {w.key}", "  hosts: bench",
               "  gather_facts: false", "  become: true", "  tasks:"]
        if w.kind == "files":
            out += ["    - name: dir",
                    f"      ansible.builtin.file: {{path: {ROOT}, state: directory, mode: '0755'}}"]
            for i in range(1, w.n + 1):
                out += [f"    - name: file {i}",
                        f"      ansible.builtin.copy: {{dest: {ROOT}/{i}, content: {_yq(file_content(i))}, "
                        "mode: '0644'}"]
        else:
            for i in range(1, w.n + 1):
                d = layer_dir(i)
                out += [f"    - name: mkdir {i}",
                        f"      ansible.builtin.file: {{path: {d}, state: directory, mode: '0755'}}",
                        f"    - name: write {i}",
                        f"      ansible.builtin.copy: {{dest: {d}/conf, content: {_yq(layer_conf(i))}, "
                        "mode: '0644'}",
                        f"    - name: cmd {i}",
                        f"      ansible.builtin.shell: {_yq(layer_cmd(i))}"]
        _write(dest / f"{w.key}.yml", "\n".join(out) + "\n")


# --------------------------------------------------------------------------------------- pyinfra
def _pyinfra_inventory(dest: Path, target: dict[str, str]) -> None:
    _write(dest / "inventory.py", "\n".join([
        "# Generated by bench/gen.py (pyinfra's default connector: paramiko)",
        "hosts = [",
        f"    ({target['OV_BENCH_HOST']!r}, {{",
        f"        'ssh_port': {int(target['OV_BENCH_PORT'])},",
        f"        'ssh_user': {target['OV_BENCH_USER']!r},",
        f"        'ssh_key': {target['OV_BENCH_KEY']!r},",
        f"        'ssh_known_hosts_file': {target['OV_BENCH_KNOWN_HOSTS']!r},",
        "        'ssh_strict_host_key_checking': 'yes',",
        "    }),",
        "]",
    ]) + "\n")


def write_pyinfra(dest: Path, workloads: list[Workload], target: dict[str, str]) -> None:
    _pyinfra_inventory(dest, target)
    for w in workloads:
        out = ["# Generated by bench/gen.py", "from io import StringIO",
               "from pyinfra.operations import files, server", ""]
        if w.kind == "files":
            out.append(f"files.directory(name='dir', path={ROOT!r}, mode='755', _sudo=True)")
            for i in range(1, w.n + 1):
                out.append(f"files.put(name='file {i}', src=StringIO({file_content(i)!r}), "
                           f"dest='{ROOT}/{i}', mode='644', _sudo=True)")
        else:
            for i in range(1, w.n + 1):
                d = layer_dir(i)
                out.append(f"files.directory(name='mkdir {i}', path={d!r}, mode='755', _sudo=True)")
                out.append(f"files.put(name='write {i}', src=StringIO({layer_conf(i)!r}), "
                           f"dest='{d}/conf', mode='644', _sudo=True)")
                out.append(f"server.shell(name='cmd {i}', commands=[{layer_cmd(i)!r}], _sudo=True)")
        _write(dest / f"{w.key}.py", "\n".join(out) + "\n")


# ------------------------------------------------------------------------------------ end state
def _is(path: str, content: str, mode: int) -> bool:
    try:
        st = os.stat(path)
        with open(path) as f:
            return f.read() == content and st.st_uid == 0 and (st.st_mode & 0o777) == mode
    except OSError:
        return False


def _content(path: str) -> str | None:
    # A `cmd` creates its file with whatever umask the tool runs it under: content only.
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def check(w: Workload) -> tuple[int, int]:
    """(items found right, items expected) on the target's filesystem; an item is a file, or a
    layer with its directory, conf and cmd output."""
    good = 0
    if w.kind == "files":
        for i in range(1, w.n + 1):
            good += _is(f"{ROOT}/{i}", file_content(i), 0o644)
    else:
        for i in range(1, w.n + 1):
            d = layer_dir(i)
            good += (os.path.isdir(d) and _is(f"{d}/conf", layer_conf(i), 0o644)
                     and _content(f"{d}/cmd.out") == layer_cmd_out(i))
    return good, w.n


def generate(out: Path, workloads: list[Workload], target: dict[str, str]) -> None:
    for w in workloads:
        _write(out / "floor" / f"{w.key}.sh", floor_script(w))
    for w in workloads:
        write_ov_project(out / "ov" / w.key, w, target)
    write_ansible(out / "ansible", workloads, target)
    write_pyinfra(out / "pyinfra", workloads, target)


# -------------------------------------------------------------------------------------- packages
# The packages workload: real Debian 12 packages with dependencies, man pages (the man-db trigger
# runs) and shared libraries (libc-bin's ldconfig trigger), applied to bench/pkgtarget.sh's
# disposable host. Layer i installs PKG_LAYERS[i - 1]; the N-layer workload is the first N.
# None of them is in the target's base root (pkgtarget.sh refuses to build otherwise).
PKG_LAYERS: list[list[str]] = [
    ["jq"],
    ["tmux", "screen"],
    ["direnv", "entr"],
    ["ripgrep", "fd-find"],
    ["socat", "netcat-openbsd", "mtr-tiny"],
    ["tree", "ncdu"],
    ["htop", "psmisc", "lsof"],
    ["bc", "units"],
    ["pv", "pigz"],
    ["zip", "unzip"],
    ["rsync"],
    ["strace"],
    ["file", "dos2unix"],
    ["sqlite3"],
    ["nano", "ed"],
    ["less", "hexedit"],
    ["whois", "tcpdump"],
    ["lz4", "zstd"],
    ["fzf", "silversearcher-ag"],
    ["jo", "time"],
]
PKG_WORKLOADS = [Workload("pkgs5", "packages", 5), Workload("pkgs20", "packages", 20)]


def pkg_layers(w: Workload) -> list[list[str]]:
    return PKG_LAYERS[: w.n]


def pkg_all(w: Workload) -> list[str]:
    return [p for layer in pkg_layers(w) for p in layer]


def pkg_everything() -> list[str]:
    """Every package any packages workload installs (what the target's root must hold)."""
    return [p for layer in PKG_LAYERS for p in layer]


def pkg_layer_name(i: int, pkgs: list[str]) -> str:
    return f"pkg-{i:02d}-{pkgs[0]}"


def pkg_floor_script(w: Workload) -> str:
    """The floor: the package lists updated once (from the target's local mirror), then one
    `apt-get install` of every package — one dpkg run, its triggers once."""
    return "\n".join([
        "# The floor: fed to `ssh target 'sudo -n bash -s'` - one transaction for every package.",
        "set -euo pipefail",
        "export DEBIAN_FRONTEND=noninteractive",
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends " + " ".join(pkg_all(w)),
    ]) + "\n"


def write_ov_pkg_project(dest: Path, w: Workload, target: dict[str, str]) -> None:
    """An overthink project with one layer per entry of the workload (`deb: packages:`), one
    `vm:` entity and its deploy node, as write_ov_project."""
    _write_project_files(dest, "packages")
    names = []
    for i, pkgs in enumerate(pkg_layers(w), 1):
        name = pkg_layer_name(i, pkgs)
        names.append(name)
        _write(dest / f"layers/{name}/layer.yml", "\n".join(
            ["layer:", f"  name: {name}", "  deb:", "    packages:"] + [f"      - {p}" for p in pkgs]) + "\n")
    dep = ["version: 3", "deployments:", "  images:",
           f"    {w.vm}:", "      target: vm", f"      vm_source: {w.vm}", "      add_layers:"]
    dep += [f"        - {name}" for name in names]
    dep += ["vm:", f"  {w.vm}:", "    source:", "      kind: cloud_image", "      base_user: debian",
            '      distro: "debian:12"', "    ssh:", f"      user: {target['OV_BENCH_USER']}",
            f"      port: {target['OV_BENCH_PORT']}", "      key_source: none"]
    _write(dest / "deploy.yml", "\n".join(dep) + "\n")


def write_ansible_pkg(dest: Path, workloads: list[Workload], target: dict[str, str]) -> None:
    """Two playbooks per workload, pipelining + ControlPersist (the tuned configuration): one
    `apt` task per layer (`<key>-layers.yml`), and one `apt` task listing every package
    (`<key>-one.yml`). The lists are updated once, by the first task, as the floor does."""
    _ansible_inventory(dest, target)
    pipelining, ssh_args = ANSIBLE_CONFIGS["ansible-fast"]
    _ansible_cfg(dest / "ansible.cfg", "ansible-fast", pipelining, ssh_args, target)
    head = ["# Generated by bench/gen.py", "- name: ovbench {key}", "  hosts: bench",
            "  gather_facts: false", "  become: true", "  tasks:"]

    def task(name: str, pkgs: list[str], update: bool) -> list[str]:
        return [f"    - name: {name}", "      ansible.builtin.apt:",
                f"        name: [{', '.join(pkgs)}]", "        state: present",
                "        install_recommends: false"] + (["        update_cache: true"] if update else [])

    for w in workloads:
        out = [h.format(key=f"{w.key} per layer") for h in head]
        for i, pkgs in enumerate(pkg_layers(w), 1):
            out += task(f"layer {pkg_layer_name(i, pkgs)}", pkgs, i == 1)
        _write(dest / f"{w.key}-layers.yml", "\n".join(out) + "\n")
        out = [h.format(key=f"{w.key} one task") for h in head] + task("every package", pkg_all(w), True)
        _write(dest / f"{w.key}-one.yml", "\n".join(out) + "\n")


def write_pyinfra_pkg(dest: Path, workloads: list[Workload], target: dict[str, str]) -> None:
    """`apt.update` once, then `apt.packages` per layer (no recommends, as every contender)."""
    _pyinfra_inventory(dest, target)
    for w in workloads:
        out = ["# Generated by bench/gen.py", "from pyinfra.operations import apt", "",
               "apt.update(name='apt-get update', _sudo=True)"]
        for i, pkgs in enumerate(pkg_layers(w), 1):
            out.append(f"apt.packages(name={pkg_layer_name(i, pkgs)!r}, packages={pkgs!r}, "
                       "no_recommends=True, _sudo=True)")
        _write(dest / f"{w.key}.py", "\n".join(out) + "\n")


def generate_packages(out: Path, workloads: list[Workload], target: dict[str, str]) -> None:
    """Every contender's input for the packages workloads; `target` holds the OV_BENCH_* keys of
    the packages target (host, port, user, key, known_hosts)."""
    for w in workloads:
        _write(out / "floor" / f"{w.key}.sh", pkg_floor_script(w))
        write_ov_pkg_project(out / "ov" / w.key, w, target)
    write_ansible_pkg(out / "ansible", workloads, target)
    write_pyinfra_pkg(out / "pyinfra", workloads, target)


def check_packages(w: Workload, run_in_target) -> tuple[int, int, str]:
    """(packages installed, packages expected, what is wrong) on the packages target, read through
    `run_in_target(argv) -> (rc, stdout)` (a command run as root inside the host, no SSH): every
    package `install ok installed`, and `dpkg --audit` clean (no package half-configured or
    waiting for a trigger: the maintainer scripts and triggers ran)."""
    want = pkg_all(w)
    _, out = run_in_target(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\n", *want])
    good = {line.split()[1] for line in out.splitlines() if line.startswith("ii ") and len(line.split()) > 1}
    missing = [p for p in want if p not in good]
    rc, audit = run_in_target(["dpkg", "--audit"])
    wrong = []
    if missing:
        wrong.append("not installed: " + " ".join(missing))
    if rc != 0 or audit.strip():
        wrong.append("dpkg --audit: " + " ".join(audit.split())[:200])
    return len(want) - len(missing), len(want), "; ".join(wrong)
