//! The results folder's summaries: `runs.csv` (one row per run), `report.md` (per model and task, one row per
//! method with the mean and standard deviation over seeds) and plots (loss curves, metric vs trainable
//! parameters, metric vs step time), every file written atomically.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use peft_core::atomic::write_atomic;

use super::cell::{CellResult, CellSpec};
use super::grid::Grid;
use crate::plots::{line_chart, scatter_chart, Labels, Point, Reference, Series};
use crate::task_file::higher_is_better;

/// `accuracy 0.8612, loss 0.3164`.
pub fn show_metrics(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Mean and (sample) standard deviation; the deviation is `None` for one value.
pub fn mean_std(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n.max(1.0);
    if xs.len() < 2 {
        return (mean, None);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some(var.sqrt()))
}

/// The runs of one method on one model and task, over seeds.
struct Group<'a> {
    method: String,
    kind: String,
    runs: Vec<(&'a CellSpec, &'a CellResult)>,
}

impl Group<'_> {
    fn metric(&self, name: &str) -> Option<(f64, Option<f64>)> {
        let xs: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|(_, r)| r.metrics.get(name).copied())
            .collect();
        (!xs.is_empty()).then(|| mean_std(&xs))
    }

    fn mean_of(&self, f: impl Fn(&CellResult) -> Option<f64>) -> Option<f64> {
        let xs: Vec<f64> = self.runs.iter().filter_map(|(_, r)| f(r)).collect();
        (!xs.is_empty()).then(|| mean_std(&xs).0)
    }

    fn first(&self) -> &CellResult {
        self.runs[0].1
    }

    /// Mean training loss per step over seeds, as a trailing mean over `window` steps (a small batch's loss
    /// jumps from step to step; the mean shows the trend).
    fn loss_curve(&self, window: usize) -> Vec<(f64, f64)> {
        let len = self
            .runs
            .iter()
            .map(|(_, r)| r.losses.len())
            .min()
            .unwrap_or(0);
        let per_step: Vec<f64> = (0..len)
            .map(|i| {
                let xs: Vec<f64> = self.runs.iter().map(|(_, r)| r.losses[i]).collect();
                mean_std(&xs).0
            })
            .collect();
        (0..len)
            .map(|i| {
                let from = (i + 1).saturating_sub(window.max(1));
                ((i + 1) as f64, mean_std(&per_step[from..=i]).0)
            })
            .collect()
    }
}

/// Writes `runs.csv`, `report.md` and the plots into the grid's output folder; returns the report's path.
pub fn write_all(
    grid: &Grid,
    results: &[(CellSpec, CellResult)],
    failed: &[(String, String)],
    command: &str,
) -> Result<PathBuf> {
    let out = &grid.output_dir;
    write_atomic(&out.join("runs.csv"), runs_csv(results)?.as_bytes())?;
    let mut md = String::new();
    writeln!(md, "# {}\n", grid.title)?;
    writeln!(
        md,
        "Produced by `{command}` (grid `{}`, copied as `grid.toml`).\n",
        grid.path.display()
    )?;
    writeln!(md, "{}\n", provenance(results))?;
    writeln!(
        md,
        "Every cell ran in a process of its own, one after another, with the same data order and evaluation; \
         values are the mean over seeds {:?} (± the standard deviation where there are several). Step time is \
         the median optimiser step; tokens/s counts real tokens over the steps' time; peak RSS is the cell \
         process's maximum resident memory, model included; latency is the median forward time of a batch of \
         {} dev inputs, with the adapter over the bare model measured in the same process.\n",
        grid.seeds, grid.latency_batch
    )?;
    for (model, _) in &grid.models {
        for task in &grid.tasks {
            let groups = groups_of(results, model, &task.name);
            if groups.is_empty() {
                continue;
            }
            let metrics = grid.metrics_for(task);
            let headline = metrics[0].clone();
            let shown = super::plan::slug(model);
            writeln!(md, "## {shown} on {}\n", task.name)?;
            table(&mut md, &groups, &metrics)?;
            if let Some(line) = beats_zero_shot(&groups, &headline) {
                writeln!(md, "\n{line}")?;
            }
            let stem = format!("{}-{}", super::plan::slug(model), task.name);
            writeln!(md)?;
            for (file, alt) in plots(out, &stem, &shown, &task.name, &groups, &headline)? {
                writeln!(md, "![{alt}]({file})\n")?;
            }
        }
    }
    if !failed.is_empty() {
        writeln!(md, "## Failed cells (not in the tables)\n")?;
        for (id, e) in failed {
            writeln!(md, "- `{id}`: {}", e.replace('\n', " "))?;
        }
    }
    let path = out.join("report.md");
    write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

fn groups_of<'a>(results: &'a [(CellSpec, CellResult)], model: &str, task: &str) -> Vec<Group<'a>> {
    let mut groups: Vec<Group> = Vec::new();
    for (spec, result) in results {
        if spec.model != model || spec.task != task {
            continue;
        }
        match groups.iter_mut().find(|g| g.method == spec.method) {
            Some(g) => g.runs.push((spec, result)),
            None => groups.push(Group {
                method: spec.method.clone(),
                kind: spec.kind.clone(),
                runs: vec![(spec, result)],
            }),
        }
    }
    groups
}

