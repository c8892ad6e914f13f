//! Deployment shapes beyond the local bootstrap: the snippet for an existing
//! Envoy, the transparent egress bootstrap, TLS providers. Extra Envoys next
//! to a [`Stack`](crate::Stack), built from the files under `envoy/`, a
//! plain HTTP echo for "some other host", and provider configurations with
//! any URLs.

use crate::browser::{browser_client, walk_connect, ConnectOutcome};
use crate::process::Process;
use crate::stack::{Stack, CLIENT_ID};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use serde_yaml_ng::Value as Yaml;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `text` with each `from` replaced; each must occur exactly once, so a change
/// to the real file breaks the tests instead of escaping them.
pub fn replace_once(text: &str, replacements: &[(&str, String)]) -> String {
    let mut text = text.to_string();
    for (from, to) in replacements {
        assert_eq!(text.matches(from).count(), 1, "`{from}` must occur once");
        text = text.replace(from, to);
    }
    text
}

/// The filter's instances in each shipped bootstrap: the listener's and the
/// upstream filter of each of the two provider clusters (one code path).
pub const FILTER_INSTANCES: usize = 3;

/// `text` with the filter's path `from` (found once per instance) set to the built filter.
pub fn with_built_filter(text: &str, from: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        FILTER_INSTANCES,
        "`{from}` must occur once per filter instance"
    );
    text.replace(
        from,
        &format!("filename: {}", crate::filter_wasm().display()),
    )
}

pub fn read_repo_file(path: &str) -> String {
    let full = crate::workspace_root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

pub fn parse_yaml(text: &str) -> Yaml {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}"))
}

/// Every document of a multi-document YAML file.
pub fn parse_yaml_documents(text: &str) -> Vec<Yaml> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("not YAML: {e}")))
        .filter(|doc: &Yaml| !doc.is_null())
        .collect()
}

/// The three pieces of `envoy/authstamp-snippet.yaml`.
#[derive(Clone, Debug, PartialEq)]
pub struct Snippet {
    pub http_filters: Vec<Yaml>,
    pub routes: Vec<Yaml>,
    pub clusters: Vec<Yaml>,
}

pub const SNIPPET_PATH: &str = "envoy/authstamp-snippet.yaml";
/// The two values a user edits in the snippet.
pub const SNIPPET_TOKEN_SERVICE_HOST: &str = "authstamp-token-service";
pub const SNIPPET_WASM_PATH: &str = "/etc/envoy/authstamp_filter.wasm";

impl Snippet {
    pub fn load() -> Snippet {
        let doc = parse_yaml(&read_repo_file(SNIPPET_PATH));
        let piece = |key: &str| -> Vec<Yaml> {
            doc[key]
                .as_sequence()
                .unwrap_or_else(|| panic!("{SNIPPET_PATH}: `{key}` must be a list"))
                .clone()
        };
        let mapping = doc.as_mapping().expect("snippet is a mapping");
        assert_eq!(mapping.len(), 3, "the snippet has exactly three pieces");
        Snippet {
            http_filters: piece("http_filters"),
            routes: piece("routes"),
            clusters: piece("clusters"),
        }
    }

    /// The snippet as a user edits it: the token service at `host:port`
    /// and the filter at `wasm`.
    pub fn edited(&self, host: &str, port: u16, wasm: &str) -> Snippet {
        let mut edited = self.clone();
        let mut found_address = 0;
        for cluster in &mut edited.clusters {
            if cluster["name"].as_str() == Some("authstamp_token_service") {
                let address = &mut cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
                    ["endpoint"]["address"]["socket_address"];
                assert_eq!(address["address"], Yaml::from(SNIPPET_TOKEN_SERVICE_HOST));
                address["address"] = Yaml::from(host);
                address["port_value"] = Yaml::from(port);
                found_address += 1;
            }
        }
        assert_eq!(found_address, 1, "one token-service cluster in the snippet");
        let code = &mut edited.http_filters[0]["typed_config"]["config"]["vm_config"]["code"]
            ["local"]["filename"];
        assert_eq!(*code, Yaml::from(SNIPPET_WASM_PATH));
        *code = Yaml::from(wasm);
        // The replay instances (in the provider clusters' http_filters) load the same file.
        let mut replays = 0;
        for cluster in &mut edited.clusters {
            replays += set_wasm_files(cluster, wasm);
        }
        assert_eq!(replays, 2, "one replay instance per provider cluster");
        edited
    }

