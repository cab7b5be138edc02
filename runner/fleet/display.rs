//! Stage `runner`, the fleet's display: what many hosts working at once look like — in a
//! terminal one live line per running host (its layer and step, elapsed) with finished hosts
//! scrolling up as one line each; not a terminal, one line per host event; `--json`, one object
//! per event with a `host` field — and the recap at the end.
//! Invariant: only the thread that owns this display prints; workers send it messages.

use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use super::{HostResult, HostState, Message};
use crate::ui::progress::{secs_text, Display, DisplayMode, Event, RunEvent, Verbosity};

/// The display of a fleet run.
pub struct FleetDisplay {
    mode: DisplayMode,
    verbosity: Verbosity,
    names: Vec<String>,
    /// Per host: a display that only follows its run (for its lines and where it is).
    hosts: Vec<Display>,
    multi: Option<MultiProgress>,
    bars: Vec<Option<ProgressBar>>,
    width: usize,
    /// Print nothing (the pool's own unit tests).
    silent: bool,
}

impl FleetDisplay {
    /// A display for `names`, in `mode`, saying as much as `verbosity` asks.
    pub fn new(mode: DisplayMode, verbosity: Verbosity, names: &[String]) -> FleetDisplay {
        FleetDisplay {
            mode,
            verbosity,
            names: names.to_vec(),
            hosts: names
                .iter()
                .map(|_| Display::with_verbosity(DisplayMode::Plain, verbosity))
                .collect(),
            multi: (mode == DisplayMode::Bar).then(MultiProgress::new),
            bars: names.iter().map(|_| None).collect(),
            width: names.iter().map(|n| n.len()).max().unwrap_or(0),
            silent: false,
        }
    }

    /// Print nothing at all.
    pub fn silence(&mut self) {
        self.silent = true;
        if let Some(m) = &self.multi {
            m.set_draw_target(ProgressDrawTarget::hidden());
        }
    }

    fn name(&self, i: usize) -> &str {
        self.names.get(i).map(String::as_str).unwrap_or("?")
    }

