//! The workspace's binaries, for tests in any crate that run them as real processes
//! (`CARGO_BIN_EXE_*` names only the binaries of a test's own package). `scripts/test` builds
//! every binary before running the suite.

use std::path::PathBuf;

/// The path of workspace binary `name` (e.g. `shopmesh`, `shopmesh-sidecar`), built in the same
/// profile as the running test. Panics with the command to run when it has not been built.
pub fn path(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    // A test runs from `target/<profile>/deps/`; binaries sit in `target/<profile>/`.
    let profile = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test binary under target/<profile>/deps");
    let binary = profile.join(name);
    assert!(
        binary.is_file(),
        "{} is missing: build every binary first (`cargo build --workspace --bins`)",
        binary.display()
    );
    binary
}
