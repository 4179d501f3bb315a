//! Diode: push/pop of envelope handles (`Bytes`) through the many-writer / one-reader ring buffer,
//! single-threaded and with 1 and 2 writer threads racing one reader (Doppler subscription size, 1000).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use plumbing::Diode;

const CAPACITY: usize = 1000;

fn diode() -> Diode<Bytes> {
    Diode::new(NonZeroUsize::new(CAPACITY).expect("non-zero"))
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("diode/push_pop");
    group.throughput(Throughput::Elements(100));
    let envelope = Bytes::from(vec![0u8; 300]);
    group.bench_function("single_thread_batch_100", |b| {
        let d = diode();
        let mut out = Vec::with_capacity(100);
        b.iter(|| {
            for _ in 0..100 {
                d.push(envelope.clone());
            }
            out.clear();
            black_box(d.pop_batch(&mut out, 100))
        })
    });
    group.finish();
}

/// `writers` threads push `iters` envelopes in total while this thread pops batches of 100; the time
/// is until the reader has accounted for every envelope (read or dropped).
fn contended(writers: u64, iters: u64) -> Duration {
    let d = Arc::new(diode());
    let envelope = Bytes::from(vec![0u8; 300]);
    let per_writer = iters / writers + 1;
    let total = per_writer * writers;
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let d = Arc::clone(&d);
            let envelope = envelope.clone();
            std::thread::spawn(move || {
                for _ in 0..per_writer {
                    d.push(envelope.clone());
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(100);
    loop {
        out.clear();
        if d.pop_batch(&mut out, 100) == 0 {
            if d.read() + d.dropped() >= total {
                break;
            }
            std::hint::spin_loop();
        }
    }
    let elapsed = start.elapsed();
    for h in handles {
        h.join().expect("writer thread");
    }
    elapsed
}

fn threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("diode/push_pop_threads");
    group.throughput(Throughput::Elements(1));
    for writers in [1u64, 2] {
        group.bench_function(format!("{writers}_writers_1_reader"), |b| {
            b.iter_custom(|iters| contended(writers, iters))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(30)
}

criterion_group! {
    name = diode_benches;
    config = config();
    targets = single_thread, threads
}
criterion_main!(diode_benches);
