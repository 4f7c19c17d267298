//! Fuzz target: any bytes as a request frame body, and as a record batch.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: silt_wire::alloc::LazyLargeAlloc = silt_wire::alloc::LazyLargeAlloc;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = silt_wire::request::parse_header(bytes::Bytes::copy_from_slice(data)) {
        let _ = silt_wire::request::decode_body(&req);
    }
    if let Ok(h) = silt_wire::batch::validate_single(data) {
        let _ = silt_wire::batch::first_at_or_after(data, &h, 0);
        let _ = silt_wire::batch::max_timestamp_offset(data, &h);
    }
    for _ in silt_wire::batch::iter(data) {}
});
