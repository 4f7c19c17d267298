//! Decides whether a principal may perform an operation on a resource, from the ACL bindings in
//! the metadata store (followed by a watch, so every agent sees a change within moments) and
//! the configured super users.
//!
//! Rules (Kafka's `StandardAuthorizer`): a super user may do anything; a DENY binding that
//! applies wins; else an ALLOW binding that applies (with implied operations) permits; else,
//! when no binding at all applies to the resource, `allow_everyone_if_no_acl_found` decides
//! (false by default). A binding applies when its pattern covers the resource name, its
//! principal is the principal or `User:*`, and its host is the client's or `*`.
//!
//! Decisions are cached per connection ([`DecisionCache`]) and the cache is dropped whenever
//! the bindings change, so checking costs a hash lookup on the produce and fetch paths.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use silt_meta::layout::security::{self as layout, AclRecord};
use silt_meta::mirror::Mirror;
use silt_meta::{MetaError, MetaKv};

use crate::acl::{allow_implies, deny_implies, Binding, Operation, Permission, ResourceType};
use crate::principal::Principal;

/// The bindings of one resource type, indexed for lookups.
#[derive(Debug, Default)]
struct Index {
    literal: HashMap<String, Vec<Binding>>,
    prefixed: Vec<Binding>,
}

impl Index {
    fn applicable<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Binding> + 'a {
        let exact = self.literal.get(name).into_iter().flatten();
        let wild = self
            .literal
            .get(crate::acl::WILDCARD)
            .into_iter()
            .flatten()
            .filter(move |_| name != crate::acl::WILDCARD);
        let pre = self.prefixed.iter().filter(move |b| b.covers(name));
        exact.chain(wild).chain(pre)
    }
}

#[derive(Debug, Default)]
struct Compiled {
    version: u64,
    by_type: HashMap<ResourceType, Index>,
    all: Vec<Binding>,
}

/// Authorization settings.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Principals allowed everything (`User:admin`).
    pub super_users: Vec<Principal>,
    /// What to decide for a resource no binding applies to.
    pub allow_everyone_if_no_acl_found: bool,
}

/// The ACL authorizer of one agent.
#[derive(Debug)]
pub struct Authorizer {
    policy: Policy,
    mirror: Mirror<String, AclRecord>,
    compiled: RwLock<Arc<Compiled>>,
}

fn parse_key(k: &[u8]) -> Option<String> {
    String::from_utf8(k.to_vec()).ok()
}

fn parse_value(k: &[u8], v: &[u8]) -> Option<AclRecord> {
    layout::decode_acl(k, v).ok()
}

impl Authorizer {
    /// Starts following the stored bindings.
    pub async fn start(kv: Arc<dyn MetaKv>, policy: Policy) -> Result<Self, MetaError> {
        let mirror = Mirror::start(kv, layout::acls_prefix(), parse_key, parse_value).await?;
        Ok(Self {
            policy,
            mirror,
            compiled: RwLock::new(Arc::new(Compiled::default())),
        })
    }

    /// A number that changes whenever the bindings do (per-connection caches compare it).
    pub fn version(&self) -> u64 {
        self.mirror.snapshot().version
    }

    fn compiled(&self) -> Arc<Compiled> {
        let snap = self.mirror.snapshot();
        {
            let c = self.compiled.read().expect("authorizer lock");
            if c.version == snap.version {
                return c.clone();
            }
        }
        let mut fresh = Compiled {
            version: snap.version,
            ..Default::default()
        };
        for item in snap.items.values() {
            let Some(b) = Binding::from_record(&item.value) else {
                tracing::warn!(?item.value, "ACL binding with codes this version does not know; ignored");
                continue;
            };
            let idx = fresh.by_type.entry(b.resource_type).or_default();
            match b.pattern {
                crate::acl::PatternType::Prefixed => idx.prefixed.push(b.clone()),
                _ => idx
                    .literal
                    .entry(b.name.clone())
                    .or_default()
                    .push(b.clone()),
            }
            fresh.all.push(b);
        }
        let fresh = Arc::new(fresh);
        *self.compiled.write().expect("authorizer lock") = fresh.clone();
        fresh
    }

    /// Every binding, as of now.
    pub fn bindings(&self) -> Vec<Binding> {
        self.compiled().all.clone()
    }

