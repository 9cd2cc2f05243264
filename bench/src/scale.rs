//! `loadgen scale`: does a request cost the same whatever one tenant holds?
//! Driven by scripts/bench/scale.sh, which builds and starts the host; this
//! fills ONE tenant with products and orders up to each size in turn and,
//! at each size, times the requests a user makes, reads the largest value
//! the embedded store holds, and measures creates/s of 32 concurrent
//! writers in that tenant against 32 writers spread over 32 tenants.
//!
//! A second, *reference* tenant is filled once to the smallest size and
//! its latency rows are measured again at every size, each right after the
//! same row of the filled tenant. Rows minutes apart on a shared machine
//! differ by up to ~40% with nothing changed (two runs of one build gave
//! 1 and 7 missed targets), so the last table compares the filled tenant
//! with the reference measured in the same minute, on the same database
//! and process: what one tenant holds, with the machine's drift and the
//! database file's growth taken out.
//!
//! Shapes and units:
//! - latency rows: `--samples` sequential requests on ONE keep-alive
//!   connection after `--warmup-samples` untimed ones, each timed on its
//!   own (send → whole body read), reported
//!   as median and p99 in milliseconds; rows that create things use fresh
//!   ids, so no request is a replay;
//! - largest stored value: bytes of the longest `value` in the embedded
//!   SQLite `kv` table (host/src/backends/embedded/mod.rs holds its schema),
//!   read through a read-only connection while the host runs;
//! - creates/s: successful `POST /api/products` per second of the
//!   measured window, after a warm-up.
//!
//! The fill is idempotent: ids are chosen here (`p<n>`, `o<n>`), so a
//! create retried after a 5xx or a dropped connection that did land
//! answers 409 `…-exists`, which counts as done.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Options of `loadgen scale`; every one has a default that matches the
/// targets of scripts/bench/scale.sh.
#[derive(clap::Args)]
pub struct ScaleArgs {
    /// Base URL of a running host, e.g. http://127.0.0.1:3000 (http only).
    #[arg(long)]
    url: String,
    /// The host's embedded database (`<data-dir>/wasmshop.db`), opened
    /// read-only for the largest stored value and the event backlog.
    #[arg(long)]
    db: PathBuf,
    /// Products AND orders the tenant holds at each measuring point,
    /// ascending, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    sizes: Vec<u64>,
    /// The filled tenant (`X-Tenant-Id`).
    #[arg(long, default_value = "scale")]
    tenant: String,
    /// Timed requests per latency row.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Untimed requests before each latency row's samples (fresh
    /// instances and caches settle; rows that create use fresh ids here too).
    #[arg(long, default_value_t = 20)]
    warmup_samples: usize,
    /// Concurrent connections while filling.
    #[arg(long, default_value_t = 32)]
    fill_connections: usize,
    /// Concurrent writers in the creates/s rows.
    #[arg(long, default_value_t = 32)]
    writers: usize,
    /// Measured seconds of each creates/s row (after `--writer-warmup`).
    #[arg(long, default_value_t = 5)]
    writer_seconds: u64,
    /// Unmeasured seconds before each creates/s row.
    #[arg(long, default_value_t = 1)]
    writer_warmup: u64,
    /// Distinct product categories (`cat-0` …); the filtered product page
    /// asks for `cat-1`.
    #[arg(long, default_value_t = 10)]
    categories: u64,
    /// Distinct customers (`c-0` …); the filtered order page asks for `c-1`.
    /// 10, like the categories, so that at the smallest size (1,000 orders)
    /// `c-1` has 100 orders and its first page does the same work as at
    /// every other size (10 items and a next link); with 100 customers it
    /// had exactly 10, a last page without a next link, and the row's
    /// baseline measured less work than its later sizes.
    #[arg(long, default_value_t = 10)]
    customers: u64,
    /// Longest wait, in seconds, for queued event deliveries to drain
    /// before measuring (the fill leaves many behind).
    #[arg(long, default_value_t = 300)]
    drain_seconds: u64,
    /// Stop everything after this many minutes (exit code 1), so an
    /// unattended run ends even if the host slows to a crawl.
    #[arg(long, default_value_t = 180)]
    max_minutes: u64,
}