    /// Pastes the snippet into `bootstrap` where its comments say: the
    /// filters before the router of listener `listener`'s connection
    /// manager, the routes at the top of virtual host `virtual_host`, the
    /// clusters at the end of `static_resources.clusters`.
    pub fn paste_into(&self, bootstrap: &mut Yaml, listener: &str, virtual_host: &str) {
        let hcm = http_connection_manager(bootstrap, listener);
        let filters = hcm["http_filters"]
            .as_sequence_mut()
            .expect("http_filters list");
        let router = filters
            .iter()
            .position(|f| f["name"].as_str() == Some("envoy.filters.http.router"))
            .expect("a router filter");
        for (i, filter) in self.http_filters.iter().enumerate() {
            filters.insert(router + i, filter.clone());
        }
        let host = hcm["route_config"]["virtual_hosts"]
            .as_sequence_mut()
            .expect("virtual_hosts")
            .iter_mut()
            .find(|v| v["name"].as_str() == Some(virtual_host))
            .unwrap_or_else(|| panic!("virtual host {virtual_host}"));
        // Piece 2's comment: the replay instance matches on the attempt count.
        host["include_request_attempt_count"] = Yaml::from(true);
        let routes = host["routes"].as_sequence_mut().expect("routes list");
        for (i, route) in self.routes.iter().enumerate() {
            routes.insert(i, route.clone());
        }
        bootstrap["static_resources"]["clusters"]
            .as_sequence_mut()
            .expect("clusters list")
            .extend(self.clusters.iter().cloned());
    }

    /// Asserts that `bootstrap` carries this snippet: its filters first in
    /// listener `listener`'s chain, its routes first in `virtual_host`, and
    /// each of its clusters.
    pub fn assert_carried_by(&self, bootstrap: &Yaml, listener: &str, virtual_host: &str) {
        let mut bootstrap = bootstrap.clone();
        let hcm = http_connection_manager(&mut bootstrap, listener);
        let filters = hcm["http_filters"].as_sequence().expect("http_filters");
        assert_eq!(
            filters[..self.http_filters.len()],
            self.http_filters[..],
            "http_filters of {listener} are not the snippet's"
        );
        self.assert_routes_and_clusters(&bootstrap, listener, virtual_host);
    }

    /// The routes and clusters only (bootstraps with their own filter configuration).
    pub fn assert_routes_and_clusters(&self, bootstrap: &Yaml, listener: &str, virtual_host: &str) {
        let mut bootstrap = bootstrap.clone();
        let hcm = http_connection_manager(&mut bootstrap, listener).clone();
        let host = hcm["route_config"]["virtual_hosts"]
            .as_sequence()
            .expect("virtual_hosts")
            .iter()
            .find(|v| v["name"].as_str() == Some(virtual_host))
            .unwrap_or_else(|| panic!("virtual host {virtual_host}"));
        let routes = host["routes"].as_sequence().expect("routes");
        assert_eq!(
            routes[..self.routes.len()],
            self.routes[..],
            "routes of {virtual_host} are not the snippet's"
        );
        let clusters = bootstrap["static_resources"]["clusters"]
            .as_sequence()
            .expect("clusters");
        for cluster in &self.clusters {
            let found = clusters.iter().find(|c| c["name"] == cluster["name"]);
            assert_eq!(
                found,
                Some(cluster),
                "cluster {:?} differs from the snippet's",
                cluster["name"]
            );
        }
    }
}

