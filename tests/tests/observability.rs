//! What an operator looks at: the Grafana dashboard (deploy/grafana), the
//! Prometheus alert rules and the Envoy scrape job (deploy/prometheus). The
//! rules pass `promtool test rules`, the scrape job `promtool check config`,
//! and every metric the dashboard or the rules name is exported by a running
//! token service or by Envoy loading the filter (either build), as the
//! scrape job's relabelling names Envoy's stats.

use authstamp_e2e::{workspace_root, Stack, StackOptions};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

const DASHBOARD: &str = "deploy/grafana/authstamp.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts.test.yml";
const SCRAPE: &str = "deploy/prometheus/scrape-envoy.yml";

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).expect("read repository file")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("promtool ({e}): run `make deps` (Debian package prometheus)"));
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `authstamp_…` identifier in a text (a name cut short by a regex,
/// like `authstamp_errors_.+_total`, keeps its trailing `_`: a prefix).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("authstamp_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric names a Prometheus or OpenMetrics text exposition declares
/// (`# TYPE`); an OpenMetrics counter family `x` is exported as `x_total`.
fn exported_families(text: &str) -> BTreeSet<String> {
    authstamp_e2e::prom::families(text)
        .flat_map(|(name, kind)| {
            let total =
                (kind == "counter" && !name.ends_with("_total")).then(|| format!("{name}_total"));
            std::iter::once(name.to_string()).chain(total)
        })
        .collect()
}

/// The scrape job's `metric_relabel_configs` rule applied to a metric name,
/// as Prometheus applies it (the regex anchored at both ends).
fn relabelled(name: &str) -> String {
    let scrape: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(SCRAPE)).expect("scrape YAML");
    let rule = &scrape["scrape_configs"][0]["metric_relabel_configs"][0];
    assert_eq!(rule["source_labels"][0].as_str(), Some("__name__"));
    assert_eq!(rule["target_label"].as_str(), Some("__name__"));
    let pattern = rule["regex"].as_str().expect("relabel regex");
    let replacement = rule["replacement"].as_str().expect("relabel replacement");
    let regex = regex::Regex::new(&format!("^(?:{pattern})$")).expect("relabel regex compiles");
    match regex.is_match(name) {
        true => regex.replace(name, replacement).into_owned(),
        false => name.to_owned(),
    }
}

#[test]
fn the_scrape_job_names_every_build_s_stats_as_the_dashboard_does() {
    promtool(&["check", "config", SCRAPE]);
    let cases = [
        ("authstamp_cache_hits_total", "authstamp_cache_hits_total"),
        (
            "envoy_dynamicmodulescustom_authstamp_cache_hits_total",
            "authstamp_cache_hits_total",
        ),
        (
            "envoy_cluster_wasmcustom_authstamp_healed_retries_total",
            "authstamp_healed_retries_total",
        ),
        (
            "envoy_cluster_dynamicmodulescustom_authstamp_healed_retries_total",
            "authstamp_healed_retries_total",
        ),
        (
            "envoy_cluster_upstream_rq_total",
            "envoy_cluster_upstream_rq_total",
        ),
        (
            "envoy_wasmcustom_other_total",
            "envoy_wasmcustom_other_total",
        ),
    ];
    for (scraped, stored) in cases {
        assert_eq!(relabelled(scraped), stored, "{scraped}");
    }
}

fn dashboard_exprs() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().expect("target expr").to_string())
        .collect()
}

#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    promtool(&["check", "rules", ALERTS]);
    promtool(&["test", "rules", ALERT_TESTS]);
}

#[test]
fn the_dashboard_has_a_query_on_every_panel_and_unique_ids() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{title}: id repeated"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: not on the dashboard's Prometheus variable"
        );
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for exprs in dashboard_exprs() {
        for variable in ["envoy_job", "service_job"] {
            if exprs.contains(&format!("${variable}")) {
                assert!(variables.contains(&variable), "${variable} is not defined");
            }
        }
    }
    assert!(panels.len() >= 10, "{} panels", panels.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let stack = Stack::start("observability", StackOptions::default()).await;
    stack.connect_user("olga").await;
    let response = stack
        .call(Method::GET, "/api/x", "olga")
        .send()
        .await
        .expect("stamped call");
    assert_eq!(response.status(), StatusCode::OK);

    let scrape = |url: String| {
        let http = stack.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .expect("scrape")
                .text()
                .await
                .expect("scrape text")
        }
    };
    let service = scrape(format!("{}/metrics", stack.service_url)).await;
    // Envoy prints histograms only after its stats flush (5 s by default).
    let (scrape, envoy_stats) = (
        &scrape,
        format!("{}/stats/prometheus", stack.envoy_admin_url),
    );
    let envoy = authstamp_testkit::eventually(
        "Envoy's histogram after a stats flush",
        Duration::from_secs(20),
        || {
            let url = envoy_stats.clone();
            async move {
                let text = scrape(url).await;
                // `# TYPE [envoy_dynamicmodulescustom_]authstamp_token_fetch_us histogram`
                text.contains("authstamp_token_fetch_us histogram")
                    .then_some(text)
            }
        },
    )
    .await;
    let mut exported = exported_families(&service);
    exported.extend(
        exported_families(&envoy)
            .iter()
            .map(|name| relabelled(name)),
    );

    let mut used = metric_names(&read(ALERTS));
    for expr in dashboard_exprs() {
        used.extend(metric_names(&expr));
    }
    assert!(
        used.len() >= 12,
        "only {} metric names found: {used:?}",
        used.len()
    );
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| exported.contains(*base))
                .unwrap_or(name);
            if family.ends_with('_') {
                !exported.iter().any(|e| e.starts_with(family))
            } else {
                !exported.contains(family)
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "used by {DASHBOARD} or {ALERTS} but exported by neither the token service nor Envoy: {missing:?}\nexported: {exported:?}"
    );
}
