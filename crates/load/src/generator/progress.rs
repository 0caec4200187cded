//! The progress line on stderr: on a terminal one line rewritten every second (rate, errors,
//! p99 so far); otherwise a plain line every five seconds, which logs and CI keep readably.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use super::recorder::Recorder;

/// Whether and how a run shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// A rewritten line when stderr is a terminal, plain periodic lines otherwise.
    #[default]
    Auto,
    /// Plain periodic lines.
    Lines,
    /// Nothing.
    Off,
}

/// Shows the progress of a run of `duration` until `finished` turns true.
pub(crate) async fn report(
    mode: Progress,
    recorder: Arc<Recorder>,
    duration: Duration,
    mut finished: tokio::sync::watch::Receiver<bool>,
) {
    let terminal = match mode {
        Progress::Off => return,
        Progress::Lines => false,
        Progress::Auto => std::io::stderr().is_terminal(),
    };
    let every = if terminal {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut ticks = tokio::time::interval_at(recorder.start() + every, every);
    let mut last_completed = 0u64;
    let mut last_at = recorder.start();
    loop {
        tokio::select! {
            now = ticks.tick() => {
                let figures = recorder.progress();
                let seconds = now.saturating_duration_since(last_at).as_secs_f64().max(0.001);
                let rate = figures.completed_all.saturating_sub(last_completed) as f64 / seconds;
                last_completed = figures.completed_all;
                last_at = now;
                let elapsed = now.saturating_duration_since(recorder.start()).as_secs();
                let error_share = if figures.completed == 0 {
                    0.0
                } else {
                    figures.errors as f64 * 100.0 / figures.completed as f64
                };
                let line = format!(
                    "{elapsed:>4}s/{}s  {rate:>9.0} req/s  {} done  errors {} ({error_share:.2} %)  p99 {:.1} ms",
                    duration.as_secs(),
                    figures.completed,
                    figures.errors,
                    figures.p99.as_secs_f64() * 1000.0,
                );
                let mut stderr = std::io::stderr().lock();
                if terminal {
                    let _ = write!(stderr, "\r\x1b[2K{line}");
                    let _ = stderr.flush();
                } else {
                    let _ = writeln!(stderr, "sekisho load: {line}");
                }
            }
            changed = finished.wait_for(|done| *done) => {
                let _ = changed;
                if terminal {
                    let _ = writeln!(std::io::stderr());
                }
                return;
            }
        }
    }
}