    /// Whether `principal` connected from `host` may perform `op` on the resource.
    pub fn authorize(
        &self,
        principal: &Principal,
        host: &str,
        op: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        if self.policy.super_users.contains(principal) {
            return true;
        }
        let c = self.compiled();
        let Some(idx) = c.by_type.get(&resource_type) else {
            return self.policy.allow_everyone_if_no_acl_found;
        };
        let me = principal.to_string();
        let mut any = false;
        let mut allowed = false;
        for b in idx.applicable(name) {
            any = true;
            if !(b.principal == me || b.principal == "User:*") {
                continue;
            }
            if !(b.host == host || b.host == crate::acl::WILDCARD) {
                continue;
            }
            match b.permission {
                Permission::Deny if deny_implies(b.operation, op) => return false,
                Permission::Allow if allow_implies(b.operation, op) => allowed = true,
                _ => {}
            }
        }
        allowed || (!any && self.policy.allow_everyone_if_no_acl_found)
    }

    /// Whether `principal` may perform `op` on at least one resource of the type (Kafka's
    /// "any topic" checks, e.g. idempotent writes with WRITE on some topic).
    pub fn authorize_any(
        &self,
        principal: &Principal,
        host: &str,
        op: Operation,
        resource_type: ResourceType,
    ) -> bool {
        if self.policy.super_users.contains(principal) {
            return true;
        }
        let me = principal.to_string();
        self.compiled()
            .by_type
            .get(&resource_type)
            .into_iter()
            .flat_map(|i| i.literal.values().flatten().chain(&i.prefixed))
            .any(|b| {
                b.permission == Permission::Allow
                    && (b.principal == me || b.principal == "User:*")
                    && (b.host == host || b.host == crate::acl::WILDCARD)
                    && allow_implies(b.operation, op)
                    && !self.denied_everywhere(&me, host, op, resource_type, b)
            })
    }

    fn denied_everywhere(
        &self,
        me: &str,
        host: &str,
        op: Operation,
        rt: ResourceType,
        allow: &Binding,
    ) -> bool {
        // The allow's own resource denied outright (a literal or wildcard deny over it).
        let c = self.compiled();
        c.by_type.get(&rt).is_some_and(|i| {
            i.applicable(&allow.name).any(|d| {
                d.permission == Permission::Deny
                    && (d.principal == me || d.principal == "User:*")
                    && (d.host == host || d.host == crate::acl::WILDCARD)
                    && deny_implies(d.operation, op)
            })
        })
    }
}

/// A connection's memory of decisions, dropped when the bindings change.
#[derive(Debug, Default)]
pub struct DecisionCache {
    version: u64,
    map: HashMap<(Operation, ResourceType, String), bool>,
}

/// Most decisions one connection remembers before starting over.
const MAX_CACHED: usize = 4096;
/// Longest resource name a decision is remembered for (Kafka topic names have at most 249).
const MAX_CACHED_NAME: usize = 255;

