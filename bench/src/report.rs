//! Results side by side: a Markdown table with each run's figures and, from the second run on,
//! their ratio to the first (`1.25×` = 25 % more than the first run).

use std::fmt::Write as _;

use crate::result::{Percentiles, RunResult};

/// The Markdown report of `runs`, compared with the first.
pub fn markdown(runs: &[RunResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| run | mode | requests | rate (req/s) | errors | p50 (ms) | p90 (ms) | p99 (ms) | p99.9 (ms) | max (ms) |\n",
    );
    out.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    let Some(first) = runs.first() else {
        return out;
    };
    for run in runs {
        let base = (!std::ptr::eq(run, first)).then_some(first);
        let latency = |pick: fn(&Percentiles) -> f64| {
            cell(
                run.latency_ms.as_ref().map(pick),
                base.map(|b| b.latency_ms.as_ref().map(pick)),
                2,
            )
        };
        let mode = match run.settings.rate {
            Some(rate) => format!("{} at {rate}/s", run.settings.mode),
            None => run.settings.mode.clone(),
        };
        let _ = writeln!(
            out,
            "| {} | {mode} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.label.replace('|', "\\|"),
            cell(
                Some(run.requests as f64),
                base.map(|b| Some(b.requests as f64)),
                0
            ),
            cell(
                Some(run.achieved_rate),
                base.map(|b| Some(b.achieved_rate)),
                1
            ),
            errors(run),
            latency(|p| p.p50),
            latency(|p| p.p90),
            latency(|p| p.p99),
            latency(|p| p.p999),
            latency(|p| p.max),
        );
    }
    if runs.iter().any(|run| !run.steps.is_empty()) {
        out.push_str(
            "\n| run | step | weight | calls | errors | p50 (ms) | p90 (ms) | p99 (ms) | p99.9 (ms) | max (ms) |\n",
        );
        out.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        for run in runs {
            for step in &run.steps {
                let latency = |pick: fn(&Percentiles) -> f64| {
                    step.latency_ms
                        .as_ref()
                        .map_or_else(|| "–".to_owned(), |p| format!("{:.2}", pick(p)))
                };
                let failed = step.requests - step.ok;
                let mut errors = failed.to_string();
                if failed > 0 {
                    let kinds: Vec<String> = step
                        .errors
                        .iter()
                        .map(|(kind, count)| format!("{kind} {count}"))
                        .collect();
                    let _ = write!(errors, " ({})", kinds.join(", "));
                }
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {errors} | {} | {} | {} | {} | {} |",
                    run.label.replace('|', "\\|"),
                    step.name.replace('|', "\\|"),
                    step.weight,
                    step.requests,
                    latency(|p| p.p50),
                    latency(|p| p.p90),
                    latency(|p| p.p99),
                    latency(|p| p.p999),
                    latency(|p| p.max),
                );
            }
        }
    }
    out.push('\n');
    for run in runs {
        let machine = &run.machine;
        let what = match &run.settings.scenario {
            Some(scenario) => format!(
                "scenario {} ({} users, setup {:.1} s)",
                scenario.name, scenario.users, scenario.setup_s
            ),
            None => run
                .settings
                .http_method
                .as_deref()
                .or(run.settings.grpc_method.as_deref())
                .unwrap_or("")
                .to_owned(),
        };
        let _ = writeln!(
            out,
            "- **{}**: {} {} {}, {} connection(s) × {} stream(s), {} s, timeout {} ms, \
             started {}; {}, {} of {} cores available, affinity {}, kernel {}",
            run.label,
            run.settings.protocol,
            what,
            run.settings.url,
            run.settings.connections,
            run.settings.streams,
            run.settings.duration_s,
            run.settings.timeout_ms,
            run.started_at,
            machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
            machine.cores_available,
            machine
                .cores_online
                .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            machine.affinity.as_deref().unwrap_or("?"),
            machine.kernel.as_deref().unwrap_or("?"),
        );
    }
    out
}

