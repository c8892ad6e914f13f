//! Results: one wrk run, a scenario's runs and median, the ratios to (b),
//! the goals, the JSON file and the markdown table.

use serde::Serialize;
use serde_json::{json, Value};

/// One wrk run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub mean_us: f64,
    pub max_us: u64,
    /// Socket errors, timeouts and non-2xx/3xx answers.
    pub errors: u64,
    /// Envoy's CPU time (all threads) per request, in µs.
    pub envoy_cpu_us: f64,
}

impl Run {
    pub fn from_wrk(v: Value) -> anyhow::Result<Run> {
        let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        let requests = n("/requests");
        let seconds = n("/duration_us") as f64 / 1e6;
        let errors = ["connect", "read", "write", "status", "timeout"]
            .iter()
            .map(|e| n(&format!("/errors/{e}")))
            .sum();
        Ok(Run {
            requests,
            seconds,
            rps: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            p50_us: n("/latency_us/p50"),
            p90_us: n("/latency_us/p90"),
            p99_us: n("/latency_us/p99"),
            p999_us: n("/latency_us/p999"),
            mean_us: v
                .pointer("/latency_us/mean")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            max_us: n("/latency_us/max"),
            errors,
            envoy_cpu_us: 0.0,
        })
    }
}

pub struct Scenario {
    pub id: char,
    pub name: String,
    /// Throughput runs: all connections, saturating Envoy.
    pub runs: Vec<Run>,
    /// Latency runs: one connection, Envoy mostly idle.
    pub latency_runs: Vec<Run>,
}

/// The median of each number over the rounds. `p*_us`: latency with one
/// connection (or under load when there were no latency runs);
/// `loaded_p*_us`: under the throughput run's load.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub loaded_p50_us: f64,
    pub loaded_p99_us: f64,
    pub loaded_p999_us: f64,
    pub requests: u64,
    pub errors: u64,
    pub envoy_cpu_us: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

impl Scenario {
    pub fn new(id: char, name: &str) -> Scenario {
        Scenario {
            id,
            name: name.to_string(),
            runs: Vec::new(),
            latency_runs: Vec::new(),
        }
    }

    pub fn summary(&self) -> Summary {
        let m = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let loaded = &self.runs;
        let latency = if self.latency_runs.is_empty() {
            &self.runs
        } else {
            &self.latency_runs
        };
        Summary {
            rps: m(loaded, |r| r.rps),
            p50_us: m(latency, |r| r.p50_us as f64),
            p99_us: m(latency, |r| r.p99_us as f64),
            p999_us: m(latency, |r| r.p999_us as f64),
            loaded_p50_us: m(loaded, |r| r.p50_us as f64),
            loaded_p99_us: m(loaded, |r| r.p99_us as f64),
            loaded_p999_us: m(loaded, |r| r.p999_us as f64),
            requests: loaded
                .iter()
                .chain(&self.latency_runs)
                .map(|r| r.requests)
                .sum(),
            errors: loaded
                .iter()
                .chain(&self.latency_runs)
                .map(|r| r.errors)
                .sum(),
            envoy_cpu_us: m(loaded, |r| r.envoy_cpu_us),
        }
    }
}

/// Every `authstamp_*` sample Envoy prints (histogram buckets left out).
pub fn authstamp_metrics(text: &str) -> Value {
    let out: serde_json::Map<String, Value> = authstamp_testkit::prom::samples(text)
        .filter(|s| s.name.starts_with("authstamp_") && !s.name.ends_with("_bucket"))
        .filter(|s| s.value != 0.0)
        .map(|s| (s.series.to_string(), json!(s.value)))
        .collect();
    Value::Object(out)
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "–".into())
}

