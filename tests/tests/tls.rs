//! TLS to providers: the provider's API is https, in front of the stand-in
//! a TLS-terminating Envoy (the "TLS stand-in") with certificates from a CA
//! made for this test; authstamp's Envoy trusts that CA only. A stamped
//! request reaches the provider over TLS with SNI; a certificate from another
//! CA, or for another name, is refused before any byte of the request (and so
//! the token) is sent.

use authstamp_e2e::deploy::{
    configure_provider_urls, connect_provider, egress_bootstrap, proxied_client, replace_once,
    Envoy, Pki, SYSTEM_CA_BUNDLE,
};
use authstamp_e2e::stack::local_bootstrap;
use authstamp_e2e::{Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::Path;

/// One TLS listener of the TLS stand-in: its name and certificate.
struct Front<'a> {
    listener: &'a str,
    cert: &'a Path,
    key: &'a Path,
}

/// A TLS-terminating Envoy in front of the stand-in provider: each listener
/// presents its own certificate, and tells the provider (request headers)
/// which listener and which SNI the client used.
fn tls_standin_bootstrap(standin_port: u16, fronts: &[Front]) -> String {
    let listeners: Vec<String> = fronts
        .iter()
        .map(|f| {
            format!(
                r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{ filename: {cert} }}
              private_key: {{ filename: {key} }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: standin
              domains: ["*"]
              request_headers_to_add:
              - header: {{ key: x-front-sni, value: "%REQUESTED_SERVER_NAME%" }}
              - header: {{ key: x-front-listener, value: {name} }}
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: standin }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#,
                name = f.listener,
                cert = f.cert.display(),
                key = f.key.display(),
            )
        })
        .collect();
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:{}
  clusters:
  - name: standin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: standin
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {standin_port} }} }} }}
"#,
        listeners.join("")
    )
}

async fn json_of(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_reached_over_tls_with_sni_and_a_wrong_certificate_gets_no_token() {
    let stack = Stack::start("tls", StackOptions::default()).await;
    let pki = Pki::new(stack.log_dir.join("pki"));
    let trusted_ca = pki.ca("trusted-ca");
    pki.ca("other-ca");
    let (good_cert, good_key) = pki.server("good", "trusted-ca", "localhost");
    let (other_cert, other_key) = pki.server("other", "other-ca", "localhost");
    let (wrong_cert, wrong_key) = pki.server("wrong-name", "trusted-ca", "provider.example");

    let standin_port = authstamp_e2e::deploy::port_of(&stack.standin_url);
    let front = Envoy::start(
        &stack.log_dir,
        "tls-standin",
        &tls_standin_bootstrap(
            standin_port,
            &[
                Front {
                    listener: "tls_good",
                    cert: &good_cert,
                    key: &good_key,
                },
                Front {
                    listener: "tls_other_ca",
                    cert: &other_cert,
                    key: &other_key,
                },
                Front {
                    listener: "tls_wrong_name",
                    cert: &wrong_cert,
                    key: &wrong_key,
                },
            ],
        ),
        &[],
    )
    .await;
    let https_url = |listener: &str| {
        let port = authstamp_e2e::deploy::port_of(front.listener(listener));
        format!("https://localhost:{port}")
    };

    // authstamp's Envoy: envoy/envoy.yaml, trusting the test CA instead of the system's.
    let config = replace_once(
        &local_bootstrap(&stack.filter_url),
        &[(
            SYSTEM_CA_BUNDLE,
            format!("filename: {}", trusted_ca.display()),
        )],
    );
    let envoy = Envoy::start(&stack.log_dir, "authstamp-envoy", &config, &[]).await;
    let envoy_url = envoy.listener("authstamp_egress").to_string();

    let standin = stack.standin_url.clone();
    for (provider, listener) in [
        ("tls-good", "tls_good"),
        ("tls-other-ca", "tls_other_ca"),
        ("tls-wrong-name", "tls_wrong_name"),
    ] {
        configure_provider_urls(
            &stack,
            &stack.app_id,
            provider,
            &format!("{standin}/oauth/authorize"),
            &format!("{standin}/oauth/token"),
            &https_url(listener),
        )
        .await;
        connect_provider(&stack, provider, "alice").await;
    }
    let call = |provider: &str| {
        stack
            .http
            .get(format!("{envoy_url}/api/files.list?limit=2"))
            .header("x-authstamp-provider", provider)
            .header("x-authstamp-user", "alice")
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", &stack.app_key)
    };

    // The right certificate: stamped, over TLS, with SNI = the provider's host.
    let response = call("tls-good").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json_of(response).await;
    assert_eq!(echo["user"], "alice");
    assert_eq!(echo["path"], "/api/files.list");
    assert_eq!(echo["headers"]["x-front-listener"][0], "tls_good");
    assert_eq!(echo["headers"]["x-front-sni"][0], "localhost", "SNI sent");
    assert!(echo["headers"]["authorization"][0]
        .as_str()
        .unwrap()
        .starts_with("Bearer sat_"));
    assert_eq!(stack.standin_stats().await["api_calls"], 1);
    let handshakes = envoy
        .stat("cluster.authstamp_upstream_https.ssl.handshake")
        .await;
    assert!(handshakes >= 1, "TLS handshakes: {handshakes}");

    // A certificate from another CA: refused, nothing reaches the provider.
    let response = call("tls-other-ca").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("x-standin-echo").is_none());
    assert_eq!(
        stack.standin_stats().await["api_calls"],
        1,
        "no request, so no token, reached the provider"
    );
    assert!(
        envoy
            .stat("cluster.authstamp_upstream_https.ssl.fail_verify_error")
            .await
            >= 1
    );

    // The trusted CA, but a certificate for another name.
    let response = call("tls-wrong-name").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(stack.standin_stats().await["api_calls"], 1);
    assert!(
        envoy
            .stat("cluster.authstamp_upstream_https.ssl.fail_verify_san")
            .await
            >= 1
    );

    // The TLS stand-in saw handshakes fail on both bad listeners and no request there.
    for listener in ["tls_other_ca", "tls_wrong_name"] {
        assert_eq!(
            front
                .stat(&format!("http.{listener}.downstream_rq_total"))
                .await,
            0,
            "{listener} got a request"
        );
    }

    // Transparent egress over TLS: the service calls http://<provider host>
    // with only the user header; Envoy stamps and originates the TLS.
    let egress_config = replace_once(
        &egress_bootstrap(
            &stack,
            &[(
                https_url("tls_good").trim_start_matches("https://"),
                "tls-good",
            )],
            "reject",
        ),
        &[(
            SYSTEM_CA_BUNDLE,
            format!("filename: {}", trusted_ca.display()),
        )],
    );
    let egress = Envoy::start(
        &stack.log_dir,
        "egress-envoy",
        &egress_config,
        &[("AUTHSTAMP_APP_KEY", stack.app_key.as_str())],
    )
    .await;
    let service = proxied_client(egress.listener("authstamp_transparent_egress"));
    let plain_url = https_url("tls_good").replace("https://", "http://");
    let response = service
        .get(format!("{plain_url}/api/conversations.list"))
        .header("x-authstamp-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json_of(response).await;
    assert_eq!(echo["user"], "alice");
    assert_eq!(echo["path"], "/api/conversations.list");
    assert_eq!(echo["headers"]["x-front-sni"][0], "localhost");
    assert_eq!(stack.standin_stats().await["api_calls"], 2);
}
