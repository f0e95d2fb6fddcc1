//! SVG plots of the load results (plotters).

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

/// p99 JOIN latency against achieved churn (joins + leaves per second), one line per target.
pub fn latency_vs_rate(path: &Path, runs: &[&Value]) -> Result<(), String> {
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let pts = r["steps"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|st| {
                            (
                                st["churn_ops_per_s"].as_f64().unwrap_or(0.0) / 1000.0,
                                st["join_p99_ms"].as_f64().unwrap_or(0.0).max(0.01),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (r["target"].as_str().unwrap_or("?").to_string(), pts)
        })
        .collect();
    let max_x = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(10.0, f64::max)
        * 1.05;
    let max_y = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(20.0, f64::max)
        * 1.5;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "p99 JOIN latency vs churn (joins + leaves per second), 2-core machine",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, (0.01..max_y).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("churn, thousand ops per second (achieved)")
        .y_desc("p99 JOIN latency, ms (log)")
        .draw()
        .map_err(err)?;
    let colors = [BLUE, RED, GREEN];
    for (k, (name, pts)) in series.iter().enumerate() {
        let c = colors[k % colors.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, 10.0), (max_x, 10.0)],
            BLACK.mix(0.4).stroke_width(1),
        ))
        .map_err(err)?
        .label("10 ms")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Servers' RSS over the soak.
pub fn rss_over_time(path: &Path, samples: &[(f64, u64)]) -> Result<(), String> {
    let mb: Vec<(f64, f64)> = samples
        .iter()
        .map(|&(t, b)| (t, b as f64 / (1024.0 * 1024.0)))
        .collect();
    let max_x = mb.iter().map(|p| p.0).fold(1.0, f64::max);
    let max_y = mb.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "headcount serve RSS during the soak (all nodes)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("RSS, MiB")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(mb, BLUE.stroke_width(2)))
        .map_err(err)?;
    root.present().map_err(err)
}