/// `value`, and its ratio to `base` when there is a base with a non-zero value.
fn cell(value: Option<f64>, base: Option<Option<f64>>, decimals: usize) -> String {
    let Some(value) = value else {
        return "–".to_owned();
    };
    let shown = format!("{value:.decimals$}");
    match base.flatten() {
        Some(base) if base > 0.0 => format!("{shown} ({:.2}×)", value / base),
        _ => shown,
    }
}

fn errors(run: &RunResult) -> String {
    let total = run.error_count();
    let mut text = total.to_string();
    if total > 0 {
        let kinds: Vec<String> = run
            .errors
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        let _ = write!(text, " ({})", kinds.join(", "));
    }
    if run.unsent > 0 {
        let _ = write!(text, ", {} unsent", run.unsent);
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::engine::{Load, Mode, new_histogram};
    use crate::machine::Machine;
    use crate::result::{EncodedHistogram, Protocol, Settings};

    fn run(label: &str, requests: u64, p50: f64, errors: &[(&str, u64)]) -> RunResult {
        let load = Load {
            mode: Mode::Rate(1000.0),
            duration: Duration::from_secs(10),
            connections: 4,
            streams: 1,
            timeout: Duration::from_secs(2),
        };
        RunResult {
            tool: "shopmesh-bench".to_owned(),
            label: label.to_owned(),
            started_at: "2025-01-01T00:00:00Z".to_owned(),
            settings: Settings {
                http_method: Some("GET".to_owned()),
                ..Settings::new(Protocol::Http1, "http://127.0.0.1:8080/", &load)
            },
            requests,
            ok: requests - errors.iter().map(|(_, n)| n).sum::<u64>(),
            errors: errors
                .iter()
                .map(|(kind, n)| ((*kind).to_owned(), *n))
                .collect::<BTreeMap<_, _>>(),
            unsent: 0,
            reconnects: 0,
            elapsed_s: 10.0,
            achieved_rate: requests as f64 / 10.0,
            latency_ms: Some(Percentiles {
                p50,
                p90: p50 * 2.0,
                p99: p50 * 4.0,
                p999: p50 * 8.0,
                max: p50 * 16.0,
                min: p50 / 2.0,
                mean: p50,
            }),
            service_time_ms: None,
            histogram: EncodedHistogram::encode(&new_histogram()),
            spectrum: vec![],
            timeline: vec![],
            machine: Machine {
                cpu_model: Some("Test CPU".to_owned()),
                cores_online: Some(2),
                cores_available: 1,
                kernel: Some("6.1.0".to_owned()),
                affinity: Some("0".to_owned()),
                affinity_cpus: Some(vec![0]),
                os: "linux".to_owned(),
                arch: "x86_64".to_owned(),
            },
            steps: vec![],
        }
    }

    #[test]
    fn later_runs_show_ratios_to_the_first() {
        let table = markdown(&[
            run("edge", 10_000, 2.0, &[]),
            run("nginx", 10_000, 1.0, &[("timeout", 3), ("status_5xx", 2)]),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("| run | mode |"));
        assert_eq!(
            lines[2],
            "| edge | rate at 1000/s | 10000 | 1000.0 | 0 | 2.00 | 4.00 | 8.00 | 16.00 | 32.00 |"
        );
        assert_eq!(
            lines[3],
            "| nginx | rate at 1000/s | 10000 (1.00×) | 1000.0 (1.00×) | 5 (status_5xx 2, timeout 3) \
             | 1.00 (0.50×) | 2.00 (0.50×) | 4.00 (0.50×) | 8.00 (0.50×) | 16.00 (0.50×) |"
        );
        assert!(table.contains("- **edge**: HTTP/1.1 GET "));
        assert!(table.contains("Test CPU, 1 of 2 cores available, affinity 0, kernel 6.1.0"));
    }

    #[test]
    fn runs_without_latencies_show_a_dash() {
        let mut failed = run("down", 100, 1.0, &[("connect", 100)]);
        failed.latency_ms = None;
        let table = markdown(&[run("up", 100, 1.0, &[]), failed]);
        let row = table.lines().nth(3).unwrap();
        assert!(
            row.contains("| 100 (connect 100) | – | – | – | – | – |"),
            "{row}"
        );
    }
}
