# ---- step helpers beyond the core (from templates/lib/steps.sh, carried verbatim) --------------
# Packages, services, builders, downloads, undo and check mode; the core helpers (steps-core.sh)
# come before these in lib.sh.

# ov_say TEXT — a line for the run's output, not only its log (like ov_step's): what the operator
# should see without --verbose, e.g. which layers a package transaction served.
ov_say() {
  if [ -n "${ov_step_fd:-}" ]; then
    printf 'ov: %s\n' "$1" >&"$ov_step_fd"
  fi
  printf 'ov: %s\n' "$1"
}

# ov_state_has FILE LINE — whether the exact line is recorded.
ov_state_has() {
  [ -n "${OV_STATE:-}" ] && [ -f "$OV_STATE/$1" ] && grep -Fxq -- "$2" "$OV_STATE/$1"
}

# ov_state_once FILE LINE — record LINE unless it is there already.
ov_state_once() {
  ov_state_has "$1" "$2" || ov_state_add "$1" "$2"
}

# ov_state_merge FILE — append the lines read from stdin that FILE does not hold yet.
ov_state_merge() {
  local f="${OV_STATE:?OV_STATE is not set}/$1" new
  new=$(awk -v f="$f" 'BEGIN { while ((getline l < f) > 0) seen[l] = 1 }
    !($0 in seen) { seen[$0] = 1; print }') || return 1
  if [ -n "$new" ]; then
    ov_state_add "$1" "$new"
  fi
}

# ov_state_lines FILE — print the recorded lines (nothing when absent).
ov_state_lines() {
  if [ -n "${OV_STATE:-}" ] && [ -f "$OV_STATE/$1" ]; then
    cat -- "$OV_STATE/$1"
  fi
}

# ov_facts SCOPE FILE — the lines of FILE a reverse op of SCOPE may act on: root's facts for a
# system op; for a user op also what the user's own scripts reported (OV_STATE/user/FILE), which
# is the user's word and so is only ever acted on as the user.
ov_facts() {
  ov_state_lines "$2"
  if [ "$1" != system ] && [ -n "${OV_STATE:-}" ] && [ -f "$OV_STATE/user/$2" ]; then
    cat -- "$OV_STATE/user/$2"
  fi
}

# ov_facts_has SCOPE FILE LINE — whether ov_facts SCOPE FILE holds the exact line.
ov_facts_has() {
  ov_state_has "$2" "$3" && return 0
  [ "$1" != system ] && [ -n "${OV_STATE:-}" ] && [ -f "$OV_STATE/user/$2" ] &&
    grep -Fxq -- "$3" "$OV_STATE/user/$2"
}

# ov_setcap CAPS FILE — set file capabilities; empty CAPS removes them all (`setcap -r`), and a
# file that has none is left as it is (so a re-run succeeds).
ov_setcap() {
  local caps=$1 file=$2 dir line m
  # As root, capabilities go only to a file of root's that no other account can change, reached
  # through directories the guard accepts, and never through a link: else another account could
  # put its own program there and root would give it the capabilities. (Looked at afresh: the
  # file may have changed during the run.)
  if [[ $EUID == 0 && ${OV_SCOPE:-system} == system ]]; then
    ov_dirname_v dir "$file"
    ov_root_guard "$dir" || return 1
    if [[ -L $file ]]; then
      ov_fail "refusing to set capabilities on $file as root: it is a link"
      return 1
    fi
    if [ -n "$caps" ] && [[ -e $file ]]; then
      unset 'ov_chain_seen[$file]'
      ov_guard_stat "$file"
      line=${ov_chain_seen["$file"]-}
      unset 'ov_chain_seen[$file]'
      m=${line#* }
      m=${m%% *}
      if [[ ${line%% *} != 0 || ! $m =~ ^[0-7]+$ ]] || (((8#$m & 8#022) != 0)); then
        ov_fail "refusing to set capabilities on $file as root: another account owns it or can change it (${line:-no answer from stat})"
        return 1
      fi
    fi
  fi
  if [ -z "$caps" ]; then
    if [ -n "$(getcap -- "$file" 2>/dev/null)" ]; then
      setcap -r "$file" || return 1
    fi
    return 0
  fi
  setcap "$caps" "$file"
}

# ---- downloads --------------------------------------------------------------------------------

# ov_download URL DEST EXTRACT STRIP MODE OWNER [MEMBER...]
#   EXTRACT none: DEST is the file (mode MODE, default 0755); sh: the script is run;
#   tar.gz tar.xz tar.zst zip: the archive is unpacked into a staging directory (STRIP leading
#   components removed, only MEMBERs if given), then merged into the directory DEST. What was
#   installed is recorded in "$OV_STATE/installed-files" for undo.
ov_download() {
  local tmp rc=0
  tmp=$(mktemp -d) || return 1
  ov_download_in "$tmp" "$@" || rc=1
  rm -rf -- "$tmp"
  return "$rc"
}

ov_download_in() {
  local tmp=$1 url=$2 dest=$3 extract=$4 strip=$5 mode=$6 owner=$7 dir
  shift 7
  ov_need_curl || return 1
  echo "ov: downloading $url"
  curl -fsSL --retry 3 --connect-timeout 30 -o "$tmp/download" "$url" || {
    ov_fail "download of $url failed"
    return 1
  }
  case $extract in
    none)
      ov_dirname_v dir "$dest"
      ov_mkdir_p "$dir" "$owner" || return 1
      ov_install_file "$tmp/download" "$dest" "${mode:-0755}" "$owner" || return 1
      ov_state_add installed-files "f $dest" || return 1
      return 0
      ;;
    sh)
      chmod 0755 "$tmp/download" || return 1
      (cd "$tmp" && sh ./download) || return 1
      return 0
      ;;
  esac
  mkdir "$tmp/x" || return 1
  if ! ov_unpack "$tmp" "$extract" "$strip" "$@"; then
    ov_fail "cannot unpack $url as $extract"
    return 1
  fi
  # Nothing an archive brings stays writable by other accounts (root unpacks with the archive's
  # modes): the guard takes a directory that was not there when the run began for one root made
  # closed, and root writes below it — in the merge itself, and in later steps.
  find "$tmp/x" ! -type l -perm /022 -exec chmod go-w -- {} + || return 1
  ov_merge_into "$tmp/x" "$dest" "$mode" "$owner"
}

# ov_unpack TMP EXTRACT STRIP [MEMBER...] — TMP/download into TMP/x.
ov_unpack() {
  local tmp=$1 extract=$2 strip=$3
  shift 3
  case $extract in
    tar.gz) tar -xzf "$tmp/download" -C "$tmp/x" --no-same-owner ${strip:+"--strip-components=$strip"} -- "$@" ;;
    tar.xz) tar -xJf "$tmp/download" -C "$tmp/x" --no-same-owner ${strip:+"--strip-components=$strip"} -- "$@" ;;
    tar.zst) tar --zstd -xf "$tmp/download" -C "$tmp/x" --no-same-owner ${strip:+"--strip-components=$strip"} -- "$@" ;;
    zip)
      mkdir "$tmp/z" &&
        unzip -q -o "$tmp/download" "$@" -d "$tmp/z" &&
        ov_strip_into "$tmp/z" "$tmp/x" "${strip:-0}"
      ;;
    *)
      ov_fail "unknown extract type $extract"
      ;;
  esac
}

# ov_strip_into FROM TO N — move what lies N levels below FROM into TO (zip has no --strip-components).
ov_strip_into() {
  local from=$1 to=$2 n=$3 e
  while IFS= read -r -d '' e; do
    cp -a -- "$e" "$to/" || return 1
  done < <(find "$from" -mindepth "$((n + 1))" -maxdepth "$((n + 1))" -print0)
}

