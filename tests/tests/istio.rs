//! The Istio manifests under `envoy/istio/`: each document's structure, the
//! names and ports that must agree across files, and the filter
//! configurations they carry, loaded by the real filter in Envoy
//! (`--mode validate`). No cluster is needed: nothing here is applied.

use authstamp_e2e::deploy::{parse_yaml_documents, read_repo_file};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

const FILES: [&str; 5] = [
    "envoy/istio/token-service.yaml",
    "envoy/istio/wasmplugin.yaml",
    "envoy/istio/workload.yaml",
    "envoy/istio/providers.yaml",
    "envoy/istio/envoyfilter.yaml",
];

struct Manifests {
    docs: Vec<(String, Yaml)>,
}

impl Manifests {
    fn load() -> Manifests {
        let mut docs = Vec::new();
        for file in FILES {
            for doc in parse_yaml_documents(&read_repo_file(file)) {
                for field in ["apiVersion", "kind"] {
                    assert!(
                        doc[field].as_str().is_some(),
                        "{file}: a document without {field}"
                    );
                }
                assert!(
                    doc["metadata"]["name"].as_str().is_some(),
                    "{file}: {} without a name",
                    doc["kind"].as_str().unwrap()
                );
                if doc["kind"] != "Namespace" {
                    assert!(
                        doc["metadata"]["namespace"].as_str().is_some(),
                        "{file}: {} {} without a namespace",
                        doc["kind"].as_str().unwrap(),
                        doc["metadata"]["name"].as_str().unwrap()
                    );
                }
                docs.push((file.to_string(), doc));
            }
        }
        Manifests { docs }
    }

    fn all(&self, kind: &str) -> Vec<&Yaml> {
        self.docs
            .iter()
            .filter(|(_, d)| d["kind"].as_str() == Some(kind))
            .map(|(_, d)| d)
            .collect()
    }

    fn one(&self, kind: &str) -> &Yaml {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "exactly one {kind}");
        all[0]
    }

    fn named(&self, kind: &str, namespace: &str, name: &str) -> &Yaml {
        self.all(kind)
            .into_iter()
            .find(|d| {
                d["metadata"]["namespace"].as_str() == Some(namespace)
                    && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name}"))
    }
}

fn namespace(doc: &Yaml) -> &str {
    doc["metadata"]["namespace"].as_str().unwrap()
}

fn strings(value: &Yaml) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| s.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

/// Asserts that `secretKeyRef` points at a Secret of `namespace` with that key.
fn assert_secret_key(manifests: &Manifests, namespace: &str, reference: &Yaml) {
    let name = reference["name"].as_str().expect("secretKeyRef.name");
    let key = reference["key"].as_str().expect("secretKeyRef.key");
    let secret = manifests.named("Secret", namespace, name);
    assert!(
        secret["stringData"].get(key).is_some() || secret["data"].get(key).is_some(),
        "Secret {namespace}/{name} has no key {key}"
    );
}

/// The WasmPlugin's pluginConfig as the JSON the filter receives.
fn plugin_config(wasm_plugin: &Yaml) -> Json {
    serde_json::to_value(&wasm_plugin["spec"]["pluginConfig"]).expect("pluginConfig as JSON")
}

