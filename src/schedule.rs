//! When each cohort runs: parses a cohort's `schedule` string and computes its fire times.
//!
//! Wall-clock schedules (hourly, daily, cron) are matched in the cohort's time zone and mapped
//! to UTC here rather than by croner, so that daylight saving follows one rule for every kind:
//! a local time skipped by the clock fires when the gap ends, a repeated one fires only once.
//! This module is pure arithmetic; the daemon owns the timers.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use xxhash_rust::xxh3::xxh3_64;

/// The shortest interval an `every` schedule accepts.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// The longest interval an `every` schedule accepts.
pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 24 * 3600);

/// How many local candidates a search may pass over before giving up. The search start is
/// chosen so that at most two are ever skipped (the one at `after` itself, and one that shares
/// its instant with a gap); the cap only guards against a zone table that breaks that reasoning.
const MAX_SKIPPED_CANDIDATES: usize = 16;

/// What a schedule string asks for, with the per-cohort values already derived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Once an hour, at this minute of the local hour.
    Hourly {
        /// Minute past the hour, 0 to 59, derived from the cohort id.
        minute: u32,
    },
    /// Once a day, at this local time.
    Daily {
        /// Hour of the day, 0 to 23, derived from the cohort id.
        hour: u32,
        /// Minute past that hour, 0 to 59, derived from the cohort id.
        minute: u32,
    },
    /// At `offset + k * interval` after the Unix epoch, for every whole `k`.
    Every {
        /// Time between fires: whole seconds, from one minute to 366 days.
        interval: Duration,
        /// Phase of this cohort within the interval (less than `interval`).
        offset: Duration,
    },
    /// A 5-field (minute first) or 6-field (second first) cron expression, in local time.
    Cron(Box<Cron>),
    /// Fires when the daemon starts and never by time.
    Once,
}

/// A cohort's parsed schedule and the zone its wall-clock times are read in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortSchedule {
    /// The parsed schedule.
    pub schedule: Schedule,
    /// The zone that hourly, daily and cron times are local to.
    pub timezone: Tz,
    /// The schedule string as written (trimmed), for messages.
    pub spec: String,
}

/// A schedule string that cannot be used; the message names the string and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{spec:?}: {problem}")]
pub struct ScheduleError {
    spec: String,
    problem: ScheduleProblem,
}

impl ScheduleError {
    /// The schedule string that was rejected.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// What is wrong with it.
    pub fn problem(&self) -> &ScheduleProblem {
        &self.problem
    }
}

/// What is wrong with a rejected schedule string.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleProblem {
    /// Nothing was written.
    #[error("schedule is empty")]
    Empty,
    /// A single word that is not one of the keywords.
    #[error("unknown schedule; use hourly, daily, once, every <interval> or a cron expression")]
    Unknown,
    /// The text after `every` is not a duration.
    #[error("cannot read the interval: {0}")]
    BadInterval(humantime::DurationError),
    /// The interval is shorter than [`MIN_INTERVAL`].
    #[error("interval must be at least 1 minute")]
    IntervalTooShort,
    /// The interval is longer than [`MAX_INTERVAL`].
    #[error("interval must be at most 366 days")]
    IntervalTooLong,
    /// The interval has a fraction of a second.
    #[error("interval must be a whole number of seconds")]
    FractionalInterval,
    /// `@daily` and friends, which would fire every cohort at the same instant.
    #[error("cron nicknames are not supported; write the fields, or use hourly or daily")]
    Nickname,
    /// A cron expression with neither 5 nor 6 fields.
    #[error("a cron expression has 5 fields, or 6 with seconds first, not {0}")]
    FieldCount(usize),
    /// croner rejected a field.
    #[error("invalid cron expression: {0}")]
    Cron(CronError),
    /// A valid cron expression that matches no date, such as 30 February.
    #[error("cron expression never fires")]
    NeverFires,
}

