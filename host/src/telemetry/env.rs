//! Checks of the `OTEL_*` variables before anything reads them.
//!
//! The OpenTelemetry SDK configuration specification says an invalid
//! value SHOULD be warned about and treated as not set (numbers), an
//! unrecognised enum value MUST be warned about and ignored, and a
//! Boolean other than `true`/`false` is false with a warning
//! (`docs/observability.md`, "Configuration"). The SDK crates read most
//! of these variables themselves and either ignore a bad value silently
//! or misbehave on it (a timeout of 0 fails every export at once), so
//! [`check`] finds each bad value and says what to use instead; the host
//! applies that to its environment before any exporter is built.

/// One variable whose value is not used as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The variable, e.g. `OTEL_BSP_MAX_QUEUE_SIZE`.
    pub var: &'static str,
    /// The value to use instead; `None` = treat as unset (the default).
    pub replacement: Option<String>,
    /// The warning line: the variable, its value, what is wrong and what
    /// is used; `None` for a valid value only rewritten for the SDK (a
    /// timeout of 0 = no limit).
    pub warning: Option<String>,
}

/// A timeout of 0 means "no limit" (OpenTelemetry configuration schema:
/// "A value of 0 indicates no limit (infinity)"); the SDK crates would
/// treat it as an immediate timeout, so it becomes this many
/// milliseconds (about 49 days). Shutdown still bounds every export.
pub const NO_LIMIT_MS: u64 = u32::MAX as u64;

const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// Checks every `OTEL_*` variable this host reads (through `var`) and
/// returns one [`Finding`] per value that is not used as given.
pub fn check(var: &dyn Fn(&str) -> Option<String>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut rewrites = Vec::new();
    let get = |k: &str| var(k).filter(|v| !v.trim().is_empty());
    let mut bad = |v: &'static str, value: &str, problem: &str, fallback: &str| {
        out.push(Finding {
            var: v,
            replacement: None,
            warning: Some(format!(
                "{v}={value:?} {problem}; it is ignored and the default ({fallback}) is used. Fix or unset {v}"
            )),
        });
    };

    if let Some(v) = get("OTEL_SDK_DISABLED")
        && !matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "false")
    {
        bad(
            "OTEL_SDK_DISABLED",
            &v,
            "is not true or false",
            "false: telemetry stays on",
        );
    }

    let sampler = get("OTEL_TRACES_SAMPLER").map(|s| s.trim().to_ascii_lowercase());
    let mut sampler_ok = true;
    if let Some(s) = &sampler
        && !SAMPLERS.contains(&s.as_str())
    {
        sampler_ok = false;
        bad(
            "OTEL_TRACES_SAMPLER",
            s,
            &format!(
                "is not a sampler this build knows ({})",
                SAMPLERS.join(", ")
            ),
            "parentbased_always_on",
        );
    }
    if sampler_ok
        && sampler
            .as_deref()
            .is_some_and(|s| s.ends_with("traceidratio"))
        && let Some(arg) = get("OTEL_TRACES_SAMPLER_ARG")
        && !arg
            .trim()
            .parse::<f64>()
            .is_ok_and(|r| (0.0..=1.0).contains(&r))
    {
        bad(
            "OTEL_TRACES_SAMPLER_ARG",
            &arg,
            "is not a ratio from 0.0 to 1.0",
            "1.0",
        );
    }

    for k in [
        "OTEL_TRACES_EXPORTER",
        "OTEL_LOGS_EXPORTER",
        "OTEL_METRICS_EXPORTER",
    ] {
        let Some(v) = get(k) else { continue };
        let unsupported: Vec<String> = v
            .split(',')
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !matches!(e.as_str(), "otlp" | "none" | ""))
            .collect();
        if !unsupported.is_empty() {
            bad(
                k,
                &v,
                &format!(
                    "names an exporter this build does not support ({}; only otlp and none are)",
                    unsupported.join(", ")
                ),
                "otlp",
            );
        }
    }

    for (k, default) in [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10000 ms"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT or 10000 ms",
        ),
        (
            "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT or 10000 ms",
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT or 10000 ms",
        ),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "30000 ms"),
    ] {
        let Some(v) = get(k) else { continue };
        match v.trim().parse::<u64>() {
            Ok(0) => rewrites.push(Finding {
                var: k,
                replacement: Some(NO_LIMIT_MS.to_string()),
                warning: None,
            }),
            Ok(_) => {}
            Err(_) => bad(
                k,
                &v,
                "is not a whole number of milliseconds (0 = no limit)",
                default,
            ),
        }
    }

    for (k, default) in [
        ("OTEL_BSP_MAX_QUEUE_SIZE", "2048"),
        ("OTEL_BLRP_MAX_QUEUE_SIZE", "2048"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
        ("OTEL_BSP_SCHEDULE_DELAY", "1000 ms"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "60000 ms"),
    ] {
        let Some(v) = get(k) else { continue };
        if !v.trim().parse::<u64>().is_ok_and(|n| n > 0) {
            bad(k, &v, "is not a whole number above 0", default);
        }
    }

    // `http/json` is an OTLP protocol this build cannot speak (refused at
    // start, telemetry/mod.rs); anything else unknown is ignored.
    for k in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ] {
        let Some(v) = get(k) else { continue };
        if !matches!(v.trim(), "grpc" | "http/protobuf" | "http/json") {
            bad(
                k,
                &v,
                "is not an OTLP protocol (grpc, http/protobuf)",
                "http/protobuf",
            );
        }
    }

    if let Some(v) = get("OTEL_RESOURCE_ATTRIBUTES")
        && let Some(problem) = resource_attributes_problem(&v)
    {
        bad(
            "OTEL_RESOURCE_ATTRIBUTES",
            &v,
            &format!("is not a list of key=value pairs ({problem}); the whole value"),
            "no attributes from it",
        );
    }
    out.append(&mut rewrites);
    out
}

