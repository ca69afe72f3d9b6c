//! How `tern migrate` shows a migration to people: a one-line progress bar
//! while it runs, a summary at the end, the estimate as a table.

use serde_json::Value;

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

fn mib(bytes: f64) -> f64 {
    bytes / (1u64 << 20) as f64
}

/// One line: round, remaining, rates, throttle, expected downtime.
pub fn bar(v: &Value) -> String {
    let remaining = f(v, "remaining_bytes");
    let sent = f(v, "bytes_sent");
    let frac = if sent + remaining > 0.0 {
        sent / (sent + remaining)
    } else {
        0.0
    };
    let width = 20usize;
    let filled = ((frac * width as f64) as usize).min(width);
    let throttle = v["throttle_pct"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).fold(0.0, f64::max))
        .unwrap_or(0.0);
    let expected = v["expected_downtime_ms"]
        .as_f64()
        .map(|d| format!("{d:.0} ms"))
        .unwrap_or_else(|| "?".into());
    format!(
        "[{}{}] {:<10} round {:>3}  left {:>8.1} MiB  xfer {:>7.1} MiB/s  dirty {:>7.1} MiB/s  throttle {:>3.0}%  downtime≈{:<8}",
        "#".repeat(filled),
        " ".repeat(width - filled),
        v["phase"].as_str().unwrap_or("?"),
        v["rounds"].as_u64().unwrap_or(0),
        mib(remaining),
        mib(f(v, "transfer_bytes_per_sec")),
        mib(f(v, "dirty_bytes_per_sec")),
        throttle,
        expected
    )
}

/// The end-of-migration summary.
pub fn summary(v: &Value) -> String {
    let mut s = format!("migration {}", v["phase"].as_str().unwrap_or("?"));
    if let Some(to) = v["to"].as_str() {
        s.push_str(&format!(" to {to}"));
    }
    if let Some(e) = v["error"].as_str() {
        s.push_str(&format!(": {e}"));
    }
    s.push_str(&format!(
        "\n  total time   {:.0} ms\n  setup        {:.0} ms\n  downtime     {}\n  rounds       {}\n  bytes sent   {:.1} MiB\n  data pages   {}\n  zero pages   {} (not sent)",
        f(v, "total_ms"),
        f(v, "setup_ms"),
        match (v["downtime_ms"].as_f64(), v["downtime_sent_ms"].as_f64()) {
            (Some(d), Some(sent)) => format!("{d:.1} ms (everything sent after {sent:.1} ms)"),
            (Some(d), None) => format!("{d:.1} ms"),
            _ => "-".into(),
        },
        v["rounds"].as_u64().unwrap_or(0),
        mib(f(v, "bytes_sent")),
        v["data_pages"].as_u64().unwrap_or(0),
        v["zero_pages"].as_u64().unwrap_or(0),
    ));
    if let Some(d) = v["forced_expected_downtime_ms"].as_f64() {
        s.push_str(&format!("\n  forced; announced downtime {d:.1} ms"));
    }
    let cpu = &v["cpu_ms"];
    if let Some(l) = cpu["loop_ms"].as_f64() {
        s.push_str(&format!("\n  source CPU   {l:.0} ms (migration loop)"));
    }
    let drain = &v["drain"];
    if drain["attempts"].as_u64().unwrap_or(0) > 0 {
        s.push_str(&format!(
            "\n  drain        {} attempts, {} busy (EBUSY)",
            drain["attempts"], drain["busy"]
        ));
    }
    s
}

/// The `--estimate` table.
pub fn estimate_table(v: &Value) -> String {
    let mut s = format!(
        "sampled {:.1} s ({} dirty tracking): dirty rate {:.1} MiB/s, working set {:.1} MiB, non-zero memory {:.1} MiB\nlink {:.1} MiB/s ({}), max downtime {} ms\n",
        f(v, "sample_s"),
        v["dirty_tracking"].as_str().unwrap_or("?"),
        mib(f(v, "dirty_bytes_per_sec")),
        mib(f(v, "working_set_bytes")),
        mib(f(v, "nonzero_bytes")),
        mib(f(v, "link_bytes_per_sec")),
        v["link_source"].as_str().unwrap_or("?"),
        v["max_downtime_ms"],
    );
    if let Some(per) = v["vcpu_dirty_bytes_per_sec"].as_array() {
        let list: Vec<String> = per
            .iter()
            .map(|r| format!("{:.1}", mib(r.as_f64().unwrap_or(0.0))))
            .collect();
        s.push_str(&format!(
            "per vCPU dirty rate, MiB/s: [{}]\n",
            list.join(", ")
        ));
    }
    if let Some(rows) = v["predictions"].as_array() {
        s.push_str("aggression  converges  total time  downtime   max throttle  guest CPU lost\n");
        for r in rows {
            let downtime = r["downtime_ms"]
                .as_f64()
                .map(|d| format!("{d:>6.0} ms"))
                .unwrap_or_else(|| "     -   ".into());
            s.push_str(&format!(
                "{:>10.2}  {:>9}  {:>8.2} s  {}  {:>11.0}%  {:>11.2} vCPU-s\n",
                f(r, "aggression"),
                if r["converges"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                },
                f(r, "total_s"),
                downtime,
                f(r, "max_throttle_pct"),
                f(r, "cpu_lost_vcpu_s"),
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_summary_shows_the_source_cpu_when_reported() {
        let done = json!({
            "phase": "completed", "to": "tcp:h:1", "total_ms": 300.0, "setup_ms": 1.0,
            "downtime_ms": 2.5, "rounds": 1, "bytes_sent": 1048576, "data_pages": 256,
            "zero_pages": 0, "cpu_ms": {"loop_ms": 250.6}
        });
        let s = summary(&done);
        assert!(s.starts_with("migration completed to tcp:h:1"), "{s}");
        assert!(s.contains("source CPU   251 ms (migration loop)"), "{s}");
        let mut running = done.clone();
        running["cpu_ms"] = Value::Null;
        assert!(!summary(&running).contains("source CPU"));
    }
}
