//! The five Envoy bootstraps of the benchmark. All of them: one listener,
//! the same HTTP connection manager, the same static upstream cluster, the
//! router; admin and listener on free ports. They differ only in what
//! stamps the credential.

use std::path::Path;

/// The credential the static scenarios (b) and (c) send.
pub const STATIC_CREDENTIAL: &str = "Bearer bench-static-token-0123456789abcdef";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// (a) plain routing.
    Plain,
    /// (b) `request_headers_to_add` on the route.
    RouteHeader,
    /// (c) the native credential_injector filter, generic credential.
    CredentialInjector,
    /// (d) and (e): the authstamp filter, with its healable mark, replay
    /// instance and the route's retry policy as in envoy/envoy.yaml.
    Authstamp,
    /// The authstamp filter alone: no mark, no replay instance, no retry
    /// policy (the heal machinery off, to measure what it costs a hit; also
    /// the A/B rows of AUTHSTAMP_BENCH_ALT_WASM).
    AuthstampWithoutHealing,
    /// (d'): the authstamp native module (libauthstamp_native.so from
    /// ENVOY_DYNAMIC_MODULES_SEARCH_PATH), with the heal machinery, as in
    /// envoy/envoy-native.yaml.
    Native,
    /// The native module alone: no mark, no replay instance, no retry policy
    /// (the heal machinery off, to measure what it costs a hit).
    NativeWithoutHealing,
    /// Reference rows: the cheapest proxy-wasm filter (bench/floor-filter),
    /// doing nothing (`false`) or setting one static header (`true`).
    WasmFloor { stamp: bool },
    /// The same for a dynamic module: authstamp-native built with its
    /// `floor` feature (target/native-floor), the floor of any module.
    NativeFloor { stamp: bool },
    /// That module making a hit's host calls without its logic (row (u)).
    NativeHitWrites,
}

pub struct Ports {
    pub upstream: u16,
    pub token_service: u16,
}

fn route_to_upstream(extra: &str) -> String {
    format!(
        r#"
              - match: {{ prefix: "/" }}
                route: {{ cluster: bench_upstream, timeout: 10s }}{extra}"#
    )
}

const ROUTER: &str = r#"
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#;

/// The filter configuration of (d) and (e), as in envoy/envoy.yaml, minus
/// `mark_healable` (added with the heal machinery).
pub const AUTHSTAMP_CONFIG: &str = r#"{"token_service": {"cluster": "authstamp_token_service", "authority": "authstamp-token-service", "timeout": "2s", "credential_env": "AUTHSTAMP_FILTER_TOKEN"}, "refresh_skew": "30s", "max_cache_ttl": "5m"}"#;

/// [`AUTHSTAMP_CONFIG`] with `"mark_healable": true`, or as it is.
fn authstamp_config(healing: bool) -> String {
    if healing {
        AUTHSTAMP_CONFIG.replacen('}', r#"}, "mark_healable": true"#, 1)
    } else {
        AUTHSTAMP_CONFIG.to_string()
    }
}

/// Envoy's environment variable with the filter credential (`credential_env`).
pub const FILTER_TOKEN_ENV: &str = "AUTHSTAMP_FILTER_TOKEN";

fn wasm_filter(name: &str, vm_id: &str, configuration: &str, wasm: &Path) -> String {
    format!(
        r#"
          - name: {name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}
                fail_open: false
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{configuration}'
                vm_config:
                  vm_id: {vm_id}
                  runtime: envoy.wasm.runtime.v8
                  environment_variables: {{ host_env_keys: [{FILTER_TOKEN_ENV}] }}
                  code: {{ local: {{ filename: "{wasm}" }} }}{ROUTER}"#,
        wasm = wasm.display()
    )
}

fn native_filter(name: &str, configuration: &str) -> String {
    format!(
        r#"
          - name: {name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{ name: authstamp_native, do_not_close: true }}
              filter_name: {name}
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '{configuration}'{ROUTER}"#
    )
}

/// The routes' retry policy of envoy/envoy.yaml.
const RETRY_POLICY: &str = r#"
                  retry_policy:
                    retry_on: retriable-status-codes
                    retriable_status_codes: [401]
                    num_retries: 1
                    retriable_request_headers:
                    - name: x-authstamp-heal
                      string_match: { exact: "1" }
                    retry_back_off: { base_interval: 0.001s, max_interval: 0.002s }"#;

/// The replay instance of the filter on the upstream cluster, as on the
/// provider clusters of envoy/envoy.yaml: `filter` is its innermost
/// typed_config (the Wasm filter or the native module).
fn replay_instance(filter: &str) -> String {
    format!(
        r#"
    circuit_breakers:
      thresholds:
      - max_retries: 1024
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http_protocol_options: {{}} }}
        http_filters:
        - name: authstamp_replay
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
            extension_config:
              name: authstamp_replay_composite
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite
            xds_matcher:
              matcher_tree:
                input:
                  name: attempt_count
                  typed_config:
                    "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput
                    header_name: x-envoy-attempt-count
                exact_match_map:
                  map:
                    "2":
                      action:
                        name: replay
                        typed_config:
                          "@type": type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction
                          typed_config:
                            name: authstamp_replay
                            typed_config:{filter}
        - name: envoy.filters.http.header_mutation
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
            mutations:
              request_mutations:
              - remove: x-envoy-attempt-count
              - remove: x-authstamp-heal
        - name: envoy.filters.http.upstream_codec
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"#
    )
}

