//! Any bytes a publisher can put on the task queue go through `decode::<Task>` in the worker, so it
//! must return an error, never panic, abort or allocate what a forged length claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_schemas::{decode, encode, Task, DEFAULT_MAX_MESSAGE_BYTES};

fuzz_target!(|frame: &[u8]| {
    if let Ok(task) = decode::<Task>(frame, DEFAULT_MAX_MESSAGE_BYTES) {
        // Whatever decodes must encode back to a frame that decodes to the same task.
        let again: Task =
            decode(&encode(&task), DEFAULT_MAX_MESSAGE_BYTES).expect("a re-encoded task decodes");
        assert_eq!(again, task);
    }
});
