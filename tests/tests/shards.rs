//! Lanes run on their own engine shards, and each shard keeps its last `--warm-modules`
//! modules warm: tasks alternating between modules reuse mapped slots instead of remapping one.

use warren_schemas::{ModuleRef, Task};
use warren_tests::{runner_with, test_config};
use warren_worker::engine::pool_occupancy;
use warren_worker::{SandboxConfig, TaskRunner};

fn run(runner: &TaskRunner, module: &str) {
    let task = Task::new(ModuleRef::latest(module), b"abc".to_vec());
    let result = runner.run_here(task, 1);
    assert!(result.outcome.is_success(), "{module}: {}", result.outcome);
}

/// Warm slots left after alternating `echo` and `upper` on one lane with `warm_modules` slots.
fn warm_after_alternating(warm_modules: usize) -> u64 {
    let config = SandboxConfig {
        warm_modules,
        // Else the pool keeps at least a component's two memory slots.
        max_memories_per_component: 1,
        ..test_config(1)
    };
    let runner = runner_with(config);
    for _ in 0..3 {
        run(&runner, "echo");
        run(&runner, "upper");
    }
    let sandbox = runner.registry().sandbox();
    assert_eq!(sandbox.shard_count(), 1);
    pool_occupancy(sandbox.engines())
        .expect("pooled")
        .warm_memories
}

#[test]
fn alternating_modules_stay_warm_up_to_the_warm_module_count() {
    assert_eq!(
        warm_after_alternating(2),
        2,
        "both modules keep a warm slot"
    );
    assert_eq!(
        warm_after_alternating(1),
        1,
        "one slot: the last module only"
    );
}

#[test]
fn every_concurrent_task_has_its_own_shard() {
    // One slot per shard: two tasks on one shard at once would find its pool exhausted.
    let config = SandboxConfig {
        warm_modules: 1,
        ..test_config(3)
    };
    let runner = runner_with(config);
    assert_eq!(runner.registry().sandbox().shard_count(), 3);
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                for _ in 0..20 {
                    run(&runner, "echo");
                }
            });
        }
    });
    let pools = pool_occupancy(runner.registry().sandbox().engines()).expect("pooled");
    assert_eq!(pools.instances, 0, "every instance went back to its pool");
}
