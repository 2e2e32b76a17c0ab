//! HTTP GET check over plain tokio (HTTP/1.1, no TLS): 2xx passing, 429 warning, anything
//! else critical (Consul's mapping).

use quorate_health_api::{CheckFuture, CheckResult, HealthCheck, HealthStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::HealthError;

/// Longest status line + headers read before giving up on a response.
const HEAD_BYTES_MAX: usize = 8 * 1024;

/// `GET http://host:port/path`: 2xx passing, 429 warning, other statuses and errors critical.
/// Observed value: the status code. Only `http://` (a health endpoint on a private network or
/// loopback); redirects are not followed.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    url: String,
    connect_addr: String,
    host_header: String,
    path: String,
}

fn setup_error(reason: String) -> HealthError {
    HealthError::InvalidCheckSetup {
        check: "http",
        reason,
    }
}

impl HttpCheck {
    /// A check of `url` (`http://host[:port][/path][?query]`).
    pub fn new(url: impl Into<String>) -> Result<HttpCheck, HealthError> {
        let url = url.into();
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(setup_error(format!(
                "url {url:?} must start with http:// (https is not supported by the built-in \
                 check; write a HealthCheck with your TLS client)"
            )));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty()
            || authority.contains('@')
            || authority.contains(char::is_whitespace)
        {
            return Err(setup_error(format!(
                "url {url:?} needs a host (and no user info or spaces)"
            )));
        }
        if path.contains(char::is_whitespace) {
            return Err(setup_error(format!(
                "url {url:?} has whitespace in its path"
            )));
        }
        // An explicit port follows the last ':' after any IPv6 bracket.
        let host_end = authority.rfind(']').map_or(0, |i| i + 1);
        let connect_addr = match authority[host_end..].rfind(':') {
            Some(i) => {
                let port = &authority[host_end + i + 1..];
                if port.parse::<u16>().is_err() {
                    return Err(setup_error(format!(
                        "url {url:?} has an invalid port {port:?}"
                    )));
                }
                authority.to_owned()
            }
            None => format!("{authority}:80"),
        };
        Ok(HttpCheck {
            host_header: authority.to_owned(),
            connect_addr,
            path,
            url,
        })
    }

    async fn get(&self) -> Result<(u16, String), String> {
        let mut stream = tokio::net::TcpStream::connect(&self.connect_addr)
            .await
            .map_err(|e| format!("connect to {} failed: {e}", self.connect_addr))?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: quorate-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.path, self.host_header
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending the request failed: {e}"))?;
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        let line_end = loop {
            if let Some(i) = head.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            if head.len() >= HEAD_BYTES_MAX {
                return Err(format!(
                    "no status line in the first {HEAD_BYTES_MAX} bytes"
                ));
            }
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading the response failed: {e}"))?;
            if n == 0 {
                return Err("connection closed before a status line".to_owned());
            }
            head.extend_from_slice(&buf[..n]);
        };
        let line = String::from_utf8_lossy(&head[..line_end]).into_owned();
        parse_status_line(&line).ok_or_else(|| format!("malformed status line {line:?}"))
    }
}

/// `HTTP/1.x NNN reason` -> (NNN, reason).
fn parse_status_line(line: &str) -> Option<(u16, String)> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    let code = code.parse::<u16>().ok()?;
    Some((code, parts.next().unwrap_or("").trim().to_owned()))
}

/// Consul's mapping: 2xx passing, 429 warning, anything else critical.
#[must_use]
pub(crate) fn status_for_code(code: u16) -> HealthStatus {
    match code {
        200..=299 => HealthStatus::Passing,
        429 => HealthStatus::Warning,
        _ => HealthStatus::Critical,
    }
}

impl HealthCheck for HttpCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let start = Instant::now();
            match self.get().await {
                Ok((code, reason)) => CheckResult::new(
                    status_for_code(code),
                    format!(
                        "HTTP {code} {reason} from GET {} in {:.1}ms",
                        self.url,
                        super::millis(start.elapsed())
                    ),
                )
                .with_observed(f64::from(code)),
                Err(e) => CheckResult::critical(format!("GET {}: {e}", self.url)),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_status_lines() {
        let c = HttpCheck::new("http://127.0.0.1:8080/health?x=1").unwrap();
        assert_eq!(
            (c.connect_addr.as_str(), c.path.as_str()),
            ("127.0.0.1:8080", "/health?x=1")
        );
        let c = HttpCheck::new("http://example.internal").unwrap();
        assert_eq!(
            (c.connect_addr.as_str(), c.path.as_str()),
            ("example.internal:80", "/")
        );
        let c = HttpCheck::new("http://[::1]:9/x").unwrap();
        assert_eq!(c.connect_addr, "[::1]:9");
        let c = HttpCheck::new("http://h?q").unwrap();
        assert_eq!(c.path, "/?q");
        for bad in [
            "https://a/",
            "ftp://a",
            "http://",
            "http://a:99999/",
            "http://u:p@a/",
            "http://a/b c",
        ] {
            assert!(
                matches!(
                    HttpCheck::new(bad),
                    Err(HealthError::InvalidCheckSetup { check: "http", .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse_status_line("HTTP/1.1 200 OK"),
            Some((200, "OK".into()))
        );
        assert_eq!(
            parse_status_line("HTTP/1.0 429 Too Many Requests"),
            Some((429, "Too Many Requests".into()))
        );
        assert_eq!(
            parse_status_line("HTTP/1.1 204"),
            Some((204, String::new()))
        );
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line("HTTP/1.1 2000 x"), None);
        assert_eq!(status_for_code(204), HealthStatus::Passing);
        assert_eq!(status_for_code(429), HealthStatus::Warning);
        assert_eq!(status_for_code(301), HealthStatus::Critical);
        assert_eq!(status_for_code(503), HealthStatus::Critical);
    }
}
