//! Helpers shared by the tests that drive `quorate agent` processes with an HTTP API
//! (`browser.rs`, `ctl.rs`, `haproxy.rs`).
#![allow(
    clippy::unwrap_used,
    dead_code,
    reason = "test support; not every test uses each"
)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Starts `quorate agent --config config`, quiet, killed when dropped.
pub(crate) fn spawn_agent(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_quorate"))
        .arg("agent")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Polls `f` every 20 ms until it gives a value; fails the test after 60 s naming `what`.
pub(crate) async fn until<T, F: AsyncFnMut() -> Option<T>>(what: &str, mut f: F) -> T {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(t) = f().await {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within 60 s"))
}
