//! Durations as written in resource specs: one or more `<number><unit>` parts with units
//! `ms`, `s`, `m`, `h` and `d`, e.g. `500ms`, `30s`, `2m`, `1h30m`, `7d`.

use std::time::Duration;

/// The JSON-schema pattern that admits exactly what [`parse_duration`] parses.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(pub String);

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid duration {:?}: expected parts like 500ms, 30s, 2m, 1h or 7d",
            self.0
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration such as `1h30m`; see the module documentation for the grammar.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_owned());
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let (unit_secs, unit_len) = if rest.starts_with("ms") {
            (None, 2)
        } else {
            match rest.as_bytes().first() {
                Some(b's') => (Some(1), 1),
                Some(b'm') => (Some(60), 1),
                Some(b'h') => (Some(3600), 1),
                Some(b'd') => (Some(86_400), 1),
                _ => return Err(err()),
            }
        };
        let part = match unit_secs {
            None => Duration::from_millis(value),
            Some(secs) => Duration::from_secs(value.checked_mul(secs).ok_or_else(err)?),
        };
        total = total.checked_add(part).ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_combinations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1s250ms"), Ok(Duration::from_millis(1250)));
    }

    #[test]
    fn refuses_what_the_schema_pattern_refuses() {
        for bad in [
            "",
            "5",
            "s",
            "1 s",
            "1w",
            "-1s",
            "1.5s",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