/// `envoy --mode validate` of a bootstrap whose one HTTP filter is `filter`
/// (the wasm path pointed at the built module), with `env` set.
fn assert_envoy_loads(filter: &Json, wasm_path_in_pod: Option<&str>, env: &[(&str, &str)]) {
    let mut filter = filter.clone();
    let code = &mut filter["typed_config"]["config"]["vm_config"]["code"];
    if let Some(path) = wasm_path_in_pod {
        assert_eq!(code["local"]["filename"], path);
    }
    *code = serde_json::json!({"local": {"filename": authstamp_e2e::filter_wasm()}});
    let bootstrap = serde_json::json!({
        "static_resources": {"listeners": [{
            "name": "outbound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "outbound",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": []}]},
                    "http_filters": [filter, {
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                    }]
                }
            }]}]
        }]}
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, bootstrap.to_string()).expect("write");
    let output = authstamp_e2e::envoy_command()
        .args(["--mode", "validate", "-l", "warn", "-c"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .expect("run envoy");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_token_service_deployment_service_and_secret_agree() {
    let m = Manifests::load();
    let deployment = m.named("Deployment", "authstamp", "authstamp-token-service");
    let service = m.named("Service", "authstamp", "authstamp-token-service");
    let pod = &deployment["spec"]["template"];
    let labels = pod["metadata"]["labels"].as_mapping().unwrap();
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(labels.get(key), Some(value), "Service selector {key:?}");
    }
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"]["app"],
        pod["metadata"]["labels"]["app"]
    );
    let container = &pod["spec"]["containers"][0];
    let container_port = &container["ports"][0];
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], container_port["name"]);
    assert_eq!(container_port["containerPort"].as_u64(), Some(8080));
    assert!(service_port["name"].as_str().unwrap().starts_with("http"));
    let env = container["env"].as_sequence().unwrap();
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("env {name}"))
    };
    assert_eq!(var("AUTHSTAMP_LISTEN")["value"], "0.0.0.0:8080");
    // The filter API on its own port, in the Service too.
    let filter_container_port = &container["ports"][1];
    let filter_service_port = &service["spec"]["ports"][1];
    assert_eq!(filter_container_port["containerPort"].as_u64(), Some(8081));
    assert_eq!(var("AUTHSTAMP_FILTER_LISTEN")["value"], "0.0.0.0:8081");
    assert_eq!(
        filter_service_port["targetPort"],
        filter_container_port["name"]
    );
    assert_eq!(filter_service_port["port"].as_u64(), Some(8081));
    assert!(var("AUTHSTAMP_PUBLIC_URL")["value"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    for secret_var in [
        "AUTHSTAMP_MASTER_KEY",
        "AUTHSTAMP_ADMIN_TOKEN",
        "AUTHSTAMP_FILTER_TOKEN",
        "AUTHSTAMP_DATABASE_URL",
    ] {
        assert_secret_key(
            &m,
            "authstamp",
            &var(secret_var)["valueFrom"]["secretKeyRef"],
        );
    }
    let secret = m.named("Secret", "authstamp", "authstamp-token-service");
    assert!(secret["stringData"]["database-url"]
        .as_str()
        .unwrap()
        .starts_with("postgres://"));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/healthz");
        assert_eq!(container[probe]["httpGet"]["port"], container_port["name"]);
    }
    // The Dockerfile's user; no root, no writable image.
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["spec"]["securityContext"]["runAsUser"].as_u64(),
        Some(10001)
    );
    assert!(read_repo_file("Dockerfile").contains("USER 10001:10001"));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    // Browsers reach the connect and callback paths only.
    let browser = m.named("VirtualService", "authstamp", "authstamp-browser-paths");
    assert_eq!(
        browser["spec"]["http"][0]["match"]
            .as_sequence()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        browser["spec"]["http"][0]["route"][0]["destination"]["host"],
        "authstamp-token-service.authstamp.svc.cluster.local"
    );
    assert_eq!(
        browser["spec"]["http"][0]["route"][0]["destination"]["port"]["number"],
        service_port["port"]
    );

    // The authorization policy: on the token service's pods, no rule opens
    // the admin API (who gets what: the test after this one).
    let policy = m.named(
        "AuthorizationPolicy",
        "authstamp",
        "authstamp-token-service",
    );
    assert_eq!(policy["spec"]["action"], "ALLOW");
    for (key, value) in policy["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(labels.get(key), Some(value));
    }
    let rules = policy["spec"]["rules"].as_sequence().unwrap();
    let paths_of = |rule: &Yaml| strings(&rule["to"][0]["operation"]["paths"]);
    let plugin = m.one("WasmPlugin");
    let workload_rule = rules
        .iter()
        .find(|r| {
            strings(&r["from"][0]["source"]["namespaces"]).contains(&namespace(plugin).to_string())
        })
        .expect("a rule for the workload's namespace");
    // The lookup only on the filter port, and nothing else there.
    let ports_of = |rule: &Yaml| strings(&rule["to"][0]["operation"]["ports"]);
    assert_eq!(ports_of(workload_rule), ["8080"]);
    assert!(!paths_of(workload_rule).contains(&"/v1/token-lookup".to_string()));
    let lookup_rule = rules
        .iter()
        .find(|r| ports_of(r) == ["8081"])
        .expect("a rule for the filter port");
    assert_eq!(paths_of(lookup_rule), ["/v1/token-lookup"]);
    assert_eq!(
        strings(&lookup_rule["from"][0]["source"]["namespaces"]),
        [namespace(plugin)]
    );
    for rule in rules {
        if paths_of(rule).contains(&"/v1/token-lookup".to_string()) {
            assert_eq!(ports_of(rule), ["8081"], "the lookup on another port");
        }
    }
    for rule in rules {
        for operation in rule["to"].as_sequence().unwrap() {
            assert!(
                strings(&operation["operation"]["paths"])
                    .iter()
                    .all(|p| !p.starts_with("/v1/apps")),
                "the admin API is open"
            );
        }
    }
}

