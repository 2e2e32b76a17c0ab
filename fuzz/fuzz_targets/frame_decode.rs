//! Fuzz target: arbitrary bytes into the frame decoder, as a datagram and as a stream.
//! Run: `cargo install cargo-fuzz && cd fuzz && cargo fuzz run --sanitizer none frame_decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_wire::{ClusterKey, KeyRing, Opener, StreamOpener, WireConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(config) = WireConfig::new("fuzz", KeyRing::new(ClusterKey::from_bytes([3; 32]), vec![]))
    else {
        return;
    };
    let opener = Opener::new(&config);
    let _ = opener.open::<Vec<u8>>(data);
    let mut stream = StreamOpener::new(&opener);
    let mut reader: &[u8] = data;
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        // Read frames until the input runs out or one is rejected.
        while quorate_wire::read_frame::<Vec<u8>, _>(&mut reader, &mut stream)
            .await
            .is_ok()
        {}
    });
});