# ov_merge_into STAGE DEST MODE OWNER — merge an unpacked tree into DEST, keeping DEST's symlinked
# directories (merged-/usr systems), and record every file and every new directory.
ov_merge_into() {
  local stage=$1 dest=$2 mode=$3 owner=$4 e rel list=() have=() give=()
  if [ ! -e "$dest" ]; then
    list+=("d $dest")
  fi
  ov_mkdir_p "$dest" "$owner" || return 1
  while IFS= read -r -d '' e; do
    rel=${e#"$stage"/}
    case $rel in
      *$'\n'*)
        ov_fail "archive member with a newline in its name: refusing to install it"
        return 1
        ;;
    esac
    if [ -d "$e" ] && [ ! -L "$e" ]; then
      if [ ! -e "$dest/$rel" ]; then
        list+=("d $dest/$rel")
      else
        have+=("$dest/$rel")
      fi
    else
      list+=("f $dest/$rel")
    fi
  done < <(find "$stage" -mindepth 1 -print0)
  # tar goes into (and through links at) directories DEST already has: each is guarded as DEST
  # was (one `stat` for them all first), so none is one another account can change.
  if [ "${#have[@]}" -gt 0 ]; then
    ov_guard_stat "${have[@]}" "${have[@]/%//.}"
    for e in "${have[@]}"; do
      ov_root_guard "$e" || return 1
    done
  fi
  if [ "${#list[@]}" -gt 0 ]; then
    printf '%s\n' "${list[@]}" | ov_state_merge installed-files || return 1
  fi
  ov_backup_tree "$dest" "${list[@]}" || return 1
  if [ -n "$mode" ]; then
    find "$stage" -mindepth 1 -maxdepth 1 -type f -exec chmod -- "$mode" {} + || return 1
  fi
  # Unpacked as root's (root works only in directories of its own; a directory DEST has keeps
  # its owner and mode), then what the archive brought is given to OWNER, the deepest first
  # (ov_owner_give): each `chown -h` goes through directories still root's alone.
  (cd "$stage" && tar -cf - .) | tar -xf - -C "$dest" --keep-directory-symlink --no-overwrite-dir || return 1
  ov_backup_tree_sums || return 1
  if [ -n "$owner" ] && [ "${#list[@]}" -gt 0 ]; then
    for ((e = ${#list[@]} - 1; e >= 0; e--)); do
      give+=("${list[e]#? }")
    done
    # (before DEST and the directories above it that ov_mkdir_p made for OWNER)
    ov_owner_pending=("${give[@]}" ${ov_owner_pending[@]+"${ov_owner_pending[@]}"})
    ov_owner_to=$owner
  fi
  ov_owner_give
}

# ov_backup_tree DEST ("f PATH" | "d PATH")... — ov_backup for every file an archive is about to
# put into DEST, reading the index once (an archive may hold thousands of files): files the layer
# created or saved before are left alone, new ones are noted, existing ones saved. Sets
# OV_BACKED_TREE (N PATH pairs) for ov_backup_tree_sums.
ov_backup_tree() {
  local dest=$1 dir line p n add=''
  shift
  OV_BACKED_TREE=()
  ov_backup_dir_v dir "${OV_SCOPE:-system}" || return 1
  ov_backup_dir_make "$dir" parent || return 1
  ov_backup_load "$dir" || return 1
  n=$ov_bk_count
  for line in "$@"; do
    [[ $line == 'f '* ]] || continue
    p=${line#f }
    [ -z "${ov_bk_kind["$p"]:-}" ] || continue
    if [ -d "$p" ] && [ ! -L "$p" ]; then
      ov_fail "refusing to replace the directory $p with a file of the archive"
      return 1
    elif [ -e "$p" ] || [ -L "$p" ]; then
      n=$((n + 1))
      ov_backup_dir_make "$dir" && rm -f -- "$dir/$n" && cp -a --no-dereference -- "$p" "$dir/$n" || {
        ov_fail "cannot save $p before replacing it"
        return 1
      }
      echo "ov: saved $p (it existed before; undo puts it back)"
      add+="b $n $p"$'\n'
      OV_BACKED_TREE+=("$n" "$p")
    else
      add+="n $p"$'\n'
    fi
  done
  [ -z "$add" ] || printf '%s' "$add" >>"$dir.index" || return 1
  # What was read into memory is stale now: the next lookup reads the index again.
  ov_bk_loaded=''
}

# ov_backup_tree_sums — after the archive was unpacked: what now lies at each saved path.
ov_backup_tree_sums() {
  local i sum
  for ((i = 0; i + 1 < ${#OV_BACKED_TREE[@]}; i += 2)); do
    OV_BACKED=${OV_BACKED_TREE[i]}
    ov_backup_sum "${OV_BACKED_TREE[i + 1]}" || return 1
  done
  OV_BACKED=''
}

# ---- packages ---------------------------------------------------------------------------------

# ov_pkg_installed FORMAT PACKAGE — whether PACKAGE is installed now.
ov_pkg_installed() {
  case $1 in
    pac | aur) pacman -Q -- "$2" >/dev/null 2>&1 ;;
    deb)
      case "$(dpkg-query -W -f='${Status}\n' -- "$2" 2>/dev/null)" in
        *"install ok installed"*) return 0 ;;
        *) return 1 ;;
      esac
      ;;
    rpm) rpm -q --quiet --whatprovides -- "$2" >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

# ov_pkg_record FORMAT PACKAGE... — before an install: remember which packages are missing now, so
# the layer's undo removes only those (packages.FORMAT).
ov_pkg_record() {
  local fmt=$1
  shift
  [ "$fmt" = aur ] && fmt=pac
  ov_pkg_note "packages.$fmt" "$fmt" "$@"
}

# ov_pkg_note FACT FORMAT PACKAGE... — record in FACT the PACKAGEs missing now; for deb also note
# every package installed now, so that ov_pkg_record_after can tell which dependencies the install
# added.
ov_pkg_note() {
  local fact=$1 fmt=$2 p
  local -a missing=()
  shift 2
  for p in "$@"; do
    if ! ov_pkg_installed "$fmt" "$p"; then
      ov_state_once "$fact" "$p" || return 1
      missing+=("$p")
    fi
  done
  if [ "$fmt" = deb ] && [ -n "${OV_RUN_DIR:-}" ]; then
    ov_deb_installed >"$OV_RUN_DIR/deb.before" || return 1
  fi
  # pac: a missing name may be a group (no package: never "installed"); what is installed before
  # is kept, so that ov_pkg_run records the members the install brings (ov_pac_groups_after).
  if [ "$fmt" = pac ] && [ -n "${OV_RUN_DIR:-}" ]; then
    if [ "${#missing[@]}" -gt 0 ]; then
      printf '%s\n' "${missing[@]}" >"$OV_RUN_DIR/pac.missing" || return 1
      ov_pkg_names pac >"$OV_RUN_DIR/pac.before" || return 1
    else
      : >"$OV_RUN_DIR/pac.missing" || return 1
    fi
  fi
}

# ov_pac_groups_after — after a pacman install: of the names ov_pkg_note found missing, those
# still not installed are groups (or nothing at all); the members of theirs that are installed
# now and were not before are the layer's too (packages.pac), as a package it names would be, so
# undo removes them. From the package database, no guess.
ov_pac_groups_after() {
  local g m
  local -a members=()
  [ -n "${OV_RUN_DIR:-}" ] && [ -s "$OV_RUN_DIR/pac.missing" ] && [ -f "$OV_RUN_DIR/pac.before" ] || return 0
  while IFS= read -r g; do
    pacman -Q -- "$g" >/dev/null 2>&1 && continue
    mapfile -t members < <(pacman -Qgq -- "$g" 2>/dev/null | awk 'NR == FNR { had[$0] = 1; next } !($0 in had)' "$OV_RUN_DIR/pac.before" -)
    for m in ${members[@]+"${members[@]}"}; do
      ov_state_once packages.pac "$m" || return 1
    done
  done <"$OV_RUN_DIR/pac.missing"
}

# ov_deb_installed — the installed deb packages, one name per line.
ov_deb_installed() {
  dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" { print $2 }'
}

# ov_pkg_record_after — after an install (whether or not it succeeded): the packages that are
# installed now and were not before, recorded as the layer's (packages-deps.deb), so undo can
# remove the dependencies the layer pulled in, and only those. Compares the package manager's
# state, no guess.
ov_pkg_record_after() {
  [ -n "${OV_RUN_DIR:-}" ] && [ -f "$OV_RUN_DIR/deb.before" ] || return 0
  ov_deb_installed | awk 'NR == FNR { had[$0] = 1; next } !($0 in had)' "$OV_RUN_DIR/deb.before" - |
    ov_state_merge packages-deps.deb
}

# ov_pkg_run FORMAT COMMAND... — run the package manager's install, then (also when it failed:
# a transaction can stop half-way) record what it installed (ov_pkg_record_after).
ov_pkg_run() {
  local fmt=$1 rc=0
  shift
  "$@" || rc=$?
  if [ "$fmt" = deb ]; then
    ov_pkg_record_after || return 1
  elif [ "$fmt" = pac ]; then
    ov_pac_groups_after || return 1
  fi
  return "$rc"
}

# ---- package transactions shared by layers ----------------------------------------------------
# run.sh plans them (docs/bundle-runtime.md "Package transactions"): for consecutive layers the
# rule lets share one, it writes OV_RUN_DIR/batch/LEADER.plan, one line `LAYER PACKAGE...` per
# layer in run order. The leader's install step runs the transaction; every layer's install step
# then records its share of it. Without a plan (a script run on its own, a layer run alone) or
# when the transaction failed, a layer installs its own packages as before.

# ov_pkg_batched FORMAT — whether this layer's packages came with a shared transaction (they are
# recorded as the layer's now); false when the layer must install them itself. Its first layer
# runs the transaction here, at its own install step (after its repository steps). What a failed
# transaction installed is recorded too, before the layer installs the rest itself.
ov_pkg_batched() {
  local fmt=$1 got
  [ -n "${OV_RUN_DIR:-}" ] && [ -n "${OV_LAYER:-}" ] || return 1
  if [ -f "$OV_RUN_DIR/batch/$OV_LAYER.plan" ]; then
    ov_pkg_batch_run "$fmt" "$OV_RUN_DIR/batch/$OV_LAYER.plan" || true
  fi
  got=$OV_RUN_DIR/batch/$OV_LAYER.got
  [ -d "$got" ] || return 1
  ov_pkg_batch_claim "$got" || return 1
  if [ -e "$got/ok" ]; then
    ov_say "$fmt: installed in the shared transaction of layer $(cat -- "$got/leader")"
    return 0
  fi
  return 1
}

# ov_pkg_batch_claim DIR — add what a shared transaction installed for this layer (DIR/packages.FORMAT,
# DIR/packages-deps.deb) to the layer's facts; run.sh calls it too for a layer whose packages
# came but whose own steps never ran (a run that stopped before it).
ov_pkg_batch_claim() {
  local dir=$1 f
  for f in "$dir"/packages.* "$dir"/packages-deps.*; do
    [ -s "$f" ] || continue
    ov_state_merge "${f##*/}" <"$f" || return 1
  done
}

# ov_pkg_batch_holds DIR — whether a shared transaction installed anything for the layer of DIR.
ov_pkg_batch_holds() {
  local f
  for f in "$1"/packages.* "$1"/packages-deps.*; do
    [ -s "$f" ] && return 0
  done
  return 1
}

# ov_pkg_batch_run FORMAT PLAN — run one transaction for every package of PLAN (once: the plan
# is moved aside first), then give each layer its share in OV_RUN_DIR/batch/LAYER.got/, with `ok`
# in it when the transaction succeeded.
ov_pkg_batch_run() {
  local fmt=$1 dir=$OV_RUN_DIR/batch layer rc=0 plan
  local -a layers=() pkgs=() words=()
  plan=$dir/$OV_LAYER.ran
  mv -f -- "$2" "$plan" || return 1
  while read -r -a words; do
    [ "${#words[@]}" -gt 1 ] || continue
    layers+=("${words[0]}")
    pkgs+=("${words[@]:1}")
  done <"$plan"
  for layer in "${layers[@]}"; do
    mkdir -p -- "$dir/$layer.got" && printf '%s\n' "$OV_LAYER" >"$dir/$layer.got/leader" || return 1
  done
  case $fmt in
    deb)
      ov_apt_update_once || return 1
      ov_deb_installed >"$dir/before" || return 1
      ov_say "deb: one transaction for the packages of ${#layers[@]} layers: ${layers[*]}"
      ov_apt_install -- "${pkgs[@]}" || rc=$?
      ov_deb_attribute "$plan" "$dir" || return 1
      ;;
    rpm | pac)
      ov_pkg_missing "$fmt" "${pkgs[@]}" >"$dir/missing" || return 1
      ov_pkg_names "$fmt" >"$dir/before" || return 1
      mapfile -t words < <(printf '%s\n' "${pkgs[@]}" | awk '!seen[$0]++')
      ov_say "$fmt: one transaction for the packages of ${#layers[@]} layers: ${layers[*]}"
      if [ "$fmt" = rpm ]; then
        dnf install -y "${words[@]}" || rc=$?
      else
        pacman -Sy --needed --noconfirm -- "${words[@]}" || rc=$?
      fi
      ov_pkg_attribute "$fmt" "$plan" "$dir" "$rc" || return 1
      ;;
    *)
      ov_fail "no shared transaction for package format $fmt"
      return 1
      ;;
  esac
  if [ "$rc" = 0 ]; then
    for layer in "${layers[@]}"; do : >"$dir/$layer.got/ok"; done
  else
    ov_say "$fmt: the shared transaction failed (status $rc): each layer installs its own packages"
  fi
  return "$rc"
}

