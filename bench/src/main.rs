//! `make bench`: what the authstamp filter costs, on loopback.
//!
//! One upstream (`bench-upstream`), one token service (release build, SQLite,
//! seeded users), and five Envoys with the same concurrency, each loaded by
//! wrk with the same connections in turn (rounds interleave the scenarios so
//! that drift on a shared machine spreads over all of them):
//!
//! - (a) plain routing;
//! - (b) a static `authorization` from route `request_headers_to_add`;
//! - (c) the native `credential_injector` filter, generic credential;
//! - (d) authstamp, cache hit (one user, cached after the first request);
//! - (e) authstamp, a new user on every request: a miss through the token
//!   service each time.
//!
//! Prints a markdown table and writes `target/bench/filter.json` and
//! `target/bench/filter.md`. `--quick` (or `BENCH_QUICK=1`) for CI: one short
//! round. `authstamp-bench --help` lists the knobs.

mod configs;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};

use authstamp_testkit::process::{self, rss_kib, Process};
use configs::{Kind, Ports, STATIC_CREDENTIAL};
use report::{Run, Scenario};

const READY: Duration = Duration::from_secs(30);
/// Where Envoy looks for the native module.
const NATIVE_PATH_ENV: &str = "ENVOY_DYNAMIC_MODULES_SEARCH_PATH";
const APP_PROVIDER: &str = "bench";
const HIT_USER: &str = "hit-0";
const MISS_PREFIX: &str = "miss-";
const TOKEN_PREFIX: &str = "seeded_";
/// Scenario ids of AUTHSTAMP_BENCH_ALT_WASM builds.
const ALT_IDS: [char; 5] = ['x', 'y', 'z', 'v', 'w'];

/// Scenario ids of AUTHSTAMP_BENCH_ALT_NATIVE builds.
const ALT_NATIVE_IDS: [char; 3] = ['i', 'j', 'k'];

/// (d'): the native module's cache hit.
const NATIVE_HIT: char = 'h';
/// (e'): the native module, a miss on every request.
const NATIVE_MISS: char = 'm';
/// (f) and (g): the Wasm and the native cache hit with the heal machinery
/// off (no mark, no replay instance, no retry policy).
const WASM_HIT_NO_HEAL: char = 'f';
const NATIVE_HIT_NO_HEAL: char = 'g';
/// The native module's file name in ENVOY_DYNAMIC_MODULES_SEARCH_PATH.
const NATIVE_FILE: &str = "libauthstamp_native.so";

/// The cache-hit scenarios: (d), (d'), their heal-off rows and the
/// alternative builds.
fn is_hit(id: char) -> bool {
    matches!(id, 'd' | NATIVE_HIT | WASM_HIT_NO_HEAL | NATIVE_HIT_NO_HEAL)
        || ALT_IDS.contains(&id)
        || ALT_NATIVE_IDS.contains(&id)
}

/// The miss scenarios: a new user on every request.
fn is_miss(id: char) -> bool {
    matches!(id, 'e' | NATIVE_MISS)
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub quick: bool,
    pub duration: u64,
    /// Seconds of each one-connection latency run (0: none).
    pub latency_duration: u64,
    pub warmup: u64,
    pub rounds: u32,
    pub connections: u32,
    pub threads: u32,
    pub concurrency: u32,
    pub miss_users: u64,
    pub out: PathBuf,
    pub only: Option<Vec<char>>,
    /// Record `perf` profiles of each Envoy during its first round.
    pub perf: bool,
}

