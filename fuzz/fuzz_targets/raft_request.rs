//! Fuzz target: arbitrary Raft-port payloads, sealed under the test key and bound to a server
//! challenge as a real connection's frames are, read back through the wire layer's stream
//! opener and decoded as `quorate_raft::network::Request` (the server's own decoding), so the
//! fuzzer reaches postcard decoding of AppendEntries, Vote, InstallSnapshot, forwarded
//! proposals, membership changes and client requests instead of stopping at the AEAD. A
//! decoded proposal is then applied to a fresh state machine twice (apply never panics).
//! Run: `cargo install cargo-fuzz && cd fuzz && cargo fuzz run --sanitizer none raft_request`.
#![no_main]

use std::future::Future;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use quorate_raft::machine::{Machine, MachineLimits};
use quorate_raft::network::{
    KIND_ADMIN_REQ, KIND_CLIENT_REQ, KIND_FORWARD_REQ, KIND_RAFT_REQ, Request,
};
use quorate_wire::{
    Challenge, ClusterKey, KeyRing, MessageKind, Opener, Sealer, StreamOpener, WireConfig,
    read_frame,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let Ok(wire) = WireConfig::new("fuzz", KeyRing::new(ClusterKey::from_bytes([3; 32]), vec![]))
    else {
        return;
    };
    let kind = match selector % 5 {
        0 => KIND_RAFT_REQ,
        1 => KIND_FORWARD_REQ,
        2 => KIND_CLIENT_REQ,
        3 => KIND_ADMIN_REQ,
        _ => MessageKind(u16::from(selector)),
    };
    let challenge = Challenge::from_bytes([9; 16]);
    let sealer = Sealer::bound(&wire, &challenge);
    let Ok(frame) = sealer.seal_bytes(kind, payload) else {
        return;
    };
    let mut opener = StreamOpener::bound(&Opener::new(&wire), &challenge);
    let mut reader: &[u8] = &frame;
    // Reading from a slice never waits: one poll finishes it.
    let read = read_frame::<Request, _>(&mut reader, &mut opener);
    let mut read = std::pin::pin!(read);
    let Poll::Ready(Ok((_, request))) = read
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    else {
        return;
    };
    if let Request::Propose(cmd) = &request {
        let mut machine = Machine::new(MachineLimits::lan());
        let _ = machine.apply(1, cmd);
        let _ = machine.apply(2, cmd);
        let _ = machine.snapshot();
    }
});
