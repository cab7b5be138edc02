//! Stage `runner`, fleets: one operation (a push, a status read, a teardown) on many targets at
//! once — at most `forks` at a time, each host on a worker thread of its own with its own SSH
//! master — reported through one [`display::FleetDisplay`] and summed up in a recap.
//! Invariants: a host's failure never stops the others (only `max_fail` does, and then hosts not
//! yet started are left alone and say so); every host ends in exactly one [`HostResult`], in the
//! inventory's order whatever order they finished in.

pub mod display;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::exit::{Exit, HasExit};
use crate::ui::progress::{Event, Progress, RunEvent};

use display::FleetDisplay;

/// How many hosts at once, and when to stop starting new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// At most this many hosts are worked on at the same time (at least 1).
    pub forks: usize,
    /// Stop starting hosts once this many have failed (`None`: never stop).
    pub max_fail: Option<usize>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            forks: 10,
            max_fail: None,
        }
    }
}

/// What an operation reports for a host it finished.
#[derive(Debug, Clone, PartialEq)]
pub struct HostDone {
    /// Whether the host was changed (a push applied a layer, a teardown undid one) — or, for a
    /// status read, differs from what the project compiles now.
    pub changed: bool,
    /// The host's result in words (`3 applied, 1 already applied`).
    pub summary: String,
    /// The same as JSON fields (merged into the host's `host-end` event).
    pub json: Value,
}

/// How a host ended.
#[derive(Debug, Clone, PartialEq)]
pub enum HostState {
    /// The operation finished.
    Done(HostDone),
    /// The operation failed on the host (a step, integrity, a lock, …).
    Failed {
        /// The exit status a single-host command would have ended with.
        exit: Exit,
        /// The error and its causes, one line.
        message: String,
        /// The layer and script that failed, when a step did.
        failed_step: Option<(String, String)>,
    },
    /// The host could not be reached or would not let us in.
    Unreachable {
        /// Why, one line.
        message: String,
    },
    /// Not started: `max_fail` hosts had failed before its turn.
    NotStarted,
}

impl HostState {
    /// Whether the host counts as a failure (for `max_fail` and the exit status).
    pub fn failed(&self) -> bool {
        !matches!(self, HostState::Done(_))
    }

    /// The word the recap and the events use.
    pub fn word(&self) -> &'static str {
        match self {
            HostState::Done(d) if d.changed => "changed",
            HostState::Done(_) => "ok",
            HostState::Failed { .. } => "failed",
            HostState::Unreachable { .. } => "unreachable",
            HostState::NotStarted => "not-started",
        }
    }
}

/// One host's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct HostResult {
    /// The host's inventory name.
    pub name: String,
    /// How it ended.
    pub state: HostState,
    /// When its work started, from the start of the fleet run (`None`: never started).
    pub started: Option<Duration>,
    /// How long its work took.
    pub elapsed: Duration,
}

/// What happens on a worker, sent to the thread that owns the display.
#[derive(Debug)]
pub(crate) enum Message {
    /// Host `i`'s work starts now.
    Start(usize, Duration),
    /// An event of host `i`'s operation.
    Event(usize, Event),
    /// Host `i` is finished.
    End(usize, HostResult),
}

/// A worker's view of the display: forwards the host's events, and remembers the step that
/// failed (the recap names it).
struct Forward<'a> {
    host: usize,
    tx: &'a Sender<Message>,
    failed_step: Option<(String, String)>,
}

impl Progress for Forward<'_> {
    fn event(&mut self, ev: &Event) {
        if let Event::Run(RunEvent::LayerFail { layer, script, .. }) = ev {
            self.failed_step = Some((layer.clone(), script.clone()));
        }
        // The display outlives every worker; a send can only fail after it stopped listening.
        let _ = self.tx.send(Message::Event(self.host, ev.clone()));
    }
}

