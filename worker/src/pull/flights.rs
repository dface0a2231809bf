//! Single flight: callers asking for the same key at the same time share one run of the work
//! and its result. The rules of the worker's pulls (one download per digest however many tasks
//! miss it), kept free of I/O so they are tested on their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Work in flight, by key.
pub struct Flights<V> {
    inflight: Mutex<HashMap<String, Arc<OnceLock<V>>>>,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Flights {
            inflight: Mutex::default(),
        }
    }
}

impl<V: Clone> Flights<V> {
    /// Runs `work` for `key`, unless a run for `key` is in flight: then waits for that run
    /// and returns its value. The calling thread blocks while it waits. Once a run ends, the
    /// next call for `key` runs the work again (results are not cached here).
    pub fn run(&self, key: &str, work: impl FnOnce() -> V) -> V {
        let flight = self.lock().entry(key.to_owned()).or_default().clone();
        let mut led = false;
        let value = flight
            .get_or_init(|| {
                led = true;
                work()
            })
            .clone();
        if led {
            let mut inflight = self.lock();
            if inflight
                .get(key)
                .is_some_and(|current| Arc::ptr_eq(current, &flight))
            {
                inflight.remove(key);
            }
        }
        value
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<OnceLock<V>>>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    #[test]
    fn callers_during_a_flight_share_its_one_run() {
        let flights = Flights::<u32>::default();
        let runs = AtomicUsize::new(0);
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (flights, runs) = (&flights, &runs);
        std::thread::scope(|scope| {
            let leader = scope.spawn(move || {
                flights.run("k", || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    7
                })
            });
            started_rx.recv().unwrap();
            let follower = scope.spawn(move || {
                flights.run("k", || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    8
                })
            });
            // The follower holds the flight (map + leader + follower) before the leader ends.
            while flights.lock().get("k").map(Arc::strong_count) != Some(3) {
                std::thread::yield_now();
            }
            release_tx.send(()).unwrap();
            assert_eq!(leader.join().unwrap(), 7);
            assert_eq!(follower.join().unwrap(), 7);
        });
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(flights.lock().is_empty(), "a finished flight is forgotten");
    }

    #[test]
    fn a_call_after_a_flight_ended_runs_again_and_keys_are_independent() {
        let flights = Flights::<u32>::default();
        assert_eq!(flights.run("a", || 1), 1);
        assert_eq!(flights.run("a", || 2), 2);
        assert_eq!(flights.run("b", || 3), 3);
    }
}
