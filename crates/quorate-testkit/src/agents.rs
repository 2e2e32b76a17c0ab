//! `quorate agent` configs for tests and benchmarks, built from the agent's own serde types
//! ([`quorate::config::AgentConfig`] through [`LoopbackPlan`]) and written with
//! [`to_toml`]: never assembled with `format!`, so a renamed or new config key cannot drift
//! from what the agent parses.

use std::path::{Path, PathBuf};

pub use quorate::config::AgentConfig;
pub use quorate::demo::{LoopbackPlan, to_toml};

use crate::TestkitError;

/// Writes node `i`'s config of `plan` (after `customize`) to `<dir>/<name>.toml` with its data
/// dir at `<dir>/<name>`; returns the config file's path.
pub fn write_config(
    plan: &LoopbackPlan,
    i: usize,
    dir: &Path,
    customize: impl FnOnce(&mut AgentConfig),
) -> Result<PathBuf, TestkitError> {
    let name = &plan.names[i];
    let mut config = plan.agent(i, &dir.join(name));
    customize(&mut config);
    let text = to_toml(&config).map_err(|e| TestkitError::io("writing an agent config", &e))?;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text)
        .map_err(|e| TestkitError::io(format!("writing {}", path.display()), &e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_configs_pass_the_agents_own_validation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = LoopbackPlan::new("testkit", 3, dir.path()).expect("plan");
        for i in 0..3 {
            let path = write_config(&plan, i, dir.path(), |c| {
                c.gossip.tags.insert("failover-priority".into(), "7".into());
            })
            .expect("write");
            let v = quorate::config::load(&path).expect("valid");
            assert_eq!(v.node_id.to_string(), plan.names[i]);
            assert_eq!(v.voters.len(), 3);
        }
    }
}
