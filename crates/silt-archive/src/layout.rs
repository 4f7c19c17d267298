//! Where archive files live in the bucket (Hive-style, so query engines prune by topic,
//! partition and date):
//!
//! ```text
//! {prefix}/topic={topic}/partition={p}/date={YYYY-MM-DD}/{base:020}-{topic_id8}.parquet   visible
//! _silt/archive-staging/{topic_id}/{p}/{base:020}-{last:020}-{session}.parquet  being committed
//! ```
//!
//! A file holds offsets of one partition starting on one UTC day (of its first record). Only
//! files whose commit succeeded are ever written under their visible name; staging files live
//! outside the prefix, so a glob over the prefix never sees them, and those of failed attempts
//! are garbage.

/// The visible path of the file starting at `base`.
/// The visible path of the file starting at `base`. `topic_id` (its first 8 hex digits) keeps
/// the files of a deleted and re-created topic of the same name apart.
pub fn visible(
    prefix: &str,
    topic: &str,
    topic_id: &str,
    partition: i32,
    date: &str,
    base: i64,
) -> String {
    let id = &topic_id[..topic_id.len().min(8)];
    format!("{prefix}/topic={topic}/partition={partition}/date={date}/{base:020}-{id}.parquet")
}

/// The staging path of an attempt (outside every archive prefix); unique per content, since
/// object writes are create-only.
pub fn staging(topic_id: &str, partition: i32, base: i64, last: i64, session: &str) -> String {
    format!("_silt/archive-staging/{topic_id}/{partition}/{base:020}-{last:020}-{session}.parquet")
}

/// `YYYY-MM-DD` (UTC) of a millisecond timestamp (negative timestamps count as the epoch).
pub fn date(ms: i64) -> String {
    let days = ms.max(0).div_euclid(86_400_000);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_paths() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_700_000_000_000), "2023-11-14");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(date(-5), "1970-01-01");
        assert_eq!(
            visible("archive", "orders", "0123456789abcdef", 3, "2023-11-14", 42),
            "archive/topic=orders/partition=3/date=2023-11-14/00000000000000000042-01234567.parquet"
        );
    }
}
