//! Tests that need what a fresh clone lacks (the zoo's real weights, `../shared/data`) find it here, and skip
//! in one way where it is absent: saying what is missing and how to get it. Under `PEFT_REQUIRE_ASSETS=1`
//! (`.ci/run` sets it, after fetching the weights) an absent asset fails the test instead, so that CI never
//! passes a test that did not run.
//!
//! ```
//! // A folder that is not there: skipped (or, under PEFT_REQUIRE_ASSETS=1, a failure naming it).
//! if std::env::var_os(peft_testing::REQUIRE_ASSETS).is_none() {
//!     assert!(peft_testing::shared_data("no-such-dataset").is_none());
//! }
//! ```

use std::path::PathBuf;

use candle_core::Device;
use peft_models::LoadedModel;

/// The variable under which an absent asset fails its test instead of skipping it.
pub const REQUIRE_ASSETS: &str = "PEFT_REQUIRE_ASSETS";

/// Reports an absent asset: panics under [`REQUIRE_ASSETS`], otherwise prints why the test skips.
pub fn absent(what: &str, how_to_get_it: &str) {
    let required = std::env::var(REQUIRE_ASSETS).is_ok_and(|v| !v.is_empty() && v != "0");
    if required {
        panic!("{what} is absent and {REQUIRE_ASSETS} is set, so this test may not skip: {how_to_get_it}");
    }
    eprintln!("skipping: {what} is absent; {how_to_get_it}");
}

/// A path under the shared datasets folder (`../shared/data` beside the repository; see its SOURCES.md), or
/// `None` after [`absent`] where it does not exist.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let path = crate::root().join("../shared/data").join(rel);
    if path.exists() {
        Some(path)
    } else {
        absent(
            &format!("the shared dataset {}", path.display()),
            "it is the development copy of the datasets beside the repository (shared/data)",
        );
        None
    }
}

/// The path of a zoo model's file in the cache (`smollm2-135m`, `minilm-l6`; `env` overrides it), or `None`
/// after [`absent`].
pub fn zoo_model_path(name: &str, env: &str) -> Option<PathBuf> {
    match peft_models::zoo::local_path(name, env) {
        Some(p) if p.exists() => Some(p),
        _ => {
            absent(
                &format!("the zoo model {name}"),
                &format!(
                    "run `peft fetch {name}` (cache: {}), or set {env}",
                    peft_models::zoo::peft_home().display()
                ),
            );
            None
        }
    }
}

/// The SmolLM2 GGUF, from `PEFT_SMOLLM2_GGUF` or the zoo cache; `None` (after [`absent`]) when it is not
/// there: `let Some(loaded) = smollm2() else { return };`.
pub fn smollm2() -> Option<LoadedModel> {
    let path = zoo_model_path("smollm2-135m", "PEFT_SMOLLM2_GGUF")?;
    Some(peft_models::gguf::load_gguf(&path, &Device::Cpu).unwrap())
}

/// The cached all-MiniLM-L6-v2, or `None` (after [`absent`]).
pub fn minilm() -> Option<LoadedModel> {
    if peft_models::zoo::cached_path("minilm-l6").is_none() {
        absent(
            "the zoo model minilm-l6",
            &format!(
                "run `peft fetch minilm-l6` (cache: {})",
                peft_models::zoo::peft_home().display()
            ),
        );
        return None;
    }
    Some(peft_models::resolve::load_model("minilm-l6", &Device::Cpu).unwrap())
}