/// The Wasm filter's replay instance (the listener's VM).
fn wasm_replay(wasm: &Path) -> String {
    format!(
        r#"
                              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                              config:
                                name: authstamp_replay
                                root_id: authstamp_replay
                                fail_open: false
                                configuration:
                                  "@type": type.googleapis.com/google.protobuf.StringValue
                                  value: '{{"role": "replay"}}'
                                vm_config:
                                  vm_id: authstamp
                                  runtime: envoy.wasm.runtime.v8
                                  code: {{ local: {{ filename: "{wasm}" }} }}"#,
        wasm = wasm.display()
    )
}

/// The native module's replay instance.
const NATIVE_REPLAY: &str = r#"
                              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
                              dynamic_module_config: { name: authstamp_native, do_not_close: true }
                              filter_name: authstamp_replay
                              filter_config:
                                "@type": type.googleapis.com/google.protobuf.StringValue
                                value: '{"role": "replay"}'"#;

/// `wasm`: the authstamp filter; `floor_wasm`: bench/floor-filter.
pub fn bootstrap(kind: Kind, ports: &Ports, wasm: &Path, floor_wasm: &Path) -> String {
    let native = matches!(kind, Kind::Native | Kind::NativeWithoutHealing);
    let healing = matches!(kind, Kind::Authstamp | Kind::Native);
    let kind = if healing || native {
        Kind::AuthstampWithoutHealing
    } else {
        kind
    };
    let (routes, filters, extra_clusters, secrets) = match kind {
        Kind::WasmFloor { stamp } => (
            route_to_upstream(""),
            wasm_filter(
                "floor",
                "floor",
                if stamp { "stamp" } else { "noop" },
                floor_wasm,
            ),
            String::new(),
            String::new(),
        ),
        Kind::NativeFloor { stamp } => (
            route_to_upstream(""),
            native_filter(
                "floor",
                if stamp {
                    r#"{"floor": "stamp"}"#
                } else {
                    r#"{"floor": "noop"}"#
                },
            ),
            String::new(),
            String::new(),
        ),
        Kind::NativeHitWrites => (
            route_to_upstream(""),
            native_filter("floor", r#"{"floor": "writes"}"#),
            String::new(),
            String::new(),
        ),
        Kind::Plain => (
            route_to_upstream(""),
            ROUTER.to_string(),
            String::new(),
            String::new(),
        ),
        Kind::RouteHeader => (
            route_to_upstream(&format!(
                r#"
                request_headers_to_add:
                - header: {{ key: authorization, value: "{STATIC_CREDENTIAL}" }}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD"#
            )),
            ROUTER.to_string(),
            String::new(),
            String::new(),
        ),
        Kind::CredentialInjector => (
            route_to_upstream(""),
            format!(
                r#"
          - name: envoy.filters.http.credential_injector
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector
              overwrite: true
              credential:
                name: envoy.http.injected_credentials.generic
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic
                  credential: {{ name: bench-credential }}
                  header: authorization{ROUTER}"#
            ),
            String::new(),
            format!(
                r#"
  secrets:
  - name: bench-credential
    generic_secret:
      secret: {{ inline_string: "{STATIC_CREDENTIAL}" }}"#
            ),
        ),
        Kind::Authstamp
        | Kind::AuthstampWithoutHealing
        | Kind::Native
        | Kind::NativeWithoutHealing => (
            format!(
                r#"
              - match:
                  prefix: "/"
                  headers:
                  - name: x-authstamp-route
                    string_match: {{ exact: http }}
                route:
                  cluster: bench_upstream
                  timeout: 10s{retry}
                request_headers_to_remove: [x-authstamp-route]
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 404 }}"#,
                retry = if healing { RETRY_POLICY } else { "" }
            ),
            if native {
                native_filter("authstamp", &authstamp_config(healing))
            } else {
                wasm_filter("authstamp", "authstamp", &authstamp_config(healing), wasm)
            },
            format!(
                r#"
  - name: authstamp_token_service
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: authstamp_token_service
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}"#,
                ports.token_service
            ),
            String::new(),
        ),
    };
    format!(
        r#"# authstamp benchmark bootstrap ({kind:?}); generated by bench/src/configs.rs
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            name: bench
            virtual_hosts:
            - name: bench
              domains: ["*"]{attempt_count}
              routes:{routes}
          http_filters:{filters}
  clusters:
  - name: bench_upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: bench_upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }}{upstream_filters}{extra_clusters}{secrets}
"#,
        upstream = ports.upstream,
        attempt_count = if healing {
            "\n              include_request_attempt_count: true"
        } else {
            ""
        },
        upstream_filters = if native && healing {
            replay_instance(NATIVE_REPLAY)
        } else if healing {
            replay_instance(&wasm_replay(wasm))
        } else {
            String::new()
        },
    )
}
