//! The results folder's summaries: `runs.csv` (one row per run), `report.md` (per model and task, one row per
//! method with the mean and standard deviation over seeds) and plots (loss curves, metric vs trainable
//! parameters, metric vs step time), every file written atomically.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use peft_core::atomic::write_atomic;

use super::cell::{CellResult, CellSpec, Execution};
use super::grid::Grid;
use super::leaderboard::{board, RowScores, Standing, TaskColumn, TaskScore};
use super::stats::{interval, mean_std, paired, Interval, IntervalKind, Paired};
use crate::plots::{line_chart, scatter_chart, Labels, Point, Reference, Series};
use crate::task_file::higher_is_better;
use peft_train::task::Outcomes;

/// `accuracy 0.8612, loss 0.3164`.
pub fn show_metrics(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
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

    /// The metric of every run that reports it.
    fn values(&self, name: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|(_, r)| r.metrics.get(name).copied())
            .collect()
    }

    /// Every run's dev outcomes, or none when a run lacks them.
    fn outcomes(&self) -> Vec<&Outcomes> {
        let all: Option<Vec<&Outcomes>> = self
            .runs
            .iter()
            .map(|(_, r)| r.dev_outcomes.as_ref())
            .collect();
        all.unwrap_or_default()
    }

    /// The 95% interval of the metric's mean over seeds (see `stats`).
    fn interval(&self, name: &str) -> Option<Interval> {
        interval(&self.values(name), &self.outcomes(), name)
    }

    /// Forgetting (general-text loss after training minus before): mean and deviation over seeds.
    fn forgetting(&self) -> Option<(f64, Option<f64>)> {
        let xs: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|(_, r)| r.forgetting.map(|f| f.delta()))
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
        "Every cell ran in a process of its own (how many at a time: the line above), with the same data order \
         and evaluation; \
         values are the mean over seeds {:?} (± the standard deviation where there are several). Step time is \
         the median optimiser step; tokens/s counts real tokens over the steps' time; peak RSS is the cell \
         process's maximum resident memory, model included; latency is the median forward time of a batch of \
         {} dev inputs, with the adapter over the bare model measured in the same process.\n",
        grid.seeds, grid.latency_batch
    )?;
    writeln!(md, "{}\n", STATISTICS)?;
    if let Some(f) = &grid.forgetting {
        writeln!(
            md,
            "Forgetting, as HF PEFT's method comparison measures it: the mean per-token loss on general text \
             (the evaluation split of `{}`, at most {} rows) with the trained adapter minus the frozen model's, \
             for every decoder run; positive is worse. Memory: peak RSS is the process's maximum; RSS p99 the \
             99th percentile of resident memory sampled every 50 ms during training.\n",
            f.task_path.display(),
            f.rows
        )?;
    }
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
            let compared = compare_rows(&groups, &headline);
            table(&mut md, &groups, &metrics, &compared)?;
            for line in verdicts(&groups, &headline, &compared) {
                writeln!(md, "\n{line}")?;
            }
            let stem = format!("{}-{}", super::plan::slug(model), task.name);
            writeln!(md)?;
            for (file, alt) in plots(out, &stem, &shown, &task.name, &groups, &headline)? {
                writeln!(md, "![{alt}]({file})\n")?;
            }
        }
    }
    let noted: Vec<_> = grid
        .methods
        .iter()
        .filter(|r| !r.notes.is_empty())
        .collect();
    if !noted.is_empty() {
        writeln!(md, "## Notes on rows read from HF experiment folders\n")?;
        for row in noted {
            for note in &row.notes {
                writeln!(md, "- `{}`: {}", row.name, note.replace('\n', " "))?;
            }
        }
        writeln!(md)?;
    }
    if grid.tasks.len() > 1 {
        for (model, _) in &grid.models {
            leaderboard_section(&mut md, out, grid, results, model)?;
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

/// How the report's intervals and marks are computed, for its preamble.
const STATISTICS: &str = "Each metric cell is the mean over seeds ± the standard deviation (where there are \
several) and its 95% interval in brackets: a bootstrap over seeds and dev examples (2,000 resamples, each \
drawing the seeds and the dev examples with replacement), or Student's t over the seeds where a run kept no \
per-example outcomes (marked †). \"vs zero-shot\" and \"vs best\" compare the headline metric with the \
zero-shot row and with the best row on the same dev examples: the difference of the means, and the two-sided \
p-value of a paired bootstrap (the examples drawn once for both rows); ▲ / ▼ mark a row better / worse beyond \
the 95% interval of that difference. For accuracy, McNemar's exact test on the discordant examples pooled \
over seeds is given beside it.";

/// A row's paired comparisons on the headline metric: against zero-shot and against the best row (`None`
/// for the row itself, or where either lacks per-example outcomes).
struct Compared {
    zero_shot: Option<Paired>,
    best: Option<Paired>,
    is_best: bool,
}

/// The paired comparisons of every group on `metric`.
fn compare_rows(groups: &[Group], metric: &str) -> Vec<Compared> {
    let higher = higher_is_better(metric);
    let zero = groups.iter().position(|g| g.kind == "zero-shot");
    let best = groups
        .iter()
        .enumerate()
        .filter_map(|(i, g)| g.metric(metric).map(|(m, _)| (i, m)))
        .max_by(|a, b| {
            if higher {
                a.1.total_cmp(&b.1)
            } else {
                b.1.total_cmp(&a.1)
            }
        })
        .map(|(i, _)| i);
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let against = |j: Option<usize>| {
                let j = j.filter(|&j| j != i)?;
                paired(&g.outcomes(), &groups[j].outcomes(), metric)
            };
            Compared {
                zero_shot: against(zero),
                best: against(best),
                is_best: best == Some(i),
            }
        })
        .collect()
}

