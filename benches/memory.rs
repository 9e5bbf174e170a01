//! Memory per op of the front end: `cargo bench --bench memory`.
//!
//! A counting global allocator tracks live and peak heap bytes. For each size it reports the
//! heap the finished `Module` retains (source text and syntax tree freed) and the peak above
//! the starting point while parsing, lowering and verifying (the source text excluded).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counters
// are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    // `cargo bench` passes `--bench`; a filter argument picks sizes by label.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    println!("{:>6} {:>12} {:>10} {:>16} {:>14}", "ops", "text bytes", "text B/op", "retained B/op", "peak B/op");
    for (label, ops) in common::SIZES {
        if !filter.is_empty() && !filter.iter().any(|f| label.contains(f.as_str())) {
            continue;
        }
        let base = CURRENT.load(Relaxed);
        let text = common::generate(ops);
        let before = CURRENT.load(Relaxed);
        PEAK.store(before, Relaxed);
        let module = qc::syntax::parse_module(&text, None).expect("generated QIR is valid");
        let peak = PEAK.load(Relaxed) - before;
        let text_len = text.len();
        drop(text);
        let retained = CURRENT.load(Relaxed).saturating_sub(base);
        let ops = ops as f64;
        println!(
            "{label:>6} {text_len:>12} {:>10.1} {:>16.1} {:>14.1}",
            text_len as f64 / ops,
            retained as f64 / ops,
            peak as f64 / ops
        );
        drop(module);
    }
}
