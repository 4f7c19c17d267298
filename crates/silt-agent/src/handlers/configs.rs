//! IncrementalAlterConfigs and AlterConfigs: topic configs change at once on every agent (the
//! topic record in the metadata store is replaced, compare-and-swap, and every agent's catalog
//! follows). Broker configs: the cluster-wide defaults of topic configs (`log.retention.ms` and
//! the other synonyms, on the default resource or an agent's own) change at run time on every
//! agent the same way; the agent's log levels (resource type BROKER_LOGGER) change on that agent; every
//! other broker config is read at start and refused as Kafka refuses read-only configs.

use std::sync::Arc;

use kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::broker::Broker;
use crate::error::TopicError;
use crate::topic_config::{self, Change};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const RESOURCE_BROKER_LOGGER: i8 = 8;

/// The outcome for one resource: error code and message.
type Outcome = (i16, Option<String>);

fn ok() -> Outcome {
    (0, None)
}

fn failed(e: &TopicError) -> Outcome {
    (e.code().code(), Some(e.to_string()))
}

fn refused(code: ResponseError, why: String) -> Outcome {
    (code.code(), Some(why))
}

/// The changes an IncrementalAlterConfigs resource asks for.
fn incremental_changes(res: &AlterConfigsResource) -> Result<Vec<Change>, TopicError> {
    res.configs
        .iter()
        .map(|c| {
            Change::from_kafka(
                c.config_operation,
                c.name.as_str(),
                c.value.as_ref().map(|v| v.as_str()),
            )
        })
        .collect()
}

