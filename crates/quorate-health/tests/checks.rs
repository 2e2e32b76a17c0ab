//! The built-in checks against local listeners, files and processes (real time, loopback only;
//! nothing asserts a duration).
#![allow(clippy::unwrap_used, reason = "test")]

use std::time::Duration;

use quorate_health::checks::{
    CommandCheck, DiskSpaceCheck, HttpCheck, MemoryCheck, PostgresCheck, RedisCheck,
    SpaceThreshold, TcpCheck,
};
use quorate_health::{CheckConfig, HealthError, HealthMonitor, MonitorConfig};
use quorate_health_api::{CheckResult, ComponentType, HealthCheck, HealthStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use HealthStatus::{Critical, Passing, Warning};

/// A loopback port nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[track_caller]
fn assert_setup_error<T: std::fmt::Debug>(r: Result<T, HealthError>, check: &str) {
    match r {
        Err(HealthError::InvalidCheckSetup { check: c, .. }) if c == check => {}
        other => panic!("expected a {check} setup error, got {other:?}"),
    }
}

#[tokio::test]
async fn tcp_connect_passes_then_fails_when_the_listener_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let check = TcpCheck::new(addr.clone()).unwrap();
    let r = check.check().await;
    assert_eq!(r.status, Passing, "{}", r.message);
    assert!(r.observed_value.is_some());
    drop(listener);
    let r = check.check().await;
    assert_eq!(r.status, Critical);
    assert!(
        r.message.starts_with(&format!("connect to {addr} failed")),
        "{}",
        r.message
    );
    assert_setup_error(TcpCheck::new("localhost"), "tcp");
    assert_setup_error(TcpCheck::new("localhost:99999"), "tcp");
    assert_setup_error(TcpCheck::new(":80"), "tcp");
}

/// Serves `count` connections, answering by path; returns the request heads it saw.
async fn http_server(count: usize) -> (String, tokio::task::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..count {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8(head).unwrap();
            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
            let response: &[u8] = match path.as_str() {
                "/ok" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                "/nocontent" => b"HTTP/1.1 204 No Content\r\n\r\n",
                "/busy" => b"HTTP/1.1 429 Too Many Requests\r\n\r\n",
                "/moved" => b"HTTP/1.1 301 Moved Permanently\r\nLocation: /ok\r\n\r\n",
                "/garbage" => b"hello there\r\n\r\n",
                _ => b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
            };
            conn.write_all(response).await.unwrap();
            seen.push(head);
        }
        seen
    });
    (base, task)
}

#[tokio::test]
async fn http_get_maps_2xx_429_and_the_rest() {
    let cases = [
        ("/ok", Passing),
        ("/nocontent", Passing),
        ("/busy", Warning),
        ("/moved", Critical),
        ("/down", Critical),
        ("/garbage", Critical),
    ];
    let (base, server) = http_server(cases.len()).await;
    for (path, expected) in cases {
        let r = HttpCheck::new(format!("{base}{path}"))
            .unwrap()
            .check()
            .await;
        assert_eq!(r.status, expected, "{path}: {}", r.message);
    }
    let heads = server.await.unwrap();
    assert!(heads[0].starts_with("GET /ok HTTP/1.1\r\n"), "{}", heads[0]);
    assert!(heads[0].contains(&format!("Host: {}\r\n", &base["http://".len()..])));
    let port = closed_port().await;
    let r = HttpCheck::new(format!("http://127.0.0.1:{port}/"))
        .unwrap()
        .check()
        .await;
    assert_eq!(r.status, Critical);
    assert!(r.message.contains("connect to"), "{}", r.message);
    assert_setup_error(HttpCheck::new("https://example.invalid/"), "http");
}

