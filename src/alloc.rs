//! The binary's global allocator: glibc's `malloc`, behind a per-thread cache of freed
//! blocks sorted by size class, each class a stack of blocks linked through their own
//! first word. An allocation takes the top block of its class if there is one (about 25
//! instructions), and a freed block goes on top of its class unless the class or the
//! thread's cache is full.
//!
//! Why not glibc's own per-thread cache (tcache): it keeps at most 7 blocks of each size,
//! and none above 1,032 bytes. A proxy with many requests in flight makes and frees dozens
//! of blocks of one size at a time (64 connections: a request future of about 2.6 KiB, an
//! 8 KiB read buffer, a header map's arrays and a few small ones for each), so most of them
//! missed it and went to glibc's bins: under `wrk -c 64`, 2,300 instructions per request
//! more in `malloc` and `free` than one request at a time, which is where a timed run's
//! gap to the minimal hyper proxy came from (`docs/benchmarks.md`, issue 17). Blocks above
//! 1 KiB also have the other churn this cache began for: hyper's HTTP/1 header scratch
//! arrays. With a header cap above hyper's default of 100
//! (`outrigger::server::accept::header_cap`), hyper parses every head into two arrays of
//! `cap` entries (32 bytes each) and frees them at once; handed back to glibc, each pair
//! left a hole that the next connection's small, long-lived allocations split up, so 10,000
//! idle connections took 298 MiB with a cap of 1,024 against 191 MiB with 100. Their own
//! class keeps them for the next parse on the thread.
//!
//! Size classes: 16-byte steps up to 1,032 bytes (64 classes, 24, 40, 56, ...: what a glibc
//! chunk holds), four per doubling up to 16 KiB
//! (16 classes: 1,280, 1,536, 1,792, 2,048, 2,560, ...), and the header scratch array's
//! exact size when it is larger. A block of a class is always allocated with the class's
//! full size, so any block of the class serves any request of it; `realloc` keeps that
//! true. Larger blocks, and blocks aligned to more than `malloc`'s 16 bytes, go straight to
//! `System` (`malloc`, or `posix_memalign` for the larger alignments) and `free`. Zeroed
//! allocations are not taken from the cache (`calloc` of the class size). The sizes are
//! those of a 64-bit target, where `malloc` aligns to 16 bytes.
//!
//! Bounds, per thread: at most [`PER_CLASS`] blocks in a class and [`CACHE_BYTES`] (1 MiB)
//! in all; a freed block beyond either goes back to glibc. glibc would keep most of these
//! blocks in its bins anyway (it returns memory to the system only from the top of its
//! heap), so the cache adds little to the process's memory. A thread that ends gives its
//! blocks back.
//!
//! Double frees: glibc's own check does not see blocks this cache holds. A block freed
//! twice in a row on one thread (the top of its class's stack freed again) aborts the
//! process, as glibc's fast-bin check would, instead of being handed out twice; debug
//! builds look through the whole class. A second free on another thread, or after the
//! block went back to glibc, is not caught. Nothing in the cache reads a freed block's
//! contents other than the link it wrote there itself.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The size of one header scratch array (`cap` × 32 bytes); 0 until the cap is known.
static SCRATCH_SIZE: AtomicUsize = AtomicUsize::new(0);

/// Bytes per header in hyper's scratch arrays (`httparse::Header` and hyper's
/// `HeaderIndices` are both four words).
const BYTES_PER_HEADER: usize = 4 * std::mem::size_of::<usize>();

/// The alignment glibc's `malloc` gives every block (two words): blocks aligned to more
/// are not cached. Also the step between the small classes.
const MALLOC_ALIGN: usize = 2 * std::mem::size_of::<usize>();

/// The 16-byte classes: 24, 40, 56, ... 1,032 bytes, the sizes glibc's chunks hold (a
/// chunk is a multiple of 16 bytes, less its 8-byte header), so that a class's block
/// fills its chunk. A class of 32 bytes would take a 48-byte chunk.
const SMALL_CLASSES: usize = 64;
const SMALL_MAX: usize = SMALL_CLASSES * MALLOC_ALIGN + 8;