/// Parses a cohort's schedule string; `cohort_id` seeds the minute, hour or phase that
/// spreads cohorts apart.
///
/// # Errors
///
/// [`ScheduleError`] when the string is empty, an interval is under a minute, or a cron
/// expression is malformed, has the wrong number of fields, or never fires.
pub fn parse(spec: &str, timezone: Tz, cohort_id: &str) -> Result<CohortSchedule, ScheduleError> {
    let spec = spec.trim();
    let fail = |problem| ScheduleError {
        spec: spec.to_owned(),
        problem,
    };
    let seed = xxh3_64(cohort_id.as_bytes());

    let (keyword, rest) = spec.split_once(char::is_whitespace).unwrap_or((spec, ""));
    let schedule = match keyword.to_ascii_lowercase().as_str() {
        "" => return Err(fail(ScheduleProblem::Empty)),
        "hourly" | "daily" | "once" if !rest.trim().is_empty() => {
            return Err(fail(ScheduleProblem::Unknown));
        }
        "hourly" => Schedule::Hourly {
            minute: (seed % 60) as u32,
        },
        "daily" => {
            let minute_of_day = (seed % (24 * 60)) as u32;
            Schedule::Daily {
                hour: minute_of_day / 60,
                minute: minute_of_day % 60,
            }
        }
        "once" => Schedule::Once,
        "every" => parse_interval(rest.trim(), seed).map_err(fail)?,
        _ => Schedule::Cron(Box::new(parse_cron(spec).map_err(fail)?)),
    };

    Ok(CohortSchedule {
        schedule,
        timezone,
        spec: spec.to_owned(),
    })
}

/// Reads the interval of an `every` schedule and derives the cohort's phase within it.
fn parse_interval(text: &str, seed: u64) -> Result<Schedule, ScheduleProblem> {
    let interval = humantime::parse_duration(text).map_err(ScheduleProblem::BadInterval)?;
    if interval < MIN_INTERVAL {
        return Err(ScheduleProblem::IntervalTooShort);
    }
    if interval > MAX_INTERVAL {
        return Err(ScheduleProblem::IntervalTooLong);
    }
    if interval.subsec_nanos() != 0 {
        return Err(ScheduleProblem::FractionalInterval);
    }

    // A whole-minute interval gets a whole-minute phase, so its fire times read cleanly.
    let secs = interval.as_secs();
    let offset_secs = if secs % 60 == 0 {
        seed % (secs / 60) * 60
    } else {
        seed % secs
    };
    Ok(Schedule::Every {
        interval,
        offset: Duration::from_secs(offset_secs),
    })
}

