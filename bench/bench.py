#!/usr/bin/env python3
"""bench/bench.py — the benchmark harness (Python standard library only; the peers live in
bench/.venv). Run through bench/run.sh, which builds ov, makes the venv and starts the target.

Sections:
  push     the same work for every contender (floor, ov, Ansible x2, pyinfra): 50 files; 100 layers;
           each followed by an unchanged re-run. Contenders alternate within every round (shared,
           noisy machines: ratios come from one run), medians are reported.
  scale    ov and the floor at 1, 10, 100, 1000 layers: wall time and SSH sessions / connections,
           counted from the target sshd's VERBOSE log.
  compile  `ov compile` of the whole corpus for four distros vs `tar -czf` of the same files, peak
           memory (`/usr/bin/time -v`), `ov plan` of the corpus, compile time at 10/100/all layers.
  packages real Debian packages, 5 and 20 layers of 1-3 each, on a disposable Debian 12 host
           (bench/pkgtarget.sh: a fresh overlay of a cached root per run): the floor (one
           `apt-get install`), ov, Ansible (one `apt` task per layer / one for all), pyinfra.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ beside the sources
import gen  # noqa: E402
from gen import Workload

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# ------------------------------------------------------------------------------ configuration
FILES = Workload("files50", "files", 50)
LAYERS = Workload("layers100", "layers", 100)
SCALE = [Workload("layers1", "layers", 1), Workload("layers10", "layers", 10), LAYERS,
         Workload("layers1000", "layers", 1000)]
WORKLOADS = [FILES] + SCALE

PUSH_CONTENDERS = ["floor", "ov", "ov-bundle", "ansible-fast", "ansible-default", "pyinfra"]
LABELS = {
    "floor": "floor: `ssh host 'sudo -n bash -s' < script`",
    "ov": "`ov push <deploy>` (compile + push)",
    "ov-bundle": "`ov push <bundle.tar.gz>` (precompiled)",
    "ansible-fast": "Ansible, pipelining + ControlPersist",
    "ansible-default": "Ansible, defaults",
    "pyinfra": "pyinfra (`-y`)",
}
# Repetitions (full, quick) per workload and contender; a round runs every contender that still
# has repetitions left, in an order rotated each round. Ansible costs 0.3-0.9 s per task here: it gets
# few rounds (one or two at 100 layers x 3 tasks), as the README says.
REPS = {
    "files50": {"floor": (9, 3), "ov": (9, 3), "ov-bundle": (9, 3), "ansible-fast": (3, 1),
                "ansible-default": (2, 0), "pyinfra": (3, 1)},
    "layers100": {"floor": (9, 3), "ov": (9, 3), "ov-bundle": (9, 3), "ansible-fast": (2, 0),
                  "ansible-default": (1, 0), "pyinfra": (2, 1)},
    "layers1": {"floor": (5, 3), "ov": (5, 3)},
    "layers10": {"floor": (5, 3), "ov": (5, 3)},
    "layers1000": {"floor": (3, 1), "ov": (3, 1)},
}
# The packages section (issue 15): contenders, labels and repetitions (full, quick). Every run
# is a fresh target: a first run and an unchanged re-run on it.
PKG_WORKLOADS = gen.PKG_WORKLOADS
PKG_CONTENDERS = ["floor", "ov", "ansible-layers", "ansible-one", "pyinfra"]
PKG_LABELS = {
    "floor": "floor: one script, `apt-get update` + one `apt-get install`",
    "ov": "`ov push <deploy>` (compile + push)",
    "ansible-layers": "Ansible, one `apt` task per layer",
    "ansible-one": "Ansible, one `apt` task listing every package",
    "pyinfra": "pyinfra, `apt.packages` per layer",
}
PKG_REPS = {
    "pkgs5": {"floor": (5, 2), "ov": (5, 2), "ansible-layers": (3, 1), "ansible-one": (3, 1), "pyinfra": (3, 1)},
    "pkgs20": {"floor": (5, 2), "ov": (5, 2), "ansible-layers": (2, 1), "ansible-one": (3, 1), "pyinfra": (2, 1)},
}
DEFAULT_SECTIONS = "push,scale,compile,packages"
COMPILE_REPS = (5, 3)
PLAN_REPS = (9, 5)
DISTROS = ["archlinux", "debian:12", "fedora:43", "ubuntu:24.04"]
RUN_TIMEOUT = 3600


def reps_of(wkey: str, contender: str, quick: bool) -> int:
    full, q = {**REPS, **PKG_REPS}.get(wkey, {}).get(contender, (0, 0))
    return q if quick else full


# ------------------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


@dataclass
class Sample:
    ms: float
    rc: int
    ok: bool = True
    cpu_ms: float | None = None
    sessions: int | None = None
    connections: int | None = None
    rss_kb: int | None = None
    note: str = ""


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)
    failure: str | None = None

    def ms(self) -> list[float]:
        return [s.ms for s in self.samples if s.ok]

    def med(self) -> float | None:
        return median(self.ms())

    def best(self) -> float | None:
        return min(self.ms()) if self.ms() else None

    def cpu(self) -> list[float]:
        return [s.cpu_ms for s in self.samples if s.ok and s.cpu_ms is not None]

    def sessions(self) -> list[int]:
        return [s.sessions for s in self.samples if s.ok and s.sessions is not None]

    def connections(self) -> list[int]:
        return [s.connections for s in self.samples if s.ok and s.connections is not None]

    def rss(self) -> list[int]:
        return [s.rss_kb for s in self.samples if s.ok and s.rss_kb is not None]

    def to_json(self) -> dict:
        return {"failure": self.failure, "samples": [s.__dict__ for s in self.samples]}


def timed(argv: list[str], logfile: Path, *, cwd: Path | None = None, env: dict | None = None,
          stdin: Path | None = None, timeout: int = RUN_TIMEOUT) -> tuple[float, int, float]:
    """Wall time (ms), exit status and CPU time (ms, user + system of the command and every
    descendant it waited for: less sensitive than wall time to other load on a shared machine)
    of one command; its output goes to `logfile`."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "wb") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
        try:
            t0 = time.perf_counter()
            try:
                p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=fin, stdout=out, stderr=subprocess.STDOUT)
            except OSError as e:
                out.write(f"cannot run: {e}\n".encode())
                return (time.perf_counter() - t0) * 1000, -998, 0.0
            killer = threading.Timer(timeout, p.kill)
            killer.start()
            _, status, ru = os.wait4(p.pid, 0)  # blocking: the exit is seen at once
            ms = (time.perf_counter() - t0) * 1000
            p.returncode = status  # reaped here: Popen must neither wait nor signal any more
            timed_out = not killer.is_alive()
            killer.cancel()
            rc = -999 if timed_out else os.waitstatus_to_exitcode(status)
        finally:
            if stdin:
                fin.close()
    return ms, rc, (ru.ru_utime + ru.ru_stime) * 1000


