//! Kafka's ACL model: resources, patterns, operations, bindings and filters, and the rules that
//! decide whether a binding applies (the same rules as Kafka's `StandardAuthorizer`).
//!
//! Codes are Kafka's own (`AclResourceType`, `PatternType`, `AclOperation`,
//! `AclPermissionType`), so wire values and stored values are the same numbers.

use silt_meta::layout::security::AclRecord;

use crate::principal::Principal;

macro_rules! coded {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $c:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $v),* }
        impl $name {
            /// Kafka's code.
            pub fn code(self) -> i8 { match self { $(Self::$v => $c),* } }
            /// From Kafka's code.
            pub fn from_code(c: i8) -> Option<Self> { match c { $($c => Some(Self::$v),)* _ => None } }
        }
    };
}

coded!(
    /// A kind of resource.
    ResourceType {
        /// Filters only.
        Any = 1,
        /// A topic.
        Topic = 2,
        /// A consumer group.
        Group = 3,
        /// The cluster (`kafka-cluster`).
        Cluster = 4,
        /// A transactional id.
        TransactionalId = 5,
        /// A delegation token.
        DelegationToken = 6,
        /// A user.
        User = 7,
    }
);

coded!(
    /// How a binding's resource name is matched.
    PatternType {
        /// Filters only: any pattern.
        Any = 1,
        /// Filters only: every binding that applies to the named resource.
        Match = 2,
        /// The name exactly (or `*` for every resource).
        Literal = 3,
        /// Every name starting with it.
        Prefixed = 4,
    }
);

coded!(
    /// What a principal may do.
    Operation {
        /// Filters only.
        Any = 1,
        /// Everything.
        All = 2,
        /// Read.
        Read = 3,
        /// Write.
        Write = 4,
        /// Create.
        Create = 5,
        /// Delete.
        Delete = 6,
        /// Alter.
        Alter = 7,
        /// Describe.
        Describe = 8,
        /// Cluster action.
        ClusterAction = 9,
        /// Describe configs.
        DescribeConfigs = 10,
        /// Alter configs.
        AlterConfigs = 11,
        /// Idempotent write.
        IdempotentWrite = 12,
        /// Create tokens.
        CreateTokens = 13,
        /// Describe tokens.
        DescribeTokens = 14,
    }
);

coded!(
    /// Allow or deny.
    Permission {
        /// Filters only.
        Any = 1,
        /// Deny (wins over any allow).
        Deny = 2,
        /// Allow.
        Allow = 3,
    }
);

/// The one cluster resource's name.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The wildcard resource name, principal and host.
pub const WILDCARD: &str = "*";

/// One ACL binding, typed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    /// Resource type (never `Any`).
    pub resource_type: ResourceType,
    /// Resource name.
    pub name: String,
    /// Literal or prefixed.
    pub pattern: PatternType,
    /// `User:name` or `User:*`.
    pub principal: String,
    /// Host or `*`.
    pub host: String,
    /// Operation (never `Any`).
    pub operation: Operation,
    /// Allow or deny (never `Any`).
    pub permission: Permission,
}

/// Why a binding cannot be created (Kafka answers INVALID_REQUEST).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ACL binding: {0}")]
pub struct InvalidBinding(pub String);

impl Binding {
    /// Checks a binding as Kafka does before storing it.
    pub fn validate(&self) -> Result<(), InvalidBinding> {
        let bad = |s: &str| Err(InvalidBinding(s.into()));
        if self.resource_type == ResourceType::Any {
            return bad("resource type ANY is for filters only");
        }
        if !matches!(self.pattern, PatternType::Literal | PatternType::Prefixed) {
            return bad("pattern type must be LITERAL or PREFIXED");
        }
        if self.operation == Operation::Any || self.permission == Permission::Any {
            return bad("operation and permission ANY are for filters only");
        }
        if self.name.is_empty() {
            return bad("empty resource name");
        }
        if self.resource_type == ResourceType::Cluster && self.name != CLUSTER_NAME {
            return bad("the cluster resource is named kafka-cluster");
        }
        if self.principal != "User:*" && Principal::parse(&self.principal).is_none() {
            return bad("principal must be User:<name> or User:*");
        }
        if self.host.is_empty() {
            return bad("empty host (use * for any host)");
        }
        Ok(())
    }

    /// As stored.
    pub fn to_record(&self) -> AclRecord {
        AclRecord {
            resource_type: self.resource_type.code(),
            resource_name: self.name.clone(),
            pattern_type: self.pattern.code(),
            principal: self.principal.clone(),
            host: self.host.clone(),
            operation: self.operation.code(),
            permission: self.permission.code(),
        }
    }

    /// From the stored form; `None` for codes this version does not know.
    pub fn from_record(r: &AclRecord) -> Option<Self> {
        Some(Self {
            resource_type: ResourceType::from_code(r.resource_type)?,
            name: r.resource_name.clone(),
            pattern: PatternType::from_code(r.pattern_type)?,
            principal: r.principal.clone(),
            host: r.host.clone(),
            operation: Operation::from_code(r.operation)?,
            permission: Permission::from_code(r.permission)?,
        })
    }