/// Parses a 5- or 6-field cron expression and checks that it matches at least one time.
fn parse_cron(spec: &str) -> Result<Cron, ScheduleProblem> {
    if spec.starts_with('@') {
        return Err(ScheduleProblem::Nickname);
    }
    match spec.split_whitespace().count() {
        1 => return Err(ScheduleProblem::Unknown),
        5 | 6 => {}
        n => return Err(ScheduleProblem::FieldCount(n)),
    }

    let parser = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build();
    let cron = parser.parse(spec).map_err(ScheduleProblem::Cron)?;

    // Without a year field, a pattern that matches at all matches within a few decades of
    // any date, well inside croner's search limit, so one search tells whether it ever fires.
    let reference = NaiveDate::from_ymd_opt(2000, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
    match reference.map(|start| cron.find_next_occurrence(&start, true)) {
        Some(Ok(_)) => Ok(cron),
        _ => Err(ScheduleProblem::NeverFires),
    }
}

impl CohortSchedule {
    /// The first fire strictly after `after`, or None (Once never fires by time, and a time
    /// past the end of chrono's range has no successor).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.schedule {
            Schedule::Once => None,
            Schedule::Every { interval, offset } => next_on_grid(after, *interval, *offset),
            _ => self.next_wall_clock(after),
        }
    }

    /// The next `n` fires after `after`, strictly increasing; fewer if the schedule runs out.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.next_after(after), |&fire| self.next_after(fire))
            .take(n)
            .collect()
    }

    /// A short human description, such as `daily at 03:17 Europe/London`.
    pub fn describe(&self) -> String {
        let zone = self.timezone.name();
        match &self.schedule {
            Schedule::Hourly { minute } => format!("hourly at :{minute:02} {zone}"),
            Schedule::Daily { hour, minute } => format!("daily at {hour:02}:{minute:02} {zone}"),
            Schedule::Every { interval, .. } => {
                format!("every {}", humantime::format_duration(*interval))
            }
            Schedule::Cron(_) => format!("cron '{}' in {zone}", self.spec),
            Schedule::Once => "once, at start".to_owned(),
        }
    }

    /// Walks the schedule's local candidate times and returns the first whose instant is
    /// after `after`.
    fn next_wall_clock(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = self.search_start(after)?;
        for _ in 0..MAX_SKIPPED_CANDIDATES {
            let local = self.candidate_from(from)?;
            let fire = resolve(self.timezone, local)?;
            if fire > after {
                return Some(fire);
            }
            from = local.checked_add_signed(TimeDelta::seconds(1))?;
        }
        None
    }

    /// The local time to start the candidate search from: the wall clock at `after`, or, when
    /// `after` lies in the second pass of a repeated hour, the end of that hour, because every
    /// local time before it already fired during the first pass.
    fn search_start(&self, after: DateTime<Utc>) -> Option<NaiveDateTime> {
        let zone = self.timezone;
        let local = after.with_timezone(&zone).naive_local();
        let chrono::LocalResult::Ambiguous(first, second) = zone.from_local_datetime(&local) else {
            return Some(local);
        };
        let (first, second) = (first.to_utc(), second.to_utc());
        if first == after {
            return Some(local);
        }

        // The clock went back between the two passes; the repeated hour ends one repeat
        // length after that moment.
        let offset_at = |secs| {
            Some(
                zone.offset_from_utc_datetime(&utc_at(secs)?.naive_utc())
                    .fix(),
            )
        };
        let offset_after = offset_at(after.timestamp())?;
        let change = first_instant(first.timestamp(), after.timestamp(), |secs| {
            Some(offset_at(secs)? == offset_after)
        })?;
        let end = utc_at(change)?.checked_add_signed(second - first)?;
        Some(end.with_timezone(&zone).naive_local())
    }

    /// The earliest local time at or after `from` that the schedule names.
    fn candidate_from(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        match &self.schedule {
            Schedule::Hourly { minute } => {
                let at = from.date().and_hms_opt(from.hour(), *minute, 0)?;
                if at >= from {
                    Some(at)
                } else {
                    at.checked_add_signed(TimeDelta::hours(1))
                }
            }
            Schedule::Daily { hour, minute } => {
                let at = from.date().and_hms_opt(*hour, *minute, 0)?;
                if at >= from {
                    Some(at)
                } else {
                    at.checked_add_signed(TimeDelta::days(1))
                }
            }
            Schedule::Cron(cron) => cron.find_next_occurrence(&from, true).ok(),
            Schedule::Every { .. } | Schedule::Once => None,
        }
    }
}

/// The first point of the grid `offset + k * interval` (from the Unix epoch) after `after`.
fn next_on_grid(
    after: DateTime<Utc>,
    interval: Duration,
    offset: Duration,
) -> Option<DateTime<Utc>> {
    let interval = i64::try_from(interval.as_secs()).ok()?;
    let offset = i64::try_from(offset.as_secs()).ok()?;

    // Grid points are whole seconds, so flooring `after` to its second loses nothing.
    let steps = after.timestamp().checked_sub(offset)?.div_euclid(interval);
    let next = steps
        .checked_add(1)?
        .checked_mul(interval)?
        .checked_add(offset)?;
    DateTime::from_timestamp(next, 0)
}

/// Maps a local time to the instant it fires at: the first of two, or the end of the gap.
fn resolve(timezone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match timezone.from_local_datetime(&local).earliest() {
        Some(instant) => Some(instant.to_utc()),
        None => gap_end(timezone, local),
    }
}

/// The first instant whose wall clock is past `local`, a time skipped by a forward change of
/// the clock: the moment the change happens.
fn gap_end(timezone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    // No zone is a day away from UTC, so the wall clock is before `local` a day earlier and
    // after it a day later. The gap is assumed to be the only change of clock in that window,
    // which holds for every zone's rules.
    const DAY: i64 = 24 * 3600;
    let guess = local.and_utc().timestamp();
    let change = first_instant(guess - DAY, guess + DAY, |secs| {
        Some(utc_at(secs)?.with_timezone(&timezone).naive_local() > local)
    })?;
    utc_at(change)
}

/// The first second in `(before, past]` at which `is_past` holds, by bisection: `is_past` must
/// be false at `before`, true at `past`, and change only once in between.
fn first_instant(
    mut before: i64,
    mut past: i64,
    is_past: impl Fn(i64) -> Option<bool>,
) -> Option<i64> {
    while past - before > 1 {
        let middle = before + (past - before) / 2;
        if is_past(middle)? {
            past = middle;
        } else {
            before = middle;
        }
    }
    Some(past)
}

