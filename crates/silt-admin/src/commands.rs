//! The commands. Each returns the text to print.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::client::{Cluster, Conn};
use crate::{check, AdminError};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// (topic, partition) -> (leader, epoch).
type Leaders = BTreeMap<(String, i32), (i32, i32)>;

async fn metadata(
    c: &mut Cluster,
    topics: Option<&[&str]>,
) -> Result<MetadataResponse, AdminError> {
    let req = MetadataRequest::default()
        .with_allow_auto_topic_creation(false)
        .with_topics(topics.map(|ts| {
            ts.iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(TopicName(s(t)))))
                .collect()
        }));
    c.conn.call(ApiKey::Metadata, 12, &req).await
}

fn leaders(md: &MetadataResponse) -> Result<Leaders, AdminError> {
    let mut out = Leaders::new();
    for t in &md.topics {
        let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        check(t.error_code, &format!("describing topic {name}"), None)?;
        for p in &t.partitions {
            out.insert(
                (name.clone(), p.partition_index),
                (p.leader_id.0, p.leader_epoch),
            );
        }
    }
    Ok(out)
}

/// Offsets at `timestamp` (-1 latest, -2 earliest) of every partition, asked of its leader.
async fn offsets(
    c: &Cluster,
    leaders: &Leaders,
    timestamp: i64,
) -> Result<BTreeMap<(String, i32), i64>, AdminError> {
    let mut by_leader: BTreeMap<i32, BTreeMap<&str, Vec<i32>>> = BTreeMap::new();
    for ((t, p), (leader, _)) in leaders {
        by_leader
            .entry(*leader)
            .or_default()
            .entry(t.as_str())
            .or_default()
            .push(*p);
    }
    let mut out = BTreeMap::new();
    for (leader, topics) in by_leader {
        if leader < 0 {
            continue; // no leader right now: reported as unknown
        }
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(
                topics
                    .iter()
                    .map(|(t, ps)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(s(t)))
                            .with_partitions(
                                ps.iter()
                                    .map(|p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(*p)
                                            .with_timestamp(timestamp)
                                            .with_current_leader_epoch(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let mut conn = c.broker(leader).await?;
        let r: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 7, &req).await?;
        for t in r.topics {
            for p in t.partitions {
                if p.error_code == 0 {
                    out.insert((t.name.0.to_string(), p.partition_index), p.offset);
                }
            }
        }
    }
    Ok(out)
}

pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

pub(crate) fn row(cells: &[&dyn std::fmt::Display]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// `topics list`: every topic with its partition count and id.
pub async fn topics_list(bootstrap: &str) -> Result<String, AdminError> {
    let mut c = Cluster::connect(bootstrap).await?;
    let md = metadata(&mut c, None).await?;
    let mut rows = vec![row(&[&"TOPIC", &"PARTITIONS", &"ID"])];
    let mut topics: Vec<_> = md.topics.iter().collect();
    topics.sort_by_key(|t| t.name.as_ref().map(|n| n.0.to_string()));
    for t in topics {
        let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        rows.push(row(&[&name, &t.partitions.len(), &t.topic_id]));
    }
    Ok(table(&rows))
}

/// `topics describe NAME`: partitions with leader, epoch and offsets, and explicit configs.
pub async fn topics_describe(bootstrap: &str, name: &str) -> Result<String, AdminError> {
    let mut c = Cluster::connect(bootstrap).await?;
    let md = metadata(&mut c, Some(&[name])).await?;
    let leaders = leaders(&md)?;
    let starts = offsets(&c, &leaders, -2).await?;
    let ends = offsets(&c, &leaders, -1).await?;
    let id = md.topics.first().map(|t| t.topic_id).unwrap_or_default();
    let mut out = format!("topic {name}  id {id}  partitions {}\n", leaders.len());
    let mut rows = vec![row(&[
        &"PARTITION",
        &"LEADER",
        &"EPOCH",
        &"LOG-START",
        &"HIGH-WATERMARK",
    ])];
    let unknown = "?".to_string();
    for ((_, p), (leader, epoch)) in &leaders {
        let k = (name.to_string(), *p);
        let st = starts.get(&k).map_or(unknown.clone(), i64::to_string);
        let hw = ends.get(&k).map_or(unknown.clone(), i64::to_string);
        rows.push(row(&[p, leader, epoch, &st, &hw]));
    }
    out.push_str(&table(&rows));
    let req =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s(name))
            .with_configuration_keys(None)]);
    let r: DescribeConfigsResponse = c.conn.call(ApiKey::DescribeConfigs, 4, &req).await?;
    let mut explicit = Vec::new();
    for res in &r.results {
        check(
            res.error_code,
            "describing configs",
            res.error_message.as_deref(),
        )?;
        for cfg in &res.configs {
            if cfg.config_source == 1 {
                explicit.push(format!(
                    "  {} = {}",
                    cfg.name,
                    cfg.value.as_deref().unwrap_or("")
                ));
            }
        }
    }
    if explicit.is_empty() {
        out.push_str("configs: all defaults\n");
    } else {
        out.push_str("configs:\n");
        for e in explicit {
            let _ = writeln!(out, "{e}");
        }
    }
    Ok(out)
}

/// `topics create NAME`: through the controller.
pub async fn topics_create(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    configs: &[(String, String)],
) -> Result<String, AdminError> {
    let c = Cluster::connect(bootstrap).await?;
    let mut conn = c.broker(c.controller).await?;
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(s(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(s(k))
                            .with_value(Some(s(v)))
                    })
                    .collect(),
            )]);
    let r: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 7, &req).await?;
    let t = r
        .topics
        .first()
        .ok_or_else(|| AdminError::Usage("empty CreateTopics response".into()))?;
    check(
        t.error_code,
        &format!("creating topic {name}"),
        t.error_message.as_deref(),
    )?;
    Ok(format!(
        "created topic {name}: {} partitions, id {}\n",
        t.num_partitions, t.topic_id
    ))
}

