//! Transactions: the coordinator's rules ([`state`]) for a transactional id's durable record
//! (`/silt/txns/…`). The partition side — transaction marks in the index, the last stable offset
//! and the aborted list — is in `txn_index`, `append` and `read`.

pub mod state;
