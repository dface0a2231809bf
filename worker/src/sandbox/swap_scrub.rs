//! Closes the hole wasmtime 48's slot reset leaves on a host with swap.
//!
//! wasmtime resets a freed pool slot with PAGEMAP_SCAN, asking the kernel for the pages that are
//! written **and present**: a page the guest dirtied that sits in swap is neither rewritten nor
//! returned, and the next task in the slot would read it back. After each task, once wasmtime's
//! reset has run, [`SwapScrub::after_reset`] asks the kernel for the pages of the task's linear
//! memory that are in swap and returns them (`MADV_DONTNEED`): their next read is the module's
//! data image or zeros, as on a fresh mapping. This cannot race: a page that was in swap at
//! wasmtime's reset stays there until something reads or writes it, and nothing touches the slot
//! before this lane's next task, which starts after the scrub.
//!
//! The scan is a system call per task, so it runs only once swap has been seen — at start, on any
//! `swapon` (a thread waits on `/proc/swaps`, which the kernel signals on every change), or when
//! the lane itself finds swap space configured (`sysinfo`) — and then for good: pages may sit in
//! swap until a `swapoff` brings them back, still dirty.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tracing::{info, warn};

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)` (Linux ≥ 6.7).
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;
/// `PAGE_IS_SWAPPED`: the page-table entry points into swap (or at a page being migrated).
const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// Regions one scan call reports; a scan with more resumes where the kernel stopped.
const REGIONS_PER_CALL: usize = 32;

/// `struct pm_scan_arg` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// How a freed slot's memory is reset, for the start-up log and `warren_sandbox_reset_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetMethod {
    /// wasmtime's PAGEMAP_SCAN reset; no swap seen, so no page can be in swap.
    PagemapScan,
    /// wasmtime's PAGEMAP_SCAN reset, then the scrub of pages in swap.
    PagemapScanAndSwapScrub,
    /// The kernel has no PAGEMAP_SCAN: wasmtime rewrites `--keep-resident` bytes and returns
    /// the rest with `madvise`, which handles pages in swap by itself.
    RewriteThenMadvise,
}

impl ResetMethod {
    /// Every value, for pre-registering metric series.
    pub const ALL: [ResetMethod; 3] = [
        ResetMethod::PagemapScan,
        ResetMethod::PagemapScanAndSwapScrub,
        ResetMethod::RewriteThenMadvise,
    ];

    /// Why this method, for the start-up log.
    pub fn reason(self) -> &'static str {
        match self {
            ResetMethod::PagemapScan => {
                "no swap seen: wasmtime's PAGEMAP_SCAN reset; pages in swap are scrubbed once swap appears"
            }
            ResetMethod::PagemapScanAndSwapScrub => {
                "swap is on: wasmtime's PAGEMAP_SCAN reset skips pages in swap, so they are discarded after it"
            }
            ResetMethod::RewriteThenMadvise => {
                "no PAGEMAP_SCAN in this kernel: wasmtime's madvise reset, which handles swap itself"
            }
        }
    }

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            ResetMethod::PagemapScan => "pagemap_scan",
            ResetMethod::PagemapScanAndSwapScrub => "pagemap_scan_and_swap_scrub",
            ResetMethod::RewriteThenMadvise => "rewrite_then_madvise",
        }
    }
}

/// Finds and discards pages of freed slots that are in swap; shared by every shard.
pub struct SwapScrub {
    /// `/proc/self/pagemap`, when the kernel answers PAGEMAP_SCAN on it.
    pagemap: Option<File>,
    /// Swap has been seen; from then on every task is scrubbed.
    swap_seen: Arc<AtomicBool>,
    /// Pages found in swap after wasmtime's reset and discarded.
    pages_scrubbed: AtomicU64,
}

impl SwapScrub {
    /// Probes PAGEMAP_SCAN and joins the process's watch for swap (started by the first call).
    pub fn start() -> SwapScrub {
        let pagemap = File::open("/proc/self/pagemap")
            .ok()
            .filter(|file| scan(file, 0, 0, &mut []).is_ok());
        SwapScrub {
            pagemap,
            swap_seen: swap_watch(),
            pages_scrubbed: AtomicU64::new(0),
        }
    }

    /// How slots are reset now.
    pub fn method(&self) -> ResetMethod {
        match (&self.pagemap, self.swap_seen.load(Ordering::Relaxed)) {
            (None, _) => ResetMethod::RewriteThenMadvise,
            (Some(_), false) => ResetMethod::PagemapScan,
            (Some(_), true) => ResetMethod::PagemapScanAndSwapScrub,
        }
    }

    /// Pages found in swap after wasmtime's reset and discarded, since start.
    pub fn pages_scrubbed(&self) -> u64 {
        self.pages_scrubbed.load(Ordering::Relaxed)
    }

    /// True when the kernel answers PAGEMAP_SCAN, so that a scrub can run at all.
    pub fn available(&self) -> bool {
        self.pagemap.is_some()
    }