/// `+0.0894 ▲ (p ≤ 0.001, McNemar ≤ 0.001)`: the difference, its mark and p-values.
fn show_paired(p: &Paired, higher: bool) -> String {
    let mark = match (p.significant(), (p.difference > 0.0) == higher) {
        (false, _) => "",
        (true, true) => " ▲",
        (true, false) => " ▼",
    };
    let mcnemar = p
        .mcnemar_p
        .map(|m| format!(", McNemar {}", show_p(m)))
        .unwrap_or_default();
    format!("{:+.4}{mark} (p {}{mcnemar})", p.difference, show_p(p.p))
}

/// A p-value to three decimals; the bootstrap's floor (2 / 2001) shows as `≤ 0.001`.
fn show_p(p: f64) -> String {
    if p <= 0.001 {
        "≤ 0.001".into()
    } else {
        format!("{p:.3}")
    }
}

fn table(
    md: &mut String,
    groups: &[Group],
    metrics: &[String],
    compared: &[Compared],
) -> Result<()> {
    let higher = higher_is_better(&metrics[0]);
    let has_zero = groups.iter().any(|g| g.kind == "zero-shot");
    let has_forgetting = groups.iter().any(|g| g.forgetting().is_some());
    write!(md, "| method | trainable parameters (% of model) |")?;
    for m in metrics {
        write!(md, " {m} |")?;
    }
    if has_zero {
        write!(md, " vs zero-shot |")?;
    }
    write!(md, " vs best |")?;
    if has_forgetting {
        write!(md, " forgetting |")?;
    }
    writeln!(
        md,
        " step time | tokens/s | peak RSS | RSS p99 | optimizer state | adapter file | latency (x bare model) |"
    )?;
    let extra = usize::from(has_zero) + 1 + usize::from(has_forgetting);
    writeln!(
        md,
        "|---|---|{}---|---|---|---|---|---|---|",
        "---|".repeat(metrics.len() + extra)
    )?;
    for (g, c) in groups.iter().zip(compared) {
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
            let spread = match g.metric(m) {
                Some((mean, Some(sd))) => format!("{mean:.4} ± {sd:.4}"),
                Some((mean, None)) => format!("{mean:.4}"),
                None => String::new(),
            };
            let range = match g.interval(m) {
                Some(i) => format!(
                    " [{:.4}, {:.4}]{}",
                    i.lo,
                    i.hi,
                    if i.kind == IntervalKind::StudentT {
                        "†"
                    } else {
                        ""
                    }
                ),
                None => String::new(),
            };
            write!(md, " {spread}{range} |")?;
        }
        let show = |p: &Option<Paired>| p.as_ref().map(|p| show_paired(p, higher));
        if has_zero {
            let text = if g.kind == "zero-shot" {
                String::new()
            } else {
                show(&c.zero_shot).unwrap_or_default()
            };
            write!(md, " {text} |")?;
        }
        let best = if c.is_best {
            "best".to_string()
        } else {
            show(&c.best).unwrap_or_default()
        };
        write!(md, " {best} |")?;
        if has_forgetting {
            let text = match g.forgetting() {
                Some((mean, Some(sd))) => format!("{mean:+.4} ± {sd:.4}"),
                Some((mean, None)) => format!("{mean:+.4}"),
                None => String::new(),
            };
            write!(md, " {text} |")?;
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
        let megabytes = |b: f64| format!("{:.0} MB", b / 1e6);
        writeln!(
            md,
            " {} | {} | {} | {} | {} | {} | {latency} |",
            opt(g.mean_of(|r| r.step_time_median_s), &|s| format!(
                "{s:.2} s"
            )),
            opt(g.mean_of(|r| r.tokens_per_s), &|t| format!("{t:.0}")),
            opt(g.mean_of(|r| Some(r.peak_rss_bytes as f64)), &megabytes),
            opt(g.mean_of(|r| r.rss_p99_bytes.map(|b| b as f64)), &megabytes),
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

/// What the table says about the headline metric, in sentences: how many trained rows beat zero-shot beyond
/// the paired interval (and by mean only), and which rows the best row cannot be told apart from.
fn verdicts(groups: &[Group], metric: &str, compared: &[Compared]) -> Vec<String> {
    let mut lines = Vec::new();
    let higher = higher_is_better(metric);
    let better = |p: &Paired| p.significant() && (p.difference > 0.0) == higher;
    if let Some(zero) = groups.iter().find(|g| g.kind == "zero-shot") {
        let zero_mean = zero.metric(metric).map(|(m, _)| m).unwrap_or(f64::NAN);
        let trained: Vec<(&Group, &Compared)> = groups
            .iter()
            .zip(compared)
            .filter(|(g, _)| g.kind != "zero-shot")
            .collect();
        let beyond: Vec<&str> = trained
            .iter()
            .filter(|(_, c)| c.zero_shot.as_ref().is_some_and(better))
            .map(|(g, _)| g.method.as_str())
            .collect();
        let above_mean = |g: &Group| {
            g.metric(metric)
                .is_some_and(|(m, _)| if higher { m > zero_mean } else { m < zero_mean })
        };
        let within: Vec<&str> = trained
            .iter()
            .filter(|(g, c)| !c.zero_shot.as_ref().is_some_and(better) && above_mean(g))
            .map(|(g, _)| g.method.as_str())
            .collect();
        let not: Vec<&str> = trained
            .iter()
            .filter(|(g, _)| !above_mean(g))
            .map(|(g, _)| g.method.as_str())
            .collect();
        let mut line = format!(
            "{} of {} trained rows beat zero-shot on {metric} ({zero_mean:.4}) beyond the paired 95% interval.",
            beyond.len(),
            trained.len()
        );
        if !within.is_empty() {
            write!(
                line,
                " Above it by the mean only (within noise, or without per-example outcomes): {}.",
                within.join(", ")
            )
            .ok();
        }
        if !not.is_empty() {
            write!(line, " Not above it: {}.", not.join(", ")).ok();
        }
        lines.push(line);
    }
    if let Some(best) = groups.iter().zip(compared).find(|(_, c)| c.is_best) {
        let ties: Vec<&str> = groups
            .iter()
            .zip(compared)
            .filter(|(_, c)| c.best.as_ref().is_some_and(|p| !p.significant()))
            .map(|(g, _)| g.method.as_str())
            .collect();
        lines.push(if ties.is_empty() {
            format!(
                "The best row on {metric}, {}, is ahead of every other row beyond the paired interval (where \
                 outcomes allow the test).",
                best.0.method
            )
        } else {
            format!(
                "The best row on {metric} is {}; within noise of it (the paired interval holds 0): {}.",
                best.0.method,
                ties.join(", ")
            )
        });
    }
    lines
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
        g.metric(metric).map(|(y, _)| Point {
            label: g.method.clone(),
            x,
            y,
            y_err: g
                .interval(metric)
                .map(|i| ((y - i.lo).max(0.0), (i.hi - y).max(0.0))),
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
                y: format!("dev {metric} (bars: 95% interval)"),
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
                y: format!("dev {metric} (bars: 95% interval)"),
            },
            &by_time,
            &references,
            false,
        )?;
        written.push((format!("{name}.svg"), format!("{metric} against step time")));
    }
    Ok(written)
}

/// The leaderboard of one model over the grid's tasks: a table and a plot of mean score against trainable
/// parameters (see `leaderboard`).
fn leaderboard_section(
    md: &mut String,
    out: &Path,
    grid: &Grid,
    results: &[(CellSpec, CellResult)],
    model: &str,
) -> Result<()> {
    let columns: Vec<TaskColumn> = grid
        .tasks
        .iter()
        .map(|t| {
            let metric = grid.metrics_for(t)[0].clone();
            TaskColumn {
                name: t.name.clone(),
                higher_is_better: higher_is_better(&metric),
                metric,
            }
        })
        .collect();
    let per_task: Vec<Vec<Group>> = grid
        .tasks
        .iter()
        .map(|t| groups_of(results, model, &t.name))
        .collect();
    let rows: Vec<RowScores> = grid
        .methods
        .iter()
        .filter_map(|row| {
            let found: Vec<Option<&Group>> = per_task
                .iter()
                .map(|groups| groups.iter().find(|g| g.method == row.name))
                .collect();
            let kind = found.iter().flatten().next()?.kind.clone();
            let trainable: Vec<f64> = found
                .iter()
                .flatten()
                .map(|g| g.first().trainable_params as f64)
                .collect();
            let scores = found
                .iter()
                .zip(&columns)
                .map(|(g, c)| {
                    let g = (*g)?;
                    Some(TaskScore {
                        mean: g.metric(&c.metric)?.0,
                        interval: g.interval(&c.metric).map(|i| (i.lo, i.hi)),
                    })
                })
                .collect();
            Some(RowScores {
                method: row.name.clone(),
                kind,
                trainable: Some(mean_std(&trainable).0),
                scores,
            })
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let standings = board(&columns, &rows);
    let shown = super::plan::slug(model);
    let score_tasks: Vec<&str> = columns
        .iter()
        .filter(|c| c.higher_is_better)
        .map(|c| c.name.as_str())
        .collect();
    writeln!(
        md,
        "## Leaderboard: {shown} across {} tasks\n",
        columns.len()
    )?;
    writeln!(
        md,
        "Rank on each task by its headline metric (1 is best; ties share their mean rank), the mean rank over the \
         tasks a row ran, and the mean score over the tasks scored higher-is-better ({}), with a 95% interval \
         that combines the tasks' intervals as independent errors.\n",
        score_tasks.join(", ")
    )?;
    write!(
        md,
        "| # | method | trainable parameters | mean rank | mean score [95% interval] |"
    )?;
    for c in &columns {
        write!(md, " {} ({}) |", c.name, c.metric)?;
    }
    writeln!(md)?;
    writeln!(md, "|---|---|---|---|---|{}", "---|".repeat(columns.len()))?;
    for (place, s) in standings.iter().enumerate() {
        let score = match (s.mean_score, s.score_interval) {
            (Some(m), Some((lo, hi))) => format!("{m:.4} [{lo:.4}, {hi:.4}]"),
            (Some(m), None) => format!("{m:.4}"),
            _ => String::new(),
        };
        write!(
            md,
            "| {} | {} | {} | {:.2} | {score} |",
            place + 1,
            s.method,
            s.trainable
                .map(|t| thousands(t.round() as usize))
                .unwrap_or_default(),
            s.mean_rank
        )?;
        let row = rows.iter().find(|r| r.method == s.method);
        for (t, rank) in s.ranks.iter().enumerate() {
            let value = row.and_then(|r| r.scores[t]).map(|x| x.mean);
            match (value, rank) {
                (Some(v), Some(k)) => write!(md, " {v:.4} ({k}) |")?,
                _ => write!(md, " |")?,
            }
        }
        writeln!(md)?;
    }
    writeln!(md)?;
    if let Some((file, alt)) = leaderboard_plot(out, &shown, &standings)? {
        writeln!(md, "![{alt}]({file})\n")?;
    }
    Ok(())
}

/// Mean score against trainable parameters, one point per trained row with its interval, zero-shot as a line.
fn leaderboard_plot(
    out: &Path,
    model: &str,
    standings: &[Standing],
) -> Result<Option<(String, String)>> {
    let points: Vec<Point> = standings
        .iter()
        .filter(|s| s.kind != "zero-shot")
        .filter_map(|s| {
            let y = s.mean_score?;
            let x = s.trainable.filter(|&t| t > 0.0)?;
            Some(Point {
                label: s.method.clone(),
                x,
                y,
                y_err: s
                    .score_interval
                    .map(|(lo, hi)| ((y - lo).max(0.0), (hi - y).max(0.0))),
            })
        })
        .collect();
    if points.is_empty() {
        return Ok(None);
    }
    let references: Vec<Reference> = standings
        .iter()
        .filter(|s| s.kind == "zero-shot")
        .filter_map(|s| {
            Some(Reference {
                label: s.method.clone(),
                y: s.mean_score?,
            })
        })
        .collect();
    let name = format!("leaderboard-{model}");
    scatter_chart(
        &out.join(&name),
        &Labels {
            title: format!("Mean score across tasks vs trainable parameters: {model}"),
            x: "trainable parameters (log scale)".into(),
            y: "mean score over tasks (bars: 95% interval)".into(),
        },
        &points,
        &references,
        true,
    )?;
    Ok(Some((
        format!("{name}.svg"),
        "mean score across tasks against trainable parameters".into(),
    )))
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
            "rss_p99_bytes",
            "step_time_median_s",
            "tokens_per_s",
            "train_seconds",
            "eval_seconds",
            "adapter_bytes",
            "latency_ms",
            "base_latency_ms",
            "steps",
            "final_loss",
            "general_loss_before",
            "general_loss_after",
            "forgetting",
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
            r.rss_p99_bytes.map(|b| b.to_string()).unwrap_or_default(),
            num(r.step_time_median_s),
            num(r.tokens_per_s),
            format!("{}", r.train_seconds),
            format!("{}", r.eval_seconds),
            r.adapter_bytes.map(|b| b.to_string()).unwrap_or_default(),
            num(r.latency_ms),
            num(r.base_latency_ms),
            r.losses.len().to_string(),
            num(r.losses.last().copied()),
            num(r.forgetting.map(|f| f.loss_before)),
            num(r.forgetting.map(|f| f.loss_after)),
            num(r.forgetting.map(|f| f.delta())),
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
    let executions: Vec<Option<Execution>> = results.iter().map(|(_, r)| r.execution).collect();
    format!(
        "Versions: peft {}{}, candle {}. Machine: {cpu}, {cores} cores, {}.{}",
        env!("CARGO_PKG_VERSION"),
        commits_of(
            &results
                .iter()
                .map(|(_, r)| (r.id.as_str(), r.commit.as_deref()))
                .collect::<Vec<_>>(),
            source_commit().as_deref()
        ),
        env!("PEFT_CANDLE_VERSION"),
        std::env::consts::OS,
        how_cells_ran(&executions)
    )
}

/// `" Cells ran with 1 thread each, 2 at a time."`, a clause per distinct way where they differ, and how
/// many cells did not record it (results written before it was recorded); empty for no cells.
fn how_cells_ran(executions: &[Option<Execution>]) -> String {
    let mut ways: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut unrecorded = 0;
    for e in executions {
        match e {
            Some(e) => *ways.entry((e.threads, e.cells_at_once)).or_default() += 1,
            None => unrecorded += 1,
        }
    }
    let way = |(threads, at_once): (usize, usize)| {
        let threads = match threads {
            1 => "1 thread each".to_string(),
            n => format!("{n} threads each"),
        };
        match at_once {
            1 => format!("{threads}, one at a time"),
            n => format!("{threads}, {n} at a time"),
        }
    };
    let cells = |n: usize| {
        if n == 1 {
            "1 cell".to_string()
        } else {
            format!("{n} cells")
        }
    };
    let recorded: Vec<String> = if ways.len() == 1 && unrecorded == 0 {
        ways.keys().map(|&k| way(k)).collect()
    } else {
        ways.iter()
            .map(|(&k, &n)| format!("{} ({})", way(k), cells(n)))
            .collect()
    };
    match (recorded.is_empty(), unrecorded) {
        (true, 0) => String::new(),
        (true, _) => " How the cells ran (threads, cells at a time) was not recorded.".into(),
        (false, 0) => format!(" Cells ran with {}.", recorded.join("; ")),
        (false, n) => format!(
            " Cells ran with {}; not recorded for {}.",
            recorded.join("; "),
            cells(n)
        ),
    }
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
    use super::{bytes, commits_of, how_cells_ran, mean_std, thousands};
    use crate::compare::cell::Execution;

    #[test]
    fn reports_say_how_the_cells_ran() {
        let ran = |threads, cells_at_once| {
            Some(Execution {
                threads,
                cells_at_once,
                started_unix_s: 0.0,
                finished_unix_s: 1.0,
            })
        };
        assert_eq!(
            how_cells_ran(&[ran(1, 2), ran(1, 2)]),
            " Cells ran with 1 thread each, 2 at a time."
        );
        assert_eq!(
            how_cells_ran(&[ran(2, 1), ran(1, 2), None]),
            " Cells ran with 1 thread each, 2 at a time (1 cell); 2 threads each, one at a time (1 cell); \
             not recorded for 1 cell."
        );
        assert_eq!(
            how_cells_ran(&[None, None]),
            " How the cells ran (threads, cells at a time) was not recorded."
        );
        assert_eq!(how_cells_ran(&[]), "");
    }

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
