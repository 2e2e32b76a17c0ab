//! PostgreSQL `SELECT 1` check (`tokio-postgres`, no TLS).

use std::str::FromStr;

use quorate_health_api::{CheckFuture, CheckResult, HealthCheck};
use tokio::time::Instant;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::HealthError;

/// Connects and runs `SELECT 1`: passing when it returns `1`, critical on any error. The
/// connection task is driven inside the check's own future (no detached task). Observed value:
/// connect + query time in milliseconds.
#[derive(Debug, Clone)]
pub struct PostgresCheck {
    config: tokio_postgres::Config,
    target: String,
}

impl PostgresCheck {
    /// A check of `conn` (`"host=127.0.0.1 port=5432 user=app dbname=app"` or
    /// `postgresql://user@host:port/db`).
    pub fn new(conn: &str) -> Result<PostgresCheck, HealthError> {
        let config =
            tokio_postgres::Config::from_str(conn).map_err(|e| HealthError::InvalidCheckSetup {
                check: "postgres",
                reason: format!("cannot parse the connection string: {e}"),
            })?;
        if config.get_hosts().is_empty() {
            return Err(HealthError::InvalidCheckSetup {
                check: "postgres",
                reason: "the connection string names no host (add host=...)".to_owned(),
            });
        }
        let target = describe(&config);
        Ok(PostgresCheck { config, target })
    }
}

fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            match config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
            {
                Some(port) => format!("{host}:{port}"),
                None => format!("{host}:5432"),
            }
        })
        .collect();
    let db = config.get_dbname().unwrap_or("");
    format!("{}/{db}", hosts.join(","))
}

impl HealthCheck for PostgresCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let start = Instant::now();
            let (client, connection) = match self.config.connect(NoTls).await {
                Ok(pair) => pair,
                Err(e) => {
                    return CheckResult::critical(format!(
                        "postgres {}: connect failed: {e}",
                        self.target
                    ));
                }
            };
            let query = async move { client.simple_query("SELECT 1").await };
            tokio::pin!(connection);
            tokio::pin!(query);
            let rows = tokio::select! {
                rows = &mut query => rows,
                closed = &mut connection => {
                    let why = match closed {
                        Ok(()) => "closed by the server".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    return CheckResult::critical(format!("postgres {}: connection lost: {why}", self.target));
                }
            };
            match rows {
                Ok(messages) => {
                    let one = messages.iter().any(|m| match m {
                        SimpleQueryMessage::Row(row) => row.get(0) == Some("1"),
                        _ => false,
                    });
                    if one {
                        CheckResult::passing(format!("postgres {}: SELECT 1 ok", self.target))
                            .with_observed(super::millis(start.elapsed()))
                    } else {
                        CheckResult::critical(format!(
                            "postgres {}: SELECT 1 returned no 1",
                            self.target
                        ))
                    }
                }
                Err(e) => {
                    CheckResult::critical(format!("postgres {}: SELECT 1 failed: {e}", self.target))
                }
            }
        })
    }
}
