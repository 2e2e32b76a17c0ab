//! Redis `PING` check (the `redis` crate, tokio).

use quorate_health_api::{CheckFuture, CheckResult, HealthCheck};
use tokio::time::Instant;

use crate::HealthError;

/// Opens a connection and sends `PING`: passing on `PONG`, critical on any error. A fresh
/// connection per run also proves the server still accepts clients. Observed value: the round
/// trip in milliseconds (connect + PING).
#[derive(Debug, Clone)]
pub struct RedisCheck {
    client: redis::Client,
    target: String,
}

impl RedisCheck {
    /// A check of `url` (`redis://[:password@]host:port[/db]`, `rediss://` needs a TLS feature
    /// of the `redis` crate, `redis+unix:///path`).
    pub fn new(url: &str) -> Result<RedisCheck, HealthError> {
        let client = redis::Client::open(url).map_err(|e| HealthError::InvalidCheckSetup {
            check: "redis",
            reason: format!("cannot parse the connection url: {e}"),
        })?;
        let target = client.get_connection_info().addr.to_string();
        Ok(RedisCheck { client, target })
    }
}

impl HealthCheck for RedisCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let start = Instant::now();
            let mut conn = match self.client.get_multiplexed_async_connection().await {
                Ok(conn) => conn,
                Err(e) => {
                    return CheckResult::critical(format!(
                        "redis {}: connect failed: {e}",
                        self.target
                    ));
                }
            };
            match redis::cmd("PING").query_async::<String>(&mut conn).await {
                Ok(reply) if reply == "PONG" => {
                    CheckResult::passing(format!("redis {}: PONG", self.target))
                        .with_observed(super::millis(start.elapsed()))
                }
                Ok(reply) => CheckResult::critical(format!(
                    "redis {}: PING answered {reply:?}, expected \"PONG\"",
                    self.target
                )),
                Err(e) => CheckResult::critical(format!("redis {}: PING failed: {e}", self.target)),
            }
        })
    }
}
