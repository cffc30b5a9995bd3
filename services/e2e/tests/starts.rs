//! Starting and stopping `shopmesh up` as a newcomer would: ready means searchable, and Ctrl-C
//! during the start is a clean, cancelled start rather than an error.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{Platform, http};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_after_ready_the_demo_catalog_is_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(
        dir.path(),
        &["services.catalog.demo_catalog=true".to_owned()],
    )
    .await;
    // No waiting: the first search after the ready line finds the demo's running shoes.
    let answer = http(
        &platform.edge,
        "GET",
        "/v1/products:search?q=running%20shoe",
        &[],
        b"",
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = answer.json();
    let found = body["results"].as_array().map_or(0, Vec::len);
    assert!(found > 0, "nothing found right after ready: {body}");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_the_start_cancels_it_cleanly() {
    for after_line in 1..=9 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(shopmesh_testkit::binaries::path("shopmesh"))
            .arg("up")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--set", "admin.listen=\"127.0.0.1:0\""])
            .args(["--set", "services.edge.listen=\"127.0.0.1:0\""])
            .args(["--set", "services.users.bcrypt_cost=4"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // The signal comes after the start's `after_line`-th line: the banner, then one line
        // per component as it starts.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = Vec::new();
        while printed.len() < after_line {
            match lines.next_line().await.unwrap() {
                Some(line) => printed.push(line),
                None => break,
            }
        }
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            printed.push(line);
        }
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("exits within 30 s of Ctrl-C")
            .unwrap();
        let mut errors = String::new();
        let _ =
            tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut errors)
                .await;
        assert!(
            status.success(),
            "after line {after_line}: {status}\n{}\n{errors}",
            printed.join("\n")
        );
        assert!(
            !errors.contains("error:"),
            "a cancelled start is no error: {errors}"
        );
        let ready = printed
            .iter()
            .any(|line| line.starts_with("shopmesh is ready"));
        let cancelled = printed.iter().any(|line| line.contains("start cancelled"));
        assert!(
            ready || cancelled,
            "after line {after_line}, neither ready nor cancelled:\n{}",
            printed.join("\n")
        );
    }
}
