# ---- step helpers: the core (from templates/lib/steps-core.sh, carried verbatim) ---------------
# Every value reaches these functions as a quoted argument, never as code.
# Called by the layer scripts layers/NN-<layer>/MM-<scope>.sh and by each layer's undo.sh.
# Every helper returns non-zero on failure (the scripts run under `set -e`; undo.sh checks each op).
#
# Run-time facts a layer records under "$OV_STATE" (one entry per line), read back by its undo.sh:
#   packages.<pac|deb|rpm>   packages this layer installed that were not installed before (for a
#                            pacman group: its name and the members that came with it)
#   release-packages.rpm     repository release packages installed by repository set-up
#   repo-files               repository files and keys written by repository set-up
#   pacman-repos             sections this layer added to /etc/pacman.conf
#   ppas                     PPAs this layer added
#   installed-files          "f <path>" / "d <path>" for what downloads extracted
#   services.enabled         "<scope> <unit>" units this layer enabled (they were not enabled before)
#   services.prior-enabled   "<scope> <unit>" units that were already enabled (left enabled at undo)
#   npm.packages  cargo.crates  pixi.projects  pixi.links    what the builders installed

export DEBIAN_FRONTEND=noninteractive

# BUILD_ARCH, OV_ARCH (the container-style architecture name, `${ARCH}` in layer files) and
# OV_FEDORA_RELEASE (`$(rpm -E %fedora)` in repository URLs) are set by the runtime part at the
# end of lib.sh, without a process, so no layer text is ever evaluated.

ov_fail() {
  printf 'ov: %s\n' "$*" >&2
  return 1
}

# ov_step N SUMMARY — one progress line per step, so a failure's last lines name the step. It goes
# to the step's output (run.sh keeps that in the run's log) and, when run.sh keeps the output out
# of the stream, also to run.sh's standard output (ov_step_fd, a variable of run.sh's that only
# root's own scripts see), so the display still shows each step.
ov_step() {
  if [ -n "${ov_step_fd:-}" ]; then
    printf 'ov: step %s: %s\n' "$1" "$2" >&"$ov_step_fd"
  fi
  printf 'ov: step %s: %s\n' "$1" "$2"
}

# ov_err_note STATUS COMMAND [exit] — the ERR trap of every step script (and the EXIT trap of a
# `cmd:` task's shell, with `exit`): print `ov: failed with status S at line N (FILE line M): CMD`
# on stderr, where N is the line in the step script and FILE line M where the command is when that
# is another file (lib.sh). Only a failure that ends the script is noted (errexit on): a command
# whose failure the script handles is not one. For `exit N` bash knows no line; the script's one
# line holding the command is named then, if there is exactly one.
ov_err_note() {
  local st=$1 cmd=${2//$'\n'/ } script=${ov_step_script:-$0} i line='' inner='' n=0 l
  [ "$st" != 0 ] || return 0
  if [ "${3:-}" = exit ]; then
    if [ -f "$script" ]; then
      i=0
      while IFS= read -r l || [ -n "$l" ]; do
        i=$((i + 1))
        case $l in *"$cmd"*) n=$((n + 1)) line=$i ;; esac
      done <"$script"
      [ "$n" = 1 ] || line=''
    fi
  else
    case $- in *e*) ;; *) return 0 ;; esac
    for ((i = 1; i < ${#BASH_SOURCE[@]}; i++)); do
      if [ "${BASH_SOURCE[i]}" = "$script" ]; then
        line=${BASH_LINENO[i - 1]}
        break
      fi
      [ -n "$inner" ] || inner="${BASH_SOURCE[i]##*/} line ${BASH_LINENO[i - 1]}"
    done
  fi
  printf 'ov: failed with status %s%s%s: %s\n' "$st" "${line:+ at line $line}" "${inner:+ ($inner)}" "$cmd" >&2
  return 0
}

# ov_ctx_dir LAYER — the layer's payload directory, which `cmd:` bodies know as /ctx. The path is
# spliced into layer shell unquoted, so it must not need quoting.
ov_ctx_dir() {
  local dir="$OV_BUNDLE/files/$1"
  case $dir in
    *[!A-Za-z0-9/._+:@-]*)
      ov_fail "the bundle directory $OV_BUNDLE has characters a /ctx path cannot carry; extract the bundle to a plain path"
      return 1
      ;;
  esac
  printf '%s\n' "$dir"
}

# ---- run-time facts ---------------------------------------------------------------------------

# ov_report LINE... — tell run.sh what this script created: root's scripts on descriptor
# OV_CREATED_FD (a file of root's), the user's scripts in the file OV_REPORT in the user's own copy
# (run.sh reads it after the layer, through a process of the user's).
ov_report() {
  if [ -n "${OV_REPORT:-}" ]; then
    printf '%s\n' "$@" >>"$OV_REPORT"
  elif [ -n "${OV_CREATED_FD:-}" ]; then
    printf '%s\n' "$@" >&"$OV_CREATED_FD"
  fi
}

# ov_state_add FILE LINE... — append lines to "$OV_STATE/FILE". OV_STATE is created here, on the
# first fact (run.sh creates it only when earlier runs recorded facts). In a user-scope script
# (OV_SCOPE=user) OV_STATE is the user's own copy, and each line is also reported to run.sh as
# `f FILE LINE`: run.sh keeps it among the layer's user facts, which undo acts on only as the user.
ov_state_add() {
  local f="${OV_STATE:?OV_STATE is not set}/$1" name=$1 l
  shift
  if [ ! -d "$OV_STATE" ]; then
    (umask 077 && mkdir -p -- "$OV_STATE") || return 1
  fi
  printf '%s\n' "$@" >>"$f" || return 1
  if [ "${OV_SCOPE:-system}" != system ]; then
    for l in "$@"; do
      while IFS= read -r l; do
        ov_report "f $name $l" || return 1
      done <<<"$l"
    done
  fi
}

# ---- quoting for files other shells read ------------------------------------------------------

# ov_sh_quote VALUE — VALUE as one single-quoted POSIX sh word (env.d files are read by sh too).
ov_sh_quote() {
  local q="'\\''"
  printf "'%s'" "${1//\'/"$q"}"
}

# ---- files ------------------------------------------------------------------------------------

# ov_owner_spec OWNER — "" stays "", "uid:gid" and "name:group" pass, "name" becomes "name:" (its
# login group).
ov_owner_spec() {
  case $1 in
    '' | *:*) printf '%s' "$1" ;;
    *) printf '%s:' "$1" ;;
  esac
}

