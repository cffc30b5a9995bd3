//! The cost of a login is a bcrypt verification at the configured cost. Measured through the
//! service's bounded hasher and, side by side as the baseline, the `bcrypt` crate called
//! directly on the same thread, so the ratio shows what the hashing pool adds.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use shopmesh_users::password::Hasher;

const PASSWORD: &str = "correct horse battery";

fn login(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("login");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for cost in [10, bcrypt::DEFAULT_COST] {
        let hasher = runtime.block_on(Hasher::new(cost, 1)).expect("a hasher");
        let hash = bcrypt::hash(PASSWORD, cost).expect("a hash");
        group.bench_function(format!("bcrypt crate, cost {cost} (baseline)"), |b| {
            b.iter(|| bcrypt::verify(black_box(PASSWORD), black_box(&hash)).expect("verifies"))
        });
        group.bench_function(format!("hasher, cost {cost}"), |b| {
            b.iter(|| {
                runtime
                    .block_on(hasher.verify(black_box(PASSWORD), Some(black_box(&hash))))
                    .expect("verifies")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, login);
criterion_main!(benches);
