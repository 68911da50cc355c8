//! The binary's global allocator: the system allocator, plus a two-slot per-thread cache
//! for hyper's HTTP/1 header scratch arrays.
//!
//! With a header cap above hyper's default of 100 (`outrigger::server::accept::header_cap`),
//! hyper parses every HTTP/1 head into two heap arrays of `cap` entries (32 bytes each) and
//! frees them at once. Handed back to glibc, each freed pair leaves a hole that the small,
//! long-lived allocations of the next connection split up, so the next parse takes fresh
//! memory: 10,000 idle keep-alive connections (as in `tests/memory.rs`, none timed out)
//! took 298 MiB with a cap of 1,024 against 191 MiB with 100, and a cap on the upstream
//! client alone cost as much. Keeping the freed arrays for the next parse on the same
//! thread brings it back to 191 MiB; what stays cached is at most two arrays per thread.

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

thread_local! {
    /// Freed scratch arrays, each with its size, ready for the next parse on this thread.
    static SLOTS: Cell<[(*mut u8, usize); 2]> = const { Cell::new([(ptr::null_mut(), 0); 2]) };
}

/// Tells the allocator the header cap hyper's parsers use, so their arrays are reused.
pub fn header_cap(cap: usize) {
    SCRATCH_SIZE.store(cap.saturating_mul(BYTES_PER_HEADER), Ordering::Relaxed);
}

/// `System`, reusing freed header scratch arrays on the same thread.
pub struct ReuseHeaderScratch;

fn cacheable(layout: Layout) -> bool {
    let size = layout.size();
    // `System` hands out `malloc` memory (16-byte aligned) for these, so any block of the
    // same size fits.
    size > MIN_CACHED && layout.align() <= 16 && size == SCRATCH_SIZE.load(Ordering::Relaxed)
}

// SAFETY: every block comes from `System` with a layout of the same size and an alignment
// `malloc` satisfies; a cached block is handed out once and only on the thread holding it.
unsafe impl GlobalAlloc for ReuseHeaderScratch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if cacheable(layout) {
            let reused = SLOTS
                .try_with(|slots| {
                    let mut s = slots.get();
                    let found = s
                        .iter_mut()
                        .find(|(p, n)| !p.is_null() && *n == layout.size());
                    let block = found.map_or(ptr::null_mut(), |slot| {
                        std::mem::replace(slot, (ptr::null_mut(), 0)).0
                    });
                    slots.set(s);
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
            let kept = SLOTS
                .try_with(|slots| {
                    let mut s = slots.get();
                    let size = layout.size();
                    // An empty slot, or one holding a size no longer in use.
                    let Some(slot) = s.iter_mut().find(|(p, n)| p.is_null() || *n != size) else {
                        return false;
                    };
                    let (old, old_size) = std::mem::replace(slot, (block, size));
                    slots.set(s);
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
