//! `ferry cutover`: the client side. Asks the running `ferry run` (control socket) to cut
//! over, prints each step, runs the operator's `--then` command when PostgreSQL has become
//! authoritative, and reports the measured write-unavailability window. If this client dies
//! before the switch, the run process aborts and releases the fence.

use crate::cli::CutoverArgs;
use crate::control::{Client, Event, Request};
use ferry_core::state_dir::StateDir;
use std::process::ExitCode;

pub fn run(args: CutoverArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = StateDir::new(&args.state_dir);
        let mut client = Client::connect(&dir.control_socket()).await?;
        client
            .send(&Request::Cutover { full: args.full, max_lag_records: 1000, lag_wait_seconds: 120.0 })
            .await?;
        loop {
            match client.next_event().await? {
                None => anyhow::bail!("ferry run closed the connection during the cutover; check its log"),
                Some(Event::Step { step, message }) => println!("{step:>10}: {message}"),
                Some(Event::Switch { message }) => {
                    println!("{:>10}: {message}", "switch");
                    let (ok, output) = match &args.then {
                        None => (true, String::new()),
                        Some(cmd) => {
                            println!("{:>10}: running {cmd:?}", "switch");
                            let out = tokio::process::Command::new("sh").arg("-c").arg(cmd).output().await;
                            match out {
                                Ok(o) => {
                                    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                                    if !text.trim().is_empty() {
                                        println!("{}", text.trim_end());
                                    }
                                    (o.status.success(), format!("exit {}: {}", o.status, text.trim()))
                                }
                                Err(e) => (false, format!("could not run it: {e}")),
                            }
                        }
                    };
                    client.send(&Request::Switched { ok, output }).await?;
                }
                Some(Event::Done { detail }) => {
                    let window = detail.get("window_ms").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
                    let fenced_at = detail.get("fenced_at").and_then(|v| v.as_str()).unwrap_or("?");
                    println!("cut over: write-unavailability window {window:.1} ms (fence to done, fenced at {fenced_at}); SQLite stays fenced while ferry runs");
                    if let Some(phases) = detail.get("phases_ms").and_then(|v| v.as_object()) {
                        let parts: Vec<String> = phases.iter().map(|(k, v)| format!("{k} {:.1}", v.as_f64().unwrap_or(f64::NAN))).collect();
                        println!("{:>10}: {} (ms)", "window", parts.join(", "));
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                Some(Event::Error { message, fence_released }) => {
                    let after = if fence_released { "; the fence is released and the application stays on SQLite" } else { "" };
                    anyhow::bail!("cutover aborted: {message}{after}");
                }
            }
        }
    })
}