# ov_deb_attribute PLAN DIR — after a shared transaction: which layer of PLAN owns each package it
# installed, as if each layer had run its own install in turn. A layer owns the packages it names
# that were missing before (packages.deb), and the new packages its names need, through their
# Pre-Depends and Depends (alternatives and virtual packages included) as dpkg's database records
# them, less those an earlier layer of the plan already owns (packages-deps.deb, which also holds
# its own new packages, as ov_pkg_record_after writes it). A new package none of them needs (a
# maintainer script's doing) is the first layer's. Written to DIR/LAYER.got/.
ov_deb_attribute() {
  local plan=$1 dir=$2
  local -a new=()
  ov_deb_installed >"$dir/after" || return 1
  mapfile -t new < <(awk 'NR == FNR { had[$0] = 1; next } !($0 in had)' "$dir/before" "$dir/after")
  : >"$dir/deps"
  if [ "${#new[@]}" -gt 0 ]; then
    dpkg-query -W -f='${Package}\t${Provides}\t${Pre-Depends}, ${Depends}\n' -- "${new[@]}" >"$dir/deps" || return 1
  fi
  # shellcheck disable=SC2016 # awk's own $ fields
  awk -v dir="$dir" '
    function bare(c) { sub(/\(.*/, "", c); gsub(/[ \t]/, "", c); sub(/:.*/, "", c); return c }
    function own(L, p) { if ((p in fresh) && !(p in owner)) { owner[p] = L; q[++qt] = p } }
    FILENAME == ARGV[1] { had[$0] = 1; next }
    FILENAME == ARGV[2] { now[$0] = 1; if (!($0 in had)) fresh[$0] = 1; next }
    FILENAME == ARGV[3] {
      split($0, f, "\t"); deps[f[1]] = f[3]
      n = split(f[2], pv, ",")
      for (i = 1; i <= n; i++) { v = bare(pv[i]); if (v != "") prov[v] = prov[v] " " f[1] }
      next
    }
    { plan[++nl] = $0 }
    END {
      for (l = 1; l <= nl; l++) {
        n = split(plan[l], w, " "); L = w[1]; qh = 0; qt = 0
        if (l == 1) first = L
        for (i = 2; i <= n; i++) {
          p = w[i]
          if ((p in now) && !(p in had) && !(p in named)) { named[p] = 1; print p >> (dir "/" L ".got/packages.deb") }
          own(L, p)
        }
        while (qh < qt) {
          p = q[++qh]; print p >> (dir "/" L ".got/packages-deps.deb")
          m = split(deps[p], d, ",")
          for (j = 1; j <= m; j++) {
            k = split(d[j], alt, "|")
            for (a = 1; a <= k; a++) {
              c = bare(alt[a]); if (c == "") continue
              own(L, c)
              r = split(prov[c], cs, " ")
              for (x = 1; x <= r; x++) own(L, cs[x])
            }
          }
        }
      }
      for (p in fresh) if (!(p in owner)) print p >> (dir "/" first ".got/packages-deps.deb")
    }' "$dir/before" "$dir/after" "$dir/deps" "$plan"
}

# ov_pkg_missing FORMAT NAME... — the NAMEs not installed now, one a line (as ov_pkg_record
# tells them).
ov_pkg_missing() {
  local fmt=$1 p
  shift
  for p in "$@"; do
    ov_pkg_installed "$fmt" "$p" || printf '%s\n' "$p"
  done
}

# ov_pkg_names FORMAT — the names of the installed rpm or pacman packages, one a line.
ov_pkg_names() {
  case $1 in
    rpm) rpm -qa --qf '%{NAME}\n' | LC_ALL=C sort -u ;;
    # pacman -Q exits 1 when no package is installed at all (a fresh root)
    pac) pacman -Qq || true ;;
    *) return 1 ;;
  esac
}

# ov_pkg_graph FORMAT PACKAGE... — for installed rpm or pacman packages, one line per capability
# each provides (`PKG<TAB>P<TAB>CAP`: its name, its provides, for rpm its files) and per one it
# requires (`PKG<TAB>R<TAB>CAP`), versions left off, from the package database.
ov_pkg_graph() {
  local fmt=$1
  shift
  [ "$#" -gt 0 ] || return 0
  case $fmt in
    rpm)
      # shellcheck disable=SC2016 # rpm's own query format
      rpm -q --qf '%{NAME}\tP\t%{NAME}\n[%{=NAME}\tP\t%{PROVIDENAME}\n][%{=NAME}\tP\t%{FILENAMES}\n][%{=NAME}\tR\t%{REQUIRENAME}\n]' -- "$@"
      ;;
    pac)
      # `Key : value  value` blocks; a long list may go on in indented lines.
      LC_ALL=C COLUMNS=0 pacman -Qi -- "$@" | awk '
        /^[A-Z][A-Za-z ]*[^ ] *: / { key = $0; sub(/ *:.*/, "", key); sub(/^[^:]*: /, "") }
        key == "Name" { pkg = $1; printf "%s\tP\t%s\n", pkg, pkg; next }
        key == "Provides" || key == "Depends On" {
          for (i = 1; i <= NF; i++) {
            if ($i == "None") continue
            c = $i; sub(/[<>=].*/, "", c)
            printf "%s\t%s\t%s\n", pkg, (key == "Provides" ? "P" : "R"), c
          }
        }'
      ;;
  esac
}

# ov_pkg_attribute FORMAT PLAN DIR STATUS — after a shared rpm or pacman transaction that exited
# with STATUS: which layer of PLAN owns which names, as if each layer had run its own install in
# turn. That install records the names it lists that are missing just before it, as
# ov_pkg_installed tells (packages.FORMAT; dnf and pacman -Rs take the dependencies along on
# undo). Just before it, the earlier layers' installs had brought their names and what those
# need; so a layer owns the names it lists that were missing before the transaction and that no
# new package an earlier layer's names need (their dependencies as the database records them,
# an earlier layer's named packages included) is (pac: by name, as pacman -Q matches) or
# provides (rpm: a provide or a file, as rpm -q --whatprovides matches) — a name that stays
# missing (a pacman group) is recorded by each layer that lists it, as its own install would.
# After a failed transaction a layer owns only such names that are installed now: the layer
# records the rest itself when it installs its own. A name the transaction installed as asked
# for that a layer's own install would have found already there as a dependency is marked as
# one again (dnf mark remove, pacman -D --asdeps), so that undoing the earlier layer takes it
# along, as it would have. Written to DIR/LAYER.got/.
ov_pkg_attribute() {
  local fmt=$1 plan=$2 dir=$3 status=$4 p
  local -a new=() demote=()
  ov_pkg_names "$fmt" >"$dir/after" || return 1
  mapfile -t new < <(awk 'FILENAME == ARGV[1] { had[$0] = 1; next } !($0 in had)' "$dir/before" "$dir/after")
  if [ "$status" = 0 ]; then
    cp -- "$dir/missing" "$dir/came" || return 1
  else
    : >"$dir/came"
    while IFS= read -r p; do
      if ov_pkg_installed "$fmt" "$p"; then printf '%s\n' "$p" >>"$dir/came"; fi
    done <"$dir/missing"
  fi
  ov_pkg_graph "$fmt" ${new[@]+"${new[@]}"} >"$dir/graph" || return 1
  if [ "$fmt" = pac ]; then
    # A missing name that is still no package names a group: its installed members (`GROUP G
    # MEMBER` lines), which the layer that names it owns as its own install would record them.
    while IFS= read -r p; do
      pacman -Q -- "$p" >/dev/null 2>&1 && continue
      pacman -Qgq -- "$p" 2>/dev/null | awk -v g="$p" '{ printf "%s\tG\t%s\n", g, $0 }'
    done <"$dir/missing" >>"$dir/graph"
  fi
  # shellcheck disable=SC2016 # awk's own $ fields
  mapfile -t demote < <(awk -v dir="$dir" -v fmt="$fmt" '
    function own(p) { if ((p in fresh) && !(p in owner)) { owner[p] = 1; q[++qt] = p } }
    function covered(c,   r, x, cs) {
      if (fmt == "pac") return (c in owner)
      r = split(prov[c], cs, " ")
      for (x = 1; x <= r; x++) if (cs[x] in owner) return 1
      return 0
    }
    function need(c,   r, x, cs) { r = split(prov[c], cs, " "); for (x = 1; x <= r; x++) own(cs[x]) }
    FILENAME == ARGV[1] { came[$0] = 1; next }
    FILENAME == ARGV[2] {
      split($0, f, "\t")
      if (f[2] == "G") { grp[f[1]] = grp[f[1]] " " f[3]; next }
      fresh[f[1]] = 1
      if (f[2] == "P") prov[f[3]] = prov[f[3]] " " f[1]; else req[f[1]] = req[f[1]] "\n" f[3]
      next
    }
    { plan[++nl] = $0 }
    END {
      for (l = 1; l <= nl; l++) {
        n = split(plan[l], w, " "); L = w[1]
        for (i = 2; i <= n; i++) {
          p = w[i]
          if (!(p in came) || ((L, p) in mine)) continue
          if (covered(p)) { later[p] = 1; continue }
          mine[L, p] = 1; named[p] = 1; print p >> (dir "/" L ".got/packages." fmt)
          # a group: the members the transaction brought that no earlier layer owns
          r = split(grp[p], gm, " ")
          for (x = 1; x <= r; x++) {
            g = gm[x]
            if (!(g in fresh) || (g in owner) || ((L, g) in mine)) continue
            mine[L, g] = 1; named[g] = 1; print g >> (dir "/" L ".got/packages." fmt)
          }
        }
        qh = 0; qt = 0
        for (i = 2; i <= n; i++) {
          need(w[i])
          r = split(grp[w[i]], gm, " ")
          for (x = 1; x <= r; x++) need(gm[x])
        }
        while (qh < qt) {
          p = q[++qh]; m = split(req[p], rs, "\n")
          for (j = 1; j <= m; j++) {
            # an rpm rich dependency, `(a if b)`: any capability it names
            c = rs[j]; gsub(/[()]/, " ", c); k = split(c, cs, " ")
            for (a = 1; a <= k; a++) need(cs[a])
          }
        }
      }
      for (p in later) if (!(p in named)) print p
    }' "$dir/came" "$dir/graph" "$plan")
  [ "${#demote[@]}" -gt 0 ] || return 0
  case $fmt in
    rpm) dnf -q mark remove "${demote[@]}" >/dev/null ;;
    pac) pacman -D --asdeps -- "${demote[@]}" >/dev/null ;;
  esac
}