impl DecisionCache {
    /// [`Authorizer::authorize`], remembered.
    pub fn authorize(
        &mut self,
        a: &Authorizer,
        principal: &Principal,
        host: &str,
        op: Operation,
        rt: ResourceType,
        name: &str,
    ) -> bool {
        let v = a.version();
        if v != self.version || self.map.len() >= MAX_CACHED {
            self.map.clear();
            self.version = v;
        }
        // Names come from requests: long ones are decided each time, never kept, so the cache
        // stays within MAX_CACHED × MAX_CACHED_NAME bytes.
        if name.len() > MAX_CACHED_NAME {
            return a.authorize(principal, host, op, rt, name);
        }
        if let Some(d) = self.map.get(&(op, rt, name.to_string())) {
            return *d;
        }
        let d = a.authorize(principal, host, op, rt, name);
        self.map.insert((op, rt, name.to_string()), d);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::PatternType;

    fn bind(
        rt: ResourceType,
        name: &str,
        pat: PatternType,
        who: &str,
        op: Operation,
        perm: Permission,
    ) -> AclRecord {
        Binding {
            resource_type: rt,
            name: name.into(),
            pattern: pat,
            principal: who.into(),
            host: "*".into(),
            operation: op,
            permission: perm,
        }
        .to_record()
    }

    async fn with(acls: &[AclRecord], allow_if_none: bool) -> Authorizer {
        let kv: Arc<dyn MetaKv> = Arc::new(silt_meta::embedded::EmbeddedKv::in_memory(Arc::new(
            silt_common::SystemClock,
        )));
        layout::put_acls(kv.as_ref(), acls).await.unwrap();
        Authorizer::start(
            kv,
            Policy {
                super_users: vec![Principal::user("admin")],
                allow_everyone_if_no_acl_found: allow_if_none,
            },
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn deny_wins_allow_implies_and_no_acl_follows_the_policy() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        use ResourceType::*;
        let a = with(
            &[
                bind(Topic, "orders", Literal, "User:alice", Write, Allow),
                bind(Topic, "pay", Prefixed, "User:*", Read, Allow),
                bind(Topic, "payroll", Literal, "User:bob", All, Deny),
            ],
            false,
        )
        .await;
        let alice = Principal::user("alice");
        let bob = Principal::user("bob");
        assert!(a.authorize(&alice, "h", Write, Topic, "orders"));
        assert!(
            a.authorize(&alice, "h", Describe, Topic, "orders"),
            "WRITE implies DESCRIBE"
        );
        assert!(!a.authorize(&alice, "h", Read, Topic, "orders"));
        assert!(a.authorize(&bob, "h", Read, Topic, "payments"));
        assert!(!a.authorize(&bob, "h", Read, Topic, "payroll"), "deny wins");
        assert!(a.authorize(&alice, "h", Read, Topic, "payroll"));
        assert!(!a.authorize(&alice, "h", Read, Topic, "nobody-mentions-it"));
        assert!(a.authorize(
            &Principal::user("admin"),
            "h",
            Delete,
            Cluster,
            "kafka-cluster"
        ));
        assert!(a.authorize_any(&alice, "h", Write, Topic));
        assert!(!a.authorize_any(&bob, "h", Write, Topic));
        let open = with(
            &[bind(Topic, "orders", Literal, "User:alice", Write, Allow)],
            true,
        )
        .await;
        assert!(
            open.authorize(&bob, "h", Read, Topic, "other"),
            "no ACL on it: allowed"
        );
        assert!(
            !open.authorize(&bob, "h", Read, Topic, "orders"),
            "an ACL on it: not bob's"
        );
    }

    /// More bindings than one metadata transaction may hold (128 ops) and than one page of a
    /// range read: all stored, all seen by the authorizer.
    #[tokio::test]
    async fn thousands_of_bindings_are_stored_in_chunks_and_all_apply() {
        let acls: Vec<AclRecord> = (0..3000)
            .map(|i| {
                bind(
                    ResourceType::Topic,
                    &format!("t-{i:05}"),
                    PatternType::Literal,
                    "User:alice",
                    Operation::Read,
                    Permission::Allow,
                )
            })
            .collect();
        let a = with(&acls, false).await;
        assert_eq!(a.bindings().len(), 3000);
        let alice = Principal::user("alice");
        for i in [0, 127, 128, 2999] {
            let t = format!("t-{i:05}");
            assert!(
                a.authorize(&alice, "h", Operation::Read, ResourceType::Topic, &t),
                "{t}"
            );
        }
        assert!(!a.authorize(&alice, "h", Operation::Read, ResourceType::Topic, "t-03000"));
    }

    #[tokio::test]
    async fn caches_forget_decisions_when_bindings_change() {
        let kv: Arc<dyn MetaKv> = Arc::new(silt_meta::embedded::EmbeddedKv::in_memory(Arc::new(
            silt_common::SystemClock,
        )));
        let a = Authorizer::start(kv.clone(), Policy::default())
            .await
            .unwrap();
        let alice = Principal::user("alice");
        let mut cache = DecisionCache::default();
        let check = |c: &mut DecisionCache| {
            c.authorize(&a, &alice, "h", Operation::Read, ResourceType::Topic, "t")
        };
        assert!(!check(&mut cache));
        let grant = bind(
            ResourceType::Topic,
            "t",
            PatternType::Literal,
            "User:alice",
            Operation::Read,
            Permission::Allow,
        );
        layout::put_acls(kv.as_ref(), std::slice::from_ref(&grant))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !check(&mut cache) {
            assert!(std::time::Instant::now() < deadline, "grant never seen");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        layout::delete_acls(kv.as_ref(), &[grant]).await.unwrap();
        while check(&mut cache) {
            assert!(
                std::time::Instant::now() < deadline,
                "revocation never seen"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
