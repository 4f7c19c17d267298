//! Producer-id ownership: a produce batch whose producer id was issued to another principal
//! (see `silt_security::producer_ids`) is refused with UNKNOWN_PRODUCER_ID — the answer a broker
//! gives for a producer id it has no state for, on which a real client asks for a new one — so
//! no client can append as, or fence, another principal's idempotent producer.

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ResponseKind};
use kafka_protocol::ResponseError;
use silt_security::producer_ids::PidCheck;

use super::Fixup;
use crate::broker::Broker;
use crate::session::Session;

/// Offset of the producer id in a v2 record batch header.
const PID_AT: usize = 43;

fn producer_id(records: &[u8]) -> Option<i64> {
    let b = records.get(PID_AT..PID_AT + 8)?;
    (records.get(16) == Some(&2)).then(|| i64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// Takes out of `r` the partitions whose batch carries a foreign producer id; the fix-up puts
/// them back into the response with UNKNOWN_PRODUCER_ID.
pub(crate) fn check(b: &Broker, s: &Session, r: &mut ProduceRequest) -> Option<Fixup> {
    // Built only for a batch that carries a sealed id (most produce requests carry none).
    let mut principal: Option<String> = None;
    let mut refused: Vec<(kafka_protocol::messages::TopicName, Vec<i32>)> = Vec::new();
    for t in &mut r.topic_data {
        let mut gone = Vec::new();
        t.partition_data.retain(|p| {
            let foreign = p
                .records
                .as_deref()
                .and_then(producer_id)
                .filter(|pid| *pid >= silt_security::producer_ids::SEALED_FROM)
                .is_some_and(|pid| {
                    let who = principal.get_or_insert_with(|| s.principal.to_string());
                    b.producer_ids.sealer().check(pid, who) == PidCheck::Foreign
                });
            if foreign {
                gone.push(p.index);
            }
            !foreign
        });
        if !gone.is_empty() {
            tracing::warn!(principal = %s.principal, peer = %s.peer, topic = %t.name.as_str(), partitions = ?gone,
                "produce with a producer id issued to another principal refused (UNKNOWN_PRODUCER_ID)");
            refused.push((t.name.clone(), gone));
        }
    }
    if refused.is_empty() {
        return None;
    }
    Some(Box::new(move |resp: &mut ResponseKind| {
        if let ResponseKind::Produce(p) = resp {
            for (name, parts) in refused {
                let answers = parts.into_iter().map(|i| {
                    PartitionProduceResponse::default()
                        .with_index(i)
                        .with_error_code(ResponseError::UnknownProducerId.code())
                        .with_base_offset(-1)
                });
                // One entry per topic: with the topic's other partitions when it has some.
                match p.responses.iter_mut().find(|t| t.name == name) {
                    Some(t) => t.partition_responses.extend(answers),
                    None => p.responses.push(
                        TopicProduceResponse::default()
                            .with_name(name)
                            .with_partition_responses(answers.collect()),
                    ),
                }
            }
        }
    }))
}
