#!/usr/bin/env bash
# bench/skeleton.sh ARCHIVE N ACCOUNT — ov's process floor: the processes (and the script
# reading) that the push bootstrap and run.sh start for a first run of N layers of the scale
# workload (`bench/gen.py`'s layersN: mkdir + write + cmd per layer), and nothing else — no guard
# walk, backup index, JSON, events or ledger logic. Run as root on the target; prints ms.
# ARCHIVE: that deploy's bundle (`ov compile vm:ovb-layersN -o ARCHIVE`), whose run.sh is only
# parsed (`bash -n`) and whose SHA256SUMS is checked, as run.sh does. Compared with the floor's
# script and with ov's own bootstrap + run.sh (bench/PROFILE.md, "the process floor"), it tells
# how much of ov's time is the processes its design starts and how much is bash logic.
# Writes under /var/lib/overthink/skel, /opt/skel and ACCOUNT's ~/.config/skel, removed first.
set -euo pipefail
A=$1 N=$2 U=$3
H=$(getent passwd "$U" | cut -d: -f6)
W=/var/lib/overthink/skel
rm -rf "$W" /opt/skel "$H/.config/skel"
install -d -m 0700 "$W"
t0=$EPOCHREALTIME
# The bootstrap: its work directory, the archive from stdin, its digest, unpacked, run.sh started.
d=$W/run
mkdir -m 0700 -- "$d"
size=$(stat -c %s -- "$A")
head -c "$size" <"$A" >"$d/a.tar.gz"
sha256sum -- "$d/a.tar.gz" >/dev/null
tar -xzf "$d/a.tar.gz" -C "$d" --no-same-owner --no-same-permissions
B=$(echo "$d"/*/)
B=${B%/}
# shellcheck disable=SC2016 # the inner script's own variables
bash -c '
set -euo pipefail
B=$1 N=$2 U=$3 W=$4 H=$5
bash -n "$B/run.sh"
cd "$B"
sha256sum --check --quiet --strict SHA256SUMS &
p=$!
stat --printf "%u %a\n" / /var /var/lib /var/lib/overthink >/dev/null
df -Pk -- / /var/lib/overthink >/dev/null
wait "$p"
setpriv --reuid "$U" --regid "$U" --clear-groups bash -c true
mkdir -p -- "$W/ledger/layers" "$W/ledger/deploys" "$W/ledger/.tmp/stage"
exec 9>"$W/ledger/.lock"
flock -n 9
sha256sum <SHA256SUMS >/dev/null
cp -- lib.sh undo.sh "$W/ledger/.tmp/"
mv -f -t "$W/ledger" -- "$W/ledger/.tmp/lib.sh" "$W/ledger/.tmp/undo.sh"
for ((i = 1; i <= N; i++)); do
  (
    # the guard of root writes looks at the way again once root code (the cmd of the layer
    # before) has run
    [ "$i" = 1 ] || stat --printf "%u %a %F\t%n\0" -- / /opt /opt/skel >/dev/null
    install -d -m 0755 -- "/opt/skel/$i"
    printf "%s\n" "layer $i" >"/opt/skel/$i/.tmp"
    mv -fT -- "/opt/skel/$i/.tmp" "/opt/skel/$i/conf"
    (printf "%s\n" "cmd $i" >"/opt/skel/$i/cmd.out")
  )
  printf "%s\n" "{\"layer\": $i}" >"$W/ledger/.tmp/stage/$i.json"
  printf "%s\n" "$i" >>"$W/ledger/.tmp/journal"
done
mv -f -t "$W/ledger/layers" -- "$W/ledger/.tmp/stage"/*
printf "%s\n" "{}" >"$W/ledger/.tmp/d.json"
mv -fT -- "$W/ledger/.tmp/d.json" "$W/ledger/deploys/d.json"
setpriv --reuid "$U" --regid "$U" --clear-groups bash -c "mkdir -p -- \"\$1/v\" && mkdir -- \"\$1/v.new\" && mv -T -- \"\$1/v.new\" \"\$1/v\"" view "$H/.config/skel"
rm -rf -- "${B%/*}"
' skeleton "$B" "$N" "$U" "$W" "$H"
t1=$EPOCHREALTIME
echo $(((${t1/./} - ${t0/./}) / 1000))
