//! The HTTP client of the API (`quorate ctl` uses it): hyper's HTTP/1.1 client, one
//! connection per call, every call bounded by a timeout, every answer read back through the
//! serde types of [`crate::model`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use quorate_startup::admin::HistoryEntry;
use quorate_types::Secret;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ApiError;
use crate::model::{
    AdminReply, ClusterBody, ErrorBody, MaintenanceBody, MoveBody, PostponeBody, RoleBody,
};

/// The largest answer read, in bytes.
pub const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A raw answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// A client of one node's API.
#[derive(Clone, Debug)]
pub struct Client {
    addr: String,
    token: Option<Secret>,
    timeout: Duration,
}

impl Client {
    /// A client of the API at `addr` (`host:port`, or `http://host:port`), sending `token`
    /// as the bearer token when given; each call times out after 30 s (see
    /// [`Client::with_timeout`]: a switchover waits up to 10 s for its confirmation).
    pub fn new(addr: &str, token: Option<Secret>) -> Client {
        let addr = addr
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        Client {
            addr,
            token,
            timeout: Duration::from_secs(30),
        }
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The address it talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// One call: `method path` with `body` (JSON) and `headers`; any status is returned.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, ApiError> {
        let url = self.url(path);
        let connect = |reason: String| ApiError::Connect {
            url: url.clone(),
            reason,
        };
        let call = async {
            let stream = tokio::net::TcpStream::connect(&self.addr)
                .await
                .map_err(|e| connect(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| connect(e.to_string()))?;
            let driver = tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, self.addr.as_str());
            if let Some(t) = &self.token {
                req = req.header(AUTHORIZATION, format!("Bearer {}", t.expose()));
            }
            if body.is_some() {
                req = req.header(CONTENT_TYPE, "application/json");
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| ApiError::Protocol {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| connect(e.to_string()))?;
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            let body = Limited::new(res.into_body(), RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| ApiError::Protocol {
                    url: url.clone(),
                    reason: format!("reading the body: {e}"),
                })?
                .to_bytes();
            driver.abort();
            Ok(Answer {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| connect(format!("no answer within {:?}", self.timeout)))?
    }

    fn decode<T: DeserializeOwned>(&self, path: &str, a: &Answer) -> Result<T, ApiError> {
        if !(200..300).contains(&a.status) {
            let body = serde_json::from_slice::<ErrorBody>(&a.body).unwrap_or_else(|_| ErrorBody {
                status: a.status,
                error: "http".to_owned(),
                message: String::from_utf8_lossy(&a.body).chars().take(500).collect(),
            });
            return Err(ApiError::Status { body });
        }
        serde_json::from_slice(&a.body).map_err(|e| ApiError::Protocol {
            url: self.url(path),
            reason: e.to_string(),
        })
    }

    /// `GET path`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let a = self.request(Method::GET, path, None, &[]).await?;
        self.decode(path, &a)
    }

    /// `POST path` with `body` as JSON, decoded.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Protocol {
            url: self.url(path),
            reason: e.to_string(),
        })?;
        let a = self.request(Method::POST, path, Some(bytes), &[]).await?;
        self.decode(path, &a)
    }

    /// `/cluster`.
    pub async fn cluster(&self) -> Result<ClusterBody, ApiError> {
        self.get("/cluster").await
    }

    /// `/roles`.
    pub async fn roles(&self) -> Result<Vec<RoleBody>, ApiError> {
        self.get("/roles").await
    }

    /// `/roles/{role}`: one role with its candidates and the reasons.
    pub async fn role(&self, role: &str) -> Result<RoleBody, ApiError> {
        self.get(&format!("/roles/{}", path_segment(role))).await
    }

    /// `/history`, of one role or all.
    pub async fn history(&self, role: Option<&str>) -> Result<Vec<HistoryEntry>, ApiError> {
        match role {
            Some(r) => {
                self.get(&format!("/history?role={}", path_segment(r)))
                    .await
            }
            None => self.get("/history").await,
        }
    }

    /// `POST /role/{role}/switchover`.
    pub async fn switchover(
        &self,
        role: &str,
        candidate: Option<&str>,
    ) -> Result<AdminReply, ApiError> {
        self.move_role(role, "switchover", candidate).await
    }

    /// `POST /role/{role}/failover`.
    pub async fn failover(
        &self,
        role: &str,
        candidate: Option<&str>,
    ) -> Result<AdminReply, ApiError> {
        self.move_role(role, "failover", candidate).await
    }

    /// `POST /role/{role}/failback`; with `candidate`, an approval of the failback to that
    /// node (refused unless it still is the preferred candidate).
    pub async fn failback(
        &self,
        role: &str,
        candidate: Option<&str>,
    ) -> Result<AdminReply, ApiError> {
        self.move_role(role, "failback", candidate).await
    }

    /// `POST /role/{role}/{op}` with `{candidate?}`.
    async fn move_role(
        &self,
        role: &str,
        op: &str,
        candidate: Option<&str>,
    ) -> Result<AdminReply, ApiError> {
        let body = MoveBody {
            candidate: candidate.map(str::to_owned),
            leader: None,
        };
        self.post(&format!("/role/{}/{op}", path_segment(role)), &body)
            .await
    }

    /// `POST /role/{role}/failback/postpone` (`ttl` like `"2h"`; default 1 h).
    pub async fn postpone_failback(
        &self,
        role: &str,
        ttl: Option<&str>,
    ) -> Result<AdminReply, ApiError> {
        let body = PostponeBody {
            ttl: ttl.map(str::to_owned),
        };
        self.post(
            &format!("/role/{}/failback/postpone", path_segment(role)),
            &body,
        )
        .await
    }

    /// `POST /role/{role}/cancel`: cancels a hand-off under way.
    pub async fn cancel(&self, role: &str) -> Result<AdminReply, ApiError> {
        self.post(
            &format!("/role/{}/cancel", path_segment(role)),
            &serde_json::json!({}),
        )
        .await
    }

    /// `POST /role/{role}/maintenance` on (`ttl` like `"30m"`) or off.
    pub async fn maintenance(
        &self,
        role: &str,
        on: bool,
        ttl: Option<&str>,
    ) -> Result<AdminReply, ApiError> {
        let body = MaintenanceBody {
            on,
            ttl: ttl.map(str::to_owned),
        };
        self.post(&format!("/role/{}/maintenance", path_segment(role)), &body)
            .await
    }
}

/// `s` with every byte outside `[A-Za-z0-9._~-]` percent-encoded.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_segment("app-1.x"), "app-1.x");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[tokio::test]
    async fn an_unreachable_api_is_a_connect_error() {
        // A port nobody listens on: bind one, note it, drop it.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        drop(l);
        let e = Client::new(&addr, None)
            .cluster()
            .await
            .expect_err("nothing listens");
        assert!(matches!(e, ApiError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("[api]"), "{e}");
    }
}