/// The largest block of the four-per-doubling classes (hyper's 8 KiB buffers fit).
const MID_MAX: usize = 16 * 1024;
const MID_CLASSES: usize = 16;

/// The header scratch array's class, when the array is larger than [`MID_MAX`].
const SCRATCH_CLASS: usize = SMALL_CLASSES + MID_CLASSES;
const CLASSES: usize = SCRATCH_CLASS + 1;

/// Blocks kept per class and thread: a burst of this many requests in flight finds them.
const PER_CLASS: usize = 128;

/// Bytes kept per thread, all classes together.
const CACHE_BYTES: usize = 1024 * 1024;

/// The class of an allocation, if it is one the cache keeps.
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if layout.align() > MALLOC_ALIGN {
        return None;
    }
    if size <= SMALL_MAX {
        // Sizes 1..=24 are class 0, 25..=40 class 1, ...
        return Some(size.saturating_sub(9) / MALLOC_ALIGN);
    }
    if size <= MID_MAX {
        // In the doubling [2^k, 2^(k+1)) that holds size - 1, the quarter it falls in.
        let k = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
        let quarter = ((size - 1) >> (k - 2)) & 3;
        return Some(SMALL_CLASSES + (k - 10) * 4 + quarter);
    }
    (size == SCRATCH_SIZE.load(Ordering::Relaxed)).then_some(SCRATCH_CLASS)
}

/// The size of each class below [`SCRATCH_CLASS`], worked out once.
const CLASS_SIZES: [usize; SCRATCH_CLASS] = {
    let mut sizes = [0; SCRATCH_CLASS];
    let mut class = 0;
    while class < SCRATCH_CLASS {
        sizes[class] = if class < SMALL_CLASSES {
            (class + 1) * MALLOC_ALIGN + 8
        } else {
            let k = 10 + (class - SMALL_CLASSES) / 4;
            let quarter = (class - SMALL_CLASSES) % 4;
            (1 << k) + ((quarter + 1) << (k - 2))
        };
        class += 1;
    }
    sizes
};

/// The size every block of a class is allocated with.
#[inline]
fn class_size(class: usize) -> usize {
    match CLASS_SIZES.get(class) {
        Some(&size) => size,
        None => SCRATCH_SIZE.load(Ordering::Relaxed),
    }
}

/// The layout `System` allocates and frees every block of a class with.
#[inline]
fn class_layout(class: usize) -> Layout {
    // SAFETY: `MALLOC_ALIGN` is a power of two. The fixed classes are at most 16 KiB; the
    // scratch class's size is that of a layout a caller asked for (a multiple of 16), and
    // saturates to `usize::MAX` (which no layout matches, so the class is never used) if
    // the cap was absurd.
    unsafe { Layout::from_size_align_unchecked(class_size(class), MALLOC_ALIGN) }
}

/// A cached block's first word: the block under it in its class's stack.
#[repr(C)]
struct Free {
    next: *mut Free,
}

/// One thread's cached blocks.
struct Cache {
    /// The top block of each class's stack.
    top: [Cell<*mut Free>; CLASSES],
    /// How many blocks each class holds.
    count: [Cell<u16>; CLASSES],
    /// Bytes held, all classes together.
    bytes: Cell<usize>,
}

impl Cache {
    /// The top block of a class, taken off its stack.
    #[inline]
    fn pop(&self, class: usize) -> *mut u8 {
        let block = self.top[class].get();
        if !block.is_null() {
            // SAFETY: every block on a stack is a cached block of at least two words,
            // owned by this cache alone.
            unsafe {
                self.top[class].set((*block).next);
            }
            self.count[class].set(self.count[class].get() - 1);
            self.bytes.set(self.bytes.get() - class_size(class));
        }
        block.cast()
    }