/// `topics alter NAME`: config changes (IncrementalAlterConfigs) and partition growth
/// (CreatePartitions), through the controller.
pub async fn topics_alter(
    bootstrap: &str,
    name: &str,
    set: &[(String, String)],
    delete: &[String],
    partitions: Option<i32>,
) -> Result<String, AdminError> {
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    if set.is_empty() && delete.is_empty() && partitions.is_none() {
        return Err(AdminError::Usage(
            "nothing to change: give --config k=v, --delete-config k or --partitions N".into(),
        ));
    }
    let c = Cluster::connect(bootstrap).await?;
    let mut conn = c.broker(c.controller).await?;
    let mut out = String::new();
    if !set.is_empty() || !delete.is_empty() {
        alter_configs(
            &mut conn,
            (2, name),
            set,
            delete,
            &format!("changing the configs of topic {name}"),
        )
        .await?;
        for (k, v) in set {
            out.push_str(&format!("{name}: {k}={v}\n"));
        }
        for k in delete {
            out.push_str(&format!("{name}: {k} back to its default\n"));
        }
    }
    if let Some(n) = partitions {
        let req = CreatePartitionsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(TopicName(s(name)))
                .with_count(n)]);
        let r: CreatePartitionsResponse = conn.call(ApiKey::CreatePartitions, 3, &req).await?;
        let res = r
            .results
            .first()
            .ok_or_else(|| AdminError::Usage("empty CreatePartitions response".into()))?;
        check(
            res.error_code,
            &format!("growing topic {name} to {n} partitions"),
            res.error_message.as_deref(),
        )?;
        out.push_str(&format!("{name}: {n} partitions\n"));
    }
    Ok(out)
}

