#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::decode(tidings_protocol::Protocol::Json, data);
});
