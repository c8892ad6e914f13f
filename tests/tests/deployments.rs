//! The ways authstamp is deployed, checked against the files users copy:
//! the snippet for an existing Envoy (pasted into a foreign bootstrap and
//! run), the bootstraps that carry it, the deployment guide (docs/deploy.md) that shows it, and the
//! docker-compose trial (validated: this machine has no Docker engine).

use authstamp_e2e::deploy::{
    compose_bootstrap, for_each_vm_config, parse_yaml, port_of, read_repo_file, replace_once,
    EchoServer, Envoy, Snippet, SNIPPET_PATH, SNIPPET_TOKEN_SERVICE_HOST, SNIPPET_WASM_PATH,
};
use authstamp_e2e::stack::PROVIDER;
use authstamp_e2e::{filter_wasm, Stack, StackOptions};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

const LOCAL_WASM: &str = "target/wasm32-wasip1/release/authstamp_filter.wasm";

#[test]
fn the_deployment_guide_shows_the_snippet_file_verbatim() {
    let guide = read_repo_file("docs/deploy.md");
    let snippet = read_repo_file(SNIPPET_PATH);
    assert!(
        guide.contains(&format!("```yaml\n{snippet}```")),
        "docs/deploy.md must show {SNIPPET_PATH} verbatim in a ```yaml block"
    );
}

/// Each native bootstrap and the Wasm bootstrap it is made from.
const NATIVE_BOOTSTRAPS: [(&str, &str); 2] = [
    ("envoy/envoy.yaml", "envoy/envoy-native.yaml"),
    ("envoy/egress.yaml", "envoy/egress-native.yaml"),
];

/// `node` with every Wasm filter entry replaced by the native module's: the
/// same filter name and configuration JSON, the module loaded by name.
fn with_native_filters(node: &mut serde_yaml_ng::Value) {
    use serde_yaml_ng::Value as Yaml;
    const WASM: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
    match node {
        Yaml::Mapping(mapping) => {
            if let Some(config) = mapping.get_mut("typed_config") {
                if config["@type"].as_str() == Some(WASM) {
                    let wasm = config["config"].clone();
                    let mut native = parse_yaml(
                        "\"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter\n\
                         dynamic_module_config: { name: authstamp_native, do_not_close: true }",
                    );
                    native["filter_name"] = wasm["name"].clone();
                    native["filter_config"] = wasm["configuration"].clone();
                    *config = native;
                }
            }
            for (_, value) in mapping.iter_mut() {
                with_native_filters(value);
            }
        }
        Yaml::Sequence(items) => items.iter_mut().for_each(with_native_filters),
        _ => {}
    }
}

#[test]
fn each_native_bootstrap_is_its_wasm_bootstrap_with_the_filter_entries_replaced() {
    for (wasm, native) in NATIVE_BOOTSTRAPS {
        let mut expected = parse_yaml(&read_repo_file(wasm));
        with_native_filters(&mut expected);
        assert!(
            expected == parse_yaml(&read_repo_file(native)),
            "{native} must be {wasm} with each Wasm filter entry replaced by the module's"
        );
    }
}

#[test]
fn the_replay_instances_share_the_stamping_instances_vm() {
    // One VM per worker holds the stamped requests' records: an instance
    // with another vm_config gets a VM of its own and finds none of them.
    for path in [
        "envoy/envoy.yaml",
        "envoy/egress.yaml",
        "envoy/compose.yaml",
        SNIPPET_PATH,
    ] {
        let mut found = Vec::new();
        for_each_vm_config(&mut parse_yaml(&read_repo_file(path)), &mut |vm| {
            found.push(vm.clone())
        });
        assert_eq!(
            found.len(),
            3,
            "{path}: the stamping and two replay instances"
        );
        assert!(
            found.iter().all(|c| *c == found[0]),
            "{path}: every instance must have the stamping instance's vm_config"
        );
    }
}