fn table(md: &mut String, groups: &[Group], metrics: &[String]) -> Result<()> {
    write!(md, "| method | trainable parameters (% of model) |")?;
    for m in metrics {
        write!(md, " {m} |")?;
    }
    writeln!(
        md,
        " step time | tokens/s | peak RSS | optimizer state | adapter file | latency (x bare model) |"
    )?;
    writeln!(
        md,
        "|---|---|{}---|---|---|---|---|---|",
        "---|".repeat(metrics.len())
    )?;
    for g in groups {
        let r = g.first();
        let pct = 100.0 * r.trainable_params as f64 / r.total_params.max(1) as f64;
        let sized = g.runs[0]
            .0
            .sized
            .as_ref()
            .map(|(k, v)| format!(" ({k} = {v})"))
            .unwrap_or_default();
        write!(
            md,
            "| {}{sized} | {} ({pct:.3}%) |",
            g.method,
            thousands(r.trainable_params)
        )?;
        for m in metrics {
            match g.metric(m) {
                Some((mean, Some(sd))) => write!(md, " {mean:.4} ± {sd:.4} |")?,
                Some((mean, None)) => write!(md, " {mean:.4} |")?,
                None => write!(md, " |")?,
            }
        }
        let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map(f).unwrap_or_default();
        let latency = match (
            g.mean_of(|r| r.latency_ms),
            g.mean_of(|r| r.base_latency_ms),
        ) {
            (Some(l), Some(b)) if g.kind != "zero-shot" => {
                format!("{l:.0} ms ({:.2}x)", l / b.max(1e-9))
            }
            (Some(l), _) => format!("{l:.0} ms"),
            _ => String::new(),
        };
        writeln!(
            md,
            " {} | {} | {} | {} | {} | {latency} |",
            opt(g.mean_of(|r| r.step_time_median_s), &|s| format!(
                "{s:.2} s"
            )),
            opt(g.mean_of(|r| r.tokens_per_s), &|t| format!("{t:.0}")),
            opt(g.mean_of(|r| Some(r.peak_rss_bytes as f64)), &|b| format!(
                "{:.0} MB",
                b / 1e6
            )),
            if g.kind == "zero-shot" {
                String::new()
            } else {
                bytes(g.first().optimizer_state_bytes as f64)
            },
            opt(
                g.mean_of(|r| r.adapter_bytes.map(|b| b as f64)),
                &|b| bytes(b)
            ),
        )?;
    }
    Ok(())
}

/// `How many trained methods beat zero-shot` on the headline metric, where the grid has a zero-shot row.
fn beats_zero_shot(groups: &[Group], metric: &str) -> Option<String> {
    let zero = groups
        .iter()
        .find(|g| g.kind == "zero-shot")?
        .metric(metric)?
        .0;
    let higher = higher_is_better(metric);
    let trained: Vec<&Group> = groups.iter().filter(|g| g.kind != "zero-shot").collect();
    let losers: Vec<&str> = trained
        .iter()
        .filter(|g| {
            g.metric(metric)
                .is_none_or(|(m, _)| if higher { m <= zero } else { m >= zero })
        })
        .map(|g| g.method.as_str())
        .collect();
    Some(if losers.is_empty() {
        format!(
            "Every trained row beats zero-shot on {metric} ({zero:.4}): {} of {}.",
            trained.len(),
            trained.len()
        )
    } else {
        format!(
            "{} of {} trained rows beat zero-shot on {metric} ({zero:.4}); not: {}.",
            trained.len() - losers.len(),
            trained.len(),
            losers.join(", ")
        )
    })
}

