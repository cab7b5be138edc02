//! Test support, the target's privilege boundary under attack: a throwaway target account with
//! no sudo (`ovatk`, the `--user` of every push) and a bystander (`ovother`); root-owned
//! canaries for the attacks to aim at; a world-writable marker directory for what planted
//! payloads report; small fixture projects; the ways a bundle reaches this machine (`ov push
//! host`, `ov push` over SSH to the private sshd, the bundle by hand) and its teardowns; and the
//! attacker's own processes (perl loops run as the unprivileged accounts).
//! Invariants: an attack only ever aims at canaries made here, never at a real system file; the
//! accounts' homes, views and root ledgers are reset before and after every test; every process
//! started here stops by itself (a deadline) or is ended by its id.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::sshd::{self, TestHost};
use super::{e2e, run};

/// The account every push names with `--user`: unprivileged, no sudo, the attacker.
pub const ATTACKER: &str = "ovatk";
/// Another local account: unprivileged, no sudo, a bystander who snoops.
pub const OTHER: &str = "ovother";
/// Where the fixed runtime keeps root's own ledger of an account (`<dir>/<user>`).
pub const ROOT_LEDGERS: &str = "/var/lib/overthink/installed";
/// Where pushes unpack bundles: today's base and the fixed runtime's.
pub const WORK_BASES: [&str; 2] = ["/var/tmp/ov", "/var/lib/overthink/work"];
/// The login user of the SSH entry point (passwordless sudo; see `sshd.rs`).
pub const SSH_LOGIN: &str = sshd::USER;
/// The VM name of the SSH entry point's deploy (`vm:atk`; its bundle's top directory `vm-atk`).
pub const VM: &str = "atk";

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Serialises the tests of this process that use the accounts (they share one home and ledger).
static SERIAL: Mutex<()> = Mutex::new(());

/// Whether the attacks can run here: root and the tools. A missing one skips (printed), and fails
/// under `CI`.
pub fn available() -> bool {
    crate::common::require(
        "attack tests",
        &[
            "bash",
            "runuser",
            "useradd",
            "usermod",
            "getent",
            "perl",
            "tar",
            "flock",
            "sha256sum",
        ],
        true,
        "the attack tests need root, util-linux and perl",
    )
}

/// The home of `user`, which must be `/home/<user>` (this module empties it).
pub fn home(user: &str) -> PathBuf {
    let h = sshd::home_of(user);
    assert_eq!(
        h,
        Path::new("/home").join(user),
        "refusing to work with account {user}: its home is not /home/{user}"
    );
    h
}

/// `~user/.config/overthink/installed`: today's ledger, the fixed runtime's view.
pub fn view(user: &str) -> PathBuf {
    home(user).join(".config/overthink/installed")
}

