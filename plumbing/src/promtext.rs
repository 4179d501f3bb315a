//! Reading the Prometheus text exposition format (version 0.0.4), as the components' `/metrics`
//! serve it, into samples: a metric name, its labels and a value.
//!
//! The console's pipeline page and `loggregator top` scrape `/metrics` with it to compute
//! envelopes/s and drops per hop, and the load generator to count every hop of a run. It reads what any Prometheus client writes (escaped
//! label values, `NaN`/`+Inf`, an optional timestamp after the value), skips `#` comments and blank
//! lines, and reports the first malformed line rather than guessing at it.

/// One line of an exposition: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Label pairs in the order the exposition wrote them.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample carries it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Whether the sample carries every one of `labels` with exactly that value.
    pub fn has_labels(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A line that is not a valid sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub reason: &'static str,
}

/// Every sample of `text`, in order.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|reason| ParseError { line: index + 1, reason })?;
        samples.push(sample);
    }
    Ok(samples)
}

/// The sum of the values of every sample named `name` that carries all of `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples.iter().filter(|s| s.name == name && s.has_labels(labels)).map(|s| s.value).sum()
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).ok_or("no value after the metric name")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err("invalid metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    // An optional timestamp (integer milliseconds) may follow; nothing after it.
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| "invalid timestamp")?;
    }
    if fields.next().is_some() {
        return Err("unexpected text after the timestamp");
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

/// Parses `a="x",b="y"}` into `labels`; returns what follows the closing brace.
fn parse_labels<'a>(mut rest: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, &'static str> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let eq = rest.find('=').ok_or("label without a value")?;
        let label = rest[..eq].trim();
        if !is_label_name(label) {
            return Err("invalid label name");
        }
        let quoted = rest[eq + 1..].trim_start().strip_prefix('"').ok_or("label value not quoted")?;
        let (value, after) = unescape_until_quote(quoted)?;
        labels.push((label.to_string(), value));
        rest = after.trim_start();
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma;
        } else if !rest.starts_with('}') {
            return Err("expected `,` or `}` after a label");
        }
    }
}

/// Reads a label value up to its closing quote, undoing `\\`, `\"` and `\n`.
fn unescape_until_quote(s: &str) -> Result<(String, &str), &'static str> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                _ => return Err("invalid escape in a label value"),
            },
            c => value.push(c),
        }
    }
    Err("unterminated label value")
}

fn parse_value(s: &str) -> Result<f64, &'static str> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        s => s.parse::<f64>().map_err(|_| "invalid value"),
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reads_what_the_registry_renders() {
        let registry = plumbing::Registry::new().scoped("doppler");
        registry.counter("ingress", "Envelopes received", &[]).add(7);
        registry.counter("dropped", "Envelopes dropped", &[("direction", "egress")]).add(2);
        let samples = parse(&registry.render()).expect("the registry's own output parses");
        assert_eq!(
            samples,
            vec![
                Sample {
                    name: "dropped".into(),
                    labels: labels(&[("component", "doppler"), ("direction", "egress")]),
                    value: 2.0
                },
                Sample { name: "ingress".into(), labels: labels(&[("component", "doppler")]), value: 7.0 },
            ]
        );
    }

    #[test]
    fn unescapes_label_values_and_skips_comments() {
        let text = "# HELP x a \"help\"\n# TYPE x counter\n\nx{path=\"a\\\\b\",q=\"say \\\"hi\\\"\",nl=\"1\\n2\"} 3\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].labels, labels(&[("path", "a\\b"), ("q", "say \"hi\""), ("nl", "1\n2")]));
        assert_eq!(samples[0].value, 3.0);
    }

    #[test]
    fn reads_special_values_timestamps_and_label_commas_inside_quotes() {
        let text = "a +Inf\nb{} -Inf 1700000000000\nc NaN\nd{x=\"1,}2\",} 1.5e3\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples[0].value, f64::INFINITY);
        assert_eq!(samples[1].value, f64::NEG_INFINITY);
        assert!(samples[1].labels.is_empty());
        assert!(samples[2].value.is_nan());
        assert_eq!(samples[3].labels, labels(&[("x", "1,}2")]));
        assert_eq!(samples[3].value, 1500.0);
    }

    #[test]
    fn names_the_first_malformed_line() {
        for (text, reason) in [
            ("ok 1\nbroken\n", "no value after the metric name"),
            ("ok 1\n9bad 1\n", "invalid metric name"),
            ("ok 1\nx{a=b} 1\n", "label value not quoted"),
            ("ok 1\nx{a=\"b} 1\n", "unterminated label value"),
            ("ok 1\nx{a=\"b\" c=\"d\"} 1\n", "expected `,` or `}` after a label"),
            ("ok 1\nx one\n", "invalid value"),
            ("ok 1\nx 1 2 3\n", "unexpected text after the timestamp"),
            ("ok 1\nx{a=\"\\q\"} 1\n", "invalid escape in a label value"),
        ] {
            assert_eq!(parse(text), Err(ParseError { line: 2, reason }), "{text:?}");
        }
    }

    #[test]
    fn sums_the_samples_that_carry_the_labels() {
        let text = "dropped{component=\"agent\",direction=\"ingress\"} 1\n\
                    dropped{component=\"agent\",direction=\"egress\"} 2\n\
                    dropped{component=\"doppler\",direction=\"egress\"} 4\n\
                    egress{component=\"agent\"} 8\n";
        let samples = parse(text).unwrap();
        assert_eq!(sum(&samples, "dropped", &[("component", "agent")]), 3.0);
        assert_eq!(sum(&samples, "dropped", &[("direction", "egress")]), 6.0);
        assert_eq!(sum(&samples, "dropped", &[]), 7.0);
        assert_eq!(sum(&samples, "missing", &[]), 0.0);
        assert_eq!(samples[0].label("direction"), Some("ingress"));
        assert_eq!(samples[0].label("absent"), None);
    }
}
