//! TCP connect check: passing when a connection to the address is accepted.

use quorate_health_api::{CheckFuture, CheckResult, HealthCheck};
use tokio::time::Instant;

use crate::HealthError;

/// Passing when `host:port` accepts a TCP connection; critical otherwise. Observed value: the
/// connect time in milliseconds.
#[derive(Debug, Clone)]
pub struct TcpCheck {
    addr: String,
}

impl TcpCheck {
    /// A check of `addr` (`"host:port"`, resolved on every run).
    pub fn new(addr: impl Into<String>) -> Result<TcpCheck, HealthError> {
        let addr = addr.into();
        let has_port = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !has_port {
            return Err(HealthError::InvalidCheckSetup {
                check: "tcp",
                reason: format!("address {addr:?} is not host:port (e.g. \"127.0.0.1:6379\")"),
            });
        }
        Ok(TcpCheck { addr })
    }
}

impl HealthCheck for TcpCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let start = Instant::now();
            match tokio::net::TcpStream::connect(&self.addr).await {
                Ok(_stream) => CheckResult::passing(format!("connected to {}", self.addr))
                    .with_observed(super::millis(start.elapsed())),
                Err(e) => CheckResult::critical(format!("connect to {} failed: {e}", self.addr)),
            }
        })
    }
}
