//! `make bench-service`: token lookup throughput and latency of the token
//! service on SQLite and on PostgreSQL, with 1,000 and 1,000,000 stored
//! connections, side by side in one run.
//!
//! For each backend and size: a fresh database, an app and a provider made
//! with the CLI, `authstamp bench-seed` for the connections (timed), then
//! `authstamp serve` and a closed-loop load of `POST /v1/token-lookup` for
//! uniformly random users from this process (CONCURRENCY requests in
//! flight), then the server's memory from /proc. The small and the large
//! cell of a backend run side by side and are measured in alternating
//! rounds, so that other load on the machine hits both alike. Results go to
//! `target/bench/service.json` and `target/bench/service.md`.
//!
//! `--quick`: 1,000 and 20,000 connections, fewer requests, every cell
//! still run (a smoke run for CI). `AUTHSTAMP_BIN` picks the binary
//! (default: `target/service/authstamp`, else `target/debug/authstamp`).
//!
//! `AUTHSTAMP_BIN_BASELINE`: a second binary (e.g. the last release) run on
//! the same cells in the same interleaved rounds, each with its own
//! database; the report adds its rows and the ratios candidate/baseline of
//! lookups/s and of the server's CPU time per lookup (utime + stime of the
//! token-service process from `/proc/<pid>/stat`, summed over the rounds).
//! `BENCH_SERVICE_REQUESTS` overrides the measured requests per cell.

use authstamp_e2e::postgres::TestPostgres;
use authstamp_e2e::process::{self, Process};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 32;
const PROVIDER: &str = "bench";

struct Plan {
    quick: bool,
    sizes: [u64; 2],
    requests: u64,
    warmup: u64,
}

/// Which binary a cell runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Candidate,
    Baseline,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Candidate => "candidate",
            Role::Baseline => "baseline",
        }
    }
}

fn baseline_binary() -> Option<PathBuf> {
    std::env::var_os("AUTHSTAMP_BIN_BASELINE").map(PathBuf::from)
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("AUTHSTAMP_BIN") {
        return PathBuf::from(path);
    }
    let root = authstamp_e2e::workspace_root();
    let service = root.join("target/service/authstamp");
    if service.is_file() {
        return service;
    }
    root.join("target/debug/authstamp")
}

/// Runs an `authstamp` CLI command on the store; its JSON output.
fn cli(bin: &Path, store: &Store, args: &[&str]) -> Value {
    let mut command = Command::new(bin);
    command
        .args(args)
        .arg("--data-dir")
        .arg(&store.data_dir)
        .env("AUTHSTAMP_MASTER_KEY", &store.master_key)
        .env("BENCH_CLIENT_SECRET", "bench-secret")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    if let Some(url) = &store.database_url {
        command.env("AUTHSTAMP_DATABASE_URL", url);
    }
    let out = command.output().expect("run authstamp");
    assert!(
        out.status.success(),
        "authstamp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("authstamp printed JSON")
}

struct Store {
    data_dir: PathBuf,
    database_url: Option<String>,
    master_key: String,
}

struct Server {
    process: Process,
    /// The filter listener (token lookups).
    url: String,
}

impl Server {
    fn start(bin: &Path, store: &Store, log_dir: &Path) -> Server {
        let mut command = Command::new(bin);
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--filter-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&store.data_dir)
            .env("AUTHSTAMP_MASTER_KEY", &store.master_key)
            .env(
                authstamp_e2e::FILTER_TOKEN_ENV,
                authstamp_e2e::filter_token(),
            )
            .env("RUST_LOG", "warn");
        if let Some(url) = &store.database_url {
            command.env("AUTHSTAMP_DATABASE_URL", url);
        }
        let mut process = Process::spawn("serve", command, log_dir, "listening on");
        let line = process.wait_for_line(Duration::from_secs(60));
        // The lookups go to the filter listener.
        let (_, url) = authstamp_e2e::process::service_urls(&line);
        Server { process, url }
    }

    /// (resident, peak resident) memory in MiB.
    fn memory_mib(&self) -> (f64, f64) {
        let pid = self.process.pid().unwrap_or(0);
        let mib = |kib: Option<u64>| kib.unwrap_or(0) as f64 / 1024.0;
        (mib(process::rss_kib(pid)), mib(process::peak_rss_kib(pid)))
    }

    /// CPU time (user + system, all threads) the server has used so far.
    fn cpu_time(&self) -> Duration {
        let micros = self.process.pid().and_then(process::cpu_micros);
        Duration::from_micros(micros.unwrap_or(0))
    }
}

