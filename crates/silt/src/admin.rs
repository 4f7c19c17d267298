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
    /// Parquet archive progress per partition.
    #[command(subcommand)]
    Archive(ArchiveCommand),
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
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
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
        AdminCommand::Topics(TopicsCommand::Delete { name }) => {
            c::topics_delete(bootstrap, &name).await
        }
        AdminCommand::Groups(GroupsCommand::List) => c::groups_list(bootstrap).await,
        AdminCommand::Groups(GroupsCommand::Describe { group }) => {
            c::groups_describe(bootstrap, &group).await
        }
        AdminCommand::Groups(GroupsCommand::Delete { group }) => {
            c::groups_delete(bootstrap, &group).await
        }
        AdminCommand::Agents => c::agents(bootstrap).await,
        AdminCommand::Archive(ArchiveCommand::Status { admin }) => c::archive_status(&admin).await,
    }
}
