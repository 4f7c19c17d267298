//! Idempotent-producer state of one partition: per producer id, its epoch and its last five
//! batches (Kafka keeps five so a producer with five requests in flight can retry any of them).
//! Used to accept, reject or recognise a retried batch, and rebuilt from the offset index.

use std::collections::{HashMap, VecDeque};

use silt_meta::layout::index::ProducerBatch;

use crate::error::PartitionError;

const KEEP: usize = 5;

/// A remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenBatch {
    /// First sequence.
    pub first_seq: i32,
    /// Last sequence.
    pub last_seq: i32,
    /// Offset of its first record.
    pub base_offset: i64,
    /// Offset of its last record.
    pub last_offset: i64,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    epoch: i16,
    batches: VecDeque<SeenBatch>,
    /// When the producer last wrote here (agent clock, ms); 0 for state replayed at start.
    last_write_ms: i64,
    /// The first sequence of a batch refused before it was appended (a timeout waiting for
    /// buffer room, a record rejected): until a batch starting there is appended, later
    /// sequences are refused, so a producer's batches are never appended out of order.
    hole: Option<i32>,
}

/// What to do with an incoming idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    Append,
    /// It was appended before; answer with the original offsets.
    Duplicate(SeenBatch),
}

/// A producer's state as DescribeProducers shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveProducer {
    /// Producer id.
    pub pid: i64,
    /// Its epoch.
    pub epoch: i16,
    /// The last sequence appended.
    pub last_seq: i32,
    /// When it last wrote here (agent clock, ms); -1 when only replayed from the index.
    pub last_write_ms: i64,
}

/// Producers idle this long are forgotten (Kafka's `producer.id.expiration.ms` default, 1 day);
/// a forgotten producer that comes back is accepted as new, as in Kafka.
pub const EXPIRATION_MS: i64 = 24 * 3600 * 1000;

/// The state of every producer that wrote to a partition.
#[derive(Debug, Clone, Default)]
pub struct ProducerStates {
    entries: HashMap<i64, Entry>,
    records_since_sweep: usize,
}

fn next_seq(s: i32) -> i32 {
    if s == i32::MAX {
        0
    } else {
        s + 1
    }
}

