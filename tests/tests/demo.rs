//! `ferry demo` runs to completion non-interactively: its own PostgreSQL, a live sample
//! application, ferry run, verify, cutover, and a write on PostgreSQL afterwards.

use ferry_e2e::{expect_exit, ferry};

#[test]
fn demo_runs_to_completion() {
    let out = ferry()
        .args(["demo", "--seconds", "3"])
        .output()
        .unwrap_or_else(|e| panic!("ferry demo: {e}"));
    let text = expect_exit(&out, 0, "ferry demo");
    for step in [
        "1. starting a throwaway PostgreSQL",
        "3. ferry run: initial load, then streaming",
        "4. ferry verify",
        "   equal",
        "cut over: write-unavailability window",
        "6. PostgreSQL takes new writes",
        "everything cleaned up",
    ] {
        assert!(text.contains(step), "missing {step:?} in:\n{text}");
    }
}
