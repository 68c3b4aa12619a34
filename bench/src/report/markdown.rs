//! `docs/benchmarks.md`: the generated sections between
//! `<!-- BEGIN airlock-bench: NAME -->` and `<!-- END airlock-bench: NAME -->`
//! are rewritten; everything else (the hand-written reading of the numbers)
//! is kept. A section missing from the file is appended at its end.

use std::fmt::Write as _;

use crate::results::{GroupRun, Row};
use crate::stats::Summary;

/// The opening marker of section `name`.
pub fn begin_marker(name: &str) -> String {
    format!("<!-- BEGIN airlock-bench: {name} -->")
}

/// The closing marker of section `name`.
pub fn end_marker(name: &str) -> String {
    format!("<!-- END airlock-bench: {name} -->")
}

/// `doc` with section `name` replaced by `body` (appended, with a heading,
/// if the markers are missing or out of order).
pub fn replace_section(doc: &str, name: &str, heading: &str, body: &str) -> String {
    let begin = begin_marker(name);
    let end = end_marker(name);
    let block = format!("{begin}\n{}\n{end}", body.trim_end());
    if let Some(start) = doc.find(&begin) {
        if let Some(stop) = doc[start..].find(&end).map(|i| start + i + end.len()) {
            return format!("{}{block}{}", &doc[..start], &doc[stop..]);
        }
    }
    let mut out = doc.trim_end().to_string();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    let _ = write!(out, "## {heading}\n\n{block}\n");
    out
}

/// Formats a value with about three significant digits.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn cell(summary: &Summary, best: bool) -> String {
    let text = if summary.n > 1 {
        format!(
            "{} ±{:.0}%",
            format_value(summary.median),
            summary.spread_pct()
        )
    } else {
        format_value(summary.median)
    };
    if best {
        format!("**{text}**")
    } else {
        text
    }
}

/// Tables in order of first appearance.
pub fn table_names(run: &GroupRun) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for row in &run.rows {
        if !names.contains(&row.table) {
            names.push(row.table.clone());
        }
    }
    for f in &run.failures {
        if !names.contains(&f.table) {
            names.push(f.table.clone());
        }
    }
    names
}

/// Peers of `table` in order of first appearance.
pub fn peers_of(run: &GroupRun, table: &str) -> Vec<String> {
    let mut peers: Vec<String> = Vec::new();
    let rows = run.rows.iter().filter(|r| r.table == table);
    let failed = run
        .failures
        .iter()
        .filter(|f| f.table == table && !f.peer.is_empty());
    for p in rows.map(|r| &r.peer).chain(failed.map(|f| &f.peer)) {
        if !peers.contains(p) {
            peers.push(p.clone());
        }
    }
    peers
}

/// Tests of `table` in order of first appearance, with unit and direction.
pub fn tests_of<'a>(run: &'a GroupRun, table: &str) -> Vec<&'a Row> {
    let mut tests: Vec<&Row> = Vec::new();
    for row in run.rows.iter().filter(|r| r.table == table) {
        if !tests.iter().any(|t| t.test == row.test) {
            tests.push(row);
        }
    }
    tests
}

fn find<'a>(run: &'a GroupRun, table: &str, test: &str, peer: &str) -> Option<&'a Row> {
    run.rows
        .iter()
        .find(|r| r.table == table && r.test == test && r.peer == peer)
}

/// The Markdown table of one table name: tests down, peers across, median
/// ± half the min–max range, best in bold.
pub fn results_table(run: &GroupRun, table: &str) -> String {
    let peers = peers_of(run, table);
    let mut out = String::new();
    let _ = writeln!(out, "| {table} | {} |", peers.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(peers.len()));
    for t in tests_of(run, table) {
        let arrow = if t.higher_is_better { "↑" } else { "↓" };
        let cells: Vec<Option<&Summary>> = peers
            .iter()
            .map(|p| find(run, table, &t.test, p).and_then(|r| r.summary.as_ref()))
            .collect();
        let medians = cells.iter().flatten().map(|s| s.median);
        let best = if t.higher_is_better {
            medians.fold(f64::NEG_INFINITY, f64::max)
        } else {
            medians.fold(f64::INFINITY, f64::min)
        };
        let many = cells.iter().flatten().count() > 1;
        let texts: Vec<String> = cells
            .iter()
            .map(|c| match c {
                Some(s) => cell(s, many && s.median == best),
                None => "—".to_string(),
            })
            .collect();
        let _ = writeln!(
            out,
            "| {} ({} {arrow}) | {} |",
            t.test,
            t.unit,
            texts.join(" | ")
        );
    }
    out
}

/// CPU seconds per GiB moved, for the tests whose samples carry bytes.
pub fn cost_table(run: &GroupRun, table: &str) -> Option<String> {
    let peers = peers_of(run, table);
    let tests: Vec<&Row> = tests_of(run, table)
        .into_iter()
        .filter(|t| {
            peers
                .iter()
                .any(|p| find(run, table, &t.test, p).is_some_and(|r| r.cpu_per_gib().is_some()))
        })
        .collect();
    if tests.is_empty() {
        return None;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| CPU s per GiB moved, {table} | {} |",
        peers.join(" | ")
    );
    let _ = writeln!(out, "|---|{}", "---:|".repeat(peers.len()));
    for t in tests {
        let cells: Vec<String> = peers
            .iter()
            .map(|p| {
                let row = find(run, table, &t.test, p);
                let Some(own) = row.and_then(Row::cpu_per_gib) else {
                    return "—".to_string();
                };
                let mut text = format_value(own.median);
                if let Some(q) = row.and_then(Row::qemu_cpu_per_gib) {
                    let _ = write!(text, " (+ QEMU {})", format_value(q.median));
                }
                if let Some(h) = row.and_then(Row::harness_cpu_per_gib) {
                    let _ = write!(text, " (+ harness {})", format_value(h.median));
                }
                text
            })
            .collect();
        let _ = writeln!(out, "| {} | {} |", t.test, cells.join(" | "));
    }
    Some(out)
}

