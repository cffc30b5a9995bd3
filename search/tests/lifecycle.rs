//! Versions, deletes, visibility, reopening, rebuilding.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use shopmesh_search::generate::Catalog;

#[test]
fn an_older_version_does_not_overwrite_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    let mut v2 = product("lamp", "Brass Lamp");
    v2.version = 2;
    let mut v1 = product("lamp", "Copper Lamp");
    v1.version = 1;
    index.upsert(v2.clone()).unwrap();
    // Both before a commit and after one.
    index.upsert(v1.clone()).unwrap();
    index.flush().unwrap();
    index.upsert(v1).unwrap();
    index.flush().unwrap();
    assert_eq!(find(&index, "brass", "en"), ["lamp"]);
    assert!(find(&index, "copper", "en").is_empty());
    assert_eq!(index.len(), 1);

    // A newer one does, and the same version again is accepted (redelivery).
    let mut v3 = product("lamp", "Steel Lamp");
    v3.version = 3;
    index.upsert(v3.clone()).unwrap();
    index.upsert(v3).unwrap();
    index.flush().unwrap();
    assert_eq!(find(&index, "steel", "en"), ["lamp"]);
    assert!(find(&index, "brass", "en").is_empty());
    assert_eq!(index.len(), 1);
}

#[test]
fn delete_removes_and_is_not_undone_by_an_older_upsert() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    let mut lamp = product("lamp", "Brass Lamp");
    lamp.version = 4;
    index_all(&index, [lamp.clone(), product("chair", "Oak Chair")]);
    assert_eq!(index.len(), 2);

    // An older delete is ignored.
    index.delete("lamp", 3).unwrap();
    index.flush().unwrap();
    assert_eq!(find(&index, "lamp", "en"), ["lamp"]);

    index.delete("lamp", 5).unwrap();
    index.flush().unwrap();
    assert!(find(&index, "lamp", "en").is_empty());
    assert_eq!(index.len(), 1);

    // The update that preceded the delete arrives late: still deleted.
    index.upsert(lamp.clone()).unwrap();
    lamp.version = 5;
    index.upsert(lamp.clone()).unwrap();
    index.flush().unwrap();
    assert!(find(&index, "lamp", "en").is_empty());
    // So does a delete of a product never seen, which holds off its older versions.
    index.delete("ghost", 2).unwrap();
    let mut ghost = product("ghost", "Ghost Lamp");
    ghost.version = 1;
    index.upsert(ghost).unwrap();
    index.flush().unwrap();
    assert!(find(&index, "ghost", "en").is_empty());

    // A newer version brings the product back.
    lamp.version = 6;
    index.upsert(lamp).unwrap();
    index.flush().unwrap();
    assert_eq!(find(&index, "lamp", "en"), ["lamp"]);
    assert_eq!(index.len(), 2);
}

#[test]
fn changes_become_searchable_within_a_second_without_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    let written = Instant::now();
    index.upsert(product("lamp", "Brass Lamp")).unwrap();
    while find(&index, "brass", "en").is_empty() {
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "not searchable after a second"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let deleted = Instant::now();
    index.delete("lamp", 2).unwrap();
    while !find(&index, "brass", "en").is_empty() {
        assert!(
            deleted.elapsed() < Duration::from_secs(1),
            "still found after a second"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reopening_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let (index, needs_rebuild) = open(dir.path());
    assert!(needs_rebuild, "a new index must be built");
    index
        .rebuild([product("lamp", "Brass Lamp")], |_| {})
        .unwrap();
    // Written but never flushed: dropping the index commits it.
    index.upsert(product("chair", "Oak Chair")).unwrap();
    drop(index);

    let (index, needs_rebuild) = open(dir.path());
    assert!(!needs_rebuild);
    assert_eq!(index.len(), 2);
    assert_eq!(find(&index, "brass", "en"), ["lamp"]);
    assert_eq!(find(&index, "oak", "en"), ["chair"]);
    assert!(index.size_on_disk().unwrap() > 0);
}

#[test]
fn a_changed_schema_version_or_a_damaged_index_asks_for_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let build = |dir: &std::path::Path| {
        let (index, _) = open(dir);
        index
            .rebuild([product("lamp", "Brass Lamp")], |_| {})
            .unwrap();
    };
    build(dir.path());
    let version_file = dir.path().join("shopmesh-search.version");
    assert!(version_file.exists());

    // Written by another schema version.
    fs::write(&version_file, "0\n").unwrap();
    let (index, needs_rebuild) = open(dir.path());
    assert!(needs_rebuild);
    assert_eq!(index.len(), 0, "the old content is dropped");
    drop(index);

    // A rebuild that never finished.
    let (index, needs_rebuild) = open(dir.path());
    assert!(needs_rebuild);
    drop(index);

    // Damaged metadata.
    build(dir.path());
    fs::write(dir.path().join("meta.json"), b"{ not json").unwrap();
    let (index, needs_rebuild) = open(dir.path());
    assert!(needs_rebuild);
    index
        .rebuild([product("chair", "Oak Chair")], |_| {})
        .unwrap();
    drop(index);
    let (index, needs_rebuild) = open(dir.path());
    assert!(!needs_rebuild);
    assert_eq!(find(&index, "oak", "en"), ["chair"]);
    drop(index);

    // A damaged segment file.
    let segment = fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "idx"))
        .expect("a segment file");
    let mut bytes = fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&segment, bytes).unwrap();
    let (_index, needs_rebuild) = open(dir.path());
    assert!(needs_rebuild);
}

#[test]
fn rebuild_replaces_everything_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    index_all(&index, [product("old", "Forgotten Lamp")]);

    let catalog = Catalog::new(3);
    let mut reported = Vec::new();
    let indexed = index
        .rebuild(catalog.products(2_500), |done| reported.push(done))
        .unwrap();
    assert_eq!(indexed, 2_500);
    assert_eq!(reported, [1_000, 2_000, 2_500]);
    assert_eq!(index.len(), 2_500);
    assert!(find(&index, "forgotten", "en").is_empty());

    // Exactly one call per thousand, and the end is not reported twice.
    let mut reported = Vec::new();
    index
        .rebuild(catalog.products(2_000), |done| reported.push(done))
        .unwrap();
    assert_eq!(reported, [1_000, 2_000]);
    let mut reported = Vec::new();
    assert_eq!(index.rebuild([], |done| reported.push(done)).unwrap(), 0);
    assert_eq!(reported, [0]);
    assert!(index.is_empty());
    index.rebuild(catalog.products(2_500), |_| {}).unwrap();

    // The generated catalog is searchable like any other.
    let some = catalog.product(1_234);
    let results = search(&index, &query(&some.sku, "en"));
    assert_eq!(results.hits[0].id, some.id);
    assert_eq!(results.hits[0].title, some.titles["en"]);
}

#[test]
fn writers_and_searchers_share_the_index_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = open(dir.path());
    let index = std::sync::Arc::new(index);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let index = std::sync::Arc::clone(&index);
            std::thread::spawn(move || {
                for n in 0..50 {
                    index
                        .upsert(product(&format!("t{t}-{n}"), &format!("Lamp {t} {n}")))
                        .unwrap();
                    index.search(&query("lamp", "en")).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    index.flush().unwrap();
    assert_eq!(index.len(), 200);
    assert_eq!(search(&index, &query("lamp", "en")).total, 200);
}
