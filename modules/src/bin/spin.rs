//! `spin`: burns CPU forever, for tests of the per-task CPU deadline.
//!
//! Without arguments it loops forever; `std::hint::black_box` keeps the
//! optimiser from proving the loop does nothing and removing it. With argv[1]
//! it instead spins for that many milliseconds of wall time, then prints
//! `done\n` and exits 0 (a task that is slow but finishes). A non-numeric
//! argument is reported on stderr with exit code 2.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let Some(arg) = std::env::args_os().nth(1) else {
        spin_forever()
    };
    let Some(millis) = arg.to_str().and_then(|a| a.parse::<u64>().ok()) else {
        eprintln!("spin: expected milliseconds, got {arg:?}");
        return ExitCode::from(2);
    };
    let deadline = Duration::from_millis(millis);
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < deadline {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    println!("done");
    ExitCode::SUCCESS
}

fn spin_forever() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}