/// One request never waits longer than this (the host's own request
/// timeout is 30 s by default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per fill item on a 5xx or a transport error.
const FILL_ATTEMPTS: u32 = 10;
/// Stock of every filled product: far more than the orders will take.
const FILL_STOCK: u64 = 1_000_000_000;
/// The value size the storage layout promises never to exceed
/// (docs/storage-layout.md).
const VALUE_LIMIT: u64 = 64 * 1024;
/// Largest acceptable growth of a row between the smallest and the
/// largest size.
const GROWTH_TARGET: f64 = 1.3;
/// Smallest acceptable creates/s of one tenant relative to 32 tenants.
const TENANT_RATIO_TARGET: f64 = 0.7;

/// Runs the whole benchmark on one thread (the other core is the host's).
pub fn run(args: ScaleArgs) -> anyhow::Result<()> {
    let uri: hyper::Uri = args
        .url
        .parse()
        .with_context(|| format!("--url {}: not a URL", args.url))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url {}: only http:// URLs are supported", args.url);
    }
    let authority = uri
        .authority()
        .with_context(|| format!("--url {}: needs host:port", args.url))?
        .to_string();
    if args.sizes.is_empty() || args.sizes.windows(2).any(|w| w[0] >= w[1]) {
        bail!(
            "--sizes {:?}: give one or more sizes in ascending order, e.g. 1000,10000,100000",
            args.sizes
        );
    }
    if args.sizes[0] == 0 || args.samples == 0 || args.writers == 0 {
        bail!("--sizes, --samples and --writers must be at least 1");
    }
    if !args.db.exists() {
        bail!(
            "--db {}: no such file; pass the wasmshop.db of the host's --data-dir",
            args.db.display()
        );
    }
    let max = Duration::from_secs(args.max_minutes * 60);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let bench = Bench {
        authority,
        filled: Tenant::new(args.tenant.clone()),
        reference: Tenant::new(format!("{}-reference", args.tenant)),
        args,
        rng: Cell::new(0x5eed),
    };
    let all = local.run_until(async { tokio::time::timeout(max, bench.all_sizes()).await });
    match rt.block_on(all) {
        Ok(result) => result,
        Err(_) => bail!(
            "stopped after --max-minutes {} (results so far are above); raise it or measure smaller sizes",
            max.as_secs() / 60
        ),
    }
}

/// The state of a run: the two tenants and the random picks.
struct Bench {
    authority: String,
    args: ScaleArgs,
    /// The tenant filled to each size in turn.
    filled: Tenant,
    /// The tenant filled once to the smallest size (module comment).
    reference: Tenant,
    rng: Cell<u64>,
}

/// What one tenant holds, and the next fill ids.
struct Tenant {
    name: String,
    /// Products in the tenant (fill, create rows and writers).
    products: Cell<u64>,
    /// Orders in the tenant.
    orders: Cell<u64>,
    /// Next `p<n>` of the fill; `p0..next_product` all exist.
    next_product: Cell<u64>,
    /// Next `o<n>` of the fill.
    next_order: Cell<u64>,
}

impl Tenant {
    fn new(name: String) -> Self {
        Tenant {
            name,
            products: Cell::new(0),
            orders: Cell::new(0),
            next_product: Cell::new(0),
            next_order: Cell::new(0),
        }
    }
}

