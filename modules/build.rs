//! Generates the 24 MiB table that the `lookup` module embeds.
//!
//! The table is a fixed-seed xorshift stream with every zero byte skipped, so the
//! data segment is dense (nothing the linker could turn into zero-fill) and the
//! bytes are identical on every build, which keeps the module's digest stable.

use std::env;
use std::fs;
use std::path::PathBuf;

/// Size of `lookup`'s table; `src/bin/lookup.rs` declares the same size, and
/// `include_bytes!` into a fixed-size array makes a mismatch a compile error.
const TABLE_LEN: usize = 24 * 1024 * 1024;
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");

    let mut table = Vec::with_capacity(TABLE_LEN);
    let mut state = SEED;
    while table.len() < TABLE_LEN {
        // xorshift64 (Marsaglia's 13/7/17 triple).
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let room = TABLE_LEN - table.len();
        table.extend(
            state
                .to_le_bytes()
                .into_iter()
                .filter(|&b| b != 0)
                .take(room),
        );
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out_dir.join("lookup_table.bin"), &table).expect("write the lookup table");
}
