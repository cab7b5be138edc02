//! Stage `runner`, progress: parses the bundle's `::ov::` lines and shows what a push is doing —
//! an indicatif spinner/bar on a terminal, plain lines otherwise, JSON lines with `--json` — at
//! three verbosities (`-q`: nothing but the result and errors; default: a line per layer and per
//! step, kept in the scrollback; `-v`: every line the steps print).
//! Invariant: every event reaches exactly one sink; parsing never fails (unknown events are kept).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// The prefix of a progress line printed by `run.sh` (docs/bundle-runtime.md).
pub const PREFIX: &str = "::ov::";

/// One `::ov:: <event> key=value … msg=…` line, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressLine {
    /// The event word (`layer-start`, `end`, …).
    pub event: String,
    /// `key=value` pairs in order; `msg` (if any) is last and may hold spaces.
    pub fields: Vec<(String, String)>,
}

impl ProgressLine {
    /// Parse a line; `None` when it is not a progress line.
    pub fn parse(line: &str) -> Option<ProgressLine> {
        let rest = line.trim_end_matches(['\r', '\n']).strip_prefix(PREFIX)?;
        let rest = rest.strip_prefix(' ')?;
        let rest = rest.trim_start();
        let (event, mut tail) = match rest.find(' ') {
            Some(i) => (&rest[..i], rest[i..].trim_start()),
            None => (rest, ""),
        };
        if event.is_empty() {
            return None;
        }
        let mut fields = Vec::new();
        while !tail.is_empty() {
            if let Some(msg) = tail.strip_prefix("msg=") {
                // `msg=` is last by contract and keeps its spaces.
                fields.push(("msg".to_string(), msg.to_string()));
                break;
            }
            let (token, next) = match tail.find(' ') {
                Some(i) => (&tail[..i], tail[i..].trim_start()),
                None => (tail, ""),
            };
            if let Some((k, v)) = token.split_once('=') {
                fields.push((k.to_string(), v.to_string()));
            }
            tail = next;
        }
        Some(ProgressLine {
            event: event.to_string(),
            fields,
        })
    }

    /// The value of field `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key).and_then(|v| v.parse().ok())
    }
}

/// A bundle runtime event, typed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum RunEvent {
    /// `begin deploy=… layers=N`
    Begin { deploy: String, layers: u64 },
    /// `layer-start layer=… n=K of=N`
    LayerStart { layer: String, n: u64, of: u64 },
    /// `layer-skip layer=… reason=…`
    LayerSkip { layer: String, reason: String },
    /// `script-start layer=… script=…`
    ScriptStart { layer: String, script: String },
    /// `script-end layer=… script=… status=S secs=T`
    ScriptEnd {
        layer: String,
        script: String,
        status: i64,
        secs: f64,
    },
    /// `layer-done layer=… secs=T`
    LayerDone { layer: String, secs: f64 },
    /// `layer-fail layer=… script=… status=S path=… log=…` (`path`: the script in the bundle,
    /// `log`: the run's log on the target; both empty from an older runtime).
    LayerFail {
        layer: String,
        script: String,
        status: i64,
        #[serde(skip_serializing_if = "String::is_empty")]
        path: String,
        #[serde(skip_serializing_if = "String::is_empty")]
        log: String,
    },
    /// `step-error layer=… script=… path=… status=S line=N in=FILE:M msg=COMMAND`: the command
    /// that ended a failed script (its ERR trap), its line in the script (`None`: not known) and,
    /// when the command is in another file (`lib.sh`), where.
    StepError {
        layer: String,
        script: String,
        path: String,
        status: i64,
        line: Option<u64>,
        #[serde(rename = "in", skip_serializing_if = "String::is_empty")]
        inner: String,
        command: String,
    },
    /// `step-log layer=… script=… msg=LINE`: one of the last lines a failed script printed (from
    /// the run's log on the target).
    StepLog {
        layer: String,
        script: String,
        line: String,
    },
    /// `end result=ok|fail applied=A skipped=S`
    End {
        #[serde(rename = "result", serialize_with = "ok_or_fail")]
        ok: bool,
        applied: u64,
        skipped: u64,
    },
    /// `check layer=… id=… kind=… scope=… result=pass|fail|skip msg=…` (`run.sh --test`).
    Check(CheckResult),
    /// `test-end result=ok|fail checks=N pass=P fail=F skip=S`
    TestEnd {
        #[serde(rename = "result", serialize_with = "ok_or_fail")]
        ok: bool,
        pass: u64,
        fail: u64,
        skip: u64,
    },
    /// Any other event (forward compatible; also the teardown script's events).
    #[serde(skip)]
    Other(ProgressLine),
}