# ov_apt_install [OPTION...] -- PACKAGE... — apt-get install as every deb step runs it: no
# recommends, waiting for the dpkg lock, and a configuration file the site changed is kept.
ov_apt_install() {
  apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# ov_apt_update_once — `apt-get update` once per run: a marker in the run-scoped "$OV_RUN_DIR"
# (without one, every call updates).
ov_apt_update_once() {
  local marker=''
  if [ -n "${OV_RUN_DIR:-}" ]; then
    marker="$OV_RUN_DIR/apt-updated"
    [ -e "$marker" ] && return 0
  fi
  apt-get update -q -o DPkg::Lock::Timeout=300 || return 1
  if [ -n "$marker" ]; then
    mkdir -p -- "$OV_RUN_DIR" && : >"$marker"
  fi
}

# ov_apt_sources_changed — the next install must update the package lists again.
ov_apt_sources_changed() {
  if [ -n "${OV_RUN_DIR:-}" ]; then
    rm -f -- "$OV_RUN_DIR/apt-updated"
  fi
}

# ov_need_curl — downloads need curl and CA certificates, which a minimal system lacks. As root in
# a system step they are installed through the package manager, recorded as the layer's
# (tools.FORMAT, removed by its undo like its packages); a user step says what to add instead.
ov_need_curl() {
  local p fmt cmd=()
  command -v curl >/dev/null 2>&1 && return 0
  if [ "$EUID" != 0 ] || [ "${OV_SCOPE:-system}" != system ]; then
    ov_fail "downloading needs \`curl\`, which is not installed on this machine; add a layer that installs curl and ca-certificates before this one"
    return 1
  fi
  if command -v apt-get >/dev/null 2>&1; then
    fmt=deb
    ov_apt_update_once || return 1
    cmd=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 -- curl ca-certificates)
  elif command -v dnf >/dev/null 2>&1; then
    fmt=rpm cmd=(dnf install -y curl ca-certificates)
  elif command -v pacman >/dev/null 2>&1; then
    fmt=pac cmd=(pacman -S --needed --noconfirm curl ca-certificates)
  else
    ov_fail "downloading needs \`curl\`, which is not installed, and no package manager ov knows (apt-get, dnf, pacman) is here to install it"
    return 1
  fi
  ov_say "curl is not installed: installing curl and ca-certificates first (this layer's undo removes them)"
  ov_pkg_note "tools.$fmt" "$fmt" curl ca-certificates || return 1
  ov_pkg_run "$fmt" "${cmd[@]}"
}

# ov_fetch URL FILE — download to a file.
ov_fetch() {
  ov_need_curl || return 1
  curl -fsSL --retry 3 --connect-timeout 30 -o "$2" "$1" || {
    ov_fail "download of $1 failed"
    return 1
  }
}

# ov_dearmor IN OUT — an ASCII-armored OpenPGP key as the binary keyring apt reads from a .gpg
# file: gpg when installed, else the armor's base64 body decoded (coreutils only).
ov_dearmor() {
  if command -v gpg >/dev/null 2>&1; then
    local home
    home=$(mktemp -d) || return 1
    gpg --batch --homedir "$home" --dearmor <"$1" >"$2"
    local rc=$?
    rm -rf -- "$home"
    return "$rc"
  fi
  sed -n '/^-----BEGIN PGP/,/^-----END PGP/p' "$1" | sed '1,/^[[:space:]]*$/d' |
    grep -v -e '^=' -e '^-----' | base64 -d >"$2"
}

# ov_apt_key NAME URL [KEYRING] — fetch a repository key into KEYRING (default
# /etc/apt/keyrings/NAME.gpg), dearmored when armored; prints the keyring path.
ov_apt_key() {
  local name=$1 url=$2 dest=${3:-/etc/apt/keyrings/$1.gpg} tmp rc=0
  tmp=$(mktemp -d) || return 1
  if ov_fetch "$url" "$tmp/key"; then
    if grep -q -- '-----BEGIN PGP' "$tmp/key"; then
      { ov_dearmor "$tmp/key" "$tmp/key.gpg" && ov_install_file "$tmp/key.gpg" "$dest" 0644; } || rc=1
    else
      ov_install_file "$tmp/key" "$dest" 0644 || rc=1
    fi
  else
    rc=1
  fi
  rm -rf -- "$tmp"
  [ "$rc" = 0 ] || {
    ov_fail "cannot install the key of repository $name from $url"
    return 1
  }
  ov_state_once repo-files "$dest" || return 1
  ov_apt_sources_changed
  printf '%s\n' "$dest"
}

# ov_apt_repo NAME URL SUITE COMPONENTS KEY_URL SIGNED_BY — write sources.list.d/NAME.list.
ov_apt_repo() {
  local name=$1 url=$2 suite=$3 components=$4 key=$5 keyring=$6 opts='' line file
  if [ -n "$key" ]; then
    keyring=$(ov_apt_key "$name" "$key" "$keyring") || return 1
  fi
  if [ -n "$keyring" ]; then
    opts="[signed-by=$keyring] "
  fi
  if [ "$suite" = / ]; then
    line="deb ${opts}$url /"
  else
    line="deb ${opts}$url $suite $components"
  fi
  file="/etc/apt/sources.list.d/$name.list"
  ov_write_file "$file" 0644 "$line"$'\n' || return 1
  ov_state_once repo-files "$file" || return 1
  ov_apt_sources_changed
}

# ov_apt_ppa PPA — add an Ubuntu PPA.
ov_apt_ppa() {
  add-apt-repository -y "ppa:$1" || return 1
  ov_state_once ppas "$1" || return 1
  ov_apt_sources_changed
}

# ov_pac_repo NAME SERVER SIGLEVEL — a fenced [NAME] section at the end of /etc/pacman.conf.
ov_pac_repo() {
  local name=$1
  ov_block_set /etc/pacman.conf "# overthink:repo $name begin" "# overthink:repo $name begin" \
    "# overthink:repo $name end" "[$name]" "SigLevel = $3" "Server = $2" || return 1
  ov_state_once pacman-repos "$name"
}

# ov_pac_key KEY — receive and locally sign a packager key.
ov_pac_key() {
  pacman-key --recv-keys "$1" && pacman-key --lsign-key "$1"
}

# ov_dnf_repo NAME URL GPGKEY GPGCHECK FILE — a .repo URL is fetched as is into FILE, any other URL
# becomes the baseurl of the repository file FILE written here; GPGKEY is imported.
ov_dnf_repo() {
  local name=$1 url=$2 key=$3 check=$4 file=$5 tmp content rc=0
  case $url in
    *.repo)
      tmp=$(mktemp -d) || return 1
      { ov_fetch "$url" "$tmp/repo" && ov_install_file "$tmp/repo" "$file" 0644; } || rc=1
      rm -rf -- "$tmp"
      [ "$rc" = 0 ] || return 1
      ;;
    *)
      content="[$name]"$'\n'"name=$name"$'\n'"baseurl=$url"$'\n'"enabled=1"$'\n'"gpgcheck=$check"$'\n'
      if [ -n "$key" ]; then
        content+="gpgkey=$key"$'\n'
      fi
      ov_write_file "$file" 0644 "$content" || return 1
      ;;
  esac
  ov_state_once repo-files "$file" || return 1
  if [ -n "$key" ]; then
    rpm --import "$key" || return 1
  fi
}

# ov_rpm_release URL — install a repository release package (recorded when it was not installed).
ov_rpm_release() {
  local url=$1 tmp name rc=0
  tmp=$(mktemp -d) || return 1
  if ov_fetch "$url" "$tmp/release.rpm" && name=$(rpm -qp --qf '%{NAME}' "$tmp/release.rpm"); then
    if ! rpm -q --quiet "$name"; then
      { ov_state_once release-packages.rpm "$name" && dnf install -y "$tmp/release.rpm"; } || rc=1
    fi
  else
    rc=1
  fi
  rm -rf -- "$tmp"
  return "$rc"
}

# ov_block_strip FILE MATCH END — remove every such block.
ov_block_strip() {
  [ -e "$1" ] || return 0
  ov_block_edit "$1" "$2" "$3"
}

# ---- services ---------------------------------------------------------------------------------

ov_systemd_running() {
  [ -d /run/systemd/system ]
}

# ov_user_bus — whether the target user's systemd manager is reachable (sets XDG_RUNTIME_DIR).
ov_user_bus() {
  XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/run/user/$(id -u)}"
  export XDG_RUNTIME_DIR
  [ -S "$XDG_RUNTIME_DIR/systemd/private" ] || [ -S "$XDG_RUNTIME_DIR/bus" ]
}

# ov_plain_account — unit files get the target's HOME, user name and primary group id spliced in;
# refuse values that would need systemd escaping (no real account has them).
ov_plain_account() {
  case "$OV_HOME$OV_USER" in
    *[!A-Za-z0-9/._@+-]*)
      ov_fail "the target account ($OV_USER, $OV_HOME) has characters that cannot go into a unit file unescaped"
      return 1
      ;;
  esac
  case "$OV_GID" in
    '' | *[!0-9]*)
      ov_fail "the target account's group id ($OV_GID) is not a number"
      return 1
      ;;
  esac
}

ov_unit_is_enabled() {
  if [ "$1" = user ]; then
    ov_user_bus && systemctl --user is-enabled --quiet -- "$2" 2>/dev/null
  else
    systemctl is-enabled --quiet -- "$2" 2>/dev/null
  fi
}

# ov_daemon_reload SCOPE — only where a manager runs.
ov_daemon_reload() {
  if [ "$1" = user ]; then
    if ov_user_bus; then systemctl --user daemon-reload; fi
  elif ov_systemd_running; then
    systemctl daemon-reload
  fi
}