#[tokio::test]
async fn disk_space_thresholds_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let check = |warn, crit| DiskSpaceCheck::new(dir.path(), warn, crit).unwrap();
    use SpaceThreshold::{Bytes, Percent};

    let r = check(Bytes(0), Bytes(0)).check().await;
    assert_eq!(r.status, Passing, "{}", r.message);
    assert!(r.observed_value.unwrap() > 0.0);
    let r = check(Bytes(u64::MAX), Bytes(0)).check().await;
    assert_eq!(r.status, Warning, "{}", r.message);
    assert!(r.message.contains("below"), "{}", r.message);
    let r = check(Bytes(u64::MAX), Bytes(u64::MAX)).check().await;
    assert_eq!(r.status, Critical);
    let r = check(Percent(100.0), Percent(0.0)).check().await;
    assert_eq!(r.status, Warning, "{}", r.message);
    let r = check(Percent(0.0), Percent(0.0)).check().await;
    assert_eq!(r.status, Passing);

    let missing = DiskSpaceCheck::new(dir.path().join("no/such/dir"), Bytes(0), Bytes(0)).unwrap();
    let r = missing.check().await;
    assert_eq!(r.status, Critical);
    assert!(r.message.starts_with("statvfs"), "{}", r.message);

    assert_setup_error(
        DiskSpaceCheck::new("/", Percent(150.0), Percent(1.0)),
        "disk",
    );
    assert_setup_error(
        DiskSpaceCheck::new("/", Percent(f64::NAN), Percent(1.0)),
        "disk",
    );
    assert_setup_error(DiskSpaceCheck::new("/", Bytes(10), Bytes(20)), "disk");
    assert_setup_error(
        DiskSpaceCheck::new("/", Percent(5.0), Percent(10.0)),
        "disk",
    );
}

#[tokio::test]
async fn memory_rss_thresholds_both_ways() {
    let r = MemoryCheck::new(u64::MAX - 1, u64::MAX)
        .unwrap()
        .check()
        .await;
    assert_eq!(r.status, Passing, "{}", r.message);
    assert!(
        r.observed_value.unwrap() > 0.0,
        "this process has a resident set"
    );
    assert_eq!(
        MemoryCheck::new(0, u64::MAX).unwrap().check().await.status,
        Warning
    );
    assert_eq!(
        MemoryCheck::new(0, 0).unwrap().check().await.status,
        Critical
    );

    let dir = tempfile::tempdir().unwrap();
    let statm = dir.path().join("statm");
    std::fs::write(&statm, "1000 50 10 1 0 100 0\n").unwrap();
    let page = rustix::param::page_size() as u64;
    let r = MemoryCheck::for_statm_file(&statm, 49 * page, 51 * page)
        .unwrap()
        .check()
        .await;
    assert_eq!(
        (r.status, r.observed_value),
        (Warning, Some((50 * page) as f64))
    );
    std::fs::write(&statm, "garbage").unwrap();
    assert_eq!(
        MemoryCheck::for_statm_file(&statm, 1, 2)
            .unwrap()
            .check()
            .await
            .status,
        Critical
    );
    let missing = MemoryCheck::for_statm_file(dir.path().join("none"), 1, 2).unwrap();
    assert_eq!(missing.check().await.status, Critical);
    assert_setup_error(MemoryCheck::new(10, 5), "memory");
}

fn sh(script: &str) -> CommandCheck {
    CommandCheck::new("sh", ["-c", script]).unwrap()
}

#[tokio::test]
async fn command_exit_codes_and_output() {
    let r = sh("echo out; echo err >&2; exit 0").check().await;
    assert_eq!(
        (r.status, r.message.as_str(), r.observed_value),
        (Passing, "out\nerr", Some(0.0))
    );
    let r = sh("echo degraded; exit 1").check().await;
    assert_eq!((r.status, r.message.as_str()), (Warning, "degraded"));
    let r = sh("exit 3").check().await;
    assert_eq!(
        (r.status, r.message.as_str(), r.observed_value),
        (Critical, "sh exited with 3", Some(3.0))
    );
    let r = sh("kill -9 $$").check().await;
    assert_eq!(r.status, Critical);
    assert!(r.message.contains("killed by a signal"), "{}", r.message);
    let r = CommandCheck::new("/nonexistent/quorate-check", Vec::<String>::new())
        .unwrap()
        .check()
        .await;
    assert_eq!(r.status, Critical);
    assert!(
        r.message
            .starts_with("cannot start /nonexistent/quorate-check"),
        "{}",
        r.message
    );
    assert_setup_error(CommandCheck::new("", Vec::<String>::new()), "command");
}