/// `result=ok|fail` as the runtime prints it.
fn ok_or_fail<S: serde::Serializer>(ok: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *ok { "ok" } else { "fail" })
}

/// One check's result, as `run.sh --test` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub layer: String,
    /// The check's id.
    pub id: String,
    /// `file`, `command`, …
    pub kind: String,
    /// `build` or `deploy`.
    pub scope: String,
    /// `pass`, `fail` or `skip`.
    pub result: String,
    /// What was found, or why it was skipped.
    pub msg: String,
}

impl RunEvent {
    /// Type a parsed line. Missing numeric fields read as 0 rather than failing: the line is
    /// informational and a runtime from a newer `ov` must not break an older pusher.
    pub fn from_line(l: ProgressLine) -> RunEvent {
        let s = |k: &str| l.get(k).unwrap_or_default().to_string();
        match l.event.as_str() {
            "begin" => RunEvent::Begin {
                deploy: s("deploy"),
                layers: l.num("layers").unwrap_or(0),
            },
            "layer-start" => RunEvent::LayerStart {
                layer: s("layer"),
                n: l.num("n").unwrap_or(0),
                of: l.num("of").unwrap_or(0),
            },
            "layer-skip" => RunEvent::LayerSkip {
                layer: s("layer"),
                reason: s("reason"),
            },
            "script-start" => RunEvent::ScriptStart {
                layer: s("layer"),
                script: s("script"),
            },
            "script-end" => RunEvent::ScriptEnd {
                layer: s("layer"),
                script: s("script"),
                status: l.num("status").unwrap_or(-1),
                secs: l.num("secs").unwrap_or(0.0),
            },
            "layer-done" => RunEvent::LayerDone {
                layer: s("layer"),
                secs: l.num("secs").unwrap_or(0.0),
            },
            "layer-fail" => RunEvent::LayerFail {
                layer: s("layer"),
                script: s("script"),
                status: l.num("status").unwrap_or(-1),
                path: s("path"),
                log: s("log"),
            },
            "step-error" => RunEvent::StepError {
                layer: s("layer"),
                script: s("script"),
                path: s("path"),
                status: l.num("status").unwrap_or(-1),
                line: l.num("line"),
                inner: s("in"),
                command: s("msg"),
            },
            "step-log" => RunEvent::StepLog {
                layer: s("layer"),
                script: s("script"),
                line: s("msg"),
            },
            "end" => RunEvent::End {
                ok: l.get("result") == Some("ok"),
                applied: l.num("applied").unwrap_or(0),
                skipped: l.num("skipped").unwrap_or(0),
            },
            "check" => RunEvent::Check(CheckResult {
                layer: s("layer"),
                id: s("id"),
                kind: s("kind"),
                scope: s("scope"),
                result: s("result"),
                msg: s("msg"),
            }),
            "test-end" => RunEvent::TestEnd {
                ok: l.get("result") == Some("ok"),
                pass: l.num("pass").unwrap_or(0),
                fail: l.num("fail").unwrap_or(0),
                skip: l.num("skip").unwrap_or(0),
            },
            _ => RunEvent::Other(l),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            RunEvent::Other(l) => {
                let mut m = Map::new();
                m.insert("event".into(), Value::String(l.event.clone()));
                for (k, v) in &l.fields {
                    m.insert(k.clone(), Value::String(v.clone()));
                }
                Value::Object(m)
            }
            // The typed events serialise as `{"event": "<kebab-case name>", fields…}`.
            typed => serde_json::to_value(typed).unwrap_or(Value::Null),
        }
    }
}

