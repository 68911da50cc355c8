//! The binary's global allocator: the system allocator, plus a small per-thread cache of
//! freed blocks too large for glibc's own per-thread cache (above 1,024 bytes), handed out
//! again for the next allocation of exactly that size on the same thread.
//!
//! Two kinds of block churn like this:
//! - hyper's HTTP/1 header scratch arrays. With a header cap above hyper's default of 100
//!   (`outrigger::server::accept::header_cap`), hyper parses every HTTP/1 head into two
//!   heap arrays of `cap` entries (32 bytes each) and frees them at once. Handed back to
//!   glibc, each freed pair leaves a hole that the small, long-lived allocations of the next
//!   connection split up, so the next parse takes fresh memory: 10,000 idle keep-alive
//!   connections (as in `tests/memory.rs`, none timed out) took 298 MiB with a cap of 1,024
//!   against 191 MiB with 100, and a cap on the upstream client alone cost as much. Keeping
//!   the freed arrays for the next parse on the same thread brought it back to 191 MiB.
//! - blocks of a few KiB made and freed for every request (issue 17): the boxed request
//!   future (about 3.6 KiB) and hyper's 8 KiB read buffers, which it replaces while the
//!   request's headers still point into the old one. glibc serves each from its bins, not
//!   its per-thread cache: about 300 instructions for each `malloc` and each `free`
//!   (callgrind), three times per proxied request.
//!
//! At most [`SLOTS_PER_THREAD`] blocks stay cached per thread, none above
//! [`MAX_MID`] bytes except the header scratch size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The size of one header scratch array (`cap` × 32 bytes); 0 while nothing is cached.
static SCRATCH_SIZE: AtomicUsize = AtomicUsize::new(0);

/// Bytes per header in hyper's scratch arrays (`httparse::Header` and hyper's
/// `HeaderIndices` are both four words).
const BYTES_PER_HEADER: usize = 4 * std::mem::size_of::<usize>();

/// Allocations of this size or less are left to glibc's own per-thread cache.
const MIN_CACHED: usize = 1024;

/// The largest block cached whatever its size (hyper's 8 KiB buffers fit).
const MAX_MID: usize = 16 * 1024;

/// Blocks cached per thread: the two scratch arrays, two read buffers and a request
/// future in flight at once, and one more.
const SLOTS_PER_THREAD: usize = 6;

type Slots = [(*mut u8, usize); SLOTS_PER_THREAD];

/// One thread's cached blocks.
struct Cache {
    /// Freed blocks, each with its size, ready for the next allocation of that size here.
    slots: Cell<Slots>,
    /// The slot to empty next when all are full: in turn, so that a block of a size no
    /// longer asked for (start-up's, an old header cap's) leaves in time, whatever slot it
    /// sits in.
    next_out: Cell<usize>,
}

impl Drop for Cache {
    /// A thread that ends (a blocking-pool thread, say) gives its blocks back to `System`,
    /// so threads that come and go leak nothing.
    fn drop(&mut self) {
        for (block, size) in self.slots.get() {
            if !block.is_null() {
                // SAFETY: cached blocks came from `System` with this size and an
                // alignment `malloc` gives.
                unsafe { System.dealloc(block, Layout::from_size_align_unchecked(size, 16)) };
            }
        }
    }
}

thread_local! {
    static CACHE: Cache = const {
        Cache {
            slots: Cell::new([(ptr::null_mut(), 0); SLOTS_PER_THREAD]),
            next_out: Cell::new(0),
        }
    };
}

/// Tells the allocator the header cap hyper's parsers use, so their arrays are reused.
pub fn header_cap(cap: usize) {
    SCRATCH_SIZE.store(cap.saturating_mul(BYTES_PER_HEADER), Ordering::Relaxed);
}

/// `System`, reusing freed blocks of a few KiB (and header scratch arrays) on the same
/// thread.
pub struct ReuseBlocks;

fn cacheable(layout: Layout) -> bool {
    let size = layout.size();
    // `System` hands out `malloc` memory (16-byte aligned) for these, so any block of the
    // same size fits.
    size > MIN_CACHED
        && layout.align() <= 16
        && (size <= MAX_MID || size == SCRATCH_SIZE.load(Ordering::Relaxed))
}

