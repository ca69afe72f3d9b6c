//! The SVG timeline of a run (or of runs side by side, one column each):
//!
//! 1. remaining dirty memory (MiB), from the VMM's statistics;
//! 2. rates (MiB/s): the VMM's transfer rate and dirty-rate estimate, the
//!    guest's own dirty rate, and the shaped link's rate;
//! 3. percent: the highest vCPU throttle and the guest's work rate against
//!    its pre-migration baseline.
//!
//! x is seconds since the migration started; a dashed line marks its end.

use std::path::Path;

use plotters::prelude::*;

use crate::analysis::GuestPoint;
use crate::error::{Error, Result};
use crate::run::RunResult;

const MIB: f64 = 1048576.0;

/// A gap between guest ticks longer than this breaks the line.
const GAP_S: f64 = 1.0;

/// `data` split at its NaN points into lines.
fn segments(data: &Series) -> Vec<Series> {
    let mut out = vec![Vec::new()];
    for &(x, y) in data {
        if y.is_nan() {
            out.push(Vec::new());
        } else if let Some(last) = out.last_mut() {
            last.push((x, y));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

type Series = Vec<(f64, f64)>;

struct Lines {
    remaining: Series,
    transfer: Series,
    dirty_vmm: Series,
    dirty_guest: Series,
    throttle: Series,
    work: Series,
}

fn lines(r: &RunResult) -> Lines {
    let p = &r.migration.progress;
    let at = |t_ms: f64| t_ms / 1e3;
    let collect = |f: &dyn Fn(&crate::vmm::ProgressSample) -> Option<f64>| -> Series {
        p.iter()
            .filter_map(|s| f(s).map(|v| (at(s.t_ms), v)))
            .collect()
    };
    // A NaN point breaks the line: between source and destination, and
    // where ticks stopped coming for a while.
    let guest = |f: &dyn Fn(&GuestPoint) -> Option<f64>| -> Series {
        let mut out: Series = Vec::new();
        let mut last: Option<&GuestPoint> = None;
        for g in &r.timeline {
            let Some(v) = f(g) else { continue };
            if let Some(prev) = last {
                if prev.side != g.side || g.t_s - prev.t_s > GAP_S {
                    out.push((g.t_s, f64::NAN));
                }
            }
            out.push((g.t_s, v));
            last = Some(g);
        }
        out
    };
    Lines {
        remaining: collect(&|s| s.remaining_bytes.map(|b| b as f64 / MIB)),
        transfer: collect(&|s| s.transfer_bytes_per_sec.map(|b| b / MIB)),
        dirty_vmm: collect(&|s| s.dirty_bytes_per_sec.map(|b| b / MIB)),
        dirty_guest: guest(&|g| Some(g.dirty_mib_s)),
        throttle: collect(&|s| s.throttle_pct.iter().copied().reduce(f64::max)),
        work: guest(&|g| g.work_pct),
    }
}

fn top(series: &[&Series], floor: f64) -> f64 {
    let max = series
        .iter()
        .flat_map(|s| s.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(floor, f64::max);
    max * 1.1
}

fn report_err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Report {
        path: path.to_path_buf(),
        message,
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

#[allow(clippy::too_many_arguments)]
fn panel(
    area: &Area<'_>,
    caption: &str,
    y_desc: &str,
    x: (f64, f64),
    y_max: f64,
    end_s: f64,
    series: &[(&str, &Series, RGBColor)],
    hline: Option<(&str, f64)>,
) -> std::result::Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(48)
        .build_cartesian_2d(x.0..x.1, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("s since migration start")
        .y_desc(y_desc)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| e.to_string())?;
    for (label, data, color) in series {
        if data.is_empty() {
            continue;
        }
        let color = *color;
        let mut lines = segments(data).into_iter();
        let Some(first) = lines.next() else { continue };
        for more in lines {
            chart
                .draw_series(LineSeries::new(more, color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(LineSeries::new(first, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    if let Some((label, v)) = hline {
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x.0, v), (x.1, v)],
                6,
                4,
                grey.into(),
            ))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], grey));
    }
    chart
        .draw_series(DashedLineSeries::new(
            vec![(end_s, 0.0), (end_s, y_max)],
            4,
            4,
            BLACK.into(),
        ))
        .map_err(|e| e.to_string())?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn column(area: &Area<'_>, r: &RunResult) -> std::result::Result<(), String> {
    let l = lines(r);
    let end_s = (r.migration.ended_at_ms - r.migration.started_at_ms) / 1e3;
    let x0 = l
        .work
        .iter()
        .map(|p| p.0)
        .fold(0.0_f64, f64::min)
        .max(-r.scenario.baseline_s - 1.0);
    let x1 = l
        .work
        .iter()
        .chain(&l.remaining)
        .map(|p| p.0)
        .fold(end_s, f64::max)
        .min(end_s + r.scenario.after_s + 1.0)
        + 0.2;
    let title = format!(
        "{} on {}: {}",
        r.scenario.name,
        r.vmm.label(),
        r.migration.status.short()
    );
    let area = area
        .titled(&title, ("sans-serif", 18))
        .map_err(|e| e.to_string())?;
    let panels = area.split_evenly((3, 1));
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let green = RGBColor(44, 160, 44);
    let red = RGBColor(214, 39, 40);
    let purple = RGBColor(148, 103, 189);
    panel(
        &panels[0],
        "remaining dirty memory",
        "MiB",
        (x0, x1),
        top(&[&l.remaining], 1.0),
        end_s,
        &[("remaining", &l.remaining, blue)],
        None,
    )?;
    let link = r.scenario.link.map(|s| s.rate_mib_s());
    panel(
        &panels[1],
        "rates",
        "MiB/s",
        (x0, x1),
        top(
            &[&l.transfer, &l.dirty_vmm, &l.dirty_guest],
            link.unwrap_or(1.0),
        ),
        end_s,
        &[
            ("transfer (VMM)", &l.transfer, blue),
            ("dirty (VMM estimate)", &l.dirty_vmm, orange),
            ("dirty (guest)", &l.dirty_guest, red),
        ],
        link.map(|v| ("link", v)),
    )?;
    panel(
        &panels[2],
        "throttle and guest work",
        "%",
        (x0, x1),
        top(&[&l.throttle, &l.work], 100.0),
        end_s,
        &[
            ("max vCPU throttle", &l.throttle, purple),
            ("guest work vs baseline", &l.work, green),
        ],
        None,
    )?;
    Ok(())
}

/// Draws `runs` (one column each) into an SVG at `path`.
pub fn render(path: &Path, runs: &[&RunResult]) -> Result<()> {
    let fail = report_err(path);
    if runs.is_empty() {
        return Err(fail("no run to plot".into()));
    }
    let width = 560 * runs.len() as u32;
    let root = SVGBackend::new(path, (width.max(560), 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let columns = root.split_evenly((1, runs.len()));
    for (area, r) in columns.iter().zip(runs) {
        column(area, r).map_err(&fail)?;
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_points_break_lines() {
        let data = vec![(0.0, 1.0), (1.0, 2.0), (1.5, f64::NAN), (2.0, 3.0)];
        assert_eq!(
            segments(&data),
            vec![vec![(0.0, 1.0), (1.0, 2.0)], vec![(2.0, 3.0)]]
        );
        assert!(segments(&vec![(0.0, f64::NAN)]).is_empty());
    }
}
