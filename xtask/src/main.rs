//! `cargo xtask`: the workspace's build-and-test driver.
fn main() {}
