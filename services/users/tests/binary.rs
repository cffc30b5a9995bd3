//! The `shopmesh-users` binary refuses to run distributed without its data key, and never
//! prints the key.

use std::process::Command;

fn users(settings: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_shopmesh-users"));
    command
        .args(["--set", "admin.listen=\"127.0.0.1:0\""])
        .args(["--set", "peers.auth=\"http://127.0.0.1:9\""])
        .args(["--set", "log.level=\"error\""])
        .args(["--set", &format!("data_dir={:?}", dir.path())]);
    for setting in settings {
        if setting.starts_with("--") {
            command.arg(setting);
        } else {
            command.args(["--set", setting]);
        }
    }
    command.output().expect("run shopmesh-users")
}

#[test]
fn a_missing_data_key_stops_the_start() {
    let output = users(&[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("services.users.data_key is required"),
        "{stderr}"
    );
}

#[test]
fn a_short_data_key_is_named() {
    // 16 bytes, base64.
    let output = users(&["services.users.data_key=\"AAAAAAAAAAAAAAAAAAAAAA==\""]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("services.users.data_key"), "{stderr}");
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");
}

#[test]
fn check_config_redacts_the_data_key() {
    let key = "c2hvcG1lc2gtdGVzdC1rZXktb2YtMzItYnl0ZXMtbG9uZyE=";
    let output = users(&[
        &format!("services.users.data_key=\"{key}\""),
        "--check-config",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("[services.users]"), "{stdout}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(!stdout.contains(key), "{stdout}");
}
