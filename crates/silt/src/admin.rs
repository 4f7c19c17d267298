//! `silt admin ...`: the command-line surface of [`silt_admin`]. Prints a command's output to
//! stdout; an error goes to stderr with exit status 1.

use clap::Subcommand;

/// What to administer.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Topics: list, describe, create, delete.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Consumer groups: list, describe (members, committed offsets, lag), delete.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Live agents, the controller, and how many partitions each leads.
    Agents,
    /// Transactional ids: their state, producer, how long their transaction is open, and its
    /// partitions.
    #[command(subcommand)]
    Transactions(TransactionsCommand),
    /// Parquet archive progress per partition.
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// SASL/SCRAM users: list, set (create or change the password), delete.
    #[command(subcommand)]
    Users(UsersCommand),
    /// ACL bindings: list, add, remove.
    #[command(subcommand)]
    Acls(AclsCommand),
    /// Client quotas (produce and fetch byte rates per user and client id): list, set, remove.
    #[command(subcommand)]
    Quotas(QuotasCommand),
    /// Cluster-wide defaults of topic configs, changed at run time (broker config names, e.g.
    /// log.retention.ms): list them, or set / delete some.
    Defaults {
        #[command(subcommand)]
        cmd: Option<DefaultsCommand>,
    },
}

/// Whose quota.
#[derive(Debug, clap::Args)]
pub struct QuotaEntityArgs {
    /// A user (its principal name).
    #[arg(long, conflicts_with = "default_user")]
    user: Option<String>,
    /// The default of every user without its own quota.
    #[arg(long)]
    default_user: bool,
    /// A client id.
    #[arg(long, conflicts_with = "default_client_id")]
    client_id: Option<String>,
    /// The default of every client id without its own quota.
    #[arg(long)]
    default_client_id: bool,
}

impl QuotaEntityArgs {
    fn entity(&self) -> silt_admin::security::QuotaEntity {
        let pick = |name: &Option<String>, default: bool| match (name, default) {
            (Some(n), _) => Some(Some(n.clone())),
            (None, true) => Some(None),
            (None, false) => None,
        };
        silt_admin::security::QuotaEntity {
            user: pick(&self.user, self.default_user),
            client_id: pick(&self.client_id, self.default_client_id),
        }
    }
}

/// Cluster-wide default commands.
#[derive(Debug, Subcommand)]
pub enum DefaultsCommand {
    /// Set or delete defaults: --config log.retention.ms=86400000 --delete-config message.max.bytes
    Set {
        /// Set a default, repeatable (Kafka's broker name of a topic config).
        #[arg(long = "config", short = 'c', value_parser = parse_kv)]
        configs: Vec<(String, String)>,
        /// Remove a default (back to the agents' settings), repeatable.
        #[arg(long = "delete-config")]
        delete: Vec<String>,
    },
}

/// Quota commands.
#[derive(Debug, Subcommand)]
pub enum QuotasCommand {
    /// Every entity with quotas.
    List,
    /// Set quotas, e.g. --user alice --producer-byte-rate 1048576.
    Set {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        /// Produce bytes per second (per agent).
        #[arg(long)]
        producer_byte_rate: Option<f64>,
        /// Fetch bytes per second (per agent).
        #[arg(long)]
        consumer_byte_rate: Option<f64>,
        /// Request time, as a percentage of one thread (per agent): 50 is half a second of the
        /// agent's work per second.
        #[arg(long)]
        request_percentage: Option<f64>,
    },
    /// Remove an entity's quotas (all of them unless some are named).
    Remove {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        /// Only the produce rate.
        #[arg(long)]
        producer_byte_rate: bool,
        /// Only the fetch rate.
        #[arg(long)]
        consumer_byte_rate: bool,
        /// Only the request-time quota.
        #[arg(long)]
        request_percentage: bool,
    },
}