impl ProducerStates {
    /// Decides on a batch from `pid` at `epoch` covering `first_seq..=last_seq`.
    pub fn check(
        &self,
        pid: i64,
        epoch: i16,
        first_seq: i32,
        last_seq: i32,
    ) -> Result<Verdict, PartitionError> {
        let Some(e) = self.entries.get(&pid) else {
            // Unknown producer (new, or its state aged out): accept, as Kafka does.
            return Ok(Verdict::Append);
        };
        if epoch < e.epoch {
            return Err(PartitionError::InvalidProducerEpoch {
                pid,
                got: epoch,
                current: e.epoch,
            });
        }
        if epoch > e.epoch {
            return if first_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err(PartitionError::OutOfOrderSequence {
                    pid,
                    got: first_seq,
                    expected: 0,
                })
            };
        }
        if let Some(b) = e
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Ok(Verdict::Duplicate(*b));
        }
        if let Some(hole) = e.hole {
            if first_seq != hole {
                return Err(PartitionError::OutOfOrderSequence {
                    pid,
                    got: first_seq,
                    expected: hole,
                });
            }
            return Ok(Verdict::Append);
        }
        let expected = e.batches.back().map_or(first_seq, |b| next_seq(b.last_seq));
        if first_seq != expected {
            return Err(PartitionError::OutOfOrderSequence {
                pid,
                got: first_seq,
                expected,
            });
        }
        Ok(Verdict::Append)
    }

    /// Records that a batch of `pid` at `epoch` starting at `first_seq` was refused before it
    /// was appended: later sequences wait for it (Kafka's producer state only moves on appended
    /// batches, so Kafka answers them OUT_OF_ORDER_SEQUENCE_NUMBER too).
    pub fn refused(&mut self, pid: i64, epoch: i16, first_seq: i32, now_ms: i64) {
        let e = self.entries.entry(pid).or_default();
        if e.batches.is_empty() && e.hole.is_none() {
            e.epoch = epoch;
        }
        if epoch < e.epoch {
            return; // stale: refused anyway
        }
        if epoch > e.epoch {
            e.epoch = epoch;
            e.batches.clear();
            e.hole = None;
        }
        let appended = e.batches.iter().any(|b| b.first_seq == first_seq);
        let expected = e.batches.back().map(|b| next_seq(b.last_seq));
        // Only the next batch in sequence opens a hole (a later one was refused in order anyway).
        if !appended && e.hole.is_none() && expected.is_none_or(|x| x == first_seq) {
            e.hole = Some(first_seq);
        }
        e.last_write_ms = now_ms;
    }

    /// A transaction marker of `pid` at `epoch` was appended: a newer epoch becomes the
    /// producer's (its batches are forgotten, so it continues from sequence 0).
    pub fn on_marker(&mut self, pid: i64, epoch: i16) {
        if let Some(e) = self.entries.get_mut(&pid) {
            if epoch > e.epoch {
                e.epoch = epoch;
                e.batches.clear();
                e.hole = None;
            }
        }
    }

    /// Records an appended batch at `now_ms`.
    pub fn record(&mut self, pid: i64, epoch: i16, b: SeenBatch, now_ms: i64) {
        let e = self.entries.entry(pid).or_default();
        e.hole = None;
        if epoch != e.epoch {
            e.epoch = epoch;
            e.batches.clear();
        }
        e.batches.push_back(b);
        e.last_write_ms = now_ms;
        while e.batches.len() > KEEP {
            e.batches.pop_front();
        }
        self.records_since_sweep += 1;
        if self.records_since_sweep >= 1024 {
            self.records_since_sweep = 0;
            self.expire(now_ms);
        }
    }

    /// Forgets producers idle for longer than [`EXPIRATION_MS`]. State replayed at start counts
    /// as written at the first sweep after it.
    pub fn expire(&mut self, now_ms: i64) {
        for e in self.entries.values_mut() {
            if e.last_write_ms == 0 {
                e.last_write_ms = now_ms;
            }
        }
        self.entries
            .retain(|_, e| now_ms - e.last_write_ms < EXPIRATION_MS);
    }

    /// Replays a batch from the offset index.
    pub fn replay(&mut self, p: &ProducerBatch) {
        let span = if p.last_seq >= p.first_seq {
            (p.last_seq - p.first_seq) as i64
        } else {
            (i32::MAX as i64 - p.first_seq as i64) + 1 + p.last_seq as i64
        };
        self.record(
            p.pid,
            p.epoch,
            SeenBatch {
                first_seq: p.first_seq,
                last_seq: p.last_seq,
                base_offset: p.base_offset,
                last_offset: p.base_offset + span,
            },
            0,
        );
    }

    /// Every tracked producer that appended here, by producer id (DescribeProducers).
    pub fn active(&self) -> Vec<ActiveProducer> {
        let mut v: Vec<ActiveProducer> = self
            .entries
            .iter()
            .filter_map(|(pid, e)| {
                let last = e.batches.back()?;
                Some(ActiveProducer {
                    pid: *pid,
                    epoch: e.epoch,
                    last_seq: last.last_seq,
                    last_write_ms: if e.last_write_ms == 0 {
                        -1
                    } else {
                        e.last_write_ms
                    },
                })
            })
            .collect();
        v.sort_unstable_by_key(|a| a.pid);
        v
    }

    /// Number of producers tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no producer is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(first: i32, last: i32, base: i64) -> SeenBatch {
        SeenBatch {
            first_seq: first,
            last_seq: last,
            base_offset: base,
            last_offset: base + (last - first) as i64,
        }
    }

    #[test]
    fn sequences_must_follow_and_duplicates_are_recognised() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(7, 0, 0, 4).unwrap(), Verdict::Append);
        s.record(7, 0, seen(0, 4, 100), 1);
        assert_eq!(s.check(7, 0, 5, 9).unwrap(), Verdict::Append);
        s.record(7, 0, seen(5, 9, 105), 1);
        assert_eq!(
            s.check(7, 0, 0, 4).unwrap(),
            Verdict::Duplicate(seen(0, 4, 100))
        );
        assert!(matches!(
            s.check(7, 0, 11, 12),
            Err(PartitionError::OutOfOrderSequence { expected: 10, .. })
        ));
        assert!(matches!(
            s.check(7, -1, 10, 10),
            Err(PartitionError::InvalidProducerEpoch { .. })
        ));
        assert!(matches!(
            s.check(7, 1, 3, 3),
            Err(PartitionError::OutOfOrderSequence { .. })
        ));
        assert_eq!(s.check(7, 1, 0, 0).unwrap(), Verdict::Append);
    }

    #[test]
    fn only_five_batches_are_kept_and_replay_matches_record() {
        let mut a = ProducerStates::default();
        let mut b = ProducerStates::default();
        for i in 0..7 {
            a.record(1, 0, seen(i * 2, i * 2 + 1, i as i64 * 2), 1);
            b.replay(&ProducerBatch {
                pid: 1,
                epoch: 0,
                first_seq: i * 2,
                last_seq: i * 2 + 1,
                base_offset: i as i64 * 2,
            });
        }
        assert!(a.check(1, 0, 0, 1).is_err(), "oldest batches are forgotten");
        assert_eq!(
            a.check(1, 0, 4, 5).unwrap(),
            Verdict::Duplicate(seen(4, 5, 4))
        );
        assert_eq!(
            b.check(1, 0, 4, 5).unwrap(),
            Verdict::Duplicate(seen(4, 5, 4))
        );
        assert_eq!(b.check(1, 0, 14, 14).unwrap(), Verdict::Append);
    }

    #[test]
    fn idle_producers_are_forgotten() {
        let mut s = ProducerStates::default();
        s.record(1, 0, seen(0, 0, 0), 1_000);
        s.record(2, 0, seen(0, 0, 1), 1_000 + EXPIRATION_MS - 10);
        s.expire(1_000 + EXPIRATION_MS);
        assert_eq!(s.len(), 1, "only the idle producer is dropped");
        assert_eq!(
            s.check(1, 0, 7, 7).unwrap(),
            Verdict::Append,
            "a forgotten producer starts afresh"
        );
        assert!(
            s.check(2, 0, 7, 7).is_err(),
            "a live producer keeps its sequence"
        );
    }

    /// Rule (issue 11.5): a batch refused before it was appended holds back the producer's later
    /// sequences, for a new producer as for a known one; its retry fills the hole; a new epoch
    /// starts afresh. On the old code the second batch of a new producer was appended first.
    #[test]
    fn a_batch_refused_before_append_holds_back_later_sequences() {
        let mut s = ProducerStates::default();
        s.refused(9, 0, 0, 1);
        assert!(matches!(
            s.check(9, 0, 10, 19),
            Err(PartitionError::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(s.check(9, 0, 0, 9).unwrap(), Verdict::Append);
        s.record(9, 0, seen(0, 9, 100), 2);
        assert_eq!(s.check(9, 0, 10, 19).unwrap(), Verdict::Append);
        s.record(9, 0, seen(10, 19, 110), 3);
        // A known producer: 20.. refused, 30.. must wait.
        s.refused(9, 0, 20, 4);
        assert!(s.check(9, 0, 30, 39).is_err());
        // A retry of an appended batch is still recognised.
        assert!(matches!(s.check(9, 0, 10, 19), Ok(Verdict::Duplicate(_))));
        // A new epoch (the producer reset after giving up) starts at 0 with no hole.
        assert_eq!(s.check(9, 1, 0, 4).unwrap(), Verdict::Append);
        s.record(9, 1, seen(0, 4, 120), 5);
        assert_eq!(s.check(9, 1, 5, 9).unwrap(), Verdict::Append);
    }

    #[test]
    fn a_marker_at_a_newer_epoch_moves_the_producer_there() {
        let mut s = ProducerStates::default();
        let seen = SeenBatch {
            first_seq: 0,
            last_seq: 2,
            base_offset: 0,
            last_offset: 2,
        };
        s.record(9, 4, seen, 1);
        s.on_marker(9, 4);
        assert!(
            matches!(s.check(9, 4, 3, 3), Ok(Verdict::Append)),
            "same epoch: sequences go on"
        );
        s.on_marker(9, 5);
        assert!(matches!(
            s.check(9, 4, 3, 3),
            Err(PartitionError::InvalidProducerEpoch { current: 5, .. })
        ));
        assert!(matches!(s.check(9, 5, 0, 0), Ok(Verdict::Append)));
        s.on_marker(1, 7); // a producer never seen here: nothing to move
        assert_eq!(s.len(), 1);
    }
}
