//! One Redis server as the adapter drives it: a cached connection, every command bounded by
//! the command timeout, the connection dropped after any failure (the next command
//! reconnects).

use std::time::Duration;

use quorate_types::{FencingToken, Secret};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, FromRedisValue, RedisConnectionInfo,
};

use crate::RedisError;
use crate::config::ServerAddr;
use crate::info::{Replication, parse_replication};

/// Sets the fencing-token key only upwards: `KEYS[1]` becomes `ARGV[1]` unless it already holds
/// a higher token; returns the token the key holds afterwards.
const SET_TOKEN_SCRIPT: &str = "local c = tonumber(redis.call('GET', KEYS[1]) or '0') \
     local t = tonumber(ARGV[1]) \
     if t >= c then redis.call('SET', KEYS[1], ARGV[1]) return t else return c end";

/// A managed Redis server.
pub(crate) struct Server {
    pub(crate) addr: ServerAddr,
    client: redis::Client,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Server {
    pub(crate) fn new(
        addr: ServerAddr,
        password: Option<&Secret>,
        timeout: Duration,
    ) -> Result<Self, RedisError> {
        let info = ConnectionInfo {
            addr: ConnectionAddr::Tcp(addr.host.clone(), addr.port),
            redis: RedisConnectionInfo {
                password: password.map(|p| p.expose().to_owned()),
                ..RedisConnectionInfo::default()
            },
        };
        let client = redis::Client::open(info).map_err(|e| RedisError::Config {
            field: format!("servers ({addr})"),
            message: e.to_string(),
        })?;
        Ok(Server {
            addr,
            client,
            timeout,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let fut = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let conn = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(RedisError::Command {
                    server: self.addr.to_string(),
                    command: "connect".to_owned(),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(RedisError::Timeout {
                    server: self.addr.to_string(),
                    command: "connect".to_owned(),
                    timeout: self.timeout,
                });
            }
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `cmd` (named `name` in errors) within the command timeout.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        name: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisError> {
        let mut conn = self.connection().await?;
        let r = tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await;
        let err = match r {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if e.code().is_some() => {
                // The server answered with an error: the connection is fine.
                return Err(RedisError::Command {
                    server: self.addr.to_string(),
                    command: name.to_owned(),
                    reason: e.to_string(),
                });
            }
            Ok(Err(e)) => RedisError::Command {
                server: self.addr.to_string(),
                command: name.to_owned(),
                reason: e.to_string(),
            },
            Err(_) => RedisError::Timeout {
                server: self.addr.to_string(),
                command: name.to_owned(),
                timeout: self.timeout,
            },
        };
        *self.conn.lock().await = None;
        Err(err)
    }

    pub(crate) async fn ping(&self) -> Result<(), RedisError> {
        let pong: String = self.query("PING", &redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(self.protocol("PING", format!("answered {pong:?}")))
        }
    }

    fn protocol(&self, command: &str, reason: String) -> RedisError {
        RedisError::Protocol {
            server: self.addr.to_string(),
            command: command.to_owned(),
            reason,
        }
    }

    pub(crate) async fn replication(&self) -> Result<Replication, RedisError> {
        let text: String = self
            .query("INFO", redis::cmd("INFO").arg("replication"))
            .await?;
        parse_replication(&text).map_err(|e| self.protocol("INFO replication", e))
    }

    /// `REPLICAOF NO ONE`: this server becomes a master.
    pub(crate) async fn make_master(&self) -> Result<(), RedisError> {
        let _: () = self
            .query("REPLICAOF", redis::cmd("REPLICAOF").arg("NO").arg("ONE"))
            .await?;
        Ok(())
    }

    /// `REPLICAOF host port`.
    pub(crate) async fn follow(&self, primary: &ServerAddr) -> Result<(), RedisError> {
        let _: () = self
            .query(
                "REPLICAOF",
                redis::cmd("REPLICAOF").arg(&primary.host).arg(primary.port),
            )
            .await?;
        Ok(())
    }

    /// `CLIENT PAUSE <pause> WRITE`: write commands wait (and then run against whatever the
    /// server has become: a replica refuses them) until the pause ends or `CLIENT UNPAUSE`.
    pub(crate) async fn pause_writes(&self, pause: Duration) -> Result<(), RedisError> {
        let ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        let _: () = self
            .query(
                "CLIENT PAUSE",
                redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg("WRITE"),
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn unpause(&self) -> Result<(), RedisError> {
        let _: () = self
            .query("CLIENT UNPAUSE", redis::cmd("CLIENT").arg("UNPAUSE"))
            .await?;
        Ok(())
    }

    pub(crate) async fn config_set(&self, key: &str, value: &str) -> Result<(), RedisError> {
        let _: () = self
            .query(
                "CONFIG SET",
                redis::cmd("CONFIG").arg("SET").arg(key).arg(value),
            )
            .await?;
        Ok(())
    }

    /// Records `token` under `key` unless the key holds a higher one; returns what it holds.
    pub(crate) async fn record_token(
        &self,
        key: &str,
        token: FencingToken,
    ) -> Result<u64, RedisError> {
        self.query(
            "EVAL",
            redis::cmd("EVAL")
                .arg(SET_TOKEN_SCRIPT)
                .arg(1)
                .arg(key)
                .arg(token.0),
        )
        .await
    }
}
