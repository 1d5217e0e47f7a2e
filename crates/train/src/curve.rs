//! The loss curve of a run, as CSV: one row per optimizer step, appended as the run goes (a
//! resumed run appends to the same file).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::TrainError;
use crate::trainer::Step;

/// The CSV header.
pub const HEADER: &str = "step,epoch,lr,loss,eval_loss,grad_norm,tokens,seconds,tokens_per_second";

/// Appends step rows to a CSV file.
pub struct LossCurve {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl LossCurve {
    /// Opens `path` for appending, writing the header when the file is new or empty.
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        let mut curve = Self {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
        };
        if empty {
            curve.line(HEADER)?;
        }
        Ok(curve)
    }

    /// Appends one step (flushed, so the file is current if the run dies).
    pub fn push(&mut self, log: &Step) -> Result<(), TrainError> {
        let eval = log
            .held_out
            .as_ref()
            .and_then(|m| m.first())
            .map(|l| format!("{l:.6}"))
            .unwrap_or_default();
        self.line(&format!(
            "{},{:.4},{:.3e},{:.6},{},{:.4},{},{:.3},{:.1}",
            log.step,
            log.epoch,
            log.lr,
            log.loss,
            eval,
            log.grad_norm,
            log.tokens,
            log.duration.as_secs_f64(),
            log.tokens_per_second()
        ))
    }

    fn line(&mut self, text: &str) -> Result<(), TrainError> {
        writeln!(self.writer, "{text}")
            .and_then(|()| self.writer.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Where a TrueType font for the chart's text may be (DejaVu, Liberation, as distributions ship
/// them); `GUARDREASONER_FONT` names another.
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a font for the chart's text once; false when none is found (the chart is then
/// drawn without text).
fn font() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        let candidates = std::env::var("GUARDREASONER_FONT")
            .ok()
            .into_iter()
            .chain(FONTS.iter().map(|s| s.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps the font for the whole process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(
                    "sans-serif",
                    plotters::style::FontStyle::Normal,
                    bytes,
                )
                .is_ok()
                {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws `loss.csv` (as [`LossCurve`] writes it) as a PNG: the training loss per step, and the
/// held-out loss where measured. Without a font on the machine the chart has no text.
pub fn plot(csv: &Path, png: &Path, title: &str) -> Result<(), TrainError> {
    use plotters::prelude::*;
    let text = std::fs::read_to_string(csv).map_err(|e| TrainError::io(csv, e))?;
    let mut train = Vec::new();
    let mut held_out = Vec::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let parse = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        let (Some(step), Some(loss)) = (parse(0), parse(3)) else {
            return Err(TrainError::file(
                csv,
                format!("line {}: not a loss-curve row", number + 1),
            ));
        };
        train.push((step, loss));
        if let Some(eval) = parse(4) {
            held_out.push((step, eval));
        }
    }
    if train.is_empty() {
        return Err(TrainError::file(csv, "no steps to draw"));
    }
    let with_text = font();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(png, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let last = train.last().map_or(1.0, |p| p.0).max(1.0);
        let top = train
            .iter()
            .chain(&held_out)
            .map(|p| p.1)
            .fold(0f64, f64::max)
            * 1.05;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(16);
        if with_text {
            builder
                .caption(title, ("sans-serif", 22))
                .x_label_area_size(36)
                .y_label_area_size(56);
        }
        let mut chart = builder.build_cartesian_2d(0f64..last, 0f64..top.max(1e-6))?;
        let mut mesh = chart.configure_mesh();
        if with_text {
            mesh.x_desc("step").y_desc("loss");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw()?;
        let series = chart.draw_series(LineSeries::new(train.iter().copied(), &BLUE))?;
        if with_text {
            series
                .label("train")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        }
        if !held_out.is_empty() {
            let series = chart.draw_series(
                held_out
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, RED.filled())),
            )?;
            if with_text {
                series
                    .label("held out")
                    .legend(|(x, y)| Circle::new((x + 8, y), 4, RED.filled()));
            }
        }
        if with_text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| TrainError::file(png, format!("drawing the loss curve: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_is_drawn_from_the_csv_and_bad_rows_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("loss.csv");
        std::fs::write(
            &csv,
            format!("{HEADER}\n1,0.5,1e-4,2.0,,1.0,10,1.0,10\n2,1.0,1e-4,1.5,1.6,1.0,10,1.0,10\n"),
        )
        .unwrap();
        let png = dir.path().join("loss.png");
        plot(&csv, &png, "R-SFT").unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::write(&csv, format!("{HEADER}\nnot,a,row\n")).unwrap();
        let error = plot(&csv, &png, "x").unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
    }
}