/// The three plots of one model and task; returns (file name, alt text) of each SVG.
fn plots(
    out: &Path,
    stem: &str,
    model: &str,
    task: &str,
    groups: &[Group],
    metric: &str,
) -> Result<Vec<(String, String)>> {
    let mut written = Vec::new();
    let steps = groups
        .iter()
        .flat_map(|g| g.runs.iter().map(|(_, r)| r.losses.len()))
        .max()
        .unwrap_or(0);
    let window = (steps / 10).max(1);
    let series: Vec<Series> = groups
        .iter()
        .map(|g| Series {
            label: g.method.clone(),
            points: g.loss_curve(window),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if !series.is_empty() {
        let name = format!("loss-{stem}");
        line_chart(
            &out.join(&name),
            &Labels {
                title: format!("Training loss: {model} on {task}"),
                x: "optimiser step".into(),
                y: if window > 1 {
                    format!("training loss (mean of the last {window} steps)")
                } else {
                    "training loss".into()
                },
            },
            &series,
            false,
        )?;
        written.push((
            format!("{name}.svg"),
            "training loss per method".to_string(),
        ));
    }
    let references: Vec<Reference> = groups
        .iter()
        .filter(|g| g.kind == "zero-shot")
        .filter_map(|g| {
            g.metric(metric).map(|(y, _)| Reference {
                label: g.method.clone(),
                y,
            })
        })
        .collect();
    let trained: Vec<&Group> = groups.iter().filter(|g| g.kind != "zero-shot").collect();
    let point = |g: &Group, x: f64| -> Option<Point> {
        g.metric(metric).map(|(y, sd)| Point {
            label: g.method.clone(),
            x,
            y,
            y_err: sd,
        })
    };
    let by_params: Vec<Point> = trained
        .iter()
        .filter_map(|g| point(g, g.first().trainable_params as f64))
        .filter(|p| p.x > 0.0)
        .collect();
    if !by_params.is_empty() {
        let name = format!("{metric}-vs-params-{stem}");
        scatter_chart(
            &out.join(&name),
            &Labels {
                title: format!("{metric} vs trainable parameters: {model} on {task}"),
                x: "trainable parameters (log scale)".into(),
                y: format!("dev {metric}"),
            },
            &by_params,
            &references,
            true,
        )?;
        written.push((
            format!("{name}.svg"),
            format!("{metric} against trainable parameters"),
        ));
    }
    let by_time: Vec<Point> = trained
        .iter()
        .filter_map(|g| point(g, g.mean_of(|r| r.step_time_median_s)?))
        .collect();
    if !by_time.is_empty() {
        let name = format!("{metric}-vs-step-time-{stem}");
        scatter_chart(
            &out.join(&name),
            &Labels {
                title: format!("{metric} vs step time: {model} on {task}"),
                x: "median step time (s)".into(),
                y: format!("dev {metric}"),
            },
            &by_time,
            &references,
            false,
        )?;
        written.push((format!("{name}.svg"), format!("{metric} against step time")));
    }
    Ok(written)
}

/// Every run as one CSV row.
fn runs_csv(results: &[(CellSpec, CellResult)]) -> Result<String> {
    let metric_names: std::collections::BTreeSet<&String> =
        results.iter().flat_map(|(_, r)| r.metrics.keys()).collect();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = ["id", "model", "task", "method", "kind", "seed", "size_knob"]
        .map(String::from)
        .to_vec();
    header.extend(metric_names.iter().map(|m| m.to_string()));
    header.extend(
        [
            "trainable_params",
            "total_params",
            "optimizer_state_bytes",
            "peak_rss_bytes",
            "step_time_median_s",
            "tokens_per_s",
            "train_seconds",
            "eval_seconds",
            "adapter_bytes",
            "latency_ms",
            "base_latency_ms",
            "steps",
            "final_loss",
        ]
        .map(String::from),
    );
    w.write_record(&header)?;
    let num = |x: Option<f64>| x.map(|v| format!("{v}")).unwrap_or_default();
    for (s, r) in results {
        let mut row = vec![
            s.id.clone(),
            s.model.clone(),
            s.task.clone(),
            s.method.clone(),
            s.kind.clone(),
            s.training.seed.to_string(),
            s.sized
                .as_ref()
                .map(|(k, v)| format!("{k}={v}"))
                .unwrap_or_default(),
        ];
        row.extend(metric_names.iter().map(|m| num(r.metrics.get(*m).copied())));
        row.extend([
            r.trainable_params.to_string(),
            r.total_params.to_string(),
            r.optimizer_state_bytes.to_string(),
            r.peak_rss_bytes.to_string(),
            num(r.step_time_median_s),
            num(r.tokens_per_s),
            format!("{}", r.train_seconds),
            format!("{}", r.eval_seconds),
            r.adapter_bytes.map(|b| b.to_string()).unwrap_or_default(),
            num(r.latency_ms),
            num(r.base_latency_ms),
            r.losses.len().to_string(),
            num(r.losses.last().copied()),
        ]);
        w.write_record(&row)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

/// `1,234,567`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `45.1 KB`, `1.6 GB`.
fn bytes(b: f64) -> String {
    match b {
        b if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b => format!("{:.1} KB", b / 1e3),
    }
}

/// The short hash of the commit checked out in the working directory, where git can tell, with `+changes`
/// where tracked files outside `results/` differ from it (a cell run on uncommitted work does not claim the
/// commit's code; a grid's own results, rewritten as it runs, do not count).
pub fn source_commit() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"])?;
    let changed = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":(exclude)results",
    ])
    .is_some_and(|s| !s.is_empty());
    Some(if changed {
        format!("{head}+changes")
    } else {
        head
    })
}

/// The versions and machine that produced a report, and the commits its cells ran at.
fn provenance(results: &[(CellSpec, CellResult)]) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "Versions: peft {}{}, candle {}. Machine: {cpu}, {cores} cores, {}.",
        env!("CARGO_PKG_VERSION"),
        commits_of(
            &results
                .iter()
                .map(|(_, r)| (r.id.as_str(), r.commit.as_deref()))
                .collect::<Vec<_>>(),
            source_commit().as_deref()
        ),
        env!("PEFT_CANDLE_VERSION"),
        std::env::consts::OS
    )
}