/// Istio's AuthorizationPolicy path match: exact, `prefix*`, `*suffix`, `*`.
fn istio_path_matches(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return path.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return path.ends_with(suffix);
    }
    pattern == path
}

/// A caller of the token service as Istio's policy sees it.
struct Peer {
    principal: &'static str,
    namespace: &'static str,
}

const GATEWAY: Peer = Peer {
    principal: "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
    namespace: "istio-system",
};
const WORKLOAD: Peer = Peer {
    principal: "cluster.local/ns/my-app/sa/default",
    namespace: "my-app",
};

/// Whether an ALLOW policy lets `peer` send `method path`, by Istio's rules:
/// some rule whose sources (any of them; each field any-of) match the peer
/// and whose operations (any of them) match the request.
fn policy_allows(policy: &Yaml, peer: &Peer, method: &str, path: &str) -> bool {
    assert_eq!(policy["spec"]["action"], "ALLOW");
    let any_of =
        |list: Vec<String>, value: &str| list.is_empty() || list.iter().any(|v| v == value);
    policy["spec"]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|rule| {
            assert!(rule.get("when").is_none(), "`when` is not evaluated here");
            let from_ok = rule["from"].as_sequence().is_none_or(|sources| {
                sources.iter().any(|s| {
                    let s = &s["source"];
                    any_of(strings(&s["principals"]), peer.principal)
                        && any_of(strings(&s["namespaces"]), peer.namespace)
                })
            });
            let to_ok = rule["to"].as_sequence().is_none_or(|operations| {
                operations.iter().any(|o| {
                    let o = &o["operation"];
                    let paths = strings(&o["paths"]);
                    any_of(strings(&o["methods"]), method)
                        && (paths.is_empty() || paths.iter().any(|p| istio_path_matches(p, path)))
                })
            });
            from_ok && to_ok
        })
}