/// Which stream a line of remote output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Everything a push, teardown or status call reports while it works.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A free-form note ("cloud-init is not installed on the target; not waiting").
    Note { msg: String },
    /// An SSH connection attempt failed with a retryable error.
    WaitSsh {
        target: String,
        attempt: u32,
        reason: String,
        retry_in: Duration,
    },
    /// The SSH master is up.
    Connected { target: String, attempts: u32 },
    /// Waiting for cloud-init (`state` is `waiting`, `done`, `degraded`, `error`, `disabled`, …).
    CloudInit { state: String, detail: Vec<String> },
    /// Bytes of the archive sent so far.
    Upload { sent: u64, total: u64 },
    /// A bundle runtime (or teardown) event.
    Run(RunEvent),
    /// A line the remote side printed that is not an event.
    Output { stream: Stream, line: String },
    /// Steps a closed gate left out of the bundle: per gate (the flag without dashes), how many;
    /// `msg` says it in words ([`crate::bundle::gated_off_summary`]).
    GatedOff {
        gates: std::collections::BTreeMap<String, usize>,
        msg: String,
    },
}

impl Event {
    /// The event as one JSON object (the `--json` format: one object per line).
    pub fn to_json(&self) -> Value {
        match self {
            Event::Note { msg } => json!({"event": "note", "msg": msg}),
            Event::WaitSsh {
                target,
                attempt,
                reason,
                retry_in,
            } => json!({"event": "wait-ssh", "target": target, "attempt": attempt,
                        "reason": reason, "retry_in_ms": retry_in.as_millis() as u64}),
            Event::Connected { target, attempts } => {
                json!({"event": "connected", "target": target, "attempts": attempts})
            }
            Event::CloudInit { state, detail } => {
                json!({"event": "cloud-init", "state": state, "detail": detail})
            }
            Event::Upload { sent, total } => {
                json!({"event": "upload", "sent": sent, "total": total})
            }
            Event::Run(r) => r.to_json(),
            Event::Output { stream, line } => {
                json!({"event": "output", "stream": stream.name(), "line": line})
            }
            Event::GatedOff { gates, msg } => {
                json!({"event": "gated-off", "gates": gates, "msg": msg})
            }
        }
    }
}

/// Receives events.
pub trait Progress {
    /// Handle one event.
    fn event(&mut self, ev: &Event);
}

/// Keeps every event (library callers and tests).
#[derive(Debug, Default)]
pub struct Recorder {
    /// Events in arrival order.
    pub events: Vec<Event>,
}

impl Progress for Recorder {
    fn event(&mut self, ev: &Event) {
        self.events.push(ev.clone());
    }
}

impl Recorder {
    /// The bundle runtime events only.
    pub fn run_events(&self) -> Vec<&RunEvent> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Run(r) => Some(r),
                _ => None,
            })
            .collect()
    }
}

/// Discards every event.
#[derive(Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn event(&mut self, _ev: &Event) {}
}

/// How [`Display`] renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayMode {
    /// Spinner and bar on stderr (a terminal); the lines of the layers stay above it.
    Bar,
    /// One plain line per event on stderr.
    Plain,
    /// One JSON object per event on stdout.
    Json,
}

impl DisplayMode {
    /// `Json` if asked, else `Bar` when stderr is a terminal, else `Plain`.
    pub fn detect(json: bool) -> DisplayMode {
        if json {
            DisplayMode::Json
        } else if std::io::stderr().is_terminal() {
            DisplayMode::Bar
        } else {
            DisplayMode::Plain
        }
    }
}