    /// A line above the live lines (terminal) or on stderr.
    fn line(&self, text: &str) {
        if self.silent {
            return;
        }
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn json(&self, mut v: Value, host: usize) {
        if self.silent {
            return;
        }
        if let Value::Object(m) = &mut v {
            m.insert("host".into(), Value::String(self.name(host).to_string()));
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    /// Take one message of a worker.
    pub(crate) fn message(&mut self, msg: &Message) {
        match msg {
            Message::Start(i, t) => self.start(*i, *t),
            Message::Event(i, ev) => self.event(*i, ev),
            Message::End(i, r) => self.end(*i, r),
        }
    }

    fn start(&mut self, i: usize, t: Duration) {
        match self.mode {
            DisplayMode::Json => self.json(
                json!({"event": "host-start", "t_ms": t.as_millis() as u64}),
                i,
            ),
            DisplayMode::Bar => {
                if let Some(m) = &self.multi {
                    let bar = m.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(format!("{:w$}", self.name(i), w = self.width));
                    bar.set_message("connecting");
                    bar.enable_steady_tick(Duration::from_millis(120));
                    self.bars[i] = Some(bar);
                }
            }
            DisplayMode::Plain => {}
        }
    }

    fn event(&mut self, i: usize, ev: &Event) {
        let lines = self.hosts[i].lines(ev);
        match self.mode {
            DisplayMode::Json => self.json(ev.to_json(), i),
            DisplayMode::Plain => {
                // Many hosts at once: by default a host's connection, layers and failures; its
                // uploads, steps and their output only with `-v`.
                let detail = match ev {
                    Event::Upload { .. } | Event::CloudInit { .. } => true,
                    // run.sh's own warnings and notes stay; the steps' lines are detail.
                    Event::Output { line, .. } => !line.starts_with("run.sh: "),
                    _ => false,
                };
                if detail && self.verbosity < Verbosity::Verbose {
                    return;
                }
                for l in lines {
                    self.line(&format!("{} | {l}", self.name(i)));
                }
            }
            DisplayMode::Bar => {
                // The live line says where the host is; only what explains a failure scrolls.
                let failure = matches!(
                    ev,
                    Event::Run(
                        RunEvent::LayerFail { .. }
                            | RunEvent::StepError { .. }
                            | RunEvent::StepLog { .. }
                    )
                );
                if failure || self.verbosity == Verbosity::Verbose {
                    let lines = match ev {
                        Event::Run(RunEvent::StepError { .. } | RunEvent::StepLog { .. }) => {
                            crate::ui::progress::plain_text(ev).into_iter().collect()
                        }
                        _ => lines,
                    };
                    for l in lines {
                        self.line(&format!("{} | {l}", self.name(i)));
                    }
                }
                let status = match ev {
                    Event::Connected { .. } => Some("connected".to_string()),
                    Event::Upload { sent, total } => Some(format!("uploading {sent}/{total}")),
                    Event::CloudInit { state, .. } => Some(format!("cloud-init: {state}")),
                    Event::WaitSsh { attempt, .. } => {
                        Some(format!("waiting for ssh (attempt {attempt})"))
                    }
                    Event::Run(RunEvent::ScriptStart { script, .. }) => {
                        self.hosts[i].position().map(|p| format!("{p} · {script}"))
                    }
                    Event::Run(_) => self.hosts[i].position(),
                    _ => None,
                };
                if let (Some(s), Some(bar)) = (status, &self.bars[i]) {
                    bar.set_message(s);
                }
            }
        }
    }

    fn end(&mut self, i: usize, r: &HostResult) {
        if let Some(bar) = self.bars[i].take() {
            bar.finish_and_clear();
            if let Some(m) = &self.multi {
                m.remove(&bar);
            }
        }
        match self.mode {
            DisplayMode::Json => {
                let mut v = json!({
                    "event": "host-end",
                    "result": r.state.word(),
                    "t_ms": r.started.map(|t| t.as_millis() as u64),
                    "elapsed_ms": r.elapsed.as_millis() as u64,
                });
                if let Value::Object(m) = &mut v {
                    match &r.state {
                        HostState::Done(d) => {
                            if let Value::Object(extra) = &d.json {
                                for (k, x) in extra {
                                    m.insert(k.clone(), x.clone());
                                }
                            }
                        }
                        HostState::Failed {
                            exit,
                            message,
                            failed_step,
                        } => {
                            m.insert("exit".into(), json!(exit.code()));
                            m.insert("msg".into(), json!(message));
                            if let Some((layer, script)) = failed_step {
                                m.insert("layer".into(), json!(layer));
                                m.insert("script".into(), json!(script));
                            }
                        }
                        HostState::Unreachable { message } => {
                            m.insert("msg".into(), json!(message));
                        }
                        HostState::NotStarted => {}
                    }
                }
                self.json(v, i);
            }
            _ => self.line(&format!(
                "{:w$}  {}",
                self.name(i),
                recap_text(r),
                w = self.width
            )),
        }
    }

    /// Print the recap: one line per host, in the inventory's order, and the totals.
    pub fn recap(&mut self, what: &str, results: &[HostResult]) {
        if self.silent {
            return;
        }
        if let Some(m) = self.multi.take() {
            let _ = m.clear();
        }
        let count = |w: &str| results.iter().filter(|r| r.state.word() == w).count();
        if self.mode == DisplayMode::Json {
            let hosts: Vec<Value> = results
                .iter()
                .map(|r| {
                    json!({"host": r.name, "result": r.state.word(),
                           "elapsed_ms": r.elapsed.as_millis() as u64})
                })
                .collect();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{}",
                json!({"event": "recap", "command": what, "hosts": hosts,
                       "ok": count("ok"), "changed": count("changed"), "failed": count("failed"),
                       "unreachable": count("unreachable"), "not_started": count("not-started")})
            );
            let _ = out.flush();
            return;
        }
        let mut totals = vec![format!("{} ok", count("ok") + count("changed"))];
        for (w, n) in [
            ("changed", count("changed")),
            ("failed", count("failed")),
            ("unreachable", count("unreachable")),
            ("not started", count("not-started")),
        ] {
            if n > 0 {
                totals.push(format!("{n} {w}"));
            }
        }
        eprintln!(
            "\nRECAP {what}: {} host(s): {}",
            results.len(),
            totals.join(", ")
        );
        for r in results {
            eprintln!("  {:w$}  {}", r.name, recap_text(r), w = self.width);
        }
    }
}

/// A host's result on one line: `changed  3 applied, 0 already applied (4s)`.
pub fn recap_text(r: &HostResult) -> String {
    let time = format!("({})", secs_text(r.elapsed.as_secs_f64()));
    match &r.state {
        HostState::Done(d) => format!("{:11}  {} {time}", r.state.word(), d.summary),
        HostState::Failed {
            exit,
            message,
            failed_step,
        } => {
            let step = failed_step
                .as_ref()
                .map(|(layer, script)| format!("layer `{layer}`, script `{script}`: "))
                .unwrap_or_default();
            // The first line: the rest (the failed command, the last lines) was shown with the
            // host's events, and is in its `host-end` event.
            let first = message.lines().next().unwrap_or_default();
            format!(
                "{:11}  {step}{first} (exit {}) {time}",
                "FAILED",
                exit.code()
            )
        }
        HostState::Unreachable { message } => format!(
            "{:11}  {} {time}",
            "UNREACHABLE",
            message.lines().next().unwrap_or_default()
        ),
        HostState::NotStarted => format!(
            "{:11}  not started: `--max-fail` hosts had failed before its turn",
            "SKIPPED"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Exit;

    #[test]
    fn a_recap_line_is_one_line_naming_the_layer_script_and_exit() {
        let r = HostResult {
            name: "web1".into(),
            state: HostState::Failed {
                exit: Exit::RemoteStep,
                message: "layer `gate` failed on web1: script `01-system.sh` exited with status 42\n  failed command: false\n  last output:\n    boom".into(),
                failed_step: Some(("gate".into(), "01-system.sh".into())),
            },
            started: Some(Duration::ZERO),
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(
            recap_text(&r),
            "FAILED       layer `gate`, script `01-system.sh`: layer `gate` failed on web1: script `01-system.sh` exited with status 42 (exit 7) (2s)"
        );
        let r = HostResult {
            state: HostState::Done(crate::fleet::HostDone {
                changed: true,
                summary: "3 applied, 0 already applied".into(),
                json: Value::Null,
            }),
            ..r
        };
        assert_eq!(
            recap_text(&r),
            "changed      3 applied, 0 already applied (2s)"
        );
    }
}
