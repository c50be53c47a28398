//! Reading and writing the text timestamps stored in rows.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::StoreError;

/// The `STRFTIME('%Y-%m-%d %H:%M:%f')` form: UTC with milliseconds.
pub fn format_db_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// Parses any of the forms found in rows: SQLite's default, ISO-8601 with `T`, with or without
/// a fraction, with or without a `+00:00`/`Z` suffix (`last_login_at` carries one).
pub fn parse_db_time(value: &str) -> Result<NaiveDateTime, StoreError> {
    if let Ok(with_zone) = DateTime::parse_from_rfc3339(value) {
        return Ok(with_zone.with_timezone(&Utc).naive_utc());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(value, format) {
            return Ok(naive);
        }
    }
    let trimmed = value.trim_end_matches("+00:00").trim_end_matches('Z');
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(trimmed, format) {
            return Ok(naive);
        }
    }
    Err(StoreError::Corrupt(format!("unreadable time {value:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_stored_form() {
        for v in [
            "2026-03-09 16:10:47.095",
            "2026-03-09 16:10:47",
            "2026-03-09T16:10:47.095123+00:00",
            "2026-03-09T16:10:47Z",
            "2026-03-09T16:10:47.5",
        ] {
            assert!(parse_db_time(v).is_ok(), "{v}");
        }
        assert!(parse_db_time("yesterday").is_err());
    }
}
