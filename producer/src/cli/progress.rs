//! Progress bars for batches (indicatif): tasks confirmed by the broker, and results on disk,
//! each with its rate and ETA. Drawn only when stderr is a terminal, so logs and CI output stay
//! clean.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::batch::late::LateResults;
use crate::batch::manifest::Manifest;
use crate::batch::sink::Record;
use crate::batch::Observer;

/// The two bars of a batch.
pub struct Bars {
    /// Owns the drawing of both bars.
    multi: MultiProgress,
    /// Tasks the broker confirmed.
    published: ProgressBar,
    /// Results written to the output directory (absent with --no-wait).
    completed: Option<ProgressBar>,
}

impl Bars {
    /// Bars for a run that publishes and, when `wait`, collects.
    pub fn new(wait: bool) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let style = ProgressStyle::with_template(
            "{prefix:>9} [{bar:40.cyan/blue}] {pos}/{len} {rate:>8} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> ");
        let bar = |prefix: &'static str| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(style.clone());
            bar.set_prefix(prefix);
            bar
        };
        let published = bar("published");
        let completed = wait.then(|| bar("completed"));
        Bars {
            multi,
            published,
            completed,
        }
    }

    /// Prints `line` above the bars (or plainly when they are hidden).
    pub fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// Removes the bars from the screen.
    pub fn finish(&self) {
        self.published.finish_and_clear();
        if let Some(bar) = &self.completed {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Bars {
    fn started(&self, _manifest: &Manifest, to_publish: u64, expected: u64, done: u64) {
        self.published.set_length(to_publish);
        if to_publish == 0 {
            self.published.finish_and_clear();
        }
        if let Some(bar) = &self.completed {
            bar.set_length(expected);
            bar.set_position(done);
            bar.reset_eta();
        }
    }

    fn confirmed(&self, count: u64) {
        self.published.inc(count);
    }

    fn completed(&self, _record: &Record) {
        if let Some(bar) = &self.completed {
            bar.inc(1);
        }
    }

    fn late_results(&self, late: &LateResults, missing: u64) {
        self.println(&format!(
            "warren: the batch's results queue {} was gone (expired after --results-ttl, or deleted); \
             workers put the results that came after in {}: took this batch's {} from there{}",
            late.expired_queue,
            late.unroutable_queue,
            late.taken,
            if missing > 0 {
                format!("; waiting for the other {missing} in a new {}", late.expired_queue)
            } else {
                String::new()
            }
        ));
    }
}