/// The error and its causes on one line (the recap's and the events' form).
pub fn error_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Run `job` for each of `hosts` (their names), at most `limits.forks` at once, reporting
/// through `display`; the results come back in the order of `hosts`.
///
/// `job(i, progress)` works on host `i`; an error whose exit status is
/// [`Exit::CannotConnect`] makes the host unreachable, any other error failed.
pub fn run<E, F>(
    hosts: &[String],
    limits: Limits,
    display: &mut FleetDisplay,
    job: F,
) -> Vec<HostResult>
where
    E: std::error::Error + HasExit,
    F: Fn(usize, &mut dyn Progress) -> Result<HostDone, E> + Sync,
{
    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<HostResult>>> = Mutex::new(vec![None; hosts.len()]);
    let (tx, rx) = channel::<Message>();
    let workers = limits.forks.max(1).min(hosts.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, failures, job) = (&next, &failures, &job);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(name) = hosts.get(i) else { break };
                let stop = limits
                    .max_fail
                    .is_some_and(|m| failures.load(Ordering::SeqCst) >= m);
                let result = if stop {
                    HostResult {
                        name: name.clone(),
                        state: HostState::NotStarted,
                        started: None,
                        elapsed: Duration::ZERO,
                    }
                } else {
                    let started = t0.elapsed();
                    let _ = tx.send(Message::Start(i, started));
                    let mut progress = Forward {
                        host: i,
                        tx: &tx,
                        failed_step: None,
                    };
                    let outcome = job(i, &mut progress);
                    let state = match outcome {
                        Ok(done) => HostState::Done(done),
                        Err(e) if e.exit() == Exit::CannotConnect => HostState::Unreachable {
                            message: error_line(&e),
                        },
                        Err(e) => HostState::Failed {
                            exit: e.exit(),
                            message: error_line(&e),
                            failed_step: progress.failed_step.take(),
                        },
                    };
                    if state.failed() {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    HostResult {
                        name: name.clone(),
                        state,
                        started: Some(started),
                        elapsed: t0.elapsed().saturating_sub(started),
                    }
                };
                let _ = tx.send(Message::End(i, result));
            });
        }
        // Only the workers hold senders now: the loop below ends when the last one is done.
        drop(tx);
        for msg in rx {
            if let Message::End(i, r) = &msg {
                if let Ok(mut all) = results.lock() {
                    all[*i] = Some(r.clone());
                }
            }
            display.message(&msg);
        }
    });
    let all = results.into_inner().unwrap_or_default();
    all.into_iter()
        .zip(hosts)
        .map(|(r, name)| {
            // A worker that panicked left no result: the panic is re-raised by the scope, so
            // this is only reached with every result in place.
            r.unwrap_or_else(|| HostResult {
                name: name.clone(),
                state: HostState::NotStarted,
                started: None,
                elapsed: Duration::ZERO,
            })
        })
        .collect()
}

/// The exit status of a fleet run: 0 when every host succeeded, else [`Exit::HostsFailed`].
pub fn exit_of(results: &[HostResult]) -> Exit {
    if results.iter().any(|r| r.state.failed()) {
        Exit::HostsFailed
    } else {
        Exit::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::progress::{DisplayMode, Verbosity};

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct E(&'static str, Exit);

    impl HasExit for E {
        fn exit(&self) -> Exit {
            self.1
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("h{i:02}")).collect()
    }

    #[test]
    fn at_most_forks_hosts_run_at_once_and_results_keep_the_inventory_order() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let hosts = names(9);
        let mut display = FleetDisplay::new(DisplayMode::Json, Verbosity::Quiet, &hosts);
        display.silence();
        let results = run(
            &hosts,
            Limits {
                forks: 3,
                max_fail: None,
            },
            &mut display,
            |i, _| -> Result<HostDone, E> {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Later hosts finish first: the results must still come back in order.
                std::thread::sleep(Duration::from_millis(40 - 4 * i as u64));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(HostDone {
                    changed: i % 2 == 0,
                    summary: String::new(),
                    json: Value::Null,
                })
            },
        );
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        let got: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(got, hosts.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(results[0].state.word(), "changed");
        assert_eq!(results[1].state.word(), "ok");
        assert_eq!(exit_of(&results), Exit::Ok);
    }

    #[test]
    fn a_failure_does_not_stop_the_others_until_max_fail() {
        let hosts = names(6);
        let mut display = FleetDisplay::new(DisplayMode::Json, Verbosity::Quiet, &hosts);
        display.silence();
        let job = |i: usize, _: &mut dyn Progress| match i {
            1 => Err(E("connection refused", Exit::CannotConnect)),
            2 => Err(E("a step failed", Exit::RemoteStep)),
            _ => Ok(HostDone {
                changed: true,
                summary: String::new(),
                json: Value::Null,
            }),
        };
        let one_at_a_time = |max_fail| Limits { forks: 1, max_fail };
        let results = run(&hosts, one_at_a_time(None), &mut display, job);
        let words: Vec<&str> = results.iter().map(|r| r.state.word()).collect();
        assert_eq!(
            words,
            [
                "changed",
                "unreachable",
                "failed",
                "changed",
                "changed",
                "changed"
            ]
        );
        assert_eq!(exit_of(&results), Exit::HostsFailed);

        let results = run(&hosts, one_at_a_time(Some(2)), &mut display, job);
        let words: Vec<&str> = results.iter().map(|r| r.state.word()).collect();
        assert_eq!(
            words,
            [
                "changed",
                "unreachable",
                "failed",
                "not-started",
                "not-started",
                "not-started"
            ]
        );
    }
}
