//! The transaction coordinator's rules, as pure functions of a transactional id's stored record:
//! what InitProducerId, AddPartitionsToTxn / AddOffsetsToTxn and EndTxn do to it, with Kafka's
//! answers for stale producers (PRODUCER_FENCED), a producer id that is not the id's
//! (INVALID_PRODUCER_ID_MAPPING), a transaction still completing (CONCURRENT_TRANSACTIONS) and
//! an impossible transition (INVALID_TXN_STATE). Nothing here touches a store; the coordinator
//! writes what these return.

use kafka_protocol::ResponseError;
use silt_meta::layout::txns::{TxnRecord, TxnStatus};

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnError {
    /// An older epoch: another instance of the producer took over.
    Fenced,
    /// The producer id is not the transactional id's.
    WrongProducerId,
    /// The previous transaction is still being completed: retry.
    Concurrent,
    /// The request makes no sense in the transaction's state.
    InvalidState,
    /// `transaction.timeout.ms` above the broker's maximum.
    InvalidTimeout,
}

impl TxnError {
    /// Kafka's error code.
    pub fn code(self) -> ResponseError {
        match self {
            TxnError::Fenced => ResponseError::ProducerFenced,
            TxnError::WrongProducerId => ResponseError::InvalidProducerIdMapping,
            TxnError::Concurrent => ResponseError::ConcurrentTransactions,
            TxnError::InvalidState => ResponseError::InvalidTxnState,
            TxnError::InvalidTimeout => ResponseError::InvalidTransactionTimeout,
        }
    }
}

/// What InitProducerId does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// Store this record and answer with its producer id and epoch.
    Ready(TxnRecord),
    /// A transaction is open: abort it first (its markers carry the new, fencing epoch), then the
    /// client's retry (it gets CONCURRENT_TRANSACTIONS) finds it complete.
    AbortFirst(TxnRecord),
}

/// The largest epoch handed out before the producer id is replaced.
const MAX_EPOCH: i16 = i16::MAX - 1;

fn check_producer(r: &TxnRecord, pid: i64, epoch: i16) -> Result<(), TxnError> {
    if pid != r.pid {
        return Err(TxnError::WrongProducerId);
    }
    if epoch < r.epoch {
        return Err(TxnError::Fenced);
    }
    if epoch > r.epoch {
        // An epoch never issued: Kafka answers as for a fenced producer.
        return Err(TxnError::Fenced);
    }
    Ok(())
}

/// InitProducerId for a transactional id whose record is `current`. `fresh_pid` allocates a new
/// producer id when one is needed; `expected` is the client's (pid, epoch) when it sends them
/// (KIP-360: only that instance may bump).
pub fn init(
    current: Option<&TxnRecord>,
    fresh_pid: impl FnOnce() -> i64,
    timeout_ms: i32,
    max_timeout_ms: i32,
    expected: Option<(i64, i16)>,
    now_ms: i64,
) -> Result<Init, TxnError> {
    if timeout_ms <= 0 || timeout_ms > max_timeout_ms {
        return Err(TxnError::InvalidTimeout);
    }
    let Some(r) = current else {
        return Ok(Init::Ready(TxnRecord {
            pid: fresh_pid(),
            epoch: 0,
            timeout_ms,
            status: TxnStatus::Empty,
            partitions: Vec::new(),
            groups: Vec::new(),
            started_ms: 0,
            updated_ms: now_ms,
            previous: None,
            next_pid: None,
        }));
    };
    if let Some((pid, epoch)) = expected {
        // The client's last known identity must be this one (or the epoch before, if its
        // previous bump was answered but not seen; or the one its last EndTxn moved on from).
        let known = pid == r.pid && (epoch == r.epoch || epoch == r.epoch - 1);
        if !known && r.previous != Some((pid, epoch)) {
            return Err(TxnError::Fenced);
        }
    }
    match r.status {
        TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => Err(TxnError::Concurrent),
        TxnStatus::Ongoing => {
            let mut next = bumped(r, fresh_pid);
            next.status = TxnStatus::PrepareAbort;
            next.timeout_ms = timeout_ms;
            next.updated_ms = now_ms;
            Ok(Init::AbortFirst(next))
        }
        TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => {
            let mut next = bumped(r, fresh_pid);
            next.status = TxnStatus::Empty;
            next.timeout_ms = timeout_ms;
            next.partitions.clear();
            next.groups.clear();
            next.started_ms = 0;
            next.updated_ms = now_ms;
            Ok(Init::Ready(next))
        }
    }
}