/// User commands.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Every user and its SCRAM mechanisms.
    List,
    /// Create a user or change its password (salted and iterated here; only that is sent).
    Set {
        /// User name.
        name: String,
        /// The password (or set SILT_USER_PASSWORD).
        #[arg(long, env = "SILT_USER_PASSWORD", hide_env_values = true)]
        password: String,
        /// Only this mechanism (default: SCRAM-SHA-256 and SCRAM-SHA-512).
        #[arg(long)]
        mechanism: Option<String>,
        /// PBKDF2 iterations (4096 to 16384; Kafka's tools use 4096).
        #[arg(long, default_value_t = 4096)]
        iterations: i32,
    },
    /// Delete a user's credentials.
    Delete {
        /// User name.
        name: String,
        /// Only this mechanism (default: both).
        #[arg(long)]
        mechanism: Option<String>,
    },
}

/// One ACL binding on the command line.
#[derive(Debug, clap::Args)]
pub struct AclBindingArgs {
    /// `User:name` or `User:*`.
    #[arg(long)]
    principal: String,
    /// read, write, create, delete, alter, describe, describe-configs, alter-configs,
    /// idempotent-write, cluster-action or all.
    #[arg(long)]
    operation: String,
    /// A topic (name).
    #[arg(long, group = "resource")]
    topic: Option<String>,
    /// A consumer group (id).
    #[arg(long, group = "resource")]
    group: Option<String>,
    /// A transactional id.
    #[arg(long, group = "resource")]
    transactional_id: Option<String>,
    /// The cluster.
    #[arg(long, group = "resource")]
    cluster: bool,
    /// The name is a prefix: every resource whose name starts with it.
    #[arg(long)]
    prefixed: bool,
    /// Client host the binding applies to.
    #[arg(long, default_value = "*")]
    host: String,
    /// A DENY binding (wins over any ALLOW).
    #[arg(long)]
    deny: bool,
}

impl AclBindingArgs {
    fn into_args(self) -> silt_admin::security::AclArgs {
        let (resource_type, name) = match (self.topic, self.group, self.transactional_id) {
            (Some(t), _, _) => ("topic", t),
            (_, Some(g), _) => ("group", g),
            (_, _, Some(t)) => ("transactional-id", t),
            _ => ("cluster", String::new()),
        };
        silt_admin::security::AclArgs {
            resource_type: resource_type.into(),
            name,
            prefixed: self.prefixed,
            principal: self.principal,
            host: self.host,
            operation: self.operation,
            deny: self.deny,
        }
    }
}

/// ACL commands.
#[derive(Debug, Subcommand)]
pub enum AclsCommand {
    /// Every binding.
    List,
    /// Create a binding, e.g. --principal User:alice --operation read --topic orders.
    Add(AclBindingArgs),
    /// Delete a binding (the same arguments as add).
    Remove(AclBindingArgs),
}

/// Topic commands.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Every topic with its partition count and id.
    List,
    /// Partitions (leader, epoch, log start, high watermark) and explicit configs.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Partitions (-1: the agents' default).
        #[arg(long, short, default_value_t = -1)]
        partitions: i32,
        /// Topic config, repeatable: --config retention.ms=3600000
        #[arg(long = "config", short = 'c', value_parser = parse_kv)]
        configs: Vec<(String, String)>,
    },
    /// Change a topic's configs (at once, on every agent) or grow its partitions.
    Alter {
        /// Topic name.
        name: String,
        /// Set a config, repeatable: --config retention.ms=3600000
        #[arg(long = "config", short = 'c', value_parser = parse_kv)]
        configs: Vec<(String, String)>,
        /// Remove a config set on the topic (back to the default), repeatable.
        #[arg(long = "delete-config")]
        delete: Vec<String>,
        /// Grow the topic to this many partitions (never fewer).
        #[arg(long, short)]
        partitions: Option<i32>,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

/// Transaction commands.
#[derive(Debug, Subcommand)]
pub enum TransactionsCommand {
    /// Every transactional id each agent coordinates.
    List,
}

/// Group commands.
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Every group, its state and its coordinator.
    List,
    /// Members, committed offsets, end offsets and lag.
    Describe {
        /// Group id.
        group: String,
    },
    /// Delete an empty group and its committed offsets.
    Delete {
        /// Group id.
        group: String,
    },
}

/// Archive commands.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Archived offset, high watermark and lag per partition, from the agents' admin ports.
    Status {
        /// Admin HTTP addresses of the agents (comma-separated or repeated).
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9644")]
        admin: Vec<String>,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value (e.g. retention.ms=3600000)"))
}

