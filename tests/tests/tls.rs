//! TLS to providers: the provider's API is https, in front of the stand-in
//! a TLS-terminating Envoy (the "TLS stand-in") with certificates from a CA
//! made for this test; authstamp's Envoy trusts that CA only. A stamped
//! request reaches the provider over TLS with SNI; a certificate from another
//! CA, or for another name, is refused before any byte of the request (and so
//! the token) is sent. And TLS (and mTLS) from Envoy to the token service's
//! filter listener.

use authstamp_e2e::deploy::{
    configure_provider_urls, connect_provider, egress_bootstrap, proxied_client, replace_once,
    snippet_token_service_tls, with_token_service_tls, Envoy, Pki, SYSTEM_CA_BUNDLE,
};
use authstamp_e2e::stack::local_bootstrap;
use authstamp_e2e::{Stack, StackOptions};
use authstamp_testkit::json_of;
use reqwest::StatusCode;
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

/// The certificates of the filter listener's TLS tests: the service's
/// (`authstamp-token-service`, by CA `filter-ca`), Envoy's client
/// certificate (CA `client-ca`) and one by another CA.
struct FilterPki {
    ca: std::path::PathBuf,
    server: (std::path::PathBuf, std::path::PathBuf),
    client_ca: std::path::PathBuf,
    client: (std::path::PathBuf, std::path::PathBuf),
    stranger: (std::path::PathBuf, std::path::PathBuf),
}

fn filter_pki(test: &str) -> FilterPki {
    let pki = Pki::new(
        authstamp_e2e::workspace_root()
            .join("target/e2e-logs")
            .join(format!("{test}-pki")),
    );
    let ca = pki.ca("filter-ca");
    let server = pki.server("service", "filter-ca", "authstamp-token-service");
    let client_ca = pki.ca("client-ca");
    let client = pki.client("envoy", "client-ca", "authstamp-envoy");
    pki.ca("other-ca");
    let stranger = pki.client("stranger", "other-ca", "authstamp-envoy");
    FilterPki {
        ca,
        server,
        client_ca,
        client,
        stranger,
    }
}

/// A client that trusts the filter listener's CA, with `identity` as its
/// client certificate.
fn filter_client(
    pki: &FilterPki,
    identity: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve("authstamp-token-service", "127.0.0.1:0".parse().unwrap())
        .timeout(std::time::Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// A stamped call through `envoy`: the status.
async fn stamped_status(stack: &Stack, envoy: &Envoy, user: &str) -> StatusCode {
    stack
        .http
        .get(format!("{}/api/hello", envoy.listener("authstamp_egress")))
        .header("x-authstamp-provider", authstamp_e2e::stack::PROVIDER)
        .header("x-authstamp-user", user)
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", &stack.app_key)
        .send()
        .await
        .unwrap()
        .status()
}

/// Issue 10 item 8: Envoy → token service over TLS, with the snippet's
/// commented transport_socket (no client certificate) and the filter token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_looks_up_over_tls_with_the_snippets_transport_socket() {
    let pki = filter_pki("tls_filter_listener");
    let (cert, key) = &pki.server;
    let stack = Stack::start(
        "tls_filter_listener",
        StackOptions {
            service_args: vec![
                "--filter-tls-cert".into(),
                cert.display().to_string(),
                "--filter-tls-key".into(),
                key.display().to_string(),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    assert!(
        stack.filter_url.starts_with("https://"),
        "{}",
        stack.filter_url
    );
    stack.connect_user("tina").await;

    let socket = snippet_token_service_tls(&pki.ca, None);
    let config = with_token_service_tls(&local_bootstrap(&stack.filter_url), &socket);
    let envoy = Envoy::start(&stack.log_dir, "envoy-tls", &config, &[]).await;
    assert_eq!(stamped_status(&stack, &envoy, "tina").await, StatusCode::OK);
    assert!(
        envoy
            .stat("cluster.authstamp_token_service.ssl.handshake")
            .await
            >= 1
    );

    // The plaintext Envoy of the stack cannot look up any more.
    let response = stack
        .call(reqwest::Method::GET, "/api/hello", "tina")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Over TLS the filter token is still required.
    let port = authstamp_e2e::deploy::port_of(&stack.filter_url);
    let url = format!("https://authstamp-token-service:{port}/v1/token-lookup");
    let response = filter_client(&pki, None)
        .post(&url)
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", &stack.app_key)
        .json(&serde_json::json!({"provider": authstamp_e2e::stack::PROVIDER, "user": "tina"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// mTLS: Envoy's client certificate is the filter credential (its token is
/// wrong here and the lookup still works); without a certificate of the
/// client CA no TLS connection is made at all, not even with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mtls_the_client_certificate_is_the_filter_credential() {
    let pki = filter_pki("mtls_filter_listener");
    let (cert, key) = &pki.server;
    let stack = Stack::start(
        "mtls_filter_listener",
        StackOptions {
            service_args: vec![
                "--filter-tls-cert".into(),
                cert.display().to_string(),
                "--filter-tls-key".into(),
                key.display().to_string(),
                "--filter-client-ca".into(),
                pki.client_ca.display().to_string(),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    stack.connect_user("uma").await;

    let (client_cert, client_key) = &pki.client;
    let socket = snippet_token_service_tls(&pki.ca, Some((client_cert, client_key)));
    let config = with_token_service_tls(&local_bootstrap(&stack.filter_url), &socket);
    let envoy = Envoy::start(
        &stack.log_dir,
        "envoy-mtls",
        &config,
        &[(
            authstamp_e2e::FILTER_TOKEN_ENV,
            "ftk_not-the-filter-credential",
        )],
    )
    .await;
    assert_eq!(stamped_status(&stack, &envoy, "uma").await, StatusCode::OK);

    let port = authstamp_e2e::deploy::port_of(&stack.filter_url);
    let url = format!("https://authstamp-token-service:{port}/v1/token-lookup");
    let lookup = serde_json::json!({"provider": authstamp_e2e::stack::PROVIDER, "user": "uma"});
    for (what, identity) in [
        ("no client certificate", None),
        ("another CA's", Some(&pki.stranger)),
    ] {
        let result = filter_client(&pki, identity)
            .post(&url)
            .bearer_auth(authstamp_e2e::filter_token())
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", &stack.app_key)
            .json(&lookup)
            .send()
            .await;
        assert!(result.is_err(), "{what}: {result:?}");
    }
    // Plain HTTP to the TLS port gets nothing either.
    let plain = stack
        .http
        .post(format!("http://127.0.0.1:{port}/v1/token-lookup"))
        .json(&lookup)
        .send()
        .await;
    assert!(!plain.is_ok_and(|r| r.status().is_success()));
    // The right client certificate alone opens it.
    let response = filter_client(&pki, Some(&pki.client))
        .post(&url)
        .header("x-authstamp-app", &stack.app_id)
        .header("x-authstamp-app-key", &stack.app_key)
        .json(&lookup)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