/// Whether InitProducerId or a timeout needs a new producer id for `current` (a new
/// transactional id, or an exhausted epoch); allocate one only then.
pub fn needs_new_pid(current: Option<&TxnRecord>) -> bool {
    current.is_none_or(|r| r.epoch >= MAX_EPOCH)
}

/// The record with the next epoch (a new producer id when the epoch is exhausted).
fn bumped(r: &TxnRecord, fresh_pid: impl FnOnce() -> i64) -> TxnRecord {
    let mut next = r.clone();
    // A new instance (or a fenced one): no retry of the last EndTxn is recognised any more.
    next.previous = None;
    if r.epoch >= MAX_EPOCH {
        next.pid = fresh_pid();
        next.epoch = 0;
    } else {
        next.epoch = r.epoch + 1;
    }
    next
}

/// AddPartitionsToTxn / AddOffsetsToTxn: the record with `partitions` and `groups` in the
/// transaction (opened if none is).
pub fn add(
    r: &TxnRecord,
    (pid, epoch): (i64, i16),
    partitions: &[(String, i32)],
    groups: &[String],
    now_ms: i64,
) -> Result<TxnRecord, TxnError> {
    check_producer(r, pid, epoch)?;
    let mut next = r.clone();
    match r.status {
        TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => return Err(TxnError::Concurrent),
        TxnStatus::Ongoing => {}
        TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => {
            next.status = TxnStatus::Ongoing;
            next.partitions.clear();
            next.groups.clear();
            next.started_ms = now_ms;
        }
    }
    for p in partitions {
        if !next.partitions.contains(p) {
            next.partitions.push(p.clone());
        }
    }
    for g in groups {
        if !next.groups.contains(g) {
            next.groups.push(g.clone());
        }
    }
    next.updated_ms = now_ms;
    Ok(next)
}

/// What EndTxn does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Store this record (PrepareCommit or PrepareAbort), write the markers, then complete.
    Prepare(TxnRecord),
    /// Already ended this way (a retry): answer success.
    Done,
}

/// EndTxn with `commit` (else abort).
pub fn end(
    r: &TxnRecord,
    (pid, epoch): (i64, i16),
    commit: bool,
    now_ms: i64,
) -> Result<End, TxnError> {
    check_producer(r, pid, epoch)?;
    match (r.status, commit) {
        (TxnStatus::Ongoing, _) => {
            let mut next = r.clone();
            next.status = if commit {
                TxnStatus::PrepareCommit
            } else {
                TxnStatus::PrepareAbort
            };
            next.updated_ms = now_ms;
            Ok(End::Prepare(next))
        }
        (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => Ok(End::Done),
        (TxnStatus::PrepareCommit, true) | (TxnStatus::PrepareAbort, false) => {
            Err(TxnError::Concurrent)
        }
        // Aborting with nothing open is harmless (a client aborting after an error).
        (TxnStatus::Empty, false) => Ok(End::Done),
        _ => Err(TxnError::InvalidState),
    }
}

/// What EndTxn does under transaction version 2 (KIP-890 part 2, EndTxn v5+): ending a
/// transaction moves the producer on to the next epoch, so nothing it sent in this transaction
/// can land in a later one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndV2 {
    /// Store this record (PrepareCommit or PrepareAbort at the epoch that ends the transaction,
    /// which the markers carry), write the markers, then complete.
    Prepare(TxnRecord),
    /// Store this record: an abort with nothing open, complete at once at the next epoch.
    Complete(TxnRecord),
    /// Already ended this way (a retry from the identity the client had): answer success with
    /// the record's [`client_identity`].
    Done,
}

