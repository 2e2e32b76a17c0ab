//! Times the linearizability checker on a generated 10,000-operation, 100-key history
//! (`cargo run --release -p quorate-sim --example check_bench -- [ops] [keys] [processes] [seed]`).

#![allow(clippy::print_stdout, reason = "a benchmark prints its numbers")]

fn main() -> Result<(), quorate_sim::SimError> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, d: u64| args.get(i).copied().unwrap_or(d);
    let (ops, keys, procs, seed) = (arg(0, 10_000), arg(1, 100), arg(2, 10), arg(3, 1));
    let r = quorate_sim::bench::check_bench(seed, ops as usize, keys as usize, procs as usize)?;
    println!(
        "check_bench: {} ops, {} keys, {} processes, seed {seed}: linearizable in {:.3} s \
         ({} steps); one stale read rejected in {:.3} s (window of {} ops)",
        r.ops,
        r.keys,
        r.processes,
        r.check_ok.as_secs_f64(),
        r.steps,
        r.check_violation.as_secs_f64(),
        r.window_len
    );
    Ok(())
}
