//! A topic catalog for the consumer group tests: names to (id, partition count).

use std::collections::BTreeMap;

use uuid::Uuid;

use super::TopicView;

/// Topics by name.
#[derive(Default)]
pub struct Catalog(pub BTreeMap<String, (Uuid, i32)>);

impl TopicView for Catalog {
    fn by_name(&self, name: &str) -> Option<(Uuid, i32)> {
        self.0.get(name).copied()
    }
    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
    fn name_of(&self, id: &Uuid) -> Option<String> {
        self.0
            .iter()
            .find(|(_, v)| v.0 == *id)
            .map(|(k, _)| k.clone())
    }
}