/// Calls `f` on every Wasm `vm_config` under `node`.
pub fn for_each_vm_config(node: &mut Yaml, f: &mut dyn FnMut(&mut Yaml)) {
    match node {
        Yaml::Mapping(mapping) => {
            for (key, value) in mapping.iter_mut() {
                if key.as_str() == Some("vm_config") {
                    f(value);
                } else {
                    for_each_vm_config(value, f);
                }
            }
        }
        Yaml::Sequence(items) => items.iter_mut().for_each(|i| for_each_vm_config(i, f)),
        _ => {}
    }
}

/// Sets every Wasm `vm_config`'s file under `node` (the snippet's path) to
/// `wasm`; how many there were.
fn set_wasm_files(node: &mut Yaml, wasm: &str) -> usize {
    let mut found = 0;
    for_each_vm_config(node, &mut |vm| {
        let code = &mut vm["code"]["local"]["filename"];
        assert_eq!(*code, Yaml::from(SNIPPET_WASM_PATH));
        *code = Yaml::from(wasm);
        found += 1;
    });
    found
}

/// The `typed_config` of listener `listener`'s HttpConnectionManager.
pub fn http_connection_manager<'a>(bootstrap: &'a mut Yaml, listener: &str) -> &'a mut Yaml {
    let listener = bootstrap["static_resources"]["listeners"]
        .as_sequence_mut()
        .expect("listeners")
        .iter_mut()
        .find(|l| l["name"].as_str() == Some(listener))
        .unwrap_or_else(|| panic!("listener {listener}"));
    let filters = listener["filter_chains"][0]["filters"]
        .as_sequence_mut()
        .expect("network filters");
    let hcm = filters
        .iter_mut()
        .find(|f| f["name"].as_str() == Some("envoy.filters.network.http_connection_manager"))
        .expect("an http_connection_manager");
    &mut hcm["typed_config"]
}

/// The snippet's commented `transport_socket` for the token-service cluster,
/// uncommented, with its CA and (for mTLS) client certificate files set;
/// without `client`, its `tls_certificates` are left out.
pub fn snippet_token_service_tls(ca: &Path, client: Option<(&Path, &Path)>) -> Yaml {
    let text = read_repo_file(SNIPPET_PATH);
    let block: Vec<&str> = text
        .lines()
        .skip_while(|line| *line != "  # transport_socket:")
        .take_while(|line| line.starts_with("  # "))
        .map(|line| &line["  # ".len()..])
        .collect();
    assert!(
        !block.is_empty(),
        "{SNIPPET_PATH}: no commented transport_socket"
    );
    let mut socket = parse_yaml(&block.join("\n"))["transport_socket"].clone();
    let context = &mut socket["typed_config"]["common_tls_context"];
    context["validation_context"]["trusted_ca"]["filename"] = Yaml::from(ca.display().to_string());
    match client {
        Some((cert, key)) => {
            let pair = &mut context["tls_certificates"][0];
            pair["certificate_chain"]["filename"] = Yaml::from(cert.display().to_string());
            pair["private_key"]["filename"] = Yaml::from(key.display().to_string());
        }
        None => {
            context
                .as_mapping_mut()
                .expect("common_tls_context")
                .remove("tls_certificates");
        }
    }
    socket
}