/// Every operation of the token service's OpenAPI document as
/// `(method, concrete path, tags, security scheme names)`.
fn token_service_operations() -> Vec<(String, String, Vec<String>, Vec<String>)> {
    let document: Json =
        serde_json::from_str(&read_repo_file("token-service/openapi.json")).expect("openapi.json");
    let mut operations = Vec::new();
    for (template, item) in document["paths"].as_object().expect("paths") {
        // A sample value for every {parameter}.
        let path: String = template
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "sample"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for (method, operation) in item.as_object().unwrap() {
            if !["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let list = |v: &Json| -> Vec<String> {
                v.as_array()
                    .map(|a| a.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            };
            let security = operation["security"]
                .as_array()
                .expect("every operation states its security")
                .iter()
                .flat_map(|s| s.as_object().unwrap().keys().cloned())
                .collect();
            operations.push((
                method.to_uppercase(),
                path.clone(),
                list(&operation["tags"]),
                security,
            ));
        }
    }
    operations
}

/// The browser's part of the connect flow is every operation of the
/// `connect` tag that takes no credential (the page, its Connect button,
/// the callback); each must pass the gateway's VirtualService and the
/// policy, and nothing else may come in through the gateway. The app
/// workloads may use every app-key operation; nobody the admin API.
#[test]
fn the_policy_lets_browsers_through_the_whole_connect_flow_and_nothing_else() {
    let m = Manifests::load();
    let policy = m.named(
        "AuthorizationPolicy",
        "authstamp",
        "authstamp-token-service",
    );
    let browser = m.named("VirtualService", "authstamp", "authstamp-browser-paths");
    let routed = |path: &str| {
        browser["spec"]["http"][0]["match"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|m| {
                m["uri"]["prefix"]
                    .as_str()
                    .is_some_and(|p| path.starts_with(p))
                    || m["uri"]["exact"].as_str() == Some(path)
            })
    };
    assert_eq!(namespace(m.one("WasmPlugin")), WORKLOAD.namespace);
    let operations = token_service_operations();
    let mut browser_operations = Vec::new();
    for (method, path, tags, security) in &operations {
        let is_browser = security.is_empty() && tags.contains(&"connect".to_string());
        let is_app = security.contains(&"appKey".to_string());
        let is_admin = security.contains(&"adminToken".to_string());
        let through_gateway = routed(path) && policy_allows(policy, &GATEWAY, method, path);
        assert_eq!(
            through_gateway, is_browser,
            "{method} {path}: through the gateway {through_gateway}, a browser step {is_browser}"
        );
        if is_browser {
            browser_operations.push(format!("{method} {path}"));
        }
        assert_eq!(
            policy_allows(policy, &WORKLOAD, method, path),
            is_app,
            "{method} {path} from the app workloads"
        );
        if is_admin {
            for peer in [&GATEWAY, &WORKLOAD] {
                assert!(
                    !policy_allows(policy, peer, method, path),
                    "{method} {path}"
                );
            }
        }
    }
    // The flow as the connect page test walks it.
    for step in [
        "GET /v1/connect/sample",
        "POST /v1/connect/sample",
        "GET /v1/oauth/callback",
    ] {
        assert!(
            browser_operations.iter().any(|o| o == step),
            "{step}: {browser_operations:?}"
        );
    }
    // Methods the flow does not use stay closed.
    assert!(!policy_allows(
        policy,
        &GATEWAY,
        "DELETE",
        "/v1/connect/sample"
    ));
    assert!(!policy_allows(
        policy,
        &GATEWAY,
        "POST",
        "/v1/oauth/callback"
    ));
    assert!(!policy_allows(policy, &GATEWAY, "POST", "/v1/token-lookup"));
    let other = Peer {
        principal: "cluster.local/ns/other/sa/default",
        namespace: "other",
    };
    assert!(!policy_allows(policy, &other, "POST", "/v1/token-lookup"));
}

#[test]
fn the_wasm_plugin_reaches_the_token_service_and_binds_the_workload_to_its_app() {
    let m = Manifests::load();
    let plugin = m.one("WasmPlugin");
    assert_eq!(plugin["apiVersion"], "extensions.istio.io/v1alpha1");
    let spec = &plugin["spec"];
    let url = spec["url"].as_str().unwrap();
    assert!(
        url.starts_with("oci://") || url.starts_with("https://"),
        "{url}"
    );
    let sha = spec["sha256"].as_str().unwrap();
    assert!(
        sha.len() == 64
            && sha
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "sha256 {sha}"
    );
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert!(["AUTHN", "AUTHZ", "STATS"].contains(&spec["phase"].as_str().unwrap()));
    assert_eq!(spec["type"], "HTTP");
    assert_eq!(spec["match"][0]["mode"], "CLIENT", "outbound traffic");

    // The token service: Istio's cluster name for its Service's port.
    let service = m.named("Service", "authstamp", "authstamp-token-service");
    let fqdn = format!(
        "{}.{}.svc.cluster.local",
        service["metadata"]["name"].as_str().unwrap(),
        namespace(service)
    );
    // The filter port, where the lookup is.
    let port = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http-filter")
        .expect("the filter port")["port"]
        .as_u64()
        .unwrap();
    assert_eq!(port, 8081);
    let config = plugin_config(plugin);
    assert_eq!(
        config["token_service"]["cluster"],
        format!("outbound|{port}||{fqdn}")
    );
    assert_eq!(
        config["token_service"]["authority"],
        format!("{fqdn}:{port}")
    );

    // The workload: selected by its labels, in the plugin's namespace, with
    // the app key in its sidecar's environment from a Secret.
    let workload = m.named("Deployment", namespace(plugin), "my-service");
    let pod = &workload["spec"]["template"];
    for (key, value) in spec["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(pod["metadata"]["labels"].get(key), Some(value));
    }
    let key_env = config["app"]["key_env"].as_str().unwrap();
    let credential_env = config["token_service"]["credential_env"].as_str().unwrap();
    assert!(config["app"]["id"].as_str().unwrap().starts_with("app_"));
    let vm_env = spec["vmConfig"]["env"].as_sequence().unwrap();
    let containers = pod["spec"]["containers"].as_sequence().unwrap();
    let proxy = containers
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("an istio-proxy container override");
    // The app key and the filter credential: from the sidecar's environment
    // (a Secret), named in the plugin, never valued there; the app
    // container never gets the filter credential.
    for name in [key_env, credential_env] {
        assert!(vm_env
            .iter()
            .any(|e| e["name"].as_str() == Some(name) && e["valueFrom"] == "HOST"));
        let var = proxy["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{name} on the sidecar"));
        assert_secret_key(&m, namespace(plugin), &var["valueFrom"]["secretKeyRef"]);
    }
    let filter_secret = &proxy["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some(credential_env))
        .unwrap()["valueFrom"]["secretKeyRef"]["name"];
    for container in containers.iter().filter(|c| c["name"] != "istio-proxy") {
        let text = serde_yaml_ng::to_string(container).unwrap();
        assert!(!text.contains(credential_env), "{text}");
        assert!(!text.contains(filter_secret.as_str().unwrap()), "{text}");
    }

    // The filter itself accepts this configuration.
    let filter = serde_json::json!({
        "name": "authstamp",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "authstamp",
                "root_id": "authstamp",
                "fail_open": false,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config.to_string()
                },
                "vm_config": {
                    "vm_id": "authstamp",
                    "runtime": "envoy.wasm.runtime.v8",
                    "environment_variables": {"host_env_keys": [key_env, credential_env]},
                    "code": {}
                }
            }
        }
    });
    assert_envoy_loads(
        &filter,
        None,
        &[
            (key_env, "ask_validate-only"),
            (credential_env, "ftk_validate-only"),
        ],
    );
}

