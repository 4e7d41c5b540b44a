//! The one skip helper: an absent asset skips its test, except under `PEFT_REQUIRE_ASSETS`, where it fails
//! the test, naming what is missing. (Its own test binary: it sets the variable, which no other test reads
//! concurrently here.)

use peft_testing::{shared_data, REQUIRE_ASSETS};

#[test]
fn absent_assets_skip_unless_required_and_then_fail_naming_them() {
    std::env::set_var(REQUIRE_ASSETS, "0");
    assert!(shared_data("no-such-dataset").is_none());

    std::env::set_var(REQUIRE_ASSETS, "1");
    let panic = std::panic::catch_unwind(|| shared_data("no-such-dataset"))
        .expect_err("an absent asset must fail the test when it is required");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("no-such-dataset") && message.contains(REQUIRE_ASSETS),
        "{message}"
    );
}