/// Runs a command against `bootstrap`.
pub async fn run(bootstrap: &str, cmd: AdminCommand) -> Result<String, silt_admin::AdminError> {
    use silt_admin::commands as c;
    match cmd {
        AdminCommand::Topics(TopicsCommand::List) => c::topics_list(bootstrap).await,
        AdminCommand::Topics(TopicsCommand::Describe { name }) => {
            c::topics_describe(bootstrap, &name).await
        }
        AdminCommand::Topics(TopicsCommand::Create {
            name,
            partitions,
            configs,
        }) => c::topics_create(bootstrap, &name, partitions, &configs).await,
        AdminCommand::Topics(TopicsCommand::Alter {
            name,
            configs,
            delete,
            partitions,
        }) => c::topics_alter(bootstrap, &name, &configs, &delete, partitions).await,
        AdminCommand::Topics(TopicsCommand::Delete { name }) => {
            c::topics_delete(bootstrap, &name).await
        }
        AdminCommand::Defaults { cmd: None } => c::defaults_list(bootstrap).await,
        AdminCommand::Defaults {
            cmd: Some(DefaultsCommand::Set { configs, delete }),
        } => c::defaults_set(bootstrap, &configs, &delete).await,
        AdminCommand::Groups(GroupsCommand::List) => c::groups_list(bootstrap).await,
        AdminCommand::Groups(GroupsCommand::Describe { group }) => {
            c::groups_describe(bootstrap, &group).await
        }
        AdminCommand::Groups(GroupsCommand::Delete { group }) => {
            c::groups_delete(bootstrap, &group).await
        }
        AdminCommand::Agents => c::agents(bootstrap).await,
        AdminCommand::Archive(ArchiveCommand::Status { admin }) => c::archive_status(&admin).await,
        AdminCommand::Users(UsersCommand::List) => {
            silt_admin::security::users_list(bootstrap).await
        }
        AdminCommand::Users(UsersCommand::Set {
            name,
            password,
            mechanism,
            iterations,
        }) => {
            silt_admin::security::users_set(
                bootstrap,
                &name,
                &password,
                mechanism.as_deref(),
                iterations,
            )
            .await
        }
        AdminCommand::Users(UsersCommand::Delete { name, mechanism }) => {
            silt_admin::security::users_delete(bootstrap, &name, mechanism.as_deref()).await
        }
        AdminCommand::Quotas(QuotasCommand::List) => {
            silt_admin::security::quotas_list(bootstrap).await
        }
        AdminCommand::Quotas(QuotasCommand::Set {
            entity,
            producer_byte_rate,
            consumer_byte_rate,
            request_percentage,
        }) => {
            let ops: Vec<_> = [
                ("producer_byte_rate", producer_byte_rate),
                ("consumer_byte_rate", consumer_byte_rate),
                ("request_percentage", request_percentage),
            ]
            .into_iter()
            .filter(|(_, v)| v.is_some())
            .collect();
            silt_admin::security::quotas_alter(bootstrap, &entity.entity(), &ops).await
        }
        AdminCommand::Quotas(QuotasCommand::Remove {
            entity,
            producer_byte_rate,
            consumer_byte_rate,
            request_percentage,
        }) => {
            let named = [
                ("producer_byte_rate", producer_byte_rate),
                ("consumer_byte_rate", consumer_byte_rate),
                ("request_percentage", request_percentage),
            ];
            let all = named.iter().all(|(_, n)| !n);
            let ops: Vec<_> = named
                .into_iter()
                .filter(|(_, n)| all || *n)
                .map(|(k, _)| (k, None))
                .collect();
            silt_admin::security::quotas_alter(bootstrap, &entity.entity(), &ops).await
        }
        AdminCommand::Acls(AclsCommand::List) => silt_admin::security::acls_list(bootstrap).await,
        AdminCommand::Transactions(TransactionsCommand::List) => {
            silt_admin::transactions::list(bootstrap).await
        }
        AdminCommand::Acls(AclsCommand::Add(a)) => {
            silt_admin::security::acls_add(bootstrap, &a.into_args()).await
        }
        AdminCommand::Acls(AclsCommand::Remove(a)) => {
            silt_admin::security::acls_remove(bootstrap, &a.into_args()).await
        }
    }
}
