//! `loadgen`: the two halves of a throughput comparison that runs in one
//! invocation on one machine (scripts/bench/throughput.sh).
//!
//! - `loadgen serve` is the baseline: plain hyper answering every request
//!   with a fixed product-sized JSON body, i.e. what serving costs without
//!   WebAssembly or storage.
//! - `loadgen run` keeps N keep-alive HTTP/1.1 connections busy for a fixed
//!   time on one thread (like `wrk -t1`), after a warm-up, and prints
//!   requests per second and latency percentiles as one JSON line.
//! - `loadgen scale` fills one tenant to growing sizes and times the API at
//!   each (scripts/bench/scale.sh; see `scale.rs`).

mod scale;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "HTTP load generator and hyper baseline for WasmShop benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a fixed JSON body on 127.0.0.1 (prints `Serving http://...`).
    Serve {
        /// Port to listen on; 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Load `url` and print one JSON line with the results.
    Run {
        /// The URL to GET (http only).
        #[arg(long)]
        url: String,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Unmeasured seconds before.
        #[arg(long, default_value_t = 3)]
        warmup: u64,
        /// Extra request headers, `name: value`.
        #[arg(long = "header")]
        headers: Vec<String>,
    },
    /// Fill one tenant of a running host to each size and time the API
    /// there (prints tables; the last lines compare sizes with targets).
    Scale(scale::ScaleArgs),
}

/// About the size of one product as the API returns it.
const BASELINE_BODY: &str = r#"{"id":"pen","name":"Fountain pen","description":"","price":12.5,"currency":"EUR","stock":100,"category":"office","version":1,"createdAt":"2026-11-25T00:00:00Z"}"#;

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { port } => serve(port),
        Command::Run {
            url,
            connections,
            seconds,
            warmup,
            headers,
        } => {
            let report = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(run(url, connections, warmup, seconds, headers))?;
            println!("{report}");
            Ok(())
        }
        Command::Scale(args) => scale::run(args),
    }
}

/// Two worker threads, as the host uses on this machine.
fn serve(port: u16) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("Serving http://{}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(BASELINE_BODY.as_bytes())))
                            .expect("a valid response"),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

struct Worker {
    latencies_us: Vec<u32>,
    errors: u64,
}

async fn run(
    url: String,
    connections: usize,
    warmup: u64,
    seconds: u64,
    headers: Vec<String>,
) -> anyhow::Result<serde_json::Value> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("--url {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url {url}: only http:// URLs are supported");
    }
    let authority = uri.authority().context("--url needs host:port")?.clone();
    let mut extra = Vec::new();
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("--header {h}: expected `name: value`"))?;
        extra.push((k.trim().to_string(), v.trim().to_string()));
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(warmup);
    let end = measure_from + Duration::from_secs(seconds);
    let local = tokio::task::LocalSet::new();
    let workers = local
        .run_until(async {
            let tasks: Vec<_> = (0..connections)
                .map(|_| {
                    let (uri, authority, extra) = (uri.clone(), authority.clone(), extra.clone());
                    tokio::task::spawn_local(async move {
                        connection(uri, authority, extra, measure_from, end).await
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await?);
            }
            anyhow::Ok(out)
        })
        .await?;
    let mut all: Vec<u32> = Vec::new();
    let mut errors = 0;
    for w in workers {
        let w = w?;
        all.extend(w.latencies_us);
        errors += w.errors;
    }
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    Ok(serde_json::json!({
        "url": url,
        "connections": connections,
        "seconds": seconds,
        "requests": all.len(),
        "errors": errors,
        "rps": (all.len() as f64 / seconds as f64).round(),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }))
}

/// One keep-alive connection sending GETs back to back until `end`; a
/// broken connection is counted as an error and reopened.
async fn connection(
    uri: hyper::Uri,
    authority: http::uri::Authority,
    headers: Vec<(String, String)>,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<Worker> {
    let mut w = Worker {
        latencies_us: Vec::new(),
        errors: 0,
    };
    'reconnect: while Instant::now() < end {
        let stream = match tokio::net::TcpStream::connect(authority.as_str()).await {
            Ok(s) => s,
            Err(e) if w.errors == 0 && w.latencies_us.is_empty() => {
                return Err(e).with_context(|| format!("connecting to {authority}"));
            }
            Err(_) => {
                w.errors += 1;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
        tokio::task::spawn_local(conn);
        loop {
            let now = Instant::now();
            if now >= end {
                break 'reconnect;
            }
            let mut req = Request::get(uri.clone()).header("host", authority.as_str());
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            let req = req.body(Empty::new())?;
            let ok = match sender.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.into_body().collect().await {
                        Ok(_) => status.is_success(),
                        Err(_) => false,
                    }
                }
                Err(_) => {
                    w.errors += 1;
                    continue 'reconnect;
                }
            };
            if now >= measure_from {
                if ok {
                    w.latencies_us
                        .push(now.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    w.errors += 1;
                }
            }
        }
    }
    Ok(w)
}