/// What one size measured.
struct SizeResult {
    size: u64,
    rows: Vec<(&'static str, Stats)>,
    /// The same rows of the reference tenant, each measured right after.
    reference_rows: Vec<(&'static str, Stats)>,
    largest_value: u64,
    largest_key: String,
    one_tenant: Rate,
    many_tenants: Rate,
}

#[derive(Clone, Copy)]
struct Stats {
    median_ms: f64,
    p99_ms: f64,
    errors: u64,
}

#[derive(Clone, Copy)]
struct Rate {
    per_sec: f64,
    errors: u64,
}

impl Bench {
    async fn all_sizes(&self) -> anyhow::Result<()> {
        let mut results = Vec::new();
        for &size in &self.args.sizes {
            results.push(self.one_size(size).await?);
        }
        print_summary(&results);
        Ok(())
    }

    async fn one_size(&self, size: u64) -> anyhow::Result<SizeResult> {
        let started = Instant::now();
        let smallest = self.args.sizes[0];
        for (tenant, size) in [(&self.reference, smallest), (&self.filled, size)] {
            if tenant.products.get() < size {
                self.fill(tenant, Kind::Product, size - tenant.products.get())
                    .await?;
            }
            if tenant.orders.get() < size {
                self.fill(tenant, Kind::Order, size - tenant.orders.get())
                    .await?;
            }
        }
        self.drain().await?;
        println!();
        println!(
            "== size {size}: tenant {:?} holds {} products and {} orders (reached in {:.0} s; load average {}) ==",
            self.filled.name,
            self.filled.products.get(),
            self.filled.orders.get(),
            started.elapsed().as_secs_f64(),
            load_average()
        );
        println!(
            "{:40} {:>10} {:>10} {:>7}   {:>10} {:>10}",
            "row", "median ms", "p99 ms", "errors", "reference", "(median ms)"
        );
        let (mut rows, mut reference_rows) = (Vec::new(), Vec::new());
        for row in Row::ALL {
            let stats = self.latency_row(&self.filled, row, size).await?;
            let reference = self.latency_row(&self.reference, row, size).await?;
            println!(
                "{:40} {:>10.2} {:>10.2} {:>7}   {:>10.2} {:>10}",
                row.name(),
                stats.median_ms,
                stats.p99_ms,
                stats.errors,
                reference.median_ms,
                if reference.errors > 0 {
                    format!("{} errors", reference.errors)
                } else {
                    String::new()
                }
            );
            rows.push((row.name(), stats));
            reference_rows.push((row.name(), reference));
        }
        let (largest_key, largest_value) = largest_value(&self.args.db)?;
        println!(
            "{:40} {:>10.1} KiB  ({largest_key})",
            "largest stored value",
            largest_value as f64 / 1024.0
        );
        let tenant = self.filled.name.clone();
        let one_tenant = self.writers(&[tenant], &format!("w{size}"), true).await?;
        let tenants: Vec<String> = (0..self.args.writers)
            .map(|k| format!("{}-w{size}-{k}", self.args.tenant))
            .collect();
        let many_tenants = self.writers(&tenants, &format!("w{size}"), false).await?;
        let w = self.args.writers;
        for (label, r) in [
            (format!("creates/s, {w} writers, 1 tenant"), one_tenant),
            (format!("creates/s, {w} writers, {w} tenants"), many_tenants),
        ] {
            println!("{label:40} {:>10.0}  (errors {})", r.per_sec, r.errors);
        }
        println!(
            "{:40} {:>10.2}",
            "one-tenant / many-tenant creates/s",
            ratio(one_tenant.per_sec, many_tenants.per_sec)
        );
        Ok(SizeResult {
            size,
            rows,
            reference_rows,
            largest_value,
            largest_key,
            one_tenant,
            many_tenants,
        })
    }

    fn random(&self, below: u64) -> u64 {
        // splitmix64: deterministic picks, no dependency.
        let mut z = self.rng.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.rng.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % below.max(1)
    }

    /// Adds `count` products or orders with `--fill-connections` workers,
    /// printing progress to stderr every 10 s.
    async fn fill(&self, tenant: &Tenant, kind: Kind, count: u64) -> anyhow::Result<()> {
        let (next, total) = match kind {
            Kind::Product => (&tenant.next_product, &tenant.products),
            Kind::Order => (&tenant.next_order, &tenant.orders),
        };
        let from = next.get();
        let to = from + count;
        let cursor = Rc::new(Cell::new(from));
        let done = Rc::new(Cell::new(0u64));
        let retries = Rc::new(Cell::new(0u64));
        let started = Instant::now();
        let products = tenant.next_product.get();
        if kind == Kind::Order && products == 0 {
            bail!("orders need products; the fill creates products first");
        }
        let jobs: Vec<_> = (0..self.args.fill_connections.max(1))
            .map(|_| {
                let (cursor, done, retries) = (cursor.clone(), done.clone(), retries.clone());
                let mut conn = Conn::new(&self.authority);
                let tenant = tenant.name.clone();
                let (categories, customers) = (self.args.categories, self.args.customers);
                // The path and body that create fill item `n`; orders name
                // product `p<n % products>`, so they spread over every product.
                let make = move |n| match kind {
                    Kind::Product => (
                        "/api/products",
                        product_json(&format!("p{n}"), n, categories),
                    ),
                    Kind::Order => (
                        "/api/orders",
                        order_json(&format!("o{n}"), n % customers.max(1), n % products),
                    ),
                };
                tokio::task::spawn_local(async move {
                    loop {
                        let n = cursor.get();
                        if n >= to {
                            return anyhow::Ok(());
                        }
                        cursor.set(n + 1);
                        let (path, body) = make(n);
                        let tries = create_with_retry(&mut conn, &tenant, path, &body).await?;
                        retries.set(retries.get() + u64::from(tries - 1));
                        done.set(done.get() + 1);
                    }
                })
            })
            .collect();
        let progress = {
            let done = done.clone();
            let retries = retries.clone();
            tokio::task::spawn_local(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let d = done.get();
                    let rate = d as f64 / started.elapsed().as_secs_f64();
                    eprintln!(
                        "  filling {}: {d}/{count}, {rate:.0}/s, {} retries, about {:.0} s left",
                        kind.plural(),
                        retries.get(),
                        (count - d.min(count)) as f64 / rate.max(0.001)
                    );
                }
            })
        };
        let mut failure = None;
        for job in jobs {
            match job.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // Stop the other workers at once, keep the first cause.
                    cursor.set(to);
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    failure.get_or_insert(e.into());
                }
            }
        }
        progress.abort();
        if let Some(e) = failure {
            return Err(e.context(format!("filling {}", kind.plural())));
        }
        next.set(to);
        total.set(total.get() + count);
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "  filled {count} {} in {secs:.1} s ({:.0}/s, {} retries)",
            kind.plural(),
            count as f64 / secs,
            retries.get()
        );
        Ok(())
    }

    /// A fresh product for the create row: like a filled one, another id.
    fn measured_product(&self, size: u64, i: usize) -> String {
        product_json(
            &format!("m{size}-p{i}"),
            self.random(1000),
            self.args.categories,
        )
    }

    /// Waits until the host has delivered the events the fill queued (the
    /// `deliveries` table is empty), so the rows measure requests and not
    /// the backlog; gives up after `--drain-seconds` with a warning.
    async fn drain(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last_print = Instant::now();
        loop {
            let pending = pending_deliveries(&self.args.db)?;
            if pending == 0 {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(self.args.drain_seconds) {
                eprintln!(
                    "  warning: {pending} event deliveries still queued after --drain-seconds {}; measuring anyway",
                    self.args.drain_seconds
                );
                return Ok(());
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                eprintln!("  waiting for {pending} queued event deliveries");
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `--warmup-samples` untimed, then `--samples` timed sequential
    /// requests of `row` on one connection. A timed request that fails or
    /// answers another status is an error, not a sample.
    async fn latency_row(&self, of: &Tenant, row: Row, size: u64) -> anyhow::Result<Stats> {
        let mut conn = Conn::new(&self.authority);
        let tenant = of.name.as_str();
        let filled = of.next_product.get();
        let mut times = Vec::with_capacity(self.args.samples);
        let mut created = 0u64;
        let mut errors = 0;
        let warmup = self.args.warmup_samples;
        for i in 0..warmup + self.args.samples {
            let timed = i >= warmup;
            let (method, path, headers, body, expect) = match row {
                Row::CreateProduct => {
                    let body = self.measured_product(size, i);
                    (
                        Method::POST,
                        "/api/products".into(),
                        vec![],
                        Some(body),
                        201,
                    )
                }
                Row::ReadProduct => {
                    let path = format!("/api/products/p{}", self.random(filled));
                    (Method::GET, path, vec![], None, 200)
                }
                Row::ProductsPage => (
                    Method::GET,
                    "/api/products?limit=10".into(),
                    vec![],
                    None,
                    200,
                ),
                Row::ProductsByCategory => (
                    Method::GET,
                    "/api/products?category=cat-1&limit=10".into(),
                    vec![],
                    None,
                    200,
                ),
                Row::UpdateProduct => {
                    let path = format!("/api/products/p{}", self.random(filled));
                    // Untimed: the ETag the timed PUT must match.
                    let current = conn.send(Method::GET, &path, tenant, &[], None).await;
                    let etag = match current {
                        Ok(r) if r.status == 200 => r.etag.unwrap_or_default(),
                        _ => {
                            errors += u64::from(timed);
                            continue;
                        }
                    };
                    let body =
                        serde_json::json!({"description": format!("Revision {i} at size {size}.")})
                            .to_string();
                    (Method::PUT, path, vec![("if-match", etag)], Some(body), 200)
                }
                Row::PlaceOrder => {
                    let customer = self.random(self.args.customers);
                    let body = order_json(&format!("m{size}-o{i}"), customer, self.random(filled));
                    (Method::POST, "/api/orders".into(), vec![], Some(body), 201)
                }
                Row::OrdersPage => (
                    Method::GET,
                    "/api/orders?limit=10".into(),
                    vec![],
                    None,
                    200,
                ),
                Row::OrdersByStatus => (
                    Method::GET,
                    "/api/orders?status=Pending&limit=10".into(),
                    vec![],
                    None,
                    200,
                ),
                Row::OrdersByCustomer => (
                    Method::GET,
                    "/api/orders?customerId=c-1&limit=10".into(),
                    vec![],
                    None,
                    200,
                ),
            };
            let start = Instant::now();
            let reply = conn.send(method, &path, tenant, &headers, body).await;
            let elapsed = start.elapsed();
            match reply {
                Ok(r) if r.status == expect => {
                    created += 1;
                    if timed {
                        times.push(elapsed);
                    }
                }
                Ok(r) if !timed => {
                    eprintln!(
                        "  {} (warm-up): unexpected answer {} (wanted {expect}): {}",
                        row.name(),
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    );
                }
                Err(e) if !timed => eprintln!("  {} (warm-up): request failed: {e:#}", row.name()),
                Ok(r) => {
                    errors += 1;
                    if errors == 1 {
                        eprintln!(
                            "  {}: first unexpected answer {} (wanted {expect}): {}",
                            row.name(),
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        );
                    }
                }
                Err(e) => {
                    errors += 1;
                    if errors == 1 {
                        eprintln!("  {}: first failed request: {e:#}", row.name());
                    }
                }
            }
        }
        match row {
            Row::CreateProduct => of.products.set(of.products.get() + created),
            Row::PlaceOrder => of.orders.set(of.orders.get() + created),
            _ => {}
        }
        times.sort_unstable();
        Ok(Stats {
            median_ms: percentile(&times, 0.50),
            p99_ms: percentile(&times, 0.99),
            errors,
        })
    }

    /// `--writers` connections creating products back to back, writer `k`
    /// in `tenants[k % len]`; returns the successful creates per second of
    /// the measured window. `filled` says whether `tenants` is the filled
    /// tenant, whose product count then grows.
    async fn writers(
        &self,
        tenants: &[String],
        prefix: &str,
        filled: bool,
    ) -> anyhow::Result<Rate> {
        let measure_from = Instant::now() + Duration::from_secs(self.args.writer_warmup);
        let end = measure_from + Duration::from_secs(self.args.writer_seconds);
        let label = if filled { "1" } else { "n" };
        let jobs: Vec<_> = (0..self.args.writers)
            .map(|k| {
                let tenant = tenants[k % tenants.len()].clone();
                let mut conn = Conn::new(&self.authority);
                let categories = self.args.categories;
                let prefix = format!("{prefix}{label}-{k}");
                tokio::task::spawn_local(async move {
                    let (mut ok, mut measured, mut errors) = (0u64, 0u64, 0u64);
                    let mut i = 0u64;
                    while Instant::now() < end {
                        let id = format!("{prefix}-{i}");
                        i += 1;
                        let body = serde_json::json!({
                            "id": id,
                            "name": format!("Writer product {i}"),
                            "price": 9.99,
                            "stock": 10,
                            "category": format!("cat-{}", i % categories.max(1)),
                        })
                        .to_string();
                        let start = Instant::now();
                        let reply = conn
                            .send(Method::POST, "/api/products", &tenant, &[], Some(body))
                            .await;
                        let created = matches!(&reply, Ok(r) if r.status == 201);
                        ok += u64::from(created);
                        if start >= measure_from && Instant::now() <= end {
                            if created {
                                measured += 1;
                            } else {
                                errors += 1;
                            }
                        }
                    }
                    (ok, measured, errors)
                })
            })
            .collect();
        let (mut ok, mut measured, mut errors) = (0, 0, 0);
        for job in jobs {
            let (o, m, e) = job.await?;
            ok += o;
            measured += m;
            errors += e;
        }
        if filled {
            self.filled.products.set(self.filled.products.get() + ok);
        }
        Ok(Rate {
            per_sec: measured as f64 / self.args.writer_seconds.max(1) as f64,
            errors,
        })
    }
}

/// A product as the fill creates it: plenty of stock, `n` picks its
/// price and its category among `categories`.
fn product_json(id: &str, n: u64, categories: u64) -> String {
    serde_json::json!({
        "id": id,
        "name": format!("Product {n}"),
        "description": "A product of the scale benchmark.",
        "price": (100 + (n % 50_000)) as f64 / 100.0,
        "stock": FILL_STOCK,
        "category": format!("cat-{}", n % categories.max(1)),
    })
    .to_string()
}

/// An order of one unit of product `p<product>` for customer `c-<customer>`.
fn order_json(id: &str, customer: u64, product: u64) -> String {
    serde_json::json!({
        "id": id,
        "customerId": format!("c-{customer}"),
        "items": [{"productId": format!("p{product}"), "quantity": 1}],
    })
    .to_string()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Product,
    Order,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Product => "products",
            Kind::Order => "orders",
        }
    }
}

/// The timed requests, in the order they run at each size.
#[derive(Clone, Copy)]
enum Row {
    CreateProduct,
    ReadProduct,
    ProductsPage,
    ProductsByCategory,
    UpdateProduct,
    PlaceOrder,
    OrdersPage,
    OrdersByStatus,
    OrdersByCustomer,
}

impl Row {
    const ALL: [Row; 9] = [
        Row::CreateProduct,
        Row::ReadProduct,
        Row::ProductsPage,
        Row::ProductsByCategory,
        Row::UpdateProduct,
        Row::PlaceOrder,
        Row::OrdersPage,
        Row::OrdersByStatus,
        Row::OrdersByCustomer,
    ];

    fn name(self) -> &'static str {
        match self {
            Row::CreateProduct => "create product",
            Row::ReadProduct => "read product",
            Row::ProductsPage => "products ?limit=10",
            Row::ProductsByCategory => "products ?category=cat-1&limit=10",
            Row::UpdateProduct => "update product (PUT, If-Match)",
            Row::PlaceOrder => "place order (1 item)",
            Row::OrdersPage => "orders ?limit=10",
            Row::OrdersByStatus => "orders ?status=Pending&limit=10",
            Row::OrdersByCustomer => "orders ?customerId=c-1&limit=10",
        }
    }
}

