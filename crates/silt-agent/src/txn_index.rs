//! One partition's transactions as read_committed readers need them: the transactions still
//! open (the first offset of the oldest bounds the last stable offset, LSO) and the aborted ones
//! (the aborted-transactions list a Fetch answers with, so consumers drop their records).
//!
//! The committed half is rebuilt from the offset index's transaction marks
//! ([`silt_meta::layout::index::TxnMark`]) when a partition is loaded and follows every commit;
//! the buffered half follows appends, so the marks of a flush are known when it is prepared.

use std::collections::BTreeMap;

use silt_meta::layout::index::TxnMark;

/// An aborted transaction's range in the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted {
    /// Producer id.
    pub pid: i64,
    /// Offset of its first batch.
    pub first_offset: i64,
    /// Offset of its abort marker.
    pub last_offset: i64,
}

/// The transaction state of a partition.
#[derive(Debug, Default, Clone)]
pub struct TxnIndex {
    /// Open transactions with a committed first batch: producer id -> first offset.
    open: BTreeMap<i64, i64>,
    /// Aborted transactions in marker order.
    aborted: Vec<Aborted>,
    /// Open transactions counting buffered batches: producer id -> first offset.
    buffered_open: BTreeMap<i64, i64>,
}

impl TxnIndex {
    /// Applies committed marks (in offset order), at load and at every commit.
    pub fn apply(&mut self, marks: &[TxnMark]) {
        for m in marks {
            match m.end {
                None => {
                    self.open.entry(m.pid).or_insert(m.first_offset);
                }
                Some((marker, commit)) => {
                    self.open.remove(&m.pid);
                    if !commit {
                        self.aborted.push(Aborted {
                            pid: m.pid,
                            first_offset: m.first_offset,
                            last_offset: marker,
                        });
                    }
                }
            }
        }
    }

    /// After a load: the buffered state starts as the committed one.
    pub fn reset_buffered(&mut self) {
        self.buffered_open = self.open.clone();
    }

    /// A transactional batch of `pid` buffered at `offset`: the mark to record if it opens a
    /// transaction in this partition.
    pub fn on_append(&mut self, pid: i64, offset: i64) -> Option<TxnMark> {
        if self.buffered_open.contains_key(&pid) {
            return None;
        }
        self.buffered_open.insert(pid, offset);
        Some(TxnMark {
            pid,
            first_offset: offset,
            end: None,
        })
    }

    /// The mark a marker of `pid` at `offset` records. A marker with no open transaction
    /// (nothing was written to this partition) ends an empty one.
    pub fn end_mark(&self, pid: i64, offset: i64, commit: bool) -> TxnMark {
        TxnMark {
            pid,
            first_offset: self.buffered_open.get(&pid).copied().unwrap_or(offset),
            end: Some((offset, commit)),
        }
    }

    /// A marker of `pid` was buffered: its transaction is no longer open.
    pub fn on_marker(&mut self, pid: i64) {
        self.buffered_open.remove(&pid);
    }

    /// Whether `pid` has a transaction open here (buffered batches included).
    pub fn is_open(&self, pid: i64) -> bool {
        self.buffered_open.contains_key(&pid)
    }

    /// The last stable offset: no offset at or past it belongs to a transaction still open.
    pub fn last_stable(&self, high_watermark: i64) -> i64 {
        self.open
            .values()
            .min()
            .map_or(high_watermark, |f| (*f).min(high_watermark))
    }

    /// How many transactions are open (committed state).
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// The open transactions (producer id, first offset), oldest first.
    pub fn open(&self) -> Vec<(i64, i64)> {
        let mut v: Vec<(i64, i64)> = self.open.iter().map(|(p, f)| (*p, *f)).collect();
        v.sort_by_key(|(_, f)| *f);
        v
    }

