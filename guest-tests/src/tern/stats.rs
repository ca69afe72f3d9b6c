//! tern's migration statistics (`tern migrate --json`, `GET /migration`:
//! `migration::stats::MigrationStats`), read tolerantly: the runner uses
//! tern only through its CLI and API, so a field it does not know is
//! ignored and a field that is missing stays empty.

use serde::Deserialize;

use crate::vmm::{MigrationOutcome, MigrationStatus, ProgressSample};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Point {
    t_ms: f64,
    remaining_bytes: Option<u64>,
    transfer_bytes_per_sec: Option<f64>,
    dirty_bytes_per_sec: Option<f64>,
    throttle_pct: Vec<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Stats {
    phase: String,
    error: Option<String>,
    reason: String,
    total_ms: Option<f64>,
    setup_ms: Option<f64>,
    downtime_ms: Option<f64>,
    downtime_sent_ms: Option<f64>,
    rounds: Option<u64>,
    bytes_sent: Option<u64>,
    data_pages: Option<u64>,
    zero_pages: Option<u64>,
    max_precopy_stall_ms: Option<f64>,
    history: Vec<Point>,
}

/// The outcome `tern migrate --json` printed (`stdout`) with its exit
/// status. `started_at_ms`/`ended_at_ms` are the runner's clock.
pub fn outcome(
    stdout: &str,
    exit_ok: bool,
    budget_s: f64,
    started_at_ms: f64,
    ended_at_ms: f64,
) -> MigrationOutcome {
    let value: serde_json::Value = match serde_json::from_str(stdout.trim()) {
        Ok(v) => v,
        Err(e) => {
            let reason = format!(
                "tern migrate printed no statistics ({e}); exit {}; output: {}",
                if exit_ok { "0" } else { "non-zero" },
                stdout.trim()
            );
            return MigrationOutcome::bare(
                MigrationStatus::Failed { reason },
                started_at_ms,
                ended_at_ms,
            );
        }
    };
    let stats: Stats = serde_json::from_value(value.clone()).unwrap_or_default();
    let why = stats
        .error
        .clone()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| stats.reason.clone());
    let status = match (stats.phase.as_str(), exit_ok) {
        ("completed", true) => MigrationStatus::Completed,
        ("aborted", _) => MigrationStatus::DidNotConverge {
            after_s: stats.total_ms.map_or(budget_s, |t| t / 1e3),
            reason: why,
        },
        (phase, ok) => MigrationStatus::Failed {
            reason: format!(
                "phase {phase:?}, exit {}: {why}",
                if ok { "0" } else { "non-zero" }
            ),
        },
    };
    let progress: Vec<ProgressSample> = stats
        .history
        .iter()
        .map(|p| ProgressSample {
            t_ms: p.t_ms,
            remaining_bytes: p.remaining_bytes,
            transfer_bytes_per_sec: p.transfer_bytes_per_sec,
            dirty_bytes_per_sec: p.dirty_bytes_per_sec,
            throttle_pct: p.throttle_pct.clone(),
        })
        .collect();
    let max_throttle_pct = progress
        .iter()
        .flat_map(|p| p.throttle_pct.iter().copied())
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    let mut notes = Vec::new();
    if let Some(s) = stats.max_precopy_stall_ms.filter(|s| *s > 0.0) {
        notes.push(format!("tern: longest pre-copy stall it caused {s:.1} ms"));
    }
    if !stats.reason.is_empty() {
        notes.push(format!("tern: {}", stats.reason));
    }
    MigrationOutcome {
        status,
        started_at_ms,
        ended_at_ms,
        total_ms: stats.total_ms,
        setup_ms: stats.setup_ms,
        downtime_ms: stats.downtime_ms,
        downtime_sent_ms: stats.downtime_sent_ms,
        bytes_sent: stats.bytes_sent,
        rounds: stats.rounds,
        data_pages: stats.data_pages,
        zero_pages: stats.zero_pages,
        max_throttle_pct,
        progress,
        notes,
        vmm_stats: value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPLETED: &str = r#"{"bytes_sent":18510069,"data_pages":4514,"dirty_tracking":"ring","downtime_ms":2.88,"downtime_sent_ms":0.61,
      "error":null,"history":[{"t_ms":128.7,"round":0,"remaining_bytes":1380352,"transfer_bytes_per_sec":1.4e8,
      "dirty_bytes_per_sec":1.0e7,"throttle_pct":[0.0,35.5],"expected_downtime_ms":39.8}],"phase":"completed",
      "reason":"switchover","rounds":1,"setup_ms":1.02,"total_ms":131.6,"zero_pages":61391,"future_field":1}"#;

    #[test]
    fn completed_statistics() {
        let o = outcome(COMPLETED, true, 60.0, 10.0, 150.0);
        assert_eq!(o.status, MigrationStatus::Completed);
        assert_eq!(o.bytes_sent, Some(18510069));
        assert_eq!(o.downtime_ms, Some(2.88));
        assert_eq!(o.downtime_sent_ms, Some(0.61));
        assert_eq!(o.max_throttle_pct, Some(35.5));
        assert_eq!(o.progress[0].remaining_bytes, Some(1380352));
        assert_eq!(o.vmm_stats["future_field"], 1);
    }

    #[test]
    fn aborted_is_not_converged_and_garbage_is_a_failure() {
        let aborted = r#"{"phase":"aborted","total_ms":60000.0,"reason":"no convergence: dirty rate above link","error":"timeout"}"#;
        let o = outcome(aborted, false, 60.0, 0.0, 1.0);
        assert!(
            matches!(o.status, MigrationStatus::DidNotConverge { after_s, ref reason } if after_s == 60.0 && reason == "timeout")
        );
        let o = outcome("tern: error: cannot connect", false, 60.0, 0.0, 1.0);
        assert!(
            matches!(o.status, MigrationStatus::Failed { ref reason } if reason.contains("cannot connect"))
        );
        let failed = r#"{"phase":"failed","error":"cannot connect to tcp:127.0.0.1:1"}"#;
        let o = outcome(failed, false, 60.0, 0.0, 1.0);
        assert!(
            matches!(o.status, MigrationStatus::Failed { ref reason } if reason.contains("cannot connect"))
        );
    }
}