/// Creates one fill item; a 409 `…-exists` means an earlier attempt
/// landed. Retries 5xx and transport errors with backoff; any other answer
/// is a failure of the benchmark's assumptions. Returns the attempts made.
async fn create_with_retry(
    conn: &mut Conn,
    tenant: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<u32> {
    let mut backoff = Duration::from_millis(50);
    let mut last = String::new();
    for attempt in 1..=FILL_ATTEMPTS {
        match conn
            .send(Method::POST, path, tenant, &[], Some(body.to_string()))
            .await
        {
            Ok(r) if r.status == 201 => return Ok(attempt),
            Ok(r) if r.status == 409 && problem_type(&r.body).ends_with("-exists") => {
                return Ok(attempt);
            }
            Ok(r) if r.status >= 500 => {
                last = format!("{} {}", r.status, String::from_utf8_lossy(&r.body));
            }
            Ok(r) => bail!(
                "POST {path} {body} answered {} {}; the fill expects 201 (or 409 …-exists on a retry)",
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
    bail!(
        "POST {path} {body} still failing after {FILL_ATTEMPTS} attempts (last: {last}); check the host's log"
    )
}

fn problem_type(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// One answer: status, `ETag` and the whole body.
struct Reply {
    status: u16,
    etag: Option<String>,
    body: Bytes,
}

/// One keep-alive HTTP/1.1 connection, reopened after any failure.
struct Conn {
    authority: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(authority: &str) -> Self {
        Conn {
            authority: authority.to_string(),
            sender: None,
        }
    }

    /// Sends one request with `X-Tenant-Id: tenant` (and a JSON body when
    /// given), waiting at most [`REQUEST_TIMEOUT`]; on any error the
    /// connection is dropped so the next call opens a fresh one.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        tenant: &str,
        headers: &[(&str, String)],
        body: Option<String>,
    ) -> anyhow::Result<Reply> {
        let result = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.send_inner(method, path, tenant, headers, body),
        )
        .await
        .unwrap_or_else(|_| bail!("no answer within {} s", REQUEST_TIMEOUT.as_secs()));
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn send_inner(
        &mut self,
        method: Method,
        path: &str,
        tenant: &str,
        headers: &[(&str, String)],
        body: Option<String>,
    ) -> anyhow::Result<Reply> {
        let sender = match &mut self.sender {
            Some(s) if !s.is_closed() => s,
            _ => {
                let stream = tokio::net::TcpStream::connect(&self.authority)
                    .await
                    .with_context(|| format!("connecting to {}", self.authority))?;
                let _ = stream.set_nodelay(true);
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .context("HTTP handshake")?;
                tokio::task::spawn_local(conn);
                self.sender.insert(sender)
            }
        };
        sender.ready().await.context("connection closed")?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.authority.as_str())
            .header("x-tenant-id", tenant);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(b)
            }
            None => Bytes::new(),
        };
        let resp = sender.send_request(req.body(Full::new(body))?).await?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply { status, etag, body })
    }
}