/// How much the display says (`-q`, default, `-v`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: only notes; the command prints its result and the error report its failure.
    Quiet,
    /// A line per layer (start; done, skipped or failed, with its time) and per step.
    #[default]
    Normal,
    /// Also every line the steps print (the push asks the target to stream them) and each
    /// script's end.
    Verbose,
}

/// The user-facing progress display.
pub struct Display {
    mode: DisplayMode,
    verbosity: Verbosity,
    bar: Option<ProgressBar>,
    /// Layers in this run (`begin`), the number of the current one, and its name.
    layers: u64,
    current: u64,
    layer: String,
}

impl Display {
    /// A display in `mode` at the default verbosity.
    pub fn new(mode: DisplayMode) -> Display {
        Display::with_verbosity(mode, Verbosity::Normal)
    }

    /// A display in `mode` saying as much as `verbosity` asks.
    pub fn with_verbosity(mode: DisplayMode, verbosity: Verbosity) -> Display {
        Display {
            mode,
            verbosity,
            bar: None,
            layers: 0,
            current: 0,
            layer: String::new(),
        }
    }

    /// The display's verbosity.
    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// Remove the bar (call before printing a final summary).
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn spinner(&mut self, msg: String) {
        let bar = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        bar.set_message(super::term::safe(&msg).into_owned());
    }

    /// The bar's fill counts finished layers; its text names the current one (`[2/4] name`).
    fn layer_bar(&mut self, total: u64) {
        self.finish();
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(b);
    }

