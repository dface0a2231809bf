//! `recurse`: recurses without bound, for tests of stack-overflow handling.
//!
//! Every frame keeps a small buffer of values that are still needed after the
//! recursive call returns, so the call is not in tail position and cannot be
//! turned into a loop. `black_box` hides the values from the optimiser.
//!
//! The buffer is deliberately made of values (wasm locals), not an array whose
//! address escapes: such an array would live on Rust's shadow stack in linear
//! memory, and running off that stack shows up as an out-of-bounds memory
//! access. Kept in locals, the frames fill the engine's own call stack, and
//! the task ends with the engine's "call stack exhausted" trap.

use std::hint::black_box;

const FRAME_VALUES: usize = 16;

#[inline(never)]
fn descend(depth: u64) -> u64 {
    let frame: [u64; FRAME_VALUES] = std::array::from_fn(|i| black_box(depth ^ i as u64));
    // Never true; it only keeps the function from being unconditionally recursive.
    if black_box(depth == u64::MAX) {
        return 0;
    }
    let below = descend(depth + 1);
    frame.iter().fold(below, |acc, &v| acc.rotate_left(1) ^ v)
}

fn main() {
    let total = descend(0);
    println!("recurse: returned {total}");
}