# ov_unit_resolve VAR UNIT — set VAR to the system unit systemd really enables for UNIT: UNIT may
# be an alias (Debian's sshd.service is `Alias=` of ssh.service), which `systemctl enable` refuses
# to operate on. Read from the unit directories, so it also works where systemd is not running
# (a chroot): a link of that name (not to /dev/null: a mask) → its target's name; a unit file of
# that name → UNIT itself; else a unit file whose [Install] declares `Alias=` UNIT (the alias link
# exists only while it is enabled) → that file's name; else UNIT. All of them are root's
# directories. The common case (a unit file of that name) runs builtins only.
ov_unit_resolve() {
  local ov_ur=$2 d f t found='' files=()
  for d in /etc/systemd/system /run/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
    f=$d/$2
    if [ -L "$f" ]; then
      t=$(readlink -- "$f") || return 1
      [ "$t" = /dev/null ] || ov_ur=${t##*/}
      found=1
      break
    elif [ -f "$f" ]; then
      # The common case: a unit file of that name.
      printf -v "$1" '%s' "$2"
      return 0
    fi
  done
  if [ -z "$found" ]; then
    for d in /etc/systemd/system /run/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
      for f in "$d"/*."${2##*.}"; do
        [ -f "$f" ] && [ ! -L "$f" ] && files+=("$f")
      done
    done
  fi
  if [ "${#files[@]}" -gt 0 ]; then
    # The name goes in through the environment: awk's -v would expand backslash escapes, which
    # systemd's unit names use (\x2d).
    t=$(OV_UNIT=$2 awk '
      FNR == 1 { inst = 0 }
      /^[ \t]*\[/ { inst = ($0 ~ /^[ \t]*\[Install\][ \t]*$/); next }
      inst && /^[ \t]*Alias[ \t]*=/ {
        v = $0; sub(/^[^=]*=/, "", v); n = split(v, a, /[ \t]+/)
        for (i = 1; i <= n; i++) if (a[i] == ENVIRON["OV_UNIT"]) { f = FILENAME; sub(/.*\//, "", f); print f; exit }
      }' "${files[@]}") || return 1
    [ -z "$t" ] || ov_ur=$t
  fi
  case $ov_ur in
    '' | -* | *[!A-Za-z0-9:_.@\\-]*)
      ov_fail "unit $2 resolves to \`$ov_ur\`, which is not a unit name"
      return 1
      ;;
  esac
  printf -v "$1" '%s' "$ov_ur"
}

# ov_unit_recorded VAR SCOPE UNIT — set VAR to the unit the install script resolved UNIT to (the
# fact `services.resolved`, root's), else UNIT: undo acts on exactly what was enabled.
ov_unit_recorded() {
  local ov_ur=$3 l
  if [ "$2" = system ]; then
    while IFS= read -r l; do
      case $l in
        "system $3 "?*) ov_ur=${l#"system $3 "} ;;
      esac
    done < <(ov_state_lines services.resolved)
  fi
  printf -v "$1" '%s' "$ov_ur"
}

# ov_service_enable SCOPE UNIT — enable and start UNIT, recording whether it was enabled before
# (undo leaves such units enabled). Where no manager runs (a chroot, a container, no user
# session) the unit is enabled but not started, and this says so. A system UNIT that is an alias
# is resolved to the real unit (recorded in `services.resolved`); `systemctl is-enabled` decides:
# enabled → recorded as enabled before; static, indirect, generated or transient units cannot be
# enabled → started where a manager runs, nothing recorded; masked → an error.
ov_service_enable() {
  local scope=$1 unit=$2 state=''
  command -v systemctl >/dev/null 2>&1 || {
    ov_fail "systemctl is not installed: this machine does not use systemd, so $unit cannot be enabled"
    return 1
  }
  if [ "$scope" = user ]; then
    if ov_unit_is_enabled user "$unit"; then
      ov_state_has services.enabled "user $unit" || ov_state_once services.prior-enabled "user $unit" || return 1
    elif ! ov_state_has services.prior-enabled "user $unit"; then
      ov_state_once services.enabled "user $unit" || return 1
    fi
    if ov_user_bus; then
      systemctl --user daemon-reload && systemctl --user enable --now -- "$unit"
    else
      ov_user_unit_enable_offline "$unit" || return 1
      ov_say "no systemd user manager is running for $OV_USER: $unit is enabled for the next login, not started"
    fi
    return
  fi
  ov_unit_resolve unit "$2" || return 1
  if [ "$unit" != "$2" ]; then
    ov_state_once services.resolved "system $2 $unit" || return 1
    ov_say "$2 is an alias of $unit: enabling $unit"
  fi
  state=$(systemctl is-enabled -- "$unit" 2>/dev/null) || true
  case $state in
    enabled | enabled-runtime)
      # Enabled by an earlier run of this layer is still this layer's.
      ov_state_has services.enabled "system $unit" || ov_state_once services.prior-enabled "system $unit" || return 1
      ;;
    static | indirect | generated | transient)
      if ov_systemd_running; then
        echo "ov: $unit is $state (it cannot be enabled): starting it"
        systemctl daemon-reload && systemctl start -- "$unit"
      else
        echo "ov: $unit is $state (it cannot be enabled) and systemd is not running here: nothing to do"
      fi
      return
      ;;
    masked | masked-runtime)
      ov_fail "$unit is masked, so it cannot be enabled: unmask it (systemctl unmask $unit) or drop the service from the layer"
      return 1
      ;;
    alias)
      ov_fail "$unit is an alias whose unit ov could not find in the unit directories: name the real unit in \`use_packaged:\`"
      return 1
      ;;
    *)
      # disabled, linked, not-found, bad: enable it (systemctl names what is wrong, if anything).
      ov_state_has services.prior-enabled "system $unit" || ov_state_once services.enabled "system $unit" || return 1
      ;;
  esac
  if ov_systemd_running; then
    systemctl daemon-reload && systemctl enable --now -- "$unit"
  else
    systemctl enable -- "$unit" || return 1
    ov_say "systemd is not running here (a container or chroot): $unit is installed and enabled, not started"
  fi
}

# ov_user_unit_enable_offline UNIT — what `systemctl --user enable` does, without a manager: link
# the unit into the .wants directory of each WantedBy= target.
ov_user_unit_enable_offline() {
  local unit=$1 dir="$OV_HOME/.config/systemd/user" f='' c w
  for c in "$dir/$unit" "/etc/systemd/user/$unit" "/usr/lib/systemd/user/$unit" "/lib/systemd/user/$unit"; do
    if [ -f "$c" ]; then
      f=$c
      break
    fi
  done
  [ -n "$f" ] || {
    ov_fail "user unit $unit not found"
    return 1
  }
  while read -r -a w; do
    for c in "${w[@]}"; do
      mkdir -p -- "$dir/$c.wants" && ln -sfn -- "$f" "$dir/$c.wants/$unit" || return 1
    done
  done < <(sed -n 's/^[[:space:]]*WantedBy[[:space:]]*=//p' -- "$f")
}

# ---- builders (run as the target user) --------------------------------------------------------

# ov_builder_path — the places user-level toolchains install to.
ov_builder_path() {
  PATH="$OV_HOME/.cargo/bin:$OV_HOME/.pixi/bin:$OV_HOME/.npm-global/bin:/usr/local/bin:$PATH"
  export PATH
}

# ov_need_tool TOOL PROVIDER LAYER — a clear error when a builder's toolchain is missing.
ov_need_tool() {
  command -v -- "$1" >/dev/null 2>&1 && return 0
  ov_fail "layer \`$3\` needs \`$1\` on the target, and it is not installed; the layer \`$2\` provides it: add \`$2\` to the deploy (before \`$3\`), or install $1"
}

# ov_npm_install LAYER NAME... -- SPEC... — global npm install into ~/.npm-global.
ov_npm_install() {
  local layer=$1 names=()
  shift
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
    names+=("$1")
    shift
  done
  shift
  ov_builder_path
  ov_need_tool npm nodejs "$layer" || return 1
  [ "$#" -gt 0 ] || return 0
  NPM_CONFIG_PREFIX="$OV_HOME/.npm-global" npm install -g --no-fund --no-audit -- "$@" || return 1
  local n
  for n in "${names[@]}"; do
    ov_state_once npm.packages "$n" || return 1
  done
}

# ov_cargo_install LAYER SRC CRATE — `cargo install --path` from a private copy of the crate.
ov_cargo_install() {
  local layer=$1 src=$2 crate=$3 tmp rc=0 locked=()
  ov_builder_path
  ov_need_tool cargo rust "$layer" || return 1
  tmp=$(mktemp -d) || return 1
  [ -f "$src/Cargo.lock" ] && locked=(--locked)
  if cp -a -- "$src/." "$tmp/" &&
    CARGO_HOME="$OV_HOME/.cargo" cargo install "${locked[@]}" --path "$tmp" --root "$OV_HOME/.cargo"; then
    ov_state_once cargo.crates "$crate" || rc=1
  else
    rc=1
  fi
  rm -rf -- "$tmp"
  return "$rc"
}

# ov_pixi_install LAYER SRC MANIFEST HAS_LOCK HAS_BUILD — a pixi project per layer under
# ~/.local/share/overthink/pixi/LAYER; its executables are also linked into
# ~/.pixi/envs/default/bin (where layers expect them) unless something else is there.
ov_pixi_install() {
  local layer=$1 src=$2 manifest=$3 lock=$4 build=$5
  local proj="$OV_HOME/.local/share/overthink/pixi/$layer" bin e name link
  ov_builder_path
  ov_need_tool pixi pixi "$layer" || return 1
  mkdir -p -- "$proj" || return 1
  ov_state_once pixi.projects "$proj" || return 1
  cp -- "$src/$manifest" "$proj/$manifest" || return 1
  if [ "$lock" = yes ]; then cp -- "$src/pixi.lock" "$proj/pixi.lock" || return 1; fi
  case $manifest in
    pixi.toml)
      if [ "$lock" = yes ]; then
        pixi install --frozen --manifest-path "$proj/pixi.toml" || return 1
      else
        pixi install --manifest-path "$proj/pixi.toml" || return 1
      fi
      ;;
    pyproject.toml) pixi install --manifest-path "$proj/pyproject.toml" || return 1 ;;
    environment.yml)
      (cd "$proj" && { [ -f pixi.toml ] || pixi init --import environment.yml; } && pixi install) || return 1
      ;;
    *)
      ov_fail "unknown pixi manifest $manifest"
      return 1
      ;;
  esac
  bin="$proj/.pixi/envs/default/bin"
  if [ "$build" = yes ]; then
    (cd "$proj" && PATH="$bin:$PATH" bash "$src/build.sh") || return 1
  fi
  if [ -d "$bin" ]; then
    mkdir -p -- "$OV_HOME/.pixi/envs/default/bin" || return 1
    for e in "$bin"/*; do
      [ -e "$e" ] || continue
      name=${e##*/}
      link="$OV_HOME/.pixi/envs/default/bin/$name"
      if [ ! -e "$link" ] && [ ! -L "$link" ]; then
        ln -s -- "$e" "$link" && ov_state_add pixi.links "$link" || return 1
      fi
    done
  fi
}

# ov_aur_install LAYER PACKAGE... — AUR packages with the target's yay, else makepkg; never as root.
ov_aur_install() {
  local layer=$1 tmp p rc=0
  shift
  if [ "$(id -u)" = 0 ]; then
    if [ -n "${OV_AUR_SWITCHED:-}" ] || [ "$OV_USER" = root ]; then
      ov_fail "layer \`$layer\` installs AUR packages, which makepkg refuses to build as root; deploy for a non-root user"
      return 1
    fi
    # Recorded here, by root: the user's build below reports nothing root acts on.
    ov_pkg_record pac "$@" || return 1
    (cd / && ov_as_user env OV_AUR_SWITCHED=1 bash -c "$(declare -f ov_aur_install ov_fail ov_pkg_record ov_pkg_installed ov_state_once ov_state_has ov_state_add); ov_aur_install \"\$@\"" ov_aur_install "$layer" "$@") </dev/null
    return
  fi
  [ -n "${OV_AUR_SWITCHED:-}" ] || ov_pkg_record pac "$@" || return 1
  if command -v yay >/dev/null 2>&1; then
    yay -S --needed --noconfirm -- "$@"
    return
  fi
  if ! command -v makepkg >/dev/null 2>&1 || ! command -v git >/dev/null 2>&1; then
    ov_fail "layer \`$layer\` installs AUR packages, which needs \`yay\`, or \`makepkg\` (package base-devel) and \`git\`, on the target; none is installed"
    return 1
  fi
  tmp=$(mktemp -d) || return 1
  for p in "$@"; do
    if ! pacman -Q -- "$p" >/dev/null 2>&1; then
      { git clone --depth 1 "https://aur.archlinux.org/$p.git" "$tmp/$p" &&
        (cd "$tmp/$p" && makepkg -si --noconfirm --needed); } || rc=1
    fi
  done
  rm -rf -- "$tmp"
  return "$rc"
}

# ---- undo -------------------------------------------------------------------------------------
# undo.sh runs as root; user-scope work goes through `ov_as_user` (lib.sh runtime part).

