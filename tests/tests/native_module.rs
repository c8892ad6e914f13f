//! The native module's host layer against the real Envoy: the test build
//! (feature `probe`) loads by name, and each callback it declares does its
//! job (header reads and writes, local replies, callouts, cross-thread
//! wake-ups, stats); every panic fails its request closed with 500
//! `internal` while Envoy keeps serving.

use authstamp_e2e::deploy::{EchoServer, Envoy};
use authstamp_e2e::{log_dir, native_probe_dir, DYNAMIC_MODULES_PATH_ENV};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

/// A listener whose only filter before the router is the probe, routing to
/// the echo server, which is also the probe's callout cluster.
fn probe_bootstrap(echo_port: u16) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: probe
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: probe
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: echo }}
          http_filters:
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config:
                name: authstamp_native
              filter_name: authstamp
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '{{"probe": {{"callout_cluster": "echo"}}}}'
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: echo
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {echo_port} }} }} }}
"#
    )
}

struct Probe {
    envoy: Envoy,
    echo: EchoServer,
    http: Client,
    url: String,
}

impl Probe {
    async fn start(test: &str) -> Probe {
        let echo = EchoServer::start().await;
        let port = echo
            .authority
            .rsplit(':')
            .next()
            .expect("port")
            .parse()
            .expect("port");
        let dir = native_probe_dir();
        let envoy = Envoy::start_with_workers(
            &log_dir(test),
            "envoy",
            &probe_bootstrap(port),
            &[(DYNAMIC_MODULES_PATH_ENV, dir.to_str().expect("utf-8 path"))],
            2,
        )
        .await;
        let url = envoy.listener("probe").to_string();
        Probe {
            envoy,
            echo,
            http: Client::new(),
            url,
        }
    }

    async fn send(&self, mode: &str) -> Response {
        self.http
            .get(format!("{}/provider/api", self.url))
            .header("x-probe", mode)
            .header("x-authstamp-user", "alice")
            .send()
            .await
            .expect("request through Envoy")
    }

    /// The headers the upstream saw for the last request to reach it.
    fn last_seen(&self) -> Value {
        let seen = self.echo.seen();
        let last = seen
            .iter()
            .rev()
            .find(|r| {
                r["request_line"]
                    .as_str()
                    .is_some_and(|l| l.contains("/provider/api"))
            })
            .expect("a request reached the upstream");
        last["headers"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_declared_callback_works_in_the_real_envoy() {
    let probe = Probe::start("native_module_callbacks").await;

    // Header reads, writes and removals; the response hook; worker index.
    let response = probe.send("stamp").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-probe-response"], "seen");
    let seen = probe.last_seen();
    assert_eq!(seen["authorization"], "Bearer probe-token");
    assert!(seen.get("x-authstamp-user").is_none(), "{seen}");
    let counted: usize = seen["x-probe-header-count"]
        .as_str()
        .expect("count")
        .parse()
        .expect("n");
    assert!(counted >= 4, "{seen}");
    let worker: u32 = seen["x-probe-worker"]
        .as_str()
        .expect("worker")
        .parse()
        .expect("n");
    assert!(worker < 2, "{seen}");

    // A local reply.
    let response = probe.send("reply").await;
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(response.headers()["x-probe"], "reply");
    assert_eq!(response.text().await.expect("body"), r#"{"probe":"reply"}"#);

    // A callout to a cluster, its answer, then the resumed request.
    let before = probe.echo.seen().len();
    let response = probe.send("callout").await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = probe.last_seen();
    assert_eq!(seen["x-probe-callout-status"], "200", "{seen}");
    let body_bytes: usize = seen["x-probe-callout-body-bytes"]
        .as_str()
        .expect("n")
        .parse()
        .expect("n");
    assert!(body_bytes > 0);
    let requests = probe.echo.seen();
    assert!(
        requests[before..].iter().any(|r| r["request_line"]
            .as_str()
            .is_some_and(|l| l.starts_with("GET /probe-callout "))),
        "the callout reached its cluster: {requests:?}"
    );

    // A callout to a cluster Envoy does not know is refused at once.
    let response = probe.send("callout-unknown-cluster").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.text().await.expect("body"), "ClusterNotFound");

    // A wake-up from a thread that is not the stream's worker resumes it.
    let response = probe.send("wake").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(probe.last_seen()["x-probe-woken"], "7");

    // Counter, gauge and histogram are Envoy stats.
    let stats = probe
        .http
        .get(format!("{}/stats", probe.envoy.admin_url))
        .send()
        .await
        .expect("stats")
        .text()
        .await
        .expect("stats text");
    let counter = stats
        .lines()
        .find(|l| l.contains("authstamp_probe_requests_total"))
        .unwrap_or_else(|| panic!("no probe counter in /stats:\n{stats}"));
    let value: u64 = counter
        .rsplit(' ')
        .next()
        .expect("value")
        .parse()
        .expect("number");
    assert_eq!(value, 5, "{counter}");
    assert!(stats.contains("authstamp_probe_last_worker"), "{stats}");
    assert!(stats.contains("authstamp_probe_header_bytes"), "{stats}");
}

async fn assert_internal_error(response: Response) {
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()["x-authstamp-error"], "internal");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
    assert_eq!(body["error"], "internal", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_its_request_closed_and_envoy_keeps_serving() {
    let mut probe = Probe::start("native_module_panics").await;
    for mode in ["panic", "panic-scheduled", "panic-callout"] {
        let before = probe.echo.seen().len();
        assert_internal_error(probe.send(mode).await).await;
        let upstream: Vec<Value> = probe.echo.seen()[before..]
            .iter()
            .filter(|r| {
                r["request_line"]
                    .as_str()
                    .is_some_and(|l| l.contains("/provider/api"))
            })
            .cloned()
            .collect();
        assert!(
            upstream.is_empty(),
            "{mode}: the failed request went upstream: {upstream:?}"
        );
        let response = probe.send("stamp").await;
        assert_eq!(response.status(), StatusCode::OK, "after {mode}");
        assert_eq!(probe.last_seen()["authorization"], "Bearer probe-token");
    }
    assert!(probe.envoy.process.is_running());
    let log = std::fs::read_to_string(&probe.envoy.process.stderr_log).expect("log");
    assert!(
        log.contains("authstamp: internal error at"),
        "the panic is logged"
    );
    assert!(
        !log.contains("forced panic"),
        "a panic's message stays out of the log"
    );
}
