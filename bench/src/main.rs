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
use http_body_util::{BodyExt, Full};
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
        /// The URL to load (http only).
        #[arg(long)]
        url: String,
        /// The request method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// A request body template (sent with `content-type:
        /// application/json`): `{n}` becomes a number unique to the request
        /// in this run, `{n%M}` that number modulo M (e.g. to spread orders
        /// over M products).
        #[arg(long)]
        body: Option<String>,
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
            method,
            body,
            connections,
            seconds,
            warmup,
            headers,
        } => {
            let method: hyper::Method = method
                .parse()
                .with_context(|| format!("--method {method}: not an HTTP method"))?;
            let load = Load {
                method,
                body: body.as_deref().map(Template::parse).transpose()?,
                headers,
            };
            let report = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(run(url, connections, warmup, seconds, load))?;
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
    /// Answers with a status other than 2xx (measured part only).
    non_2xx: u64,
    /// Broken connections and unreadable answers.
    errors: u64,
}

/// What each request of a run sends.
struct Load {
    method: hyper::Method,
    body: Option<Template>,
    headers: Vec<String>,
}

/// A body with `{n}` and `{n%M}` placeholders.
#[derive(Clone)]
struct Template(Vec<Part>);

#[derive(Clone)]
enum Part {
    Text(String),
    N,
    NMod(u64),
}

impl Template {
    fn parse(text: &str) -> anyhow::Result<Template> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("{n") {
            let tail = &rest[i + 2..];
            let (part, used) = if let Some(after) = tail.strip_prefix('}') {
                (Part::N, rest.len() - after.len())
            } else if let Some(m) = tail.strip_prefix('%') {
                let end = m
                    .find('}')
                    .with_context(|| format!("--body: `{{n%` without a closing brace in {text}"))?;
                let modulus: u64 = m[..end].parse().ok().filter(|m| *m > 0).with_context(|| {
                    format!(
                        "--body: `{{n%{}}}` needs a positive whole number",
                        &m[..end]
                    )
                })?;
                (Part::NMod(modulus), rest.len() - m[end + 1..].len())
            } else {
                parts.push(Part::Text(rest[..i + 2].to_string()));
                rest = tail;
                continue;
            };
            parts.push(Part::Text(rest[..i].to_string()));
            parts.push(part);
            rest = &rest[used..];
        }
        parts.push(Part::Text(rest.to_string()));
        Ok(Template(parts))
    }

    fn render(&self, n: u64) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::N => out.push_str(&n.to_string()),
                Part::NMod(m) => out.push_str(&(n % m).to_string()),
            }
        }
        out
    }
}

async fn run(
    url: String,
    connections: usize,
    warmup: u64,
    seconds: u64,
    load: Load,
) -> anyhow::Result<serde_json::Value> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("--url {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url {url}: only http:// URLs are supported");
    }
    let authority = uri.authority().context("--url needs host:port")?.clone();
    let mut extra = Vec::new();
    for h in &load.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("--header {h}: expected `name: value`"))?;
        extra.push((k.trim().to_string(), v.trim().to_string()));
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(warmup);
    let end = measure_from + Duration::from_secs(seconds);
    let (method, body) = (load.method, load.body);
    let counter = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let local = tokio::task::LocalSet::new();
    let workers = local
        .run_until(async {
            let tasks: Vec<_> = (0..connections)
                .map(|_| {
                    let request = RequestShape {
                        uri: uri.clone(),
                        authority: authority.clone(),
                        method: method.clone(),
                        body: body.clone(),
                        headers: extra.clone(),
                        counter: counter.clone(),
                    };
                    tokio::task::spawn_local(
                        async move { connection(request, measure_from, end).await },
                    )
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
    let (mut errors, mut non_2xx) = (0, 0);
    for w in workers {
        let w = w?;
        all.extend(w.latencies_us);
        errors += w.errors;
        non_2xx += w.non_2xx;
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
        "method": method.as_str(),
        "requests": all.len(),
        "non_2xx": non_2xx,
        "errors": errors,
        "rps": (all.len() as f64 / seconds as f64).round(),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }))
}

/// Everything one connection needs to build its requests.
struct RequestShape {
    uri: hyper::Uri,
    authority: http::uri::Authority,
    method: hyper::Method,
    body: Option<Template>,
    headers: Vec<(String, String)>,
    /// Requests started by every connection of the run (`{n}`).
    counter: std::rc::Rc<std::cell::Cell<u64>>,
}

/// One keep-alive connection sending requests back to back until `end`; a
/// broken connection is counted as an error and reopened. Every answer
/// counts in the latencies (what a client waited for); a non-2xx one also
/// in `non_2xx`.
async fn connection(
    shape: RequestShape,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<Worker> {
    let authority = &shape.authority;
    let mut w = Worker {
        latencies_us: Vec::new(),
        non_2xx: 0,
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
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
        tokio::task::spawn_local(conn);
        loop {
            let now = Instant::now();
            if now >= end {
                break 'reconnect;
            }
            let mut req = Request::builder()
                .method(shape.method.clone())
                .uri(shape.uri.clone())
                .header("host", authority.as_str());
            for (k, v) in &shape.headers {
                req = req.header(k, v);
            }
            let body = match &shape.body {
                Some(t) => {
                    let n = shape.counter.get();
                    shape.counter.set(n + 1);
                    req = req.header("content-type", "application/json");
                    Bytes::from(t.render(n))
                }
                None => Bytes::new(),
            };
            let req = req.body(Full::new(body))?;
            let status = match sender.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.into_body().collect().await {
                        Ok(_) => Some(status),
                        Err(_) => None,
                    }
                }
                Err(_) => {
                    if now >= measure_from {
                        w.errors += 1;
                    }
                    continue 'reconnect;
                }
            };
            if now >= measure_from {
                match status {
                    Some(status) => {
                        w.latencies_us
                            .push(now.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        if !status.is_success() {
                            w.non_2xx += 1;
                        }
                    }
                    None => w.errors += 1,
                }
            }
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::Template;

    #[test]
    fn a_body_template_numbers_each_request() {
        let t = Template::parse(r#"{"id":"p{n}","of":"x{n%3}","keep":"{n"}"#).unwrap();
        assert_eq!(t.render(7), r#"{"id":"p7","of":"x1","keep":"{n"}"#);
        assert!(Template::parse("{n%0}").is_err());
        assert!(Template::parse("{n%5").is_err());
    }
}