    /// Whether this binding's pattern covers resource `name`.
    pub fn covers(&self, name: &str) -> bool {
        match self.pattern {
            PatternType::Literal => self.name == name || self.name == WILDCARD,
            PatternType::Prefixed => name.starts_with(&self.name),
            PatternType::Any | PatternType::Match => false,
        }
    }
}

/// Which bindings DescribeAcls and DeleteAcls select. `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Resource type (`Any` for all).
    pub resource_type: ResourceType,
    /// Resource name.
    pub name: Option<String>,
    /// Pattern type (`Any`, `Match`, `Literal`, `Prefixed`).
    pub pattern: PatternType,
    /// Principal.
    pub principal: Option<String>,
    /// Host.
    pub host: Option<String>,
    /// Operation (`Any` for all).
    pub operation: Operation,
    /// Permission (`Any` for all).
    pub permission: Permission,
}

impl Filter {
    /// Whether `b` is selected.
    pub fn matches(&self, b: &Binding) -> bool {
        if self.resource_type != ResourceType::Any && self.resource_type != b.resource_type {
            return false;
        }
        let name_ok = match (self.pattern, &self.name) {
            (PatternType::Any, None) => true,
            (PatternType::Any, Some(n)) => &b.name == n,
            (PatternType::Match, None) => true,
            (PatternType::Match, Some(n)) => b.covers(n),
            (p, n) => p == b.pattern && n.as_ref().is_none_or(|n| &b.name == n),
        };
        name_ok
            && self.principal.as_ref().is_none_or(|p| p == &b.principal)
            && self.host.as_ref().is_none_or(|h| h == &b.host)
            && (self.operation == Operation::Any || self.operation == b.operation)
            && (self.permission == Permission::Any || self.permission == b.permission)
    }
}

/// Whether an ALLOW binding for `granted` permits `wanted` (Kafka's implied operations:
/// READ, WRITE, DELETE and ALTER imply DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS).
pub fn allow_implies(granted: Operation, wanted: Operation) -> bool {
    use Operation::*;
    granted == All
        || granted == wanted
        || (wanted == Describe && matches!(granted, Read | Write | Delete | Alter))
        || (wanted == DescribeConfigs && granted == AlterConfigs)
}

/// Whether a DENY binding for `denied` forbids `wanted` (only the operation itself or ALL).
pub fn deny_implies(denied: Operation, wanted: Operation) -> bool {
    denied == Operation::All || denied == wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(name: &str, pattern: PatternType) -> Binding {
        Binding {
            resource_type: ResourceType::Topic,
            name: name.into(),
            pattern,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: Operation::Read,
            permission: Permission::Allow,
        }
    }

    #[test]
    fn patterns_cover_the_names_kafka_says_they_do() {
        assert!(b("orders", PatternType::Literal).covers("orders"));
        assert!(!b("orders", PatternType::Literal).covers("orders-eu"));
        assert!(b("*", PatternType::Literal).covers("anything"));
        assert!(b("ord", PatternType::Prefixed).covers("orders"));
        assert!(!b("ord", PatternType::Prefixed).covers("or"));
    }

    #[test]
    fn filters_select_by_every_field() {
        let lit = b("orders", PatternType::Literal);
        let pre = b("ord", PatternType::Prefixed);
        let mut f = Filter {
            resource_type: ResourceType::Any,
            name: None,
            pattern: PatternType::Any,
            principal: None,
            host: None,
            operation: Operation::Any,
            permission: Permission::Any,
        };
        assert!(f.matches(&lit) && f.matches(&pre));
        f.pattern = PatternType::Match;
        f.name = Some("orders".into());
        assert!(f.matches(&lit) && f.matches(&pre));
        f.pattern = PatternType::Literal;
        assert!(f.matches(&lit) && !f.matches(&pre));
        f.pattern = PatternType::Any;
        f.principal = Some("User:bob".into());
        assert!(!f.matches(&lit));
        f.principal = None;
        f.resource_type = ResourceType::Group;
        assert!(!f.matches(&lit));
    }

    #[test]
    fn bindings_are_validated_and_round_trip_through_records() {
        let ok = b("orders", PatternType::Literal);
        ok.validate().unwrap();
        assert_eq!(Binding::from_record(&ok.to_record()), Some(ok.clone()));
        let mut bad = ok.clone();
        bad.pattern = PatternType::Match;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.principal = "alice".into();
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.resource_type = ResourceType::Cluster;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn implied_operations_follow_kafka() {
        assert!(allow_implies(Operation::Write, Operation::Describe));
        assert!(allow_implies(
            Operation::AlterConfigs,
            Operation::DescribeConfigs
        ));
        assert!(!allow_implies(Operation::Describe, Operation::Read));
        assert!(!deny_implies(Operation::Read, Operation::Describe));
        assert!(deny_implies(Operation::All, Operation::Describe));
    }
}
