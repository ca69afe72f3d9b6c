//! The `tern` command.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use vmm::api::client::call;
use vmm::cli::{parse_rate, Cli, Command, MigrateArgs};

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("tern: error: {msg}");
    ExitCode::FAILURE
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vmm::logger::init();
    match cli.command {
        Command::Run(args) => {
            let _raw = vmm::terminal::RawMode::enter_if_tty();
            match vmm::runner::run(&args) {
                Ok(reason) => {
                    drop(_raw);
                    let code = reason.exit_code();
                    if code == 0 {
                        eprintln!("tern: {reason}");
                    } else {
                        eprintln!("tern: error: {reason}");
                    }
                    ExitCode::from(code as u8)
                }
                Err(e) => {
                    drop(_raw);
                    fail(chain(&e))
                }
            }
        }
        Command::Migrate(args) => migrate(&args),
        Command::MigrateStatus(a) => match call(&a.api_socket, "GET", "/migration", None) {
            Ok(v) if a.json => print_json(&v),
            Ok(v) => {
                println!("{}", vmm::progress::summary(&v));
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::MigrateCancel(a) => simple(&a.api_socket, "DELETE", "/migration"),
        Command::Status(a) => match call(&a.api_socket, "GET", "/vm", None) {
            Ok(v) => print_json(&v),
            Err(e) => fail(e),
        },
        Command::Pause(a) => simple(&a.api_socket, "PUT", "/vm/pause"),
        Command::Resume(a) => simple(&a.api_socket, "PUT", "/vm/resume"),
        Command::Shutdown(a) => simple(&a.api_socket, "PUT", "/vm/shutdown"),
    }
}

fn print_json(v: &Value) -> ExitCode {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    ExitCode::SUCCESS
}

fn simple(socket: &std::path::Path, method: &str, path: &str) -> ExitCode {
    match call(socket, method, path, None) {
        Ok(v) => print_json(&v),
        Err(e) => fail(e),
    }
}

fn migrate(a: &MigrateArgs) -> ExitCode {
    let max_bandwidth = match a.max_bandwidth.as_deref().map(parse_rate).transpose() {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    if a.estimate {
        let body = json!({
            "sample_s": a.sample,
            "bandwidth_bytes_per_sec": max_bandwidth,
            "max_downtime_ms": a.max_downtime,
            "max_throttle_pct": a.max_throttle,
        });
        return match call(&a.api_socket, "PUT", "/migration/estimate", Some(&body)) {
            Ok(v) if a.json => print_json(&v),
            Ok(v) => {
                println!("{}", vmm::progress::estimate_table(&v));
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    let Some(to) = a.to.as_deref() else {
        return fail("--to is required");
    };
    let body = json!({
        "to": to,
        "max_downtime_ms": a.max_downtime,
        "max_bandwidth_bytes_per_sec": max_bandwidth,
        "timeout_s": a.timeout,
        "max_iterations": a.max_iterations,
        "aggression": a.aggression,
        "max_throttle_pct": a.max_throttle,
        "on_no_converge": a.on_no_converge,
        "no_throttle": a.no_throttle,
        "max_stall_ms": a.max_stall,
        "drain_window_ms": a.drain_window,
    });
    if let Err(e) = call(&a.api_socket, "PUT", "/migration", Some(&body)) {
        return fail(e);
    }
    let live = !a.json && std::io::stderr().is_terminal();
    let mut last = Value::Null;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        match call(&a.api_socket, "GET", "/migration", None) {
            Ok(v) => {
                if live {
                    eprint!("\r{}", vmm::progress::bar(&v));
                    let _ = std::io::stderr().flush();
                }
                let done = matches!(
                    v["phase"].as_str(),
                    Some("completed" | "failed" | "cancelled" | "aborted")
                );
                last = v;
                if done {
                    break;
                }
            }
            // The source tern exits once the guest runs on the destination.
            Err(_) if last["phase"] == "switchover" || last["phase"] == "active" => {
                last["phase"] = json!("completed");
                last["note"] =
                    json!("the source tern exited before its final statistics were read");
                break;
            }
            Err(e) => return fail(e),
        }
    }
    if live {
        eprintln!();
    }
    if a.json {
        print_json(&last);
    } else {
        println!("{}", vmm::progress::summary(&last));
    }
    if last["phase"] == "completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
