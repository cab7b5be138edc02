#!/usr/bin/env python3
"""bench/profile.py — where ov's time goes, for the figures in RESULTS.md (run as root).

  profile.py runsh N        compile an N-layer bundle (the bench's `layers` workload), run its
                            run.sh locally as root: first run and re-run wall time, forks and
                            execs (strace -f -c), then a per-function / per-line time breakdown
                            from a bash xtrace with $EPOCHREALTIME stamps (BASH_ENV, since bash
                            ignores an exported PS4 when run as root)
  profile.py push N         `ov push --json` of an N-layer deploy against the bench target, each
                            event stamped with the time since start (needs bench/out/target.env)
  profile.py compile        `perf record` of `ov compile` of the whole corpus; the heaviest
                            functions, inclusive. Builds ov with line tables and frame pointers
                            into bench/out/target-prof (a separate target dir) unless --ov is given

Options: --ov BIN (default target/release/ov; for `compile`, the profiling build), --keep.
It resets /opt/ovbench and the bench user's ov ledger before each run, like bench.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ beside the sources
import gen  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CORPUS = REPO.parent / "shared/corpus/overthink-3e714536"
USER = os.environ.get("OV_BENCH_USER", "ovbench")


def home_of(user: str) -> Path:
    import pwd

    return Path(pwd.getpwnam(user).pw_dir)


def reset() -> None:
    shutil.rmtree(gen.ROOT, ignore_errors=True)
    shutil.rmtree(home_of(USER) / ".config/overthink", ignore_errors=True)
    # root's ledger for the account (where ov keeps it since the privilege boundary)
    shutil.rmtree(Path("/var/lib/overthink/installed") / USER, ignore_errors=True)


def ov_env(tmp: Path) -> dict:
    e = dict(os.environ, HOME=str(tmp / "home"), NO_COLOR="1")
    for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        e.pop(k, None)
    return e


def bundle_dir(ov: str, n: int, tmp: Path, target: dict[str, str]) -> Path:
    w = gen.Workload(f"layers{n}", "layers", n)
    proj = tmp / "project"
    gen.write_ov_project(proj, w, target)
    subprocess.run([ov, "-C", str(proj), "compile", f"vm:{w.vm}", "--out-dir", str(tmp / "unpacked")],
                   check=True, env=ov_env(tmp), stdout=subprocess.DEVNULL)
    return next((tmp / "unpacked").iterdir())


def wall(argv: list[str], cwd: Path, **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, **kw)
    return (time.perf_counter() - t0) * 1000


def xtrace_breakdown(trace: Path, top: int = 25) -> None:
    pat = re.compile(r"^\++(\d+\.\d+) (\S*):(\d+):(\S+) ?(.*)$")
    ev = []
    for line in trace.read_text(errors="replace").splitlines():
        m = pat.match(line)
        if m:
            ev.append((float(m.group(1)), m.group(2), int(m.group(3)), m.group(4), m.group(5)[:80]))
    ev.sort(key=lambda e: e[0])
    if len(ev) < 2:
        print("no trace events")
        return
    by_func: collections.Counter = collections.Counter()
    by_line: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    text = {}
    for a, b in zip(ev, ev[1:]):
        d = b[0] - a[0]  # the time until the next traced command is charged to this one
        by_func[(a[1], a[3])] += d
        by_line[(a[1], a[2])] += d
        count[(a[1], a[2])] += 1
        text[(a[1], a[2])] = a[4]
    print(f"traced: {ev[-1][0] - ev[0][0]:.2f} s, {len(ev)} commands (xtrace itself slows bash down)")
    print("by function (file, function): seconds")
    for k, v in by_func.most_common(15):
        print(f"  {v:7.3f}  {k[0]} {k[1]}")
    print("by line: seconds, times run, file:line, command")
    for k, v in by_line.most_common(top):
        print(f"  {v:7.3f}  x{count[k]:<6d} {k[0]}:{k[1]}  {text[k]}")


def cmd_runsh(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ovprof."))
    top = bundle_dir(args.ov, args.n, tmp, {"OV_BENCH_USER": USER, "OV_BENCH_PORT": "22"})
    print(f"bundle: {top} ({sum(1 for _ in top.rglob('*'))} entries, run.sh "
          f"{(top / 'run.sh').stat().st_size} bytes, lib.sh {(top / 'lib.sh').stat().st_size} bytes)")
    reset()
    first = wall(["bash", "run.sh"], top)
    again = wall(["bash", "run.sh"], top)
    print(f"run.sh locally as root, {args.n} layers: first run {first:.0f} ms "
          f"({first / args.n:.1f} ms per layer), re-run {again:.0f} ms")
    if shutil.which("strace"):
        reset()
        out = tmp / "strace.txt"
        subprocess.run(["strace", "-f", "-c", "-e", "trace=execve,clone,clone3,fork,vfork", "-o", str(out),
                        "bash", "run.sh"], cwd=top, check=True, stdout=subprocess.DEVNULL)
        calls = {m.group(2): int(m.group(1)) for m in
                 re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", out.read_text(), re.M)}
        print(f"first run: {calls.get('clone', 0) + calls.get('clone3', 0) + calls.get('fork', 0)} forks, "
              f"{calls.get('execve', 0)} execs ({calls.get('execve', 0) / args.n:.1f} execs per layer)")
        out2 = tmp / "exec.txt"
        reset()
        subprocess.run(["strace", "-f", "-e", "trace=execve", "-o", str(out2), "bash", "run.sh"], cwd=top,
                       check=True, stdout=subprocess.DEVNULL)
        progs = collections.Counter(re.findall(r'execve\("([^"]+)"', out2.read_text()))
        print("programs run (first run): " + ", ".join(f"{Path(p).name} {c}" for p, c in progs.most_common(20)))
    reset()
    ps4 = tmp / "ps4.sh"
    ps4.write_text("PS4='+${EPOCHREALTIME} ${BASH_SOURCE[0]##*/}:${LINENO}:${FUNCNAME[0]:-main} '\nset -x\n")
    trace = tmp / "xtrace.txt"
    with open(trace, "w") as f:
        subprocess.run(["bash", "run.sh"], cwd=top, env=dict(os.environ, BASH_ENV=str(ps4)), check=True,
                       stdout=subprocess.DEVNULL, stderr=f)
    print("\n== first run, xtrace")
    xtrace_breakdown(trace)
    with open(trace, "w") as f:
        subprocess.run(["bash", "run.sh"], cwd=top, env=dict(os.environ, BASH_ENV=str(ps4)), check=True,
                       stdout=subprocess.DEVNULL, stderr=f)
    print("\n== re-run (nothing to do), xtrace")
    xtrace_breakdown(trace, 12)
    reset()
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


def cmd_push(args: argparse.Namespace) -> None:
    env_file = HERE / "out/target.env"
    t = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    tmp = Path(tempfile.mkdtemp(prefix="ovprof."))
    w = gen.Workload(f"layers{args.n}", "layers", args.n)
    gen.write_ov_project(tmp / "project", w, t)
    argv = [args.ov, "-C", str(tmp / "project"), "push", f"vm:{w.vm}", "--host", t["OV_BENCH_HOST"], "--port",
            t["OV_BENCH_PORT"], "--ssh-user", t["OV_BENCH_USER"], "-i", t["OV_BENCH_KEY"], "--known-hosts",
            t["OV_BENCH_KNOWN_HOSTS"], "--json"]
    reset()
    for phase in ("first", "re-run"):
        print(f"== {phase}: {args.n} layer(s)")
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, env=ov_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert p.stdout is not None
        per_layer = ("layer-start", "layer-skip", "layer-done", "script-start", "script-end")
        span: list[float] = []  # first and last per-layer event: one line for all of them
        for line in p.stdout:
            ms = (time.perf_counter() - t0) * 1000
            try:
                ev = json.loads(line)
            except ValueError:
                ev = None
            if ev is not None and ev.get("event") == "output":
                continue
            if ev is not None and ev.get("event") in per_layer and args.n > 1:
                span = [span[0] if span else ms, ms]
                continue
            if span:
                print(f"  {span[0]:7.0f} ms  .. {span[1]:.0f} ms: per-layer events of {args.n} layers")
                span = []
            if ev is not None:
                line = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("detail", "applied_layers"))
            print(f"  {ms:7.0f} ms  {line.rstrip()[:140]}")
        p.wait()
        print(f"  {(time.perf_counter() - t0) * 1000:7.0f} ms  exit {p.returncode}")
    reset()
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


def cmd_compile(args: argparse.Namespace) -> None:
    if not shutil.which("perf"):
        sys.exit("perf is not installed (apt-get install linux-perf)")
    ov = args.ov_given
    if not ov:
        tdir = HERE / "out/target-prof"
        env = dict(os.environ, CARGO_PROFILE_RELEASE_DEBUG="line-tables-only",
                   RUSTFLAGS="-C force-frame-pointers=yes")
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "ov", "--target-dir", str(tdir)],
                       cwd=REPO, env=env, check=True)
        ov = str(tdir / "release/ov")
    tmp = Path(tempfile.mkdtemp(prefix="ovprof."))
    layers = sorted(p.parent.name for p in (CORPUS / "layers").rglob("layer.yml"))
    argv = [ov, "-C", str(CORPUS), "compile", "host", "--distro", args.distro]
    for layer in layers:
        argv += ["--add-layer", layer]
    argv += ["-o", str(tmp / "bundle.tar.gz")]
    data = tmp / "perf.data"
    subprocess.run(["perf", "record", "-q", "-F", "20000", "-g", "-o", str(data), *argv], env=ov_env(tmp),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rep = subprocess.run(["perf", "report", "-i", str(data), "--children", "--sort", "symbol", "--stdio",
                          "-g", "none"], capture_output=True, text=True).stdout
    print(f"ov compile of the corpus ({len(layers)} layers, {args.distro}); inclusive share of samples:")
    keep = re.compile(r"ov_compiler::|ov::compile_cmd|miniz_oxide::deflate::core::compress_inner|"
                      r"serde_saphyr::de::spanned_deser::deserialize_yaml_spanned|tar::builder::append\b|"
                      r"minijinja::environment|statx|sha2::")
    for line in rep.splitlines():
        m = re.match(r"^\s+([\d.]+)%\s+([\d.]+)%\s+\[.\]\s+(.*?)\s*(?:-\s+-\s*)?$", line)
        if m and keep.search(m.group(3)) and float(m.group(1)) >= 1.0:
            print(f"  {float(m.group(1)):5.1f}% incl  {float(m.group(2)):5.1f}% self  {m.group(3)[:110]}")
    gz = tmp / "bundle.tar.gz"
    raw = subprocess.run(["gzip", "-dc", str(gz)], capture_output=True).stdout
    print(f"bundle: {gz.stat().st_size} bytes gzip'd, {len(raw)} bytes of tar stream")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["runsh", "push", "compile"])
    ap.add_argument("n", nargs="?", type=int, default=100)
    ap.add_argument("--ov", default=None)
    ap.add_argument("--distro", default="debian:12")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    args.ov_given = args.ov
    args.ov = args.ov or str(REPO / "target/release/ov")
    if os.geteuid() != 0:
        sys.exit("run as root (run.sh runs as root; the ledger is the bench user's)")
    {"runsh": cmd_runsh, "push": cmd_push, "compile": cmd_compile}[args.what](args)


if __name__ == "__main__":
    main()
