//! Spreading pure, independent work (signature checks, decoding) over the
//! machine's cores. Results come back in input order, so what runs in
//! parallel never changes what is decided.

use std::num::NonZeroUsize;

/// Below this many items the work runs on the calling thread.
const MIN_PARALLEL: usize = 64;

/// Most threads one call uses.
const MAX_THREADS: usize = 8;

/// `f` over every item, in order, on up to as many scoped threads as the
/// machine has cores (the calling thread takes the first share).
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(MAX_THREADS)
        .min(items.len().div_ceil(MIN_PARALLEL / 2).max(1));
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
}