    /// Called after a task's store is dropped (its slot reset by wasmtime), with the `(start,
    /// len)` ranges that slot's memory and the shard's tables occupied: discards every page of
    /// them that is in swap. Nothing else may use those ranges until this returns.
    pub fn after_reset(&self, ranges: impl IntoIterator<Item = (usize, usize)>) {
        let Some(pagemap) = &self.pagemap else {
            return;
        };
        if !self.swap_possible() {
            return;
        }
        for (start, len) in ranges {
            let pages = scrub(pagemap, start, start + len);
            self.pages_scrubbed.fetch_add(pages, Ordering::Relaxed);
        }
    }

    /// True once swap has been seen; looks for configured swap space when not yet.
    fn swap_possible(&self) -> bool {
        if self.swap_seen.load(Ordering::Relaxed) {
            return true;
        }
        if swap_configured() {
            note_swap(&self.swap_seen);
            return true;
        }
        false
    }
}

/// Discards the pages of `[start, end)` that are in swap; returns how many.
fn scrub(pagemap: &File, start: usize, end: usize) -> u64 {
    let mut regions = [PageRegion::default(); REGIONS_PER_CALL];
    let mut pages = 0;
    let mut from = start;
    while from < end {
        let walked = match scan(pagemap, from, end - from, &mut regions) {
            Ok(walked) => walked,
            Err(error) => {
                // Whatever was not looked at goes back to the kernel: always correct.
                warn!(%error, "PAGEMAP_SCAN failed; discarding the rest of the range");
                discard(from, end - from);
                return pages;
            }
        };
        for region in regions.iter().take(walked.regions) {
            let bytes = (region.end - region.start) as usize;
            discard(region.start as usize, bytes);
            pages += (bytes / page_size()) as u64;
        }
        // The kernel stops early only when `regions` is full, after the last one it filled.
        if walked.end <= from {
            discard(from, end - from);
            return pages;
        }
        from = walked.end;
    }
    pages
}

/// What one PAGEMAP_SCAN call found: regions filled, and where the walk stopped.
struct Walked {
    regions: usize,
    end: usize,
}

/// Asks for the pages of `len` bytes at `start` (page-aligned, mapped) that are in swap
/// (regions into `out`).
fn scan(pagemap: &File, start: usize, len: usize, out: &mut [PageRegion]) -> io::Result<Walked> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start: start as u64,
        end: (start + len) as u64,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        category_mask: PAGE_IS_SWAPPED,
        return_mask: PAGE_IS_SWAPPED,
        ..PmScanArg::default()
    };
    // SAFETY: the kernel only reads the page tables of `start..start + len` and writes
    // `walk_end` and up to `vec_len` entries of `out`.
    let found = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
    if found < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Walked {
        regions: found as usize,
        end: if len == 0 {
            start
        } else {
            arg.walk_end as usize
        },
    })
}

/// Returns `len` bytes at `addr` to the kernel: the next read sees the mapping's original
/// contents (the data image's file pages, or zeros).
fn discard(addr: usize, len: usize) {
    // SAFETY: the range is inside a freed slot's memory (see `after_reset`); MADV_DONTNEED on a
    // private mapping only drops this process's copies of the pages.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if rc != 0 {
        // The slot would keep a swapped page: nothing may run in it again.
        panic!(
            "madvise(MADV_DONTNEED) of a freed slot failed: {}",
            io::Error::last_os_error()
        );
    }
}

/// The host's page size.
pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Swap space is configured on the host now (`sysinfo().totalswap`).
fn swap_configured() -> bool {
    // SAFETY: sysinfo only writes the struct it is given.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    unsafe { libc::sysinfo(&mut info) == 0 && info.totalswap > 0 }
}

fn note_swap(swap_seen: &AtomicBool) {
    if !swap_seen.swap(true, Ordering::Relaxed) {
        info!(
            "swap is on: pages of freed slots found in swap are discarded after every task from \
             now on (wasmtime 48's reset skips them)"
        );
    }
}

/// The process's "swap has been seen" flag: set now if swap space is configured, and by a thread
/// that waits for `/proc/swaps` to change (started once per process).
fn swap_watch() -> Arc<AtomicBool> {
    static SEEN: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    SEEN.get_or_init(|| {
        let seen = Arc::new(AtomicBool::new(false));
        if swap_configured() {
            note_swap(&seen);
        } else if let Err(error) = watch_swapon(seen.clone()) {
            // Without the watcher the lanes still look before every scrub decision (`sysinfo`).
            warn!(%error, "cannot watch /proc/swaps; the lanes check for swap on every task");
        }
        seen
    })
    .clone()
}

/// Starts the thread that marks swap as seen when `/proc/swaps` changes (the kernel wakes
/// `poll` on it with `POLLPRI` on every `swapon` and `swapoff`).
fn watch_swapon(swap_seen: Arc<AtomicBool>) -> io::Result<()> {
    let swaps = File::open("/proc/swaps")?;
    std::thread::Builder::new()
        .name("warren-swap-watch".into())
        .spawn(move || loop {
            if swap_seen.load(Ordering::Relaxed) {
                return;
            }
            let mut fd = libc::pollfd {
                fd: swaps.as_raw_fd(),
                events: libc::POLLPRI | libc::POLLERR,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut fd, 1, -1) };
            if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return;
            }
            if swap_configured() || fd.revents & (libc::POLLPRI | libc::POLLERR) != 0 {
                note_swap(&swap_seen);
            }
        })?;
    Ok(())
}
