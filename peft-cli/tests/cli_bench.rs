//! `peft bench` on the tiny GPT-2 fixture: a JSON report of the timed steps, and the process configuration it
//! ran under (candle's element-wise workers park at once unless the environment says otherwise).

mod common;

use std::process::Command;

use common::fixture;

/// `peft bench --json` on the tiny GPT-2 with `env` set, parsed.
fn bench(env: &[(&str, &str)]) -> serde_json::Value {
    let model = fixture("tiny-gpt2");
    let mut command = Command::new(env!("CARGO_BIN_EXE_peft"));
    command.args([
        "bench", "--model", &model, "--method", "lora", "--batch", "2", "--seq", "8", "--steps",
        "2", "--json",
    ]);
    command.env_remove(peft_cli::CANDLE_SPIN_ENV);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_reports_its_steps_and_parks_candles_element_wise_workers_unless_told() {
    let report = bench(&[]);
    assert_eq!(report["element_wise_spin_limit"], "1", "{report}");
    let steps = report["step_s"].as_array().unwrap();
    assert!(!steps.is_empty() && steps.iter().all(|s| s.as_f64().unwrap() > 0.0));
    let told = bench(&[(peft_cli::CANDLE_SPIN_ENV, "300")]);
    assert_eq!(told["element_wise_spin_limit"], "300", "{told}");
}
