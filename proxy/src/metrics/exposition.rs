//! Text exposition (format 0.0.4) of the merged per-request families.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::flows::{BUCKETS_LE, Hist, ReqSeries, SourceStats, Src};
use super::labels;

fn src_labels(out: &mut String, (ns, wl, pod): &Src) {
    out.push_str("source_namespace=\"");
    labels::escape(ns, out);
    out.push_str("\",source_workload=\"");
    labels::escape(wl, out);
    out.push_str("\",source_pod=\"");
    labels::escape(pod, out);
    out.push('"');
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub(super) fn write_requests(requests: &BTreeMap<ReqSeries, u64>, out: &mut String) {
    if requests.is_empty() {
        return;
    }
    header(
        out,
        "tproxy_requests_total",
        "counter",
        "HTTP requests (HTTP/2 streams) finished, by source pod, destination host, method, status class (error = no response), policy decision and rule.",
    );
    for ((src, [host, rule], [method, class, decision]), v) in requests {
        out.push_str("tproxy_requests_total{");
        src_labels(out, src);
        out.push_str(",destination_host=\"");
        labels::escape(host, out);
        let _ = write!(
            out,
            "\",method=\"{}\",status_class=\"{}\",decision=\"{}\",rule=\"",
            labels::METHODS[usize::from(*method)],
            labels::STATUS_CLASSES[usize::from(*class)],
            labels::DECISIONS[usize::from(*decision)],
        );
        labels::escape(rule, out);
        let _ = writeln!(out, "\"}} {v}");
    }
}

fn write_hist(
    out: &mut String,
    name: &str,
    help: &str,
    sources: &BTreeMap<Src, SourceStats>,
    get: fn(&SourceStats) -> &Hist,
) {
    header(out, name, "histogram", help);
    for (src, s) in sources {
        let h = get(s);
        let mut cum = 0;
        for (i, le) in BUCKETS_LE.iter().enumerate() {
            cum += h.counts[i];
            let _ = write!(out, "{name}_bucket{{");
            src_labels(out, src);
            let _ = writeln!(out, ",le=\"{le}\"}} {cum}");
        }
        let _ = write!(out, "{name}_bucket{{");
        src_labels(out, src);
        let _ = writeln!(out, ",le=\"+Inf\"}} {}", h.count());
        let _ = write!(out, "{name}_sum{{");
        src_labels(out, src);
        let _ = writeln!(out, "}} {}", h.sum_ns as f64 / 1e9);
        let _ = write!(out, "{name}_count{{");
        src_labels(out, src);
        let _ = writeln!(out, "}} {}", h.count());
    }
}

pub(super) fn write_sources(sources: &BTreeMap<Src, SourceStats>, out: &mut String) {
    if sources.is_empty() {
        return;
    }
    write_hist(
        out,
        "tproxy_request_duration_seconds",
        "Time from the request head to the end of the response, by source pod.",
        sources,
        |s| &s.duration,
    );
    write_hist(
        out,
        "tproxy_upstream_ttfb_seconds",
        "Time from sending the request upstream to the first response byte, by source pod.",
        sources,
        |s| &s.ttfb,
    );
    let pairs = [
        (
            "tproxy_body_bytes_total",
            "HTTP body bytes relayed, by source pod and direction.",
            (|s: &SourceStats| s.body_from_client) as fn(&SourceStats) -> u64,
            (|s: &SourceStats| s.body_to_client) as fn(&SourceStats) -> u64,
        ),
        (
            "tproxy_passthrough_bytes_total",
            "Bytes spliced through passthrough connections, by source pod and direction.",
            |s: &SourceStats| s.tcp_from_client,
            |s: &SourceStats| s.tcp_to_client,
        ),
    ];
    for (name, help, from, to) in pairs {
        header(out, name, "counter", help);
        for (src, s) in sources {
            for (dir, v) in [("from_client", from(s)), ("to_client", to(s))] {
                let _ = write!(out, "{name}{{");
                src_labels(out, src);
                let _ = writeln!(out, ",direction=\"{dir}\"}} {v}");
            }
        }
    }
    header(
        out,
        "tproxy_passthrough_flows_total",
        "counter",
        "Passthrough (spliced) connections finished, by source pod.",
    );
    for (src, s) in sources {
        out.push_str("tproxy_passthrough_flows_total{");
        src_labels(out, src);
        let _ = writeln!(out, "}} {}", s.tcp_flows);
    }
}
