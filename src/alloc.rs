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
//!   future (about 2.6 KiB) and hyper's 8 KiB read buffers, which it replaces while the
//!   request's headers still point into the old one. glibc serves each from its bins, not
//!   its per-thread cache: about 300 instructions for each `malloc` and each `free`
//!   (callgrind), three times per proxied request.
//!
//! Per thread: two slots for scratch arrays, which nothing else may take (losing them to
//! a burst of other frees, parked connections' buffers say, would bring the holes back),
//! and four for other blocks of at most [`MAX_MID`] bytes; so at most two scratch arrays
//! and 64 KiB (128 KiB in all with the default 64 KiB header limit, whose cap of 1,024
//! makes 32 KiB arrays). When the four are full, a freed block takes the place of one in
//! turn. A block freed twice aborts the process, as glibc's own check would, instead of
//! being handed out twice. A thread that ends gives its blocks back.

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

/// The largest block cached that is not a scratch array (hyper's 8 KiB buffers fit).
const MAX_MID: usize = 16 * 1024;

/// The alignment glibc's `malloc` gives every block (two words), so any cached block
/// fits any layout of its size with at most this alignment.
const MALLOC_ALIGN: usize = 2 * std::mem::size_of::<usize>();

/// Slots for scratch arrays (hyper frees two per parse), then for other blocks.
const SCRATCH_SLOTS: usize = 2;
const OTHER_SLOTS: usize = 4;
const SLOTS_PER_THREAD: usize = SCRATCH_SLOTS + OTHER_SLOTS;

type Slots = [(*mut u8, usize); SLOTS_PER_THREAD];

/// One thread's cached blocks.
struct Cache {
    /// Freed blocks, each with its size: `..SCRATCH_SLOTS` scratch arrays only, the rest
    /// other sizes.
    slots: Cell<Slots>,
    /// Which slot of its kind a freed block takes next when all of them are full.
    next_out: Cell<[usize; 2]>,
}

impl Drop for Cache {
    /// A thread that ends (a blocking-pool thread, say) gives its blocks back to `System`,
    /// so threads that come and go leak nothing.
    fn drop(&mut self) {
        for (block, size) in self.slots.get() {
            if !block.is_null() {
                // SAFETY: cached blocks came from `System` with this size and an
                // alignment `malloc` gives.
                unsafe { System.dealloc(block, malloc_layout(size)) };
            }
        }
    }
}

thread_local! {
    static CACHE: Cache = const {
        Cache {
            slots: Cell::new([(ptr::null_mut(), 0); SLOTS_PER_THREAD]),
            next_out: Cell::new([0; 2]),
        }
    };
}

/// Tells the allocator the header cap hyper's parsers use, so their arrays are reused.
pub fn header_cap(cap: usize) {
    SCRATCH_SIZE.store(cap.saturating_mul(BYTES_PER_HEADER), Ordering::Relaxed);
}

/// A layout `System` frees any cached block of `size` with.
fn malloc_layout(size: usize) -> Layout {
    // SAFETY: `MALLOC_ALIGN` is a power of two, and a size `malloc` gave a block for
    // cannot overflow when rounded up to it.
    unsafe { Layout::from_size_align_unchecked(size, MALLOC_ALIGN) }
}

/// `System`, reusing freed blocks of a few KiB (and header scratch arrays) on the same
/// thread.
pub struct ReuseBlocks;

/// Which slots a block of this layout may use: `None` for one left to `System`.
fn slots_for(layout: Layout) -> Option<std::ops::Range<usize>> {
    let size = layout.size();
    if size <= MIN_CACHED || layout.align() > MALLOC_ALIGN {
        return None;
    }
    if size == SCRATCH_SIZE.load(Ordering::Relaxed) {
        Some(0..SCRATCH_SLOTS)
    } else if size <= MAX_MID {
        Some(SCRATCH_SLOTS..SLOTS_PER_THREAD)
    } else {
        None
    }
}