/// SETs and DELETEs configs of one resource (type, name) with IncrementalAlterConfigs.
async fn alter_configs(
    conn: &mut Conn,
    (resource_type, name): (i8, &str),
    set: &[(String, String)],
    delete: &[String],
    what: &str,
) -> Result<(), AdminError> {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    let configs = set
        .iter()
        .map(|(k, v)| {
            AlterableConfig::default()
                .with_name(s(k))
                .with_config_operation(0)
                .with_value(Some(s(v)))
        })
        .chain(delete.iter().map(|k| {
            AlterableConfig::default()
                .with_name(s(k))
                .with_config_operation(1)
        }))
        .collect();
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(name))
            .with_configs(configs),
    ]);
    let r: IncrementalAlterConfigsResponse =
        conn.call(ApiKey::IncrementalAlterConfigs, 1, &req).await?;
    let res = r
        .responses
        .first()
        .ok_or_else(|| AdminError::Usage("empty IncrementalAlterConfigs response".into()))?;
    check(res.error_code, what, res.error_message.as_deref())
}

/// `defaults`: the cluster-wide defaults of topic configs changed at run time (broker config
/// names, the default broker resource).
pub async fn defaults_list(bootstrap: &str) -> Result<String, AdminError> {
    let mut conn = Conn::connect(bootstrap).await?;
    let req =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(s(""))
            .with_configuration_keys(None)]);
    let r: DescribeConfigsResponse = conn.call(ApiKey::DescribeConfigs, 4, &req).await?;
    let res = r
        .results
        .first()
        .ok_or_else(|| AdminError::Usage("empty DescribeConfigs response".into()))?;
    check(
        res.error_code,
        "reading the cluster-wide defaults",
        res.error_message.as_deref(),
    )?;
    if res.configs.is_empty() {
        return Ok(
            "no cluster-wide defaults set: every topic config defaults to the agents' settings\n"
                .into(),
        );
    }
    let mut out = String::new();
    for c in &res.configs {
        out.push_str(&format!(
            "{}={}\n",
            c.name.as_str(),
            c.value.as_deref().unwrap_or("")
        ));
    }
    Ok(out)
}

/// `defaults set`: changes cluster-wide defaults of topic configs (e.g. `log.retention.ms`).
pub async fn defaults_set(
    bootstrap: &str,
    set: &[(String, String)],
    delete: &[String],
) -> Result<String, AdminError> {
    if set.is_empty() && delete.is_empty() {
        return Err(AdminError::Usage(
            "nothing to change: give --config k=v or --delete-config k (broker names, e.g. log.retention.ms)".into(),
        ));
    }
    let mut conn = Conn::connect(bootstrap).await?;
    alter_configs(
        &mut conn,
        (4, ""),
        set,
        delete,
        "changing the cluster-wide defaults",
    )
    .await?;
    let mut out = String::new();
    for (k, v) in set {
        out.push_str(&format!(
            "{k}={v} (every agent, topics without their own value)\n"
        ));
    }
    for k in delete {
        out.push_str(&format!("{k} back to the agents' settings\n"));
    }
    Ok(out)
}

/// `topics delete NAME`: through the controller.
pub async fn topics_delete(bootstrap: &str, name: &str) -> Result<String, AdminError> {
    let c = Cluster::connect(bootstrap).await?;
    let mut conn = c.broker(c.controller).await?;
    let req = DeleteTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topic_names(vec![TopicName(s(name))]);
    let r: DeleteTopicsResponse = conn.call(ApiKey::DeleteTopics, 5, &req).await?;
    let t = r
        .responses
        .first()
        .ok_or_else(|| AdminError::Usage("empty DeleteTopics response".into()))?;
    check(
        t.error_code,
        &format!("deleting topic {name}"),
        t.error_message.as_deref(),
    )?;
    Ok(format!("deleted topic {name}\n"))
}