/// EndTxn v5+ with `commit` (else abort). The client's identity is either the record's, or
/// the one a previous EndTxn moved on from (a retry whose answer was lost).
pub fn end_v2(
    r: &TxnRecord,
    (pid, epoch): (i64, i16),
    commit: bool,
    now_ms: i64,
    fresh_pid: impl FnOnce() -> i64,
) -> Result<EndV2, TxnError> {
    if r.previous == Some((pid, epoch)) {
        return match (r.status, commit) {
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => {
                Ok(EndV2::Done)
            }
            (TxnStatus::PrepareCommit, true) | (TxnStatus::PrepareAbort, false) => {
                Err(TxnError::Concurrent)
            }
            // The other outcome than the one it asked for (Kafka's answer).
            (
                TxnStatus::PrepareCommit
                | TxnStatus::PrepareAbort
                | TxnStatus::CompleteCommit
                | TxnStatus::CompleteAbort,
                _,
            ) => Err(TxnError::InvalidState),
            // The client moved on past this identity.
            (TxnStatus::Empty | TxnStatus::Ongoing, _) => Err(TxnError::Fenced),
        };
    }
    check_producer(r, pid, epoch)?;
    let status = if commit {
        TxnStatus::PrepareCommit
    } else {
        TxnStatus::PrepareAbort
    };
    match (r.status, commit) {
        (TxnStatus::Ongoing, _) => Ok(EndV2::Prepare(moved_on(r, status, now_ms, fresh_pid))),
        (TxnStatus::PrepareCommit | TxnStatus::PrepareAbort, _) => Err(TxnError::Concurrent),
        // Aborting with nothing open (a client aborting after an error) still moves the epoch
        // on: the client continues with the identity it is answered.
        (TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort, false) => {
            let mut n = moved_on(r, status, now_ms, fresh_pid);
            n.partitions.clear();
            n.groups.clear();
            n.started_ms = 0;
            Ok(EndV2::Complete(complete(&n, now_ms)))
        }
        (_, true) => Err(TxnError::InvalidState),
    }
}

/// Whether ending `r` under transaction version 2 needs a new producer id (its epoch is
/// exhausted); allocate one only then.
pub fn end_needs_new_pid(r: &TxnRecord) -> bool {
    r.epoch >= MAX_EPOCH
}

/// `r` in `status` at the epoch after the client's, remembering the client's identity. An
/// exhausted epoch ends at `i16::MAX` (the markers carry it) and the client continues with a
/// new producer id at epoch 0 once the transaction is complete.
fn moved_on(
    r: &TxnRecord,
    status: TxnStatus,
    now_ms: i64,
    fresh_pid: impl FnOnce() -> i64,
) -> TxnRecord {
    let mut n = r.clone();
    n.previous = Some((r.pid, r.epoch));
    if r.epoch >= MAX_EPOCH {
        n.epoch = i16::MAX;
        n.next_pid = Some(fresh_pid());
    } else {
        n.epoch = r.epoch + 1;
    }
    n.status = status;
    n.updated_ms = now_ms;
    n
}

/// The producer id and epoch a client continues with (the EndTxn v5 answer).
pub fn client_identity(r: &TxnRecord) -> (i64, i16) {
    match r.next_pid {
        Some(pid) => (pid, 0),
        None => (r.pid, r.epoch),
    }
}

/// The record once every marker of a prepared transaction is written.
pub fn complete(r: &TxnRecord, now_ms: i64) -> TxnRecord {
    let mut next = r.clone();
    if let Some(pid) = next.next_pid.take() {
        next.pid = pid;
        next.epoch = 0;
    }
    next.status = match r.status {
        TxnStatus::PrepareCommit => TxnStatus::CompleteCommit,
        TxnStatus::PrepareAbort => TxnStatus::CompleteAbort,
        s => s,
    };
    next.updated_ms = now_ms;
    next
}