// SAFETY: every block comes from `System` with a layout of the same size and an alignment
// `malloc` satisfies; a cached block is handed out once and only on the thread holding it.
unsafe impl GlobalAlloc for ReuseBlocks {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if cacheable(layout) {
            let reused = CACHE
                .try_with(|cache| {
                    let mut s = cache.slots.get();
                    let found = s
                        .iter_mut()
                        .find(|(p, n)| !p.is_null() && *n == layout.size());
                    let block = found.map_or(ptr::null_mut(), |slot| {
                        std::mem::replace(slot, (ptr::null_mut(), 0)).0
                    });
                    cache.slots.set(s);
                    block
                })
                .unwrap_or(ptr::null_mut());
            if !reused.is_null() {
                return reused;
            }
        }
        // SAFETY: the caller's layout is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if cacheable(layout) {
            let kept = CACHE
                .try_with(|cache| {
                    let mut s = cache.slots.get();
                    let size = layout.size();
                    // An empty slot (an allocation that took a cached block left one),
                    // else the next in turn: the newest block is the likelier to be asked
                    // for again.
                    let i = match s.iter().position(|(p, _)| p.is_null()) {
                        Some(i) => i,
                        None => {
                            let i = cache.next_out.get();
                            cache.next_out.set((i + 1) % SLOTS_PER_THREAD);
                            i
                        }
                    };
                    let (old, old_size) = std::mem::replace(&mut s[i], (block, size));
                    cache.slots.set(s);
                    if !old.is_null() {
                        // SAFETY: cached blocks came from `System` with this size and
                        // an alignment `malloc` gives.
                        unsafe {
                            System.dealloc(old, Layout::from_size_align_unchecked(old_size, 16))
                        };
                    }
                    true
                })
                .unwrap_or(false);
            if kept {
                return;
            }
        }
        // SAFETY: the block was allocated by `System` with this layout (or one `malloc`
        // treats the same).
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout is passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: every block is `malloc` memory, whether it was cached or not.
        unsafe { System.realloc(block, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_block_of_a_few_kib_is_handed_out_again_for_its_size_only() {
        std::thread::spawn(|| {
            let a = Layout::from_size_align(4000, 8).unwrap();
            let b = Layout::from_size_align(5000, 8).unwrap();
            // SAFETY: each block is freed once, with the layout it was allocated with.
            unsafe {
                let first = ReuseBlocks.alloc(a);
                ReuseBlocks.dealloc(first, a);
                let other = ReuseBlocks.alloc(b);
                assert_ne!(other, first, "a cached block went to another size");
                let again = ReuseBlocks.alloc(a);
                assert_eq!(again, first, "the cached block was not reused");
                ReuseBlocks.dealloc(again, a);
                ReuseBlocks.dealloc(other, b);
                // Small blocks are glibc's own business.
                let small = Layout::from_size_align(512, 8).unwrap();
                let s = ReuseBlocks.alloc(small);
                ReuseBlocks.dealloc(s, small);
                assert!(CACHE.with(|c| c.slots.get().iter().all(|&(_, n)| n != 512)));
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_full_cache_lets_every_slot_go_in_turn() {
        std::thread::spawn(|| {
            let layouts: Vec<Layout> = (0..2 * SLOTS_PER_THREAD)
                .map(|i| Layout::from_size_align(2048 + 64 * i, 8).unwrap())
                .collect();
            // SAFETY: each block is freed once, with the layout it was allocated with.
            unsafe {
                let blocks: Vec<*mut u8> = layouts.iter().map(|&l| ReuseBlocks.alloc(l)).collect();
                for (&b, &l) in blocks.iter().zip(&layouts) {
                    ReuseBlocks.dealloc(b, l);
                }
            }
            // The last SLOTS_PER_THREAD sizes freed are the ones kept.
            let kept: Vec<usize> = CACHE.with(|c| c.slots.get().iter().map(|&(_, n)| n).collect());
            for l in &layouts[SLOTS_PER_THREAD..] {
                assert!(kept.contains(&l.size()), "{} not kept: {kept:?}", l.size());
            }
        })
        .join()
        .unwrap();
    }
}
