//! mqtt-rpc-bench-limit: the benchmark's "limit" client. The same round trips as the Python
//! client (the Rust core's `RpcClient`, one request topic, `concurrency` callers each
//! calling in a loop) with no Python at all: what the broker and device allow.
//!
//! Prints one JSON object: calls, seconds, cpu_seconds, p50_ms, p99_ms (measured after a
//! warm-up) and peak_rss_mb, the format every benchmark client of `benches/` prints.

#![forbid(unsafe_code)]

use mqtt_rpc::{ClientOptions, ConnectionOptions, RpcClient};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type Client = RpcClient<oneshot::Sender<mqtt_rpc::Outcome>>;

struct Args {
    port: u16,
    topic: String,
    concurrency: usize,
    seconds: f64,
    warmup: f64,
    qos: u8,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: 1883,
        topic: "bench/device/control/set".into(),
        concurrency: 1,
        seconds: 2.0,
        warmup: 0.5,
        qos: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--port" => args.port = value.parse().map_err(|e| bad(&e))?,
            "--topic" => args.topic = value,
            "--concurrency" => args.concurrency = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => args.seconds = value.parse().map_err(|e| bad(&e))?,
            "--warmup" => args.warmup = value.parse().map_err(|e| bad(&e))?,
            "--qos" => args.qos = value.parse().map_err(|e| bad(&e))?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(args)
}

/// User plus system CPU time of this process, from /proc (Linux).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let Some(rest) = stat.rsplit(')').next() else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        // The kernel's USER_HZ is 100 on every Linux that Rust targets.
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// This process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
        .unwrap_or(f64::NAN)
}

/// Runs `concurrency` callers until `until`; returns every latency.
async fn run_callers(
    client: &Arc<Client>,
    args: &Args,
    until: Instant,
) -> Result<Vec<Duration>, String> {
    let mut callers = Vec::new();
    for _ in 0..args.concurrency {
        let client = client.clone();
        let topic = args.topic.clone();
        callers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                client
                    .call(
                        &topic,
                        br#"{"action": "GET_HEALTH_CHECK"}"#,
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                latencies.push(started.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut all = Vec::new();
    for caller in callers {
        all.extend(caller.await.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

fn percentile_ms(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

async fn run(args: Args) -> Result<String, String> {
    let client: Arc<Client> = Arc::new(
        RpcClient::new(ClientOptions {
            connection: ConnectionOptions {
                host: "127.0.0.1".into(),
                port: args.port,
                ..ConnectionOptions::default()
            },
            qos: args.qos,
            ..ClientOptions::default()
        })
        .map_err(|e| e.to_string())?,
    );
    client.connect().await.map_err(|e| e.to_string())?;
    let warm_until = Instant::now() + Duration::from_secs_f64(args.warmup);
    run_callers(&client, &args, warm_until).await?;

    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut latencies = run_callers(
        &client,
        &args,
        started + Duration::from_secs_f64(args.seconds),
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    client.close(Duration::ZERO).await;

    latencies.sort_unstable();
    Ok(format!(
        r#"{{"calls": {}, "seconds": {seconds:.6}, "cpu_seconds": {cpu:.4}, "p50_ms": {:.4}, "p99_ms": {:.4}, "peak_rss_mb": {:.2}}}"#,
        latencies.len(),
        percentile_ms(&latencies, 0.5),
        percentile_ms(&latencies, 0.99),
        peak_rss_mb(),
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("mqtt-rpc-bench-limit: {message}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("mqtt-rpc-bench-limit: {message}");
            ExitCode::FAILURE
        }
    }
}