impl Opts {
    fn parse() -> anyhow::Result<Opts> {
        let quick_env = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut args: Vec<String> = std::env::args().skip(1).collect();
        let quick = quick_env || args.iter().any(|a| a == "--quick");
        let perf = args.iter().any(|a| a == "--perf");
        args.retain(|a| a != "--quick" && a != "--perf");
        let mut opts = Opts {
            quick,
            duration: if quick { 2 } else { 8 },
            latency_duration: if quick { 1 } else { 3 },
            warmup: 1,
            rounds: if quick { 1 } else { 3 },
            connections: 16,
            threads: 1,
            concurrency: 1,
            miss_users: if quick { 30_000 } else { 250_000 },
            out: workspace_root().join("target/bench"),
            only: None,
            perf,
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().ok_or_else(|| anyhow!("{arg} needs a value"));
            match arg.as_str() {
                "--duration" => opts.duration = value()?.parse()?,
                "--latency-duration" => opts.latency_duration = value()?.parse()?,
                "--warmup" => opts.warmup = value()?.parse()?,
                "--rounds" => opts.rounds = value()?.parse()?,
                "--connections" => opts.connections = value()?.parse()?,
                "--threads" => opts.threads = value()?.parse()?,
                "--concurrency" => opts.concurrency = value()?.parse()?,
                "--miss-users" => opts.miss_users = value()?.parse()?,
                "--out" => opts.out = PathBuf::from(value()?),
                "--only" => {
                    opts.only = Some(value()?.chars().filter(char::is_ascii_lowercase).collect())
                }
                "--help" | "-h" => {
                    println!(
                        "authstamp-bench [--quick] [--duration S] [--latency-duration S] [--warmup S] [--rounds N] \
                         [--connections N] [--threads N] [--concurrency N] [--miss-users N] \
                         [--only abcde] [--out DIR] [--perf]\n\
                         defaults: 3 rounds of 8 s + 3 s (one connection) per scenario (quick: 1 of 2 s + 1 s), 16 connections, \
                         1 wrk thread, Envoy --concurrency 1"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other} (see --help)"),
            }
        }
        if opts.rounds == 0 || opts.duration == 0 || opts.connections == 0 || opts.threads == 0 {
            bail!("rounds, duration, connections and threads must be at least 1");
        }
        Ok(opts)
    }

    fn wants(&self, id: char) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(&id))
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn file_from(var: &str, default: PathBuf) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    if !path.is_file() {
        bail!(
            "{} not found (set {var} or run `make bench`)",
            path.display()
        );
    }
    Ok(path)
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

struct Tools {
    envoy: PathBuf,
    wrk: PathBuf,
    authstamp: PathBuf,
    upstream: PathBuf,
    wasm: PathBuf,
    floor_wasm: PathBuf,
    /// The folder of libauthstamp_native.so (`--profile native`).
    native_dir: PathBuf,
    /// The folder of the floor build of it (feature `floor`), rows (o), (t).
    native_floor_dir: PathBuf,
    scripts: PathBuf,
    /// The filter credential the token service and every Envoy get.
    filter_token: String,
}

impl Tools {
    fn find() -> anyhow::Result<Tools> {
        let root = workspace_root();
        let envoy = match std::env::var_os("ENVOY_BIN") {
            Some(p) => PathBuf::from(p),
            None => {
                let venv = root.join(".venv/bin/envoy");
                if venv.is_file() {
                    venv
                } else {
                    on_path("envoy")
                        .ok_or_else(|| anyhow!("no Envoy: set ENVOY_BIN or run `make envoy`"))?
                }
            }
        };
        let wrk = on_path("wrk").ok_or_else(|| anyhow!("no wrk on PATH (apt-get install wrk)"))?;
        let here = std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Ok(Tools {
            envoy,
            wrk,
            authstamp: file_from("AUTHSTAMP_BENCH_SERVICE_BIN", here.join("authstamp"))?,
            upstream: file_from("AUTHSTAMP_BENCH_UPSTREAM_BIN", here.join("bench-upstream"))?,
            wasm: file_from(
                "AUTHSTAMP_WASM",
                root.join("target/wasm32-wasip1/release/authstamp_filter.wasm"),
            )?,
            floor_wasm: file_from(
                "AUTHSTAMP_BENCH_FLOOR_WASM",
                root.join("target/wasm32-wasip1/release/authstamp_bench_floor.wasm"),
            )?,
            native_dir: file_from(
                "AUTHSTAMP_NATIVE",
                root.join("target/native").join(NATIVE_FILE),
            )?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
            native_floor_dir: file_from(
                "AUTHSTAMP_BENCH_FLOOR_NATIVE",
                root.join("target/native-floor/native").join(NATIVE_FILE),
            )?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
            scripts: root.join("bench/wrk"),
            filter_token: format!("ftk_{}", random_b64(24)?.replace(['+', '/', '='], "x")),
        })
    }
}

/// A started Envoy: its process, listener URL and admin URL.
struct Envoy {
    process: Process,
    url: String,
    admin: String,
}

async fn start_envoy(
    tools: &Tools,
    dir: &Path,
    name: &str,
    config: &str,
    concurrency: u32,
    native_dir: &Path,
    http: &reqwest::Client,
) -> anyhow::Result<Envoy> {
    let config_path = dir.join(format!("{name}.yaml"));
    std::fs::write(&config_path, config)?;
    let admin_path = dir.join(format!("{name}.admin"));
    let _ = std::fs::remove_file(&admin_path);
    let mut command = Command::new(&tools.envoy);
    command
        .arg("-c")
        .arg(&config_path)
        .args(["--concurrency", &concurrency.to_string()])
        .arg("--disable-hot-restart")
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(["-l", "warn"])
        .env(configs::FILTER_TOKEN_ENV, &tools.filter_token)
        .env(NATIVE_PATH_ENV, native_dir);
    let mut process = Process::try_spawn(name, command, dir, "\u{0}never")?;
    let deadline = Instant::now() + READY;
    loop {
        if Instant::now() > deadline {
            bail!(
                "{name}: Envoy not ready; see {}",
                process.stderr_log.display()
            );
        }
        if !process.is_running() {
            bail!("{name}: Envoy exited; see {}", process.stderr_log.display());
        }
        if let Ok(address) = std::fs::read_to_string(&admin_path) {
            let admin = format!("http://{}", address.trim());
            let ready = http.get(format!("{admin}/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                let listeners: Value = http
                    .get(format!("{admin}/listeners?format=json"))
                    .send()
                    .await?
                    .json()
                    .await?;
                let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                    ["port_value"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("{name}: no listener port"))?;
                return Ok(Envoy {
                    process,
                    url: format!("http://127.0.0.1:{port}"),
                    admin,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn random_b64(bytes: usize) -> anyhow::Result<String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

/// The token service with a fresh vault, an app, a provider pointing at the
/// upstream, and the seeded users.
struct TokenService {
    /// Kept to be killed on drop.
    _process: Process,
    url: String,
    /// The filter listener, Envoy's token-service cluster.
    filter_url: String,
    app_id: String,
    app_key: String,
}

impl TokenService {
    async fn lookups(&self, http: &reqwest::Client) -> anyhow::Result<u64> {
        let text = http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?;
        Ok(authstamp_testkit::prom::sum(&text, "authstamp_token_lookups_total") as u64)
    }
}

async fn start_token_service(
    tools: &Tools,
    dir: &Path,
    upstream_url: &str,
    opts: &Opts,
    http: &reqwest::Client,
) -> anyhow::Result<TokenService> {
    let data_dir = dir.join("token-service-data");
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let master_key = random_b64(32)?;
    let admin_token = format!("adm_{}", random_b64(18)?.replace(['+', '/', '='], "x"));
    let mut command = Command::new(&tools.authstamp);
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(["--filter-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data_dir)
        .env("AUTHSTAMP_MASTER_KEY", &master_key)
        .env("AUTHSTAMP_ADMIN_TOKEN", &admin_token)
        .env(configs::FILTER_TOKEN_ENV, &tools.filter_token)
        .env("RUST_LOG", "warn");
    let mut process = Process::try_spawn("token-service", command, dir, "listening on")?;
    let (url, filter_url) = match process.listen_urls(READY)?.as_slice() {
        [app, filter] => (app.clone(), filter.clone()),
        other => bail!("authstamp serve: not an app and a filter URL: {other:?}"),
    };

    let app: Value = http
        .post(format!("{url}/v1/apps"))
        .bearer_auth(&admin_token)
        .json(&json!({"name": "bench"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let app_id = app["app_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no app_id"))?
        .to_string();
    let app_key = app["app_key"]
        .as_str()
        .ok_or_else(|| anyhow!("no app_key"))?
        .to_string();
    http.put(format!("{url}/v1/apps/{app_id}/providers/{APP_PROVIDER}"))
        .bearer_auth(&admin_token)
        .json(&json!({
            "client_id": "bench",
            "client_secret": "bench-secret",
            "authorize_url": format!("{upstream_url}/authorize"),
            "token_url": format!("{upstream_url}/token"),
            "api_base_url": upstream_url,
        }))
        .send()
        .await?
        .error_for_status()
        .context("configure the bench provider")?;

    // One user for the cache hit, miss_users + a few for the misses.
    let miss_users = if opts.wants('e') || opts.wants(NATIVE_MISS) {
        opts.miss_users + 10
    } else {
        0
    };
    for (prefix, users) in [("hit-", 1), (MISS_PREFIX, miss_users)] {
        if users == 0 {
            continue;
        }
        let started = Instant::now();
        let output = Command::new(&tools.authstamp)
            .arg("bench-seed")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--app", &app_id, "--provider", APP_PROVIDER])
            .args(["--users", &users.to_string(), "--prefix", prefix])
            .args(["--token-prefix", TOKEN_PREFIX])
            .env("AUTHSTAMP_MASTER_KEY", &master_key)
            .env("RUST_LOG", "warn")
            .output()
            .context("run authstamp bench-seed")?;
        if !output.status.success() {
            bail!(
                "bench-seed failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        eprintln!(
            "bench: seeded {users} users ({prefix}*) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(TokenService {
        _process: process,
        url,
        filter_url,
        app_id,
        app_key,
    })
}

/// The request headers of a scenario (besides the user header of (e)).
/// The request headers every scenario gets (besides the user header): the
/// same request on the wire for all of them, so that they differ only in
/// what Envoy does with it. Only authstamp strips them.
fn headers_of(_id: char, ts: &TokenService) -> Vec<String> {
    vec![
        format!("x-authstamp-provider: {APP_PROVIDER}"),
        format!("x-authstamp-app: {}", ts.app_id),
        format!("x-authstamp-app-key: {}", ts.app_key),
    ]
}

/// One wrk run; `unique`: (start, window) of the miss users.
/// How many connections and threads a wrk run uses.
#[derive(Clone, Copy)]
struct Load {
    connections: u32,
    threads: u32,
}

#[allow(clippy::too_many_arguments)]
fn wrk(
    tools: &Tools,
    load: Load,
    url: &str,
    seconds: u64,
    headers: &[String],
    fixed_user: Option<&str>,
    unique: Option<(u64, u64)>,
) -> anyhow::Result<Run> {
    let mut command = Command::new(&tools.wrk);
    command
        .args(["-t", &load.threads.to_string()])
        .args(["-c", &load.connections.to_string()])
        .args(["-d", &format!("{seconds}s")])
        .args(["--timeout", "5s"]);
    let target = format!("{url}/api/bench");
    match unique {
        Some((start, window)) => {
            command
                .arg("-s")
                .arg(tools.scripts.join("unique.lua"))
                .arg(&target)
                .arg("--")
                .args(["x-authstamp-user", MISS_PREFIX])
                .args([
                    start.to_string(),
                    window.to_string(),
                    load.threads.to_string(),
                ]);
        }
        None => {
            command
                .arg("-s")
                .arg(tools.scripts.join("fixed.lua"))
                .arg(&target)
                .arg("--");
            if let Some(user) = fixed_user {
                command.arg(format!("x-authstamp-user: {user}"));
            }
        }
    }
    command.args(headers);
    let output = command.output().context("run wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCHJSON "))
        .ok_or_else(|| anyhow!("wrk printed no result: {stdout}"))?;
    report::Run::from_wrk(serde_json::from_str(line)?)
}

/// One request through a scenario's Envoy: it must reach the upstream with
/// the expected authorization.
async fn check(
    http: &reqwest::Client,
    envoy: &Envoy,
    headers: &[String],
    user: Option<&str>,
    expected: Option<&str>,
) -> anyhow::Result<()> {
    let mut request = http.get(format!("{}/api/bench", envoy.url));
    for h in headers {
        if let Some((n, v)) = h.split_once(": ") {
            request = request.header(n, v);
        }
    }
    if let Some(user) = user {
        request = request.header("x-authstamp-user", user);
    }
    let response = request.send().await?;
    let status = response.status();
    let seen = response
        .headers()
        .get("x-bench-authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if !status.is_success() || seen.as_deref() != expected {
        bail!(
            "check through {} failed: status {status}, upstream saw authorization {seen:?}, expected {expected:?}: {}",
            envoy.process.name,
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn admin_get(http: &reqwest::Client, envoy: &Envoy, path: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{}{path}", envoy.admin))
        .send()
        .await?
        .text()
        .await?)
}

/// Envoy's own view of its memory (`/memory`: tcmalloc `allocated`) and
/// the process RSS (which also counts V8's heaps).
async fn memory_of(http: &reqwest::Client, envoy: &Envoy) -> Value {
    let allocated = admin_get(http, envoy, "/memory")
        .await
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["allocated"].as_str().and_then(|s| s.parse::<u64>().ok()));
    json!({
        "rss_kib": envoy.process.pid().and_then(rss_kib),
        "allocated_bytes": allocated,
    })
}

/// RSS of idle Envoys without a filter, with the Wasm filter and with the
/// native module, at concurrency 1 and 4 (after one stamped request): what
/// each build adds, and what one more worker's Wasm VM costs.
async fn per_vm_memory(
    tools: &Tools,
    dir: &Path,
    ports: &Ports,
    ts: &TokenService,
    http: &reqwest::Client,
) -> anyhow::Result<Value> {
    let mut rss = serde_json::Map::new();
    for (kind, label) in [
        (Kind::Plain, "plain"),
        (Kind::Authstamp, "authstamp"),
        (Kind::Native, "native"),
    ] {
        for workers in [1u32, 4] {
            let name = format!("mem-{label}-{workers}");
            let envoy = start_envoy(
                tools,
                dir,
                &name,
                &configs::bootstrap(kind, ports, &tools.wasm, &tools.floor_wasm),
                workers,
                &tools.native_dir,
                http,
            )
            .await?;
            if kind != Kind::Plain {
                let headers = headers_of('d', ts);
                let expected = format!("Bearer {TOKEN_PREFIX}{HIT_USER}");
                check(http, &envoy, &headers, Some(HIT_USER), Some(&expected)).await?;
            } else {
                check(http, &envoy, &[], None, None).await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            rss.insert(name, json!(envoy.process.pid().and_then(rss_kib)));
        }
    }
    let get = |k: &str| rss.get(k).and_then(Value::as_u64).unwrap_or(0) as f64;
    let at1 = get("mem-authstamp-1") - get("mem-plain-1");
    let at4 = get("mem-authstamp-4") - get("mem-plain-4");
    Ok(json!({
        "rss_kib": rss,
        "native_rss_kib_at_concurrency_1": get("mem-native-1") - get("mem-plain-1"),
        "native_rss_kib_at_concurrency_4": get("mem-native-4") - get("mem-plain-4"),
        "filter_rss_kib_at_concurrency_1": at1,
        "filter_rss_kib_at_concurrency_4": at4,
        "per_worker_vm_kib": ((at4 - at1) / 3.0).round(),
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let opts = Opts::parse()?;
    let tools = Tools::find()?;
    let started = Instant::now();
    std::fs::create_dir_all(&opts.out)?;
    let dir = opts.out.join("filter-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let load_before = loadavg();
    // On a shared machine, other work disturbs the measurement less when the
    // benchmark (and every process it starts) runs at a higher priority;
    // allowed for root only, skipped otherwise.
    let reniced = Command::new("renice")
        .args(["-n", "-5", "-p", &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());

    let mut upstream = Process::try_spawn(
        "upstream",
        {
            let mut c = Command::new(&tools.upstream);
            c.arg("127.0.0.1:0");
            c
        },
        &dir,
        "listening on",
    )?;
    let upstream_url = upstream.listen_url(READY)?;
    let ts = start_token_service(&tools, &dir, &upstream_url, &opts, &http).await?;
    let port_of = |url: &str| -> anyhow::Result<u16> {
        Ok(url.rsplit(':').next().unwrap_or_default().parse()?)
    };
    let ports = Ports {
        upstream: port_of(&upstream_url)?,
        token_service: port_of(&ts.filter_url)?,
    };

    let mut scenarios: Vec<(char, String, Kind)> = [
        ('a', "plain routing", Kind::Plain),
        (
            'b',
            "static header (route request_headers_to_add)",
            Kind::RouteHeader,
        ),
        (
            'c',
            "credential_injector (generic)",
            Kind::CredentialInjector,
        ),
        ('d', "authstamp, cache hit", Kind::Authstamp),
        ('e', "authstamp, miss on every request", Kind::Authstamp),
        (
            NATIVE_HIT,
            "(d') authstamp native module, cache hit",
            Kind::Native,
        ),
        (
            NATIVE_MISS,
            "(e') authstamp native module, miss on every request",
            Kind::Native,
        ),
        (
            WASM_HIT_NO_HEAL,
            "authstamp, cache hit, heal machinery off",
            Kind::AuthstampWithoutHealing,
        ),
        (
            NATIVE_HIT_NO_HEAL,
            "authstamp native module, cache hit, heal machinery off",
            Kind::NativeWithoutHealing,
        ),
        (
            'n',
            "reference: no-op Wasm filter",
            Kind::WasmFloor { stamp: false },
        ),
        (
            's',
            "reference: Wasm filter setting one static header",
            Kind::WasmFloor { stamp: true },
        ),
        (
            'o',
            "reference: no-op native module",
            Kind::NativeFloor { stamp: false },
        ),
        (
            't',
            "reference: native module setting one static header",
            Kind::NativeFloor { stamp: true },
        ),
        (
            'u',
            "reference: native module making a hit's header calls (no logic)",
            Kind::NativeHitWrites,
        ),
    ]
    .into_iter()
    .filter(|(id, ..)| opts.wants(*id))
    .map(|(id, name, kind)| (id, name.to_string(), kind))
    .collect();
    // (x), (y), …: the cache hit with other builds of the filter, for A/B
    // comparisons in the same rounds (AUTHSTAMP_BENCH_ALT_WASM=a.wasm,b.wasm).
    let alts: Vec<(char, PathBuf)> = std::env::var("AUTHSTAMP_BENCH_ALT_WASM")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
        .zip(ALT_IDS)
        .map(|(p, id)| (id, PathBuf::from(p)))
        .collect();
    // AUTHSTAMP_BENCH_ALT_SHIPPED=1: the alternative builds run as (d) is
    // shipped (healable mark, replay instance, retry policy), for A/B rows of builds
    // that have them.
    let alt_shipped = std::env::var("AUTHSTAMP_BENCH_ALT_SHIPPED").is_ok_and(|v| v == "1");
    for (id, path) in &alts {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        scenarios.push(if alt_shipped {
            (
                *id,
                format!("authstamp, cache hit ({stem})"),
                Kind::Authstamp,
            )
        } else {
            (
                *id,
                format!("authstamp, cache hit ({stem}, heal machinery off)"),
                Kind::AuthstampWithoutHealing,
            )
        });
    }

    // (i), (j), (k): the native cache hit with other builds of the module
    // (AUTHSTAMP_BENCH_ALT_NATIVE=dir/libauthstamp_native.so,…), as shipped.
    let alt_natives: Vec<(char, PathBuf)> = std::env::var("AUTHSTAMP_BENCH_ALT_NATIVE")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
        .zip(ALT_NATIVE_IDS)
        .map(|(p, id)| (id, PathBuf::from(p)))
        .collect();
    for (id, path) in &alt_natives {
        if !path.is_file() || path.file_name().is_none_or(|n| n != NATIVE_FILE) {
            bail!(
                "AUTHSTAMP_BENCH_ALT_NATIVE: {} is not a file named {NATIVE_FILE}",
                path.display()
            );
        }
        let folder = path
            .parent()
            .and_then(Path::file_name)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        scenarios.push((
            *id,
            format!("authstamp native module, cache hit ({folder})"),
            Kind::Native,
        ));
    }
    let native_dir_of = |id: char| -> PathBuf {
        alt_natives
            .iter()
            .find(|(alt, _)| *alt == id)
            .and_then(|(_, p)| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| {
                if matches!(id, 'o' | 't' | 'u') {
                    tools.native_floor_dir.clone()
                } else {
                    tools.native_dir.clone()
                }
            })
    };

    // Validate, then start, every Envoy.
    let mut envoys = Vec::new();
    for (id, _, kind) in &scenarios {
        let wasm = alts
            .iter()
            .find(|(alt, _)| alt == id)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| tools.wasm.clone());
        let config = configs::bootstrap(*kind, &ports, &wasm, &tools.floor_wasm);
        let path = dir.join(format!("envoy-{id}.yaml"));
        std::fs::write(&path, &config)?;
        let out = Command::new(&tools.envoy)
            .args(["--mode", "validate", "-l", "error", "-c"])
            .arg(&path)
            .env(configs::FILTER_TOKEN_ENV, &tools.filter_token)
            .env(NATIVE_PATH_ENV, native_dir_of(*id))
            .output()?;
        if !out.status.success() {
            bail!(
                "envoy-{id}.yaml does not validate: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let envoy = start_envoy(
            &tools,
            &dir,
            &format!("envoy-{id}"),
            &config,
            opts.concurrency,
            &native_dir_of(*id),
            &http,
        )
        .await?;
        envoys.push(envoy);
    }

    // Check each one once, and warm it up. The miss users are split in
    // windows: one for the warm-up, then one per run of (e).
    let window = opts.miss_users / u64::from(2 * opts.rounds + 1);
    let full = Load {
        connections: opts.connections,
        threads: opts.threads,
    };
    let single = Load {
        connections: 1,
        threads: 1,
    };
    let mut results: Vec<Scenario> = Vec::new();
    for ((id, name, _), envoy) in scenarios.iter().zip(&envoys) {
        let headers = headers_of(*id, &ts);
        let static_expected = Some(STATIC_CREDENTIAL);
        let hit = format!("Bearer {TOKEN_PREFIX}{HIT_USER}");
        let probe = format!("{MISS_PREFIX}{}", opts.miss_users + 5);
        let probe_expected = format!("Bearer {TOKEN_PREFIX}{probe}");
        match id {
            'a' | 'n' | 'o' => check(&http, envoy, &headers, Some(HIT_USER), None).await?,
            'b' | 'c' | 's' | 't' | 'u' => {
                check(&http, envoy, &headers, Some(HIT_USER), static_expected).await?
            }
            id if is_hit(*id) => check(&http, envoy, &headers, Some(HIT_USER), Some(&hit)).await?,
            _ => check(&http, envoy, &headers, Some(&probe), Some(&probe_expected)).await?,
        }
        let unique = is_miss(*id).then_some((0, window));
        let fixed = (!is_miss(*id)).then_some(HIT_USER);
        wrk(
            &tools,
            full,
            &envoy.url,
            opts.warmup,
            &headers,
            fixed,
            unique,
        )?;
        results.push(Scenario::new(*id, name));
    }

    let mut miss_ratios = Vec::new();
    let mut e_memory = Vec::new();
    let mut native_miss_ratios = Vec::new();
    let mut native_miss_memory = Vec::new();
    for round in 0..opts.rounds {
        // Each round starts one scenario later, so that no scenario always
        // runs right after the same neighbour.
        let n = scenarios.len();
        let order = (0..n).map(|k| (k + round as usize) % n);
        for i in order {
            let ((id, _, _), envoy) = (&scenarios[i], &envoys[i]);
            let headers = headers_of(*id, &ts);
            let unique = is_miss(*id).then_some((window * u64::from(2 * round + 1), window));
            let fixed = (!is_miss(*id)).then_some(HIT_USER);
            let before = if is_miss(*id) {
                ts.lookups(&http).await?
            } else {
                0
            };
            let perf = match (opts.perf && round == 0, envoy.process.pid()) {
                (true, Some(pid)) => Some(
                    Command::new("perf")
                        .args(["record", "-F", "999", "-g", "-p", &pid.to_string(), "-o"])
                        .arg(opts.out.join(format!("perf-{id}.data")))
                        .args([
                            "--",
                            "sleep",
                            &opts.duration.saturating_sub(1).max(1).to_string(),
                        ])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .context("start perf")?,
                ),
                _ => None,
            };
            let cpu_before = envoy.process.pid().and_then(process::cpu_micros);
            let mut run = wrk(
                &tools,
                full,
                &envoy.url,
                opts.duration,
                &headers,
                fixed,
                unique,
            )?;
            let cpu_after = envoy.process.pid().and_then(process::cpu_micros);
            if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
                run.envoy_cpu_us = after.saturating_sub(before) as f64 / run.requests.max(1) as f64;
            }
            if let Some(mut perf) = perf {
                let _ = perf.wait();
            }
            if is_miss(*id) {
                let lookups = ts.lookups(&http).await? - before;
                let ratio = lookups as f64 / run.requests.max(1) as f64;
                let memory = memory_of(&http, envoy).await;
                if *id == 'e' {
                    miss_ratios.push(ratio);
                    e_memory.push(memory);
                } else {
                    native_miss_ratios.push(ratio);
                    native_miss_memory.push(memory);
                }
            }
            eprintln!(
                "bench: round {} ({id}) {:>9.0} rps  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  Envoy CPU {:>5.1} µs/req  errors {}",
                round + 1,
                run.rps,
                run.p50_us,
                run.p99_us,
                run.p999_us,
                run.envoy_cpu_us,
                run.errors
            );
            results[i].runs.push(run);
            if opts.latency_duration > 0 {
                let unique = is_miss(*id).then_some((window * u64::from(2 * round + 2), window));
                let latency = wrk(
                    &tools,
                    single,
                    &envoy.url,
                    opts.latency_duration,
                    &headers,
                    fixed,
                    unique,
                )?;
                eprintln!(
                    "bench: round {} ({id}) one connection: p50 {:>5} µs  p99 {:>5} µs  p99.9 {:>5} µs",
                    round + 1,
                    latency.p50_us,
                    latency.p99_us,
                    latency.p999_us
                );
                results[i].latency_runs.push(latency);
            }
        }
    }

    // The filter's own metrics, as Envoy prints them.
    let mut filter_metrics = serde_json::Map::new();
    let mut memory = serde_json::Map::new();
    for ((id, _, _), envoy) in scenarios.iter().zip(&envoys) {
        memory.insert(id.to_string(), memory_of(&http, envoy).await);
        if matches!(*id, 'd' | 'e' | NATIVE_HIT | NATIVE_MISS) {
            let text = admin_get(&http, envoy, "/stats/prometheus").await?;
            filter_metrics.insert(id.to_string(), report::authstamp_metrics(&text));
        }
    }
    let per_vm = if opts.wants('a') && opts.wants('d') {
        per_vm_memory(&tools, &dir, &ports, &ts, &http)
            .await
            .unwrap_or_else(|e| json!({"error": e.to_string()}))
    } else {
        Value::Null
    };
    drop(envoys);
    drop(ts);
    upstream.kill();

    let wasm_bytes = std::fs::metadata(&tools.wasm).map(|m| m.len()).unwrap_or(0);
    let envoy_version = Command::new(&tools.envoy)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let meta = json!({
        "quick": opts.quick,
        "duration_s": opts.duration,
        "latency_duration_s": opts.latency_duration,
        "rounds": opts.rounds,
        "wrk_connections": opts.connections,
        "wrk_threads": opts.threads,
        "envoy_concurrency": opts.concurrency,
        "envoy": envoy_version,
        "wasm_bytes": wasm_bytes,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_before": load_before,
        "reniced": reniced,
        "loadavg_after": loadavg(),
        "run_seconds": started.elapsed().as_secs(),
        "miss_users_per_round": window,
        "e_token_lookups_per_request": miss_ratios,
        "e_memory_after_each_round": e_memory,
        "native_miss_token_lookups_per_request": native_miss_ratios,
        "native_miss_memory_after_each_round": native_miss_memory,
        "memory": memory,
        "per_vm_memory": per_vm,
        "filter_metrics": filter_metrics,
    });
    let (json_out, markdown) = report::render(&results, meta);
    std::fs::write(
        opts.out.join("filter.json"),
        serde_json::to_string_pretty(&json_out)?,
    )?;
    std::fs::write(opts.out.join("filter.md"), &markdown)?;
    println!("{markdown}");
    println!(
        "wrote {} and {} in {} s",
        opts.out.join("filter.json").display(),
        opts.out.join("filter.md").display(),
        started.elapsed().as_secs()
    );
    // Goals are reported, not enforced (they depend on the machine); a
    // request that failed is a bug.
    let failed: Vec<String> = results
        .iter()
        .map(|r| (r.id, r.summary().errors))
        .filter(|(_, errors)| *errors > 0)
        .map(|(id, errors)| format!("({id}): {errors}"))
        .collect();
    if !failed.is_empty() {
        bail!(
            "requests failed (socket errors, timeouts or non-2xx answers): {}",
            failed.join(", ")
        );
    }
    Ok(())
}
