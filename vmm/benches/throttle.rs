//! Throttle accuracy: the CPU share a throttled vCPU actually gets, measured
//! from inside the guest, against the share asked for.
//!
//! Boots the ring-3 test guest (1 vCPU, stall meter only), measures its work
//! per 100 ms tick unthrottled, then for each throttle p sets
//! `PUT /vm/throttle` and compares the work per tick with (1 − p) of the
//! baseline. Prints a table; never fails on the numbers (the machine is
//! shared and noisy: read the error column as a trend).
//!
//! `cargo bench -p tern-vmm --bench throttle [-- --period-ms 10 --max-stall-ms N]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use serde_json::{json, Value};

fn arg(name: &str) -> Option<f64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// Work per 100 ms of guest time over the ticks that arrive in `span` after a
/// settle time. A throttled guest emits its ticks late (it cannot tick while
/// it sleeps), so the work is divided by the guest-clock time the ticks cover,
/// not by their number.
fn work_rate(vm: &common::TernVm, settle: Duration, span: Duration) -> f64 {
    std::thread::sleep(settle);
    let from = vm.events("tick").len();
    std::thread::sleep(span);
    let ticks: Vec<Value> = vm.events("tick").into_iter().skip(from).collect();
    let clock = |t: &Value| t["clock_ns"].as_f64();
    let (Some(first), Some(last)) = (ticks.first().and_then(clock), ticks.last().and_then(clock))
    else {
        return 0.0;
    };
    if last <= first {
        return 0.0;
    }
    // Each tick's work was done in the interval that ends at it.
    let work: f64 = ticks[1..].iter().filter_map(|t| t["work"].as_f64()).sum();
    work / ((last - first) / 1e8)
}

fn main() {
    common::require_kvm();
    let period_ms = arg("--period-ms").unwrap_or(10.0);
    let dir = common::scratch_dir("throttle-bench");
    let api = dir.join("api.sock");
    let vm = common::boot_testguest(1, "256M", "tern.test=idle", Some(&api), &[]);
    let baseline = work_rate(&vm, Duration::from_secs(1), Duration::from_secs(3));
    println!("throttle accuracy (guest-measured CPU share vs 1 − p), period {period_ms} ms");
    println!("baseline work per 100 ms tick: {baseline:.0}\n");
    println!(
        "{:>8}  {:>12}  {:>14}  {:>10}",
        "p %", "target share", "guest share", "error pts"
    );
    println!("{:-<8}  {:-<12}  {:-<14}  {:-<10}", "", "", "", "");
    let mut worst: f64 = 0.0;
    for p in [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0] {
        vm.api(
            "PUT",
            "/vm/throttle",
            Some(json!({ "percent": [p], "period_ms": period_ms })),
        )
        .expect("PUT /vm/throttle");
        // Long periods at high p need longer windows to average over.
        let span = if p >= 90.0 { 8 } else { 4 };
        let rate = work_rate(&vm, Duration::from_secs(1), Duration::from_secs(span));
        let target = 100.0 - p;
        let share = 100.0 * rate / baseline;
        worst = worst.max((share - target).abs());
        println!(
            "{p:>8.0}  {target:>12.1}  {share:>14.1}  {:>+10.1}",
            share - target
        );
    }
    println!("\nworst |error|: {worst:.1} points (target: within 2)");
    let _ = vm.api("PUT", "/vm/shutdown", None);
}