# ov_dirname_v VAR PATH — dirname(1) of PATH into VAR, without a process.
ov_dirname_v() {
  local ov_dn=$2
  while [[ $ov_dn == */ && $ov_dn != / ]]; do ov_dn=${ov_dn%/}; done
  case $ov_dn in
    / | '') [ -n "$ov_dn" ] || ov_dn=. ;;
    */*)
      ov_dn=${ov_dn%/*}
      while [[ $ov_dn == */ ]]; do ov_dn=${ov_dn%/}; done
      [ -n "$ov_dn" ] || ov_dn=/
      ;;
    *) ov_dn=. ;;
  esac
  printf -v "$1" '%s' "$ov_dn"
}

# ov_root_guard DIR — as root in a system step: refuse to create or write into DIR when a
# directory on the way (DIR included) belongs to another account or is one another account can
# write without the sticky bit (group- or world-writable: it could put a link where root's next
# directory goes), or a link on the way sits in a sticky directory such as /tmp (another account
# may own it). A link on the way counts by the whole way to its target (a root link into a
# directory of the account's would let the account choose where it leads). Root writes only
# where root alone decides what is there; a user's files are
# written by a user-scope step, as that user. Every helper that writes a file goes through
# ov_mkdir_p (which calls this) for the file's directory and replaces the file itself with a
# rename (`mv -T`, never into a directory a link names).
# Modes come from ov_chain_seen: run.sh's one `stat` before its first step covers the directories
# its system steps write into (OV_M_GUARD_DIRS, from the plan); a directory that did not exist
# then (ov_chain_absent) was made during the run below directories only root can write, so by
# root; anything else on the way is looked at with one `stat` here (a link: the way to its
# target, in its place).
# An answer stays good for the run for the reason ov_chain_stat gives — until root's own code
# runs (a `cmd:`, a package's maintainer scripts, a started service: ov_root_code_ran, after each
# such step and in run.sh after each such layer): it may have opened a directory to others, or
# made one the table calls missing. From then on only what was looked at since counts
# (ov_chain_fresh: this process's own `stat`s and the modes it gave), and the rest of the way
# gets one `stat` again.
# A directory this process has just walked, or made below a walked one for root (ov_guard_ok:
# the process and the path), is not walked again until root's own code runs: no other account
# owns anything on its way, so none can have changed it since.
# ov_guard_stat PATH... — one `stat` of the PATHs into ov_chain_seen (`UID MODE TYPE`), as
# ov_chain_stat of the runtime part does for run.sh before it reads this file.
ov_guard_stat() {
  local e
  local -a info=()
  # (`exec`: a step's shell has an ERR trap, so a subshell would fork once more to run the command)
  mapfile -d '' -t info < <(exec stat --printf '%u %a %F\t%n\0' -- "$@" 2>/dev/null)
  for e in ${info[@]+"${info[@]}"}; do
    ov_chain_seen["${e#*$'\t'}"]=${e%%$'\t'*}
    ov_chain_fresh["${e#*$'\t'}"]=1
  done
}

