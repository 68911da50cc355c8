//! Durations (`250ms`, `2s`, `5m`) and sizes (`64KiB`, `1MiB`) as written in the config file.
//!
//! They deserialize straight from YAML strings, so a malformed value is reported by the YAML
//! layer with its line and column. A bare number is refused for durations: `timeout: 5` is
//! ambiguous (seconds? milliseconds?) and a sidecar config should never make the reader guess.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A duration from the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "DurationText")]
pub struct ConfigDuration(pub Duration);

/// A duration as YAML hands it over: a string, or a bare number we refuse with a message
/// that says why (rather than serde's "invalid type: integer, expected a string").
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationText {
    Text(String),
    Number(f64),
}

impl TryFrom<DurationText> for ConfigDuration {
    type Error = String;

    fn try_from(raw: DurationText) -> Result<Self, String> {
        match raw {
            DurationText::Text(t) => parse_duration(&t).map(ConfigDuration),
            DurationText::Number(n) => parse_duration(&n.to_string()).map(ConfigDuration),
        }
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

/// Parses `NUMBER UNIT` where UNIT is `ms`, `s`, `m` or `h` (`1.5s` is allowed).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!(
            "`{text}` is negative; a duration is 0 or more (e.g. `0s`, `250ms`)"
        ));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_secs = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => {
            return Err(format!(
                "`{text}` has no unit (write e.g. `250ms`, `2s`, `5m`)"
            ))
        }
        other => {
            return Err(format!(
                "`{text}` has unknown unit `{other}` (use ms, s, m or h)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (write e.g. `250ms`, `2s`, `5m`)"))?;
    let secs = value * unit_secs;
    if !secs.is_finite() || secs > 365.0 * 86_400.0 {
        return Err(format!("`{text}` is longer than a year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way the config file writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A size in bytes from the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "SizeText")]
pub struct ByteSize(pub u64);

/// Sizes may be written as strings (`64KiB`) or as a plain number of bytes. `Negative` and
/// `Fraction` exist only to be refused with a message that names the value (an untagged
/// enum that matches nothing says only "did not match any variant").
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Bytes(u64),
    Negative(i64),
    Fraction(f64),
    Text(String),
}

impl TryFrom<SizeText> for ByteSize {
    type Error = String;

    fn try_from(raw: SizeText) -> Result<Self, String> {
        match raw {
            SizeText::Bytes(n) => Ok(ByteSize(n)),
            SizeText::Negative(n) => Err(format!(
                "`{n}` is negative; a size is 0 or more (e.g. `0`, `64KiB`)"
            )),
            SizeText::Fraction(n) => Err(format!(
                "`{n}` is not a whole number of bytes (write e.g. `1536`, `64KiB`)"
            )),
            SizeText::Text(t) => parse_size(&t).map(ByteSize),
        }
    }
}

/// Parses `NUMBER UNIT` with UNIT one of `B`, `KiB`, `MiB`, `GiB` (also `KB`, `MB`, `GB`,
/// which mean the same powers of 1024 here, as in most proxies' configs).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!(
            "`{text}` is negative; a size is 0 or more (e.g. `0`, `64KiB`)"
        ));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}` has unknown unit `{other}` (use B, KiB, MiB or GiB)"
            ))
        }
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (write e.g. `64KiB`, `1MiB`)"))?;
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_without_units_or_garbage_are_refused() {
        assert!(parse_duration("5").unwrap_err().contains("has no unit"));
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("fast").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("ms").unwrap_err().contains("not a duration"));
        assert!(parse_duration("9999999h")
            .unwrap_err()
            .contains("longer than a year"));
        assert!(parse_duration("-1s").unwrap_err().contains("is negative"));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("1TiB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("KiB").unwrap_err().contains("not a size"));
    }

    #[test]
    fn durations_format_back() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    }
}
