//! Stage `runner`, progress: parses the bundle's `::ov::` lines and shows what a push is doing —
//! an indicatif spinner/bar on a terminal, plain lines otherwise, JSON lines with `--json`.
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
    /// `layer-fail layer=… script=… status=S`
    LayerFail {
        layer: String,
        script: String,
        status: i64,
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
    /// Spinner and bar on stderr (a terminal).
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

/// The user-facing progress display.
pub struct Display {
    mode: DisplayMode,
    bar: Option<ProgressBar>,
}

impl Display {
    /// A display in `mode`.
    pub fn new(mode: DisplayMode) -> Display {
        Display { mode, bar: None }
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
        bar.set_message(msg);
    }

    fn layer_bar(&mut self, total: u64) {
        self.finish();
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(b);
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn bar_event(&mut self, ev: &Event) {
        match ev {
            Event::WaitSsh { .. } | Event::CloudInit { .. } | Event::Upload { .. } => {
                if let Some(text) = plain_text(ev) {
                    self.spinner(text);
                }
            }
            Event::Connected { target, .. } => {
                if let Some(text) = plain_text(ev) {
                    self.println(&text);
                }
                if self.bar.is_some() {
                    self.spinner(format!("preparing {target}"));
                }
            }
            Event::Note { .. } => {
                if let Some(text) = plain_text(ev) {
                    self.println(&text);
                }
            }
            // Successful scripts only move the bar; a failure gets its own line.
            Event::Run(RunEvent::ScriptEnd { status: 0, .. }) => {}
            Event::Run(RunEvent::Begin { layers, .. }) => self.layer_bar(*layers),
            Event::Run(RunEvent::LayerStart { layer, .. }) => {
                if let Some(b) = &self.bar {
                    b.set_message(layer.clone());
                }
            }
            Event::Run(RunEvent::ScriptStart { layer, script }) => {
                if let Some(b) = &self.bar {
                    b.set_message(format!("{layer} · {script}"));
                }
            }
            Event::Run(RunEvent::LayerDone { .. }) | Event::Run(RunEvent::LayerSkip { .. }) => {
                if let Some(b) = &self.bar {
                    b.inc(1);
                }
            }
            Event::Run(RunEvent::End { .. }) => self.finish(),
            Event::Run(_) => {
                if let Some(text) = plain_text(ev) {
                    self.println(&text);
                }
            }
            Event::Output { line, .. } => self.println(line),
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
            } => format!("FAILED {layer}/{script}: status {status}"),
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
        match self.mode {
            DisplayMode::Json => {
                let mut out = std::io::stdout().lock();
                // A closed stdout (e.g. `| head`) must not abort the push itself.
                let _ = writeln!(out, "{}", ev.to_json());
                let _ = out.flush();
            }
            DisplayMode::Plain => {
                if let Some(text) = plain_text(ev) {
                    eprintln!("{text}");
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
                status: 4
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
}
