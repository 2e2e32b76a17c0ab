//! `cargo xtask bench wire`: seal and open throughput of one frame size after another.
#![allow(clippy::print_stdout, clippy::unwrap_used, reason = "benchmark output")]

use std::fmt::Write as _;
use std::time::Instant;

use quorate_wire::{ClusterKey, KeyRing, MessageKind, Opener, Sealer, WireConfig};

fn main() {
    let config = WireConfig::new(
        "bench",
        KeyRing::new(ClusterKey::from_bytes([7; 32]), vec![]),
    )
    .unwrap();
    let sealer = Sealer::new(&config);
    let mut report = String::from("quorate-wire: seal + open, one core\n");
    let _ = writeln!(
        report,
        "{:>10} {:>12} {:>12} {:>10}",
        "payload", "seal/s", "open/s", "MiB/s"
    );
    for size in [64usize, 256, 1024, 16 * 1024, 256 * 1024] {
        let payload = vec![0xabu8; size];
        let n = (64 * 1024 * 1024 / size).clamp(200, 200_000);
        let t = Instant::now();
        let frames: Vec<Vec<u8>> = (0..n)
            .map(|_| sealer.seal_bytes(MessageKind(1), &payload).unwrap())
            .collect();
        let seal = t.elapsed().as_secs_f64();
        // A fresh opener per size so the replay guard sees each frame once.
        let opener = Opener::new(&config);
        let t = Instant::now();
        for f in &frames {
            opener.open_raw(f).unwrap();
        }
        let open = t.elapsed().as_secs_f64();
        let _ = writeln!(
            report,
            "{size:>10} {:>12.0} {:>12.0} {:>10.1}",
            n as f64 / seal,
            n as f64 / open,
            (n * size) as f64 / open / (1024.0 * 1024.0)
        );
    }
    print!("{report}");
    if let Ok(path) = std::env::var("QUORATE_BENCH_OUT") {
        std::fs::write(path, report).unwrap();
    }
}