#[test]
fn every_mapped_provider_host_has_tls_origination_and_loses_the_route_header() {
    let m = Manifests::load();
    let plugin = m.one("WasmPlugin");
    let config = plugin_config(plugin);
    let hosts: Vec<&String> = config["provider_hosts"]
        .as_object()
        .expect("provider_hosts")
        .keys()
        .collect();
    assert!(!hosts.is_empty());
    let ns = namespace(plugin);
    for host in hosts {
        let entry = m
            .all("ServiceEntry")
            .into_iter()
            .find(|s| strings(&s["spec"]["hosts"]).contains(host))
            .unwrap_or_else(|| panic!("no ServiceEntry for {host}"));
        assert_eq!(namespace(entry), ns);
        assert_eq!(entry["spec"]["location"], "MESH_EXTERNAL");
        assert_eq!(entry["spec"]["resolution"], "DNS");
        let ports = entry["spec"]["ports"].as_sequence().unwrap();
        let http = ports
            .iter()
            .find(|p| p["protocol"] == "HTTP")
            .expect("an HTTP port the service talks to");
        assert_eq!(http["targetPort"].as_u64(), Some(443), "{host}");
        let http_port = http["number"].clone();
        assert!(ports
            .iter()
            .any(|p| p["protocol"] == "HTTPS" && p["number"].as_u64() == Some(443)));

        let rule = m
            .all("DestinationRule")
            .into_iter()
            .find(|d| d["spec"]["host"].as_str() == Some(host))
            .unwrap_or_else(|| panic!("no DestinationRule for {host}"));
        let setting = rule["spec"]["trafficPolicy"]["portLevelSettings"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|s| s["port"]["number"] == http_port)
            .expect("TLS settings for the HTTP port");
        assert_eq!(setting["tls"]["mode"], "SIMPLE", "{host}: TLS originated");
        assert_eq!(setting["tls"]["sni"].as_str(), Some(host.as_str()));
        assert!(strings(&setting["tls"]["subjectAltNames"]).contains(host));

        let route = m
            .all("VirtualService")
            .into_iter()
            .find(|v| strings(&v["spec"]["hosts"]).contains(host))
            .unwrap_or_else(|| panic!("no VirtualService for {host}"));
        let http_route = &route["spec"]["http"][0];
        assert!(strings(&http_route["headers"]["request"]["remove"])
            .contains(&"x-authstamp-route".to_string()));
        assert_eq!(
            http_route["route"][0]["destination"]["host"].as_str(),
            Some(host.as_str())
        );
        assert_eq!(
            http_route["route"][0]["destination"]["port"]["number"],
            http_port
        );
    }
}