    /// Keeps a freed block of a class: `false` when the class or the cache is full.
    #[inline]
    fn push(&self, class: usize, block: *mut u8) -> bool {
        let size = class_size(class);
        let count = self.count[class].get();
        if usize::from(count) >= PER_CLASS || self.bytes.get() + size > CACHE_BYTES {
            return false;
        }
        let block = block.cast::<Free>();
        let top = self.top[class].get();
        if block == top || (cfg!(debug_assertions) && self.holds(class, block)) {
            // Freed twice: handing it out twice would let two owners write the same memory.
            std::process::abort();
        }
        // SAFETY: the block is the caller's to give up, and at least 16 bytes long (the
        // smallest class).
        unsafe { block.write(Free { next: top }) };
        self.top[class].set(block);
        self.count[class].set(count + 1);
        self.bytes.set(self.bytes.get() + size);
        true
    }

    /// Whether a class's stack holds this block.
    fn holds(&self, class: usize, block: *mut Free) -> bool {
        let mut at = self.top[class].get();
        while !at.is_null() {
            if at == block {
                return true;
            }
            // SAFETY: as in `pop`.
            at = unsafe { (*at).next };
        }
        false
    }
}

impl Drop for Cache {
    /// A thread that ends (a blocking-pool thread, say) gives its blocks back to `System`,
    /// so threads that come and go leak nothing.
    fn drop(&mut self) {
        for class in 0..CLASSES {
            loop {
                let block = self.pop(class);
                if block.is_null() {
                    break;
                }
                // SAFETY: cached blocks came from `System` with their class's layout.
                unsafe { System.dealloc(block, class_layout(class)) };
            }
        }
    }
}

thread_local! {
    static CACHE: Cache = const {
        Cache {
            top: [const { Cell::new(ptr::null_mut()) }; CLASSES],
            count: [const { Cell::new(0) }; CLASSES],
            bytes: Cell::new(0),
        }
    };
}

/// Tells the allocator the header cap hyper's parsers use, so their arrays are reused.
/// Only the first call counts: blocks held under the scratch class have its size, so the
/// size may not change once set.
pub fn header_cap(cap: usize) {
    let size = cap.saturating_mul(BYTES_PER_HEADER);
    let _ = SCRATCH_SIZE.compare_exchange(0, size, Ordering::Relaxed, Ordering::Relaxed);
}

/// `System` behind the per-thread cache of freed blocks by size class.
pub struct ReuseBlocks;