/// CPU and memory of each serving process over the whole load.
pub fn resource_table(run: &GroupRun, table: &str) -> Option<String> {
    let rows: Vec<_> = run.resources.iter().filter(|r| r.table == table).collect();
    if rows.is_empty() {
        return None;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {table}: process | CPU s, whole load | peak RSS MiB (VmHWM) | own memory MiB (RssAnon) |"
    );
    out.push_str("|---|---:|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            if r.process == r.peer {
                r.peer.clone()
            } else {
                format!("{} ({})", r.peer, r.process)
            },
            format_value(r.cpu_s),
            mib(r.memory.map(|m| m.peak_rss_kib)),
            mib(r.memory.map(|m| m.rss_anon_kib))
        );
    }
    Some(out)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "—".to_string(), |k| format_value(k as f64 / 1024.0))
}

/// The whole generated section of one group.
pub fn group_section(run: &GroupRun, chart: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Generated by `{}` on {}{}, {} repetition{} per row (median ±half the min–max range; best in bold).\n",
        run.command,
        run.date,
        if run.quick { " (**--quick smoke run: small sizes, not for publication**)" } else { "" },
        run.reps,
        if run.reps == 1 { "" } else { "s" }
    );
    let _ = writeln!(out, "Machine: {}.\n", run.machine.describe());
    if !run.peers.is_empty() {
        out.push_str("Peers:\n\n");
        for p in &run.peers {
            let _ = writeln!(out, "- {}: {}", p.name, p.version);
        }
        out.push('\n');
    }
    if !run.setup.is_empty() {
        out.push_str("Setup:\n\n");
        for s in &run.setup {
            let _ = writeln!(out, "- {s}");
        }
        out.push('\n');
    }
    if let Some(chart) = chart {
        let _ = writeln!(out, "![chart]({chart})\n");
    }
    for table in table_names(run) {
        if run.rows.iter().any(|r| r.table == table) {
            out.push_str(&results_table(run, &table));
            out.push('\n');
        }
        if let Some(cost) = cost_table(run, &table) {
            out.push_str(&cost);
            out.push('\n');
        }
        if let Some(res) = resource_table(run, &table) {
            out.push_str(&res);
            out.push('\n');
        }
    }
    if !run.failures.is_empty() {
        out.push_str("Not measured:\n\n");
        for f in &run.failures {
            let what = f.what.lines().next().unwrap_or_default();
            let who = if f.peer.is_empty() && f.table.is_empty() {
                "the whole group".to_string()
            } else if f.peer.is_empty() {
                f.table.clone()
            } else {
                format!("{} ({})", f.peer, f.table)
            };
            let _ = writeln!(out, "- {who}: {what}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Failure, Sample};

    fn run() -> GroupRun {
        let row = |peer: &str, v: &[f64]| {
            Row::new(
                "cache=auto",
                "write",
                peer,
                "MiB/s",
                true,
                v.iter().map(|&x| Sample::value(x)).collect(),
            )
        };
        GroupRun {
            command: "scripts/bench fs".into(),
            rows: vec![row("a", &[10.0, 20.0, 30.0]), row("b", &[5.0])],
            failures: vec![Failure {
                table: "cache=auto".into(),
                peer: "c".into(),
                what: "not installed\nmore".into(),
            }],
            ..GroupRun::default()
        }
    }

    #[test]
    fn table_marks_best_and_missing() {
        let t = results_table(&run(), "cache=auto");
        assert!(t.contains("| cache=auto | a | b | c |"), "{t}");
        assert!(
            t.contains("| write (MiB/s ↑) | **20.0 ±50%** | 5.00 | — |"),
            "{t}"
        );
    }

    #[test]
    fn section_lists_failures() {
        let s = group_section(&run(), Some("bench/fs.svg"));
        assert!(s.contains("- c (cache=auto): not installed\n"), "{s}");
        assert!(s.contains("![chart](bench/fs.svg)"));
    }

    #[test]
    fn sections_are_replaced_or_appended() {
        let doc = format!(
            "# Title\n\nprose\n\n{}\nold\n{}\n\nmore prose\n",
            begin_marker("fs"),
            end_marker("fs")
        );
        let new = replace_section(&doc, "fs", "FS", "new body\n");
        assert_eq!(
            new,
            format!(
                "# Title\n\nprose\n\n{}\nnew body\n{}\n\nmore prose\n",
                begin_marker("fs"),
                end_marker("fs")
            )
        );
        let appended = replace_section(&new, "net", "Network", "n");
        assert!(appended.starts_with(&new.trim_end().to_string()));
        assert!(appended.ends_with(&format!(
            "## Network\n\n{}\nn\n{}\n",
            begin_marker("net"),
            end_marker("net")
        )));
    }
}