#[tokio::test]
async fn command_output_is_truncated_but_fully_drained() {
    // 1 MB of output: more than a pipe buffer, so the program would block if not drained.
    let r = sh("head -c 1000000 /dev/zero | tr '\\0' a; exit 1")
        .with_output_bytes_max(100)
        .check()
        .await;
    assert_eq!(r.status, Warning);
    assert_eq!(r.message.len(), 100);
    assert!(r.message.ends_with("aaa..."), "{}", r.message);
}

fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie has been killed; only its parent's reaping is left.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn command_timeout_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 600 & echo $! > {}; wait", pidfile.display());
    let monitor = HealthMonitor::start(MonitorConfig::standard()).unwrap();
    let config = CheckConfig {
        interval: Duration::from_secs(3600),
        timeout: Duration::from_millis(300),
        ..CheckConfig::fast()
    };
    monitor
        .register(
            "script",
            ComponentType::Custom("script".into()),
            "sleeper",
            sh(&script),
            config,
        )
        .unwrap();
    let snap = monitor.run_now("script").await.unwrap();
    assert_eq!(snap.last_result, Some(Critical));
    assert_eq!(snap.message, "timed out after 300ms");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !process_is_gone(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "sleep (pid {pid}) survived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    monitor.shutdown().await;
}

#[tokio::test]
async fn redis_and_postgres_fail_cleanly_without_a_server() {
    let port = closed_port().await;
    let r = RedisCheck::new(&format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .check()
        .await;
    assert_eq!(r.status, Critical);
    assert!(
        r.message
            .starts_with(&format!("redis 127.0.0.1:{port}: connect failed")),
        "{}",
        r.message
    );
    let r = PostgresCheck::new(&format!(
        "host=127.0.0.1 port={port} user=x password=secret dbname=d"
    ))
    .unwrap()
    .check()
    .await;
    assert_eq!(r.status, Critical);
    assert!(
        r.message
            .starts_with(&format!("postgres 127.0.0.1:{port}/d: connect failed")),
        "{}",
        r.message
    );
    assert!(!r.message.contains("secret"), "{}", r.message);

    assert_setup_error(RedisCheck::new("not a url"), "redis");
    assert_setup_error(PostgresCheck::new("port=notanumber"), "postgres");
    assert_setup_error(PostgresCheck::new("user=x"), "postgres");
}

// No cfg: the crate's dev-dependency on itself turns `mongodb` on for every test build.
#[tokio::test]
async fn mongodb_ping_fails_cleanly_without_a_server() {
    use quorate_health::checks::MongoCheck;
    let port = closed_port().await;
    let check = MongoCheck::connect(
        &format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    let r = check.check().await;
    assert_eq!(r.status, Critical);
    assert!(
        r.message
            .starts_with(&format!("mongodb 127.0.0.1:{port}: ping failed")),
        "{}",
        r.message
    );
    assert_setup_error(
        MongoCheck::connect("postgres://nope", Duration::from_millis(300)).await,
        "mongodb",
    );
}

#[tokio::test]
async fn closures_and_built_ins_mix_in_one_monitor() {
    let monitor = HealthMonitor::start(MonitorConfig::standard()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = CheckConfig {
        interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(10),
        success_threshold: std::num::NonZeroU32::MIN,
        ..CheckConfig::fast()
    };
    monitor
        .register(
            "tcp",
            ComponentType::ExternalApi,
            "api",
            TcpCheck::new(listener.local_addr().unwrap().to_string()).unwrap(),
            config.clone(),
        )
        .unwrap();
    monitor
        .register(
            "mem",
            ComponentType::NodeResource,
            "rss",
            MemoryCheck::new(u64::MAX - 1, u64::MAX).unwrap(),
            config.clone(),
        )
        .unwrap();
    monitor
        .register(
            "fn",
            ComponentType::Internal,
            "closure",
            || async { CheckResult::passing("fine") },
            config,
        )
        .unwrap();
    for id in ["tcp", "mem", "fn"] {
        assert_eq!(monitor.run_now(id).await.unwrap().status, Passing, "{id}");
    }
    assert_eq!(monitor.overall().healthy, 3);
    monitor.shutdown().await;
}
