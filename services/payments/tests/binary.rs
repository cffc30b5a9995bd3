//! The `shopmesh-payments` binary refuses to run distributed without its webhook secrets or,
//! for Stripe, its API key, and never prints a secret.

use std::process::Command;

fn payments(settings: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_shopmesh-payments"));
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
    command.output().expect("run shopmesh-payments")
}

#[test]
fn missing_webhook_secrets_stop_the_start() {
    let output = payments(&[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("services.payments.webhook_secrets is required"),
        "{stderr}"
    );
}

#[test]
fn stripe_needs_its_secret_key() {
    let output = payments(&["services.payments.webhook_secrets=[\"whsec_abc\"]"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stripe.secret_key is required"), "{stderr}");
}

#[test]
fn check_config_redacts_the_secrets() {
    let output = payments(&[
        "services.payments.gateway=\"stripe\"",
        "services.payments.stripe.secret_key=\"sk_test_do_not_print\"",
        "services.payments.webhook_secrets=[\"whsec_do_not_print\", \"whsec_old_one\"]",
        "--check-config",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("[services.payments]"), "{stdout}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(!stdout.contains("do_not_print"), "{stdout}");
    assert!(!stdout.contains("whsec_old_one"), "{stdout}");
}
