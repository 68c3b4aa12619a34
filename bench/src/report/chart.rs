//! One SVG per group: a panel per test, bars per peer (grouped by table,
//! e.g. cache mode), each bar the median with a min–max whisker.

use std::path::Path;

use plotters::prelude::*;

use super::markdown::{format_value, peers_of, table_names};
use crate::results::GroupRun;
use crate::stats::Summary;

/// Errors drawing a chart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// plotters failed (usually: the file cannot be written).
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// The SVG file.
        path: String,
        /// plotters' message.
        message: String,
    },
}

/// Bar colours, one per peer in order of appearance (Airlock's first).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];
const PANEL_W: u32 = 440;
const PANEL_H: u32 = 280;
const COLUMNS: usize = 3;
const LEGEND_ROW_H: u32 = 22;
const FONT: &str = "sans-serif";
/// Panels with more bars than this get no value labels (they would overlap).
const MAX_LABELLED_BARS: usize = 8;

struct Bar {
    cluster: usize,
    peer: usize,
    summary: Summary,
}

/// Draws the chart of `run` to `path`. Returns `Ok(false)` when there is
/// nothing to draw.
pub fn group_chart(run: &GroupRun, title: &str, path: &Path) -> Result<bool, Error> {
    let wrap = |e: &dyn std::fmt::Display| Error::Draw {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let tables = table_names(run);
    let mut peers: Vec<String> = Vec::new();
    for t in &tables {
        for p in peers_of(run, t) {
            if !peers.contains(&p) && run.rows.iter().any(|r| r.peer == p) {
                peers.push(p);
            }
        }
    }
    // One panel per test and unit (a test may appear in tables of
    // different units, e.g. Gbit/s and packets/s).
    let mut tests: Vec<(String, String, bool)> = Vec::new();
    for r in &run.rows {
        if !tests.iter().any(|(t, u, _)| *t == r.test && *u == r.unit) {
            tests.push((r.test.clone(), r.unit.clone(), r.higher_is_better));
        }
    }
    if tests.is_empty() {
        return Ok(false);
    }
    let columns = COLUMNS.min(tests.len());
    let rows = tests.len().div_ceil(columns);
    let legend_per_row = 3;
    let legend_h = 34 + LEGEND_ROW_H * peers.len().div_ceil(legend_per_row) as u32;
    let width = PANEL_W * columns as u32;
    let height = legend_h + PANEL_H * rows as u32;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| wrap(&e))?;
    let (legend, grid) = root.split_vertically(legend_h);
    legend
        .draw(&Text::new(title, (10, 8), (FONT, 18).into_font()))
        .map_err(|e| wrap(&e))?;
    let col_w = width as i32 / legend_per_row as i32;
    for (i, peer) in peers.iter().enumerate() {
        let x = 10 + (i % legend_per_row) as i32 * col_w;
        let y = 34 + (i / legend_per_row) as i32 * LEGEND_ROW_H as i32;
        let color = PALETTE[i % PALETTE.len()];
        legend
            .draw(&Rectangle::new([(x, y), (x + 14, y + 12)], color.filled()))
            .map_err(|e| wrap(&e))?;
        legend
            .draw(&Text::new(
                peer.as_str(),
                (x + 20, y),
                (FONT, 13).into_font(),
            ))
            .map_err(|e| wrap(&e))?;
    }
    let panels = grid.split_evenly((rows, columns));
    for (panel, (test, unit, higher)) in panels.iter().zip(&tests) {
        let mut bars = Vec::new();
        let mut clusters: Vec<&str> = Vec::new();
        for table in &tables {
            let in_table: Vec<_> = run
                .rows
                .iter()
                .filter(|r| r.table == *table && r.test == *test && r.unit == *unit)
                .filter_map(|r| Some((r.peer.as_str(), r.summary?)))
                .collect();
            if in_table.is_empty() {
                continue;
            }
            let cluster = clusters.len();
            clusters.push(table);
            for (peer, summary) in in_table {
                let peer = peers.iter().position(|p| p == peer).unwrap_or(0);
                bars.push(Bar {
                    cluster,
                    peer,
                    summary,
                });
            }
        }
        draw_panel(&root, panel, test, unit, *higher, &clusters, &bars).map_err(|e| wrap(&e))?;
    }
    root.present().map_err(|e| wrap(&e))?;
    Ok(true)
}

