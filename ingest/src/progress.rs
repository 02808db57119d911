//! Progress: a bar per source on a terminal; off a terminal the bars are hidden and the
//! structured logs (`document emitted`, `source crawled`) tell the story instead.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where bars are drawn, if anywhere.
#[derive(Clone)]
pub struct Progress {
    bars: Option<MultiProgress>,
}

impl Progress {
    /// Bars on stderr when it is a terminal, none otherwise.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Self::visible()
        } else {
            Self::hidden()
        }
    }

    /// Bars on stderr.
    pub fn visible() -> Self {
        Self {
            bars: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// No bars.
    pub fn hidden() -> Self {
        Self { bars: None }
    }

    /// A bar for one source.
    pub fn bar(&self, label: &str) -> ProgressBar {
        let Some(bars) = &self.bars else {
            return ProgressBar::hidden();
        };
        let bar = bars.add(ProgressBar::new(0));
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>28.bold} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.chars().take(28).collect::<String>());
        bar
    }
}
