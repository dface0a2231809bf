//! Which digest a module's tag pointed at, and when that was checked: a task naming just
//! `name` asks the registry again at most once per `--registry-tag-ttl`. A tag that could not
//! be resolved at all (no such repository, registry down) is remembered as failed for the same
//! time, so a flood of tasks for it costs one request per TTL, not one per task.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the cache knows of a tag.
#[derive(Debug, PartialEq, Eq)]
pub enum TagLookup<E> {
    /// Checked within the TTL: use it.
    Fresh(String),
    /// Checked longer ago: ask the registry, and use this if it does not answer.
    Stale(String),
    /// Never resolved, and no failure within the TTL.
    Missing,
    /// Never resolved, and the last try failed within the TTL: this is why.
    Failed(E),
}

/// Module name → the digest its tag pointed at (or why it could not be resolved), and when.
pub struct TagCache<E> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (String, Instant)>>,
    failures: Mutex<HashMap<String, (E, Instant)>>,
}

impl<E: Clone> TagCache<E> {
    /// A cache whose entries are fresh for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        TagCache {
            ttl,
            entries: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// What is known of `name`'s tag at `now`.
    pub fn lookup(&self, name: &str, now: Instant) -> TagLookup<E> {
        let fresh = |checked: &Instant| now.saturating_duration_since(*checked) < self.ttl;
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(name) {
            Some((digest, checked)) if fresh(checked) => TagLookup::Fresh(digest.clone()),
            Some((digest, _)) => TagLookup::Stale(digest.clone()),
            None => match self
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
            {
                Some((error, failed)) if fresh(failed) => TagLookup::Failed(error.clone()),
                _ => TagLookup::Missing,
            },
        }
    }

    /// Records that resolving `name`'s tag, never resolved before, failed at `now` with `error`.
    pub fn record_failure(&self, name: &str, error: E, now: Instant) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), (error, now));
    }

    /// Records that `name`'s tag pointed at `digest` when checked at `now` (also after a
    /// failed check, with the digest kept, so a registry that is down is asked once per TTL).
    pub fn record(&self, name: &str, digest: &str, now: Instant) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), (digest.to_owned(), now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_fresh_within_the_ttl_and_stale_after() {
        let cache = TagCache::<&str>::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(cache.lookup("wc", t0), TagLookup::Missing);
        cache.record("wc", "aa", t0);
        assert_eq!(
            cache.lookup("wc", t0 + Duration::from_secs(29)),
            TagLookup::Fresh("aa".into())
        );
        assert_eq!(
            cache.lookup("wc", t0 + Duration::from_secs(30)),
            TagLookup::Stale("aa".into())
        );
        cache.record("wc", "bb", t0 + Duration::from_secs(30));
        assert_eq!(
            cache.lookup("wc", t0 + Duration::from_secs(31)),
            TagLookup::Fresh("bb".into())
        );
        assert_eq!(cache.lookup("other", t0), TagLookup::Missing);
    }

    #[test]
    fn a_failure_is_remembered_for_the_ttl_and_forgotten_once_resolved() {
        let cache = TagCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        cache.record_failure("wc", "down", t0);
        assert_eq!(
            cache.lookup("wc", t0 + Duration::from_secs(29)),
            TagLookup::Failed("down")
        );
        assert_eq!(
            cache.lookup("wc", t0 + Duration::from_secs(30)),
            TagLookup::Missing
        );
        cache.record("wc", "aa", t0 + Duration::from_secs(31));
        cache.record_failure("other", "x", t0);
        assert_eq!(
            cache.lookup("wc", t0 + Duration::from_secs(32)),
            TagLookup::Fresh("aa".into())
        );
    }

    #[test]
    fn a_zero_ttl_checks_every_time() {
        let cache = TagCache::<&str>::new(Duration::ZERO);
        let t0 = Instant::now();
        cache.record("wc", "aa", t0);
        assert_eq!(cache.lookup("wc", t0), TagLookup::Stale("aa".into()));
    }
}
