//! RFC 3339 timestamps for `/health` and log lines, without a date-time dependency.

use std::cell::RefCell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Formats a time as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

thread_local! {
    /// (the second it is for, `YYYY-MM-DDTHH:MM:SS` of that second)
    static PREFIX: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Writes the time now as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds): the timestamp
/// of every log line. The part down to the second is formatted once a second per thread;
/// a line pays for one clock read and six digits. (On a thread whose cache is gone, during
/// its exit, the whole timestamp is formatted anew.)
pub fn write_log_timestamp(out: &mut impl fmt::Write) -> fmt::Result {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (second, micros) = (now.as_secs(), now.subsec_micros());
    let cached = PREFIX.try_with(|cell| {
        let (cached_second, prefix) = &mut *cell.borrow_mut();
        if second != *cached_second {
            *cached_second = second;
            *prefix = seconds_prefix(second);
        }
        write!(out, "{prefix}.{micros:06}Z")
    });
    match cached {
        Ok(written) => written,
        Err(_) => write!(out, "{}.{micros:06}Z", seconds_prefix(second)),
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a second since the epoch.
fn seconds_prefix(second: u64) -> String {
    let mut prefix = rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(second));
    prefix.pop(); // the 'Z'; sub-second digits follow
    prefix
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        assert_eq!(rfc3339(t), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn log_timestamps_have_microseconds_and_follow_the_clock() {
        // (the clock's second before, the timestamp's, the clock's second after)
        let stamp = || {
            let before = rfc3339(SystemTime::now());
            let mut t = String::new();
            write_log_timestamp(&mut t).unwrap();
            let after = rfc3339(SystemTime::now());
            assert_eq!(t.len(), "2026-11-28T04:00:00.000042Z".len(), "{t}");
            assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
            assert!(t[20..26].bytes().all(|b| b.is_ascii_digit()), "{t}");
            assert!(
                before[..19] <= t[..19] && t[..19] <= after[..19],
                "{before} {t} {after}"
            );
            t
        };
        let (first, again) = (stamp(), stamp()); // the second's prefix from the cache
        std::thread::sleep(Duration::from_millis(1100));
        let later = stamp(); // a new second: the cache is not reused past it
        assert!(
            first[..19] <= again[..19] && again[..19] < later[..19],
            "{first} {again} {later}"
        );
    }
}