fn draw_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &DrawingArea<DB, plotters::coord::Shift>,
    test: &str,
    unit: &str,
    higher: bool,
    clusters: &[&str],
    bars: &[Bar],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    // Slot layout: each cluster's bars side by side, one empty slot between clusters.
    let mut slots = Vec::with_capacity(bars.len());
    let mut x: f64 = 0.5;
    let mut centers = Vec::new();
    for (c, _) in clusters.iter().enumerate() {
        let start = x;
        for (i, bar) in bars.iter().enumerate().filter(|(_, b)| b.cluster == c) {
            let _ = bar;
            slots.push((i, x));
            x += 1.0;
        }
        centers.push((start + x - 1.0) / 2.0 + 0.5);
        x += 0.8;
    }
    let x_max = (x - 0.3).max(1.0);
    let y_max = bars
        .iter()
        .map(|b| b.summary.max)
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.18;
    let arrow = if higher {
        "higher is better"
    } else {
        "lower is better"
    };
    let mut chart = ChartBuilder::on(panel)
        .caption(format!("{test} [{unit}, {arrow}]"), (FONT, 13))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(5)
        .y_label_formatter(&|v| format_value(*v))
        .label_style((FONT, 11))
        .draw()?;
    chart.draw_series(slots.iter().map(|&(i, x)| {
        let b = &bars[i];
        let color = PALETTE[b.peer % PALETTE.len()];
        Rectangle::new(
            [(x + 0.1, 0.0), (x + 0.9, b.summary.median)],
            color.filled(),
        )
    }))?;
    chart.draw_series(
        slots
            .iter()
            .filter(|&&(i, _)| bars[i].summary.n > 1)
            .map(|&(i, x)| {
                let s = bars[i].summary;
                ErrorBar::new_vertical(x + 0.5, s.min, s.median, s.max, BLACK.stroke_width(1), 6)
            }),
    )?;
    // Value labels only while they fit; the tables carry every number.
    if bars.len() <= MAX_LABELLED_BARS {
        chart.draw_series(slots.iter().map(|&(i, x)| {
            let s = bars[i].summary;
            Text::new(
                format_value(s.median),
                (x + 0.15, s.max.max(s.median) + y_max * 0.06),
                (FONT, 10).into_font(),
            )
        }))?;
    }
    if clusters.len() > 1 || clusters.first().is_some_and(|c| !c.is_empty()) {
        // Alternate two rows so long cluster names do not overlap.
        for (n, (label, center)) in clusters.iter().zip(&centers).enumerate() {
            let (px, py) = chart.backend_coord(&(*center, 0.0));
            let chars = label.chars().count() as i32;
            let row = if clusters.len() > 2 {
                (n % 2) as i32 * 13
            } else {
                0
            };
            root.draw(&Text::new(
                label.to_string(),
                (px - chars * 3, py + 4 + row),
                (FONT, 10).into_font(),
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Row, Sample};

    #[test]
    fn draws_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.svg");
        let row = |table: &str, peer: &str, v: &[f64]| {
            Row::new(
                table,
                "write 128 MiB",
                peer,
                "MiB/s",
                true,
                v.iter().map(|&x| Sample::value(x)).collect(),
            )
        };
        let run = GroupRun {
            rows: vec![
                row("cache=auto", "airlock-fs", &[10.0, 12.0, 11.0]),
                row("cache=auto", "virtiofsd", &[9.0]),
                row("cache=never", "airlock-fs", &[7.0, 8.0]),
            ],
            ..GroupRun::default()
        };
        assert!(group_chart(&run, "fs", &path).unwrap());
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("airlock-fs") && svg.contains("cache=never")
        );
        assert!(!group_chart(&GroupRun::default(), "x", &path).unwrap());
    }
}
