//! The idempotent-consumer side: a consumer records each processed event id, so a redelivered
//! event is recognised and its effect not applied twice.
//!
//! - On SQLite the id is inserted in the same transaction as the effect ([`first_delivery`]):
//!   exactly once.
//! - On CQL there is no such transaction, so the id is *claimed* with a lightweight transaction
//!   before the effect and marked done after it ([`CqlInbox`]). A consumer that dies between the
//!   two leaves a claim whose lease runs out, and a later delivery takes it over; effects on CQL
//!   should therefore also be conditional writes or idempotent upserts where they can be.

pub mod cql;
pub mod sqlite;

pub use cql::{CQL_SCHEMA, Claim, CqlInbox};
pub use sqlite::{SQLITE_SCHEMA, first_delivery};

/// The inbox table as migration `version` of a service's SQLite schema.
pub const fn sqlite_migration(version: u32) -> shopmesh_storage::Migration {
    shopmesh_storage::Migration {
        version,
        name: "inbox",
        statements: SQLITE_SCHEMA,
    }
}

/// The inbox table as migration `version` of a service's CQL schema.
pub const fn cql_migration(version: u32) -> shopmesh_storage::Migration {
    shopmesh_storage::Migration {
        version,
        name: "inbox",
        statements: CQL_SCHEMA,
    }
}
