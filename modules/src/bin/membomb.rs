//! `membomb`: allocates memory without bound, for tests of the memory cap.
//!
//! Keeps 1 MiB chunks filled with non-zero bytes (so every page is really
//! written, not just reserved) and never frees them, printing a progress line
//! to stderr every 64 MiB. It ends only when the host refuses to grow linear
//! memory: the allocator then aborts, which traps.

use std::hint::black_box;

const CHUNK: usize = 1024 * 1024;

fn main() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(black_box(vec![0xA5u8; CHUNK]));
        if hoard.len().is_multiple_of(64) {
            eprintln!("membomb: holding {} MiB", hoard.len());
        }
        black_box(&hoard);
    }
}
