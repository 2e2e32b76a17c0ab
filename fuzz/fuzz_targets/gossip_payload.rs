//! Fuzz target: arbitrary gossip payloads, sealed under the test key, through the wire layer
//! into the membership core, so the fuzzer reaches foca's and quorate's payload decoding
//! (SWIM messages, sync and join datagrams, gossiped records) instead of stopping at the AEAD.
//! Run: `cargo install cargo-fuzz && cd fuzz && cargo fuzz run --sanitizer none gossip_payload`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_membership::MembershipConfig;
use quorate_membership::engine::{Core, CoreConfig, KIND_JOIN, KIND_SWIM, KIND_SYNC};
use quorate_types::NodeId;
use quorate_wire::{ClusterKey, KeyRing, MessageKind, Opener, RECIPIENT_ANYONE, Sealer, WireConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let Ok(wire) = WireConfig::new("fuzz", KeyRing::new(ClusterKey::from_bytes([3; 32]), vec![]))
    else {
        return;
    };
    let Ok(id) = NodeId::new("n0") else {
        return;
    };
    let kind = match selector % 4 {
        0 => KIND_SWIM,
        1 => KIND_SYNC,
        2 => KIND_JOIN,
        _ => u16::from(selector),
    };
    let recipient: &[u8] = if kind == KIND_JOIN { RECIPIENT_ANYONE } else { b"n0" };
    // The sender is another process; the receiver is node n0.
    let sealer = Sealer::new(&wire);
    let opener = Opener::new(&wire);
    let Ok(frame) = sealer.seal_datagram_bytes(MessageKind(kind), payload, recipient) else {
        return;
    };
    let Ok(opened) = opener.open_datagram(&frame, recipient) else {
        return;
    };
    let mut config = MembershipConfig::new(id, "10.0.0.1:7946");
    config.bootstrap = true;
    config.rng_seed = Some(1);
    let addr = std::net::SocketAddr::from(([10, 0, 0, 1], 7946));
    let now = tokio::time::Instant::now();
    let Ok(mut core) = Core::new(CoreConfig::from_config(&config, addr, 1_000), now) else {
        return;
    };
    let from = std::net::SocketAddr::from(([10, 0, 0, 2], 7946));
    // Twice: the second time sees the state the first one left.
    core.handle_packet(from, opened.kind.0, &opened.payload, now);
    core.handle_packet(from, opened.kind.0, &opened.payload, now);
    let _ = core.snapshot();
    let _ = core.drain_outgoing();
});