// SAFETY: every block of a cached class comes from `System` with its class's layout, whose
// size is at least the caller's and whose alignment `malloc` gives, and goes back to
// `System` with that layout; a cached block is handed out once and only by the thread
// whose cache holds it.
unsafe impl GlobalAlloc for ReuseBlocks {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: the caller's layout is passed on unchanged.
            return unsafe { System.alloc(layout) };
        };
        let reused = CACHE
            .try_with(|cache| cache.pop(class))
            .unwrap_or(ptr::null_mut());
        if !reused.is_null() {
            return reused;
        }
        // SAFETY: a class layout is valid and at least as large as the caller's.
        unsafe { System.alloc(class_layout(class)) }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            // SAFETY: the block came from `System` with this layout.
            return unsafe { System.dealloc(block, layout) };
        };
        if !CACHE
            .try_with(|cache| cache.push(class, block))
            .unwrap_or(false)
        {
            // SAFETY: a block of a cached class came from `System` with its class's layout.
            unsafe { System.dealloc(block, class_layout(class)) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let layout = class_of(layout).map_or(layout, class_layout);
        // SAFETY: the caller's layout or its class's, which is valid and no smaller.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller promises a valid layout for the new size.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old_class, new_class) = (class_of(layout), class_of(new));
        if old_class.is_some() && old_class == new_class {
            // The block is its class's size already.
            return block;
        }
        let size = new_class.map_or(new_size, class_size);
        let old = old_class.map_or(layout, class_layout);
        // SAFETY: the block came from `System` with `old` (its class's layout, or the
        // caller's), and `size` is the new block's class size or the caller's.
        unsafe { System.realloc(block, old, size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own, so that its cache starts empty.
    fn on_fresh_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().unwrap();
    }

    fn held(class: usize) -> usize {
        CACHE.with(|c| usize::from(c.count[class].get()))
    }

    #[test]
    fn classes_cover_every_size_with_a_block_no_smaller() {
        let mut last = 0;
        for size in 1..=MID_MAX {
            let layout = Layout::from_size_align(size, 8).unwrap();
            let class = class_of(layout).unwrap();
            assert!(class >= last, "{size}: classes go down");
            last = class;
            let block = class_size(class);
            assert!(block >= size, "{size}: class {class} has {block} bytes");
            // The class is the smallest that fits: the one below is too small.
            if class > 0 {
                assert!(class_size(class - 1) < size, "{size}: a smaller class fits");
            }
        }
        assert_eq!(last, SCRATCH_CLASS - 1);
        assert_eq!((class_size(0), class_size(SMALL_CLASSES - 1)), (24, 1032));
        assert_eq!(class_size(SMALL_CLASSES), 1280);
        assert_eq!(class_size(SCRATCH_CLASS - 1), MID_MAX);
        let aligned = Layout::from_size_align(64, 64).unwrap();
        assert_eq!(class_of(aligned), None);
        assert_eq!(
            class_of(Layout::from_size_align(MID_MAX + 1, 8).unwrap()),
            None
        );
    }

    #[test]
    fn a_freed_block_is_handed_out_again_for_its_class_only() {
        on_fresh_thread(|| {
            let a = Layout::from_size_align(4000, 8).unwrap();
            let b = Layout::from_size_align(5000, 8).unwrap();
            let a2 = Layout::from_size_align(3900, 8).unwrap();
            // SAFETY: each block is freed once, with the layout it was allocated with.
            unsafe {
                let first = ReuseBlocks.alloc(a);
                ReuseBlocks.dealloc(first, a);
                let other = ReuseBlocks.alloc(b);
                assert_ne!(other, first, "a cached block went to another class");
                // 3,900 and 4,000 bytes are both of the 4,096-byte class.
                let again = ReuseBlocks.alloc(a2);
                assert_eq!(again, first, "the cached block was not reused");
                // The whole class size is there to write.
                again.write_bytes(0xAB, class_size(class_of(a2).unwrap()));
                ReuseBlocks.dealloc(again, a2);
                ReuseBlocks.dealloc(other, b);
                let small = Layout::from_size_align(24, 8).unwrap();
                let s = ReuseBlocks.alloc(small);
                ReuseBlocks.dealloc(s, small);
                assert_eq!(ReuseBlocks.alloc(small), s);
                ReuseBlocks.dealloc(s, small);
            }
        });
    }

    #[test]
    fn many_blocks_freed_together_are_all_kept_up_to_the_class_bound() {
        on_fresh_thread(|| {
            let layout = Layout::from_size_align(2600, 8).unwrap();
            let class = class_of(layout).unwrap();
            // SAFETY: each block is freed once, with the layout it was allocated with.
            unsafe {
                let blocks: Vec<*mut u8> = (0..PER_CLASS + 10)
                    .map(|_| ReuseBlocks.alloc(layout))
                    .collect();
                for &b in &blocks {
                    ReuseBlocks.dealloc(b, layout);
                }
                assert_eq!(held(class), PER_CLASS);
                // Handed out again, every one of them is a block freed above.
                let again: Vec<*mut u8> =
                    (0..PER_CLASS).map(|_| ReuseBlocks.alloc(layout)).collect();
                assert!(again.iter().all(|b| blocks.contains(b)));
                assert_eq!(held(class), 0);
                again.iter().for_each(|&b| ReuseBlocks.dealloc(b, layout));
            }
        });
    }

    #[test]
    fn the_cache_keeps_at_most_its_bytes() {
        on_fresh_thread(|| {
            let layout = Layout::from_size_align(MID_MAX, 8).unwrap();
            // SAFETY: each block is freed once, with the layout it was allocated with.
            unsafe {
                let blocks: Vec<*mut u8> = (0..100).map(|_| ReuseBlocks.alloc(layout)).collect();
                blocks.iter().for_each(|&b| ReuseBlocks.dealloc(b, layout));
            }
            // The thread's other freed blocks (the vector above, say) count too.
            let kept = held(class_of(layout).unwrap());
            assert!(
                (CACHE_BYTES / MID_MAX - 1..100).contains(&kept),
                "{kept} kept"
            );
            let bytes = CACHE.with(|c| c.bytes.get());
            assert!(
                bytes <= CACHE_BYTES && bytes > CACHE_BYTES - MID_MAX,
                "{bytes}"
            );
        });
    }

    #[test]
    fn realloc_within_a_class_keeps_the_block_and_across_classes_moves_it() {
        on_fresh_thread(|| {
            let layout = Layout::from_size_align(20, 8).unwrap();
            // SAFETY: each block is used within its layout and freed once with it.
            unsafe {
                let block = ReuseBlocks.alloc(layout);
                block.write_bytes(7, 20);
                // 20 and 24 bytes are both of the 24-byte class.
                assert_eq!(ReuseBlocks.realloc(block, layout, 24), block);
                let wider = Layout::from_size_align(24, 8).unwrap();
                let moved = ReuseBlocks.realloc(block, wider, 3000);
                assert_eq!(std::slice::from_raw_parts(moved, 20), &[7; 20]);
                // The new block has its whole class to write, and goes to that class.
                let large = Layout::from_size_align(3000, 8).unwrap();
                moved.write_bytes(1, class_size(class_of(large).unwrap()));
                ReuseBlocks.dealloc(moved, large);
                assert_eq!(held(class_of(large).unwrap()), 1);
            }
        });
    }

    #[test]
    fn the_header_cap_is_set_once() {
        header_cap(1024);
        header_cap(2048);
        assert_eq!(
            SCRATCH_SIZE.load(Ordering::Relaxed),
            1024 * BYTES_PER_HEADER
        );
    }

    /// Run by `a_block_freed_twice_in_a_row_aborts` in a process of its own.
    #[test]
    #[ignore = "aborts the process: run by a_block_freed_twice_in_a_row_aborts"]
    fn free_a_block_twice() {
        let layout = Layout::from_size_align(40, 8).unwrap();
        // SAFETY: none: the second free is the point, and must abort before any harm.
        // Without the check, the block would be handed out twice; `_exit` then ends the
        // process at once, before its thread's cache is given back (glibc would abort
        // on that itself).
        unsafe {
            let block = ReuseBlocks.alloc(layout);
            ReuseBlocks.dealloc(block, layout);
            ReuseBlocks.dealloc(block, layout);
            let twice = ReuseBlocks.alloc(layout) == ReuseBlocks.alloc(layout);
            libc::_exit(if twice { 3 } else { 4 });
        }
    }

    #[test]
    fn a_block_freed_twice_in_a_row_aborts() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "alloc::tests::free_a_block_twice", "--ignored"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(6), "{status:?}");
    }

    #[test]
    fn scratch_arrays_have_a_class_of_their_own() {
        header_cap(1024);
        let scratch = Layout::from_size_align(1024 * BYTES_PER_HEADER, 8).unwrap();
        on_fresh_thread(move || {
            assert_eq!(class_of(scratch), Some(SCRATCH_CLASS));
            // SAFETY: each block is freed once, with the layout it was allocated with.
            unsafe {
                let pair = [ReuseBlocks.alloc(scratch), ReuseBlocks.alloc(scratch)];
                pair.iter().for_each(|&b| ReuseBlocks.dealloc(b, scratch));
                for i in 0..3 * PER_CLASS {
                    let l = Layout::from_size_align(4096 + 64 * (i % 16), 8).unwrap();
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
                let large = Layout::from_size_align(MID_MAX + 4096, 8).unwrap();
                assert_eq!(class_of(large), None);
            }
        });
    }
}