#[test]
fn the_local_compose_and_egress_bootstraps_carry_the_snippet() {
    let snippet = Snippet::load();
    let local = parse_yaml(&read_repo_file("envoy/envoy.yaml"));
    snippet
        .edited("127.0.0.1", 8081, LOCAL_WASM)
        .assert_carried_by(&local, "authstamp_egress", "providers");
    let compose = parse_yaml(&read_repo_file("envoy/compose.yaml"));
    snippet.assert_carried_by(&compose, "authstamp_egress", "providers");
    let mut egress = parse_yaml(&read_repo_file("envoy/egress.yaml"));
    // Its replay instances share the first instance's vm_config, the app
    // key's environment included (one VM for both); the snippet's name only
    // the filter credential.
    let mut replays = 0;
    for_each_vm_config(&mut egress["static_resources"]["clusters"], &mut |vm| {
        let env = &mut vm["environment_variables"];
        assert_eq!(
            env["host_env_keys"],
            parse_yaml("[AUTHSTAMP_APP_KEY, AUTHSTAMP_FILTER_TOKEN]")
        );
        *env = parse_yaml("host_env_keys: [AUTHSTAMP_FILTER_TOKEN]");
        replays += 1;
    });
    assert_eq!(replays, 2, "one replay instance per provider cluster");
    snippet
        .edited("127.0.0.1", 8081, LOCAL_WASM)
        .assert_routes_and_clusters(&egress, "authstamp_transparent_egress", "everything");
    // The snippet is for gateway mode and the values a user edits are where
    // the docs say.
    let config = snippet.http_filters[0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .expect("plugin configuration");
    let config: Value = serde_json::from_str(config).expect("configuration is JSON");
    assert_eq!(
        config["token_service"]["cluster"],
        "authstamp_token_service"
    );
    assert_eq!(
        config["token_service"]["authority"],
        SNIPPET_TOKEN_SERVICE_HOST
    );
    assert!(config.get("app").is_none());
    let vm_config = &snippet.http_filters[0]["typed_config"]["config"]["vm_config"];
    assert_eq!(
        vm_config["code"]["local"]["filename"],
        serde_yaml_ng::Value::from(SNIPPET_WASM_PATH)
    );
    // The filter credential: named in the bootstrap, valued only in Envoy's
    // environment (host_env_keys; key_values would show the value in the
    // admin config dump).
    assert_eq!(
        config["token_service"]["credential_env"],
        authstamp_e2e::FILTER_TOKEN_ENV
    );
    let env = &vm_config["environment_variables"];
    assert!(env.get("key_values").is_none());
    assert!(env["host_env_keys"]
        .as_sequence()
        .expect("host_env_keys")
        .contains(&serde_yaml_ng::Value::from(authstamp_e2e::FILTER_TOKEN_ENV)));
    // The cluster is the filter listener's default port, not the app API's.
    let token_service = snippet
        .clusters
        .iter()
        .find(|c| c["name"] == "authstamp_token_service")
        .expect("token service cluster");
    assert_eq!(
        token_service["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"]["port_value"]
            .as_u64(),
        Some(8081)
    );
}

#[test]
fn the_snippet_pasted_into_an_existing_bootstrap_validates_on_this_envoy() {
    let mut bootstrap = parse_yaml(&read_repo_file("tests/fixtures/existing-envoy.yaml"));
    Snippet::load()
        .edited("127.0.0.1", 8080, &filter_wasm().display().to_string())
        .paste_into(&mut bootstrap, "ingress_http", "default");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bootstrap.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&bootstrap).expect("yaml")).expect("write");
    let output = authstamp_e2e::envoy_command()
        .args(["--mode", "validate", "-l", "warn", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snippet_pasted_into_an_existing_envoy_stamps_and_leaves_its_routes_alone() {
    let stack = Stack::start("existing_envoy", StackOptions::default()).await;
    let backend = EchoServer::start().await;
    let fixture = replace_once(
        &read_repo_file("tests/fixtures/existing-envoy.yaml"),
        &[(
            "port_value: 1 }",
            format!("port_value: {} }}", port_of(&backend.url)),
        )],
    );
    let mut bootstrap = parse_yaml(&fixture);
    Snippet::load()
        .edited(
            "127.0.0.1",
            port_of(&stack.filter_url),
            &filter_wasm().display().to_string(),
        )
        .paste_into(&mut bootstrap, "ingress_http", "default");
    let config = serde_yaml_ng::to_string(&bootstrap).expect("yaml");
    let envoy = Envoy::start(&stack.log_dir, "existing-envoy", &config, &[]).await;
    let url = envoy.listener("ingress_http").to_string();
    stack.connect_user("alice").await;

    let stamped = |host: Option<&str>| {
        let mut request = stack
            .http
            .get(format!("{url}/api/auth.test"))
            .header("x-authstamp-provider", PROVIDER)
            .header("x-authstamp-user", "alice")
            .header("x-authstamp-app", &stack.app_id)
            .header("x-authstamp-app-key", &stack.app_key);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        request
    };
    let response = stamped(None).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["user"], "alice");
    assert!(echo["headers"]["authorization"][0]
        .as_str()
        .unwrap()
        .starts_with("Bearer sat_"));
    assert!(echo["headers"].get("x-authstamp-route").is_none());

    // The stamped :authority picks the route again: a marked request that
    // came in for the user's backend host still goes to the provider only.
    let response = stamped(Some("backend.internal")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["user"], "alice");
    assert!(
        backend.seen().is_empty(),
        "the backend got a marked request"
    );

    // The user's own routes and filters are untouched.
    let health = stack
        .http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok");
    let missing = stack
        .http
        .get(format!("{url}/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.text().await.unwrap(), "not here");
    let envoy_health = stack
        .http
        .get(format!("{url}/envoy-health"))
        .send()
        .await
        .unwrap();
    assert_eq!(envoy_health.status(), StatusCode::OK);
    let response = stack
        .http
        .get(format!("{url}/orders/7"))
        .header("host", "backend.internal")
        .header("authorization", "Bearer users-own")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["request_line"], "GET /orders/7 HTTP/1.1");
    assert_eq!(seen[0]["headers"]["authorization"], "Bearer users-own");
    assert_eq!(stack.standin_stats().await["api_calls"], 2);
}

/// `docker-compose config` of the repository's compose file, parsed.
fn compose_config() -> serde_yaml_ng::Value {
    let output = std::process::Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(authstamp_e2e::workspace_root())
        .output()
        .expect("run docker-compose (apt-get install -y docker-compose)");
    assert!(
        output.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_yaml(&String::from_utf8_lossy(&output.stdout))
}

/// `ENVOY_VERSION` of the Makefile: the version the tests run.
fn tested_envoy_version() -> String {
    read_repo_file("Makefile")
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION := "))
        .expect("ENVOY_VERSION in the Makefile")
        .trim()
        .to_string()
}

/// `(source, target)` of each bind mount of a service (`docker-compose
/// config` makes sources absolute; named volumes are left out). Bind mounts
/// must use the long form, so that a missing file is an error rather than a
/// directory Docker creates in its place.
fn bind_mounts(service: &serde_yaml_ng::Value) -> Vec<(String, String)> {
    let volumes = service["volumes"]
        .as_sequence()
        .map(|v| v.as_slice())
        .unwrap_or_default();
    for volume in volumes {
        if let Some(short) = volume.as_str() {
            assert!(!short.starts_with('/'), "short-form bind mount {short}");
        }
    }
    volumes
        .iter()
        .filter(|v| v["type"].as_str() == Some("bind"))
        .map(|v| {
            assert_eq!(v["read_only"].as_bool(), Some(true), "{v:?} is writable");
            (
                v["source"].as_str().expect("source").to_string(),
                v["target"].as_str().expect("target").to_string(),
            )
        })
        .collect()
}

#[test]
fn docker_compose_is_valid_and_everything_it_builds_or_mounts_exists() {
    let root = authstamp_e2e::workspace_root();
    let config = compose_config();
    let services = config["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    for expected in ["standin", "authstamp-token-service", "setup", "envoy"] {
        assert!(
            names.contains(&expected),
            "no service {expected}: {names:?}"
        );
    }
    let dockerfile_text = read_repo_file("Dockerfile");
    for (name, service) in services {
        let name = name.as_str().unwrap();
        if let Some(build) = service.get("build") {
            let context = std::path::Path::new(build["context"].as_str().unwrap());
            assert!(context.is_dir(), "{name}: build context {context:?}");
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            assert!(dockerfile.is_file(), "{name}: {dockerfile:?}");
            let target = build["target"].as_str().expect("build target");
            assert!(
                dockerfile_text.contains(&format!(" AS {target}\n")),
                "{name}: no stage {target}"
            );
        }
        for (source, target) in bind_mounts(service) {
            assert!(
                std::path::Path::new(&source).is_file(),
                "{name} mounts {source} at {target}: missing (run `make wasm` for the filter)"
            );
            assert!(source.starts_with(root.to_str().unwrap()), "{source}");
        }
        for volume in service["volumes"].as_sequence().unwrap() {
            if let Some(volume) = volume.as_str() {
                let named = volume.split(':').next().unwrap();
                assert!(
                    config["volumes"].get(named).is_some(),
                    "{name}: volume {named} not declared"
                );
            }
        }
        for port in service["ports"]
            .as_sequence()
            .map(|p| p.as_slice())
            .unwrap_or_default()
        {
            let port = port.as_str().unwrap();
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond loopback"
            );
        }
        if name == "setup" {
            assert_eq!(service["restart"].as_str(), Some("no"));
        } else {
            assert!(
                service["healthcheck"]["test"].as_sequence().is_some(),
                "{name} has no health check"
            );
        }
        if let Some(deps) = service["depends_on"].as_mapping() {
            for (dep, condition) in deps {
                let dep = dep.as_str().unwrap();
                let condition = condition["condition"].as_str().unwrap();
                match condition {
                    "service_healthy" => assert!(
                        config["services"][dep]["healthcheck"].get("test").is_some(),
                        "{name} waits for {dep} to be healthy, which it cannot tell"
                    ),
                    "service_completed_successfully" => {
                        assert_eq!(config["services"][dep]["restart"].as_str(), Some("no"))
                    }
                    other => panic!("{name} -> {dep}: {other}: start order not enforced"),
                }
            }
        }
    }
    assert_eq!(
        config["services"]["envoy"]["image"].as_str(),
        Some(format!("envoyproxy/envoy:v{}", tested_envoy_version()).as_str()),
        "the compose Envoy must be the version the tests run"
    );
    // The token service's data dir is a volume.
    let data_volume = config["services"]["authstamp-token-service"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .any(|v| v.ends_with(":/data:rw") || v.ends_with(":/data"));
    assert!(data_volume, "the token service's /data is a volume");

    // The Dockerfile: multi-stage, small runtime, non-root, a data volume.
    let froms = dockerfile_text
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(froms >= 3, "a build stage and runtime stages");
    assert!(dockerfile_text.contains("FROM debian:${DEBIAN_RELEASE}-slim AS runtime"));
    for stage in ["token-service", "standin"] {
        let body = dockerfile_text
            .split(&format!(" AS {stage}\n"))
            .nth(1)
            .unwrap()
            .split("\nFROM ")
            .next()
            .unwrap();
        assert!(
            body.contains("\nUSER 10001:10001\n"),
            "{stage} runs as root"
        );
    }
    assert!(dockerfile_text.contains("VOLUME [\"/data\"]"));
    let dockerignore = read_repo_file(".dockerignore");
    assert!(dockerignore.lines().any(|l| l == "target"));
}

/// The filter credential reaches the token service and Envoy through a
/// volume of its own; the filter port is not published and matches the
/// cluster Envoy uses.
#[test]
fn the_compose_filter_credential_reaches_envoy_only() {
    let config = compose_config();
    let service = &config["services"]["authstamp-token-service"];
    let envoy = &config["services"]["envoy"];
    let service_env = &service["environment"];
    assert_eq!(service_env["AUTHSTAMP_FILTER_LISTEN"], "0.0.0.0:8081");
    let token_file = service_env["AUTHSTAMP_FILTER_TOKEN_FILE"]
        .as_str()
        .expect("the filter token file");
    let named_volumes = |s: &serde_yaml_ng::Value| -> Vec<(String, String)> {
        // `source:target[:mode]`, or the long form with `type: volume`.
        s["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|v| match v.as_str() {
                Some(short) => {
                    let mut parts = short.split(':');
                    Some((parts.next()?.to_string(), parts.next()?.to_string()))
                }
                None if v["type"] == "volume" => Some((
                    v["source"].as_str()?.to_string(),
                    v["target"].as_str()?.to_string(),
                )),
                None => None,
            })
            .collect()
    };
    let (volume, dir) = named_volumes(service)
        .into_iter()
        .find(|(_, target)| token_file.starts_with(&format!("{target}/")))
        .expect("the token file is in a volume");
    assert_ne!(volume, "authstamp-data", "not in the data volume");
    let envoy_volumes = named_volumes(envoy);
    assert!(
        envoy_volumes.iter().any(|(v, _)| *v == volume),
        "{envoy_volumes:?}"
    );
    assert!(
        envoy_volumes.iter().all(|(v, _)| v != "authstamp-data"),
        "Envoy must not see the vault's data"
    );
    let envoy_entrypoint = serde_yaml_ng::to_string(&envoy["entrypoint"]).unwrap();
    assert!(envoy_entrypoint.contains(authstamp_e2e::FILTER_TOKEN_ENV));
    let service_entrypoint = serde_yaml_ng::to_string(&service["entrypoint"]).unwrap();
    assert!(service_entrypoint.contains(&token_file[dir.len() + 1..]));
    for port in service["ports"].as_sequence().unwrap() {
        let published = serde_yaml_ng::to_string(port).unwrap();
        assert!(
            !published.contains("8081"),
            "the filter API is published: {published}"
        );
    }
    let bootstrap = read_repo_file("envoy/compose.yaml");
    assert!(bootstrap.contains("address: authstamp-token-service, port_value: 8081"));
}

#[test]
fn the_compose_envoy_config_validates_with_its_service_names() {
    let config = compose_config();
    let envoy = &config["services"]["envoy"];
    let mounts = bind_mounts(envoy);
    let (bootstrap_source, _) = mounts
        .iter()
        .find(|(_, target)| target == "/etc/envoy/envoy.yaml")
        .expect("the bootstrap is mounted");
    // Envoy checks that the files it names exist: point the container paths
    // at the files mounted there.
    let mut text = std::fs::read_to_string(bootstrap_source).expect("read bootstrap");
    for (source, target) in &mounts {
        text = text.replace(
            &format!("filename: {target}\n"),
            &format!("filename: {source}\n"),
        );
    }
    // Every cluster address that is a name is a compose service.
    let bootstrap = parse_yaml(&text);
    for cluster in bootstrap["static_resources"]["clusters"]
        .as_sequence()
        .unwrap()
    {
        let Some(endpoints) = cluster["load_assignment"]["endpoints"].as_sequence() else {
            continue;
        };
        for endpoint in endpoints {
            for lb in endpoint["lb_endpoints"].as_sequence().unwrap() {
                let address = lb["endpoint"]["address"]["socket_address"]["address"]
                    .as_str()
                    .unwrap();
                assert!(
                    config["services"].get(address).is_some(),
                    "cluster {:?} points at {address}, not a compose service",
                    cluster["name"]
                );
                assert_eq!(
                    cluster["type"].as_str(),
                    Some("STRICT_DNS"),
                    "service names need DNS"
                );
            }
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("compose-envoy.yaml");
    std::fs::write(&path, &text).expect("write");
    let output = authstamp_e2e::envoy_command()
        .args(["--mode", "validate", "-l", "warn", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The compose trial without Docker: the stand-in and the token service run
/// as the compose file runs them (the client secret from a file, local
/// mode), `scripts/compose-setup.sh` sets the demo up, Envoy runs
/// `envoy/compose.yaml` with the service names pointed at loopback, and the
/// commands the setup prints are run as printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_setup_prints_commands_that_work() {
    use authstamp_e2e::process::Process;
    use std::process::Command;
    let log_dir = authstamp_e2e::log_dir("compose_setup");
    let secrets = log_dir.join("secrets");
    let data = log_dir.join("data");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let secret_file = secrets.join("demo-client-secret");
    std::fs::write(
        &secret_file,
        format!("{}\n", authstamp_e2e::random_token("cs_")),
    )
    .unwrap();
    let secret = std::fs::read_to_string(&secret_file)
        .unwrap()
        .trim()
        .to_string();

    let mut command = Command::new(authstamp_e2e::standin_bin());
    command
        .env("AUTHSTAMP_STANDIN_LISTEN", "127.0.0.1:0")
        .env("AUTHSTAMP_STANDIN_CLIENT_ID", "demo-client")
        .env("AUTHSTAMP_STANDIN_CLIENT_SECRET", &secret);
    let mut standin = Process::spawn("standin", command, &log_dir, "listening on");
    let standin_url = standin.wait_for_listen_url(Duration::from_secs(30));
    // The filter credential in its own file, as the compose entrypoint makes it.
    let filter_token_file = secrets.join("filter.token");
    std::fs::write(&filter_token_file, authstamp_e2e::filter_token()).unwrap();
    // Owner only, as the entrypoint's umask makes it (the service refuses wider).
    std::fs::set_permissions(
        &filter_token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut command = Command::new(authstamp_e2e::authstamp_bin());
    command
        .args(["serve", "--local"])
        .env("AUTHSTAMP_LISTEN", "127.0.0.1:0")
        .env("AUTHSTAMP_FILTER_LISTEN", "127.0.0.1:0")
        .env("AUTHSTAMP_FILTER_TOKEN_FILE", &filter_token_file)
        .env("AUTHSTAMP_DATA_DIR", &data);
    let mut service = Process::spawn("token-service", command, &log_dir, "listening on");
    let line = service.wait_for_line(Duration::from_secs(30));
    let (service_url, filter_url) = authstamp_e2e::process::service_urls(&line);

    let bootstrap = compose_bootstrap(&filter_url);
    let envoy = Envoy::start(&log_dir, "envoy", &bootstrap, &[]).await;
    let envoy_url = envoy.listener("authstamp_egress").to_string();

    let bin_dir = authstamp_e2e::authstamp_bin()
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let setup = || {
        let output = Command::new("bash")
            .arg(authstamp_e2e::workspace_root().join("scripts/compose-setup.sh"))
            .env("PATH", &path)
            .env("AUTHSTAMP_DATA_DIR", &data)
            .env("DEMO_CLIENT_SECRET_FILE", &secret_file)
            .env("DEMO_PROVIDER_BROWSER_URL", &standin_url)
            .env("DEMO_PROVIDER_URL", &standin_url)
            .env("DEMO_SERVICE_URL", &service_url)
            .env("DEMO_ENVOY_URL", &envoy_url)
            .output()
            .expect("run compose-setup.sh");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let printed = setup();
    // Run again (a restarted setup): the same app, nothing breaks.
    assert_eq!(setup(), printed);

    // The two commands, as printed (a line ending in `\` goes on).
    let commands: Vec<String> = printed
        .split("\n\n")
        .filter(|block| block.trim_start().starts_with("curl "))
        .map(|block| block.replace("\\\n", " "))
        .collect();
    assert_eq!(commands.len(), 2, "{printed}");
    let run = |command: &str| {
        let output = Command::new("bash")
            .args(["-c", command])
            .output()
            .expect("run curl");
        assert!(output.status.success(), "{command}");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let session = run(&commands[0]);
    let connect_url = session["connect_url"].as_str().expect("connect_url");
    let outcome = authstamp_e2e::browser::walk_connect(
        &authstamp_e2e::browser::browser_client(),
        connect_url,
        "alice",
    )
    .await;
    assert_eq!(
        outcome.final_status,
        StatusCode::OK,
        "{}",
        outcome.final_body
    );
    let echo = run(&commands[1]);
    assert_eq!(echo["user"], "alice", "{echo}");
    assert_eq!(echo["path"], "/api/hello");
    assert!(echo["headers"]["authorization"][0]
        .as_str()
        .unwrap()
        .starts_with("Bearer sat_"));
    drop((standin, service));
}
