#!/usr/bin/env bash
# bench/run.sh [--quick] [more bench.py options] — the whole benchmark in one command:
# builds ov (release), installs the peers (Ansible, pyinfra) into bench/.venv, starts the private
# SSH target (bench/target.sh), runs bench/bench.py (prints the table, writes bench/RESULTS.md or,
# with --quick, bench/out/RESULTS-quick.md), and stops the target again. The packages section runs
# on its own disposable Debian 12 host (bench/pkgtarget.sh; its root is built on first use, with
# debootstrap: network to deb.debian.org once, then cached under bench/out/pkgroot/).
# Needs root (the target is a local user with passwordless sudo and a private sshd), cargo, python3.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
OUT=$HERE/out

[ "$(id -u)" = 0 ] || { echo "bench/run.sh: run as root (it creates a user, a sudoers file and an sshd)" >&2; exit 1; }
for tool in cargo python3 ssh tar /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench/run.sh: missing $tool" >&2; exit 1; }
done
mkdir -p "$OUT"

echo "[run] cargo build --release" >&2
(cd "$REPO" && cargo build --release --quiet --bin ov)

# The peers, pinned (bench/requirements.txt), in a git-ignored virtualenv; re-installed when the
# pins change.
stamp=$HERE/.venv/.requirements
if [ ! -x "$HERE/.venv/bin/python" ] || ! cmp -s "$HERE/requirements.txt" "$stamp"; then
  echo "[run] installing peers into bench/.venv" >&2
  python3 -m venv "$HERE/.venv"
  "$HERE/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  cp "$HERE/requirements.txt" "$stamp"
fi

"$HERE/target.sh" start
# The packages target (bench/pkgtarget.sh) is started per run by bench.py; stopped here too in
# case bench.py was interrupted.
trap '"$HERE/target.sh" stop; "$HERE/pkgtarget.sh" stop' EXIT
"$HERE/target.sh" env > "$OUT/target.env"

PYTHONDONTWRITEBYTECODE=1 "$HERE/.venv/bin/python" "$HERE/bench.py" --ov "$REPO/target/release/ov" --venv "$HERE/.venv" \
  --target-env "$OUT/target.env" "$@"
