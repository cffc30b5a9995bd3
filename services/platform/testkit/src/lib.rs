//! Test support, and only that: every crate takes it as a dev-dependency, so none of it is
//! compiled into a binary.
//!
//! - [`testbed`]: where the real engines of the test bed are (`scripts/testbed up`), and when a
//!   test without one is skipped (locally) or fails (under `CI=true`).
//! - [`storage`]: fresh SQLite databases and CQL keyspaces, and [`contract_suite!`], which runs
//!   one repository contract on every backend.
//! - [`events`]: fresh event buses on the embedded log and on Pulsar.
//! - [`binaries`]: the workspace's built binaries, for tests that run them as processes.

#![forbid(unsafe_code)]

pub mod binaries;
pub mod events;
pub mod storage;
pub mod testbed;