/// The 1-minute load average (Linux), so a reader can tell a run that
/// shared the machine with other work; `?` where unknown.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Nearest-rank percentile of sorted `times`, in milliseconds; 0 when
/// nothing succeeded.
fn percentile(times: &[Duration], p: f64) -> f64 {
    if times.is_empty() {
        return 0.0;
    }
    let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
    times[i].as_secs_f64() * 1000.0
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

fn open_db(db: &std::path::Path) -> anyhow::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// The key (`<namespace> <key>`) and size in bytes of the longest value in
/// the embedded key-value table.
fn largest_value(db: &std::path::Path) -> anyhow::Result<(String, u64)> {
    open_db(db)?
        .query_row(
            "SELECT ns, key, length(CAST(value AS BLOB)) AS n FROM kv ORDER BY n DESC LIMIT 1",
            [],
            |r| {
                Ok((
                    format!("{} {}", r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                    r.get::<_, i64>(2)? as u64,
                ))
            },
        )
        .with_context(|| {
            format!(
                "reading the largest value of table kv in {}; is it the embedded backend's wasmshop.db?",
                db.display()
            )
        })
}

/// Event deliveries the host has queued and not yet completed.
fn pending_deliveries(db: &std::path::Path) -> anyhow::Result<i64> {
    open_db(db)?
        .query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
        .with_context(|| format!("counting queued deliveries in {}", db.display()))
}

/// Prints the column heads of a summary table whose figures are headed
/// `base` and `now`, aligned with [`summary_row`].
fn summary_header(base: &str, now: &str) {
    println!(
        "{:40} {base:>12} {now:>12} {:>7} {:>10}  verdict",
        "row", "ratio", "target"
    );
}

/// Prints one line of a summary table: the row's name, its two figures
/// (already formatted with their unit), their ratio, the target and the
/// verdict, then `note`; returns 1 when the target was missed, else 0.
fn summary_row(
    name: &str,
    (base, now): (String, String),
    ratio: f64,
    target: &str,
    ok: bool,
    note: &str,
) -> usize {
    let verdict = if ok { "ok" } else { "MISSED" };
    println!("{name:40} {base:>12} {now:>12} {ratio:>7.2} {target:>10}  {verdict}{note}");
    usize::from(!ok)
}

/// Prints one line per latency row: its median in the `(base, now)` pair,
/// their ratio and verdict; returns how many missed [`GROWTH_TARGET`].
fn latency_growth<'a>(
    pairs: impl Iterator<Item = (&'a (&'static str, Stats), &'a (&'static str, Stats))>,
) -> usize {
    let ms = |s: &Stats| format!("{:.2} ms", s.median_ms);
    pairs
        .map(|((name, base), (_, now))| {
            let g = ratio(now.median_ms, base.median_ms);
            let target = format!("<= {GROWTH_TARGET}");
            summary_row(
                name,
                (ms(base), ms(now)),
                g,
                &target,
                g <= GROWTH_TARGET,
                "",
            )
        })
        .sum()
}

