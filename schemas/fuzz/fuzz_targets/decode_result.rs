//! Results come back from workers over a shared broker, so `decode::<TaskResult>` in the producer
//! sees whatever was published to a reply queue: it must return an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_schemas::{decode, encode, TaskResult, DEFAULT_MAX_MESSAGE_BYTES};

fuzz_target!(|frame: &[u8]| {
    if let Ok(result) = decode::<TaskResult>(frame, DEFAULT_MAX_MESSAGE_BYTES) {
        let again: TaskResult = decode(&encode(&result), DEFAULT_MAX_MESSAGE_BYTES)
            .expect("a re-encoded result decodes");
        assert_eq!(again, result);
    }
});
