#!/usr/bin/env bash
# bench/target.sh — the benchmark's own SSH target: a private sshd (own config, host key, PID
# file and VERBOSE log) on a free loopback port, and a non-root user with passwordless sudo who
# logs in with a key made here. The system sshd, if any, is never touched.
#
#   bench/target.sh start    # idempotent; installs openssh-server/sudo if missing (apt)
#   bench/target.sh stop     # stops our sshd and every connection it serves
#   bench/target.sh status   # exit 0 if our sshd is up
#   bench/target.sh env      # KEY=VALUE lines the harness reads (address, port, user, key, log)
#   bench/target.sh purge    # stop, then remove the state directory, the user and its sudoers file
#
# Env: OV_BENCH_TARGET_DIR (default /tmp/ovbench-target — short, so ControlPath sockets fit and
#      readable by the login user, as sshd reads authorized keys with the user's rights),
#      OV_BENCH_USER (default ovbench), OV_BENCH_PORT (default: a free port, kept across restarts),
#      OV_BENCH_USEPAM (default yes, as on a stock Debian sshd).
set -euo pipefail

DIR=${OV_BENCH_TARGET_DIR:-/tmp/ovbench-target}
USER_NAME=${OV_BENCH_USER:-ovbench}
ADDR=127.0.0.1
USEPAM=${OV_BENCH_USEPAM:-yes}
SSHD=/usr/sbin/sshd

log() { printf '[target] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (creates a user, a sudoers file and an sshd)"; }

ensure_packages() {
  local missing=()
  [ -x "$SSHD" ] || missing+=(openssh-server)
  command -v sudo >/dev/null || missing+=(sudo)
  command -v ssh >/dev/null || missing+=(openssh-client)
  command -v ss >/dev/null || missing+=(iproute2)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  log "installing: ${missing[*]}"
  # The package must not start the *system* sshd: a policy-rc.d forbids it for the install.
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}" >/dev/null
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

# A zombie counts as dead: PID 1 in some sandboxes reaps killed daemons late.
proc_alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

running_pid() { # prints our sshd's pid if it is up
  [ -f "$DIR/sshd.pid" ] || return 1
  local pid; pid=$(cat "$DIR/sshd.pid")
  [ -n "$pid" ] && proc_alive "$pid" && echo "$pid"
}

free_port() {
  python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

ensure_state() {
  install -d -m 755 "$DIR" "$DIR/authorized_keys"
  [ -f "$DIR/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C ovbench-host -f "$DIR/host_ed25519"
  [ -f "$DIR/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C ovbench-client -f "$DIR/client_ed25519"
  install -m 644 "$DIR/client_ed25519.pub" "$DIR/authorized_keys/$USER_NAME"
  if [ -n "${OV_BENCH_PORT:-}" ]; then echo "$OV_BENCH_PORT" > "$DIR/port"
  elif [ ! -s "$DIR/port" ]; then free_port > "$DIR/port"; fi
  local port; port=$(cat "$DIR/port")
  echo "[$ADDR]:$port $(cut -d' ' -f1,2 "$DIR/host_ed25519.pub")" > "$DIR/known_hosts"
  cat > "$DIR/ssh_config" <<EOF
# ssh -F $DIR/ssh_config ovbench
Host ovbench
  HostName $ADDR
  Port $port
  User $USER_NAME
  IdentityFile $DIR/client_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $DIR/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
EOF
  local sftp=/usr/lib/openssh/sftp-server
  [ -x "$sftp" ] || sftp=internal-sftp
  cat > "$DIR/sshd_config" <<EOF
# private sshd of the ov benchmark — written by bench/target.sh
ListenAddress $ADDR:$port
HostKey $DIR/host_ed25519
PidFile $DIR/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys/%u
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $USER_NAME
UsePAM $USEPAM
PrintMotd no
Subsystem sftp $sftp
# VERBOSE logs one "Starting session:" line per channel: the harness counts SSH sessions with it.
LogLevel VERBOSE
EOF
  "$SSHD" -t -f "$DIR/sshd_config"
}

ensure_user() {
  if ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$USER_NAME"
  fi
  # '*': no password but not locked (a locked account cannot log in with a key when UsePAM=no).
  usermod -p '*' "$USER_NAME"
  local f=/etc/sudoers.d/90-$USER_NAME want
  want="$USER_NAME ALL=(ALL:ALL) NOPASSWD: ALL"
  if [ "$(cat "$f" 2>/dev/null)" != "$want" ]; then
    printf '%s\n' "$want" > "$f.tmp"
    chmod 440 "$f.tmp"
    visudo -cf "$f.tmp" >/dev/null
    mv "$f.tmp" "$f"
  fi
}

wait_port() {
  local port=$1
  for _ in $(seq 1 200); do
    ss -Hltn "sport = :$port" 2>/dev/null | grep -q "$ADDR:$port" && return 0
    sleep 0.05
  done
  die "sshd on $ADDR:$port did not come up (log: $DIR/sshd.log)"
}

cmd_start() {
  need_root
  ensure_packages
  install -d -m 755 /run/sshd   # sshd's privilege-separation directory
  ensure_state
  ensure_user
  local pid
  if pid=$(running_pid); then log "already running (pid $pid)"; return 0; fi
  "$SSHD" -f "$DIR/sshd_config" -E "$DIR/sshd.log"   # daemonises, writes the PID file
  wait_port "$(cat "$DIR/port")"
  log "sshd pid $(cat "$DIR/sshd.pid") on $ADDR:$(cat "$DIR/port"), user $USER_NAME"
}

cmd_stop() {
  need_root
  local pid kids
  pid=$(running_pid) || { rm -f "$DIR/sshd.pid"; return 0; }
  # Killing the listener alone would leave the connections it serves open: end those too.
  kids=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
  kill "$pid"
  # shellcheck disable=SC2086
  [ -z "$kids" ] || kill $kids 2>/dev/null || true
  for _ in $(seq 1 100); do proc_alive "$pid" || break; sleep 0.02; done
  if proc_alive "$pid"; then kill -9 "$pid"; fi
  rm -f "$DIR/sshd.pid"
  log "stopped sshd pid $pid"
}

cmd_status() {
  local pid
  if pid=$(running_pid); then echo "up: pid $pid on $ADDR:$(cat "$DIR/port")"; else echo down; return 1; fi
}

cmd_env() {
  [ -s "$DIR/port" ] || die "not set up: run '$0 start' first"
  cat <<EOF
OV_BENCH_DIR=$DIR
OV_BENCH_HOST=$ADDR
OV_BENCH_PORT=$(cat "$DIR/port")
OV_BENCH_USER=$USER_NAME
OV_BENCH_KEY=$DIR/client_ed25519
OV_BENCH_KNOWN_HOSTS=$DIR/known_hosts
OV_BENCH_SSH_CONFIG=$DIR/ssh_config
OV_BENCH_SSHD_LOG=$DIR/sshd.log
EOF
}

cmd_purge() {
  cmd_stop
  rm -rf "$DIR"
  rm -f "/etc/sudoers.d/90-$USER_NAME"
  if id "$USER_NAME" >/dev/null 2>&1; then userdel -r "$USER_NAME" 2>/dev/null || userdel "$USER_NAME"; fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  purge) cmd_purge ;;
  *) echo "usage: $0 start|stop|status|env|purge" >&2; exit 2 ;;
esac