/// What is wrong with an `OTEL_RESOURCE_ATTRIBUTES` value (comma-separated
/// `key=value`, non-empty keys), or `None`.
fn resource_attributes_problem(value: &str) -> Option<String> {
    for (i, pair) in value.split(',').enumerate() {
        let n = i + 1;
        let pair = pair.trim();
        if pair.is_empty() {
            return Some(format!("item {n} is empty"));
        }
        match pair.split_once('=') {
            None => return Some(format!("item {n} ({pair:?}) has no '='")),
            Some((k, _)) if k.trim().is_empty() => {
                return Some(format!("item {n} ({pair:?}) has no key"));
            }
            Some(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn findings(vars: &[(&str, &str)]) -> Vec<Finding> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        check(&|k| vars.get(k).cloned())
    }

    fn warned(vars: &[(&str, &str)]) -> Vec<String> {
        findings(vars)
            .into_iter()
            .filter(|f| f.replacement.is_none())
            .map(|f| f.warning.expect("an ignored value is warned about"))
            .collect()
    }

    #[test]
    fn valid_and_empty_values_pass() {
        let ok = findings(&[
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_SAMPLER", "ParentBased_TraceIdRatio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod, team=shop",
            ),
            ("OTEL_LOGS_EXPORTER", ""),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(ok, vec![]);
    }

    #[test]
    fn an_unknown_protocol_is_ignored_for_http_protobuf() {
        let w = warned(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "bogus")]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") && w[0].contains("http/protobuf"),
            "{w:?}"
        );
        // http/json is known, only not spoken here: refused elsewhere.
        assert_eq!(
            warned(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_bad_value_is_one_warning_naming_it_and_the_default() {
        let cases: [(&str, &str, &str); 12] = [
            ("OTEL_SDK_DISABLED", "maybe", "false"),
            ("OTEL_TRACES_SAMPLER", "bogus", "parentbased_always_on"),
            ("OTEL_TRACES_EXPORTER", "zipkin", "otlp"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1", "10000 ms"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "NaN", "10000 ms"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "abc", "2048"),
            ("OTEL_BLRP_MAX_QUEUE_SIZE", "0", "2048"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "abc", "60000 ms"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "0", "60000 ms"),
            ("OTEL_RESOURCE_ATTRIBUTES", "garbage,,=x", "no attributes"),
            ("OTEL_RESOURCE_ATTRIBUTES", "a=1,,b=2", "no attributes"),
            ("OTEL_BSP_SCHEDULE_DELAY", "1.5", "1000 ms"),
        ];
        for (var, value, default) in cases {
            let w = warned(&[(var, value)]);
            assert_eq!(w.len(), 1, "{var}={value}: {w:?}");
            assert!(w[0].starts_with(&format!("{var}={value:?}")), "{}", w[0]);
            assert!(w[0].contains(default), "{}", w[0]);
        }
    }

    #[test]
    fn an_unsupported_exporter_is_named() {
        let w = warned(&[("OTEL_LOGS_EXPORTER", "otlp,Console")]);
        assert!(w[0].contains("not support (console"), "{}", w[0]);
    }

    #[test]
    fn a_bad_ratio_is_warned_only_for_a_ratio_sampler() {
        assert_eq!(
            warned(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2")
            ])
            .len(),
            1
        );
        assert!(
            warned(&[
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_TRACES_SAMPLER_ARG", "2")
            ])
            .is_empty()
        );
    }

    #[test]
    fn a_zero_timeout_means_no_limit_without_a_warning() {
        let f = findings(&[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0")]);
        assert_eq!(
            f,
            vec![Finding {
                var: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                replacement: Some(NO_LIMIT_MS.to_string()),
                warning: None,
            }]
        );
    }
}
