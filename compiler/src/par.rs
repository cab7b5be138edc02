//! Support for every stage: an order-preserving parallel map over independent items.
//! Invariant: the result is exactly `items.iter().map(f).collect()` — same order, same values —
//! so running on more threads never changes a plan, a bundle byte or an error message.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The most worker threads [`map`] starts; past this the inputs are too small to gain.
const MAX_WORKERS: usize = 8;

/// `items.iter().map(f).collect()`, with the items shared out to one thread per core (at most
/// [`MAX_WORKERS`]). Used for the per-layer work of a whole-project compile (parsing layer files,
/// rendering layers), where each item is independent and the project has ~100+ of them.
///
/// A panic in `f` is re-raised on the calling thread.
pub fn map<T, R, F>(items: &[T], f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_WORKERS)
        .min(items.len());
    if workers <= 1 {
        return items.iter().map(f).collect();
    }
    // Work-stealing by index: items differ a lot in size (a layer with 50 tasks beside one with
    // a single package), so fixed chunks would leave a thread idle.
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<R>> = Vec::new();
    slots.resize_with(items.len(), || None);
    std::thread::scope(|scope| {
        let worker = || {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                done.push((i, f(item)));
            }
            done
        };
        let handles: Vec<_> = (0..workers).map(|_| scope.spawn(worker)).collect();
        for handle in handles {
            let done = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (i, r) in done {
                slots[i] = Some(r);
            }
        }
    });
    // Each index below `items.len()` was taken by exactly one worker, so no slot is empty.
    slots.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::map;

    #[test]
    fn keeps_order_and_values() {
        let items: Vec<u64> = (0..1000).collect();
        let out = map(&items, |&n| {
            // Uneven work so threads finish out of order.
            (0..(n % 7) * 1000).fold(n, |a, b| a.wrapping_add(b) % 1_000_003)
        });
        let expected: Vec<u64> = items
            .iter()
            .map(|&n| (0..(n % 7) * 1000).fold(n, |a, b| a.wrapping_add(b) % 1_000_003))
            .collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(map(&[] as &[u8], |&b| b), Vec::<u8>::new());
        assert_eq!(map(&[7u8], |&b| b * 2), vec![14]);
    }

    #[test]
    #[should_panic(expected = "boom")]
    fn a_panic_reaches_the_caller() {
        let items: Vec<u32> = (0..64).collect();
        map(&items, |&n| {
            if n == 40 {
                panic!("boom");
            }
            n
        });
    }
}
