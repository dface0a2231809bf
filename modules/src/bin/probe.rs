//! `probe`: writes a secret where the next task in the same pool slot could find it, or reads
//! that place back — the isolation tests' guest, as a module and as a component (`probe-c`).
//!
//! stdin = one region letter, then (to write) the secret, up to 64 bytes:
//!   i  a page of the program's data image (1024 bytes into a static table)
//!   h  1 KiB into a 64 KiB heap allocation (past what the allocator writes itself)
//!   g  1 MiB into a 4 MiB heap allocation, which grows linear memory
//!
//! A lower-case letter and a secret writes the secret and exits; an upper-case letter does the
//! same, then sleeps 1.5 s so the host can page the worker out while the written page is idle.
//! A letter alone prints the region's 64 bytes: zeros in a fresh sandbox. The allocations are
//! the same in every run (stdin is read into a fixed buffer), so a reader looks where the
//! writer wrote. Anything else: stderr, exit 2.

use std::alloc::{alloc, Layout};
use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

const IMAGE_LEN: usize = 8192;
/// Non-zero at its start, so the table is part of the data image, not zero-filled memory.
static mut IMAGE: [u8; IMAGE_LEN] = image();

const fn image() -> [u8; IMAGE_LEN] {
    let label = b"isolation probe: data image page";
    let mut table = [0u8; IMAGE_LEN];
    let mut i = 0;
    while i < label.len() {
        table[i] = label[i];
        i += 1;
    }
    table
}

/// Where `letter`'s region starts.
fn region(letter: u8) -> Option<*mut u8> {
    let heap = |size: usize, offset: usize| {
        let layout = Layout::from_size_align(size, 16).ok()?;
        // SAFETY: a non-zero size; the block is never freed, and only read and written below.
        let block = unsafe { alloc(layout) };
        // SAFETY: `offset + 64` is within the block.
        (!block.is_null()).then(|| unsafe { block.add(offset) })
    };
    match letter.to_ascii_lowercase() {
        // SAFETY: 1024 + 64 bytes are within the table.
        b'i' => Some(unsafe { (&raw mut IMAGE).cast::<u8>().add(1024) }),
        b'h' => heap(64 << 10, 1 << 10),
        b'g' => heap(4 << 20, 1 << 20),
        _ => None,
    }
}

fn main() -> ExitCode {
    let mut input = [0u8; 128];
    let mut len = 0;
    let mut stdin = io::stdin().lock();
    while len < input.len() {
        match stdin.read(&mut input[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) => {
                eprintln!("probe: cannot read stdin: {err}");
                return ExitCode::from(2);
            }
        }
    }
    let Some((&letter, secret)) = input[..len].split_first() else {
        eprintln!("probe: expected a region letter on stdin");
        return ExitCode::from(2);
    };
    let Some(at) = region(letter) else {
        eprintln!("probe: unknown region {:?}", letter as char);
        return ExitCode::from(2);
    };
    if secret.is_empty() {
        let mut seen = [0u8; 64];
        for (k, byte) in seen.iter_mut().enumerate() {
            // SAFETY: within the region (see `region`); volatile, so the read really happens.
            *byte = unsafe { at.add(k).read_volatile() };
        }
        return match io::stdout().write_all(&seen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    for (k, &byte) in secret.iter().take(64).enumerate() {
        // SAFETY: as above.
        unsafe { at.add(k).write_volatile(byte) };
    }
    if letter.is_ascii_uppercase() {
        std::thread::sleep(Duration::from_millis(1500));
    }
    ExitCode::SUCCESS
}
