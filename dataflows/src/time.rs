//! Event-time arithmetic: ISO-8601 timestamps and epoch seconds to microseconds and back.
//!
//! Event time is data (DESIGN §3): it comes from payload fields such as `ended_at`
//! or a command's `ts`, never from the wall clock.

use crate::json::Json;

/// The earlier of two optional times, `None` standing for "no time".
pub fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The earliest event time: 0001-01-01T00:00:00Z (Python's `datetime.min`), well inside
/// what PostgreSQL's `timestamptz` holds.
pub const MIN_MICROS: i64 = -62_135_596_800_000_000;
/// The latest event time: 9999-12-31T23:59:59.999999Z, the last instant RFC 3339's four-digit
/// years can write.
pub const MAX_MICROS: i64 = 253_402_300_799_999_999;

fn in_range(micros: i64) -> Option<i64> {
    (MIN_MICROS..=MAX_MICROS).contains(&micros).then_some(micros)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Microseconds since the Unix epoch from an ISO-8601 / RFC 3339 timestamp such as
/// `2026-01-01T00:00:05.554000+00:00`, `2026-01-01 00:00:05Z` or `2026-01-01T00:00:05`
/// (no offset = UTC). `None` when the text is not such a timestamp, names a date that does
/// not exist (`2026-02-31`, a second 60, an offset of 24 hours or more), or an instant
/// outside years 1–9999 in UTC.
pub fn parse_iso8601(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ' || b[10] == b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as i64))
    };
    let (year, month, day) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (hour, minute, second) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    if year == 0
        || !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut micros = 0i64;
    if let Some((&b'.', frac)) = rest.split_first() {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (i, &c) in frac[..digits].iter().enumerate().take(6) {
            micros += (c - b'0') as i64 * 10i64.pow(5 - i as u32);
        }
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), hh1, hh2, b':', mm1, mm2] | [sign @ (b'+' | b'-'), hh1, hh2, mm1, mm2] => {
            let (hh, mm) = (num(&[*hh1, *hh2])?, num(&[*mm1, *mm2])?);
            if hh > 23 || mm > 59 {
                return None;
            }
            let secs = hh * 3600 + mm * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    in_range(secs * 1_000_000 + micros)
}

/// Event time of a JSON value: an ISO-8601 string or a number of seconds since the epoch.
pub fn from_json(value: &Json) -> Option<i64> {
    match value {
        Json::Str(s) => parse_iso8601(s),
        Json::Num(n) => n
            .parse::<f64>()
            .ok()
            .filter(|x| (MIN_MICROS as f64 / 1e6..=MAX_MICROS as f64 / 1e6).contains(x))
            .and_then(|x| in_range((x * 1e6).round() as i64)),
        _ => None,
    }
}

/// RFC 3339 in UTC with microseconds: `2026-01-01T00:00:05.554000Z`.
pub fn format_rfc3339(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Year, month, day of a count of days since 1970-01-01 (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_dates_offsets_and_instants_out_of_range_are_not_times() {
        for text in [
            "2026-02-31T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-01-01T00:00:00+99:99",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01T00:00:60Z",
            "9999-12-31T23:59:60Z",
            "9999-12-31T23:00:00-05:00",
            "0000-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_iso8601(text), None, "{text}");
        }
        assert!(parse_iso8601("2024-02-29T00:00:00Z").is_some());
        assert_eq!(parse_iso8601("9999-12-31T23:59:59.999999Z"), Some(MAX_MICROS));
        assert_eq!(parse_iso8601("0001-01-01T00:00:00Z"), Some(MIN_MICROS));
        assert_eq!(format_rfc3339(MAX_MICROS), "9999-12-31T23:59:59.999999Z");
        for seconds in ["-220000000000", "1714630000123", "1e300", "-62135596801"] {
            assert_eq!(from_json(&Json::Num(seconds.into())), None, "{seconds}");
        }
        assert_eq!(from_json(&Json::Num("-62135596800".into())), Some(MIN_MICROS));
    }

    #[test]
    fn parses_decnet_timestamps() {
        let t = parse_iso8601("2026-01-01T00:00:05.554000+00:00").unwrap();
        assert_eq!(t, 1_767_225_605_554_000);
        assert_eq!(parse_iso8601("2026-01-01T00:00:05.554Z"), Some(t));
        assert_eq!(parse_iso8601("2026-01-01T01:00:05.554+01:00"), Some(t));
        assert_eq!(parse_iso8601("2026-01-01 00:00:05.554"), Some(t));
        assert_eq!(format_rfc3339(t), "2026-01-01T00:00:05.554000Z");
    }

    #[test]
    fn rejects_non_timestamps() {
        for s in ["", "yesterday", "2026-13-01T00:00:00", "2026-01-01T00:00:00+0", "2026-01-01T00:00:00."] {
            assert_eq!(parse_iso8601(s), None, "{s}");
        }
    }

    #[test]
    fn round_trips_across_eras() {
        for micros in [0, -1, 951_782_400_000_000, 4_102_444_800_123_456] {
            assert_eq!(parse_iso8601(&format_rfc3339(micros)), Some(micros));
        }
    }

    #[test]
    fn epoch_seconds_are_event_times() {
        assert_eq!(from_json(&Json::Num("1714630000.12".into())), Some(1_714_630_000_120_000));
    }
}