/// `groups list`: the groups every agent coordinates.
pub async fn groups_list(bootstrap: &str) -> Result<String, AdminError> {
    let c = Cluster::connect(bootstrap).await?;
    let mut groups = BTreeMap::new();
    for id in c.brokers.keys() {
        let mut conn = c.broker(*id).await?;
        let r: ListGroupsResponse = conn
            .call(ApiKey::ListGroups, 5, &ListGroupsRequest::default())
            .await?;
        check(r.error_code, "listing groups", None)?;
        for g in r.groups {
            groups.insert(
                g.group_id.0.to_string(),
                (
                    g.group_state.to_string(),
                    g.group_type.to_string(),
                    g.protocol_type.to_string(),
                    *id,
                ),
            );
        }
    }
    let mut rows = vec![row(&[
        &"GROUP",
        &"STATE",
        &"TYPE",
        &"PROTOCOL-TYPE",
        &"COORDINATOR",
    ])];
    for (g, (state, ty, pt, coord)) in &groups {
        rows.push(row(&[g, state, ty, pt, coord]));
    }
    Ok(table(&rows))
}

async fn coordinator(c: &Cluster, group: &str) -> Result<crate::client::Conn, AdminError> {
    let mut conn = crate::client::Conn::connect(
        &c.brokers
            .values()
            .next()
            .ok_or_else(|| AdminError::Usage("the cluster lists no broker".into()))?
            .addr,
    )
    .await?;
    let r: FindCoordinatorResponse = conn
        .call(
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default().with_key(s(group)),
        )
        .await?;
    check(
        r.error_code,
        &format!("finding the coordinator of group {group}"),
        r.error_message.as_deref(),
    )?;
    crate::client::Conn::connect(&format!("{}:{}", r.host, r.port)).await
}

