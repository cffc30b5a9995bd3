//! How tests find the real engines of the test bed (`scripts/testbed up`), which writes their
//! addresses to `target/testbed/env` as `SHOPMESH_TEST_*` variables.
//!
//! A test whose variable is set uses that engine and fails loudly if it is down. A test whose
//! variable is missing is skipped with a message locally, and fails under `CI=true`: no engine
//! test is ever skipped silently in CI.

/// The address of an engine of the test bed, or `None` (after saying so) when a local run has no
/// bed. Panics under `CI=true` when the variable is missing.
pub fn address(variable: &str, engine: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(value) if !value.trim().is_empty() => Some(value.trim().to_owned()),
        _ if running_in_ci() => panic!(
            "{variable} is not set: under CI every {engine} test must run; start the test bed with \
             `scripts/testbed up {engine}` and `source target/testbed/env`"
        ),
        _ => {
            eprintln!(
                "skipped: {variable} is not set; run `scripts/testbed up {engine} && source target/testbed/env` \
                 to run this test against a real {engine}"
            );
            None
        }
    }
}

fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| matches!(value.trim(), "true" | "1" | "yes"))
}