/// `" (commit X)"` when every cell (id, commit) ran at `now`, the commit the report is written at; else which
/// cells ran at which commit: reused cells may come from an earlier one.
fn commits_of(cells: &[(&str, Option<&str>)], now: Option<&str>) -> String {
    let mut by_commit: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for &(id, commit) in cells {
        by_commit
            .entry(commit.unwrap_or("unrecorded"))
            .or_default()
            .push(id);
    }
    let all_now =
        by_commit.is_empty() || (by_commit.len() == 1 && by_commit.contains_key(now.unwrap_or("")));
    if all_now {
        return now.map(|c| format!(" (commit {c})")).unwrap_or_default();
    }
    let parts: Vec<String> = by_commit
        .iter()
        .map(|(commit, ids)| {
            if ids.len() == cells.len() {
                format!("commit {commit}: every cell")
            } else if ids.len() * 2 > cells.len() {
                format!("commit {commit}: the other {} cells", ids.len())
            } else {
                format!("commit {commit}: {}", ids.join(", "))
            }
        })
        .collect();
    let written = now
        .map(|c| format!("; report written at commit {c}"))
        .unwrap_or_default();
    format!(" (cells from {}{written})", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::{bytes, commits_of, mean_std, thousands};

    #[test]
    fn reports_name_the_commit_of_each_cell() {
        let all = [("a", Some("abc1234")), ("b", Some("abc1234"))];
        assert_eq!(commits_of(&all, Some("abc1234")), " (commit abc1234)");
        assert_eq!(commits_of(&[], Some("abc1234")), " (commit abc1234)");
        let mixed = [
            ("a", Some("old0001")),
            ("b", Some("old0001")),
            ("c", Some("old0001")),
            ("loha", Some("new0002")),
        ];
        assert_eq!(
            commits_of(&mixed, Some("new0002")),
            " (cells from commit new0002: loha; commit old0001: the other 3 cells; report written at commit \
             new0002)"
        );
        // Cells from before results recorded their commit.
        assert_eq!(
            commits_of(&[("a", None)], Some("new0002")),
            " (cells from commit unrecorded: every cell; report written at commit new0002)"
        );
    }

    #[test]
    fn summaries_format_as_tables_need() {
        assert_eq!(mean_std(&[1.0, 3.0]), (2.0, Some(2f64.sqrt())));
        assert_eq!(mean_std(&[0.5]), (0.5, None));
        assert_eq!(thousands(134_515_008), "134,515,008");
        assert_eq!(thousands(999), "999");
        assert_eq!(bytes(46_180.0), "46.2 KB");
        assert_eq!(bytes(1.6e9), "1.60 GB");
    }
}