# ov_undo_op DESCRIPTION COMMAND... — run one reverse op; a failure is reported and remembered in
# OV_UNDO_FAILED, and the next op runs.
ov_undo_op() {
  local desc=$1 rc=0
  shift
  echo "ov: undo: $desc"
  "$@" || rc=$?
  # (an operation may run root's own code — a package's removal scripts, systemctl: the guard
  # looks at the way of the next one again)
  ov_root_code_ran
  [ "$rc" != 0 ] || return 0
  echo "ov: undo failed: $desc" >&2
  export OV_UNDO_FAILED=1
  return 0
}

# ov_undo_as SCOPE COMMAND... — as root (system) or as the target user (user, user-profile).
ov_undo_as() {
  local scope=$1
  shift
  if [ "$scope" = system ]; then
    "$@"
  else
    ov_as_user "$@"
  fi
}

# ov_undo_packages FORMAT [PACKAGE...] — remove the packages this layer installed (those recorded
# in packages.FORMAT; all of them when no PACKAGE is named) that are still installed.
ov_undo_packages() {
  local fmt=$1 p m remove=()
  local -A seen=()
  shift
  [ "$fmt" = aur ] && fmt=pac
  if [ "$#" = 0 ]; then
    mapfile -t remove < <(ov_state_lines "packages.$fmt")
  else
    for p in "$@"; do
      if ov_state_has "packages.$fmt" "$p" && [ -z "${seen[$p]:-}" ]; then
        remove+=("$p")
        seen[$p]=1
      fi
      # pac: a name that is no package is a group; the members the layer recorded (they came
      # with it: ov_pac_groups_after) go with it
      if [ "$fmt" = pac ] && [ -n "${seen[$p]:-}" ] && ! pacman -Q -- "$p" >/dev/null 2>&1; then
        while IFS= read -r m; do
          if ov_state_has packages.pac "$m" && [ -z "${seen[$m]:-}" ]; then
            remove+=("$m")
            seen[$m]=1
          fi
        done < <(pacman -Qgq -- "$p" 2>/dev/null)
      fi
    done
  fi
  local present=()
  for p in ${remove[@]+"${remove[@]}"}; do
    if ov_pkg_installed "$fmt" "$p"; then present+=("$p"); fi
  done
  # deb: also the dependencies the layer pulled in, which ov_undo_debs finds in the facts.
  if [ "$fmt" != deb ] && [ "${#present[@]}" = 0 ]; then
    echo "ov: no $fmt package to remove (none was installed by this layer)"
    return 0
  fi
  ov_pkg_remove "$fmt" ${present[@]+"${present[@]}"}
}

# ov_pkg_remove FORMAT PACKAGE... — remove packages of the layer with the package manager (deb:
# ov_undo_debs; dnf and pacman -Rs take unneeded dependencies along themselves).
ov_pkg_remove() {
  local fmt=$1
  shift
  case $fmt in
    deb) ov_undo_debs "$@" ;;
    pac) pacman -Rs --noconfirm -- "$@" ;;
    rpm) dnf remove -y "$@" ;;
    *)
      ov_fail "unknown package format $fmt"
      return 1
      ;;
  esac
}

# ov_undo_tools — remove the tools the layer's downloads installed (ov_need_curl), if it did.
ov_undo_tools() {
  local fmt p present=()
  for fmt in deb rpm pac; do
    present=()
    while IFS= read -r p; do
      if [ -n "$p" ] && ov_pkg_installed "$fmt" "$p"; then present+=("$p"); fi
    done < <(ov_state_lines "tools.$fmt")
    [ "${#present[@]}" -gt 0 ] || continue
    ov_pkg_remove "$fmt" "${present[@]}" || return 1
  done
}

# ov_undo_debs PACKAGE... — purge the layer's packages, then the dependencies its installs pulled
# in (packages-deps.deb) that nothing depends on any more — what `apt-get autoremove` would take
# of them (a Recommends or Suggests does not keep one), never anything else. A package another
# installed package still depends on is kept, and this says which; apt is asked first (`-s`), so
# nothing outside the layer's packages is removed.
ov_undo_debs() {
  local p purge=() kept=() deps=()
  local -A mine=()
  for p in "$@"; do mine["$p"]=1; done
  while IFS= read -r p; do
    [ -n "$p" ] && mine["$p"]=1
  done < <(ov_state_lines packages-deps.deb)
  if [ "$#" = 0 ]; then
    :
  elif ov_deb_purge_ok mine "$@"; then
    purge=("$@")
  else
    for p in "$@"; do
      if ov_deb_purge_ok mine "$p"; then purge+=("$p"); else kept+=("$p"); fi
    done
  fi
  if [ "${#kept[@]}" -gt 0 ]; then
    echo "ov: undo: keeping ${kept[*]}: other installed packages depend on them"
  fi
  if [ "${#purge[@]}" -gt 0 ]; then
    apt-get purge -y -q -o DPkg::Lock::Timeout=300 -- "${purge[@]}" || return 1
  fi
  # Recommends and Suggests of installed packages do not keep a dependency the layer pulled in:
  # before the layer it was not installed, whatever suggested it.
  mapfile -t deps < <(LC_ALL=C apt-get -s -o Debug::NoLocking=1 -o APT::AutoRemove::RecommendsImportant=false \
    -o APT::AutoRemove::SuggestsImportant=false autoremove --purge |
    awk '$1 == "Purg" { print $2 }')
  purge=()
  for p in ${deps[@]+"${deps[@]}"}; do
    [ -n "${mine["$p"]+x}" ] && purge+=("$p")
  done
  if [ "${#purge[@]}" -gt 0 ] && ov_deb_purge_ok mine "${purge[@]}"; then
    apt-get purge -y -q -o DPkg::Lock::Timeout=300 -- "${purge[@]}" || return 1
  elif [ "$#" = 0 ]; then
    echo "ov: no deb package to remove (none was installed by this layer)"
  fi
  return 0
}

# ov_deb_purge_ok MINE-VAR PACKAGE... — whether purging the PACKAGEs removes only packages of the
# associative array MINE-VAR (apt's simulation).
ov_deb_purge_ok() {
  local -n ov_dp_mine=$1
  local p
  shift
  while IFS= read -r p; do
    [ -n "${ov_dp_mine["$p"]+x}" ] || return 1
  done < <(LC_ALL=C apt-get -s -o Debug::NoLocking=1 purge -- "$@" | awk '$1 == "Purg" || $1 == "Remv" { print $2 }')
}

# ov_undo_created_dirs LAYER — remove the directories the layer's record lists as created by it,
# children before parents (reverse byte order puts every path before its prefix), each only if
# it is empty: what anything else put there since stays, and so does the directory. Those root's
# scripts made (`created_dirs`) are removed by root; those the user's scripts reported
# (`user_created_dirs`) by the user, in one process of the user's.
ov_undo_created_dirs() {
  local rec="$OV_LEDGER/layers/$1.json" text='' d
  local -a dirs=() udirs=()
  [ -f "$rec" ] || return 0
  IFS= read -r -d '' text <"$rec" || true
  ov_json_items_v dirs "$text" created_dirs
  ov_json_items_v udirs "$text" user_created_dirs
  if [ "${#dirs[@]}" -gt 0 ]; then
    while IFS= read -r d; do
      # (only through a way root alone decides: a directory on it given to another account, or
      # opened to others since, could hold that account's link to a directory of root's)
      case $d in
        /*) [ -d "$d" ] && [ ! -L "$d" ] && ov_root_guard_unlink "$d" 2>/dev/null && rmdir -- "$d" 2>/dev/null ;;
      esac
    done < <(printf '%s\n' "${dirs[@]}" | LC_ALL=C sort -r)
  fi
  if [ "${#udirs[@]}" -gt 0 ]; then
    # shellcheck disable=SC2016 # runs in the user's shell
    printf '%s\n' "${udirs[@]}" | LC_ALL=C sort -r | (cd / && ov_as_user bash -c \
      'while IFS= read -r d; do case $d in /*) [ -d "$d" ] && [ ! -L "$d" ] && rmdir -- "$d" 2>/dev/null ;; esac; done; exit 0')
  fi
  return 0
}

# ov_undo_path DIR PATH — undo what the layer did at PATH, DIR being its backup directory (run
# as the account of the step's scope): a PATH the layer created is removed; a PATH it replaced
# gets its former self back when it still holds what the layer wrote (or nothing) — when it was
# changed since, the change is kept and the former self is put beside it as PATH.ov-orig, and
# this says so. A PATH the index does not name was not written by the layer (a step that never
# ran, in a layer that failed): left alone. Without any index (a layer applied before ov kept
# one) PATH is removed, as it always was.
ov_undo_path() {
  local dir=$1 p=$2 found n sum now pdir tmp dest
  ov_backup_find_v found "$dir" "$p"
  case $found in
    n)
      rm -f -- "$p"
      return
      ;;
    '')
      if [ -f "$dir.index" ] || [ -n "${OV_PARTIAL:-}" ]; then
        echo "ov: undo: leaving $p: this layer did not write it"
        return 0
      fi
      rm -f -- "$p"
      return
      ;;
  esac
  found=${found#b }
  n=${found%% *}
  sum=${found#* }
  if [ ! -e "$dir/$n" ] && [ ! -L "$dir/$n" ]; then
    ov_fail "the saved copy of $p ($dir/$n) is missing: $p is left as it is"
    return 1
  fi
  ov_path_sum_v now "$p" || return 1
  ov_dirname_v pdir "$p"
  ov_mkdir_p "$pdir" || return 1
  dest=$p
  if [ -n "$now" ] && [ -n "$sum" ] && [ "$now" != "$sum" ]; then
    dest=$p.ov-orig
  fi
  tmp=$pdir/.ov-tmp.$BASHPID.$RANDOM$RANDOM
  if cp -a --no-dereference -- "$dir/$n" "$tmp" && mv -fT -- "$tmp" "$dest"; then
    if [ "$dest" = "$p" ]; then
      echo "ov: undo: restored $p as it was before the deploy"
    else
      echo "ov: undo: kept $p: it changed after the deploy; what was there before is now $dest"
    fi
    return 0
  fi
  rm -f -- "$tmp"
  ov_fail "cannot restore $p from $dir/$n"
  return 1
}

# ov_undo_paths SCOPE PATH... — ov_undo_path for each PATH, as root (system) or in one process of
# the target user's (the user's backups are the user's own: root never reads them).
ov_undo_paths() {
  local scope=$1 dir p rc=0
  shift
  [ "$scope" = user-profile ] && scope=user
  [ "$#" -gt 0 ] || return 0
  ov_backup_dir_v dir "$scope" || return 1
  if [ "$scope" = system ]; then
    # The way may have been opened to other accounts since the deploy: root removes only through
    # a way it alone decides (ov_root_guard_unlink), and restores only where it may write (the
    # guard in ov_mkdir_p).
    for p in "$@"; do
      if ov_root_guard_unlink "$p"; then
        ov_undo_path "$dir" "$p" || rc=1
      else
        rc=1
      fi
    done
    return "$rc"
  fi
  (cd / && ov_as_user bash -c "ov_bk_loaded=''; $(declare -f ov_undo_path ov_backup_find_v ov_backup_load ov_backup_mem ov_path_sum_v ov_dirname_v \
    ov_fail ov_mkdir_p ov_root_guard ov_report ov_owner_spec)"'
    dir=$1 rc=0
    shift
    for p in "$@"; do ov_undo_path "$dir" "$p" || rc=1; done
    exit "$rc"' ov-undo "$dir" "$@")
}

# ov_undo_backups_forget — after a layer's undo succeeded: its backup directories go.
ov_undo_backups_forget() {
  local dir
  ov_backup_dir_v dir system || return 1
  rm -rf -- "$dir" "$dir.index" || return 1
  ov_backup_dir_v dir user || return 1
  (cd / && ov_as_user rm -rf -- "$dir" "$dir.index")
}

# ov_undo_rm SCOPE PATH... — undo files the layer wrote (ov_undo_path); for a directory, only
# what this layer's downloads put there (a shared directory such as /usr/local/bin stays).
ov_undo_rm() {
  local scope=$1 p rc=0
  local -a files=()
  shift
  for p in "$@"; do
    if [ -d "$p" ] && [ ! -L "$p" ]; then
      ov_undo_installed_under "$scope" "$p" || rc=1
    else
      files+=("$p")
    fi
  done
  ov_undo_paths "$scope" ${files[@]+"${files[@]}"} || rc=1
  return "$rc"
}

ov_undo_installed_under() {
  local scope=$1 dir=$2 kind path found=0 rc=0 dirs=() files=() i
  while IFS=' ' read -r kind path; do
    case $path in
      "$dir" | "$dir"/*) ;;
      *) continue ;;
    esac
    found=1
    if [ "$kind" = d ]; then
      dirs+=("$path")
    else
      files+=("$path")
    fi
  done < <(ov_facts "$scope" installed-files)
  ov_undo_paths "$scope" ${files[@]+"${files[@]}"} || rc=1
  for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do
    ov_undo_as "$scope" rmdir -- "${dirs[$i]}" 2>/dev/null || true
  done
  if [ "$found" = 0 ]; then
    echo "ov: leaving directory $dir in place: this layer recorded nothing it put there"
  fi
  return "$rc"
}

# ov_root_guard_unlink PATH — as root, before PATH is removed (`rm -f`, `rm -rf`, which never
# follow PATH itself): the way to the directory holding it must be one root alone decides
# (ov_root_guard of the directory above that one). The directory holding PATH may be another
# account's — it can change only what that directory holds — unless it sits in a sticky
# directory, where that account could swap it for a link.
ov_root_guard_unlink() {
  local pdir gdir
  [[ $EUID == 0 && ${OV_SCOPE:-system} == system && $1 == /* ]] || return 0
  ov_dirname_v pdir "$1"
  [[ $pdir != / ]] || return 0
  ov_dirname_v gdir "$pdir"
  ov_root_guard "$gdir" || return 1
  if [[ -k $gdir ]] && [[ -L $pdir || (-e $pdir && ! -O $pdir) ]]; then
    ov_fail "refusing to remove $1 as root: $pdir belongs to another account, in a directory every account can write"
    return 1
  fi
}

# ov_undo_rm_tree SCOPE PATH... — `rm -rf`, never on /, a top-level directory or the home directory.
ov_undo_rm_tree() {
  local scope=$1 p rc=0
  shift
  for p in "$@"; do
    p=${p%/}
    if [[ $p != /*/* ]] || [ "$p" = "$OV_HOME" ]; then
      ov_fail "refusing to remove ${p:-/} recursively"
      rc=1
      continue
    fi
    if [ "$scope" = system ] && ! ov_root_guard_unlink "$p"; then
      rc=1
      continue
    fi
    ov_undo_as "$scope" rm -rf -- "$p" || rc=1
  done
  return "$rc"
}

