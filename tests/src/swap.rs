//! Real swap for isolation tests: a swapfile turned on for the test's lifetime, and paging a
//! process's writable memory out to it with `process_madvise(MADV_PAGEOUT)` — what memory
//! pressure does to any process on a host with swap.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A swapfile that is on while this value lives: `swapoff` and removed on drop, also when the
/// test panics.
pub struct Swapfile {
    path: PathBuf,
}

impl Swapfile {
    /// Creates a `size_mib` swapfile in the system temp directory and turns it on. Fails with
    /// the command that failed (no root, a filesystem without swapfile support, a kernel
    /// without swap).
    pub fn on(size_mib: u64) -> Result<Swapfile, String> {
        let path = std::env::temp_dir().join(format!(
            "warren-test-swap-{}",
            uuid::Uuid::new_v4().simple()
        ));
        // From here on, drop cleans up whatever was made.
        let swap = Swapfile { path };
        let size = format!("{size_mib}M");
        run("fallocate", &["-l", &size, path_str(&swap.path)])?;
        run("chmod", &["600", path_str(&swap.path)])?;
        run("mkswap", &[path_str(&swap.path)])?;
        run("swapon", &[path_str(&swap.path)])?;
        Ok(swap)
    }

    /// Like [`Swapfile::on`], but a machine where swap cannot be turned on fails the test
    /// unless `WARREN_TESTS_WITHOUT_SWAP=1` says to skip it; then it says loudly that the
    /// swap part did not run and returns `None`.
    pub fn on_or_explain(size_mib: u64) -> Option<Swapfile> {
        match Swapfile::on(size_mib) {
            Ok(swap) => Some(swap),
            Err(error) if std::env::var("WARREN_TESTS_WITHOUT_SWAP").as_deref() == Ok("1") => {
                eprintln!(
                    "\n*** SWAP TESTS DID NOT RUN: cannot turn swap on here ({error}); \
                     WARREN_TESTS_WITHOUT_SWAP=1 says to go on without them ***\n"
                );
                None
            }
            Err(error) => panic!(
                "cannot turn swap on ({error}); the isolation-under-swap tests need root and a \
                 filesystem that takes swapfiles. Set WARREN_TESTS_WITHOUT_SWAP=1 to skip them \
                 knowingly."
            ),
        }
    }
}

impl Drop for Swapfile {
    fn drop(&mut self) {
        if let Err(error) = run("swapoff", &[path_str(&self.path)]) {
            eprintln!("swapoff {}: {error}", self.path.display());
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Asks the kernel to reclaim (swap out) every page of `pid`'s writable mappings.
pub fn page_out(pid: u32) -> io::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor the kernel just gave us, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    for (start, end) in writable_mappings(pid)? {
        let iov = libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: end - start,
        };
        // SAFETY: the iovec describes memory of the *other* process; process_madvise only
        // reads the iovec array itself, which lives on our stack for the call.
        let advised = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                pidfd.as_raw_fd(),
                &iov as *const libc::iovec,
                1usize,
                libc::MADV_PAGEOUT,
                0u32,
            )
        };
        if advised < 0 {
            let error = io::Error::last_os_error();
            // A mapping that went away or cannot be reclaimed (locked, special) is not ours to
            // page out; anything else is a real failure.
            if !matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOMEM)) {
                return Err(error);
            }
        }
    }
    Ok(())
}

/// `[start, end)` of every writable mapping of `pid`.
fn writable_mappings(pid: u32) -> io::Result<Vec<(usize, usize)>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            if !perms.contains('w') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect())
}

/// `VmSwap` of `pid`: how much of its memory is in swap now, in KiB.
pub fn swapped_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|line| line.strip_prefix("VmSwap:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0))
}

/// Pages `pid` out over and over on a thread of its own until stopped: while a task that wrote
/// a secret sits idle, whatever it dirtied ends up in swap.
pub struct PageOutLoop {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<u64>>,
}

impl PageOutLoop {
    /// Starts paging `pid` out.
    pub fn start(pid: u32) -> PageOutLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut most_swapped = 0;
                while !stop.load(Ordering::Relaxed) {
                    page_out(pid)?;
                    most_swapped = most_swapped.max(swapped_kib(pid)?);
                    // Paces the passes (each one swaps the whole worker out); nothing waits on it.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Ok(most_swapped)
            }
        });
        PageOutLoop { stop, thread }
    }

    /// Stops paging and returns the most of `pid`'s memory seen in swap, in KiB.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .expect("page-out thread panicked")
            .expect("page-out failed")
    }
}
