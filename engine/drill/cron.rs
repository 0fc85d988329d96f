//! Five-field cron schedules (UTC): parsing and the next matching minute, for `drill due` and
//! `drill cronjob`.
//!
//! Fields are `minute hour day-of-month month day-of-week` with `*`, lists, ranges, steps
//! (`*/15`, `1-10/2`) and month/day names (`jan`, `mon`); day-of-week 0 and 7 are Sunday. As in
//! Vixie cron, when both day fields are restricted a day matches if either does.

use crate::clock::{civil_from_days, days_from_civil};

/// A parsed schedule: the set of values each field allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// Why a schedule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// Not five fields.
    #[error("expected 5 fields (minute hour day-of-month month day-of-week), found {0}")]
    FieldCount(usize),
    /// A field has a value that is not a number or name.
    #[error("failed to read {field} `{text}`: not a number{names}")]
    NotANumber {
        /// Which field.
        field: &'static str,
        /// The bad text.
        text: String,
        /// Names the field accepts, when it has any.
        names: &'static str,
    },
    /// A value is outside the field's range.
    #[error("{field} {value} is out of range {min}-{max}")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// The value.
        value: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// A step of 0 or a reversed range.
    #[error("{field} `{text}` is empty (a step of 0, or a range that ends before it starts)")]
    Empty {
        /// Which field.
        field: &'static str,
        /// The bad text.
        text: String,
    },
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    names_help: &'static str,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        names_help: "",
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        names_help: "",
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        names_help: "",
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
        names_help: " or a month name (jan…dec)",
    },
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: &WEEKDAYS,
        names_help: " or a day name (sun…sat)",
    },
];

impl Field {
    fn value(&self, t: &str) -> Result<u32, CronError> {
        let lower = t.to_ascii_lowercase();
        let v = if let Some(i) = self.names.iter().position(|n| *n == lower) {
            u32::try_from(i).unwrap_or(0) + u32::from(self.name == "month")
        } else {
            t.parse::<u32>().map_err(|_| CronError::NotANumber {
                field: self.name,
                text: t.to_owned(),
                names: self.names_help,
            })?
        };
        if v < self.min || v > self.max {
            return Err(CronError::OutOfRange {
                field: self.name,
                value: v,
                min: self.min,
                max: self.max,
            });
        }
        Ok(v)
    }

    /// The bit set of a field's text, and whether it restricts anything (is not `*`).
    fn parse(&self, text: &str) -> Result<(u64, bool), CronError> {
        let mut bits = 0u64;
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (
                    r,
                    s.parse::<u32>().map_err(|_| CronError::NotANumber {
                        field: self.name,
                        text: s.to_owned(),
                        names: "",
                    })?,
                ),
                None => (part, 1),
            };
            let (lo, hi) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                (self.value(a)?, self.value(b)?)
            } else {
                let v = self.value(range)?;
                (v, if part.contains('/') { self.max } else { v })
            };
            if step == 0 || hi < lo {
                return Err(CronError::Empty {
                    field: self.name,
                    text: part.to_owned(),
                });
            }
            let mut v = lo;
            while v <= hi {
                bits |= 1 << v;
                v += step;
            }
        }
        // As in Vixie cron, a field starting with `*` does not restrict the day.
        Ok((bits, !text.starts_with('*')))
    }
}

impl Schedule {
    /// Parse five whitespace-separated fields.
    ///
    /// # Errors
    /// The first field that is wrong, and why.
    pub fn parse(text: &str) -> Result<Self, CronError> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(CronError::FieldCount(parts.len()));
        }
        let mut sets = [0u64; 5];
        let mut restricted = [false; 5];
        for (i, f) in FIELDS.iter().enumerate() {
            let (bits, r) = f.parse(parts[i])?;
            sets[i] = bits;
            restricted[i] = r;
        }
        // Sunday is 0 and 7.
        let mut weekdays = sets[4];
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Self {
            minutes: sets[0],
            hours: u32::try_from(sets[1]).unwrap_or(u32::MAX),
            days: u32::try_from(sets[2] >> 1).unwrap_or(u32::MAX),
            months: u16::try_from(sets[3] >> 1).unwrap_or(u16::MAX),
            weekdays: u8::try_from(weekdays & 0x7f).unwrap_or(0x7f),
            days_restricted: restricted[2],
            weekdays_restricted: restricted[4],
        })
    }

    fn day_matches(&self, y: i64, m: u32, d: u32) -> bool {
        let dom = self.days & (1 << (d - 1)) != 0;
        let wd = weekday(y, m, d);
        let dow = self.weekdays & (1 << wd) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// Whether the minute containing `ms` (milliseconds since the epoch, UTC) matches.
    pub fn matches(&self, ms: i64) -> bool {
        let mins = ms.div_euclid(60_000);
        let (y, m, d) = civil_from_days(mins.div_euclid(1440));
        let in_day = mins.rem_euclid(1440);
        self.months & (1 << (m - 1)) != 0
            && self.day_matches(y, m, d)
            && self.hours & (1 << (in_day / 60)) != 0
            && self.minutes & (1 << (in_day % 60)) != 0
    }

    /// The first matching minute strictly after `ms`, within 8 years (`None` for a schedule
    /// that never matches, e.g. `0 0 30 2 *`).
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let first_day = ms.div_euclid(86_400_000);
        // The first candidate minute is the one after `ms`'s minute.
        let mut from_minute = ms.rem_euclid(86_400_000) / 60_000 + 1;
        for day in first_day..first_day + 366 * 8 {
            let (y, m, d) = civil_from_days(day);
            if self.months & (1 << (m - 1)) != 0 && self.day_matches(y, m, d) {
                for minute in from_minute..1440 {
                    if self.hours & (1 << (minute / 60)) != 0
                        && self.minutes & (1 << (minute % 60)) != 0
                    {
                        return Some(day * 86_400_000 + minute * 60_000);
                    }
                }
            }
            from_minute = 0;
        }
        None
    }
}