/// `groups describe GROUP`: state, members, and committed offset, end offset and lag per
/// partition.
pub async fn groups_describe(bootstrap: &str, group: &str) -> Result<String, AdminError> {
    let mut c = Cluster::connect(bootstrap).await?;
    let mut coord = coordinator(&c, group).await?;
    let d: DescribeGroupsResponse = coord
        .call(
            ApiKey::DescribeGroups,
            5,
            &DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]),
        )
        .await?;
    let g = d
        .groups
        .first()
        .ok_or_else(|| AdminError::Usage("empty DescribeGroups response".into()))?;
    check(g.error_code, &format!("describing group {group}"), None)?;
    let mut out = format!(
        "group {group}  state {}  protocol {}  members {}\n",
        g.group_state,
        if g.protocol_data.is_empty() {
            "-"
        } else {
            &g.protocol_data
        },
        g.members.len()
    );
    if !g.members.is_empty() {
        let mut rows = vec![row(&[&"MEMBER", &"CLIENT-ID", &"HOST"])];
        for m in &g.members {
            rows.push(row(&[&m.member_id, &m.client_id, &m.client_host]));
        }
        out.push_str(&table(&rows));
    }
    let f: OffsetFetchResponse = coord
        .call(
            ApiKey::OffsetFetch,
            7,
            &OffsetFetchRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_topics(None),
        )
        .await?;
    check(
        f.error_code,
        &format!("fetching group {group}'s offsets"),
        None,
    )?;
    let mut committed = BTreeMap::new();
    for t in &f.topics {
        for p in &t.partitions {
            if p.committed_offset >= 0 {
                committed.insert(
                    (t.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    if committed.is_empty() {
        out.push_str("no committed offsets\n");
        return Ok(out);
    }
    let topics: Vec<String> = committed.keys().map(|(t, _)| t.clone()).collect();
    let mut names: Vec<&str> = topics.iter().map(String::as_str).collect();
    names.dedup();
    let md = metadata(&mut c, Some(&names)).await?;
    let ends = offsets(&c, &leaders(&md)?, -1).await?;
    let mut rows = vec![row(&[&"TOPIC", &"PARTITION", &"COMMITTED", &"END", &"LAG"])];
    let mut total = 0;
    for ((t, p), off) in &committed {
        let (end, lag) = match ends.get(&(t.clone(), *p)) {
            Some(e) => {
                let lag = (e - off).max(0);
                total += lag;
                (e.to_string(), lag.to_string())
            }
            None => ("?".into(), "?".into()),
        };
        rows.push(row(&[t, p, off, &end, &lag]));
    }
    out.push_str(&table(&rows));
    let _ = writeln!(out, "total lag {total}");
    Ok(out)
}

/// `groups delete GROUP`: only an empty group can be deleted.
pub async fn groups_delete(bootstrap: &str, group: &str) -> Result<String, AdminError> {
    let c = Cluster::connect(bootstrap).await?;
    let mut coord = coordinator(&c, group).await?;
    let r: DeleteGroupsResponse = coord
        .call(
            ApiKey::DeleteGroups,
            2,
            &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(group))]),
        )
        .await?;
    let g = r
        .results
        .first()
        .ok_or_else(|| AdminError::Usage("empty DeleteGroups response".into()))?;
    check(g.error_code, &format!("deleting group {group}"), None)?;
    Ok(format!("deleted group {group}\n"))
}

/// `agents`: every live agent, which one is the controller, and how many partitions each leads.
pub async fn agents(bootstrap: &str) -> Result<String, AdminError> {
    let mut c = Cluster::connect(bootstrap).await?;
    let md = metadata(&mut c, None).await?;
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    let mut leaderless = 0;
    for t in &md.topics {
        for p in &t.partitions {
            if p.leader_id.0 >= 0 {
                *led.entry(p.leader_id.0).or_default() += 1;
            } else {
                leaderless += 1;
            }
        }
    }
    let mut rows = vec![row(&[&"ID", &"ADDRESS", &"CONTROLLER", &"PARTITIONS"])];
    for (id, b) in &c.brokers {
        let ctl = if *id == md.controller_id.0 {
            "yes"
        } else {
            "no"
        };
        rows.push(row(&[
            id,
            &b.addr,
            &ctl,
            &led.get(id).copied().unwrap_or(0),
        ]));
    }
    let mut out = table(&rows);
    if leaderless > 0 {
        let _ = writeln!(out, "{leaderless} partitions have no live leader right now");
    }
    Ok(out)
}

/// `archive status`: Parquet archive progress per partition, from each agent's admin port
/// (`GET /archive`; admin ports are not in Kafka metadata, so they are given).
pub async fn archive_status(admins: &[String]) -> Result<String, AdminError> {
    let mut rows = vec![row(&[
        &"TOPIC",
        &"PARTITION",
        &"ARCHIVED",
        &"HIGH-WATERMARK",
        &"LAG",
        &"FILES",
        &"AGENT",
    ])];
    let mut all = Vec::new();
    for a in admins {
        let body = http_get(a, "/archive").await?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| AdminError::Protocol {
                addr: a.clone(),
                reason: format!("/archive is not JSON: {e}"),
            })?;
        for p in v.as_array().into_iter().flatten() {
            let s = |k: &str| {
                p.get(k)
                    .map(|x| x.to_string().trim_matches('"').to_string())
            };
            all.push((
                s("topic").unwrap_or_default(),
                p.get("partition").and_then(|x| x.as_i64()).unwrap_or(-1),
                s("archived_offset").unwrap_or_default(),
                s("high_watermark").unwrap_or_default(),
                s("lag").unwrap_or_default(),
                s("files").unwrap_or_default(),
                a.clone(),
            ));
        }
    }
    all.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
    for (t, p, off, hw, lag, files, agent) in &all {
        rows.push(row(&[t, p, off, hw, lag, files, agent]));
    }
    let mut out = table(&rows);
    if all.is_empty() {
        out.push_str("no partition is being archived (set silt.archive.enable=true on a topic)\n");
    }
    Ok(out)
}

async fn http_get(addr: &str, path: &str) -> Result<String, AdminError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |source| AdminError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(io)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.map_err(io)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(AdminError::Protocol {
            addr: addr.to_string(),
            reason: format!("GET {path}: {}", head.lines().next().unwrap_or("")),
        });
    }
    Ok(body.to_string())
}