/// The last lines: each row's growth from the smallest to the largest
/// size, and the one-tenant/many-tenant ratio, each next to its target.
fn print_summary(results: &[SizeResult]) {
    let (Some(first), Some(last)) = (results.first(), results.last()) else {
        return;
    };
    let (a, b) = (first.size, last.size);
    println!();
    println!("== growth from size {a} to size {b} (median, or creates/s slowdown) ==");
    summary_header(&format!("@{a}"), &format!("@{b}"));
    let per_sec = |r: &Rate| format!("{:.0}/s", r.per_sec);
    let growth_target = format!("<= {GROWTH_TARGET}");
    let mut missed = latency_growth(first.rows.iter().zip(&last.rows));
    for (name, s, l) in [
        ("creates/s, 1 tenant", &first.one_tenant, &last.one_tenant),
        (
            "creates/s, many tenants",
            &first.many_tenants,
            &last.many_tenants,
        ),
    ] {
        let g = ratio(s.per_sec, l.per_sec);
        missed += summary_row(
            name,
            (per_sec(s), per_sec(l)),
            g,
            &growth_target,
            g <= GROWTH_TARGET,
            "",
        );
    }
    let largest = results.iter().map(|r| r.largest_value).max().unwrap_or(0);
    let key = &results
        .iter()
        .max_by_key(|r| r.largest_value)
        .map(|r| r.largest_key.as_str())
        .unwrap_or("");
    let kib = |bytes: u64| format!("{:.1} KiB", bytes as f64 / 1024.0);
    missed += summary_row(
        "largest stored value",
        (kib(first.largest_value), kib(last.largest_value)),
        ratio(last.largest_value as f64, first.largest_value as f64),
        "<= 64 KiB",
        largest <= VALUE_LIMIT,
        &format!("  ({key})"),
    );
    let r = ratio(last.one_tenant.per_sec, last.many_tenants.per_sec);
    missed += summary_row(
        &format!("one-tenant / many-tenant creates/s @{b}"),
        (per_sec(&last.one_tenant), per_sec(&last.many_tenants)),
        r,
        &format!(">= {TENANT_RATIO_TARGET}"),
        r >= TENANT_RATIO_TARGET,
        "",
    );
    println!("targets missed: {missed} of {}", first.rows.len() + 4);

    // The same rows against the reference tenant of the same minute.
    println!();
    println!(
        "== at size {b}: the filled tenant against the {a}-item reference tenant, measured in the same minute =="
    );
    summary_header(&format!("ref @{a}"), &format!("@{b}"));
    let same_minute_missed = latency_growth(last.reference_rows.iter().zip(&last.rows));
    println!(
        "same-minute rows missed: {same_minute_missed} of {}",
        last.rows.len()
    );
}
