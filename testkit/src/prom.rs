//! One reader of Prometheus and OpenMetrics text expositions (Envoy's
//! `/stats/prometheus`, the token service's `/metrics`).

/// One sample line: `name{labels} value`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// What stands between the braces, `""` for none.
    pub labels: &'a str,
    /// `name{labels}` as written (just `name` without labels).
    pub series: &'a str,
    pub value: f64,
}

/// Every sample of a text, in order (comments, `# TYPE` and unparsable lines
/// left out).
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(sample)
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    // Label values may hold spaces: the series ends at the closing brace.
    let series_end = match line.find(['{', ' ']) {
        Some(at) if line[at..].starts_with('{') => at + line[at..].find('}')? + 1,
        Some(at) => at,
        None => return None,
    };
    let series = &line[..series_end];
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let value = line[series_end..].split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        series,
        value,
    })
}

/// Sum of every sample of the metric `name`, whatever its labels.
pub fn sum(text: &str, name: &str) -> f64 {
    samples(text)
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// The value of one series, `name` or `name{labels}` exactly as exposed.
pub fn value(text: &str, series: &str) -> Option<f64> {
    samples(text).find(|s| s.series == series).map(|s| s.value)
}

/// The `(name, type)` of every `# TYPE` line.
pub fn families(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.trim().split_once(' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP authstamp_x_total X.\n\
        # TYPE authstamp_x_total counter\n\
        authstamp_x_total{outcome=\"ok\"} 3\n\
        authstamp_x_total{outcome=\"a b\"} 4\n\
        authstamp_x_totals 100\n\
        authstamp_y 2.5 1700000000\n\
        # EOF\n";

    #[test]
    fn reads_series_labels_and_values() {
        let all: Vec<_> = samples(TEXT).collect();
        assert_eq!(all.len(), 4);
        assert_eq!(all[1].name, "authstamp_x_total");
        assert_eq!(all[1].labels, "outcome=\"a b\"");
        assert_eq!(all[1].value, 4.0);
        assert_eq!(all[3].series, "authstamp_y");
        assert_eq!(all[3].value, 2.5);
    }

    #[test]
    fn sums_one_metric_only() {
        assert_eq!(sum(TEXT, "authstamp_x_total"), 7.0);
        assert_eq!(sum(TEXT, "authstamp_none"), 0.0);
        assert_eq!(value(TEXT, "authstamp_x_total{outcome=\"ok\"}"), Some(3.0));
        assert_eq!(value(TEXT, "authstamp_x_total"), None);
    }

    #[test]
    fn lists_families() {
        let all: Vec<_> = families(TEXT).collect();
        assert_eq!(all, [("authstamp_x_total", "counter")]);
    }
}