# ov_undo_repo_setup — remove what repository set-up recorded: files and keys, pacman.conf
# sections, PPAs, repository release packages.
ov_undo_repo_setup() {
  local f rc=0 changed=0 release=()
  while IFS= read -r f; do
    if [ -n "$f" ] && rpm -q --quiet "$f" 2>/dev/null; then release+=("$f"); fi
  done < <(ov_state_lines release-packages.rpm)
  if [ "${#release[@]}" -gt 0 ]; then
    dnf remove -y "${release[@]}" || rc=1
  fi
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    ov_undo_paths system "$f" || rc=1
    changed=1
  done < <(ov_state_lines repo-files)
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    ov_block_strip /etc/pacman.conf "# overthink:repo $f begin" "# overthink:repo $f end" || rc=1
  done < <(ov_state_lines pacman-repos)
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    add-apt-repository -r -y "ppa:$f" || rc=1
  done < <(ov_state_lines ppas)
  [ "$changed" = 0 ] || ov_apt_sources_changed
  return "$rc"
}

# ov_undo_service_disable SCOPE UNIT — disable (and stop) UNIT, only if this layer enabled it.
ov_undo_service_disable() {
  local scope=$1 unit=$2 s=$1
  [ "$s" = user-profile ] && s=user
  ov_unit_recorded unit "$s" "$2"
  if ! ov_facts_has "$s" services.enabled "$s $unit"; then
    echo "ov: leaving $unit as it was: this layer did not enable it"
    return 0
  fi
  if [ "$s" = user ]; then
    if [ -S "/run/user/$OV_UID/systemd/private" ] || [ -S "/run/user/$OV_UID/bus" ]; then
      ov_as_user env XDG_RUNTIME_DIR="/run/user/$OV_UID" systemctl --user disable --now -- "$unit"
    else
      ov_as_user find "$OV_HOME/.config/systemd/user" -maxdepth 2 -path "*.wants/$unit" -type l -delete
    fi
  elif ov_systemd_running; then
    systemctl disable --now -- "$unit"
  else
    systemctl disable -- "$unit"
  fi
}

# ov_undo_restore_enabled SCOPE UNIT — a system unit that was enabled before this layer is enabled
# again if something disabled it meanwhile (undo never disables such a unit itself).
ov_undo_restore_enabled() {
  local unit
  ov_unit_recorded unit "$1" "$2"
  if [ "$1" = system ] && ov_state_has services.prior-enabled "system $unit" &&
    ! systemctl is-enabled --quiet -- "$unit" 2>/dev/null; then
    systemctl enable -- "$unit"
    return
  fi
  return 0
}

# ov_undo_unit_file SCOPE PATH — remove a unit file or drop-in (and an empty drop-in directory).
ov_undo_unit_file() {
  local scope=$1 path=$2 dir
  ov_undo_paths "$scope" "$path" || return 1
  ov_dirname_v dir "$path"
  case $dir in
    *.d) ov_undo_as "$scope" rmdir -- "$dir" 2>/dev/null || true ;;
  esac
  if [ "$scope" = system ]; then
    ov_daemon_reload system
  fi
  return 0
}

# ov_undo_copr COPR — disable a copr repository again.
ov_undo_copr() {
  dnf -y copr disable "$1"
}

# ov_undo_npm [PACKAGE...] — npm uninstall -g of the named and the recorded packages (of a layer
# that failed, the recorded ones only: its builder may never have run).
ov_undo_npm() {
  local pkgs=("$@") npm
  [ -z "${OV_PARTIAL:-}" ] || pkgs=()
  mapfile -t -O "${#pkgs[@]}" pkgs < <(ov_facts user npm.packages)
  [ "${#pkgs[@]}" -gt 0 ] || return 0
  npm=$(command -v npm) || npm="$OV_HOME/.npm-global/bin/npm"
  ov_as_user env NPM_CONFIG_PREFIX="$OV_HOME/.npm-global" "$npm" uninstall -g -- "${pkgs[@]}"
}

# ov_undo_cargo [CRATE...] — cargo uninstall of the named and the recorded crates (as for npm).
ov_undo_cargo() {
  local crates=("$@") cargo
  [ -z "${OV_PARTIAL:-}" ] || crates=()
  mapfile -t -O "${#crates[@]}" crates < <(ov_facts user cargo.crates)
  [ "${#crates[@]}" -gt 0 ] || return 0
  cargo=$(command -v cargo) || cargo="$OV_HOME/.cargo/bin/cargo"
  ov_as_user env CARGO_HOME="$OV_HOME/.cargo" "$cargo" uninstall --root "$OV_HOME/.cargo" -- "${crates[@]}"
}

# ov_undo_pixi — remove this layer's pixi project and the links made for it.
ov_undo_pixi() {
  local p rc=0
  while IFS= read -r p; do
    [ -n "$p" ] || continue
    ov_as_user rm -f -- "$p" || rc=1
  done < <(ov_facts user pixi.links)
  while IFS= read -r p; do
    case $p in
      "$OV_HOME"/.local/share/overthink/pixi/?*) ov_as_user rm -rf -- "$p" || rc=1 ;;
      '') ;;
      *)
        ov_fail "not removing unexpected pixi project path $p"
        rc=1
        ;;
    esac
  done < <(ov_facts user pixi.projects)
  return "$rc"
}
# ---- end of step helpers ----------------------------------------------------------------------

# ---- check mode (run.sh --check) --------------------------------------------------------------
# Each layer script NN-scope.sh has a check script beside it, NN-scope.check.sh (templates/check/),
# run by `run.sh --check` with the same account and environment. It calls only the helpers below:
# each one looks and changes nothing, and says per step `ok`, `change` (a run would change this)
# or `unknown` (it cannot be looked at from here). With OV_CHECK_DIFF=1 a file that differs is
# shown as a unified diff — a private one (no read bit for others in the bundle's mode) only with
# OV_CHECK_SECRETS=1. OV_CHECK_APPLIED=1 says the ledger shows the layer applied by this deploy
# with this content: its `cmd:` tasks and set-up steps ran then and a run would not run them.
# As root in a system script, a path is only read when every directory on the way is root's alone
# (ov_check_trusted): root reads nothing another account can swap under it.
OV_CHECK_CHANGES=0

# ov_chk STATE WHAT [WHY] — report one step; `change` counts.
ov_chk() {
  [ "$1" = change ] && OV_CHECK_CHANGES=$((OV_CHECK_CHANGES + 1))
  printf '  %-7s %s%s\n' "$1" "$2" "${3:+ ($3)}"
}

# ov_check_trusted PATH — whether PATH may be read here: as root in a system script, only through
# a way a root step could write (ov_root_guard of the directory holding PATH, quietly: the check
# says `unknown` instead). Owners alone are not enough: in a directory another account can write,
# it can swap root's own directories.
ov_check_trusted() {
  local dir
  [ "$EUID" = 0 ] && [ "${OV_SCOPE:-system}" = system ] || return 0
  ov_dirname_v dir "$1"
  ov_root_guard "$dir" 2>/dev/null
}

