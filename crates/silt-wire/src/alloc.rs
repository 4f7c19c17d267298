//! A global allocator that keeps a hostile length prefix from aborting the process.
//!
//! `kafka-protocol` 0.18 decodes an array by calling `Vec::with_capacity(n)` with `n` taken
//! straight from the wire, before reading any element. A 9-byte request can ask for hundreds of
//! gigabytes; the system allocator refuses, and Rust aborts on allocation failure. Instead of
//! patching the crate, the agent binary installs [`LazyLargeAlloc`]: allocations of 1 GiB or
//! more are served by an anonymous `mmap` with `MAP_NORESERVE`, which reserves address space but
//! commits no memory until pages are touched. The decoder then fails on the first missing
//! element (the frame is short), the vector is dropped and the mapping is returned; resident
//! memory never grows. Every other allocation goes to the system allocator unchanged.
//!
//! This is the one place Silt uses `unsafe`; it is small and has a test of its own.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Tunes glibc's malloc for the agent's memory budget: at most `arenas` arenas
/// (`M_ARENA_MAX`; its default is eight per core), and a fixed mmap threshold of
/// [`MMAP_THRESHOLD`]. No effect elsewhere than glibc.
///
/// - Arenas: each thread that allocates — the runtime's workers and the blocking threads that
///   write objects — may otherwise get an arena of its own, each keeping memory freed in it:
///   with the agent's large, short-lived buffers that held 100–200 MiB above what was in use.
/// - The threshold: glibc raises its mmap threshold each time a mapped block is freed, up to
///   32 MiB, after which flush objects, fetch responses and large request frames come from the
///   heap, whose freed space fragments and is kept. Under the memory-flood test (512 MiB
///   budget) the agent peaked at 460–644 MiB that way, and at 342–362 MiB with the threshold
///   fixed at 1 MiB, for the same bytes taken in.
pub fn tune_malloc(arenas: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; both take any positive value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap_threshold());
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

/// Allocations of at least this many bytes get pages of their own (mmap), returned to the
/// system when freed ([`tune_malloc`]).
pub const MMAP_THRESHOLD: i32 = 1 << 20;

/// [`MMAP_THRESHOLD`], unless glibc's own `MALLOC_MMAP_THRESHOLD_` (bytes) is set: an
/// operator's setting wins, and benchmarks compare thresholds with it.
fn mmap_threshold() -> i32 {
    std::env::var("MALLOC_MMAP_THRESHOLD_")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(MMAP_THRESHOLD)
}

/// Allocations at least this large are reserved lazily.
pub const LARGE: usize = 1 << 30;

/// See the module documentation. Install with `#[global_allocator]` in a binary.
#[derive(Debug, Default, Clone, Copy)]
pub struct LazyLargeAlloc;

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: large blocks come from mmap (page aligned, which satisfies any alignment up to the page
// size; larger alignments go to the system allocator) and are returned with munmap of the same
// size, which `dealloc` receives unchanged from the caller's layout.
unsafe impl GlobalAlloc for LazyLargeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) && layout.align() <= 4096 {
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) && layout.align() <= 4096 {
            unsafe { map(layout.size()) } // anonymous mappings are zero-filled
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(&layout) && layout.align() <= 4096 {
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !is_large(&layout) && !is_large(&new_layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_reservation_costs_nothing_until_touched() {
        let a = LazyLargeAlloc;
        let layout = Layout::from_size_align(512 << 30, 8).unwrap(); // 512 GiB
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null(), "a lazy reservation of 512 GiB must succeed");
            *p = 7;
            *p.add(layout.size() - 1) = 9;
            assert_eq!(*p, 7);
            let q = a.realloc(p, layout, 16);
            assert_eq!(*q, 7);
            a.dealloc(q, Layout::from_size_align(16, 8).unwrap());
        }
    }

    #[test]
    fn small_allocations_round_trip() {
        let a = LazyLargeAlloc;
        let layout = Layout::from_size_align(64, 8).unwrap();
        unsafe {
            let p = a.alloc_zeroed(layout);
            assert_eq!(*p.add(63), 0);
            let q = a.realloc(p, layout, 4096);
            a.dealloc(q, Layout::from_size_align(4096, 8).unwrap());
        }
    }
}
