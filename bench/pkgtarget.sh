#!/usr/bin/env bash
# bench/pkgtarget.sh — the packages benchmark's target: a disposable Debian 12 host. A debootstrapped
# bookworm root (minbase + openssh-server, sudo, python3, python3-apt, ca-certificates, man-db), built
# once per recipe and cached under bench/out/pkgroot/<key>/, holding the workload's packages and
# their dependencies in a local file: mirror of the Debian archive (the archive's own signed
# InRelease and Packages index, and the .deb files under their pool paths), so that `apt-get update`
# and `apt-get install` work the same on every run with no network. Every `start` serves sshd,
# chrooted, on a loopback port, from a fresh overlay of that root (its writable layer a tmpfs) in a
# private mount namespace: `stop` kills every process in the namespace and the overlay is gone —
# the next `start` is a machine where nothing was ever installed.
#
#   bench/pkgtarget.sh build PKG...   # the cached root for these packages (idempotent; needs network)
#   bench/pkgtarget.sh start PKG...   # build if needed, then a fresh host (stops a running one first)
#   bench/pkgtarget.sh stop           # kill the host's processes; its overlay goes with them
#   bench/pkgtarget.sh env            # KEY=VALUE lines the harness reads
#   bench/pkgtarget.sh exec CMD...    # run CMD as root inside the running host (no SSH)
#
# Inside: login user `ovbench` (key made at build, passwordless sudo), `UsePAM no` (as the tests'
# chrooted hosts), a policy-rc.d that forbids service starts (as Debian's chroot tools do); the
# packages' maintainer scripts and dpkg triggers (man-db, libc-bin) run.
# Env: OV_BENCH_PKG_DIR (runtime state, default /tmp/ovbench-pkg), OV_BENCH_PKG_CACHE (default
# bench/out/pkgroot), OV_BENCH_MIRROR (default http://deb.debian.org/debian; used at build only).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${OV_BENCH_PKG_DIR:-/tmp/ovbench-pkg}
CACHE=${OV_BENCH_PKG_CACHE:-$HERE/out/pkgroot}
MIRROR=${OV_BENCH_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
INCLUDE=openssh-server,sudo,python3,python3-apt,ca-certificates,man-db
USER_NAME=ovbench
HOSTNAME_IN=ovbench-pkg
ADDR=127.0.0.1
LOCAL_MIRROR=/srv/ovbench-mirror
PATH_IN=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Bump when the build below changes: the cache key holds it.
RECIPE_VERSION=1

log() { printf '[pkgtarget] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mounts, namespaces)"

# The cache key: everything the build depends on.
recipe_key() {
  printf 'v%s|%s|%s|%s|%s|%s\n' "$RECIPE_VERSION" "$SUITE" "$MIRROR" "$INCLUDE" "$USER_NAME" \
    "$(printf '%s\n' "$@" | sort -u | tr '\n' ' ')" | sha256sum | cut -c1-16
}

# Runs under flock in the new build directory: debootstrap, the packages into a file: mirror, the
# login user and sshd's config and keys. Arguments: work directory, then the packages.
BUILD='set -euo pipefail
work=$1 suite=$2 mirror=$3 include=$4 user=$5 hostname_in=$6 local_mirror=$7 path_in=$8
shift 8
root=$work/root
cleanup_mounts() {
  for m in $(awk -v w="$root" "index(\$2, w) == 1 { print \$2 }" /proc/mounts | sort -r); do
    umount -l "$m" || true
  done
}
trap cleanup_mounts EXIT
in_root() { chroot "$root" /usr/bin/env -i "$path_in" LANG=C.UTF-8 HOME=/root DEBIAN_FRONTEND=noninteractive "$@"; }
echo "[pkgtarget] debootstrap $suite (minbase + $include) from $mirror" >&2
debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
mount -t proc proc "$root/proc"
# Service starts are forbidden in the root (as Debian chroot tools do); maintainer scripts still run.
printf "#!/bin/sh\nexit 101\n" > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
# None of the workload packages may be there already: the end-state check would prove nothing.
already=$(in_root dpkg-query -W -f="\${db:Status-Abbrev} \${Package}\n" "$@" 2>/dev/null | awk "\$1 == \"ii\" { print \$2 }" || true)
[ -z "$already" ] || { echo "[pkgtarget] already in the base root: $already (choose other packages)" >&2; exit 1; }
# No translated descriptions: the local mirror holds the package index only.
printf "Acquire::Languages \"none\";\n" > "$root/etc/apt/apt.conf.d/90ovbench-no-translations"
cp /etc/resolv.conf "$root/etc/resolv.conf"
in_root apt-get update -q >"$work/apt.log"
echo "[pkgtarget] downloading: $*" >&2
in_root apt-get install -q -y --no-install-recommends --download-only "$@" >>"$work/apt.log"
# The file: mirror: the signed InRelease of the archive as apt stored it, and every .deb in the
# cache (the downloaded ones and the base system of debootstrap) at the pool path the index names.
lists=$root/var/lib/apt/lists
host=${mirror#*://}; host=${host%/}; prefix=$(printf "%s" "$host" | tr / _)_dists_${suite}
inrel=$lists/${prefix}_InRelease
pkgs=$(ls "$lists/${prefix}_main_binary-"*_Packages 2>/dev/null | head -n1 || true)
[ -f "$inrel" ] && [ -n "$pkgs" ] || { echo "[pkgtarget] no InRelease/Packages in $lists (compressed lists?)" >&2; ls "$lists" >&2; exit 1; }
arch=${pkgs%_Packages}; arch=${arch##*binary-}
m=$root$local_mirror
install -d "$m/dists/$suite/main/binary-$arch"
cp "$inrel" "$m/dists/$suite/InRelease"
# apt fetches the compressed index (a file: mirror is no exception): the Packages.xz of the
# archive, by the hash this InRelease names for it (apt stored only the uncompressed one).
sha=$(awk -v f="main/binary-$arch/Packages.xz" "/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 } s && \$3 == f { print \$1 }" "$inrel")
[ -n "$sha" ] || { echo "[pkgtarget] InRelease names no main/binary-$arch/Packages.xz" >&2; exit 1; }
in_root /usr/lib/apt/apt-helper download-file "$mirror/dists/$suite/main/binary-$arch/by-hash/SHA256/$sha" \
  "$local_mirror/dists/$suite/main/binary-$arch/Packages.xz" "SHA256:$sha" >>"$work/apt.log"
awk -v RS= -F "\n" "{ p = v = f = \"\"; for (i = 1; i <= NF; i++) {
    if (\$i ~ /^Package: /) p = substr(\$i, 10); else if (\$i ~ /^Version: /) v = substr(\$i, 10);
    else if (\$i ~ /^Filename: /) f = substr(\$i, 11) }
  print p \" \" v \" \" f }" "$pkgs" > "$work/filenames"
n=0
for deb in "$root"/var/cache/apt/archives/*.deb; do
  [ -e "$deb" ] || continue
  p=$(dpkg-deb -f "$deb" Package); v=$(dpkg-deb -f "$deb" Version)
  f=$(awk -v p="$p" -v v="$v" "\$1 == p && \$2 == v { print \$3; exit }" "$work/filenames")
  [ -n "$f" ] || { echo "[pkgtarget] $p $v is not in the index" >&2; exit 1; }
  install -d "$m/$(dirname "$f")"
  mv "$deb" "$m/$f"
  n=$((n + 1))
done
echo "[pkgtarget] $n packages in the local mirror" >&2
rm -f "$work/filenames"
rm -f "$root/etc/resolv.conf"
in_root apt-get clean
printf "deb file:%s %s main\n" "$local_mirror" "$suite" > "$root/etc/apt/sources.list"
rm -rf "$root/var/lib/apt/lists/"*
in_root apt-get update -q >>"$work/apt.log"
# Every package resolves from the mirror, offline.
in_root apt-get install -q -y --no-install-recommends --simulate "$@" >>"$work/apt.log"
# The login user, its key and sudo rule; the host key of sshd (its config is written per start).
in_root useradd --create-home --shell /bin/bash "$user"
in_root usermod -p "*" "$user"
ssh-keygen -q -t ed25519 -N "" -C ovbench-pkg-client -f "$work/client_ed25519"
install -d -m 0700 "$root/home/$user/.ssh"
install -m 0600 "$work/client_ed25519.pub" "$root/home/$user/.ssh/authorized_keys"
in_root chown -R "$user:$user" "/home/$user/.ssh"
printf "%s ALL=(ALL:ALL) NOPASSWD: ALL\n" "$user" > "$root/etc/sudoers.d/90-$user"
chmod 0440 "$root/etc/sudoers.d/90-$user"
in_root visudo -cf "/etc/sudoers.d/90-$user" >/dev/null
printf "%s\n" "$hostname_in" > "$root/etc/hostname"
printf "127.0.1.1 %s\n" "$hostname_in" >> "$root/etc/hosts"
install -d -m 0755 "$root/etc/ovbench"
ssh-keygen -q -t ed25519 -N "" -C ovbench-pkg-host -f "$root/etc/ovbench/host_ed25519"
cp "$root/etc/ovbench/host_ed25519.pub" "$work/host_ed25519.pub"
cleanup_mounts
trap - EXIT
'

cmd_build() {
  [ $# -gt 0 ] || die "build: name the packages"
  for tool in debootstrap chroot unshare nsenter mount ssh-keygen sshd flock; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || die "missing $tool"
  done
  local key out
  key=$(recipe_key "$@")
  out=$CACHE/$SUITE-$key
  mkdir -p "$CACHE"
  [ -d "$out" ] && { echo "$out"; return 0; }
  (
    flock 9
    if [ ! -d "$out" ]; then
      local work
      work=$(mktemp -d "$CACHE/build.XXXXXX")
      if ! bash -c "$BUILD" pkgtarget-build "$work" "$SUITE" "$MIRROR" "$INCLUDE" "$USER_NAME" \
          "$HOSTNAME_IN" "$LOCAL_MIRROR" "$PATH_IN" "$@"; then
        cat "$work"/*.log > "$CACHE/failed-build.log" 2>/dev/null || true
        rm -rf --one-file-system "$work"
        die "building the root failed (logs: $CACHE/failed-build.log)"
      fi
      printf '%s\n' "$@" > "$work/packages"
      mv "$work" "$out"
      log "built $out"
    fi
  ) 9>"$CACHE/.lock"
  echo "$out"
}

# Runs in the new mount and UTS namespaces: the overlay (writable layer a tmpfs), /proc, /dev,
# /dev/pts, /run, this start's sshd config; then sshd, chrooted, in the foreground (exec: the pid written is sshd's).
LAUNCH='set -eu
lower=$1 scratch=$2 root=$3 host=$4 path=$5 pidfile=$6 conf=$7
mount -t tmpfs -o mode=0755 ovbench-upper "$scratch"
mkdir "$scratch/upper" "$scratch/work"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$scratch/upper,workdir=$scratch/work" "$root"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
mkdir -p "$root/run/sshd" "$root/run/lock"
[ -c "$root/dev/null" ] || mount --rbind /dev "$root/dev"
mkdir -p "$root/dev/pts"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
[ -e "$root/dev/ptmx" ] || touch "$root/dev/ptmx"
mount --bind "$root/dev/pts/ptmx" "$root/dev/ptmx"
mkdir -p "$root/etc/ovbench"
cp "$conf" "$root/etc/ovbench/sshd_config"
hostname "$host"
echo $$ > "$pidfile"
exec chroot "$root" /usr/bin/env -i "$path" LANG=C.UTF-8 /usr/sbin/sshd -D -e -f /etc/ovbench/sshd_config
'

proc_alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

running_pid() {
  [ -s "$DIR/sshd.pid" ] || return 1
  local pid; pid=$(cat "$DIR/sshd.pid")
  proc_alive "$pid" && [ "$(readlink "/proc/$pid/ns/mnt")" = "$(cat "$DIR/mnt_ns" 2>/dev/null)" ] && echo "$pid"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd_start() {
  local lower
  lower=$(cmd_build "$@")
  cmd_stop
  install -d -m 0755 "$DIR"
  # The port is kept across starts (the harness generates its inputs once); a new one only when
  # something else took it meanwhile.
  if [ ! -s "$DIR/port" ] || (exec 3<>"/dev/tcp/$ADDR/$(cat "$DIR/port")") 2>/dev/null; then
    free_port > "$DIR/port"
  fi
  local port; port=$(cat "$DIR/port")
  printf '%s\n' "$lower" > "$DIR/lower"
  rm -rf --one-file-system "$DIR/scratch" "$DIR/root"
  install -d -m 0755 "$DIR/scratch" "$DIR/root"
  # sshd's config is written per start: the port may change when the old one was taken.
  cat > "$DIR/sshd_config" <<EOF
# sshd of the ov packages benchmark (chrooted) — written by bench/pkgtarget.sh
ListenAddress $ADDR:$port
HostKey /etc/ovbench/host_ed25519
PidFile none
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $USER_NAME
UsePAM no
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
# VERBOSE logs one "Starting session:" line per channel: the harness counts SSH sessions with it.
LogLevel VERBOSE
EOF
  echo "[$ADDR]:$port $(cut -d' ' -f1,2 "$lower/host_ed25519.pub")" > "$DIR/known_hosts"
  install -m 0600 "$lower/client_ed25519" "$DIR/client_ed25519"
  rm -f "$DIR/sshd.pid" "$DIR/mnt_ns"
  : > "$DIR/sshd.log"
  setsid unshare --mount --uts --propagation private bash -c "$LAUNCH" pkgtarget-launch \
    "$lower/root" "$DIR/scratch" "$DIR/root" "$HOSTNAME_IN" "$PATH_IN" "$DIR/sshd.pid" "$DIR/sshd_config" \
    </dev/null >/dev/null 2>>"$DIR/sshd.log" &
  local i
  for i in $(seq 1 300); do
    if [ -s "$DIR/sshd.pid" ] && (exec 3<>"/dev/tcp/$ADDR/$port") 2>/dev/null; then
      local pid; pid=$(cat "$DIR/sshd.pid")
      readlink "/proc/$pid/ns/mnt" > "$DIR/mnt_ns"
      return 0
    fi
    [ "$i" -gt 20 ] && ! jobs -r | grep -q . && break
    sleep 0.05
  done
  die "the chrooted sshd on $ADDR:$port did not come up: $(tail -n 20 "$DIR/sshd.log")"
}

# Every process in the host's mount namespace (sshd, its sessions, daemons they left).
members() {
  local ns p
  ns=$(cat "$DIR/mnt_ns" 2>/dev/null) || return 0
  [ -n "$ns" ] || return 0
  [ "$ns" != "$(readlink /proc/self/ns/mnt)" ] || return 0
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ] && echo "${p#/proc/}"
  done
  return 0
}

cmd_stop() {
  local pids p
  pids=$(members)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    for _ in $(seq 1 200); do
      local left=0
      for p in $pids; do proc_alive "$p" && left=1; done
      [ "$left" = 0 ] && break
      sleep 0.02
    done
  fi
  rm -f "$DIR/sshd.pid" "$DIR/mnt_ns"
}

cmd_env() {
  local pid
  pid=$(running_pid) || die "not running: '$0 start PKG...' first"
  cat <<EOF
OV_PKG_HOST=$ADDR
OV_PKG_PORT=$(cat "$DIR/port")
OV_PKG_USER=$USER_NAME
OV_PKG_KEY=$DIR/client_ed25519
OV_PKG_KNOWN_HOSTS=$DIR/known_hosts
OV_PKG_SSHD_LOG=$DIR/sshd.log
OV_PKG_PID=$pid
OV_PKG_LOWER=$(cat "$DIR/lower")
EOF
}

cmd_exec() {
  local pid
  pid=$(running_pid) || die "not running"
  exec nsenter -t "$pid" -m -u -r -w /usr/bin/env -i "$PATH_IN" LANG=C.UTF-8 HOME=/root "$@"
}

case "${1:-}" in
  build) shift; cmd_build "$@" >/dev/null ;;
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  env) cmd_env ;;
  exec) shift; cmd_exec "$@" ;;
  *) echo "usage: $0 build|start PKG... | stop | env | exec CMD..." >&2; exit 2 ;;
esac