    /// Aborted transactions with records in `[from, to)`, as a Fetch lists them.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<Aborted> {
        self.aborted
            .iter()
            .filter(|a| a.last_offset >= from && a.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions wholly below the log start.
    pub fn truncate_before(&mut self, log_start: i64) {
        self.aborted.retain(|a| a.last_offset >= log_start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(pid: i64, first: i64) -> TxnMark {
        TxnMark {
            pid,
            first_offset: first,
            end: None,
        }
    }

    fn end(pid: i64, first: i64, at: i64, commit: bool) -> TxnMark {
        TxnMark {
            pid,
            first_offset: first,
            end: Some((at, commit)),
        }
    }

    #[test]
    fn open_transactions_hold_back_the_last_stable_offset() {
        let mut t = TxnIndex::default();
        assert_eq!(t.last_stable(10), 10);
        t.apply(&[start(1, 3), start(2, 5)]);
        assert_eq!(t.last_stable(10), 3);
        t.apply(&[end(1, 3, 8, true)]);
        assert_eq!(t.last_stable(10), 5);
        t.apply(&[end(2, 5, 9, false)]);
        assert_eq!(t.last_stable(12), 12);
        assert_eq!(
            t.aborted_between(0, 12),
            vec![Aborted {
                pid: 2,
                first_offset: 5,
                last_offset: 9
            }]
        );
        assert!(
            t.aborted_between(10, 12).is_empty(),
            "ended before the range"
        );
        assert!(t.aborted_between(0, 5).is_empty(), "starts after the range");
        t.truncate_before(10);
        assert!(t.aborted_between(0, 12).is_empty());
    }

    #[test]
    fn appends_and_markers_produce_the_marks_a_flush_records() {
        let mut t = TxnIndex::default();
        assert_eq!(t.on_append(7, 0), Some(start(7, 0)));
        assert_eq!(t.on_append(7, 4), None, "already open");
        assert!(t.is_open(7));
        assert_eq!(t.end_mark(7, 6, false), end(7, 0, 6, false));
        assert!(t.is_open(7), "until the marker is buffered");
        t.on_marker(7);
        assert!(!t.is_open(7));
        assert_eq!(
            t.end_mark(8, 7, true),
            end(8, 7, 7, true),
            "an empty transaction"
        );
        // A rebuild from the marks gives the same committed state.
        let mut r = TxnIndex::default();
        r.apply(&[start(7, 0), end(7, 0, 6, false), end(8, 7, 7, true)]);
        r.reset_buffered();
        assert!(!r.is_open(7));
        assert_eq!(r.last_stable(8), 8);
        assert_eq!(r.aborted_between(0, 8).len(), 1);
    }

    #[test]
    fn folded_marks_rebuild_the_same_state() {
        use silt_meta::layout::index::IndexEntry;
        let entry = |txns: Vec<TxnMark>| IndexEntry {
            object: "o".into(),
            pos: 0,
            len: 1,
            base_offset: 0,
            last_offset: 0,
            max_timestamp: 0,
            producers: vec![],
            marks: vec![],
            txns,
            pieces: Vec::new(),
        };
        let entries = vec![
            entry(vec![start(1, 0), start(2, 1)]),
            entry(vec![end(1, 0, 3, true), start(3, 4)]),
            entry(vec![end(2, 1, 5, false), end(3, 4, 6, true), start(4, 7)]),
        ];
        let mut whole = TxnIndex::default();
        for e in &entries {
            whole.apply(&e.txns);
        }
        let folded = crate::lifecycle::compaction::fold_txns(&entries);
        assert!(
            folded.len() < 7,
            "committed transactions inside the run are dropped"
        );
        let mut f = TxnIndex::default();
        f.apply(&folded);
        assert_eq!(f.last_stable(9), whole.last_stable(9));
        assert_eq!(f.last_stable(9), 7);
        assert_eq!(f.aborted_between(0, 9), whole.aborted_between(0, 9));
        assert_eq!(f.open(), whole.open());
    }
}
