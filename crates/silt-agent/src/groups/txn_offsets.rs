//! Offsets committed inside transactions (TxnOffsetCommit): kept pending per producer id —
//! durable under `/silt/groups/{group}/txn-offsets/{pid}` and in memory — until the producer's
//! transaction ends: a commit makes them the group's offsets, an abort drops them. Meanwhile
//! OffsetFetch with `require_stable` answers UNSTABLE_OFFSET_COMMIT for those partitions, so a
//! read_committed consumer never starts from an offset that may still be rolled back. A
//! TxnOffsetCommit is taken only into its producer's open transaction (checked against the
//! transaction's record, and written only if that record has not moved since): a late or
//! zombie request (an older epoch, or a transaction that ended) is refused, never merged into
//! a later transaction of the same producer id, whose commit would make its stale offsets the
//! group's.

use kafka_protocol::ResponseError;
use silt_meta::layout::group_offsets::{self, Committed};
use silt_meta::{Compare, Op, Txn};

use super::{Entry, GroupCoordinator};

impl GroupCoordinator {
    /// The lock that orders `group`'s offset writes.
    fn writes_of(&self, group: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.lock()
            .entry(group.to_string())
            .or_insert_with(Entry::new)
            .writes
            .clone()
    }

    /// Producer `pid`'s pending offsets for `group`.
    fn pending_of(&self, group: &str, pid: i64) -> Vec<(String, i32, Committed)> {
        self.lock()
            .get(group)
            .and_then(|e| e.txn_pending.get(&pid).cloned())
            .unwrap_or_default()
    }

    /// KIP-447: a TxnOffsetCommit naming its consumer's member id and generation (v3+) is
    /// checked against the group as an OffsetCommit is (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION,
    /// FENCED_INSTANCE_ID, REBALANCE_IN_PROGRESS; a consumer group's member epoch), so offsets
    /// of a consumer that was rebalanced meanwhile never become part of the transaction: the
    /// producer must abort, and the records it wrote for those inputs are never read.
    pub fn check_txn_member(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        self.check(group)?;
        let groups = self.lock();
        match groups.get(group) {
            Some(e) => match &e.consumer {
                Some(c) if !c.is_empty() => c.check_member_epoch(member_id, generation),
                _ => e.group.check_commit(member_id, instance_id, generation),
            },
            None if generation < 0 => Ok(()),
            None => Err(ResponseError::IllegalGeneration.code()),
        }
    }

    /// TxnOffsetCommit: adds `offsets` to producer `pid`'s pending offsets for `group`, if the
    /// producer's transaction record is still at `txn` (its key and revision, as verified):
    /// `Ok(false)` if it moved on meanwhile (verify again).
    pub async fn txn_commit(
        &self,
        group: &str,
        pid: i64,
        offsets: Vec<(String, i32, Committed)>,
        txn: (&str, i64),
    ) -> Result<bool, i16> {
        let mut fence = self.check(group)?;
        let registered = fence.len();
        fence.push(Compare::mod_revision(txn.0, txn.1));
        let writes = self.writes_of(group);
        let _ordered = writes.lock().await;
        let mut merged = self.pending_of(group, pid);
        for (t, p, c) in offsets {
            merged.retain(|(t2, p2, _)| !(t2 == &t && *p2 == p));
            merged.push((t, p, c));
        }
        let res = self
            .meta
            .txn(Txn {
                compares: fence.clone(),
                success: vec![group_offsets::txn_offsets_put(group, pid, &merged)],
                failure: vec![],
            })
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable.code())?;
        if !res.succeeded {
            // Which compare failed: this agent's coordination, or the transaction.
            let still = self
                .meta
                .txn(Txn {
                    compares: fence[..registered].to_vec(),
                    success: vec![],
                    failure: vec![],
                })
                .await
                .map_err(|_| ResponseError::CoordinatorNotAvailable.code())?;
            return if still.succeeded {
                Ok(false)
            } else {
                Err(ResponseError::NotCoordinator.code())
            };
        }
        self.lock()
            .entry(group.to_string())
            .or_insert_with(Entry::new)
            .txn_pending
            .insert(pid, merged);
        Ok(true)
    }

    /// Whether `partition` of `group` has offsets committed in an open transaction.
    pub fn unstable(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.lock().get(group).is_some_and(|e| {
            e.txn_pending
                .values()
                .any(|v| v.iter().any(|(t, p, _)| t == topic && *p == partition))
        })
    }

    /// Ends producer `pid`'s transaction for `group` (a group marker request at revision
    /// `request_rev`): its pending offsets become the group's on commit, are dropped on abort;
    /// the pending key and the request are deleted with the last write.
    pub async fn end_txn_offsets(
        &self,
        group: &str,
        pid: i64,
        commit: bool,
        request: (&str, i64),
    ) -> Result<(), i16> {
        let fence = self.check(group)?;
        let writes = self.writes_of(group);
        let _ordered = writes.lock().await;
        let pending = self.pending_of(group, pid);
        if commit && !pending.is_empty() {
            let mut durable = |done: &[(String, i32, Committed)]| {
                let mut groups = self.lock();
                let e = groups.entry(group.to_string()).or_insert_with(Entry::new);
                for (t, p, c) in done {
                    e.offsets.insert((t.clone(), *p), c.clone());
                }
            };
            group_offsets::commit(
                self.meta.as_ref(),
                &fence,
                group,
                &pending,
                None,
                &mut durable,
            )
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable.code())?;
        }
        let mut compares = fence;
        compares.push(Compare::mod_revision(request.0, request.1));
        let res = self
            .meta
            .txn(Txn {
                compares,
                success: vec![
                    Op::delete(group_offsets::txn_offsets_key(group, pid)),
                    Op::delete(request.0),
                ],
                failure: vec![],
            })
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable.code())?;
        if !res.succeeded {
            return Err(ResponseError::NotCoordinator.code());
        }
        if let Some(e) = self.lock().get_mut(group) {
            e.txn_pending.remove(&pid);
        }
        tracing::debug!(
            group,
            pid,
            commit,
            offsets = pending.len(),
            "transactional offsets ended"
        );
        Ok(())
    }
}
