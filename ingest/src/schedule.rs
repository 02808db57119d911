//! When a source is crawled again: an interval (`30m`, `6h`, `1d`) or a cron expression
//! (five fields, or six with seconds; evaluated in UTC).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;

/// A source's schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every so often, counted from the end of the previous pass.
    Every(Duration),
    /// At the times a cron expression names.
    Cron(Box<Cron>),
}

impl Schedule {
    /// Parse an interval or a cron expression; the error says what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(every) = humantime::parse_duration(text) {
            if every.is_zero() {
                return Err(format!(
                    "schedule {text:?}: an interval must be longer than zero"
                ));
            }
            return Ok(Schedule::Every(every));
        }
        match Cron::from_str(text) {
            Ok(cron) => Ok(Schedule::Cron(Box::new(cron))),
            Err(cron_error) => Err(format!(
                "schedule {text:?} is neither an interval (30m, 6h, 1d) nor a cron expression \
                 (0 */6 * * *): {cron_error}"
            )),
        }
    }

    /// The next time to crawl after a pass that ended at `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(every) => chrono::Duration::from_std(*every).ok().map(|d| after + d),
            Schedule::Cron(cron) => cron.find_next_occurrence(&after, false).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_cron_expressions() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T10:15:00Z")
            .expect("time")
            .to_utc();
        let every = Schedule::parse("6h").expect("interval");
        assert_eq!(
            every.next_after(start).expect("next").to_rfc3339(),
            "2026-01-01T16:15:00+00:00"
        );
        let cron = Schedule::parse("0 */6 * * *").expect("cron");
        assert_eq!(
            cron.next_after(start).expect("next").to_rfc3339(),
            "2026-01-01T12:00:00+00:00"
        );
        let error = Schedule::parse("every day").expect_err("refused");
        assert!(
            error.contains("neither an interval") && error.contains("every day"),
            "{error}"
        );
        assert!(Schedule::parse("0s").is_err());
    }
}