/// `bootstrap` with `transport_socket` on its token-service cluster.
pub fn with_token_service_tls(bootstrap: &str, transport_socket: &Yaml) -> String {
    let mut doc = parse_yaml(bootstrap);
    let cluster = doc["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("clusters")
        .iter_mut()
        .find(|c| c["name"].as_str() == Some("authstamp_token_service"))
        .expect("the token-service cluster");
    cluster["transport_socket"] = transport_socket.clone();
    serde_yaml_ng::to_string(&doc).expect("yaml")
}

/// `envoy/egress.yaml` (`envoy/egress-native.yaml` for the native build, see
/// [`crate::filter_build`]) for `stack`: its token service, the built filter,
/// the stack's app (its key goes in Envoy's environment, see [`Envoy::start`]),
/// `hosts` as `provider_hosts` and `unmapped` as `unmapped_hosts`.
pub fn egress_bootstrap(stack: &Stack, hosts: &[(&str, &str)], unmapped: &str) -> String {
    let hosts: serde_json::Map<String, Value> = hosts
        .iter()
        .map(|(host, provider)| (host.to_string(), json!(provider)))
        .collect();
    let text = match crate::filter_build() {
        crate::FilterBuild::Wasm => with_built_filter(
            &read_repo_file("envoy/egress.yaml"),
            "filename: target/wasm32-wasip1/release/authstamp_filter.wasm",
        ),
        // The module comes from ENVOY_DYNAMIC_MODULES_SEARCH_PATH (crate::envoy_command).
        crate::FilterBuild::Native => read_repo_file("envoy/egress-native.yaml"),
    };
    replace_once(
        &text,
        &[
            ("port_value: 9902", "port_value: 0".to_string()),
            ("port_value: 10001", "port_value: 0".to_string()),
            (
                "port_value: 8081",
                format!("port_value: {}", port_of(&stack.filter_url)),
            ),
            (
                r#""id": "app_your_app_id""#,
                format!(r#""id": "{}""#, stack.app_id),
            ),
            (
                r#""provider_hosts": {"slack.com": "slack", "graph.microsoft.com": "microsoft"}"#,
                format!(r#""provider_hosts": {}"#, Value::Object(hosts)),
            ),
            (
                r#""unmapped_hosts": "pass""#,
                format!(r#""unmapped_hosts": "{unmapped}""#),
            ),
        ],
    )
}

/// `envoy/compose.yaml` on this machine: loopback ports chosen by Envoy, the
/// token service at `service_url`, the built filter.
pub fn compose_bootstrap(filter_url: &str) -> String {
    let text = with_built_filter(
        &read_repo_file("envoy/compose.yaml"),
        "filename: /etc/envoy/authstamp_filter.wasm",
    );
    replace_once(
        &text,
        &[
            (
                "address: 127.0.0.1, port_value: 9901",
                "address: 127.0.0.1, port_value: 0".to_string(),
            ),
            (
                "address: 0.0.0.0, port_value: 10000",
                "address: 127.0.0.1, port_value: 0".to_string(),
            ),
            (
                "address: authstamp-token-service, port_value: 8081",
                format!("address: 127.0.0.1, port_value: {}", port_of(filter_url)),
            ),
        ],
    )
}

/// The system CA bundle of the snippet's https cluster, to be replaced by a
/// test CA.
pub const SYSTEM_CA_BUNDLE: &str = "filename: /etc/ssl/certs/ca-certificates.crt";

/// An Envoy started for one test from a complete bootstrap.
pub struct Envoy {
    pub process: Process,
    pub admin_url: String,
    /// Listener name → `http://127.0.0.1:PORT`.
    pub listeners: BTreeMap<String, String>,
    http: Client,
}

impl Envoy {
    /// Starts `envoy -c <config>` with the test process's filter credential
    /// and `env` added to its environment and waits until its admin says
    /// LIVE and every listener is bound.
    pub async fn start(log_dir: &Path, name: &str, config: &str, env: &[(&str, &str)]) -> Envoy {
        Envoy::start_with_workers(log_dir, name, config, env, 1).await
    }

    /// [`Envoy::start`] with `concurrency` worker threads.
    pub async fn start_with_workers(
        log_dir: &Path,
        name: &str,
        config: &str,
        env: &[(&str, &str)],
        concurrency: u32,
    ) -> Envoy {
        let config_path = log_dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, config).expect("write envoy config");
        let admin_path = log_dir.join(format!("{name}-admin-address"));
        let mut command = crate::envoy_command();
        command
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &concurrency.to_string()])
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["-l", "info", "--component-log-level", "wasm:debug"])
            .envs(env.iter().copied());
        let mut process = Process::spawn(name, command, log_dir, "\u{0}never");
        let http = Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            assert!(
                Instant::now() < deadline,
                "{name} not ready\n{}",
                process.logs()
            );
            assert!(process.is_running(), "{name} exited\n{}", process.logs());
            if let Ok(address) = std::fs::read_to_string(&admin_path) {
                let admin_url = format!("http://{}", address.trim());
                let ready = http.get(format!("{admin_url}/ready")).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    let listeners: Value = http
                        .get(format!("{admin_url}/listeners?format=json"))
                        .send()
                        .await
                        .expect("listeners")
                        .json()
                        .await
                        .expect("listeners json");
                    let listeners = listeners["listener_statuses"]
                        .as_array()
                        .expect("listener_statuses")
                        .iter()
                        .map(|l| {
                            let port = l["local_address"]["socket_address"]["port_value"]
                                .as_u64()
                                .expect("port");
                            (
                                l["name"].as_str().expect("name").to_string(),
                                format!("http://127.0.0.1:{port}"),
                            )
                        })
                        .collect();
                    return Envoy {
                        process,
                        admin_url,
                        listeners,
                        http,
                    };
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn listener(&self, name: &str) -> &str {
        self.listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name}: {:?}", self.listeners))
    }

    /// The value of counter or gauge `name` (0 when Envoy has none yet).
    pub async fn stat(&self, name: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/stats?filter=^{}$", self.admin_url, name))
            .send()
            .await
            .expect("stats")
            .text()
            .await
            .expect("stats text");
        text.lines()
            .filter_map(|line| line.split_once(": "))
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A plain HTTP/1.1 server that answers every request with a JSON echo of
/// its request line and headers, and records them: "some other host".
pub struct EchoServer {
    pub url: String,
    pub authority: String,
    seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    pub async fn start() -> EchoServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo");
        let authority = listener.local_addr().expect("addr").to_string();
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let mut lines = text.split("\r\n");
                    let request_line = lines.next().unwrap_or_default().to_string();
                    let mut headers = serde_json::Map::new();
                    for line in lines.take_while(|l| !l.is_empty()) {
                        if let Some((name, value)) = line.split_once(':') {
                            headers.insert(name.trim().to_ascii_lowercase(), json!(value.trim()));
                        }
                    }
                    let echo = json!({"request_line": request_line, "headers": headers});
                    record.lock().expect("lock").push(echo.clone());
                    let body = echo.to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-echo: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        EchoServer {
            url: format!("http://{authority}"),
            authority,
            seen,
            task,
        }
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Value> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A keep-alive HTTP/1.1 upstream that answers every request with
/// `{"authorization": <the request's authorization or null>}` and only
/// counts requests (it keeps nothing of them): a provider for runs of
/// millions of requests, each checked by its client.
pub struct CredentialEcho {
    pub url: String,
    requests: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CredentialEcho {
    pub async fn start() -> CredentialEcho {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind credential echo");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&requests);
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
                axum::Json(json!({ "authorization": authorization }))
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CredentialEcho {
            url,
            requests,
            task,
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for CredentialEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 upstream that records each request's raw bytes (head and
/// `content-length` body) and answers every one with the same raw response,
/// or (`None`) never answers: a provider whose exact bytes a test compares.
pub struct RawUpstream {
    pub url: String,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(response: Option<Vec<u8>>) -> RawUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw upstream");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let record = Arc::clone(&seen);
        let response = Arc::new(response);
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                let response = Arc::clone(&response);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let head_end = buffer
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map(|i| i + 4);
                        if let Some(head_end) = head_end {
                            let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if buffer.len() >= head_end + length {
                                let request: Vec<u8> = buffer.drain(..head_end + length).collect();
                                record.lock().expect("lock").push(request);
                                match response.as_ref() {
                                    Some(bytes) => {
                                        if socket.write_all(bytes).await.is_err() {
                                            return;
                                        }
                                        continue;
                                    }
                                    // Hold the connection, answer nothing.
                                    None => {
                                        let _ = socket.read(&mut chunk).await;
                                        return;
                                    }
                                }
                            }
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        RawUpstream { url, seen, task }
    }

    /// The raw bytes of every request received so far.
    pub fn seen(&self) -> Vec<Vec<u8>> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One raw HTTP/1 exchange: `request` written as is, the answer read until
/// its `content-length` body is in, the peer closes, or `timeout` passes.
pub struct RawResponse {
    pub status: u16,
    /// Lower-case names, in order, repeats kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

pub async fn raw_http(address: &str, request: &[u8], timeout: Duration) -> RawResponse {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    // The peer may answer and close before reading everything.
    let _ = stream.write_all(request).await;
    let mut raw = Vec::new();
    let read_answer = async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
            let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|length| raw.len() >= head_end + 4 + length) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read_answer).await;
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = raw.get(head_end + 4..).unwrap_or_default().to_vec();
    RawResponse {
        status,
        headers,
        body,
    }
}

/// Creates or replaces `provider` of `app_id` with the stand-in's client and
/// the given URLs.
pub async fn configure_provider_urls(
    stack: &Stack,
    app_id: &str,
    provider: &str,
    authorize_url: &str,
    token_url: &str,
    api_base_url: &str,
) {
    let response = stack
        .admin(
            Method::PUT,
            &format!("/v1/apps/{app_id}/providers/{provider}"),
        )
        .json(&json!({
            "client_id": CLIENT_ID,
            "client_secret": stack.client_secret,
            "authorize_url": authorize_url,
            "token_url": token_url,
            "api_base_url": api_base_url,
            "scopes": ["read"],
        }))
        .send()
        .await
        .expect("put provider");
    let status = response.status();
    assert_eq!(status, StatusCode::OK, "{:?}", response.text().await);
}

/// Connects `user` of the stack's app to `provider` through the browser flow.
pub async fn connect_provider(stack: &Stack, provider: &str, user: &str) -> ConnectOutcome {
    let response = stack
        .http
        .post(format!("{}/v1/connect-sessions", stack.service_url))
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", &stack.app_key)
        .json(&json!({"provider": provider, "user": user}))
        .send()
        .await
        .expect("connect session");
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("session json");
    let connect_url = body["connect_url"].as_str().expect("connect_url");
    let outcome = walk_connect(&browser_client(), connect_url, user).await;
    assert_eq!(
        outcome.final_status,
        StatusCode::OK,
        "{}",
        outcome.final_body
    );
    outcome
}

/// The port of `http://host:port`.
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// A client that sends every `http://` request through `proxy` (absolute-form
/// request target, as a service with `HTTP_PROXY` does).
pub fn proxied_client(proxy: &str) -> Client {
    Client::builder()
        .proxy(reqwest::Proxy::http(proxy).expect("proxy url"))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("proxied client")
}

/// A test CA and certificates made with the `openssl` command line.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: PathBuf) -> Pki {
        std::fs::create_dir_all(&dir).expect("pki dir");
        Pki { dir }
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run openssl (install it: apt-get install openssl)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A self-signed CA: `<name>.crt`, `<name>.key`.
    pub fn ca(&self, name: &str) -> PathBuf {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=authstamp test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ]);
        self.dir.join(format!("{name}.crt"))
    }

    /// A server certificate for `dns_name` signed by CA `ca`:
    /// `(<name>.crt, <name>.key)`.
    pub fn server(&self, name: &str, ca: &str, dns_name: &str) -> (PathBuf, PathBuf) {
        self.leaf(name, ca, dns_name, "serverAuth")
    }

    /// A client certificate (for mTLS) with `dns_name` signed by CA `ca`:
    /// `(<name>.crt, <name>.key)`.
    pub fn client(&self, name: &str, ca: &str, dns_name: &str) -> (PathBuf, PathBuf) {
        self.leaf(name, ca, dns_name, "clientAuth")
    }

    fn leaf(&self, name: &str, ca: &str, dns_name: &str, usage: &str) -> (PathBuf, PathBuf) {
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\nsubjectAltName=DNS:{dns_name}\n"
            ),
        )
        .expect("ext file");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={dns_name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.crt"),
        ]);
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }
}
