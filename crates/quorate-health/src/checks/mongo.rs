//! MongoDB `ping` check (feature `mongodb`, the official driver).

use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use quorate_health_api::{CheckFuture, CheckResult, HealthCheck};
use tokio::time::Instant;

use crate::HealthError;

/// Runs `{ ping: 1 }` against the `admin` database: passing on success, critical on any error
/// (including no reachable server within the client's server selection timeout, which should be
/// below the monitor's timeout so the message names the cause). Observed value: milliseconds.
#[derive(Debug, Clone)]
pub struct MongoCheck {
    client: mongodb::Client,
    target: String,
}

impl MongoCheck {
    /// A check of the deployment at `uri` (`mongodb://host:port/...` or `mongodb+srv://...`).
    /// `server_selection_timeout` bounds how long a run waits for a reachable server.
    pub async fn connect(
        uri: &str,
        server_selection_timeout: std::time::Duration,
    ) -> Result<MongoCheck, HealthError> {
        let mut options =
            ClientOptions::parse(uri)
                .await
                .map_err(|e| HealthError::InvalidCheckSetup {
                    check: "mongodb",
                    reason: format!("cannot parse the connection uri: {e}"),
                })?;
        options.server_selection_timeout = Some(server_selection_timeout);
        options.connect_timeout = Some(server_selection_timeout);
        MongoCheck::from_options(options)
    }

    /// A check with fully custom client options.
    pub fn from_options(options: ClientOptions) -> Result<MongoCheck, HealthError> {
        let target = options
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let client =
            mongodb::Client::with_options(options).map_err(|e| HealthError::InvalidCheckSetup {
                check: "mongodb",
                reason: format!("cannot build a client: {e}"),
            })?;
        Ok(MongoCheck { client, target })
    }
}

impl HealthCheck for MongoCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let start = Instant::now();
            match self
                .client
                .database("admin")
                .run_command(doc! { "ping": 1 })
                .await
            {
                Ok(_) => CheckResult::passing(format!("mongodb {}: ping ok", self.target))
                    .with_observed(super::millis(start.elapsed())),
                Err(e) => {
                    CheckResult::critical(format!("mongodb {}: ping failed: {e}", self.target))
                }
            }
        })
    }
}