/// Day of the week, 0 = Sunday.
fn weekday(y: i64, m: u32, d: u32) -> u32 {
    // 1970-01-01 was a Thursday (4).
    u32::try_from((days_from_civil(y, m, d) + 4).rem_euclid(7)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(y: i64, m: u32, d: u32, h: i64, min: i64) -> i64 {
        (days_from_civil(y, m, d) * 1440 + h * 60 + min) * 60_000
    }

    #[test]
    fn quarterly_schedule() {
        let s = Schedule::parse("0 10 1 1,4,7,10 *").unwrap();
        assert_eq!(
            s.next_after(at(2026, 11, 25, 18, 47)),
            Some(at(2027, 1, 1, 10, 0))
        );
        assert_eq!(
            s.next_after(at(2027, 1, 1, 10, 0)),
            Some(at(2027, 4, 1, 10, 0))
        );
        assert_eq!(
            s.next_after(at(2027, 1, 1, 9, 59) + 59_999),
            Some(at(2027, 1, 1, 10, 0))
        );
    }

    #[test]
    fn steps_ranges_names_and_weekdays() {
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        // 2026-11-28 is a Saturday: the next match is Monday 09:00.
        assert_eq!(
            s.next_after(at(2026, 11, 27, 17, 45)),
            Some(at(2026, 11, 30, 9, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 11, 30, 9, 1)),
            Some(at(2026, 11, 30, 9, 15))
        );
        let sunday = Schedule::parse("0 0 * * 7").unwrap();
        assert_eq!(
            sunday.next_after(at(2026, 11, 25, 0, 0)),
            Some(at(2026, 11, 29, 0, 0))
        );
        // Both day fields restricted: either matches (the 1st, or any Friday).
        let either = Schedule::parse("0 0 1 * fri").unwrap();
        assert_eq!(
            either.next_after(at(2026, 11, 25, 0, 0)),
            Some(at(2026, 11, 27, 0, 0))
        );
        assert_eq!(
            either.next_after(at(2026, 11, 27, 0, 0)),
            Some(at(2026, 12, 1, 0, 0))
        );
        let leap = Schedule::parse("0 12 29 feb *").unwrap();
        assert_eq!(
            leap.next_after(at(2026, 1, 1, 0, 0)),
            Some(at(2028, 2, 29, 12, 0))
        );
        assert_eq!(Schedule::parse("0 0 30 2 *").unwrap().next_after(0), None);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(Schedule::parse("0 10 1 *"), Err(CronError::FieldCount(4)));
        assert_eq!(
            Schedule::parse("0 25 * * *").unwrap_err().to_string(),
            "hour 25 is out of range 0-23"
        );
        assert!(
            Schedule::parse("0 0 * smarch *")
                .unwrap_err()
                .to_string()
                .contains("month name")
        );
        assert!(matches!(
            Schedule::parse("*/0 * * * *"),
            Err(CronError::Empty { .. })
        ));
        assert!(matches!(
            Schedule::parse("0 5-3 * * *"),
            Err(CronError::Empty { .. })
        ));
    }

    #[test]
    fn civil_round_trip() {
        for z in [-800_000, -1, 0, 1, 10_957, 20_782, 2_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    fn field(max: u32, min: u32) -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            (min..=max).prop_map(|v| v.to_string()),
            (1..=max.max(1)).prop_map(|s| format!("*/{s}")),
            (min..=max, min..=max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            proptest::collection::vec(min..=max, 1..4).prop_map(|v| v
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")),
        ]
    }

    proptest! {
        /// `next_after` is the first matching minute after `t`: it matches, lies after `t`, and
        /// (checked minute by minute over the next two days) no earlier minute matches.
        #[test]
        fn next_after_is_the_first_match(
            mi in field(59, 0), h in field(23, 0), dom in field(31, 1), mo in field(12, 1),
            dow in field(7, 0), t in 0i64..4_000_000_000_000,
        ) {
            let s = Schedule::parse(&format!("{mi} {h} {dom} {mo} {dow}")).unwrap();
            if let Some(n) = s.next_after(t) {
                prop_assert!(n > t);
                prop_assert_eq!(n % 60_000, 0);
                prop_assert!(s.matches(n));
                let first = (t.div_euclid(60_000) + 1) * 60_000;
                let mut m = first;
                while m < n && m < first + 2 * 86_400_000 {
                    prop_assert!(!s.matches(m), "{} matches before {}", m, n);
                    m += 60_000;
                }
            }
        }
    }
}
