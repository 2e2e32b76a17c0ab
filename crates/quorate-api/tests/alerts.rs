//! The shipped alert rules (`docs/alerts.yml`): `promtool check rules` accepts them and
//! `promtool test rules` runs their unit tests (`docs/alerts.test.yml`, one or more cases per
//! alert, firing and not firing). promtool comes from Debian's `prometheus` package (`cargo
//! xtask setup`); without it the test fails under CI and says so otherwise.
#![allow(clippy::unwrap_used, clippy::print_stderr, reason = "test")]

use std::path::PathBuf;
use std::process::Command;

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool")
        .current_dir(docs())
        .args(args)
        .output()
    {
        Ok(o) => Some(o),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is missing ({e}): install Debian's prometheus package (cargo xtask setup)"
            );
            eprintln!("promtool is missing ({e}): the alert rules were not checked");
            None
        }
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(check) = promtool(&["check", "rules", "alerts.yml"]) else {
        return;
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains("10 rules found"), "{}", text(&check));
    let test = promtool(&["test", "rules", "alerts.test.yml"]).unwrap();
    assert!(test.status.success(), "{}", text(&test));
    // Every alert has a unit test.
    let rules = std::fs::read_to_string(docs().join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(docs().join("alerts.test.yml")).unwrap();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "alert {name} has no unit test in docs/alerts.test.yml"
            );
        }
    }
}