ov_guard_ok=''
# (-g: the table of run.sh's runtime part, kept when run.sh reads this file; a new one otherwise)
declare -gA ov_chain_seen ov_chain_absent ov_chain_fresh
: "${ov_chain_stale:=0}"

# ov_root_code_ran — root's own code ran (see ov_root_guard): forget what the guard knew.
ov_root_code_ran() {
  ov_chain_stale=1 ov_guard_ok=''
  ov_chain_fresh=()
}

ov_root_guard() {
  local rest=${1#/} seg d=/ line m sticky=0 asked=0 links=0 t
  [[ $EUID == 0 && ${OV_SCOPE:-system} == system && $1 == /* ]] || return 0
  [[ $ov_guard_ok != "$BASHPID $1" ]] || return 0
  case /$1/ in
    */../* | */./*)
      ov_fail "refusing $1: a path ov writes may not hold . or .. components"
      return 1
      ;;
  esac
  # From `/` down, each directory on the way that exists (the walk ends at the first that does
  # not, or at a file: a file at the end is replaced by a rename, whose it was does not matter).
  # A link on the way is followed: the way to its target is walked in its place (from `/` for
  # an absolute target), so every directory the path goes through is looked at, not only the
  # one it ends in. `d` is always a path without links, all of whose directories were looked at.
  while :; do
    [[ -d $d ]] || return 0
    if [[ ! -O $d ]]; then
      ov_fail "refusing to write $1 as root: $d belongs to another account (write it from a user-scope step, as that account)"
      return 1
    fi
    line=${ov_chain_seen["$d"]-}
    # (what was not a directory when the table was made is looked at again; after root's own
    # code, whatever was not looked at since)
    [[ $line == *' directory' ]] || line=''
    if ((ov_chain_stale)) && [[ -z ${ov_chain_fresh["$d"]+x} ]]; then line=''; fi
    if [[ -z $line ]] && { ((ov_chain_stale)) || [[ -z ${ov_chain_absent["$d"]+x} ]]; }; then
      # (the table lacks it: one `stat` for it and the rest of the way)
      ((asked)) || ov_guard_stat_way "$d" "$rest"
      asked=1
      line=${ov_chain_seen["$d"]-}
      [[ $line == *' directory' ]] || line=''
      if [[ -z $line ]]; then
        ov_fail "refusing to write $1 as root: cannot tell whether another account can change $d (\`stat\` gave no answer)"
        return 1
      fi
    fi
    # (a directory made during the run has no line unless a step reported the mode it gave it)
    if [[ -n $line ]]; then
      m=${line#* }
      m=${m%% *}
      if [[ -z $m || $m == *[!0-7]* ]]; then
        ov_fail "refusing to write $1 as root: cannot tell whether another account can change $d (\`stat\` said: $line)"
        return 1
      fi
      if (((8#$m & 8#1000) == 0 && (8#$m & 8#022) != 0)); then
        ov_fail "refusing to write $1 as root: $d can be changed by another account (mode $m)"
        return 1
      fi
    fi
    if [[ -k $d ]]; then sticky=1; else sticky=0; fi
    # The next component: none (done), `..` of a link's target (`d` has no links: its parent,
    # looked at already), or a name, followed when it is a link.
    while :; do
      [[ -n $rest ]] || break 2
      seg=${rest%%/*}
      if [[ $rest == */* ]]; then rest=${rest#*/}; else rest=''; fi
      [[ -n $seg && $seg != . ]] || continue
      if [[ $seg == .. ]]; then
        d=${d%/*}
        [[ -n $d ]] || d=/
        continue 2
      fi
      if [[ $d == / ]]; then t=/$seg; else t=$d/$seg; fi
      if [[ -L $t ]]; then
        if ((sticky)); then
          ov_fail "refusing to write $1 as root: $t is a link in a directory every account can write"
          return 1
        fi
        if ((++links > 40)); then
          ov_fail "refusing to write $1 as root: too many links on the way"
          return 1
        fi
        t=$(exec readlink -- "$t") && [[ -n $t ]] || {
          ov_fail "refusing to write $1 as root: cannot read the link $d/$seg"
          return 1
        }
        # (its target's way is new: the table may lack it)
        asked=0
        if [[ $t == /* ]]; then
          d=/ rest=${t#/}/$rest
          continue 2
        fi
        rest=$t/$rest
        continue
      fi
      [[ -e $t ]] || return 0
      d=$t
      continue 2
    done
  done
  ov_guard_ok="$BASHPID $1"
}

# ov_guard_stat_way DIR REST — ov_guard_stat of DIR and of each directory after it on the way
# (REST: the components still to come) that exists, up to the first link (ov_root_guard walks
# the way to its target in its place).
ov_guard_stat_way() {
  local d=$1 rest=$2 seg
  local -a ask=()
  while :; do
    ask+=("$d")
    [[ -n $rest ]] || break
    seg=${rest%%/*}
    if [[ $rest == */* ]]; then rest=${rest#*/}; else rest=''; fi
    [[ -n $seg && $seg != . && $seg != .. ]] || break
    if [[ $d == / ]]; then d=/$seg; else d+=/$seg; fi
    [[ -d $d && ! -L $d ]] || break
  done
  ov_guard_stat "${ask[@]}"
}

# ov_mkdir_p DIR [OWNER] [MODE] — create DIR and missing parents (with MODE: `install -d -m MODE`,
# which also sets the mode of an existing DIR); only the directories created here are given to
# OWNER (existing ones keep their owner and mode), and only when the caller is done in them: a
# caller that passes OWNER ends with ov_owner_give (ov_settle and ov_mkdir do, and the merge of
# a download).
# No process when DIR exists and MODE is empty.
ov_mkdir_p() {
  local dir=$1 owner=${2:-} mode=${3:-} d created=()
  ov_root_guard "$dir" || return 1
  d=$dir
  while [ -n "$d" ] && [ "$d" != / ] && [ "$d" != . ] && [ ! -e "$d" ] && [ ! -L "$d" ]; do
    created+=("$d")
    ov_dirname_v d "$d"
  done
  if [ -n "$mode" ]; then
    install -d -m "$mode" -- "$dir" || return 1
    # The mode root's next walk through DIR must see (a layer may open a directory to others):
    # in this process, and in run.sh's table for the layers after this one (ov_reported_v).
    if [[ $EUID == 0 && ${OV_SCOPE:-system} == system ]]; then
      ov_chain_seen["$dir"]="0 $mode directory"
      ov_chain_fresh["$dir"]=1
      { ov_report "m $mode $dir"; } 2>/dev/null || true
    fi
  elif [ "${#created[@]}" -gt 0 ] || [ ! -d "$dir" ]; then
    mkdir -p -- "$dir" || return 1
  fi
  if [ "${#created[@]}" -gt 0 ] && [[ $EUID == 0 && ${OV_SCOPE:-system} == system ]]; then
    # Made here for root, below directories the guard found root's — unless another account
    # made one first, between the guard and `mkdir -p` (which takes what it finds): then root
    # neither writes into it nor gives it away (`chown` would go where its link leads).
    for d in "${created[@]}"; do
      if [[ ! -O $d || -L $d ]]; then
        ov_fail "refusing to write $dir as root: $d was made by another account meanwhile (write it from a user-scope step, as that account)"
        return 1
      fi
    done
  fi
  if [ -n "$owner" ] && [ "${#created[@]}" -gt 0 ]; then
    # Given to OWNER only once the step is done in them (ov_owner_give): until then they are
    # root's alone, so root never works in a directory another account can change. (Newer
    # first: one made later is never above one made before.)
    ov_owner_pending=("${created[@]}" ${ov_owner_pending[@]+"${ov_owner_pending[@]}"})
    ov_owner_to=$owner
  elif [ "${#created[@]}" -gt 0 ]; then
    # (root's alone: the next step need not walk them)
    ov_guard_ok="$BASHPID $dir"
  fi
  # Tell run.sh what was created (its descriptor; see OV_CREATED_FD in docs/bundle-runtime.md),
  # so the layer's undo can remove these directories again once they are empty.
  if [ "${#created[@]}" -gt 0 ]; then
    { ov_report "${created[@]/#/d }"; } 2>/dev/null || true
  fi
}

# ov_mkdir DIR [MODE] [OWNER] — the `mkdir:` task: parents as needed, then `install -d -m MODE`.
ov_mkdir() {
  ov_mkdir_p "$1" "${3:-}" "${2:-}" && ov_owner_give
}

# ov_owner_give — give the directories ov_mkdir_p made for an owner to it, now that the step is
# done in them: the deepest first, so that each `chown -h` goes through directories that are still
# root's alone (after one is given away, its account could put a link in it).
ov_owner_pending=() ov_owner_to=''
ov_owner_give() {
  [ "${#ov_owner_pending[@]}" -gt 0 ] || return 0
  chown -h -- "$(ov_owner_spec "$ov_owner_to")" "${ov_owner_pending[@]}" || return 1
  ov_owner_pending=()
}

# ov_settle TMP DEST OWNER — the last move of every write: TMP (a file or link made beside DEST)
# gets OWNER (`chown -h`: a link itself, never what it points at) and is renamed over DEST in one
# step, and what DEST now holds is recorded for undo; then the directories made for OWNER are
# given to it (ov_owner_give). On failure TMP goes and nothing changed.
ov_settle() {
  local tmp=$1 dest=$2 owner=$3
  if { [ -z "$owner" ] || chown -h -- "$(ov_owner_spec "$owner")" "$tmp"; } &&
    mv -fT -- "$tmp" "$dest"; then
    ov_backup_sum "$dest" && ov_owner_give
    return
  fi
  rm -f -- "$tmp"
  return 1
}

# ov_write_file DEST MODE CONTENT [OWNER] — write CONTENT byte for byte: a temporary file in the
# destination's directory, then one rename, so readers never see a half-written file. The
# temporary file is created exclusively (noclobber: O_EXCL), with MODE through the umask when MODE
# has no execute or special bits (no chmod), else with 0600 and then chmod. No subshell: the
# umask is set for the write and then back to 022, the umask every step script runs with.
ov_write_file() {
  local dest=$1 mode=$2 content=$3 owner=${4:-} dir tmp um=077 chm=1 m noclobber=0 ok=0
  ov_dirname_v dir "$dest"
  ov_mkdir_p "$dir" "$owner" || return 1
  tmp=$dir/.ov-tmp.$BASHPID.$RANDOM$RANDOM
  case $mode in
    [0-7][0-7][0-7] | 0[0-7][0-7][0-7])
      m=$((8#$mode))
      if (((m & 8#111) == 0)); then
        printf -v um '%03o' $((~m & 8#777))
        chm=0
      fi
      ;;
  esac
  ov_backup "$dest" || return 1
  [[ $- == *C* ]] && noclobber=1
  set -C
  umask "$um"
  { printf '%s' "$content" >"$tmp"; } 2>/dev/null && ok=1
  umask 022
  ((noclobber)) || set +C
  if ((ok)) && { [ "$chm" = 0 ] || chmod -- "$mode" "$tmp"; }; then
    ov_settle "$tmp" "$dest" "$owner" || return 1
    return 0
  fi
  if ((ok)); then
    rm -f -- "$tmp"
  else
    ov_fail "cannot create the temporary file $tmp"
  fi
  return 1
}

# ov_install_file SRC DEST MODE [OWNER] — install a payload file from the bundle, atomically.
ov_install_file() {
  local src=$1 dest=$2 mode=$3 owner=${4:-} dir tmp
  [ -f "$src" ] || {
    ov_fail "payload file $src is missing from the bundle"
    return 1
  }
  ov_dirname_v dir "$dest"
  ov_mkdir_p "$dir" "$owner" || return 1
  ov_backup "$dest" || return 1
  tmp=$(exec mktemp -- "$dir/.ov-tmp.XXXXXXXX") || return 1
  if install -m "$mode" -- "$src" "$tmp"; then
    ov_settle "$tmp" "$dest" "$owner" || return 1
    return 0
  fi
  rm -f -- "$tmp"
  return 1
}

# ov_link TARGET LINK [OWNER] — the `link:` task: like `ln -sfn`, but a new link beside LINK
# renamed over it (readers never see LINK missing; an existing directory is refused, not entered).
ov_link() {
  local target=$1 link=$2 owner=${3:-} dir tmp
  ov_dirname_v dir "$link"
  ov_mkdir_p "$dir" "$owner" || return 1
  ov_backup "$link" || return 1
  tmp=$dir/.ov-tmp.$BASHPID.$RANDOM$RANDOM
  ln -s -- "$target" "$tmp" || return 1
  ov_settle "$tmp" "$link" "$owner"
}

# ---- what a step replaced ---------------------------------------------------------------------
# Before a helper replaces a path that exists (a file, a link, from an earlier install or by hand),
# the path is saved — content, mode, owner, timestamps and extended attributes (file capabilities
# are one) — in the layer's backup directory DIR, and undo puts it back. The index beside it,
# DIR.index, says, one line each, what the layer did to which path:
#   n PATH       PATH did not exist: the layer created it (undo removes it)
#   b N PATH     PATH existed: its former self is the file DIR/N (undo restores it)
#   s N SUM      what the layer last wrote at backup N's path (sha256, or l:TARGET for a link);
#                undo restores only when the path still holds that, else keeps it and says so
# A system step's are in root's ledger (OV_LEDGER/layers/LAYER.bak); a user step's are the user's
# own (~/.local/state/overthink/backup/LAYER), written and read only by the user. DIR itself is
# made only when something is saved: noting a new path is one append, no process.

# ov_backup_dir_v VAR SCOPE — the layer's backup directory for that scope.
ov_backup_dir_v() {
  if [ "$2" = system ]; then
    printf -v "$1" '%s' "${OV_LEDGER:?OV_LEDGER is not set}/layers/${OV_LAYER:?OV_LAYER is not set}.bak"
  else
    printf -v "$1" '%s' "${OV_HOME:?OV_HOME is not set}/.local/state/overthink/backup/${OV_LAYER:?OV_LAYER is not set}"
  fi
}

# ov_backup_dir_make DIR [parent] — create DIR (or only the directory its index lies in), 0700:
# root's with root's umask; the user's through ov_mkdir_p, so the directories made for it are
# recorded and removed at undo.
ov_backup_dir_make() {
  local d=$1
  [ -z "${2:-}" ] || ov_dirname_v d "$1"
  [ ! -d "$d" ] || return 0
  if [ "${OV_SCOPE:-system}" = system ]; then
    (umask 077 && mkdir -p -- "$d")
  else
    ov_mkdir_p "$d" '' 0700
  fi
}

# ov_backup_load DIR — read DIR.index once per process into memory (ov_bk_*), so that a layer
# writing many files reads its index once, not once per file. Keyed by the process: a subshell
# that appends starts from the file, never from a copy its parent read earlier.
ov_bk_loaded=''
ov_backup_load() {
  local line
  [ "$ov_bk_loaded" != "$BASHPID $1" ] || return 0
  declare -gA ov_bk_kind=() ov_bk_num=() ov_bk_sum=() ov_bk_path=()
  ov_bk_count=0
  if [ -f "$1.index" ]; then
    while IFS= read -r line; do
      ov_backup_mem "$line"
    done <"$1.index"
  fi
  ov_bk_loaded="$BASHPID $1"
}

# ov_backup_mem LINE — take one index line into what ov_backup_load read.
ov_backup_mem() {
  local rest
  case $1 in
    'n '*) ov_bk_kind["${1#n }"]=n ;;
    'b '*)
      rest=${1#b }
      ov_bk_kind["${rest#* }"]=b
      ov_bk_num["${rest#* }"]=${rest%% *}
      ov_bk_sum["${rest#* }"]=''
      ov_bk_path["${rest%% *}"]=${rest#* }
      ov_bk_count=$((ov_bk_count + 1))
      ;;
    's '*)
      rest=${1#s }
      if [ -n "${ov_bk_path["${rest%% *}"]+x}" ]; then
        ov_bk_sum["${ov_bk_path["${rest%% *}"]}"]=${rest#* }
      fi
      ;;
  esac
}

# ov_backup_note DIR LINE — append LINE to DIR.index, and to what ov_backup_load read.
ov_backup_note() {
  printf '%s\n' "$2" >>"$1.index" || return 1
  [ "$ov_bk_loaded" != "$BASHPID $1" ] || ov_backup_mem "$2"
}

# ov_backup_find_v VAR DIR PATH — VAR = "n", "b N SUM" (SUM may be empty) or "" for PATH in
# DIR.index.
ov_backup_find_v() {
  ov_backup_load "$2" || return 1
  case ${ov_bk_kind["$3"]:-} in
    n) printf -v "$1" '%s' n ;;
    b) printf -v "$1" '%s' "b ${ov_bk_num["$3"]} ${ov_bk_sum["$3"]}" ;;
    *) printf -v "$1" '%s' '' ;;
  esac
}

# ov_backup PATH — before replacing PATH: save it unless this layer already holds its former self
# or created it. Sets OV_BACKED (the backup's number, or empty) for ov_backup_sum.
ov_backup() {
  local p=$1 dir found n
  OV_BACKED=''
  case $p in
    *$'\n'*)
      ov_fail "refusing to replace $p: a path with a newline cannot be recorded for undo"
      return 1
      ;;
  esac
  ov_backup_dir_v dir "${OV_SCOPE:-system}" || return 1
  ov_backup_find_v found "$dir" "$p"
  case $found in
    n) return 0 ;;
    b\ *)
      found=${found#b }
      OV_BACKED=${found%% *}
      return 0
      ;;
  esac
  if [ ! -e "$p" ] && [ ! -L "$p" ]; then
    ov_backup_dir_make "$dir" parent || return 1
    ov_backup_note "$dir" "n $p" || return 1
    return 0
  fi
  if [ -d "$p" ] && [ ! -L "$p" ]; then
    ov_fail "refusing to replace the directory $p with a file"
    return 1
  fi
  ov_backup_dir_make "$dir" || return 1
  n=$((ov_bk_count + 1))
  rm -f -- "$dir/$n" &&
    cp -a --no-dereference -- "$p" "$dir/$n" &&
    ov_backup_note "$dir" "b $n $p" || {
    ov_fail "cannot save $p before replacing it"
    return 1
  }
  echo "ov: saved $p (it existed before; undo puts it back)"
  OV_BACKED=$n
}

# ov_backup_sum PATH — after writing PATH: record what is there now, when it replaced something.
ov_backup_sum() {
  local p=$1 dir sum
  [ -n "${OV_BACKED:-}" ] || return 0
  ov_backup_dir_v dir "${OV_SCOPE:-system}" || return 1
  ov_path_sum_v sum "$p" || return 1
  ov_backup_note "$dir" "s $OV_BACKED $sum"
}

# ov_path_sum_v VAR PATH — "l:TARGET" for a link, the sha256 of a file, "" when absent, "other".
ov_path_sum_v() {
  local t
  if [ -L "$2" ]; then
    t=$(exec readlink -- "$2") || return 1
    t=l:$t
  elif [ -f "$2" ]; then
    t=$(exec sha256sum <"$2") || return 1
    t=${t%% *}
  elif [ -e "$2" ]; then
    t=other
  else
    t=''
  fi
  printf -v "$1" '%s' "$t"
}

# ---- running a task as another account ------------------------------------------------------

# ov_run_func_as ACCOUNT FUNCTION — run a shell function (a `cmd:` task) as ACCOUNT (a name or uid,
# optionally `:group`) with that account's HOME; only root can do this.
ov_run_func_as() {
  local who=${1%%:*} fn=$2 name home shell e
  name=$(getent passwd "$who" | cut -d: -f1) || true
  home=$(getent passwd "$who" | cut -d: -f6) || true
  [ -n "$name" ] || {
    ov_fail "account $who does not exist on this machine"
    return 1
  }
  shell=$(getent passwd "$who" | cut -d: -f7) || true
  # The account's own environment only (see ov_user_env_v): nothing of root's run goes along
  # but the OV_* variables, LANG, LC_* and TERM.
  local -a env=() keep=()
  ov_user_env_v env
  for e in "${env[@]}"; do
    case $e in HOME=* | USER=* | LOGNAME=* | SHELL=* | OV_STATE=* | OV_REPORT=*) ;; *) keep+=("$e") ;; esac
  done
  # Its output reaches ours through root's pipes, never as the run's log itself (ov_as_user).
  # The task's text (its `env:` values too) goes on descriptor 3, never in an argument: every
  # account can read a process's arguments (/proc/PID/cmdline).
  # shellcheck disable=SC2016,SC2154 # run by the account's bash; ov_nosess: the runtime part's
  (cd / && ${ov_nosess[@]+"${ov_nosess[@]}"} runuser -u "$name" -- env -i "${keep[@]}" HOME="$home" USER="$name" LOGNAME="$name" \
    SHELL="${shell:-/bin/sh}" bash -c 'IFS= read -r -d "" ov_code <&3; exec 3<&-; eval "$ov_code"' ov-task \
    3<<<"$(declare -f ov_err_note "$fn"); $fn") </dev/null 6>&- 7>&- 8>&- 9>&- \
    > >(cat) 2> >(cat >&2)
}

# ---- the user's shell profile -----------------------------------------------------------------

# ov_block_set FILE MATCH BEGIN END LINE... — replace the block from the first line starting with
# MATCH to the next END line by BEGIN, LINEs, END (later duplicate blocks are dropped), or append
# it; the file is rewritten atomically and only when it changes. A symlinked FILE is followed.
ov_block_set() {
  local file=$1 match=$2 begin=$3 end=$4
  shift 4
  ov_block_edit "$file" "$match" "$end" "$begin" "$@"
}

ov_block_edit() {
  local file=$1 match=$2 end=$3 target line edited='' old='' block='' state=0 placed=0 dir tmp
  shift 3
  if [ "$#" -gt 0 ]; then
    for line in "$@"; do block+=$line$'\n'; done
    block+=$end$'\n'
  fi
  target=$file
  if [ -L "$file" ]; then
    target=$(readlink -f -- "$file") || return 1
  fi
  if [ -f "$target" ]; then
    old=$(cat -- "$target"; printf x) || return 1
    old=${old%x}
    while IFS= read -r line || [ -n "$line" ]; do
      if [ "$state" = 0 ]; then
        if [[ $line == "$match"* ]]; then
          state=1
          if [ "$placed" = 0 ] && [ -n "$block" ]; then
            edited+=$block
            placed=1
          fi
        else
          edited+=$line$'\n'
        fi
      elif [ "$line" = "$end" ]; then
        state=0
      fi
    done <"$target"
    if [ "$state" = 1 ]; then
      ov_fail "$target has an unterminated '$match' block; fix it by hand (nothing was changed)"
      return 1
    fi
  fi
  if [ "$placed" = 0 ] && [ -n "$block" ]; then
    if [ -n "$edited" ]; then edited+=$'\n'; fi
    edited+=$block
  fi
  [ "$edited" = "$old" ] && return 0
  ov_dirname_v dir "$target"
  mkdir -p -- "$dir" || return 1
  tmp=$(mktemp -- "$dir/.ov-tmp.XXXXXXXX") || return 1
  if printf '%s' "$edited" >"$tmp" &&
    if [ -e "$target" ]; then
      chmod --reference="$target" -- "$tmp" && { [ "$(id -u)" != 0 ] || chown --reference="$target" -- "$tmp"; }
    else
      chmod 0644 -- "$tmp"
    fi && mv -f -- "$tmp" "$target"; then
    return 0
  fi
  rm -f -- "$tmp"
  return 1
}

OV_PROFILE_BEGIN='# overthink:begin (managed by ov; do not edit inside this block)'
OV_PROFILE_END='# overthink:end'

# ov_envd_write LAYER [e NAME VALUE | p ENTRY]... — write ~/.config/overthink/env.d/LAYER.env:
# values single-quoted, PATH entries appended once each (`$PATH` itself expands when sourced).
ov_envd_write() {
  local content
  ov_envd_text_v content "$@" || return 1
  ov_write_file "$OV_HOME/.config/overthink/env.d/$1.env" 0644 "$content"
}

# ov_envd_text_v VAR LAYER [e NAME VALUE | p PATH]... — VAR = the text of LAYER's env.d file.
ov_envd_text_v() {
  local -n ov_et_out=$1
  local layer=$2 ov_et_text ov_et_q
  shift 2
  ov_et_text="# overthink env for layer $layer - managed by ov; do not edit"$'\n'
  while [ "$#" -gt 0 ]; do
    case $1 in
      e)
        [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || {
          ov_fail "invalid environment variable name: $2"
          return 1
        }
        ov_et_text+="export $2=$(ov_sh_quote "$3")"$'\n'
        shift 3
        ;;
      p)
        ov_et_q=$(ov_sh_quote "$2")
        ov_et_text+="case \":\$PATH:\" in *:$ov_et_q:*) ;; *) export PATH=\"\$PATH:\"$ov_et_q ;; esac"$'\n'
        shift 2
        ;;
      *)
        ov_fail "ov_envd_write: bad item $1"
        return 1
        ;;
    esac
  done
  # shellcheck disable=SC2034 # a nameref: assigns the caller's variable
  ov_et_out=$ov_et_text
}

