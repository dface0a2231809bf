//! Where a shard's pool keeps its tables' elements and its linear memories, so the swap scrub can
//! reach them.
//!
//! wasmtime gives an embedder no address for a table. Right after a shard's engine is built,
//! [`locate`] takes every table slot of its pool with a probe instance that fills the first
//! elements of its table with a function reference whose raw value it knows, then searches the
//! writable mappings that appeared with the engine (or, if the pool took the place of a mapping
//! unmapped meanwhile, every one large enough) for pages holding only that value. The slots
//! found must lie exactly one table size apart and cover every slot; anything else is an error,
//! never a guess.
//!
//! A module's memory is found through its export after each task; a component's core memories
//! are not reachable from the embedder, so [`locate_memories`] takes every memory slot of the
//! pool with a probe instance and reads where each memory starts: a component task's scrub
//! covers every slot.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use wasmtime::{Engine, Instance, Module, Store};

use super::swap_scrub::page_size;

/// Every slot of one of a shard's pools (tables or memories): `len` bytes at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRegion {
    /// First byte of the first slot.
    pub start: usize,
    /// From there to the end of the last slot's usable part.
    pub len: usize,
}

/// Bytes of one table element in the pool (a tagged pointer).
const ELEMENT_BYTES: usize = 8;

/// The writable, private, anonymous mappings of this process, as `[start, end)`.
pub fn anonymous_mappings() -> HashSet<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            // offset, device, inode, then a path for file and special mappings.
            if !perms.starts_with("rw") || fields.nth(3).is_some() {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

/// Finds the table pool of `engine` (built after `before` was read), whose pool has `slots`
/// table slots of `table_elements` elements each.
pub fn locate(
    engine: &Engine,
    slots: usize,
    table_elements: usize,
    before: &HashSet<(usize, usize)>,
) -> Result<PoolRegion, String> {
    if table_elements == 0 || slots == 0 {
        return Err("the pool has no table slots".into());
    }
    let page = page_size();
    let table_size = (table_elements * ELEMENT_BYTES).div_ceil(page) * page;
    let filled = table_elements.min(page / ELEMENT_BYTES);
    let probe = Module::new(engine, probe_wat(filled)).map_err(|e| format!("probe: {e:#}"))?;

    // Every slot taken at once, each filled with its own function's reference.
    let mut stores = Vec::with_capacity(slots);
    let mut values = HashSet::new();
    for _ in 0..slots {
        let mut store = Store::new(engine, ());
        store.set_epoch_deadline(u64::MAX / 2);
        let instance =
            Instance::new(&mut store, &probe, &[]).map_err(|e| format!("probe: {e:#}"))?;
        let raw = instance
            .get_func(&mut store, "marker")
            .ok_or("probe has no marker")?
            .to_raw(&mut store) as usize;
        instance
            .get_typed_func::<(), ()>(&mut store, "fill")
            .and_then(|fill| fill.call(&mut store, ()))
            .map_err(|e| format!("probe: {e:#}"))?;
        values.insert(raw);
        values.insert(raw | 1);
        stores.push(store);
    }

    let mem = File::open("/proc/self/mem").map_err(|e| format!("/proc/self/mem: {e}"))?;
    let mut buffer = vec![0u8; page];
    // The pages, among `mappings`, that hold only one of the probes' values.
    let mut scan = |mappings: &[(usize, usize)]| {
        let mut starts = Vec::new();
        for &(start, end) in mappings {
            for at in (start..end).step_by(page) {
                // Read through /proc/self/mem: a mapping another thread removes meanwhile is an
                // error here, not a fault.
                if mem.read_exact_at(&mut buffer, at as u64).is_err() {
                    continue;
                }
                let words: Vec<usize> = buffer[..filled * ELEMENT_BYTES]
                    .chunks_exact(ELEMENT_BYTES)
                    .map(|w| usize::from_ne_bytes(w.try_into().expect("8 bytes")))
                    .collect();
                if values.contains(&words[0]) && words.iter().all(|w| *w == words[0]) {
                    starts.push(at);
                }
            }
        }
        starts
    };
    // The pool is a mapping that appeared with the engine; but when another mapping was unmapped
    // meanwhile and the pool took its place, the pool (merged with its neighbours) can span
    // exactly the addresses of one `before` listed: then every mapping that can hold it is read.
    let pool_len = slots * table_size;
    let after = anonymous_mappings();
    let fresh: Vec<_> = after.difference(before).copied().collect();
    let mut starts = scan(&fresh);
    if starts.is_empty() {
        let known: Vec<_> = after
            .intersection(before)
            .filter(|(start, end)| end - start >= pool_len)
            .copied()
            .collect();
        starts = scan(&known);
    }
    drop(stores);

    starts.sort_unstable();
    let first = *starts.first().ok_or("no table slot found")?;
    let expected: Vec<usize> = (0..slots).map(|k| first + k * table_size).collect();
    if starts != expected {
        return Err(format!(
            "table slots found at {starts:x?}, expected {slots} slots {table_size} bytes apart"
        ));
    }
    Ok(PoolRegion {
        start: first,
        len: pool_len,
    })
}

/// Where each of the `slots` memory slots of `engine`'s pool starts, in address order.
pub fn locate_memories(engine: &Engine, slots: usize) -> Result<Vec<usize>, String> {
    let probe = Module::new(engine, r#"(module (memory (export "memory") 1))"#)
        .map_err(|e| format!("probe: {e:#}"))?;
    let mut stores = Vec::with_capacity(slots);
    let mut starts = Vec::with_capacity(slots);
    for _ in 0..slots {
        let mut store = Store::new(engine, ());
        let instance =
            Instance::new(&mut store, &probe, &[]).map_err(|e| format!("probe: {e:#}"))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or("probe has no memory")?;
        starts.push(memory.data_ptr(&store) as usize);
        stores.push(store);
    }
    drop(stores);
    starts.sort_unstable();
    starts.dedup();
    if starts.len() != slots {
        return Err(format!(
            "{} distinct memory slots found, expected {slots}",
            starts.len()
        ));
    }
    Ok(starts)
}

fn probe_wat(elements: usize) -> String {
    format!(
        r#"(module
          (table $t {elements} funcref)
          (func $marker)
          (export "marker" (func $marker))
          (func (export "fill")
            (table.fill $t (i32.const 0) (ref.func $marker) (i32.const {elements}))))"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SandboxConfig;
    use crate::engine::{build_engine, Allocation};

    #[test]
    fn every_table_slot_of_a_pool_is_found() {
        for (warm, elements) in [(4, 20_000), (1, 100), (9, 512)] {
            let config = SandboxConfig {
                table_elements: elements,
                ..SandboxConfig::default()
            };
            let before = anonymous_mappings();
            let engine = build_engine(&config, Allocation::Pooled, warm).unwrap();
            let slots = crate::engine::PoolSize::of(&config, warm).unwrap().tables as usize;
            let pool = locate(&engine, slots, elements, &before).unwrap();
            let table_size = (elements * 8).div_ceil(page_size()) * page_size();
            assert_eq!(pool.len, slots * table_size, "{warm}: {slots} × {elements}");
        }
    }

    #[test]
    fn a_pool_mapped_where_an_identical_one_was_is_found() {
        // Another engine of the same size dropped between the snapshot and this engine's build
        // (parallel tests, shards rebuilt): the kernel reuses its hole at the same addresses.
        let config = SandboxConfig::default();
        let earlier = build_engine(&config, Allocation::Pooled, 4).unwrap();
        let before = anonymous_mappings();
        drop(earlier);
        let engine = build_engine(&config, Allocation::Pooled, 4).unwrap();
        let slots = crate::engine::PoolSize::of(&config, 4).unwrap().tables as usize;
        let pool = locate(&engine, slots, config.table_elements, &before).unwrap();
        assert_eq!(pool.len % page_size(), 0);
    }

    #[test]
    fn every_memory_slot_of_a_pool_is_found() {
        let config = SandboxConfig::default();
        let engine = build_engine(&config, Allocation::Pooled, 3).unwrap();
        let slots = crate::engine::PoolSize::of(&config, 3).unwrap().memories as usize;
        let starts = locate_memories(&engine, slots).unwrap();
        assert_eq!(starts.len(), 3);
        let stride = (config.memory_reservation + config.memory_guard) as usize;
        assert!(
            starts.windows(2).all(|w| w[1] - w[0] >= stride),
            "{starts:x?}"
        );
    }
}