def tail(path: Path, n: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class SshdLog:
    """Counts what the target's sshd logged since a mark (byte offset): "Starting session:" is
    one line per session channel, "Accepted publickey" one per authenticated connection."""

    def __init__(self, path: Path):
        self.path = path

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def since(self, mark: int) -> tuple[int, int]:
        # sshd writes its lines as events happen; give the last "disconnect" a moment.
        time.sleep(0.05)
        with open(self.path, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        return text.count("Starting session:"), text.count("Accepted publickey")


def close_masters(ctl_dir: Path) -> None:
    """End any ControlMaster a tool left behind (ControlPersist), so the next run starts cold."""
    if not ctl_dir.is_dir():
        return
    for sock in ctl_dir.iterdir():
        if sock.is_socket():
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "dummy"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(ctl_dir, ignore_errors=True)


def home_of(user: str) -> Path:
    import pwd

    return Path(pwd.getpwnam(user).pw_dir)


# --------------------------------------------------------------------------------- the harness
def record_sample(res: dict, c: str, wkey: str, phase: str, s: "Sample") -> bool:
    """Keep and log sample `s` of contender `c`; a failed one marks the contender failed (it runs
    no more rounds) and shows the tail of its log. Whether it succeeded."""
    res[c][phase].samples.append(s)
    log(f"  {wkey} {c:16s} {phase:5s} {s.ms:9.0f} ms  sessions={s.sessions} "
        f"conns={s.connections}{'' if s.ok else '  FAILED: ' + s.note}")
    if not s.ok:
        res[c]["first"].failure = res[c]["first"].failure or s.note
        log(tail(Path(s.note.split("see ")[-1])) if "see " in s.note else s.note)
    return s.ok


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.quick = args.quick
        self.out = Path(args.out).resolve()
        self.gen_dir = self.out / "gen"
        self.logs = self.out / "logs"
        self.ov = Path(args.ov).resolve() if args.ov else None
        self.venv = Path(args.venv).resolve()
        self.corpus = Path(args.corpus).resolve()
        self.target = self.read_target(args.target_env)
        self.sshd_log = SshdLog(Path(self.target["OV_BENCH_SSHD_LOG"]))
        self.user_home = home_of(self.target["OV_BENCH_USER"])
        self.home = self.out / "home"  # HOME of every contender: nothing lands in root's home
        self.results: dict = {"push": {}, "compile": {}, "plan": {}, "compile_scale": {}, "packages": {},
                              "fleet": {}}
        self.notes: list[str] = []
        self.contenders = [c for c in PUSH_CONTENDERS if c in args.contenders.split(",")]
        self.ov_ok = self.probe_ov()
        self.bundles: dict[str, Path] = {}
        self.failed_sections: list[str] = []

    # ---------------------------------------------------------------- set-up
    @staticmethod
    def read_target(path: str) -> dict[str, str]:
        env = {}
        for line in Path(path).read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
        return env

    def probe_ov(self) -> dict[str, bool]:
        """Which ov subcommands this build has (the CLI may be younger than the harness)."""
        have = {}
        for sub in ("push", "compile", "plan"):
            ok = False
            if self.ov and self.ov.exists():
                r = subprocess.run([str(self.ov), sub, "--help"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
                ok = r.returncode == 0
            have[sub] = ok
            if not ok:
                self.notes.append(f"`ov {sub}` is not available in this build: its rows are missing.")
        return have

    def env(self, **extra: str) -> dict:
        e = dict(os.environ)
        for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "SSH_AUTH_SOCK"):
            e.pop(k, None)
        e.update(HOME=str(self.home), NO_COLOR="1", LC_ALL="C.UTF-8", TERM="dumb")
        e.update(extra)
        return e

    def generate(self) -> None:
        shutil.rmtree(self.gen_dir, ignore_errors=True)
        gen.generate(self.gen_dir, WORKLOADS, self.target)
        self.home.mkdir(parents=True, exist_ok=True)

    def reset_target(self) -> None:
        """Nothing of a previous run survives: files, ov's ledger on the target, ov's local state."""
        shutil.rmtree(gen.ROOT, ignore_errors=True)
        shutil.rmtree(self.user_home / ".config/overthink", ignore_errors=True)
        # root's ledger for the account (ov since the privilege boundary keeps it there)
        shutil.rmtree(Path("/var/lib/overthink/installed") / self.target["OV_BENCH_USER"], ignore_errors=True)
        shutil.rmtree(self.home / ".config/ov", ignore_errors=True)

    # ---------------------------------------------------------------- ov command lines
    # Every ov command line the harness uses is built here (one place to follow the CLI).
    def ov_conn(self, t: dict[str, str] | None = None) -> list[str]:
        t = t or self.target
        return ["--host", t["OV_BENCH_HOST"], "--port", t["OV_BENCH_PORT"], "--ssh-user",
                t["OV_BENCH_USER"], "-i", t["OV_BENCH_KEY"], "--known-hosts", t["OV_BENCH_KNOWN_HOSTS"]]

    def ov_push_deploy(self, w: Workload) -> list[str]:
        return [str(self.ov), "-C", str(self.gen_dir / "ov" / w.key), "push", f"vm:{w.vm}",
                *self.ov_conn()]

    def ov_push_bundle(self, bundle: Path) -> list[str]:
        return [str(self.ov), "push", str(bundle), *self.ov_conn()]

    def ov_compile(self, project: Path, deploy: str, layers: list[str], distro: str | None,
                   out_dir: Path) -> list[str]:
        argv = [str(self.ov), "-C", str(project), "compile", deploy]
        if distro:
            argv += ["--distro", distro]
        for layer in layers:
            argv += ["--add-layer", layer]
        return argv + ["--output", str(out_dir / "bundle.tar.gz")]

    def ov_plan(self, project: Path, deploy: str, layers: list[str], distro: str) -> list[str]:
        argv = [str(self.ov), "-C", str(project), "plan", deploy, "--distro", distro]
        for layer in layers:
            argv += ["--add-layer", layer]
        return argv

    # ---------------------------------------------------------------- push contenders
    def contender_available(self, c: str) -> bool:
        if c in ("ov", "ov-bundle"):
            return self.ov_ok.get("push", False) and (c == "ov" or self.ov_ok.get("compile", False))
        if c.startswith("ansible"):
            return (self.venv / "bin/ansible-playbook").exists()
        if c == "pyinfra":
            return (self.venv / "bin/pyinfra").exists()
        return True

    def prepare_bundle(self, w: Workload) -> Path | None:
        """Compile the workload's bundle once, untimed, for the `ov-bundle` contender."""
        if w.key in self.bundles:
            return self.bundles[w.key]
        out_dir = self.out / "bundles" / w.key
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        argv = self.ov_compile(self.gen_dir / "ov" / w.key, f"vm:{w.vm}", [], None, out_dir)
        _, rc, _ = timed(argv, self.logs / f"compile-bundle-{w.key}.log", cwd=out_dir, env=self.env())
        found = sorted(out_dir.glob("*.tar.gz"))
        if rc != 0 or not found:
            log(f"compiling the {w.key} bundle failed:\n{tail(self.logs / f'compile-bundle-{w.key}.log')}")
            return None
        self.bundles[w.key] = found[0]
        return found[0]

    def run_contender(self, c: str, w: Workload, phase: str, rep: int) -> Sample:
        logf = self.logs / "push" / f"{w.key}-{c}-{phase}-{rep}.log"
        t = self.target
        ctl = Path(tempfile.mkdtemp(prefix="ovb-cp.", dir="/tmp"))
        mark = self.sshd_log.mark()
        if c == "floor":
            argv = ["ssh", "-F", "/dev/null", "-i", t["OV_BENCH_KEY"], "-o", "IdentitiesOnly=yes",
                    "-o", f"UserKnownHostsFile={t['OV_BENCH_KNOWN_HOSTS']}", "-o", "StrictHostKeyChecking=yes",
                    "-o", "BatchMode=yes", "-o", "ControlPath=none", "-p", t["OV_BENCH_PORT"],
                    f"{t['OV_BENCH_USER']}@{t['OV_BENCH_HOST']}", "sudo -n bash -s"]
            ms, rc, _ = timed(argv, logf, env=self.env(), stdin=self.gen_dir / "floor" / f"{w.key}.sh")
        elif c == "ov":
            ms, rc, _ = timed(self.ov_push_deploy(w), logf, env=self.env())
        elif c == "ov-bundle":
            bundle = self.prepare_bundle(w)
            if bundle is None:
                return Sample(0, -997, ok=False, note="bundle did not compile")
            ms, rc, _ = timed(self.ov_push_bundle(bundle), logf, env=self.env())
        elif c.startswith("ansible"):
            d = self.gen_dir / "ansible"
            ms, rc, _ = timed([str(self.venv / "bin/ansible-playbook"), f"{w.key}.yml"], logf, cwd=d,
                           env=self.env(ANSIBLE_CONFIG=str(d / f"{c}.cfg"), ANSIBLE_NOCOLOR="1",
                                        ANSIBLE_SSH_CONTROL_PATH_DIR=str(ctl),
                                        ANSIBLE_LOCAL_TEMP=str(self.home / "ansible-tmp")))
        elif c == "pyinfra":
            d = self.gen_dir / "pyinfra"
            ms, rc, _ = timed([str(self.venv / "bin/pyinfra"), "-y", "inventory.py", f"{w.key}.py"], logf,
                           cwd=d, env=self.env())
        else:
            raise ValueError(c)
        close_masters(ctl)
        sessions, conns = self.sshd_log.since(mark)
        good, want = gen.check(w)
        ok = rc == 0 and good == want
        note = "" if ok else f"exit {rc}, {good}/{want} items right; see {logf}"
        return Sample(ms, rc, ok, sessions=sessions, connections=conns, note=note)

    def push_matrix(self, workloads: list[Workload], contenders: list[str]) -> None:
        for w in workloads:
            plan = {c: reps_of(w.key, c, self.quick) for c in contenders}
            plan = {c: n for c, n in plan.items() if n > 0 and self.contender_available(c)}
            if not plan:
                continue
            res = {c: {"first": Series(), "rerun": Series()} for c in plan}
            self.results["push"][w.key] = res
            rounds = max(plan.values())
            log(f"push {w.key} ({w.describe()}): {plan}")
            for r in range(rounds):
                active = [c for c in plan if plan[c] > r and res[c]["first"].failure is None]
                k = r % len(active) if active else 0
                for c in active[k:] + active[:k]:
                    self.reset_target()
                    for phase in ("first", "rerun"):
                        s = self.run_contender(c, w, phase, r + 1)
                        if not record_sample(res, c, w.key, phase, s):
                            break
            self.reset_target()

    # ---------------------------------------------------------------- packages
    def pkg_target(self, cmd: str, *args: str) -> subprocess.CompletedProcess:
        """bench/pkgtarget.sh CMD ARGS (the packages target), output captured."""
        return subprocess.run([str(HERE / "pkgtarget.sh"), cmd, *args], capture_output=True, text=True)

    def pkg_start(self) -> dict[str, str]:
        """A fresh packages target (builds its root on first use); its settings with the keys
        gen.py reads (OV_BENCH_*)."""
        r = self.pkg_target("start", *gen.pkg_everything())
        if r.returncode != 0:
            raise RuntimeError(f"bench/pkgtarget.sh start failed:\n{r.stderr[-3000:]}")
        r = self.pkg_target("env")
        env = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
        return {k.replace("OV_PKG_", "OV_BENCH_"): v for k, v in env.items()}

    def pkg_in_target(self, argv: list[str]) -> tuple[int, str]:
        r = self.pkg_target("exec", *argv)
        return r.returncode, r.stdout + r.stderr

    def run_pkg_contender(self, c: str, w: Workload, phase: str, rep: int, t: dict[str, str]) -> Sample:
        logf = self.logs / "packages" / f"{w.key}-{c}-{phase}-{rep}.log"
        g = self.gen_dir / "pkg"
        ctl = Path(tempfile.mkdtemp(prefix="ovb-cp.", dir="/tmp"))
        sshd_log = SshdLog(Path(t["OV_BENCH_SSHD_LOG"]))
        mark = sshd_log.mark()
        if c == "floor":
            argv = ["ssh", "-F", "/dev/null", "-i", t["OV_BENCH_KEY"], "-o", "IdentitiesOnly=yes",
                    "-o", f"UserKnownHostsFile={t['OV_BENCH_KNOWN_HOSTS']}", "-o", "StrictHostKeyChecking=yes",
                    "-o", "BatchMode=yes", "-o", "ControlPath=none", "-p", t["OV_BENCH_PORT"],
                    f"{t['OV_BENCH_USER']}@{t['OV_BENCH_HOST']}", "sudo -n bash -s"]
            ms, rc, _ = timed(argv, logf, env=self.env(), stdin=g / "floor" / f"{w.key}.sh")
        elif c == "ov":
            argv = [str(self.ov), "-C", str(g / "ov" / w.key), "push", f"vm:{w.vm}", *self.ov_conn(t)]
            ms, rc, _ = timed(argv, logf, env=self.env())
        elif c.startswith("ansible"):
            d = g / "ansible"
            book = f"{w.key}-{c.removeprefix('ansible-')}.yml"
            ms, rc, _ = timed([str(self.venv / "bin/ansible-playbook"), book], logf, cwd=d,
                              env=self.env(ANSIBLE_CONFIG=str(d / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                                           ANSIBLE_SSH_CONTROL_PATH_DIR=str(ctl),
                                           ANSIBLE_LOCAL_TEMP=str(self.home / "ansible-tmp")))
        elif c == "pyinfra":
            d = g / "pyinfra"
            ms, rc, _ = timed([str(self.venv / "bin/pyinfra"), "-y", "inventory.py", f"{w.key}.py"], logf,
                              cwd=d, env=self.env())
        else:
            raise ValueError(c)
        close_masters(ctl)
        sessions, conns = sshd_log.since(mark)
        good, want, wrong = gen.check_packages(w, self.pkg_in_target)
        ok = rc == 0 and good == want and not wrong
        note = "" if ok else f"exit {rc}, {good}/{want} packages installed{'; ' + wrong if wrong else ''}; see {logf}"
        return Sample(ms, rc, ok, sessions=sessions, connections=conns, note=note)

    def packages_section(self, contenders: list[str]) -> None:
        """Every run on a fresh target (a new overlay of the cached root): first run, then an
        unchanged re-run on the same target; contenders alternate within each round."""
        if "ov" in contenders and not self.ov_ok.get("push", False):
            contenders = [c for c in contenders if c != "ov"]
        contenders = [c for c in contenders if c == "floor" or c == "ov" or self.contender_available(
            "ansible-fast" if c.startswith("ansible") else c)]
        log("packages: starting the target (the first start builds its root: debootstrap, needs network)")
        try:
            t = self.pkg_start()
        except RuntimeError as e:
            self.failed_sections.append(f"packages: {e}")
            self.notes.append("packages section skipped: bench/pkgtarget.sh could not start the target "
                              "(see the harness output).")
            log(str(e))
            return
        gen.generate_packages(self.gen_dir / "pkg", PKG_WORKLOADS, t)
        self.results["pkg_target"] = {k: t[k] for k in ("OV_BENCH_HOST", "OV_BENCH_PORT", "OV_BENCH_LOWER")}
        try:
            for w in PKG_WORKLOADS:
                plan = {c: reps_of(w.key, c, self.quick) for c in contenders}
                plan = {c: n for c, n in plan.items() if n > 0}
                if not plan:
                    continue
                res = {c: {"first": Series(), "rerun": Series()} for c in plan}
                self.results["packages"][w.key] = res
                log(f"packages {w.key} ({w.describe()}): {plan}")
                for r in range(max(plan.values())):
                    active = [c for c in plan if plan[c] > r and res[c]["first"].failure is None]
                    k = r % len(active) if active else 0
                    for c in active[k:] + active[:k]:
                        t = self.pkg_start()  # a RuntimeError here ends the section (and the run)
                        shutil.rmtree(self.home / ".config/ov", ignore_errors=True)
                        for phase in ("first", "rerun"):
                            s = self.run_pkg_contender(c, w, phase, r + 1, t)
                            if not record_sample(res, c, w.key, phase, s):
                                break
        finally:
            self.pkg_target("stop")

    # ---------------------------------------------------------------- compile
    def corpus_layers(self) -> list[str]:
        return sorted(p.parent.name for p in (self.corpus / "layers").rglob("layer.yml"))

    def timed_rss(self, argv: list[str], logf: Path, cwd: Path | None = None) -> Sample:
        """Wall time and peak RSS (`/usr/bin/time -v`) of one command."""
        tv = logf.with_suffix(".time")
        ms, rc, cpu = timed(["/usr/bin/time", "-v", "-o", str(tv), *argv], logf, cwd=cwd, env=self.env())
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", tv.read_text() if tv.exists() else "")
        return Sample(ms, rc, rc == 0, cpu_ms=cpu, rss_kb=int(m.group(1)) if m else None,
                      note="" if rc == 0 else f"exit {rc}; see {logf}")

    def compile_section(self) -> None:
        layers = self.corpus_layers()
        reps = COMPILE_REPS[1] if self.quick else COMPILE_REPS[0]
        plan_reps = PLAN_REPS[1] if self.quick else PLAN_REPS[0]
        cdir = self.out / "compile"
        shutil.rmtree(cdir, ignore_errors=True)
        cdir.mkdir(parents=True)
        comp = self.results["compile"]
        subsets = {"10": layers[:10], "100": layers[:100], "all": layers}
        have_compile = self.ov_ok.get("compile", False)
        have_plan = self.ov_ok.get("plan", False)
        log(f"compile: corpus {self.corpus} ({len(layers)} layers), {reps} rounds; plan {plan_reps}")
        for r in range(max(reps, plan_reps)):
            if r < reps:
                # tar -czf of the very files ov reads (the whole corpus directory), in the same round
                out_tgz = cdir / "corpus.tar.gz"
                s = self.timed_rss(["tar", "-czf", str(out_tgz), "-C", str(self.corpus.parent),
                                    self.corpus.name], self.logs / "compile" / f"tar-{r}.log")
                comp.setdefault("tar -czf", Series()).samples.append(s)
                for d in DISTROS if have_compile else []:
                    od = cdir / d.replace(":", "-")
                    shutil.rmtree(od, ignore_errors=True)
                    od.mkdir()
                    s = self.timed_rss(self.ov_compile(self.corpus, "host", layers, d, od),
                                       self.logs / "compile" / f"ov-{d.replace(':', '-')}-{r}.log", cwd=od)
                    comp.setdefault(d, Series()).samples.append(s)
                for key, subset in subsets.items() if have_compile else []:
                    if key == "all":
                        continue  # the debian:12 row above
                    od = cdir / f"n{key}"
                    shutil.rmtree(od, ignore_errors=True)
                    od.mkdir()
                    s = self.timed_rss(self.ov_compile(self.corpus, "host", subset, "debian:12", od),
                                       self.logs / "compile" / f"ov-n{key}-{r}.log", cwd=od)
                    self.results["compile_scale"].setdefault(key, Series()).samples.append(s)
            if r < plan_reps and have_plan:
                s = self.timed_rss(self.ov_plan(self.corpus, "host", layers, "debian:12"),
                                   self.logs / "compile" / f"plan-{r}.log")
                self.results["plan"].setdefault("debian:12", Series()).samples.append(s)
        if have_compile:
            self.results["compile_scale"]["all"] = comp.get("debian:12", Series())
        for name, series in [*comp.items(), *self.results["plan"].items()]:
            bad = [s.note for s in series.samples if not s.ok]
            if bad:
                series.failure = bad[0]
                log(f"compile {name} FAILED: {bad[0]}")
        self.results["corpus_files"] = sum(1 for p in self.corpus.rglob("*") if p.is_file())
        self.results["corpus_bytes"] = sum(p.stat().st_size for p in self.corpus.rglob("*") if p.is_file())
        self.results["corpus_layers"] = len(layers)


# --------------------------------------------------------------------------------- reporting
def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def fmt_set(xs: list[int]) -> str:
    if not xs:
        return "—"
    lo, hi = min(xs), max(xs)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release()}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions(b: Bench) -> dict:
    def out(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else "?"
        except (OSError, subprocess.TimeoutExpired):
            return "n/a"

    v = {
        "ov": out([str(b.ov), "--version"]) if b.ov and b.ov.exists() else "n/a",
        # The checkout's commit names the binary only when it is the checkout's own build; for
        # another (`--ov`), the binary's digest says which one ran.
        "ov commit": (out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
                      if b.ov and b.ov == (REPO / "target/release/ov").resolve()
                      else "not this checkout's build (--ov)"),
        "ov binary sha256": file_sha256(b.ov)[:16] if b.ov and b.ov.exists() else "n/a",
        "OpenSSH": out(["ssh", "-V"]),
        "ansible-core": out([str(b.venv / "bin/ansible-playbook"), "--version"]),
        "pyinfra": out([str(b.venv / "bin/pyinfra"), "--version"]),
        "tar": out(["tar", "--version"]),
    }
    return v


def contender_table(L: list[str], res: dict, contenders: list[str], labels: dict[str, str],
                    ff: float | None, fr: float | None) -> None:
    """One push table: a row per contender that ran (first run and re-run, each against the
    floor's `ff` / `fr`), sessions, connections, best runs; a failure is said in its row."""
    L.append("| contender | first run | ×floor | re-run (no change) | ×floor | runs | SSH sessions "
             "(first/re-run) | connections | best first / re-run |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in contenders:
        if c not in res:
            continue
        f, rr = res[c]["first"], res[c]["rerun"]
        fail = f.failure
        L.append(f"| {labels[c]} | {fmt_ms(f.med())} | {fmt_ratio(ratio(f.med(), ff))} | "
                 f"{fmt_ms(rr.med())} | {fmt_ratio(ratio(rr.med(), fr))} | {len(f.ms())} | "
                 f"{fmt_set(f.sessions())} / {fmt_set(rr.sessions())} | "
                 f"{fmt_set(f.connections() + rr.connections())} | "
                 f"{fmt_ms(f.best())} / {fmt_ms(rr.best())} |"
                 + (f" FAILED: {fail} |" if fail else ""))
    L.append("")


def report(b: Bench, started: float, load_before: tuple, load_after: tuple) -> str:
    R = b.results
    info = machine_info()
    ver = versions(b)
    L: list[str] = []
    L.append("# ov benchmark results")
    L.append("")
    L.append(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
             f"run took {(time.time() - started) / 60:.1f} min ({'quick' if b.quick else 'full'} run: "
             f"`bench/run.sh{' --quick' if b.quick else ''}"
             f"{'' if b.args.sections == DEFAULT_SECTIONS else ' --sections ' + b.args.sections}`)")
    L.append(f"- machine: nproc {info['nproc']}, CPU `{info['cpu']}`, memory {info['memory']}, "
             f"Linux {info['kernel']}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
             "(the machine is shared: ratios within one run are the figures to trust)")
    L.append("- versions: " + ", ".join(f"{k} `{v}`" for k, v in ver.items()))
    L.append(f"- target: private sshd on {b.target['OV_BENCH_HOST']}:{b.target['OV_BENCH_PORT']} "
             f"(bench/target.sh), user `{b.target['OV_BENCH_USER']}` with passwordless sudo; every run "
             "starts without an open SSH connection; times are whole commands (wall clock).")
    L.append("")

    push = R["push"]
    floor_of = {wk: (res.get("floor", {}).get("first"), res.get("floor", {}).get("rerun"))
                for wk, res in push.items()}
    for w in [FILES, LAYERS]:
        if w.key not in push:
            continue
        res = push[w.key]
        ff, fr = (s.med() if s else None for s in floor_of[w.key])
        L.append(f"## Push: {w.describe()} (`{w.key}`)")
        L.append("")
        contender_table(L, res, PUSH_CONTENDERS, LABELS, ff, fr)

    scale = [w for w in SCALE if w.key in push]
    if scale:
        L.append("## Scaling: push time and SSH sessions by number of layers")
        L.append("")
        L.append("Each layer = mkdir + write + cmd. Sessions = `Starting session:` lines in the target's "
                 "sshd log (one per channel), connections = `Accepted publickey` lines.")
        L.append("")
        L.append("| layers | ov first | ov re-run | floor first | floor re-run | ov ×floor (first / re-run) "
                 "| ov sessions (first/re-run) | ov connections | runs |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for w in scale:
            ov = push[w.key].get("ov")
            fl = push[w.key].get("floor")
            if not ov:
                continue
            fo, ro = ov["first"].med(), ov["rerun"].med()
            ffl = fl["first"].med() if fl else None
            rfl = fl["rerun"].med() if fl else None
            L.append(f"| {w.n} | {fmt_ms(fo)} | {fmt_ms(ro)} | {fmt_ms(ffl)} | {fmt_ms(rfl)} | "
                     f"{fmt_ratio(ratio(fo, ffl))} / {fmt_ratio(ratio(ro, rfl))} | "
                     f"{fmt_set(ov['first'].sessions())} / {fmt_set(ov['rerun'].sessions())} | "
                     f"{fmt_set(ov['first'].connections() + ov['rerun'].connections())} | "
                     f"{len(ov['first'].ms())} |")
        L.append("")

    pk = R["packages"]
    for w in PKG_WORKLOADS:
        if w.key not in pk:
            continue
        res = pk[w.key]
        fl = res.get("floor")
        ff, fr = (fl["first"].med(), fl["rerun"].med()) if fl else (None, None)
        L.append(f"## Packages: {w.describe()} (`{w.key}`)")
        L.append("")
        if w is PKG_WORKLOADS[0]:
            L.append("A disposable Debian 12 host (bench/pkgtarget.sh): sshd chrooted into a fresh overlay "
                     "(tmpfs upper) of a cached debootstrapped bookworm root, on "
                     f"{R.get('pkg_target', {}).get('OV_BENCH_HOST', '127.0.0.1')}; the packages come from "
                     "a local file: mirror in the root (the archive's signed index), so `apt-get update` "
                     "and every install run offline; maintainer scripts and triggers (man-db, libc-bin) "
                     "run, service starts are refused (policy-rc.d). Each run starts on a new overlay; "
                     "the re-run is on the same one, nothing changed. Every contender updates the lists "
                     "once per run and installs without recommends; the end state is checked after "
                     "each run (`dpkg-query`: every package `ii`; `dpkg --audit` empty).")
            L.append("")
            L.append("Layers (the 5-layer workload is the first five): " + "; ".join(f"{i}: {' '.join(p)}" for i, p in enumerate(gen.PKG_LAYERS, 1)) + ".")
            L.append("")
        contender_table(L, res, PKG_CONTENDERS, PKG_LABELS, ff, fr)

    comp = R["compile"]
    if comp:
        tar = comp.get("tar -czf")
        tmed = tar.med() if tar else None
        L.append(f"## Compile: the whole corpus ({R.get('corpus_layers')} layers, "
                 f"{R.get('corpus_files')} files, {R.get('corpus_bytes', 0) / 1024:.0f} KiB) as one deploy")
        L.append("")
        L.append("`ov compile host --distro D --add-layer <each corpus layer>` (bundle + .sha256 written) vs "
                 "`tar -czf` of the corpus directory; peak memory = max RSS from `/usr/bin/time -v`.")
        L.append("")
        tcpu = median(tar.cpu()) if tar else None
        L.append("| command | wall (median) | ×tar | CPU user+sys (median) | ×tar | peak RSS (max) | runs |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        rows = [("`tar -czf` corpus" if n == "tar -czf" else f"`ov compile` {n}", s) for n, s in comp.items()]
        rows += [(f"`ov plan` {n} (whole corpus)", s) for n, s in R["plan"].items()]
        for label, s in rows:
            cpu = median(s.cpu())
            L.append(f"| {label} | {fmt_ms(s.med())} | {fmt_ratio(ratio(s.med(), tmed))} | "
                     f"{fmt_ms(cpu)} | {fmt_ratio(ratio(cpu, tcpu))} | "
                     f"{(max(s.rss()) / 1024 if s.rss() else 0):.1f} MiB | {len(s.ms())} |"
                     + (f" FAILED: {s.failure} |" if s.failure else ""))
        L.append("")
        if R["compile_scale"]:
            L.append("Compile time by number of requested corpus layers (debian:12; the first N by name, "
                     "dependencies resolved in):")
            L.append("")
            L.append("| layers | wall (median) | CPU (median) | peak RSS |")
            L.append("|---:|---:|---:|---:|")
            for key in ("10", "100", "all"):
                s = R["compile_scale"].get(key)
                if s:
                    L.append(f"| {key} | {fmt_ms(s.med())} | {fmt_ms(median(s.cpu()))} | "
                             f"{(max(s.rss()) / 1024 if s.rss() else 0):.1f} MiB |")
            L.append("")

    L.append("## Targets")
    L.append("")
    L.append("| target | measured | met |")
    L.append("|---|---|:---:|")
    for t, m, ok in targets(b):
        L.append(f"| {t} | {m} | {'—' if ok is None else ('yes' if ok else '**no**')} |")
    L.append("")
    if any(ok is False for _, _, ok in targets(b)):
        L.append("Where ov's time goes, and the fixes that would meet the missed targets: "
                 "[PROFILE.md](PROFILE.md) (figures from `bench/profile.py`).")
        L.append("")
    if getattr(b, "fleet_md", None):
        L.append("## Many machines")
        L.append("")
        L.append(b.fleet_md)
    reps = {wk: r for wk, r in {**REPS, **PKG_REPS}.items()
            if wk in R["push"] or wk in R["packages"]}
    L.append("## Repetitions")
    L.append("")
    L.append("Contenders alternate within each round (order rotated per round); medians over the runs "
             "listed in each table (the push tables also give the best run: the machine is shared, and "
             "the best run is the least disturbed one). Ansible costs 0.3-0.9 s per task here, so the "
             "peers get fewer rounds: "
             + "; ".join(f"{wk}: " + ", ".join(f"{c} {reps_of(wk, c, b.quick)}" for c in reps[wk]
                                               if reps_of(wk, c, b.quick))
                         for wk in reps) + ".")
    if b.notes:
        L.append("")
        L.append("## Notes")
        L.append("")
        L += [f"- {n}" for n in b.notes]
    return "\n".join(L) + "\n"


def targets(b: Bench) -> list[tuple[str, str, bool | None]]:
    R = b.results
    push = R["push"]
    out: list[tuple[str, str, bool | None]] = []

    def med(wk: str, c: str, phase: str) -> float | None:
        s = push.get(wk, {}).get(c, {}).get(phase)
        return s.med() if s else None

    for w in (FILES, LAYERS):
        if w.key not in push:
            continue  # section not run
        ov, fl = med(w.key, "ov", "first"), med(w.key, "floor", "first")
        r = ratio(ov, fl)
        out.append((f"push ≤ 1.5× floor ({w.key})", fmt_ratio(r), None if r is None else r <= 1.5))
        for peer, want in (("ansible-fast", 10), ("pyinfra", 3)):
            pm = med(w.key, peer, "first")
            r = ratio(pm, ov)
            out.append((f"≥ {want}× faster than {peer} ({w.key}, first run)",
                        "—" if r is None else f"{r:.1f}× faster", None if r is None else r >= want))
        ovr, flr = med(w.key, "ov", "rerun"), med(w.key, "floor", "rerun")
        r = ratio(ovr, flr)
        out.append((f"no-op re-push ≤ 1.2× floor ({w.key})", fmt_ratio(r), None if r is None else r <= 1.2))
    sess = []
    for w in SCALE:
        s = push.get(w.key, {}).get("ov")
        if s:
            sess.append((w.n, s["first"].sessions(), s["rerun"].sessions()))
    if sess:
        firsts = {x for _, f, _ in sess for x in f}
        reruns = {x for _, _, r in sess for x in r}
        desc = ", ".join(f"{n}: {fmt_set(f)}/{fmt_set(r)}" for n, f, r in sess)
        out.append(("SSH sessions per push constant in layers", f"layers: first/re-run sessions — {desc}",
                    len(firsts) == 1 and len(reruns) == 1 if firsts and reruns else None))
    pk = R["packages"]
    for w in PKG_WORKLOADS:
        def pmed(c: str, phase: str) -> float | None:
            s = pk.get(w.key, {}).get(c, {}).get(phase)
            return s.med() if s else None

        if w.key not in pk:
            continue
        r = ratio(pmed("ov", "first"), pmed("floor", "first"))
        out.append((f"packages: push ≤ 1.3× floor ({w.key}, issue 15)", fmt_ratio(r),
                    None if r is None else r <= 1.3))
        r = ratio(pmed("ov", "rerun"), pmed("floor", "rerun"))
        out.append((f"packages: no-op re-push ≤ 1.1× floor ({w.key}, issue 15)", fmt_ratio(r),
                    None if r is None else r <= 1.1))
    comp = R["compile"]
    tar = comp.get("tar -czf")
    for d in DISTROS:
        s = comp.get(d)
        if s and tar:
            r = ratio(s.med(), tar.med())
            rc = ratio(median(s.cpu()), median(tar.cpu()))
            out.append((f"compile ≤ 2× tar -czf ({d})", f"{fmt_ratio(r)} wall, {fmt_ratio(rc)} CPU",
                        None if r is None else r <= 2))
    rss = [x for d in DISTROS if comp.get(d) for x in comp[d].rss()]
    if rss:
        out.append(("peak memory ≤ 50 MB (compile, all distros)", f"{max(rss) / 1024:.1f} MiB",
                    max(rss) * 1024 <= 50 * 1000 * 1000))
    p = R["plan"].get("debian:12")
    if p and p.med() is not None:
        out.append(("`ov plan` of the whole corpus < 100 ms", fmt_ms(p.med()), p.med() < 100))
    return out


def dump_json(b: Bench, path: Path) -> None:
    def conv(x):
        if isinstance(x, Series):
            return x.to_json()
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x

    path.write_text(json.dumps(conv(b.results), indent=1))


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few repetitions, no slow peers at 100 layers")
    ap.add_argument("--ov", default=str(REPO / "target/release/ov"), help="the ov binary")
    ap.add_argument("--venv", default=str(HERE / ".venv"))
    ap.add_argument("--out", default=str(HERE / "out"))
    ap.add_argument("--corpus", default=str(REPO.parent / "shared/corpus/overthink-3e714536"))
    ap.add_argument("--target-env", required=True, help="file with `bench/target.sh env` output")
    ap.add_argument("--sections", default=DEFAULT_SECTIONS)
    ap.add_argument("--contenders", default=",".join(PUSH_CONTENDERS),
                    help="push/scale contenders (" + ",".join(PUSH_CONTENDERS) + ")")
    ap.add_argument("--pkg-contenders", default=",".join(PKG_CONTENDERS),
                    help="packages contenders (" + ",".join(PKG_CONTENDERS) + ")")
    ap.add_argument("--results", help="where to write the markdown (default: bench/RESULTS.md for a "
                    "full run, bench/out/RESULTS-quick.md for --quick)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))

    started = time.time()
    load_before = os.getloadavg()
    b = Bench(args)
    b.generate()
    if "push" in sections:
        b.push_matrix([FILES, LAYERS], b.contenders)
    if "scale" in sections:
        extra = [w for w in SCALE if w is not LAYERS]
        b.push_matrix(extra, [c for c in ("floor", "ov") if c in b.contenders])
        if "push" not in sections:
            b.push_matrix([LAYERS], [c for c in ("floor", "ov") if c in b.contenders])
    if "packages" in sections:
        b.packages_section([c for c in PKG_CONTENDERS if c in args.pkg_contenders.split(",")])
    if "fleet" in sections:
        import fleet
        b.fleet_md = fleet.run(b, timed, log, median)
    if "compile" in sections:
        if b.corpus.is_dir():
            b.compile_section()
        else:
            b.notes.append(f"corpus `{b.corpus}` not found: compile section skipped.")
    leftovers = list(Path("/var/lib/overthink/work").glob("*")) if Path("/var/lib/overthink/work").is_dir() else []
    if leftovers:
        b.notes.append(f"{len(leftovers)} entries left under /var/lib/overthink/work on the target after the runs.")
    text = report(b, started, load_before, os.getloadavg())
    results = Path(args.results) if args.results else (
        b.out / "RESULTS-quick.md" if args.quick else HERE / "RESULTS.md")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text)
    dump_json(b, b.out / "results.json")
    print(text)
    log(f"wrote {results} and {b.out / 'results.json'}; logs under {b.logs}")
    failed = bool(b.failed_sections) or any(
        s.failure for sec in ("push", "packages") for res in b.results[sec].values()
        for c in res.values() for s in c.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