/// The JSON document and the markdown table.
pub fn render(scenarios: &[Scenario], meta: Value) -> (Value, String) {
    let summaries: Vec<(char, &str, Summary)> = scenarios
        .iter()
        .map(|s| (s.id, s.name.as_str(), s.summary()))
        .collect();
    let base = summaries
        .iter()
        .find(|(id, ..)| *id == 'b')
        .map(|(.., s)| s.clone());
    let get = |id: char| {
        summaries
            .iter()
            .find(|(i, ..)| *i == id)
            .map(|(.., s)| s.clone())
    };

    let mut md = String::new();
    md.push_str(
        "| scenario | rps | rps ÷ (b) | p50 µs | p99 µs | p99.9 µs | p50 − (b) µs | p99 ÷ (b) | p99.9 ÷ (b) | loaded p50 µs | loaded p99 µs | Envoy CPU µs/req | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut rows = Vec::new();
    for (id, name, s) in &summaries {
        let (rps_r, p50_d, p99_r, p999_r, loaded_p99_r) = match &base {
            Some(b) => (
                ratio(s.rps, b.rps),
                Some(s.p50_us - b.p50_us),
                ratio(s.p99_us, b.p99_us),
                ratio(s.p999_us, b.p999_us),
                ratio(s.loaded_p99_us, b.loaded_p99_us),
            ),
            None => (None, None, None, None, None),
        };
        md.push_str(&format!(
            "| ({id}) {name} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {} |\n",
            s.rps,
            fmt_ratio(rps_r),
            s.p50_us,
            s.p99_us,
            s.p999_us,
            p50_d
                .map(|d| format!("{d:+.0}"))
                .unwrap_or_else(|| "–".into()),
            fmt_ratio(p99_r),
            fmt_ratio(p999_r),
            s.loaded_p50_us,
            s.loaded_p99_us,
            s.envoy_cpu_us,
            s.errors
        ));
        let scenario = scenarios.iter().find(|x| x.id == *id);
        let runs: Vec<&Run> = scenario
            .map(|x| x.runs.iter().collect())
            .unwrap_or_default();
        let latency_runs: Vec<&Run> = scenario
            .map(|x| x.latency_runs.iter().collect())
            .unwrap_or_default();
        rows.push(json!({
            "id": id.to_string(),
            "name": name,
            "median": s,
            "runs": runs,
            "latency_runs": latency_runs,
            "ratios_to_b": {
                "rps": rps_r,
                "p50_added_us": p50_d,
                "p99": p99_r,
                "p999": p999_r,
                "loaded_p99": loaded_p99_r,
            },
        }));
    }

    let mut goals = Vec::new();
    if let (Some(b), Some(d)) = (&base, get('d')) {
        goals.push(goal("(d) rps ≥ 0.90 × (b)", d.rps / b.rps, 0.90, true, "×"));
        goals.push(goal(
            "(d) p50 (one connection) ≤ (b) + 30 µs",
            d.p50_us - b.p50_us,
            30.0,
            false,
            "µs",
        ));
        goals.push(goal(
            "(d) p99 (one connection) ≤ 1.2 × (b)",
            d.p99_us / b.p99_us,
            1.2,
            false,
            "×",
        ));
        if let Some(c) = get('c') {
            goals.push(goal("(d) rps ≥ (c) rps", d.rps / c.rps, 1.0, true, "× (c)"));
        }
    }
    // The native module: (h) is (d'), (m) is (e').
    if let (Some(b), Some(h)) = (&base, get('h')) {
        goals.push(goal(
            "(d') Envoy CPU ≤ (b) + 3 µs/req",
            h.envoy_cpu_us - b.envoy_cpu_us,
            3.0,
            false,
            "µs over (b)",
        ));
        goals.push(goal(
            "(d') rps ≥ 0.97 × (b)",
            h.rps / b.rps,
            0.97,
            true,
            "×",
        ));
        if let Some(c) = get('c') {
            goals.push(goal(
                "(d') rps ≥ (c) rps",
                h.rps / c.rps,
                1.0,
                true,
                "× (c)",
            ));
        }
    }
    if let (Some(e), Some(m)) = (get('e'), get('m')) {
        goals.push(goal(
            "(e') Envoy CPU ≤ 0.5 × (e)",
            m.envoy_cpu_us / e.envoy_cpu_us,
            0.5,
            false,
            "× (e)",
        ));
    }
    md.push('\n');
    for g in &goals {
        md.push_str(&format!(
            "- {} {}: measured {}\n",
            if g["met"] == json!(true) {
                "✅"
            } else {
                "❌"
            },
            g["goal"].as_str().unwrap_or_default(),
            g["measured"].as_str().unwrap_or_default()
        ));
    }
    // What the heal machinery (mark, replay instance, retry policy) costs a
    // hit: each build against itself without it, in the same rounds.
    let mut heal = Vec::new();
    for (with, without, build) in [('d', 'f', "Wasm"), ('h', 'g', "native")] {
        if let (Some(w), Some(o)) = (get(with), get(without)) {
            md.push_str(&format!(
                "- heal machinery, {build} hit ({with}) ÷ ({without}): Envoy CPU {:.2} × ({:+.1} µs/req), rps {:.2} ×\n",
                w.envoy_cpu_us / o.envoy_cpu_us,
                w.envoy_cpu_us - o.envoy_cpu_us,
                w.rps / o.rps
            ));
            heal.push(json!({
                "build": build,
                "with": with.to_string(),
                "without": without.to_string(),
                "envoy_cpu_ratio": ratio(w.envoy_cpu_us, o.envoy_cpu_us),
                "envoy_cpu_added_us": w.envoy_cpu_us - o.envoy_cpu_us,
                "rps_ratio": ratio(w.rps, o.rps),
            }));
        }
    }
    // Where a hit's Envoy CPU goes: Envoy's cost of any filter of that kind
    // (its floor stamping one header, over (b)) and the filter's own work
    // (the hit over that floor).
    let mut split = Vec::new();
    for (hit, floor, build) in [('d', 's', "Wasm"), ('h', 't', "native")] {
        if let (Some(b), Some(h), Some(f)) = (&base, get(hit), get(floor)) {
            md.push_str(&format!(
                "- {build} hit ({hit}): Envoy CPU {:+.1} µs/req over (b), of which the {build} floor ({floor}) {:+.1} and authstamp's own work {:+.1}\n",
                h.envoy_cpu_us - b.envoy_cpu_us,
                f.envoy_cpu_us - b.envoy_cpu_us,
                h.envoy_cpu_us - f.envoy_cpu_us
            ));
            split.push(json!({
                "build": build,
                "hit": hit.to_string(),
                "floor": floor.to_string(),
                "hit_over_b_us": h.envoy_cpu_us - b.envoy_cpu_us,
                "floor_over_b_us": f.envoy_cpu_us - b.envoy_cpu_us,
                "hit_over_floor_us": h.envoy_cpu_us - f.envoy_cpu_us,
            }));
        }
    }
    // The native hit's work split once more: the host calls a hit makes,
    // made by the floor module without any logic (u), and the rest.
    if let (Some(h), Some(t), Some(u)) = (get('h'), get('t'), get('u')) {
        md.push_str(&format!(
            "- native hit (h) over its floor (t) {:+.1} µs/req: a hit's header calls alone (u) {:+.1}, authstamp's logic (h) − (u) {:+.1}\n",
            h.envoy_cpu_us - t.envoy_cpu_us,
            u.envoy_cpu_us - t.envoy_cpu_us,
            h.envoy_cpu_us - u.envoy_cpu_us
        ));
    }
    md.push_str(&format!(
        "\nrps and loaded p50/p99: wrk {} connection(s), {} thread(s), {} s; p50/p99/p99.9: one connection, {} s; \
         Envoy --concurrency {}; medians of {} round(s); {} CPUs, load {} → {}.\n",
        meta["wrk_connections"], meta["wrk_threads"], meta["duration_s"], meta["latency_duration_s"],
        meta["envoy_concurrency"], meta["rounds"], meta["cpus"],
        meta["loadavg_before"].as_str().unwrap_or_default(),
        meta["loadavg_after"].as_str().unwrap_or_default()
    ));
    let doc = json!({ "scenarios": rows, "goals": goals, "heal_machinery": heal, "floor_split": split, "meta": meta });
    (doc, md)
}

fn goal(name: &str, measured: f64, bound: f64, at_least: bool, unit: &str) -> Value {
    let met = if at_least {
        measured >= bound
    } else {
        measured <= bound
    };
    json!({
        "goal": name,
        "value": measured,
        "bound": bound,
        "met": met,
        "measured": format!("{measured:.2} {unit}"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn run(rps: f64, p50: u64, p99: u64) -> Run {
        Run {
            requests: 100,
            seconds: 1.0,
            rps,
            p50_us: p50,
            p90_us: p50,
            p99_us: p99,
            p999_us: p99 * 2,
            mean_us: p50 as f64,
            max_us: p99 * 3,
            errors: 0,
            envoy_cpu_us: 50.0,
        }
    }

    #[test]
    fn wrk_json_becomes_a_run() {
        let v: Value = serde_json::from_str(
            r#"{"requests":2000,"duration_us":2000000,"bytes":1,"errors":{"connect":0,"read":1,"write":0,"status":2,"timeout":0},
                "latency_us":{"mean":120.5,"max":900,"p50":100,"p90":150,"p99":300,"p999":700}}"#,
        )
        .unwrap();
        let r = Run::from_wrk(v).unwrap();
        assert_eq!(r.rps, 1000.0);
        assert_eq!(
            (r.p50_us, r.p99_us, r.p999_us, r.errors),
            (100, 300, 700, 3)
        );
    }

    #[test]
    fn medians_ratios_and_goals() {
        let mut b = Scenario::new('b', "static");
        b.runs = vec![
            run(1000.0, 100, 200),
            run(900.0, 110, 220),
            run(1100.0, 90, 180),
        ];
        let mut d = Scenario::new('d', "hit");
        d.runs = vec![run(950.0, 120, 230)];
        assert_eq!(b.summary().rps, 1000.0);
        assert_eq!(b.summary().p50_us, 100.0);
        let (doc, md) = render(&[b, d], json!({}));
        assert!(md.contains("| (d) hit | 950 | 0.95 | 120 | 230 | 460 | +20 | 1.15 | 1.15 | 120 | 230 | 50.0 | 0 |"), "{md}");
        let goals = doc["goals"].as_array().unwrap();
        assert_eq!(goals.len(), 3);
        assert!(goals.iter().all(|g| g["met"] == json!(true)), "{goals:?}");

        // Latency runs (one connection) give p50/p99/p99.9; the loaded ones stay beside.
        let mut e = Scenario::new('e', "miss");
        e.runs = vec![run(500.0, 900, 2000)];
        e.latency_runs = vec![run(100.0, 300, 700)];
        let s = e.summary();
        assert_eq!((s.p50_us, s.p99_us, s.p999_us), (300.0, 700.0, 1400.0));
        assert_eq!((s.loaded_p50_us, s.loaded_p99_us), (900.0, 2000.0));
        assert_eq!(s.rps, 500.0);
        assert_eq!(s.requests, 200);
    }

    #[test]
    fn native_goals_and_heal_ratios() {
        let with_cpu = |id: char, rps: f64, cpu: f64| {
            let mut s = Scenario::new(id, "x");
            s.runs = vec![Run {
                envoy_cpu_us: cpu,
                ..run(rps, 100, 200)
            }];
            s
        };
        let rows = [
            with_cpu('b', 1000.0, 50.0),
            with_cpu('e', 200.0, 400.0),
            with_cpu('h', 980.0, 52.0),
            with_cpu('g', 1000.0, 50.0),
            with_cpu('m', 400.0, 180.0),
            with_cpu('t', 1000.0, 51.5),
            with_cpu('u', 1000.0, 51.75),
        ];
        let (doc, md) = render(&rows, json!({}));
        let goals = doc["goals"].as_array().unwrap();
        let met = |name: &str| {
            goals
                .iter()
                .find(|g| g["goal"] == json!(name))
                .map(|g| g["met"] == json!(true))
        };
        assert_eq!(met("(d') Envoy CPU ≤ (b) + 3 µs/req"), Some(true));
        assert_eq!(met("(d') rps ≥ 0.97 × (b)"), Some(true));
        assert_eq!(met("(e') Envoy CPU ≤ 0.5 × (e)"), Some(true));
        assert!(
            md.contains("native hit (h) ÷ (g): Envoy CPU 1.04 × (+2.0 µs/req), rps 0.98 ×"),
            "{md}"
        );
        assert_eq!(doc["heal_machinery"][0]["envoy_cpu_added_us"], json!(2.0));
        assert!(
            md.contains("native hit (h): Envoy CPU +2.0 µs/req over (b), of which the native floor (t) +1.5 and authstamp's own work +0.5"),
            "{md}"
        );
        assert!(
            md.contains("native hit (h) over its floor (t) +0.5 µs/req: a hit's header calls alone (u) +0.2, authstamp's logic (h) − (u) +0.2"),
            "{md}"
        );
        // No Wasm floor row, no Wasm split.
        assert_eq!(doc["floor_split"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn metrics_are_read_from_prometheus_text() {
        let text = "# TYPE authstamp_cache_hits_total counter\nauthstamp_cache_hits_total 5\n\
                    authstamp_token_fetch_us_bucket{le=\"1\"} 0\nauthstamp_errors_internal_total 0\n\
                    envoy_x 3\nauthstamp_token_lookups_total{outcome=\"ok\"} 2\nauthstamp_token_lookups_total{outcome=\"x\"} 1\n";
        assert_eq!(
            authstamp_testkit::prom::sum(text, "authstamp_token_lookups_total"),
            3.0
        );
        let m = authstamp_metrics(text);
        assert_eq!(m["authstamp_cache_hits_total"], json!(5.0));
        assert!(m.get("authstamp_errors_internal_total").is_none());
    }
}