/// Handles IncrementalAlterConfigs (v0-1).
pub async fn incremental(
    b: &Arc<Broker>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut out = Vec::with_capacity(req.resources.len());
    for res in req.resources {
        let name = res.resource_name.to_string();
        let (code, msg) = match res.resource_type {
            RESOURCE_TOPIC => {
                let changes = incremental_changes(&res);
                match changes {
                    Err(e) => failed(&e),
                    Ok(changes) => {
                        let d = b.topics.defaults().clone();
                        let r = b
                            .topics
                            .alter(&name, req.validate_only, |rec| {
                                let mut next = rec.clone();
                                next.configs = topic_config::apply_changes(&rec.configs, &changes, &d)?;
                                Ok(next)
                            })
                            .await;
                        r.map_or_else(|e| failed(&e), |_| ok())
                    }
                }
            }
            RESOURCE_BROKER_LOGGER => loggers(
                b,
                &name,
                res.configs
                    .iter()
                    .map(|c| (c.config_operation, c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                    .collect(),
                req.validate_only,
            ),
            RESOURCE_BROKER => {
                let changes = incremental_changes(&res);
                match changes {
                    Err(e) => failed(&e),
                    Ok(changes) => broker(b, &name, &changes, false, req.validate_only).await,
                }
            }
            other => refused(
                ResponseError::InvalidRequest,
                format!("resource type {other} cannot be altered (topics: 2, brokers: 4, broker loggers: 8)"),
            ),
        };
        out.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(msg.map(StrBytes::from_string))
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(out)
}

/// Handles AlterConfigs (v0-2): a topic's configs become exactly the ones given.
pub async fn alter(b: &Arc<Broker>, req: AlterConfigsRequest) -> AlterConfigsResponse {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse as R;
    let mut out = Vec::with_capacity(req.resources.len());
    for res in req.resources {
        let name = res.resource_name.to_string();
        let (code, msg) = match res.resource_type {
            RESOURCE_TOPIC => {
                let given: Vec<(String, String)> = res
                    .configs
                    .iter()
                    .map(|c| {
                        (
                            c.name.to_string(),
                            c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                        )
                    })
                    .collect();
                match topic_config::replace_all(&given) {
                    Err(e) => failed(&e),
                    Ok(configs) => b
                        .topics
                        .alter(&name, req.validate_only, |rec| {
                            let mut next = rec.clone();
                            next.configs = configs.clone();
                            Ok(next)
                        })
                        .await
                        .map_or_else(|e| failed(&e), |_| ok()),
                }
            }
            RESOURCE_BROKER => {
                let changes: Vec<Change> = res
                    .configs
                    .iter()
                    .map(|c| {
                        Change::Set(
                            c.name.to_string(),
                            c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                        )
                    })
                    .collect();
                broker(b, &name, &changes, true, req.validate_only).await
            }
            other => refused(
                ResponseError::InvalidRequest,
                format!("resource type {other} cannot be altered with AlterConfigs (topics: 2, brokers: 4)"),
            ),
        };
        out.push(
            R::default()
                .with_error_code(code)
                .with_error_message(msg.map(StrBytes::from_string))
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name),
        );
    }
    AlterConfigsResponse::default().with_responses(out)
}

/// A BROKER resource: the cluster-wide defaults of topic configs change (`replace`:
/// AlterConfigs, the given set replaces the stored one), whether the request names the default
/// resource (name "") or this agent — Silt keeps one value for the pool, since any agent may
/// lead any partition (docs/compatibility.md); anything else is read-only, as in Kafka.
async fn broker(
    b: &Broker,
    name: &str,
    changes: &[Change],
    replace: bool,
    validate_only: bool,
) -> Outcome {
    if !name.is_empty() && name.parse::<i32>().ok() != Some(b.node.id) {
        return refused(
            ResponseError::InvalidRequest,
            format!(
                "unexpected broker id {name:?}: this is agent {}; send an agent's configs to that agent, or use the default resource (empty name) for the cluster-wide defaults",
                b.node.id
            ),
        );
    }
    if !name.is_empty() && !changes.is_empty() {
        tracing::info!(agent = name, configs = ?changes.iter().map(|c| c.name()).collect::<Vec<_>>(),
            "broker configs altered through one agent's resource apply to every agent (Silt keeps one cluster-wide value)");
    }
    let d = b.topics.defaults().clone();
    b.topics
        .alter_dynamic_defaults(validate_only, |cur| {
            topic_config::apply_broker_changes(cur, changes, replace, &d)
        })
        .await
        .map_or_else(|e| failed(&e), |_| ok())
}

/// BROKER_LOGGER: each config is a log target (a Rust module path such as
/// `silt_agent::flush`, or `root` for the default) and its level; DELETE sets the target back to
/// the default. Applied to this agent only, as Kafka applies logger changes to one broker.
fn loggers(
    b: &Broker,
    broker: &str,
    configs: Vec<(i8, String, Option<String>)>,
    validate_only: bool,
) -> Outcome {
    if broker.parse::<i32>().ok() != Some(b.node.id) {
        return refused(
            ResponseError::InvalidRequest,
            format!(
                "log levels are changed per agent: this is agent {}, not {broker:?}",
                b.node.id
            ),
        );
    }
    let Some(levels) = &b.log_levels else {
        return refused(
            ResponseError::InvalidRequest,
            "this agent's log levels cannot be changed at run time".into(),
        );
    };
    let mut directives: Vec<String> = levels
        .current()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(String::from)
        .collect();
    for (op, target, value) in configs {
        let level = match (op, value.as_deref()) {
            (0, Some(v)) => {
                let v = v.to_ascii_lowercase();
                if !["trace", "debug", "info", "warn", "error", "off"].contains(&v.as_str()) {
                    return refused(
                        ResponseError::InvalidConfig,
                        format!("invalid log level {v:?} for {target}: expected TRACE, DEBUG, INFO, WARN, ERROR or OFF"),
                    );
                }
                Some(v)
            }
            (1, _) => None,
            _ => {
                return refused(
                    ResponseError::InvalidRequest,
                    format!("log target {target}: only SET (with a level) and DELETE apply"),
                )
            }
        };
        let is_target = |d: &String| -> bool {
            if target == "root" {
                !d.contains('=')
            } else {
                d.split_once('=').is_some_and(|(t, _)| t == target)
            }
        };
        directives.retain(|d| !is_target(d));
        if let Some(l) = level {
            directives.push(if target == "root" {
                l
            } else {
                format!("{target}={l}")
            });
        }
    }
    if validate_only {
        return ok();
    }
    match levels.set(&directives.join(",")) {
        Ok(()) => ok(),
        Err(e) => refused(ResponseError::InvalidConfig, e),
    }
}