#[test]
fn the_envoy_filter_alternative_carries_the_same_configuration() {
    let m = Manifests::load();
    let plugin = m.one("WasmPlugin");
    let envoy_filter = m.one("EnvoyFilter");
    assert_eq!(namespace(envoy_filter), namespace(plugin));
    assert_eq!(
        envoy_filter["spec"]["workloadSelector"]["labels"],
        plugin["spec"]["selector"]["matchLabels"]
    );
    let patch = &envoy_filter["spec"]["configPatches"][0];
    assert_eq!(patch["applyTo"], "HTTP_FILTER");
    assert_eq!(patch["match"]["context"], "SIDECAR_OUTBOUND");
    assert_eq!(
        patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
        "envoy.filters.http.router"
    );
    assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
    let filter = serde_json::to_value(&patch["patch"]["value"]).unwrap();
    let config = &filter["typed_config"]["config"];
    assert_eq!(config["fail_open"], false);
    let carried: Json =
        serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        carried,
        plugin_config(plugin),
        "the same filter configuration"
    );
    let key_env = carried["app"]["key_env"].as_str().unwrap();
    let credential_env = carried["token_service"]["credential_env"].as_str().unwrap();
    assert_eq!(
        config["vm_config"]["environment_variables"]["host_env_keys"],
        serde_json::json!([key_env, credential_env])
    );
    assert_envoy_loads(
        &filter,
        Some("/var/local/authstamp/authstamp_filter.wasm"),
        &[
            (key_env, "ask_validate-only"),
            (credential_env, "ftk_validate-only"),
        ],
    );
    // The OCI image variant is documented and buildable from the repo.
    let dockerfile = read_repo_file("envoy/istio/Dockerfile.wasm");
    assert!(dockerfile
        .contains("COPY target/wasm32-wasip1/release/authstamp_filter.wasm ./plugin.wasm"));
}