# The managed block's body: sources every env.d file when the profile is read ("$HOME" quoted, the
# glob outside the quotes so it expands). The same bytes as the runtime part of lib.sh writes.
# shellcheck disable=SC2016
OV_PROFILE_BODY='for ov_f in "$HOME"/.config/overthink/env.d/*.env; do if [ -r "$ov_f" ]; then . "$ov_f"; fi; done; unset ov_f'

# ov_profile_block — the managed block in ~/.profile and ~/.bashrc, replaced in place (or
# appended), written atomically.
ov_profile_block() {
  local f
  for f in "$OV_HOME/.profile" "$OV_HOME/.bashrc"; do
    ov_block_set "$f" '# overthink:begin' "$OV_PROFILE_BEGIN" "$OV_PROFILE_END" "$OV_PROFILE_BODY" ||
      return 1
  done
}

# ---- end of the core helpers -------------------------------------------------------------------
# The core above serves the steps most layers have: files, directories, links, commands, env.d
# and the profile block (and what those helpers call). run.sh reads lib.sh only up to here when no
# system script of its bundle names a helper below (OV_M_LIB_CORE): bash parses a quarter of the
# helpers, and every process run.sh forks afterwards copies a smaller shell.
if [[ ${ov_lib_core_only:-} == "$$" ]]; then return 0; fi