/// Create the two accounts (idempotent) and make sure neither can use sudo.
fn ensure_users() {
    for user in [ATTACKER, OTHER] {
        let exists = Command::new("id")
            .arg(user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !exists {
            run(Command::new("useradd").args(["--create-home", "--shell", "/bin/bash", user]));
        }
        let _ = std::fs::remove_file(format!("/etc/sudoers.d/90-{user}"));
        let groups = run(Command::new("id").args(["-nG", user]));
        let groups = String::from_utf8_lossy(&groups.stdout).into_owned();
        for g in groups.split_whitespace() {
            assert!(
                !["sudo", "wheel", "admin", "root"].contains(&g),
                "refusing to attack with {user}: it is in group {g}"
            );
        }
        if crate::common::find_tool("sudo").is_some() {
            let out = user_cmd(user, "sudo")
                .args(["-n", "true"])
                .stdin(Stdio::null())
                .output()
                .expect("sudo runs");
            assert!(
                !out.status.success(),
                "refusing to attack with {user}: `sudo -n true` works for it"
            );
        }
        let _ = home(user);
    }
}

/// Empty the accounts' homes (back to /etc/skel) and remove their root ledgers.
pub fn reset_accounts() {
    for user in [ATTACKER, OTHER] {
        let h = home(user);
        if let Ok(rd) = std::fs::read_dir(&h) {
            for e in rd.flatten() {
                let p = e.path();
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {
                        let _ = std::fs::remove_dir_all(&p);
                    }
                    Ok(_) => {
                        let _ = std::fs::remove_file(&p);
                    }
                    Err(_) => {}
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir("/etc/skel") {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    let to = h.join(e.file_name());
                    if std::fs::copy(e.path(), &to).is_ok() {
                        let _ = Command::new("chown")
                            .arg(format!("{user}:{user}"))
                            .arg(&to)
                            .status();
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(Path::new(ROOT_LEDGERS).join(user));
    }
}

/// One attack test at a time (in this process and across processes); the accounts exist and
/// are reset now and again when it is dropped. `None`: skipped.
pub struct Session {
    _serial: MutexGuard<'static, ()>,
    _lock: std::fs::File,
}

impl Session {
    /// Take the lock, create and reset the accounts. `None`: skipped (printed).
    pub fn begin() -> Option<Session> {
        if !available() {
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/ov-it-attacks.lock")
            .expect("open lock file");
        lock.lock().expect("lock");
        ensure_users();
        reset_accounts();
        Some(Session {
            _serial: serial,
            _lock: lock,
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        reset_accounts();
    }
}

/// A fresh root-owned directory under /var/tmp with `mode`.
pub fn root_dir(prefix: &str, mode: u32) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
    d
}

/// A command run as `user` (through `runuser`, from `/`, with a minimal environment).
pub fn user_cmd(user: &str, program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.env_clear()
        .env("PATH", PATH)
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .args(["-u", user, "--", program]);
    c
}

/// Run `script` with bash as `user`; it must succeed.
pub fn as_user(user: &str, script: &str) -> Output {
    run(user_cmd(user, "bash")
        .args(["-c", script])
        .stdin(Stdio::null()))
}

/// Root-owned canaries: files (content, owner root, mode 0644) and directories (listing, owner
/// root, mode 0755) in a fresh root-owned 0755 directory, which the attacker can name but not
/// change. Only root following a path the attacker controls can change one.
pub struct Canaries {
    dir: tempfile::TempDir,
    before: BTreeMap<String, String>,
}

impl Canaries {
    /// Files `file1`..`file3`, directories `dir1`..`dir3` (each holding `keep`), `empty` (an
    /// empty directory), and `extra` directories with the given (canary) files in them.
    pub fn new(extra: &[(&str, &[&str])]) -> Canaries {
        let dir = root_dir("ov-it-canary.", 0o755);
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let file = |p: &Path| {
            std::fs::write(p, format!("canary {} {tag}\n", p.display())).expect("canary file");
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        };
        let mkdir = |p: &Path| {
            std::fs::create_dir(p).expect("canary dir");
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        for i in 1..=3 {
            file(&dir.path().join(format!("file{i}")));
            let d = dir.path().join(format!("dir{i}"));
            mkdir(&d);
            file(&d.join("keep"));
        }
        mkdir(&dir.path().join("empty"));
        for (name, files) in extra {
            let d = dir.path().join(name);
            mkdir(&d);
            for f in *files {
                file(&d.join(f));
            }
        }
        let mut c = Canaries {
            dir,
            before: BTreeMap::new(),
        };
        c.before = c.snapshot();
        c
    }

    /// A canary file (`file1`..`file3`, or `<extra dir>/<file>`).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A canary directory (`dir1`..`dir3`, `empty`, or an extra one).
    pub fn dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The canary files, for the attacker's loops.
    pub fn files(&self) -> Vec<PathBuf> {
        (1..=3).map(|i| self.file(&format!("file{i}"))).collect()
    }

    /// The canary directories, for the attacker's loops.
    pub fn dirs(&self) -> Vec<PathBuf> {
        (1..=3).map(|i| self.dir(&format!("dir{i}"))).collect()
    }

    fn snapshot(&self) -> BTreeMap<String, String> {
        let mut s = e2e::snapshot(self.dir.path(), &[]);
        let m = std::fs::symlink_metadata(self.dir.path()).expect("canary root");
        s.insert(
            ".".into(),
            format!("dir {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid()),
        );
        s
    }

    /// What changed since the last call (or since they were made), `+`/`-` lines; the changes
    /// become the new baseline, so each step reports only its own.
    pub fn changes(&mut self) -> Vec<String> {
        let now = self.snapshot();
        let d = e2e::diff(&self.before, &now, &[]);
        self.before = now;
        d
    }
}

/// A world-writable (1777) directory where planted payloads and the tests' dumps write.
pub struct Markers {
    dir: tempfile::TempDir,
}

impl Default for Markers {
    fn default() -> Self {
        Markers::new()
    }
}

impl Markers {
    /// A fresh one under /var/tmp.
    pub fn new() -> Markers {
        Markers {
            dir: root_dir("ov-it-marker.", 0o1777),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A payload script (sh and bash, run or sourced): writes `id -u` into a new marker file.
    pub fn payload(&self) -> String {
        format!(
            "#!/bin/sh\n# planted by {ATTACKER}: whoever runs this leaves its uid behind\nid -u >\"{}/marker.$$.${{RANDOM:-0}}\" 2>/dev/null || true\n",
            self.path().display()
        )
    }

    /// The marker files and what each says.
    pub fn markers(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = std::fs::read_dir(self.path())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("marker."))
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            std::fs::read_to_string(e.path())
                                .unwrap_or_default()
                                .trim()
                                .to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The markers a root process left.
    pub fn root_markers(&self) -> Vec<String> {
        self.markers()
            .into_iter()
            .filter(|(_, uid)| uid == "0")
            .map(|(name, _)| name)
            .collect()
    }
}

/// A loop the attacker (or a bystander) runs in the background: a perl program with the
/// arguments `STOP SECS LOG ARGS…`; it stops when STOP exists or after SECS seconds, and writes
/// `sweep N` lines and its findings to LOG (in the marker directory).
pub struct Loop {
    child: Option<Child>,
    stop: PathBuf,
    log: PathBuf,
    err: PathBuf,
}

impl Loop {
    /// Start `program` as `user` and wait for its first sweep.
    pub fn start(
        user: &str,
        name: &str,
        markers: &Markers,
        program: &str,
        secs: u64,
        args: &[String],
    ) -> Loop {
        let stop = markers.path().join(format!("{name}.stop"));
        let log = markers.path().join(format!("{name}.log"));
        let err = markers.path().join(format!("{name}.err"));
        let errf = std::fs::File::create(&err).expect("stderr file");
        let child = user_cmd(user, "perl")
            .arg("-e")
            .arg(program)
            .arg(&stop)
            .arg(secs.to_string())
            .arg(&log)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(errf)
            .spawn()
            .expect("spawn the loop");
        let mut l = Loop {
            child: Some(child),
            stop,
            log,
            err,
        };
        let t0 = Instant::now();
        while !l.log_text().contains("sweep 1\n") {
            let exited = l
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            assert!(
                !exited && t0.elapsed() < Duration::from_secs(20),
                "loop {name} did not start: {}",
                std::fs::read_to_string(&l.err).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        l
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the loop has done `n` more sweeps (at most `max`).
    pub fn more_sweeps(&self, n: usize, max: Duration) {
        let count = |t: &str| t.lines().filter(|l| l.starts_with("sweep ")).count();
        let start = count(&self.log_text());
        let t0 = Instant::now();
        while count(&self.log_text()) < start + n && t0.elapsed() < max {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn halt(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = std::fs::write(&self.stop, "stop\n");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Only what we started: the runuser child and its descendants, by id.
        let pid = child.id();
        sshd::kill(&sshd::descendants(pid), "KILL");
        sshd::kill(&[pid], "KILL");
        let _ = child.wait();
    }

    /// Stop it and return its log (with its stderr, if any).
    pub fn finish(mut self) -> String {
        self.halt();
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        let mut log = self.log_text();
        if !err.trim().is_empty() {
            log.push_str("--- stderr\n");
            log.push_str(&err);
        }
        log
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The `LEAK`/`WON` lines of a loop's log.
pub fn findings_in(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.starts_with("LEAK ") || l.starts_with("WON "))
        .map(str::to_string)
        .collect()
}

/// How many sweeps a loop's log records.
pub fn sweeps_in(log: &str) -> usize {
    log.lines().filter(|l| l.starts_with("sweep ")).count()
}

/// Perl, the attacker's planting loop. Arguments after `STOP SECS LOG`: HOME, the canary files
/// and directories (newline-separated), the layer names. Each sweep: every ledger/view path under
/// `~/.config/overthink` that is missing, or a regular file root left there, becomes a symlink
/// to a canary (files to files, directories to directories); then every root-owned, not
/// world-writable work directory it can see (under /var/tmp/ov and /var/lib/overthink, and the
/// directories of paths on any process's command line) gets a probe symlink, and every
/// root-owned file in them an open for append: a success is a `WON` line.
pub const PLANTER: &str = r#"
use strict; use warnings;
my ($stop, $secs, $log, $home, $files, $dirs, @layers) = @ARGV;
my @cf = split /\n/, $files; my @cd = split /\n/, $dirs;
open(my $L, '>>', $log) or die "log $log: $!"; select((select($L), $| = 1)[0]);
my $end = time + $secs;
my $O = "$home/.config/overthink"; my $I = "$O/installed";
# The directories a run needs stay real (so a run that writes them as the user goes on); the
# static cases of root_never_follows_the_users_symlinks make them symlinks.
for my $d ("$home/.config", $O, $I, "$I/layers", "$I/deploys", "$I/.tmp", "$O/env.d") { mkdir $d; }
chmod 0700, "$I/.tmp";
my (@fp, @dp);
push @fp, "$I/.lock", "$I/.tmp/journal", "$I/lib.sh", "$I/undo.sh";
push @dp, "$I/.tmp/stage", "$I/.tmp/old";
for my $l (@layers) {
  push @fp, "$I/.tmp/stage/$l.json", "$I/.tmp/stage/$l.undo.sh", "$I/layers/$l.json",
    "$I/layers/$l.undo.sh", "$O/env.d/$l.env";
  push @dp, "$I/.tmp/stage/$l.d", "$I/layers/$l.d";
}
my ($n, $planted, $tried, $won) = (0, 0, 0, 0);
my %wonseen;
sub plant {
  my ($p, $t) = @_;
  my @st = lstat $p;
  if (@st) {
    return if -l _;
    return unless -f _ && $st[4] == 0;   # a regular file root left in the user's directory
    rename $p, "$p.atk-moved.$n" or return;
  }
  $planted++ if symlink $t, $p;
}
sub won { my $w = shift; print $L "WON $w\n" unless $wonseen{$w}++; $won++; }
sub workdirs {
  my %wd;
  my @todo = map { [$_, 0] } grep { -d } ('/var/tmp/ov', '/var/lib/overthink');
  while (my $e = shift @todo) {
    my ($d, $depth) = @$e;
    my @ds = stat $d; $wd{$d} = 1 if @ds && $ds[4] == 0 && !($ds[2] & 02);
    next if $depth >= 5;
    opendir(my $dh, $d) or next;
    for my $x (readdir $dh) { next if $x eq '.' || $x eq '..'; my $p = "$d/$x";
      push @todo, [$p, $depth + 1] if -d $p && !-l $p; }
  }
  for my $c (glob '/proc/[0-9]*/cmdline') {
    open(my $fh, '<', $c) or next; local $/; my $s = <$fh>; next unless defined $s;
    for my $t (split /\0/, $s) {
      next unless $t =~ m{^/}; next if $t =~ m{^/(proc|sys|dev)(/|$)};
      my $d = -d $t ? $t : ($t =~ s{/[^/]*$}{}r);
      next unless length $d && -d $d;
      my @st = stat $d; next unless @st && $st[4] == 0 && !($st[2] & 02);
      $wd{$d} = 1;
    }
  }
  return keys %wd;
}
while (!-e $stop && time < $end) {
  $n++;
  plant($_, $cf[$n % @cf]) for @fp;
  plant($_, $cd[$n % @cd]) for @dp;
  if ($n % 4 == 1) {
    for my $d (workdirs()) {
      $tried++;
      my $probe = "$d/.ovatk-probe.$$";
      if (symlink $cf[0], $probe) { won("dir $d"); unlink $probe; }
      opendir(my $dh, $d) or next;
      for my $x (readdir $dh) { my $p = "$d/$x"; next if -l $p || !-f $p;
        my @st = stat $p; next unless @st && $st[4] == 0;
        if (open(my $fh, '>>', $p)) { won("file $p"); close $fh; } }
    }
  }
  print $L "sweep $n\n";
  select(undef, undef, undef, 0.005);
}
print $L "done sweeps=$n planted=$planted tried=$tried won=$won\n";
"#;

/// Perl, the snooping loop. Arguments after `STOP SECS LOG`: MODE (`files` or `environ`), a
/// path prefix never to read (the marker directory), the file of needles (one a line; see
/// [`needles_file`]: not on any command line), then more directories to read. `files`: every
/// sweep reads every file it can under /var/tmp/ov, /var/lib/overthink, /tmp/ov-* and the given
/// directories, and every path on any
/// process's command line with the directories around it (listing them, and the files their
/// SHA256SUMS names), and every command line itself; `environ`: every /proc/PID/environ and
/// cmdline it can read. A needle found
/// is a `LEAK` line naming where (never the needle); `SEEN` lines list the command lines of the
/// processes whose environment it could read.
pub const SNOOPER: &str = r#"
use strict; use warnings;
my ($stop, $secs, $log, $mode, $skip, $nfile, @more) = @ARGV;
my @bases = ('/var/tmp/ov', '/var/lib/overthink', glob('/tmp/ov-*'), @more);
open(my $nf, '<', $nfile) or die "needles $nfile: $!";
my @needles = grep { length } map { chomp; $_ } <$nf>;
close $nf;
open(my $L, '>>', $log) or die "log $log: $!"; select((select($L), $| = 1)[0]);
my $end = time + $secs;
my ($n, $reads) = (0, 0);
my (%seen, %leak, %probed, %seenpid);
sub hit {
  my ($what, $text) = @_;
  for my $i (0 .. $#needles) {
    if (index($text, $needles[$i]) >= 0 && !$leak{"$i $what"}++) { print $L "LEAK needle$i $what\n"; }
  }
}
sub file {
  my $f = shift;
  return if index($f, $skip) == 0;
  my @st = stat $f or return; return unless -f _; return if $st[7] > (8 << 20);
  my $k = join ':', @st[1, 7, 9, 10];
  return if ($seen{$f} // '') eq $k;
  open(my $fh, '<', $f) or return;
  local $/; my $t = <$fh>; $t = '' unless defined $t;
  $seen{$f} = $k; $reads++;
  hit("file $f", $t);
}
sub walk {
  my ($d, $depth, $max) = @_;
  return if index($d, $skip) == 0;
  opendir(my $dh, $d) or return;
  for my $x (readdir $dh) {
    next if $x eq '.' || $x eq '..';
    my $p = "$d/$x"; next if -l $p;
    if (-d $p) { walk($p, $depth + 1, $max) if $depth < $max } else { file($p) }
  }
}
sub around {
  my $d = shift;
  return if $d eq '' || $d =~ m{^/(proc|sys|dev|usr|bin|sbin|lib|lib64|etc)(/|$)};
  return if $d =~ m{^/(tmp|var/tmp|var|home|root|run|work)?$};
  return if ($probed{$d} // 0) > time - 1;
  $probed{$d} = time;
  walk($d, 0, 0);
  for my $m ("$d/SHA256SUMS", "$d/manifest.json") { file($m) }
  if (open(my $fh, '<', "$d/SHA256SUMS")) {
    while (my $l = <$fh>) { chomp $l; file("$d/$1") if $l =~ /^[0-9a-f]{64}  (.+)$/ }
  }
}
while (!-e $stop && time < $end) {
  $n++;
  if ($mode eq 'files') {
    walk($_, 0, 8) for @bases;
    my %dirs;
    for my $c (glob '/proc/[0-9]*/cmdline') {
      open(my $fh, '<', $c) or next; local $/; my $s = <$fh>; next unless defined $s;
      hit("command line of " . ($c =~ s{/cmdline$}{}r), $s);
      for my $t (split /\0/, $s) {
        for my $tok ($t, split /[\s=:'"]+/, $t) {
          next unless $tok =~ m{^/}; next if index($tok, $skip) == 0;
          if (-f $tok) { file($tok); my $d = $tok =~ s{/[^/]*$}{}r; $dirs{$d} = 1;
            $dirs{$d =~ s{/[^/]*$}{}r} = 1; }
          elsif (-d $tok) { $dirs{$tok} = 1; $dirs{$tok =~ s{/[^/]*$}{}r} = 1; }
        }
      }
    }
    around($_) for keys %dirs;
  } else {
    for my $e (glob '/proc/[0-9]*/environ') {
      my ($pid) = $e =~ m{^/proc/(\d+)/};
      next if $pid == $$;
      open(my $fh, '<', $e) or next; local $/; my $t = <$fh>; next unless defined $t;
      $reads++;
      my $cmd = '';
      if (open(my $ch, '<', "/proc/$pid/cmdline")) { $cmd = <$ch> // ''; $cmd =~ s/\0/ /g; }
      print $L "SEEN $pid $cmd\n" unless $seenpid{"$pid $cmd"}++;
      hit("environ of $pid ($cmd)", $t);
    }
  }
  print $L "sweep $n\n";
  select(undef, undef, undef, 0.02);
}
print $L "done sweeps=$n reads=$reads\n";
"#;

/// Write `needles` (one a line) to a file in the marker directory that only `user` can read,
/// for [`SNOOPER`]: a needle on the snooper's command line would be found there.
pub fn needles_file(markers: &Markers, user: &str, needles: &[&str]) -> PathBuf {
    let p = markers
        .path()
        .join(format!("needles.{}", uuid::Uuid::new_v4().simple()));
    let text: String = needles.iter().map(|n| format!("{n}\n")).collect();
    std::fs::write(&p, text).expect("needles");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    run(Command::new("chown").arg(format!("{user}:")).arg(&p));
    p
}

/// How a bundle reaches this machine.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    /// `ov push host --user ovatk`, as root (the local executor).
    Host,
    /// `ov push vm:atk --host … --ssh-user ovtest --user ovatk` to the private sshd.
    Ssh(&'a TestHost),
    /// `ov compile host`, unpacked by hand, `bash run.sh --user ovatk` as root.
    ByHand,
}

impl Via<'_> {
    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Via::Host => "ov push host",
            Via::Ssh(_) => "ov push over ssh",
            Via::ByHand => "bash run.sh by hand",
        }
    }
}

/// How a deploy is torn down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// `ov deploy del` the same way the push went (`host`, or over SSH; by hand: `host`).
    Del,
    /// The bundle's own `undo.sh --user ovatk`, unpacked by hand, as root.
    UndoSh,
}

/// Options of one push.
#[derive(Default, Clone)]
pub struct PushOpts {
    /// `--force` (run.sh: `--force`).
    pub force: bool,
    /// `--keep` (not by hand).
    pub keep: bool,
    /// Extra environment of `ov` (or of `bash run.sh`).
    pub env: Vec<(String, String)>,
    /// By hand: unpack into a root-only (0700) directory instead of a root-owned 0755 one.
    pub private_bundle: bool,
    /// `--json` (not by hand).
    pub json: bool,
}

/// The result of `ov` or of a bundle script.
pub struct Outcome {
    /// What ran.
    pub what: String,
    /// Exit status.
    pub code: Option<i32>,
    /// Status, stdout and stderr, for messages.
    pub text: String,
    /// Standard output alone.
    pub stdout: String,
}

impl Outcome {
    fn of(what: String, out: Output, unreached: &[i32]) -> Outcome {
        let o = Outcome {
            what,
            code: out.status.code(),
            text: e2e::text(&out),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        };
        eprintln!("$ {} -> {:?}", o.what, o.code);
        assert!(
            o.code.is_some_and(|c| !unreached.contains(&c)),
            "{} did not get as far as the target's runtime (usage, input, integrity or connection):\n{}",
            o.what,
            o.text
        );
        o
    }

    /// Exit 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panic unless it exited 0.
    pub fn expect_ok(&self) {
        assert!(self.ok(), "{} failed:\n{}", self.what, self.text);
    }
}

/// `ov`'s exit statuses that mean the target's runtime never ran.
const OV_UNREACHED: [i32; 5] = [2, 3, 4, 5, 6];
/// run.sh's and undo.sh's: usage, integrity, not root.
const SCRIPT_UNREACHED: [i32; 3] = [2, 3, 6];

/// A fixture project in a fresh directory: `layers`, a `host` node and a `vm:atk` deploy (login
/// user `ovtest`), both with `allow_root_tasks`; its own `HOME` for `ov`; a root-owned directory
/// for bundles unpacked by hand.
pub struct Project {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
    by_hand: tempfile::TempDir,
    n: usize,
    /// The layer names, in the order given.
    pub layers: Vec<String>,
}

impl Project {
    /// `layers`: (name, full layer.yml); `files`: (layer, file name, content) beside a layer.
    pub fn new(layers: &[(String, String)], files: &[(&str, &str, &str)]) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("ov-it-atk-project.")
            .tempdir()
            .expect("tempdir");
        // The operator's project and its `ov` HOME are private to root, as on an operator's
        // machine: whatever another account reads of the layers, it read from the target.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let p = dir.path();
        std::fs::write(
            p.join("overthink.yml"),
            "version: 2\nincludes:\n  - build.yml\n  - deploy.yml\ndiscover:\n  layers:\n    - path: layers\n      recursive: true\n",
        )
        .expect("overthink.yml");
        std::fs::write(
            p.join("build.yml"),
            "distros:\n  debian:\n    formats:\n      deb: {}\n",
        )
        .expect("build.yml");
        let names: String = layers
            .iter()
            .map(|(n, _)| format!("        - {n}\n"))
            .collect();
        std::fs::write(
            p.join("deploy.yml"),
            format!(
                "version: 3\ndeployments:\n  images:\n    host:\n      target: host\n      add_layers:\n{names}      install_opts:\n        allow_root_tasks: true\n    atk-vm:\n      target: vm\n      vm_source: {VM}\n      add_layers:\n{names}      install_opts:\n        allow_root_tasks: true\nvm:\n  {VM}:\n    source:\n      kind: cloud_image\n      base_user: debian\n      distro: \"debian:12\"\n    ssh:\n      user: {SSH_LOGIN}\n      port: 22\n      key_source: generate\n"
            ),
        )
        .expect("deploy.yml");
        for (name, yml) in layers {
            let d = p.join("layers").join(name);
            std::fs::create_dir_all(&d).expect("layer dir");
            std::fs::write(d.join("layer.yml"), yml).expect("layer.yml");
        }
        for (layer, name, content) in files {
            std::fs::write(p.join("layers").join(layer).join(name), content).expect("payload");
        }
        Project {
            dir,
            home: {
                let h = tempfile::tempdir().expect("home");
                std::fs::set_permissions(h.path(), std::fs::Permissions::from_mode(0o700))
                    .expect("chmod");
                h
            },
            by_hand: root_dir("ov-it-atk-bundle.", 0o755),
            n: 0,
            layers: layers.iter().map(|(n, _)| n.clone()).collect(),
        }
    }

    fn ov(&self) -> Command {
        let mut c = crate::common::ov_at_home(self.home.path(), self.dir.path());
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        c
    }

    fn deploy(via: &Via) -> &'static str {
        match via {
            Via::Ssh(_) => "vm:atk",
            _ => "host",
        }
    }

    fn connect(&self, via: &Via, c: &mut Command) {
        if let Via::Ssh(h) = via {
            c.args(["--host", &h.addr, "--port", &h.port.to_string()])
                .args(["--ssh-user", SSH_LOGIN, "--wait-ssh", "20", "-i"])
                .arg(&h.client_key)
                .arg("--known-hosts")
                .arg(h.dir().join("known_hosts"));
        }
    }

    /// Compile the deploy of `via` and unpack it in a fresh directory (0755, or 0700 when
    /// `private`); the unpacked top directory.
    fn unpack(&mut self, via: &Via, private: bool) -> PathBuf {
        self.n += 1;
        let d = self.by_hand.path().join(format!("b{}", self.n));
        std::fs::create_dir(&d).expect("mkdir");
        let mode = if private { 0o700 } else { 0o755 };
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let deploy = Project::deploy(via);
        let top = deploy.replace(':', "-");
        let archive = d.join(format!("{top}.tar.gz"));
        let out = Outcome::of(
            format!("ov compile {deploy}"),
            self.ov()
                .args(["compile", deploy, "-o"])
                .arg(&archive)
                .output()
                .expect("ov runs"),
            &[],
        );
        out.expect_ok();
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&d));
        d.join(top)
    }

    fn script(&self, script: &Path, args: &[&str], env: &[(String, String)]) -> Output {
        let mut c = Command::new("bash");
        c.env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .current_dir(self.by_hand.path())
            .stdin(Stdio::null())
            .arg(script)
            .args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("bash runs")
    }

    /// Compile `host`, unpack it by hand, and give the unpacked tree to `owner` (as if that
    /// account had unpacked it): the top directory.
    pub fn unpack_owned_by(&mut self, owner: &str) -> PathBuf {
        let top = self.unpack(&Via::Host, false);
        let parent = top.parent().expect("parent");
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{owner}:"))
            .arg(parent));
        top
    }

    /// `bash SCRIPT ARGS…` as root, with a small clean environment, started in the background.
    pub fn spawn_script(&self, script: &Path, args: &[&str]) -> Child {
        Command::new("bash")
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .arg(script)
            .args(args)
            .spawn()
            .expect("bash runs")
    }

    /// The state `ov` saved (its `deploy.yml` in the project's HOME), empty when none.
    pub fn state_text(&self) -> String {
        std::fs::read_to_string(self.home.path().join(".config/ov/deploy.yml")).unwrap_or_default()
    }

    /// `ov ARGS…` in the project (its HOME, its directory).
    pub fn ov_output(&self, args: &[&std::ffi::OsStr]) -> Output {
        self.ov().args(args).output().expect("ov runs")
    }

    /// Push the project's layers with `--user ovatk` via `via`.
    pub fn push(&mut self, via: &Via, o: &PushOpts) -> Outcome {
        if let Via::ByHand = via {
            let top = self.unpack(via, o.private_bundle);
            let mut args = vec!["--user", ATTACKER];
            if o.force {
                args.push("--force");
            }
            let out = self.script(&top.join("run.sh"), &args, &o.env);
            return Outcome::of(
                format!("bash {}/run.sh {}", top.display(), args.join(" ")),
                out,
                &SCRIPT_UNREACHED,
            );
        }
        let deploy = Project::deploy(via);
        let mut c = self.ov();
        c.args(["push", deploy, "--user", ATTACKER]);
        if o.force {
            c.arg("--force");
        }
        if o.keep {
            c.arg("--keep");
        }
        if o.json {
            c.arg("--json");
        }
        if let Via::Ssh(_) = via {
            c.arg("--no-wait-cloud-init");
        }
        self.connect(via, &mut c);
        for (k, v) in &o.env {
            c.env(k, v);
        }
        let flags = format!(
            "{}{}",
            if o.force { " --force" } else { "" },
            if o.keep { " --keep" } else { "" }
        );
        Outcome::of(
            format!("{} --user {ATTACKER}{flags}", via.name()),
            c.output().expect("ov runs"),
            &OV_UNREACHED,
        )
    }

    /// Tear the deploy of `via` down for `ovatk`.
    pub fn teardown(&mut self, via: &Via, how: Teardown) -> Outcome {
        match how {
            Teardown::UndoSh => {
                let top = self.unpack(via, false);
                let out = self.script(&top.join("undo.sh"), &["--user", ATTACKER], &[]);
                Outcome::of(
                    format!("bash {}/undo.sh --user {ATTACKER}", top.display()),
                    out,
                    &SCRIPT_UNREACHED,
                )
            }
            Teardown::Del => {
                let deploy = Project::deploy(via);
                let mut c = self.ov();
                c.args(["deploy", "del", deploy, "--user", ATTACKER]);
                self.connect(via, &mut c);
                Outcome::of(
                    format!("ov deploy del {deploy} --user {ATTACKER}"),
                    c.output().expect("ov runs"),
                    &OV_UNREACHED,
                )
            }
        }
    }
}

/// The entries of the work bases now (to find what a `--keep` push left).
pub fn work_entries() -> BTreeSet<PathBuf> {
    WORK_BASES
        .iter()
        .flat_map(|b| {
            std::fs::read_dir(b)
                .map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect()
}

/// Remove the work directories that appeared since `before` and hold one of this module's
/// bundles (a `host/` or `vm-atk/` directory with a run.sh, at most three levels down).
pub fn remove_kept(before: &BTreeSet<PathBuf>) {
    fn ours(p: &Path, depth: usize) -> bool {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if (name == "host" || name == "vm-atk") && p.join("run.sh").is_file() {
            return true;
        }
        depth < 3
            && std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten().any(|e| {
                        e.file_type().map(|t| t.is_dir()).unwrap_or(false)
                            && ours(&e.path(), depth + 1)
                    })
                })
                .unwrap_or(false)
    }
    for p in work_entries().difference(before) {
        if ours(p, 0) {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// What a test found, by round and step; asserted empty at the end, all at once.
#[derive(Default)]
pub struct Findings(Vec<String>);

impl Findings {
    /// Record one finding.
    pub fn add(&mut self, round: &str, what: impl Into<String>) {
        let what = what.into();
        eprintln!("FINDING [{round}] {what}");
        self.0.push(format!("[{round}] {what}"));
    }

    /// Record the canaries' changes since the last check, if any.
    pub fn canaries(&mut self, round: &str, step: &str, c: &mut Canaries) {
        let d = c.changes();
        if !d.is_empty() {
            self.add(
                round,
                format!(
                    "root changed canaries during {step}:\n      {}",
                    d.join("\n      ")
                ),
            );
        }
    }

    /// Record root markers, if any.
    pub fn markers(&mut self, round: &str, step: &str, m: &Markers) {
        let r = m.root_markers();
        if !r.is_empty() {
            self.add(
                round,
                format!(
                    "root ran code {ATTACKER} planted during {step} (markers {})",
                    r.join(", ")
                ),
            );
        }
    }

    /// Panic with every finding, if any.
    pub fn assert_none(self, invariant: &str) {
        assert!(
            self.0.is_empty(),
            "{invariant}: {} finding(s):\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

/// Start the private sshd for the SSH entry point, or say why not (`None`; under `CI` a missing
/// tool fails in `sshd::available`).
pub fn ssh_host() -> Option<TestHost> {
    let h = TestHost::start(sshd::Kind::Loopback);
    if h.is_none() {
        eprintln!("SKIP: the SSH entry point (no private sshd here)");
    }
    h
}

/// Perl, the attacker's descriptor thief. Arguments after `STOP SECS LOG`: a line to inject.
/// Each sweep: for every process of its own account, every descriptor open for writing on a
/// regular file that root owns is taken with `pidfd_getfd(2)` (allowed: same account, no Yama)
/// and the line appended through it; each success is a `WON` line.
pub const FD_THIEF: &str = r#"
use strict; use warnings; use POSIX ();
my ($stop, $secs, $log, $line) = @ARGV;
open(my $L, '>>', $log) or die "log $log: $!"; select((select($L), $| = 1)[0]);
my $end = time + $secs;
my ($n, %done) = (0);
while (!-e $stop && time < $end) {
  $n++;
  for my $pd (glob '/proc/[0-9]*') {
    my ($pid) = $pd =~ m{(\d+)$}; next if $pid == $$;
    my @ps = stat $pd or next; next unless $ps[4] == $<;
    opendir(my $dh, "$pd/fd") or next;
    for my $fd (grep { /^\d+$/ } readdir $dh) {
      my $t = readlink "$pd/fd/$fd"; next unless defined $t && $t =~ m{^/};
      my @st = stat "$pd/fd/$fd" or next; next unless -f _ && $st[4] == 0;
      open(my $fi, '<', "$pd/fdinfo/$fd") or next; my $info = do { local $/; <$fi> } // '';
      my ($flags) = $info =~ /^flags:\s*([0-7]+)/m; next unless defined $flags;
      next unless (oct($flags) & 3) != 0;
      next if $done{"$pid $fd $t"}++;
      my $pidfd = syscall(434, $pid + 0, 0); next if $pidfd < 0;
      my $new = syscall(438, $pidfd, $fd + 0, 0);
      POSIX::close($pidfd);
      next if $new < 0;
      if (open(my $fh, '>>&=', $new)) { print $fh "$line\n"; close $fh; print $L "WON fd $fd of $pid: $t\n"; }
    }
  }
  print $L "sweep $n\n";
  select(undef, undef, undef, 0.02);
}
print $L "done sweeps=$n\n";
"#;

/// A loop (as the attacker) that takes the standard output of each of its account's processes
/// running a user-scope step script (`…-user.sh` on its command line; `pidfd_getfd`, as the
/// account may) and writes into it what run.sh would print: a `layer-done` for a layer that does
/// not exist (`$ARGV[3]`), a whole `::ov-ledger::` dump naming it, an `end` line. Logs `WROTE pid`.
pub const FORGER: &str = r#"
use strict; use warnings; use POSIX ();
my ($stop, $secs, $log, $layer) = @ARGV;
open(my $L, '>>', $log) or die "log $log: $!"; select((select($L), $| = 1)[0]);
my $end = time + $secs;
my ($n, %done) = (0);
my $fake = "::ov:: layer-done layer=$layer secs=0\n::ov-ledger:: begin\n::ov-ledger:: home /forged\n"
  . "::ov-ledger:: dir /forged\n::ov-ledger:: file layers/$layer.json\n"
  . "::ov-ledger:: l {\"layer\":\"$layer\",\"digest\":\"0\",\"deployed_by\":[\"0\"]}\n::ov-ledger:: end\n"
  . "::ov:: end result=ok applied=99 skipped=0\n";
while (!-e $stop && time < $end) {
  $n++;
  for my $pd (glob '/proc/[0-9]*') {
    my ($pid) = $pd =~ m{(\d+)$}; next if $pid == $$ || $done{$pid};
    my @ps = stat $pd or next; next unless $ps[4] == $<;
    open(my $c, '<', "$pd/cmdline") or next; my $cmd = do { local $/; <$c> } // '';
    next unless $cmd =~ /-user\.sh\0?$/;
    my $pidfd = syscall(434, $pid + 0, 0); next if $pidfd < 0;
    my $new = syscall(438, $pidfd, 1, 0);
    POSIX::close($pidfd);
    next if $new < 0;
    if (open(my $fh, '>>&=', $new)) { print $fh $fake; close $fh; $done{$pid} = 1; print $L "WROTE $pid\n"; }
  }
  print $L "sweep $n\n";
  select(undef, undef, undef, 0.02);
}
print $L "done sweeps=$n\n";
"#;