# ov_check_meta WHAT PATH MODE OWNER — after the content matched: mode and owner as the step sets them.
ov_check_meta() {
  local what=$1 p=$2 mode=$3 owner=$4 have want
  have=$(stat -c '%a %u:%g %U' -- "$p") || {
    ov_chk unknown "$what" "cannot stat it"
    return
  }
  if [ -n "$mode" ] && [ $((8#${have%% *})) != $((8#$mode)) ]; then
    ov_chk change "$what" "mode ${have%% *}, the step sets $mode"
    return
  fi
  if [ -n "$owner" ]; then
    want=$owner
    [[ $want == *:* ]] || want="$want:"
    have=${have#* }
    if [[ $want == *: ]]; then
      [ "${have#* }" = "${want%:}" ] || [ "${have%%:*}" = "${want%:}" ] || {
        ov_chk change "$what" "owner ${have#* }, the step sets ${want%:}"
        return
      }
    elif [ "${have%% *}" != "$want" ]; then
      ov_chk change "$what" "owner ${have%% *}, the step sets $want"
      return
    fi
  fi
  ov_chk ok "$what"
}

# ov_check_file WHAT DEST MODE OWNER KIND DATA — DEST should hold the bytes of the bundle's file
# DATA (KIND `file`) or the text DATA itself (KIND `text`), with MODE and OWNER.
ov_check_file() {
  local what=$1 dest=$2 mode=$3 owner=$4 kind=$5 data=$6 m
  if ! ov_check_trusted "$dest"; then
    ov_chk unknown "$what" "a directory on the way is not root's alone"
  elif [ -L "$dest" ]; then
    ov_chk change "$what" "a link is there, the step writes a file"
  elif [ ! -e "$dest" ]; then
    ov_chk change "$what" "absent"
  elif [ ! -f "$dest" ]; then
    ov_chk change "$what" "not a regular file"
  elif [ ! -r "$dest" ]; then
    ov_chk unknown "$what" "cannot read it as $(id -un)"
  elif cmp -s -- "$dest" <(ov_check_bytes "$kind" "$data"); then
    ov_check_meta "$what" "$dest" "$mode" "$owner"
  else
    ov_chk change "$what" "content differs"
    if [ "${OV_CHECK_DIFF:-0}" = 1 ]; then
      m=$((8#${mode:-644}))
      if (((m & 4) == 0)) && [ "${OV_CHECK_SECRETS:-0}" != 1 ]; then
        echo "          (a private file, mode $mode: run.sh --check --diff --show-secrets shows its diff)"
      else
        diff -u --label "$dest (on this machine)" --label "$dest (the bundle's)" -- "$dest" \
          <(ov_check_bytes "$kind" "$data") | sed -e 's/^/    /'
      fi
    fi
  fi
}

# ov_check_bytes KIND DATA — print the bytes a step would write (see ov_check_file).
ov_check_bytes() {
  if [ "$1" = file ]; then cat -- "$2"; else printf '%s' "$2"; fi
}

# The check twin of each helper a layer script calls (same arguments).
ov_check_install_file() {
  ov_check_file "file $2" "$2" "$3" "${4:-}" file "$1"
}
ov_check_write_file() {
  ov_check_file "file $1" "$1" "$2" "${4:-}" text "$3"
}
ov_check_mkdir() {
  if ! ov_check_trusted "$1"; then
    ov_chk unknown "directory $1" "a directory on the way is not root's alone"
  elif [ -d "$1" ] && [ ! -L "$1" ]; then
    ov_check_meta "directory $1" "$1" "${2:-}" "${3:-}"
  else
    ov_chk change "directory $1" "absent"
  fi
}
ov_check_link() {
  local have
  if [ -L "$2" ]; then
    have=$(readlink -- "$2")
    if [ "$have" = "$1" ]; then ov_chk ok "link $2 -> $1"; else ov_chk change "link $2 -> $1" "points to $have"; fi
  elif [ -e "$2" ]; then
    ov_chk change "link $2 -> $1" "a file is there"
  else
    ov_chk change "link $2 -> $1" "absent"
  fi
}
ov_check_download() {
  if [ -e "$2" ]; then
    ov_chk ok "download $1" "$2 is there; its content is not fetched to compare"
  else
    ov_chk change "download $1" "$2 absent"
  fi
}
ov_check_setcap() {
  local have
  have=$(getcap -- "$2" 2>/dev/null) || have=''
  if [ -z "$1" ]; then
    if [ -z "$have" ]; then ov_chk ok "no capabilities on $2"; else ov_chk change "no capabilities on $2" "has ${have#* }"; fi
  elif [[ " $have " == *" $1 "* || $have == *" $1" ]]; then
    ov_chk ok "capabilities $1 on $2"
  else
    ov_chk change "capabilities $1 on $2" "${have:-none}"
  fi
}
ov_check_envd() {
  local content
  ov_envd_text_v content "$@" || return 1
  ov_check_file "env file of $1" "$OV_HOME/.config/overthink/env.d/$1.env" 0644 '' text "$content"
}
ov_check_profile_block() {
  local f
  for f in "$OV_HOME/.profile" "$OV_HOME/.bashrc"; do
    if [ -f "$f" ] && grep -qxF -- "$OV_PROFILE_BODY" "$f"; then
      ov_chk ok "managed block in $f"
    else
      ov_chk change "managed block in $f" "absent"
    fi
  done
}
ov_check_packages() {
  local fmt=$1 p m missing=() present=() upgrades=() members=()
  shift
  for p in "$@"; do
    if ov_pkg_installed "$fmt" "$p"; then
      present+=("$p")
    elif [ "$fmt" = pac ] && mapfile -t members < <(pacman -Sgq -- "$p" 2>/dev/null) &&
      [ "${#members[@]}" -gt 0 ]; then
      # A group is no package: `pacman -S --needed GROUP` installs its members that are
      # missing and upgrades the others, each like a package named on its own.
      for m in "${members[@]}"; do
        if pacman -Q -- "$m" >/dev/null 2>&1; then present+=("$m"); else missing+=("$m"); fi
      done
    else
      missing+=("$p")
    fi
  done
  # `apt-get install` and `pacman -S --needed` of a package that is installed upgrade it when the
  # package lists offer a newer version (as they are now: a run updates them first, so it may
  # find more). `dnf install` does not: an installed package is left as it is.
  if [ "${#present[@]}" -gt 0 ]; then
    case $fmt in
      deb) mapfile -t upgrades < <(ov_check_apt_upgrades "${present[@]}") ;;
      pac) mapfile -t upgrades < <(ov_check_pac_upgrades "${present[@]}") ;;
    esac
  fi
  if [ "${#missing[@]}" = 0 ] && [ "${#upgrades[@]}" = 0 ]; then
    ov_chk ok "$fmt packages $*"
  elif [ "${#missing[@]}" = 0 ]; then
    ov_chk change "$fmt packages $*" "would upgrade ${upgrades[*]}"
  elif [ "${#upgrades[@]}" = 0 ]; then
    ov_chk change "$fmt packages $*" "would install ${missing[*]}"
  else
    ov_chk change "$fmt packages $*" "would install ${missing[*]}; would upgrade ${upgrades[*]}"
  fi
}
# ov_check_apt_upgrades PACKAGE... — print `NAME (INSTALLED -> CANDIDATE)` for each installed
# PACKAGE whose candidate in the package lists is another version.
ov_check_apt_upgrades() {
  LC_ALL=C apt-cache policy -- "$@" 2>/dev/null | awk '
    /^[^ ]/ { name = $1; sub(/:$/, "", name); inst = ""; next }
    $1 == "Installed:" { inst = $2; next }
    $1 == "Candidate:" && inst != "" && inst != "(none)" && $2 != "(none)" && $2 != inst {
      print name " (" inst " -> " $2 ")"
    }'
}
# ov_check_pac_upgrades PACKAGE... — the same for pacman: each installed PACKAGE older than the
# sync database's (`pacman -Qu` prints `NAME INSTALLED -> NEWER`; it says nothing of a package
# that is up to date, or newer than the database's, which `--needed` skips).
ov_check_pac_upgrades() {
  LC_ALL=C pacman -Qu -- "$@" 2>/dev/null | awk 'NF >= 4 && $3 == "->" { print $1 " (" $2 " -> " $4 ")" }'
}
ov_check_service() {
  local scope=$1 unit=$2 state
  if [ "$scope" != system ]; then
    ov_chk unknown "service $unit" "a user's manager is not asked in a check"
    return
  fi
  state=$(systemctl is-enabled -- "$unit" 2>/dev/null) || true
  case $state in
    enabled | enabled-runtime | static | indirect | generated) ov_chk ok "service $unit enabled" ;;
    '') ov_chk unknown "service $unit" "systemctl cannot tell" ;;
    *) ov_chk change "service $unit enabled" "$state" ;;
  esac
  # A run starts the unit too, where systemd runs (`enable --now`).
  if ov_systemd_running; then
    state=$(systemctl is-active -- "$unit" 2>/dev/null) || true
    case $state in
      active | reloading | activating) ov_chk ok "service $unit running" ;;
      *) ov_chk change "service $unit running" "${state:-unknown}; a run starts it" ;;
    esac
  fi
}
# ov_check_apt_repo NAME URL SUITE COMPONENTS KEY_URL SIGNED_BY — what ov_apt_repo would write: the
# sources file compared line for line; the key only by its presence (it is downloaded at run time).
ov_check_apt_repo() {
  local name=$1 url=$2 suite=$3 components=$4 key=$5 keyring=$6 opts='' line
  if [ -n "$key" ]; then
    keyring=${keyring:-/etc/apt/keyrings/$name.gpg}
    ov_check_apt_key "$name" "$keyring"
  fi
  if [ -n "$keyring" ]; then
    opts="[signed-by=$keyring] "
  fi
  if [ "$suite" = / ]; then
    line="deb ${opts}$url /"
  else
    line="deb ${opts}$url $suite $components"
  fi
  ov_check_write_file "/etc/apt/sources.list.d/$name.list" 0644 "$line"$'\n'
}
# ov_check_apt_key NAME KEYRING — the repository's key is in place (its content is not compared:
# a run downloads it again).
ov_check_apt_key() {
  local name=$1 keyring=${2:-/etc/apt/keyrings/$1.gpg}
  if ! ov_check_trusted "$keyring"; then
    ov_chk unknown "key of repository $name" "$keyring is under a directory another account can change"
  elif [ -s "$keyring" ]; then
    ov_chk ok "key of repository $name" "$keyring present; not downloaded to compare"
  else
    ov_chk change "key of repository $name" "would download it to $keyring"
  fi
}
# ov_check_runs WHAT — a step that cannot be looked at (a `cmd:` task, a builder, repository
# set-up): it ran when the layer was applied; otherwise a run would run it.
ov_check_runs() {
  if [ "${OV_CHECK_APPLIED:-0}" = 1 ]; then
    ov_chk ok "$1" "ran when the layer was applied"
  else
    ov_chk change "$1" "would run; not checkable beforehand"
  fi
}
