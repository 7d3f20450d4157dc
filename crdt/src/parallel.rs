//! Spreading pure, independent work (signature checks, decoding) over the
//! machine's cores. Results come back in input order, so what runs in
//! parallel never changes what is decided.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Below this many items the work runs on the calling thread.
const MIN_PARALLEL: usize = 64;

/// Most threads one call uses.
const MAX_THREADS: usize = 8;

/// Items a [`stream`] worker takes at a time.
const STREAM_CHUNK: usize = 64;

fn cores() -> usize {
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(MAX_THREADS)
}

/// `f` over every item, in order, on up to as many scoped threads as the
/// machine has cores (the calling thread takes the first share).
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = cores().min(items.len().div_ceil(MIN_PARALLEL / 2).max(1));
    if threads <= 1 || items.len() < MIN_PARALLEL {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let mut chunks = items.chunks(chunk);
        let first = chunks.next().unwrap_or_default();
        let handles: Vec<_> = chunks
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out: Vec<R> = first.iter().map(f).collect();
        for handle in handles {
            match handle.join() {
                Ok(part) => out.extend(part),
                // A panic in `f` is a bug; surface it where it happened.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// Sets the flag when the thread holding it unwinds.
struct PanicFlag<'a>(&'a AtomicBool);

impl Drop for PanicFlag<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// `f` over every item, handing each result to `consume` in input order as
/// soon as it and all before it are ready: the calling thread consumes
/// (judges, say) while the other cores run `f` ahead of it, in chunks.
/// When the consumer catches up with an unclaimed chunk it runs `f` on it
/// itself, so no core waits while work is left.
pub fn stream<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> R + Sync,
    mut consume: impl FnMut(usize, R),
) {
    let workers = (cores() - 1).min(items.len() / STREAM_CHUNK);
    if workers == 0 || items.len() < MIN_PARALLEL {
        for (i, item) in items.iter().enumerate() {
            consume(i, f(item));
        }
        return;
    }
    let chunks: Vec<&[T]> = items.chunks(STREAM_CHUNK).collect();
    let (senders, receivers): (Vec<_>, Vec<_>) = chunks.iter().map(|_| mpsc::sync_channel::<Vec<R>>(1)).unzip();
    // The next chunk nobody has claimed.
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let (f, chunks, senders, next, failed) = (&f, &chunks, &senders, &next, &failed);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(move || {
                let _flag = PanicFlag(failed);
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let (Some(chunk), Some(sender)) = (chunks.get(k), senders.get(k)) else {
                        return;
                    };
                    // The receiver outlives the scope; a send cannot fail
                    // unless the consumer stopped, when nothing is wanted.
                    let _ = sender.send(chunk.iter().map(f).collect());
                }
            });
        }
        let mut at = 0;
        for (k, receiver) in receivers.into_iter().enumerate() {
            let part: Vec<R> = if next.compare_exchange(k, k + 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                chunks[k].iter().map(f).collect()
            } else {
                loop {
                    match receiver.recv_timeout(Duration::from_millis(20)) {
                        Ok(part) => break part,
                        // A worker panicked: stop here, and the scope
                        // re-raises its panic.
                        Err(_) if failed.load(Ordering::SeqCst) => return,
                        Err(_) => {}
                    }
                }
            };
            for r in part {
                consume(at, r);
                at += 1;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_keep_the_input_order() {
        for n in [0, 1, 63, 64, 65, 1000, 4097] {
            let items: Vec<u64> = (0..n).collect();
            let out = super::map(&items, |x| x * 3);
            assert_eq!(out, items.iter().map(|x| x * 3).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_stream_hands_every_result_over_once_in_order() {
        for n in [0, 1, 63, 64, 65, 1000, 4097] {
            let items: Vec<u64> = (0..n).collect();
            let mut seen = Vec::new();
            super::stream(
                &items,
                |x| x * 3,
                |i, r| {
                    // A slow consumer lets the workers run ahead.
                    if i % 512 == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    seen.push((i, r));
                },
            );
            let expected: Vec<(usize, u64)> = items.iter().map(|x| (*x as usize, x * 3)).collect();
            assert_eq!(seen, expected);
        }
    }
}
