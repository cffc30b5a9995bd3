//! Starting and stopping `shopmesh cluster up`: a signal at any point of the start stops every
//! process started so far, and the command exits cleanly; a second cluster on taken addresses is
//! refused with the holder named.
//!
//! The cluster binds fixed addresses (127.0.0.2 and up), so this file holds one test, and the
//! suites that start a cluster run one after another.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

/// Points of the start at which the signal arrives, spread from the first steps (once the
/// process has had time to start its runtime) to after ready (a debug build is ready after about
/// two and a half seconds).
const SIGNAL_AFTER_MS: [u64; 10] = [250, 400, 550, 800, 1000, 1300, 1600, 2000, 2500, 4000];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_at_any_point_of_the_start_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    for (attempt, after) in SIGNAL_AFTER_MS.into_iter().enumerate() {
        let cluster = Command::new(shopmesh_testkit::binaries::path("shopmesh"))
            .args(["cluster", "up", "--nodes", "2", "--data-dir"])
            .arg(dir.path())
            .args(["--set", "services.users.bcrypt_cost=4"])
            // A group of its own, which its processes join: what is left is found by group.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start shopmesh cluster up");
        let group = cluster.id().unwrap();
        tokio::time::sleep(Duration::from_millis(after)).await;
        signal("-INT", &group.to_string());
        let output = tokio::time::timeout(Duration::from_secs(30), cluster.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("attempt {attempt}: no exit 30 s after the signal"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let left = wait_for_group_to_end(group, Duration::from_secs(15)).await;
        if !left.is_empty() {
            signal("-KILL", &format!("-{group}"));
        }
        assert!(
            left.is_empty(),
            "attempt {attempt} (signal after {after} ms) left {left:?}\n{stdout}\n{stderr}"
        );
        assert!(
            output.status.success(),
            "attempt {attempt} (signal after {after} ms): {}\n{stdout}\n{stderr}",
            output.status
        );
    }

    // A cluster that holds the addresses makes a second one refuse to start, naming the holder.
    let mut first = Command::new(shopmesh_testkit::binaries::path("shopmesh"))
        .args(["cluster", "up", "--nodes", "2", "--data-dir"])
        .arg(dir.path())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let group = first.id().unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect("127.0.0.2:2379").is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "etcd never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = Command::new(shopmesh_testkit::binaries::path("shopmesh"))
        .args(["cluster", "up", "--nodes", "2", "--data-dir"])
        .arg(dir.path().join("second"))
        .output()
        .await
        .unwrap();
    signal("-INT", &group.to_string());
    let _ = tokio::time::timeout(Duration::from_secs(30), first.wait()).await;
    let left = wait_for_group_to_end(group, Duration::from_secs(15)).await;
    if !left.is_empty() {
        signal("-KILL", &format!("-{group}"));
    }
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{message}");
    assert!(
        message.contains("127.0.0.2:2379 (held by pid "),
        "the refusal names the address and its holder: {message}"
    );
    assert!(left.is_empty(), "the first cluster left {left:?}");
}

fn signal(signal: &str, target: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, "--", target])
        .status();
}

/// Waits until no process of process group `group` is left; returns those still there at the
/// deadline, as `pid command`.
async fn wait_for_group_to_end(group: u32, deadline: Duration) -> Vec<String> {
    let started = Instant::now();
    loop {
        let left = members(group);
        if left.is_empty() || started.elapsed() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The live processes of process group `group`, from /proc (zombies count as gone).
fn members(group: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces, so split after its `)`.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        if fields.get(2).and_then(|pgrp| pgrp.parse::<u32>().ok()) == Some(group) {
            found.push(head.replace(" (", " "));
        }
    }
    found
}
