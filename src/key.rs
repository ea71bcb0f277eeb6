//! Object identities: a namespace and a name, typed by what they name, so a Backfill's key
//! cannot be passed where a DAG's is meant.

use std::fmt;

/// A namespaced object's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Defines a key type for one kind: an [`ObjectKey`] that reads as one (`key.namespace`,
/// `key.name`) and is told apart from the others by the compiler.
macro_rules! kind_key {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(ObjectKey);

        impl $name {
            /// The object's kind, as events and references name it.
            pub const KIND: &'static str = $kind;

            pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
                $name(ObjectKey::new(namespace, name))
            }

            pub fn object(&self) -> &ObjectKey {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = ObjectKey;
            fn deref(&self) -> &ObjectKey {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

kind_key!(
    /// A DAG's identity (in the store, the engine, the executor and the status writer).
    DagKey,
    "DAG"
);
kind_key!(
    /// A Backfill's identity.
    BackfillKey,
    "Backfill"
);
kind_key!(
    /// A Pool's identity.
    PoolKey,
    "Pool"
);

impl DagKey {
    /// The key of a Backfill in the DAG's namespace.
    pub fn backfill(&self, name: &str) -> BackfillKey {
        BackfillKey::new(&self.namespace, name)
    }
}

/// The object a report is about: what events and status writes address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    Dag(DagKey),
    Backfill(BackfillKey),
}

impl Subject {
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Dag(_) => DagKey::KIND,
            Subject::Backfill(_) => BackfillKey::KIND,
        }
    }

    pub fn key(&self) -> &ObjectKey {
        match self {
            Subject::Dag(k) => k.object(),
            Subject::Backfill(k) => k.object(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_as_object_keys_and_name_their_kind() {
        let dag = DagKey::new("ns", "etl");
        assert_eq!((dag.namespace.as_str(), dag.name.as_str()), ("ns", "etl"));
        assert_eq!(dag.to_string(), "ns/etl");
        let bf = dag.backfill("q1");
        assert_eq!(bf.to_string(), "ns/q1");
        assert_eq!(Subject::Backfill(bf).kind(), "Backfill");
        assert_eq!(Subject::Dag(dag).kind(), "DAG");
    }
}