    fn println(&self, line: &str) {
        let line = &*super::term::safe(line);
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// The lines this display would print for `ev` in plain mode, following the run as it goes
    /// (what a fleet display prints after a host's name), without printing them.
    pub fn lines(&mut self, ev: &Event) -> Vec<String> {
        self.track(ev);
        self.human_lines(ev)
    }

    /// Where the run is: `[K/N] layer` once a layer started, else `None`.
    pub fn position(&self) -> Option<String> {
        (self.layers > 0 && !self.layer.is_empty()).then(|| self.counter())
    }

    /// `[K/N] layer`, the counter of the layer being worked on.
    fn counter(&self) -> String {
        format!("[{}/{}] {}", self.current, self.layers, self.layer)
    }

    /// Follow the run: which layer is current (a skipped layer counts as one too).
    fn track(&mut self, ev: &Event) {
        match ev {
            Event::Run(RunEvent::Begin { layers, .. }) => {
                self.layers = *layers;
                self.current = 0;
            }
            Event::Run(RunEvent::LayerStart { layer, n, of }) => {
                self.current = if *n > 0 { *n } else { self.current + 1 };
                if *of > 0 {
                    self.layers = *of;
                }
                self.layer = layer.clone();
            }
            Event::Run(RunEvent::LayerSkip { layer, .. }) => {
                self.current += 1;
                self.layer = layer.clone();
            }
            _ => {}
        }
    }

    /// The human lines of an event at this display's verbosity (none: nothing worth a line).
    fn human_lines(&self, ev: &Event) -> Vec<String> {
        let verbose = self.verbosity == Verbosity::Verbose;
        if self.verbosity == Verbosity::Quiet {
            return match ev {
                Event::Note { msg } => vec![msg.clone()],
                _ => Vec::new(),
            };
        }
        let one = |s: String| vec![s];
        match ev {
            Event::Run(r) => match r {
                RunEvent::LayerStart { .. } => one(self.counter()),
                RunEvent::LayerSkip { reason, .. } => {
                    one(format!("{} skipped ({reason})", self.counter()))
                }
                RunEvent::LayerDone { secs, .. } => {
                    one(format!("{} done in {}", self.counter(), secs_text(*secs)))
                }
                RunEvent::LayerFail { script, status, .. } => one(format!(
                    "{} FAILED: {script} exited with status {status}",
                    self.counter()
                )),
                RunEvent::ScriptEnd { .. } | RunEvent::End { .. } if verbose => {
                    plain_text(ev).into_iter().collect()
                }
                // The failure report shows these (the command, the last lines, the log).
                RunEvent::ScriptEnd { .. }
                | RunEvent::End { .. }
                | RunEvent::StepError { .. }
                | RunEvent::StepLog { .. } => Vec::new(),
                RunEvent::Other(l) if l.event.starts_with("undo-") => undo_text(l),
                // The upload arrived intact (a mismatch fails the push and says so).
                RunEvent::Other(l)
                    if !verbose && l.event == "upload-check" && l.get("result") == Some("ok") =>
                {
                    Vec::new()
                }
                _ => plain_text(ev).into_iter().collect(),
            },
            Event::Output { line, .. } => match line.strip_prefix("ov: step ") {
                // A step line of the current layer's script says which layer it belongs to.
                Some(step) if !self.layer.is_empty() => {
                    one(format!("  {} · step {step}", self.layer))
                }
                _ => one(line.clone()),
            },
            _ => plain_text(ev).into_iter().collect(),
        }
    }

    fn bar_event(&mut self, ev: &Event) {
        match ev {
            Event::WaitSsh { .. } | Event::CloudInit { .. } | Event::Upload { .. } => {
                if self.verbosity > Verbosity::Quiet {
                    if let Some(text) = plain_text(ev) {
                        self.spinner(text);
                    }
                }
                return;
            }
            Event::Connected { target, .. } => {
                for line in self.human_lines(ev) {
                    self.println(&line);
                }
                if self.bar.is_some() {
                    self.spinner(format!("preparing {target}"));
                }
                return;
            }
            Event::Run(RunEvent::Begin { layers, .. }) if self.verbosity > Verbosity::Quiet => {
                self.layer_bar(*layers)
            }
            _ => {}
        }
        for line in self.human_lines(ev) {
            self.println(&line);
        }
        match ev {
            Event::Run(RunEvent::LayerStart { .. }) => {
                if let Some(b) = &self.bar {
                    b.set_message(self.counter());
                }
            }
            Event::Run(RunEvent::ScriptStart { script, .. }) => {
                if let Some(b) = &self.bar {
                    let msg = format!("{} · {script}", self.counter());
                    b.set_message(super::term::safe(&msg).into_owned());
                }
            }
            Event::Run(RunEvent::LayerDone { .. }) | Event::Run(RunEvent::LayerSkip { .. }) => {
                if let Some(b) = &self.bar {
                    b.inc(1);
                }
            }
            Event::Run(RunEvent::End { .. }) => self.finish(),
            _ => {}
        }
    }
}

/// Seconds as people read them: `0s`, `12s`, `2m05s`.
pub fn secs_text(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// A teardown event in words (`undo.sh`'s `undo-*` lines; `what` is added by the teardown from
/// the layer's record: what its undo reverses).
fn undo_text(l: &ProgressLine) -> Vec<String> {
    let layer = l.get("layer").unwrap_or_default();
    match (l.event.as_str(), l.get("action")) {
        ("undo-begin", _) => vec![format!(
            "removing deploy {} ({}): {} layer(s)",
            l.get("deploy").unwrap_or_default(),
            l.get("deploy_id").unwrap_or_default(),
            l.get("layers").unwrap_or("?")
        )],
        ("undo-layer", Some("teardown")) => Vec::new(),
        ("undo-layer", Some("removed")) => {
            let mut out = vec![format!("removed {layer}")];
            out.extend(
                l.get("what")
                    .unwrap_or_default()
                    .split("; ")
                    .filter(|w| !w.is_empty())
                    .map(|w| format!("  {w}")),
            );
            out
        }
        ("undo-layer", Some("release")) => vec![format!(
            "kept {layer}: still used by {}",
            l.get("what").unwrap_or("another deploy")
        )],
        ("undo-layer", Some("gone")) => {
            vec![format!("{layer}: no record left on the target (already removed)")]
        }
        ("undo-fail", _) => vec![format!(
            "FAILED to undo {layer} (status {}{}); its record is kept, so `ov deploy del` can retry",
            l.get("status").unwrap_or("?"),
            l.get("msg").map(|m| format!(": {m}")).unwrap_or_default()
        )],
        // The command's summary follows.
        ("undo-end", _) => Vec::new(),
        _ => {
            let mut s = l.event.clone();
            for (k, v) in &l.fields {
                s.push_str(&format!(" {k}={v}"));
            }
            vec![s]
        }
    }
}

/// The one-line human text of an event (`None`: nothing worth a line).
pub fn plain_text(ev: &Event) -> Option<String> {
    Some(match ev {
        Event::Note { msg } => msg.clone(),
        Event::WaitSsh {
            target,
            attempt,
            reason,
            retry_in,
        } => format!(
            "waiting for ssh on {target}: attempt {attempt}: {reason}; retrying in {:.1}s",
            retry_in.as_secs_f64()
        ),
        Event::Connected { target, attempts } => {
            format!("connected to {target} (attempt {attempts})")
        }
        Event::CloudInit { state, detail } => {
            let mut s = format!("cloud-init: {state}");
            for d in detail {
                s.push_str("\n  ");
                s.push_str(d);
            }
            s
        }
        Event::Upload { sent, total } => format!("uploading bundle: {sent}/{total} bytes"),
        Event::Output { line, .. } => line.clone(),
        Event::GatedOff { msg, .. } => format!("note: {msg}"),
        Event::Run(r) => match r {
            RunEvent::Begin { deploy, layers } => format!("deploy {deploy}: {layers} layer(s)"),
            RunEvent::LayerStart { layer, n, of } => format!("[{n}/{of}] {layer}"),
            RunEvent::LayerSkip { layer, reason } => format!("skip {layer} ({reason})"),
            RunEvent::ScriptStart { .. } => return None,
            RunEvent::ScriptEnd {
                layer,
                script,
                status,
                secs,
            } => format!("  {layer}/{script}: status {status} in {secs}s"),
            RunEvent::LayerDone { layer, secs } => format!("done {layer} in {secs}s"),
            RunEvent::LayerFail {
                layer,
                script,
                status,
                ..
            } => format!("FAILED {layer}/{script}: status {status}"),
            RunEvent::StepError {
                path,
                line,
                command,
                ..
            } => format!(
                "  failed command{}: {command}",
                line.map(|n| format!(" ({path} line {n})"))
                    .unwrap_or_default()
            ),
            RunEvent::StepLog { line, .. } => format!("  | {line}"),
            RunEvent::End {
                ok,
                applied,
                skipped,
            } => format!(
                "{}: {applied} applied, {skipped} skipped",
                if *ok { "ok" } else { "failed" }
            ),
            RunEvent::Check(c) => format!(
                "{}  {}/{} ({}, {}): {}",
                match c.result.as_str() {
                    "pass" => "PASS",
                    "skip" => "SKIP",
                    _ => "FAIL",
                },
                c.layer,
                c.id,
                c.kind,
                c.scope,
                c.msg
            ),
            RunEvent::TestEnd {
                pass, fail, skip, ..
            } => format!("checks: {pass} passed, {fail} failed, {skip} skipped"),
            RunEvent::Other(l) if l.event == "test-begin" => {
                format!("checks: {}", l.get("checks").unwrap_or("?"))
            }
            RunEvent::Other(l) => {
                let mut s = l.event.clone();
                for (k, v) in &l.fields {
                    s.push_str(&format!(" {k}={v}"));
                }
                s
            }
        },
    })
}

impl Progress for Display {
    fn event(&mut self, ev: &Event) {
        self.track(ev);
        match self.mode {
            DisplayMode::Json => {
                let mut out = std::io::stdout().lock();
                // A closed stdout (e.g. `| head`) must not abort the push itself.
                let _ = writeln!(out, "{}", ev.to_json());
                let _ = out.flush();
            }
            DisplayMode::Plain => {
                for line in self.human_lines(ev) {
                    eprintln!("{}", super::term::safe(&line));
                }
            }
            DisplayMode::Bar => self.bar_event(ev),
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_trailing_msg() {
        let l = ProgressLine::parse(
            "::ov:: layer-fail layer=a script=01-system.sh status=4 msg=it broke  badly\n",
        )
        .expect("progress line");
        assert_eq!(l.event, "layer-fail");
        assert_eq!(l.get("layer"), Some("a"));
        assert_eq!(l.get("status"), Some("4"));
        assert_eq!(l.get("msg"), Some("it broke  badly"));
        assert_eq!(
            RunEvent::from_line(l),
            RunEvent::LayerFail {
                layer: "a".into(),
                script: "01-system.sh".into(),
                status: 4,
                path: String::new(),
                log: String::new(),
            }
        );
    }

    #[test]
    fn non_progress_lines_are_not_events() {
        assert_eq!(ProgressLine::parse("hello ::ov:: begin"), None);
        assert_eq!(ProgressLine::parse("::ov::begin"), None);
        assert_eq!(ProgressLine::parse("::ov:: "), None);
    }

    #[test]
    fn typed_events() {
        let ev = |s: &str| RunEvent::from_line(ProgressLine::parse(s).expect("line"));
        assert_eq!(
            ev("::ov:: begin deploy=vm:arch layers=3"),
            RunEvent::Begin {
                deploy: "vm:arch".into(),
                layers: 3
            }
        );
        assert_eq!(
            ev("::ov:: end result=ok applied=2 skipped=1"),
            RunEvent::End {
                ok: true,
                applied: 2,
                skipped: 1
            }
        );
        assert_eq!(
            ev("::ov:: script-end layer=x script=01-user.sh status=0 secs=1.5"),
            RunEvent::ScriptEnd {
                layer: "x".into(),
                script: "01-user.sh".into(),
                status: 0,
                secs: 1.5
            }
        );
        assert_eq!(
            ev("::ov:: check layer=x id=x-bin kind=file scope=build result=fail msg=`/x` does not exist"),
            RunEvent::Check(CheckResult {
                layer: "x".into(),
                id: "x-bin".into(),
                kind: "file".into(),
                scope: "build".into(),
                result: "fail".into(),
                msg: "`/x` does not exist".into(),
            })
        );
        assert_eq!(
            ev("::ov:: test-end result=fail checks=3 pass=1 fail=1 skip=1"),
            RunEvent::TestEnd {
                ok: false,
                pass: 1,
                fail: 1,
                skip: 1
            }
        );
        match ev("::ov:: something-new a=1") {
            RunEvent::Other(l) => assert_eq!(l.get("a"), Some("1")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn typed_events_serialise_as_the_runtime_names_them() {
        let line = "::ov:: end result=fail applied=2 skipped=1";
        let end = RunEvent::from_line(ProgressLine::parse(line).expect("line"));
        assert_eq!(
            end.to_json(),
            json!({"event": "end", "result": "fail", "applied": 2, "skipped": 1})
        );
        let line = "::ov:: script-end layer=a script=01-system.sh status=3 secs=1.5";
        let end = RunEvent::from_line(ProgressLine::parse(line).expect("line"));
        assert_eq!(
            end.to_json(),
            json!({"event": "script-end", "layer": "a", "script": "01-system.sh",
                   "status": 3, "secs": 1.5})
        );
        let line = "::ov:: check layer=a id=c1 kind=file scope=build result=pass msg=found it";
        let check = RunEvent::from_line(ProgressLine::parse(line).expect("line"));
        assert_eq!(
            check.to_json(),
            json!({"event": "check", "layer": "a", "id": "c1", "kind": "file",
                   "scope": "build", "result": "pass", "msg": "found it"})
        );
        let line = "::ov:: test-end result=ok pass=3 fail=0 skip=1";
        let end = RunEvent::from_line(ProgressLine::parse(line).expect("line"));
        assert_eq!(
            end.to_json(),
            json!({"event": "test-end", "result": "ok", "pass": 3, "fail": 0, "skip": 1})
        );
    }

    #[test]
    fn json_has_event_key() {
        let v = Event::Run(RunEvent::LayerStart {
            layer: "x".into(),
            n: 1,
            of: 2,
        })
        .to_json();
        assert_eq!(v["event"], "layer-start");
        assert_eq!(v["of"], 2);
        let v = Event::Output {
            stream: Stream::Stderr,
            line: "boom".into(),
        }
        .to_json();
        assert_eq!(v["stream"], "stderr");
    }

    /// Feed `lines` (progress lines or plain output) to a plain display; its lines.
    fn shown(verbosity: Verbosity, lines: &[&str]) -> Vec<String> {
        let mut d = Display::with_verbosity(DisplayMode::Plain, verbosity);
        let mut out = Vec::new();
        for l in lines {
            let ev = match ProgressLine::parse(l) {
                Some(pl) => Event::Run(RunEvent::from_line(pl)),
                None => Event::Output {
                    stream: Stream::Stdout,
                    line: l.to_string(),
                },
            };
            d.track(&ev);
            out.extend(d.human_lines(&ev));
        }
        out
    }

    const RUN: &[&str] = &[
        "::ov:: begin deploy=vm:x layers=3",
        "::ov:: layer-skip layer=base reason=applied",
        "::ov:: layer-start layer=ux-motd n=2 of=3",
        "::ov:: script-start layer=ux-motd script=01-system.sh",
        "ov: step 1: write /etc/motd",
        "apt says something",
        "::ov:: script-end layer=ux-motd script=01-system.sh status=0 secs=75",
        "::ov:: layer-done layer=ux-motd secs=75",
        "::ov:: layer-start layer=late n=3 of=3",
        "::ov:: script-start layer=late script=01-system.sh",
        "::ov:: script-end layer=late script=01-system.sh status=3 secs=0",
        "::ov:: step-error layer=late script=01-system.sh path=layers/3-late/01-system.sh status=3 line=9 in= msg=false",
        "::ov:: step-log layer=late script=01-system.sh msg=boom",
        "::ov:: layer-fail layer=late script=01-system.sh status=3 path=layers/3-late/01-system.sh log=/l",
        "::ov:: end result=fail applied=1 skipped=1 msg=layer late failed",
    ];

    #[test]
    fn the_counter_names_the_current_layer_and_step_lines_their_layer() {
        assert_eq!(
            shown(Verbosity::Normal, RUN),
            [
                "deploy vm:x: 3 layer(s)",
                "[1/3] base skipped (applied)",
                "[2/3] ux-motd",
                "  ux-motd · step 1: write /etc/motd",
                "apt says something",
                "[2/3] ux-motd done in 1m15s",
                "[3/3] late",
                "[3/3] late FAILED: 01-system.sh exited with status 3",
            ]
        );
    }

    #[test]
    fn quiet_shows_no_progress_and_verbose_each_script_end() {
        assert!(shown(Verbosity::Quiet, RUN).is_empty());
        let v = shown(Verbosity::Verbose, RUN);
        assert!(
            v.contains(&"  ux-motd/01-system.sh: status 0 in 75s".to_string()),
            "{v:?}"
        );
        assert_eq!(
            v.last().map(String::as_str),
            Some("failed: 1 applied, 1 skipped")
        );
    }

    #[test]
    fn failure_events_are_typed() {
        let ev = |s: &str| RunEvent::from_line(ProgressLine::parse(s).expect("line"));
        assert_eq!(
            ev("::ov:: step-error layer=a script=01-system.sh path=layers/1-a/01-system.sh status=100 line= in=lib.sh:812 msg=apt-get install -y x"),
            RunEvent::StepError {
                layer: "a".into(),
                script: "01-system.sh".into(),
                path: "layers/1-a/01-system.sh".into(),
                status: 100,
                line: None,
                inner: "lib.sh:812".into(),
                command: "apt-get install -y x".into(),
            }
        );
    }
}