// SAFETY: every block comes from `System` with a layout of the same size and an alignment
// `malloc` satisfies; a cached block is handed out once and only on the thread holding it.
unsafe impl GlobalAlloc for ReuseBlocks {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(range) = slots_for(layout) {
            let reused = CACHE
                .try_with(|cache| {
                    let mut s = cache.slots.get();
                    let found = s[range]
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
        if let Some(range) = slots_for(layout) {
            let kept = CACHE
                .try_with(|cache| {
                    let mut s = cache.slots.get();
                    if s.iter().any(|&(p, _)| p == block) {
                        // Freed twice: handing it out twice would let two owners write
                        // the same memory.
                        std::process::abort();
                    }
                    let kind = usize::from(range.start == SCRATCH_SLOTS);
                    // An empty slot (an allocation that took a cached block left one),
                    // else the next of its kind in turn.
                    let i = match s[range.clone()].iter().position(|(p, _)| p.is_null()) {
                        Some(i) => range.start + i,
                        None => {
                            let mut next = cache.next_out.get();
                            let i = range.start + next[kind] % range.len();
                            next[kind] = (next[kind] + 1) % range.len();
                            cache.next_out.set(next);
                            i
                        }
                    };
                    let (old, old_size) = std::mem::replace(&mut s[i], (block, layout.size()));
                    cache.slots.set(s);
                    if !old.is_null() {
                        // SAFETY: cached blocks came from `System` with this size and
                        // an alignment `malloc` gives.
                        unsafe { System.dealloc(old, malloc_layout(old_size)) };
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
    fn a_full_cache_lets_every_other_slot_go_in_turn() {
        std::thread::spawn(|| {
            let layouts: Vec<Layout> = (0..3 * OTHER_SLOTS)
                .map(|i| Layout::from_size_align(2048 + 64 * i, 8).unwrap())
                .collect();
            // SAFETY: each block is freed once, with the layout it was allocated with.
            unsafe {
                let blocks: Vec<*mut u8> = layouts.iter().map(|&l| ReuseBlocks.alloc(l)).collect();
                for (&b, &l) in blocks.iter().zip(&layouts) {
                    ReuseBlocks.dealloc(b, l);
                }
            }
            // The last OTHER_SLOTS sizes freed are the ones kept.
            let kept: Vec<usize> = CACHE.with(|c| c.slots.get().iter().map(|&(_, n)| n).collect());
            for l in &layouts[layouts.len() - OTHER_SLOTS..] {
                assert!(kept.contains(&l.size()), "{} not kept: {kept:?}", l.size());
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn scratch_arrays_keep_their_slots_whatever_else_is_freed() {
        header_cap(1024);
        let scratch = Layout::from_size_align(1024 * BYTES_PER_HEADER, 8).unwrap();
        std::thread::spawn(move || {
            // SAFETY: each block is freed once, with the layout it was allocated with.
            unsafe {
                let pair = [ReuseBlocks.alloc(scratch), ReuseBlocks.alloc(scratch)];
                pair.iter().for_each(|&b| ReuseBlocks.dealloc(b, scratch));
                for i in 0..3 * OTHER_SLOTS {
                    let l = Layout::from_size_align(4096 + 64 * i, 8).unwrap();
                    let b = ReuseBlocks.alloc(l);
                    ReuseBlocks.dealloc(b, l);
                }
                let again = [ReuseBlocks.alloc(scratch), ReuseBlocks.alloc(scratch)];
                assert!(
                    again.iter().all(|b| pair.contains(b)),
                    "a scratch array was lost"
                );
                again.iter().for_each(|&b| ReuseBlocks.dealloc(b, scratch));
                // Larger blocks that are not scratch arrays go back to `System`.
                let large = Layout::from_size_align(MAX_MID + 4096, 8).unwrap();
                let b = ReuseBlocks.alloc(large);
                ReuseBlocks.dealloc(b, large);
                assert!(CACHE.with(|c| c.slots.get().iter().all(|&(_, n)| n != large.size())));
            }
        })
        .join()
        .unwrap();
    }
}