/// An open transaction past its timeout: the record that aborts it, fencing the producer (the
/// epoch is bumped, so its next request is refused), as Kafka does.
pub fn expire(r: &TxnRecord, now_ms: i64, fresh_pid: impl FnOnce() -> i64) -> Option<TxnRecord> {
    if r.status != TxnStatus::Ongoing || now_ms - r.started_ms <= r.timeout_ms as i64 {
        return None;
    }
    let mut next = bumped(r, fresh_pid);
    next.status = TxnStatus::PrepareAbort;
    next.updated_ms = now_ms;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: i32 = 900_000;

    fn ready(i: Result<Init, TxnError>) -> TxnRecord {
        match i {
            Ok(Init::Ready(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_transaction_opens_commits_and_the_next_instance_fences_the_last() {
        let r = ready(init(None, || 42, 60_000, MAX, None, 0));
        assert_eq!((r.pid, r.epoch, r.status), (42, 0, TxnStatus::Empty));
        let r = add(&r, (42, 0), &[("t".into(), 0)], &[], 10).unwrap();
        assert_eq!((r.status, r.started_ms), (TxnStatus::Ongoing, 10));
        let r = add(
            &r,
            (42, 0),
            &[("t".into(), 0), ("t".into(), 1)],
            &["g".into()],
            20,
        )
        .unwrap();
        assert_eq!(r.partitions.len(), 2, "no duplicates");
        let End::Prepare(p) = end(&r, (42, 0), true, 30).unwrap() else {
            panic!()
        };
        assert_eq!(p.status, TxnStatus::PrepareCommit);
        assert_eq!(add(&p, (42, 0), &[], &[], 31), Err(TxnError::Concurrent));
        assert_eq!(
            TxnError::Concurrent.code().code(),
            51,
            "CONCURRENT_TRANSACTIONS"
        );
        assert_eq!(TxnError::Fenced.code().code(), 90, "PRODUCER_FENCED");
        assert_eq!(end(&p, (42, 0), true, 31), Err(TxnError::Concurrent));
        let c = complete(&p, 40);
        assert_eq!(c.status, TxnStatus::CompleteCommit);
        assert_eq!(
            end(&c, (42, 0), true, 41),
            Ok(End::Done),
            "a retried commit"
        );
        assert_eq!(end(&c, (42, 0), false, 41), Err(TxnError::InvalidState));
        // A new instance: epoch 1; the old one is fenced.
        let n = ready(init(Some(&c), || 99, 60_000, MAX, None, 50));
        assert_eq!((n.pid, n.epoch, n.status), (42, 1, TxnStatus::Empty));
        assert_eq!(add(&n, (42, 0), &[], &[], 51), Err(TxnError::Fenced));
        assert_eq!(end(&n, (42, 0), true, 51), Err(TxnError::Fenced));
        assert_eq!(
            add(&n, (7, 1), &[], &[], 51),
            Err(TxnError::WrongProducerId)
        );
    }

    #[test]
    fn init_over_an_open_transaction_aborts_it_with_a_fencing_epoch() {
        let r = ready(init(None, || 5, 60_000, MAX, None, 0));
        let r = add(&r, (5, 0), &[("t".into(), 3)], &[], 1).unwrap();
        let Ok(Init::AbortFirst(a)) = init(Some(&r), || 6, 60_000, MAX, None, 2) else {
            panic!()
        };
        assert_eq!((a.epoch, a.status), (1, TxnStatus::PrepareAbort));
        assert_eq!(
            a.partitions,
            vec![("t".to_string(), 3)],
            "markers go where it wrote"
        );
        assert_eq!(
            init(Some(&a), || 6, 60_000, MAX, None, 3),
            Err(TxnError::Concurrent)
        );
        let done = complete(&a, 4);
        let n = ready(init(Some(&done), || 6, 60_000, MAX, None, 5));
        assert_eq!((n.pid, n.epoch), (5, 2));
    }

    #[test]
    fn timeouts_epochs_and_the_callers_identity() {
        assert_eq!(
            init(None, || 1, MAX + 1, MAX, None, 0),
            Err(TxnError::InvalidTimeout)
        );
        let r = ready(init(None, || 1, 1_000, MAX, None, 0));
        let r = add(&r, (1, 0), &[("t".into(), 0)], &[], 100).unwrap();
        assert_eq!(expire(&r, 1_000, || 2), None, "not yet");
        let x = expire(&r, 1_101, || 2).unwrap();
        assert_eq!((x.epoch, x.status), (1, TxnStatus::PrepareAbort));
        // KIP-360: only the caller that knows the current identity may bump it.
        let c = complete(&x, 1_200);
        assert_eq!(
            init(Some(&c), || 2, 1_000, MAX, Some((1, 0)), 1_300).map(|_| ()),
            Ok(()),
            "the epoch before the current one is accepted"
        );
        assert_eq!(
            init(Some(&c), || 2, 1_000, MAX, Some((9, 1)), 1_300),
            Err(TxnError::Fenced)
        );
        // An exhausted epoch gets a new producer id.
        let mut old = c.clone();
        old.epoch = MAX_EPOCH;
        assert!(needs_new_pid(Some(&old)) && needs_new_pid(None) && !needs_new_pid(Some(&c)));
        let n = ready(init(Some(&old), || 77, 1_000, MAX, None, 0));
        assert_eq!((n.pid, n.epoch), (77, 0));
        assert_eq!(
            end(&n, (77, 0), false, 1),
            Ok(End::Done),
            "abort with nothing open"
        );
        assert_eq!(end(&n, (77, 0), true, 1), Err(TxnError::InvalidState));
    }

    #[test]
    fn version_2_moves_the_epoch_on_at_every_end_and_recognises_retries() {
        let r = ready(init(None, || 42, 60_000, MAX, None, 0));
        let r = add(&r, (42, 0), &[("t".into(), 0)], &["g".into()], 10).unwrap();
        let Ok(EndV2::Prepare(p)) = end_v2(&r, (42, 0), true, 20, || unreachable!()) else {
            panic!()
        };
        assert_eq!(
            (p.pid, p.epoch, p.status, p.previous),
            (42, 1, TxnStatus::PrepareCommit, Some((42, 0))),
            "the markers carry the next epoch"
        );
        assert_eq!(
            end_v2(&p, (42, 0), true, 21, || 0),
            Err(TxnError::Concurrent),
            "a retry while the markers are written"
        );
        let c = complete(&p, 30);
        assert_eq!(client_identity(&c), (42, 1));
        assert_eq!(
            end_v2(&c, (42, 0), true, 31, || 0),
            Ok(EndV2::Done),
            "a retry whose answer was lost"
        );
        assert_eq!(
            end_v2(&c, (42, 0), false, 31, || 0),
            Err(TxnError::InvalidState),
            "the other outcome from the old epoch"
        );
        // The old epoch can no longer add anything: a delayed write of the ended transaction
        // cannot join the next one.
        assert_eq!(
            add(&c, (42, 0), &[("t".into(), 0)], &[], 32),
            Err(TxnError::Fenced)
        );
        let n = add(&c, (42, 1), &[("t".into(), 1)], &[], 33).unwrap();
        assert_eq!((n.status, n.partitions.len()), (TxnStatus::Ongoing, 1));
        // Committing with nothing open is an error; aborting moves the epoch on all the same.
        assert_eq!(
            end_v2(&c, (42, 1), true, 34, || 0),
            Err(TxnError::InvalidState)
        );
        let Ok(EndV2::Complete(a)) = end_v2(&c, (42, 1), false, 34, || 0) else {
            panic!()
        };
        assert_eq!(
            (a.epoch, a.status, a.partitions.len(), client_identity(&a)),
            (2, TxnStatus::CompleteAbort, 0, (42, 2))
        );
        // A new instance forgets the retry identity.
        let i = ready(init(Some(&a), || 0, 60_000, MAX, None, 40));
        assert_eq!((i.epoch, i.previous), (3, None));
        assert_eq!(end_v2(&i, (42, 1), false, 41, || 0), Err(TxnError::Fenced));
    }

    #[test]
    fn version_2_replaces_an_exhausted_producer_id_after_the_markers() {
        let mut r = ready(init(None, || 7, 60_000, MAX, None, 0));
        r.epoch = MAX_EPOCH;
        let r = add(&r, (7, MAX_EPOCH), &[("t".into(), 0)], &[], 1).unwrap();
        assert!(end_needs_new_pid(&r));
        let Ok(EndV2::Prepare(p)) = end_v2(&r, (7, MAX_EPOCH), false, 2, || 8) else {
            panic!()
        };
        assert_eq!(
            (p.pid, p.epoch, p.next_pid),
            (7, i16::MAX, Some(8)),
            "markers end the old producer id's transaction at the last epoch"
        );
        assert_eq!(client_identity(&p), (8, 0));
        let c = complete(&p, 3);
        assert_eq!((c.pid, c.epoch, c.next_pid), (8, 0, None));
        assert_eq!(end_v2(&c, (7, MAX_EPOCH), false, 4, || 0), Ok(EndV2::Done));
        // KIP-360: the client may re-initialize with the identity it knew.
        assert!(init(Some(&c), || 0, 60_000, MAX, Some((7, MAX_EPOCH)), 5).is_ok());
    }
}