fn master_key() -> String {
    use base64::Engine;
    let mut key = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("urandom"),
        &mut key,
    )
    .expect("random");
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// One load: latencies in microseconds, errors, wall time.
struct Load {
    latencies_us: Vec<u64>,
    errors: u64,
    wall: Duration,
}

async fn load(url: &str, app_id: &str, app_key: &str, users: u64, requests: u64) -> Load {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let (http, next, errors) = (http.clone(), next.clone(), errors.clone());
        let endpoint = format!("{url}/v1/token-lookup");
        let (app_id, app_key) = (app_id.to_string(), app_key.to_string());
        tasks.spawn(async move {
            let mut rng: u64 =
                0x9E37_79B9_7F4A_7C15 ^ (worker as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                // xorshift64*: a uniformly random user.
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                let user = rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % users;
                let body = format!(r#"{{"provider":"{PROVIDER}","user":"u{user}"}}"#);
                let t = Instant::now();
                let response = http
                    .post(&endpoint)
                    .bearer_auth(authstamp_e2e::filter_token())
                    .header("x-authstamp-app", &app_id)
                    .header("x-authstamp-app-key", &app_key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let ok = match response {
                    Ok(r) => {
                        let status = r.status();
                        let _ = r.bytes().await;
                        status.is_success()
                    }
                    Err(_) => false,
                };
                latencies.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        });
    }
    let mut latencies_us: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    let wall = started.elapsed();
    latencies_us.sort_unstable();
    Load {
        latencies_us,
        errors: errors.load(Ordering::Relaxed),
        wall,
    }
}

fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

/// A seeded database with its server running.
struct Prepared {
    role: Role,
    backend: &'static str,
    connections: u64,
    store: Store,
    server: Server,
    app_id: String,
    app_key: String,
    seeded: Value,
    seed_wall: f64,
    idle_rss: f64,
    latencies_us: Vec<u64>,
    errors: u64,
    busy: Duration,
    cpu: Duration,
}

async fn prepare(
    (role, bin): (Role, &Path),
    plan: &Plan,
    backend: &'static str,
    connections: u64,
    pg: Option<&TestPostgres>,
    work: &Path,
) -> Prepared {
    let dir = work.join(format!("{backend}-{connections}-{}", role.as_str()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cell dir");
    let store = Store {
        data_dir: dir.join("data"),
        database_url: pg
            .map(|pg| pg.create_database(&format!("bench_{connections}_{}", role.as_str()))),
        master_key: master_key(),
    };
    let app = cli(bin, &store, &["app", "create", "--name", "bench"]);
    let app_id = app["app_id"].as_str().expect("app_id").to_string();
    let app_key = app["app_key"].as_str().expect("app_key").to_string();
    cli(
        bin,
        &store,
        &[
            "provider",
            "set",
            "--app",
            &app_id,
            "--provider",
            PROVIDER,
            "--client-id",
            "bench",
            "--client-secret-env",
            "BENCH_CLIENT_SECRET",
            "--authorize-url",
            "http://127.0.0.1:9/authorize",
            "--token-url",
            "http://127.0.0.1:9/token",
            "--api-base-url",
            "http://127.0.0.1:9/api",
        ],
    );
    let seed_started = Instant::now();
    let users = connections.to_string();
    let seeded = cli(
        bin,
        &store,
        &[
            "bench-seed",
            "--app",
            &app_id,
            "--provider",
            PROVIDER,
            "--users",
            &users,
            "--prefix",
            "u",
            "--batch",
            "50000",
        ],
    );
    let seed_wall = seed_started.elapsed().as_secs_f64();
    assert_eq!(seeded["inserted"].as_u64(), Some(connections));
    let server = Server::start(bin, &store, &dir);
    let (idle_rss, _) = server.memory_mib();
    let warm = load(&server.url, &app_id, &app_key, connections, plan.warmup).await;
    assert_eq!(
        warm.errors,
        0,
        "warm-up lookups failed; see {}",
        dir.display()
    );
    Prepared {
        role,
        backend,
        connections,
        store,
        server,
        app_id,
        app_key,
        seeded,
        seed_wall,
        idle_rss,
        latencies_us: Vec::new(),
        errors: 0,
        busy: Duration::ZERO,
        cpu: Duration::ZERO,
    }
}

/// Measures the cells of one backend (small and large, candidate and
/// baseline) in interleaved rounds, so that whatever else the machine does
/// hits all alike; every other round runs them in reverse order.
async fn measure_interleaved(plan: &Plan, cells: &mut [Prepared]) {
    let rounds = 4;
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..cells.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let cell = &mut cells[i];
            let cpu_before = cell.server.cpu_time();
            let l = load(
                &cell.server.url,
                &cell.app_id,
                &cell.app_key,
                cell.connections,
                plan.requests / rounds,
            )
            .await;
            cell.cpu += cell.server.cpu_time().saturating_sub(cpu_before);
            cell.latencies_us.extend(l.latencies_us);
            cell.errors += l.errors;
            cell.busy += l.wall;
        }
    }
}

fn finish(mut cell: Prepared, pg: Option<&TestPostgres>) -> Value {
    cell.latencies_us.sort_unstable();
    let (rss, peak_rss) = cell.server.memory_mib();
    let seed_secs = cell.seeded["millis"]
        .as_f64()
        .unwrap_or(cell.seed_wall * 1000.0)
        / 1000.0;
    let n = cell.latencies_us.len() as f64;
    let result = json!({
        "binary": cell.role.as_str(),
        "backend": cell.backend,
        "connections": cell.connections,
        "seed_seconds": round(seed_secs, 2),
        "seed_command_seconds": round(cell.seed_wall, 2),
        "seed_sealing_seconds": round(cell.seeded["seal_millis"].as_f64().unwrap_or(f64::NAN) / 1000.0, 2),
        "seed_rows_per_second": round(cell.connections as f64 / seed_secs, 0),
        "requests": cell.latencies_us.len(),
        "errors": cell.errors,
        "concurrency": CONCURRENCY,
        "throughput_rps": round(n / cell.busy.as_secs_f64(), 0),
        "cpu_us_per_lookup": round(cell.cpu.as_secs_f64() * 1e6 / n, 1),
        "p50_ms": round(percentile_ms(&cell.latencies_us, 50.0), 3),
        "p99_ms": round(percentile_ms(&cell.latencies_us, 99.0), 3),
        "rss_idle_mib": round(cell.idle_rss, 1),
        "rss_mib": round(rss, 1),
        "rss_peak_mib": round(peak_rss, 1),
    });
    eprintln!("{result}");
    drop(cell.server);
    if let Some(pg) = pg {
        // Free the disk: a million rows per cell add up.
        if let Some(name) = cell
            .store
            .database_url
            .as_deref()
            .and_then(|u| u.rsplit('/').next())
        {
            pg.psql("postgres", &format!("DROP DATABASE {name}"));
        }
    }
    let _ = std::fs::remove_dir_all(&cell.store.data_dir);
    result
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn markdown(
    cells: &[Value],
    ratios: &[Value],
    versus: &[Value],
    plan: &Plan,
    bins: &[(Role, PathBuf)],
) -> String {
    let mut out = String::new();
    let named: Vec<String> = bins
        .iter()
        .map(|(role, bin)| format!("{} `{}`", role.as_str(), bin.display()))
        .collect();
    out.push_str(&format!(
        "Token lookups (`POST /v1/token-lookup`, random users, {CONCURRENCY} in flight, {} measured requests per cell{}), {}.\n\n",
        plan.requests,
        if plan.quick { ", quick mode" } else { "" },
        named.join(", ")
    ));
    out.push_str("| binary | backend | connections | lookups/s | server CPU µs/lookup | p50 ms | p99 ms | errors | RSS MiB (peak) | seed s (rows/s) | of which sealing s |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for c in cells {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} |\n",
            c["binary"].as_str().unwrap_or(""),
            c["backend"].as_str().unwrap_or(""),
            c["connections"],
            c["throughput_rps"],
            c["cpu_us_per_lookup"],
            c["p50_ms"],
            c["p99_ms"],
            c["errors"],
            c["rss_mib"],
            c["rss_peak_mib"],
            c["seed_seconds"],
            c["seed_rows_per_second"],
            c["seed_sealing_seconds"],
        ));
    }
    out.push_str("\n| binary | backend | large/small | p50 ratio | p99 ratio | throughput ratio (small/large) | goal ≤ 1.5 |\n|---|---|---|---:|---:|---:|---|\n");
    for r in ratios {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r["binary"].as_str().unwrap_or(""),
            r["backend"].as_str().unwrap_or(""),
            r["sizes"].as_str().unwrap_or(""),
            r["p50_ratio"],
            r["p99_ratio"],
            r["throughput_ratio"],
            if r["meets_goal"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
        ));
    }
    if !versus.is_empty() {
        out.push_str("\n| backend | connections | lookups/s candidate/baseline | CPU per lookup candidate/baseline | p50 candidate/baseline |\n|---|---:|---:|---:|---:|\n");
        for v in versus {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                v["backend"].as_str().unwrap_or(""),
                v["connections"],
                v["throughput_ratio"],
                v["cpu_per_lookup_ratio"],
                v["p50_ratio"],
            ));
        }
    }
    out
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = if quick {
        Plan {
            quick,
            sizes: [1_000, 20_000],
            requests: 3_000,
            warmup: 500,
        }
    } else {
        Plan {
            quick,
            sizes: [1_000, 1_000_000],
            requests: 30_000,
            warmup: 3_000,
        }
    };
    let mut plan = plan;
    // More measured requests per cell, for a comparison on a noisy machine.
    if let Some(n) = std::env::var("BENCH_SERVICE_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        plan.requests = n;
    }
    let mut bins = vec![(Role::Candidate, binary())];
    bins.extend(baseline_binary().map(|bin| (Role::Baseline, bin)));
    for (_, bin) in &bins {
        assert!(bin.is_file(), "{} missing: run `make service` or `cargo build --profile service -p authstamp-token-service`", bin.display());
    }
    let root = authstamp_e2e::workspace_root();
    let out_dir = root.join("target/bench");
    let work = out_dir.join("service-work");
    std::fs::create_dir_all(&work).expect("bench dir");
    let pg = TestPostgres::start();
    let mut cells = Vec::new();
    for backend in ["sqlite", "postgres"] {
        let pg = (backend == "postgres").then_some(&pg);
        let mut prepared = Vec::new();
        for (role, bin) in &bins {
            for size in plan.sizes {
                prepared.push(prepare((*role, bin), &plan, backend, size, pg, &work).await);
            }
        }
        measure_interleaved(&plan, &mut prepared).await;
        for cell in prepared {
            cells.push(finish(cell, pg));
        }
    }
    drop(pg);
    let of = |role: Role, backend: &str, size: u64| {
        cells
            .iter()
            .find(|c| {
                c["binary"] == role.as_str() && c["backend"] == backend && c["connections"] == size
            })
            .cloned()
            .unwrap_or(Value::Null)
    };
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let mut ratios = Vec::new();
    let mut versus = Vec::new();
    for backend in ["sqlite", "postgres"] {
        for (role, _) in &bins {
            let (small, large) = (
                of(*role, backend, plan.sizes[0]),
                of(*role, backend, plan.sizes[1]),
            );
            let p50 = f(&large, "p50_ms") / f(&small, "p50_ms");
            let p99 = f(&large, "p99_ms") / f(&small, "p99_ms");
            let throughput = f(&small, "throughput_rps") / f(&large, "throughput_rps");
            ratios.push(json!({
                "binary": role.as_str(),
                "backend": backend,
                "sizes": format!("{}/{}", plan.sizes[1], plan.sizes[0]),
                "p50_ratio": round(p50, 2),
                "p99_ratio": round(p99, 2),
                "throughput_ratio": round(throughput, 2),
                "meets_goal": p50 <= 1.5 && p99 <= 1.5 && throughput <= 1.5,
            }));
        }
        if bins.len() == 2 {
            for size in plan.sizes {
                let (new, old) = (
                    of(Role::Candidate, backend, size),
                    of(Role::Baseline, backend, size),
                );
                let ratio = |k: &str| round(f(&new, k) / f(&old, k), 3);
                versus.push(json!({
                    "backend": backend,
                    "connections": size,
                    "throughput_ratio": ratio("throughput_rps"),
                    "cpu_per_lookup_ratio": ratio("cpu_us_per_lookup"),
                    "p50_ratio": ratio("p50_ms"),
                }));
            }
        }
    }
    let binaries: serde_json::Map<String, Value> = bins
        .iter()
        .map(|(role, bin)| (role.as_str().to_owned(), json!(bin.display().to_string())))
        .collect();
    let report = json!({
        "quick": plan.quick,
        "binaries": binaries,
        "concurrency": CONCURRENCY,
        "requests_per_cell": plan.requests,
        "cells": cells,
        "ratios": ratios,
        "candidate_vs_baseline": versus,
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
    });
    let name = if plan.quick {
        "service-quick"
    } else {
        "service"
    };
    let json_path = out_dir.join(format!("{name}.json"));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&report).expect("json"),
    )
    .expect("write json");
    let table = markdown(&cells, &ratios, &versus, &plan, &bins);
    std::fs::write(out_dir.join(format!("{name}.md")), &table).expect("write md");
    let _ = std::fs::remove_dir_all(&work);
    println!("{table}");
    println!("written: {}", json_path.display());
    let failed: u64 = cells
        .iter()
        .map(|c| c["errors"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(failed, 0, "some lookups failed");
}