/// The instant `secs` seconds after the Unix epoch, if chrono can represent it.
fn utc_at(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::{Los_Angeles, New_York};
    use chrono_tz::Asia::Tokyo;
    use chrono_tz::Europe::London;
    use std::collections::HashSet;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test time")
            .to_utc()
    }

    fn fixed(schedule: Schedule, timezone: Tz) -> CohortSchedule {
        CohortSchedule {
            schedule,
            timezone,
            spec: "test".to_owned(),
        }
    }

    fn daily(hour: u32, minute: u32, timezone: Tz) -> CohortSchedule {
        fixed(Schedule::Daily { hour, minute }, timezone)
    }

    fn parsed(spec: &str, timezone: Tz) -> CohortSchedule {
        parse(spec, timezone, "cohort-1").expect("valid schedule")
    }

    fn error(spec: &str) -> String {
        parse(spec, Tz::UTC, "cohort-1")
            .expect_err("invalid schedule")
            .to_string()
    }

    fn fires(schedule: &CohortSchedule, after: &str, n: usize) -> Vec<DateTime<Utc>> {
        schedule.upcoming(utc(after), n)
    }

    fn times(texts: &[&str]) -> Vec<DateTime<Utc>> {
        texts.iter().map(|text| utc(text)).collect()
    }

    #[test]
    fn five_field_cron_fires_on_the_minute() {
        let every_two_hours = parsed("0 */2 * * *", Tz::UTC);
        let expected = [
            "2026-01-01T02:00:00Z",
            "2026-01-01T04:00:00Z",
            "2026-01-01T06:00:00Z",
        ];
        assert_eq!(
            fires(&every_two_hours, "2026-01-01T00:30:00Z", 3),
            times(&expected)
        );
        assert_eq!(every_two_hours.describe(), "cron '0 */2 * * *' in UTC");
    }

    #[test]
    fn six_field_cron_reads_seconds_first() {
        let cron = parsed("30 */15 * * * *", Tz::UTC);
        let expected = [
            "2026-01-01T00:00:30Z",
            "2026-01-01T00:15:30Z",
            "2026-01-01T00:30:30Z",
        ];
        assert_eq!(fires(&cron, "2026-01-01T00:00:00Z", 3), times(&expected));
    }

    #[test]
    fn next_after_is_strict() {
        let cron = parsed("0 9 * * *", Tz::UTC);
        let at_fire = utc("2026-01-01T09:00:00Z");
        assert_eq!(cron.next_after(at_fire), Some(utc("2026-01-02T09:00:00Z")));
    }

    #[test]
    fn cron_is_read_in_the_cohort_zone_east_and_west() {
        let tokyo = parsed("0 9 * * *", Tokyo);
        assert_eq!(
            tokyo.next_after(utc("2026-07-01T12:00:00Z")),
            Some(utc("2026-07-02T00:00:00Z"))
        );

        let los_angeles = parsed("0 9 * * *", Los_Angeles);
        let winter = los_angeles.next_after(utc("2026-01-10T00:00:00Z"));
        assert_eq!(winter, Some(utc("2026-01-10T17:00:00Z")));
        let summer = los_angeles.next_after(utc("2026-07-10T00:00:00Z"));
        assert_eq!(summer, Some(utc("2026-07-10T16:00:00Z")));
    }

    #[test]
    fn cron_day_of_week_uses_the_local_date() {
        // 08:00 on Monday in Tokyo is still Sunday in UTC.
        let tokyo_mondays = parsed("0 8 * * MON", Tokyo);
        let next = tokyo_mondays.next_after(utc("2026-01-01T00:00:00Z"));
        assert_eq!(next, Some(utc("2026-01-04T23:00:00Z")));
    }

    /// The minute xxh3 gives `cohort-1`; a change of hash would move every cohort's schedule.
    const PINNED_HOURLY_MINUTE: u32 = 42;

    #[test]
    fn hourly_minute_is_stable_and_spread() {
        let minute_of = |id: &str| match parse("hourly", Tz::UTC, id).unwrap().schedule {
            Schedule::Hourly { minute } => minute,
            other => panic!("not hourly: {other:?}"),
        };
        assert_eq!(minute_of("cohort-1"), PINNED_HOURLY_MINUTE);
        assert_eq!(minute_of("cohort-1"), minute_of("cohort-1"));

        let minutes: HashSet<u32> = (0..40).map(|i| minute_of(&format!("cohort-{i}"))).collect();
        assert!(
            minutes.len() >= 20,
            "40 cohorts share {} minutes",
            minutes.len()
        );
        assert!(minutes.iter().all(|&minute| minute < 60));
    }

    #[test]
    fn hourly_fires_every_hour_at_its_minute() {
        let hourly = parsed("Hourly", Tz::UTC);
        let Schedule::Hourly { minute } = hourly.schedule else {
            panic!("not hourly")
        };
        let all = fires(&hourly, "2026-01-01T00:00:00Z", 24);
        assert!(
            all.iter()
                .all(|fire| fire.minute() == minute && fire.second() == 0)
        );
        assert!(
            all.windows(2)
                .all(|pair| pair[1] - pair[0] == TimeDelta::hours(1))
        );
        assert_eq!(hourly.describe(), format!("hourly at :{minute:02} UTC"));
    }

    #[test]
    fn daily_time_is_stable_and_spread() {
        let time_of = |id: &str| match parse("daily", London, id).unwrap().schedule {
            Schedule::Daily { hour, minute } => (hour, minute),
            other => panic!("not daily: {other:?}"),
        };
        assert_eq!(time_of("cohort-1"), time_of("cohort-1"));

        let all: HashSet<(u32, u32)> = (0..40).map(|i| time_of(&format!("cohort-{i}"))).collect();
        assert!(all.len() >= 35, "40 cohorts share {} times", all.len());
        let hours: HashSet<u32> = all.iter().map(|&(hour, _)| hour).collect();
        assert!(hours.len() >= 12, "40 cohorts share {} hours", hours.len());
    }

    #[test]
    fn daily_fires_at_its_local_time_east_and_west() {
        let tokyo = daily(3, 17, Tokyo);
        let expected = ["2026-05-01T18:17:00Z", "2026-05-02T18:17:00Z"];
        assert_eq!(fires(&tokyo, "2026-05-01T12:00:00Z", 2), times(&expected));

        let los_angeles = daily(3, 17, Los_Angeles);
        let expected = ["2026-05-02T10:17:00Z", "2026-05-03T10:17:00Z"];
        assert_eq!(
            fires(&los_angeles, "2026-05-01T12:00:00Z", 2),
            times(&expected)
        );
        assert_eq!(los_angeles.describe(), "daily at 03:17 America/Los_Angeles");
    }

    #[test]
    fn interval_fires_on_a_grid_with_a_per_cohort_phase() {
        let every = |id: &str| parse("every 15m", Tz::UTC, id).unwrap();
        let quarter = every("cohort-1");
        let Schedule::Every { interval, offset } = quarter.schedule else {
            panic!("not every")
        };
        assert_eq!(interval, Duration::from_secs(900));
        assert!(offset < interval && offset.as_secs() % 60 == 0);

        let all = fires(&quarter, "2026-01-01T00:00:00Z", 5);
        assert!(
            all.iter()
                .all(|fire| fire.timestamp() % 900 == offset.as_secs() as i64)
        );
        assert!(
            all.windows(2)
                .all(|pair| pair[1] - pair[0] == TimeDelta::minutes(15))
        );
        assert!(all[0] - utc("2026-01-01T00:00:00Z") <= TimeDelta::minutes(15));
        assert_eq!(quarter.describe(), "every 15m");

        let phases: HashSet<Duration> = (0..30)
            .map(|i| match every(&format!("cohort-{i}")).schedule {
                Schedule::Every { offset, .. } => offset,
                _ => unreachable!(),
            })
            .collect();
        assert!(
            phases.len() >= 8,
            "30 cohorts share {} phases",
            phases.len()
        );
    }

    #[test]
    fn interval_grid_does_not_depend_on_the_start() {
        let two_hours = parsed("every 2h", Tz::UTC);
        let from_morning = fires(&two_hours, "2026-03-01T06:00:00Z", 6);
        let from_later = fires(&two_hours, "2026-03-01T08:20:00Z", 4);
        assert!(from_later.iter().all(|fire| from_morning.contains(fire)));
    }

    #[test]
    fn interval_accepts_seconds_of_at_least_a_minute() {
        let ninety = parsed("every 90s", Tz::UTC);
        let all = fires(&ninety, "2026-01-01T00:00:00Z", 3);
        assert!(
            all.windows(2)
                .all(|pair| pair[1] - pair[0] == TimeDelta::seconds(90))
        );
        assert_eq!(ninety.describe(), "every 1m 30s");
        assert!(parse("every 1h 30m", Tz::UTC, "c").is_ok());
    }

    #[test]
    fn interval_rejects_short_fractional_and_unreadable() {
        assert_eq!(
            error("every 30s"),
            r#""every 30s": interval must be at least 1 minute"#
        );
        assert!(error("every 2m 500ms").contains("whole number of seconds"));
        assert!(error("every 400days").contains("at most 366 days"));
        assert!(error("every soon").starts_with(r#""every soon": cannot read the interval"#));
        assert!(error("every").contains("cannot read the interval"));
    }

    #[test]
    fn bad_cron_is_rejected_naming_the_spec() {
        assert!(error("61 * * * *").starts_with(r#""61 * * * *": invalid cron expression"#));
        assert!(error("* * * 13 *").starts_with(r#""* * * 13 *": invalid cron expression"#));
        assert_eq!(
            error("0 0 0 1 1 * 2027"),
            r#""0 0 0 1 1 * 2027": a cron expression has 5 fields, or 6 with seconds first, not 7"#
        );
        assert!(error("* * * *").ends_with("not 4"));
        assert!(error("0 0 30 2 *").ends_with("cron expression never fires"));
        assert!(error("@daily").contains("nicknames are not supported"));
        assert!(error("weekly").contains("unknown schedule"));
        assert!(error("daily at 3").contains("unknown schedule"));
        assert_eq!(error("   "), r#""": schedule is empty"#);
    }

    #[test]
    fn once_never_fires_by_time() {
        let once = parsed("once", London);
        assert_eq!(once.schedule, Schedule::Once);
        assert_eq!(once.next_after(utc("2026-01-01T00:00:00Z")), None);
        assert!(once.upcoming(utc("2026-01-01T00:00:00Z"), 3).is_empty());
        assert_eq!(once.describe(), "once, at start");
    }

    // London: 2026-03-29 at 01:00 UTC clocks go from 01:00 GMT to 02:00 BST;
    // 2026-10-25 at 01:00 UTC they go back from 02:00 BST to 01:00 GMT.

    #[test]
    fn london_spring_forward_fires_when_the_gap_ends() {
        let half_one = daily(1, 30, London);
        let expected = ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"];
        assert_eq!(
            fires(&half_one, "2026-03-28T12:00:00Z", 2),
            times(&expected)
        );
    }

    #[test]
    fn london_fall_back_fires_once_at_the_first_pass() {
        let half_one = daily(1, 30, London);
        let expected = ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"];
        assert_eq!(
            fires(&half_one, "2026-10-24T12:00:00Z", 2),
            times(&expected)
        );

        // Asked from inside the second pass of the hour, the day's fire is already past.
        let from_second_pass = half_one.next_after(utc("2026-10-25T01:10:00Z"));
        assert_eq!(from_second_pass, Some(utc("2026-10-26T01:30:00Z")));

        // A frequent job resumes when the repeated hour ends, without walking through it.
        let every_20s = parsed("*/20 * * * * *", London);
        let from_second_pass = every_20s.next_after(utc("2026-10-25T01:10:00Z"));
        assert_eq!(from_second_pass, Some(utc("2026-10-25T02:00:00Z")));
    }

    #[test]
    fn london_cron_every_half_hour_across_both_changes() {
        let half_hourly = parsed("*/30 * * * *", London);
        // 01:00 and 01:30 GMT do not exist; both, and 02:00 BST, are the same instant.
        let spring = [
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:30:00Z",
        ];
        assert_eq!(
            fires(&half_hourly, "2026-03-29T00:00:00Z", 3),
            times(&spring)
        );
        // 01:00 and 01:30 happen twice and fire only in BST.
        let autumn = [
            "2026-10-25T00:30:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-25T02:30:00Z",
        ];
        assert_eq!(
            fires(&half_hourly, "2026-10-25T00:00:00Z", 3),
            times(&autumn)
        );
    }

    #[test]
    fn london_hourly_follows_the_same_rules() {
        let half_past = fixed(Schedule::Hourly { minute: 30 }, London);
        let spring = [
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:30:00Z",
        ];
        assert_eq!(fires(&half_past, "2026-03-29T00:00:00Z", 3), times(&spring));
        let autumn = ["2026-10-25T00:30:00Z", "2026-10-25T02:30:00Z"];
        assert_eq!(fires(&half_past, "2026-10-25T00:00:00Z", 2), times(&autumn));
    }

    #[test]
    fn london_six_field_cron_in_the_gap_fires_once_at_its_end() {
        let cron = parsed("15 30 1 * * *", London);
        let expected = [
            "2026-03-28T01:30:15Z",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:15Z",
        ];
        assert_eq!(fires(&cron, "2026-03-28T00:00:00Z", 3), times(&expected));
    }

    // New York: 2026-03-08 at 07:00 UTC clocks go from 02:00 EST to 03:00 EDT;
    // 2026-11-01 at 06:00 UTC they go back from 02:00 EDT to 01:00 EST.

    #[test]
    fn new_york_spring_forward_fires_when_the_gap_ends() {
        let half_two = daily(2, 30, New_York);
        let expected = [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z",
        ];
        assert_eq!(
            fires(&half_two, "2026-03-07T00:00:00Z", 3),
            times(&expected)
        );

        let cron = parsed("30 2 * * *", New_York);
        assert_eq!(fires(&cron, "2026-03-07T00:00:00Z", 3), times(&expected));

        // Two fire times in the gap still fire, once, at its end (croner alone skips the day).
        let cron = parsed("0,30 2 * * *", New_York);
        let expected = ["2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z"];
        assert_eq!(fires(&cron, "2026-03-08T04:00:00Z", 2), times(&expected));
    }

    #[test]
    fn new_york_fall_back_fires_once_at_the_first_pass() {
        let half_one = daily(1, 30, New_York);
        let expected = ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"];
        assert_eq!(
            fires(&half_one, "2026-10-31T12:00:00Z", 2),
            times(&expected)
        );

        let cron = parsed("0,30 1 * * *", New_York);
        let expected = [
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-02T06:00:00Z",
        ];
        assert_eq!(fires(&cron, "2026-10-31T12:00:00Z", 3), times(&expected));
    }

    #[test]
    fn upcoming_is_strictly_increasing_across_changes_of_clock() {
        let schedules = [
            parsed("*/10 * * * *", London),
            parsed("*/20 * * * * *", New_York),
            parsed("every 7m", London),
            fixed(Schedule::Hourly { minute: 0 }, London),
            daily(1, 0, London),
            daily(2, 0, New_York),
        ];
        for start in [
            "2026-03-28T20:00:00Z",
            "2026-10-24T20:00:00Z",
            "2026-11-01T03:00:00Z",
        ] {
            for schedule in &schedules {
                let all = fires(schedule, start, 500);
                assert_eq!(all.len(), 500, "{} ran out", schedule.describe());
                assert!(all[0] > utc(start));
                assert!(
                    all.windows(2).all(|pair| pair[0] < pair[1]),
                    "{}",
                    schedule.describe()
                );
            }
        }
        assert_eq!(
            fires(&parsed("daily", Tokyo), "2026-01-01T00:00:00Z", 3).len(),
            3
        );
    }

    #[test]
    fn half_hour_change_of_clock_fires_when_the_gap_ends() {
        // Lord Howe Island moves from +10:30 to +11:00 at 02:00 local on 2026-10-04.
        let quarter_past_two = daily(2, 15, chrono_tz::Australia::Lord_Howe);
        let expected = ["2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"];
        assert_eq!(
            fires(&quarter_past_two, "2026-10-03T12:00:00Z", 2),
            times(&expected)
        );
    }

    #[test]
    fn gap_end_is_the_change_of_clock() {
        let local = NaiveDate::from_ymd_opt(2026, 3, 29)
            .unwrap()
            .and_hms_opt(1, 0, 0)
            .unwrap();
        assert_eq!(gap_end(London, local), Some(utc("2026-03-29T01:00:00Z")));
        let last = local.with_minute(59).unwrap().with_second(59).unwrap();
        assert_eq!(gap_end(London, last), Some(utc("2026-03-29T01:00:00Z")));
    }
}
