#!/usr/bin/env bash
# tests/survey/corpus.sh ROOT-TARBALL LAYER... — the corpus fidelity survey behind issue notes and
# the README's table: each corpus layer (with its dependencies) compiled by `ov compile host
# --distro debian:12` with every gate open, applied as root by run.sh in a fresh copy of a Debian
# root (online: packages come from the Debian archive), re-run, checked (run.sh --test), torn
# down; then the package list and the file tree (type, mode, owner, content) compared with before.
# Prints one Markdown table row per layer. Not part of the test suite (it needs the network and
# takes minutes per layer); tests/it/fidelity.rs is the offline, asserted subset.
# Root tarball: any of target/ov-test-rootfs/bookworm-minbase-*.tar (the fidelity test's has
# systemd, sudo and openssh-server).
set -uo pipefail
[ "$(id -u)" = 0 ] || { echo "corpus.sh: run as root" >&2; exit 1; }
[ "$#" -ge 2 ] || { echo "usage: corpus.sh ROOT-TARBALL LAYER..." >&2; exit 2; }
here=$(cd "$(dirname "$0")/../.." && pwd)
tarball=$1
shift
ov=${OV:-$here/target/debug/ov}
corpus=${CORPUS:-$here/../shared/corpus/overthink-3e714536}

# snap ROOT: one line per path outside the volatile places (and the account files, which
# packages' maintainer scripts change and purge never restores; ucf's own bookkeeping): type, mode, owner, link target,
# and the content digest of files under 20 MB.
skip=(proc dev sys run tmp var/tmp var/log var/cache var/lib/apt var/lib/dpkg etc/ld.so.cache
  var/lib/overthink etc/passwd etc/passwd- etc/group etc/group- etc/shadow etc/shadow- etc/gshadow
  etc/gshadow- etc/subuid etc/subgid var/lib/ucf)
snap() {
  local prune=() s
  for s in "${skip[@]}"; do prune+=(-path "./$s" -o); done
  unset 'prune[${#prune[@]}-1]'
  (cd "$1" && find . -xdev \( "${prune[@]}" \) -prune -o -printf '%p %y %m %U:%G %l\n' | LC_ALL=C sort)
  (cd "$1" && find . -xdev \( "${prune[@]}" \) -prune -o -type f -size -20M -print0 | LC_ALL=C sort -z |
    xargs -0 -r sha256sum)
}
pkgs() {
  chroot "$1" dpkg-query -W -f='${db:Status-Abbrev} ${binary:Package} ${Version}\n' | awk '$1 == "ii"' | LC_ALL=C sort
}

echo "| layer | apply | re-run | own tests | teardown | left after teardown |"
echo "|---|---|---|---|---|---|"
for layer in "$@"; do
  work=$(mktemp -d /var/tmp/ov-survey.XXXXXX)
  r=$work/root
  mkdir "$r"
  tar -C "$r" --numeric-owner -xpf "$tarball"
  mount -t proc proc "$r/proc"
  [ -c "$r/dev/null" ] || mount --bind /dev "$r/dev"
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  chroot "$r" useradd -m -u 1000 -s /bin/bash tester
  log=$work/log
  if ! "$ov" -C "$corpus" compile host --distro debian:12 "$layer" --with-services --allow-root-tasks \
    --allow-repo-changes -o "$work/host.tar.gz" >"$log" 2>&1; then
    echo "| $layer | compile failed: $(tail -n 1 "$log" | tr '|' '/') | | | | |"
  else
    mkdir -p "$r/var/tmp/b" && tar -C "$r/var/tmp/b" -xzf "$work/host.tar.gz"
    snap "$r" >"$work/before.tree"
    pkgs "$r" >"$work/before.pkgs"
    chroot "$r" bash /var/tmp/b/host/run.sh --user tester >"$work/apply.out" 2>&1
    a=$?
    if [ "$a" = 0 ]; then
      apply=ok
      chroot "$r" bash /var/tmp/b/host/run.sh --user tester >"$work/rerun.out" 2>&1
      rerun="exit $? applied $(sed -n 's/.*::ov:: end .*applied=\([0-9]*\).*/\1/p' "$work/rerun.out")"
    else
      fail=$(grep -m1 'layer-fail' "$work/apply.out" | sed 's/.*layer=\([^ ]*\).*status=\([0-9]*\).*/\1 (status \2)/')
      why=$(grep -E '^(ov: |E: |.*: command not found|.*refusing)' "$work/apply.out" | grep -v '^ov: step\|^ov: saved\|^ov: downloading' | tail -n 1 | cut -c1-90 | tr '|' '/')
      apply="fail: $fail — $why"
      rerun=-
    fi
    if chroot "$r" bash /var/tmp/b/host/run.sh --help 2>&1 | grep -q -- '--test'; then
      chroot "$r" bash /var/tmp/b/host/run.sh --test --user tester >"$work/test.out" 2>&1
      tests=$(grep -c '^::ov:: check .*result=pass' "$work/test.out")/$(grep -c '^::ov:: check .*result=fail' "$work/test.out")/$(grep -c '^::ov:: check .*result=skip' "$work/test.out")
      tests="$tests pass/fail/skip"
    else
      tests=-
    fi
    chroot "$r" bash /var/tmp/b/host/undo.sh --user tester >"$work/undo.out" 2>&1
    u=$?
    snap "$r" >"$work/after.tree"
    pkgs "$r" >"$work/after.pkgs"
    left=$(diff "$work/before.tree" "$work/after.tree" | grep -c '^[<>]')
    pl=$(diff "$work/before.pkgs" "$work/after.pkgs" | grep -c '^[<>]')
    what=$(diff "$work/before.tree" "$work/after.tree" | grep '^[<>]' | grep -v '^[<>] [0-9a-f]\{64\} ' |
      awk '{print $1 $2}' | head -n 3 | tr '\n' ' ')
    echo "| $layer | $apply | $rerun | $tests | exit $u | $left paths, $pl packages ${what:+($what)} |"
  fi
  umount -l "$r/proc" 2>/dev/null
  mountpoint -q "$r/dev" && umount -l "$r/dev"
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf --one-file-system "$work"; fi
done
