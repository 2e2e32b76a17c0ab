//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven over the
//! DevTools protocol) loads the page of a running 3-agent cluster; the primary is killed with
//! SIGKILL; the page shows the new primary and the failover in its history without a reload
//! (a marker set in the page's JavaScript context survives). With
//! `QUORATE_DASHBOARD_SCREENSHOT=FILE` it also writes a phone-sized screenshot (docs/ holds
//! one). Without Chromium the test fails under CI and says so otherwise.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use common::{spawn_agent, until};
use futures::{SinkExt as _, StreamExt as _};
use quorate::api::client::Client;
use quorate::api::model::RoleBody;
use quorate::config::{ApiSection, RoleSection};
use quorate_testkit::agents::{LoopbackPlan, write_config};
use quorate_testkit::process::free_port;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

const ROLE: &str = "app";

fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|b| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(b))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing: install Debian's chromium package (cargo xtask setup)"
        );
        eprintln!("chromium is missing: the browser test did not run");
    }
    found
}

/// One DevTools-protocol session with a page.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("DevTools answered")
                .expect("the DevTools socket is open")
                .unwrap();
            if let Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// Evaluates `js` in the page and returns its value.
    async fn eval(&mut self, js: &str) -> serde_json::Value {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({ "expression": js, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }
}

/// Starts headless Chromium and opens `url` in a new page.
async fn open(browser: &Path, profile: &Path, url: &str) -> (Child, Page) {
    let mut child = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=390,844",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(rest) = l.split("ws://127.0.0.1:").nth(1) {
                return rest.split('/').next().unwrap().parse::<u16>().unwrap();
            }
        }
        panic!("chromium exited before its DevTools endpoint was up")
    })
    .await
    .expect("chromium's DevTools endpoint within 60 s");
    // Keep draining its stderr so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let devtools = Client::new(&format!("127.0.0.1:{port}"), None);
    let a = devtools
        .request(hyper::Method::PUT, &format!("/json/new?{url}"), None, &[])
        .await
        .unwrap();
    let target: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let ws_url = target["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
    let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    (child, Page { ws, next_id: 0 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_a_failover_without_a_reload() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plan = LoopbackPlan::new("quorate-browser", 3, dir.path()).unwrap();
    let mut urls = Vec::new();
    let mut configs = Vec::new();
    for i in 0..3 {
        let url = format!("127.0.0.1:{}", free_port().unwrap());
        let u = url.clone();
        configs.push(
            write_config(&plan, i, dir.path(), move |c| {
                c.roles.push(RoleSection::named(ROLE));
                c.api = Some(ApiSection {
                    listen: u,
                    auth: false,
                    ..ApiSection::default()
                });
            })
            .unwrap(),
        );
        urls.push(url);
    }
    let mut agents: Vec<Option<Child>> = configs.iter().map(|c| Some(spawn_agent(c))).collect();
    let holder = async |url: &str| -> Option<String> {
        let roles: Vec<RoleBody> = Client::new(url, None).roles().await.ok()?;
        roles.into_iter().find(|r| r.role == ROLE)?.holder
    };
    let primary = until("a primary", async || {
        let mut seen = Vec::new();
        for u in &urls {
            seen.push(holder(u).await?);
        }
        seen.windows(2)
            .all(|w| w[0] == w[1])
            .then(|| seen[0].clone())
    })
    .await;
    let p = (primary.as_bytes()[1] - b'1') as usize;
    let watcher = (p + 1) % 3;

    let profile = dir.path().join("chromium");
    let (_chrome, mut page) = open(&browser, &profile, &format!("http://{}/", urls[watcher])).await;
    let holder_js =
        "(document.querySelector('tr[data-role=\"app\"]') || {dataset: {}}).dataset.holder || ''";
    until("the page showing the primary", async || {
        (page.eval(holder_js).await.as_str() == Some(primary.as_str())).then_some(())
    })
    .await;
    until("the event stream connected", async || {
        (page
            .eval("document.getElementById('conn').textContent")
            .await
            == "live")
            .then_some(())
    })
    .await;
    // A reload would lose this.
    page.eval("window.__quorateMarker = 42").await;

    agents[p].take().unwrap().kill().await.unwrap();
    let new = until("the new primary on the page", async || {
        let h = page.eval(holder_js).await.as_str()?.to_owned();
        (!h.is_empty() && h != primary).then_some(h)
    })
    .await;
    let row_js = format!(
        "Array.from(document.querySelectorAll('tr.change')).some(r => r.dataset.new === '{new}')"
    );
    until("the failover in the page's history", async || {
        (page.eval(&row_js).await == true).then_some(())
    })
    .await;
    assert_eq!(
        page.eval("window.__quorateMarker").await,
        42,
        "the page was reloaded"
    );
    println!(
        "the page of {} showed {primary} -> {new} without a reload",
        urls[watcher]
    );

    if let Some(path) = std::env::var_os("QUORATE_DASHBOARD_SCREENSHOT") {
        // The new primary's own page: it measured the failover's durations.
        let n = (new.as_bytes()[1] - b'1') as usize;
        page.call(
            "Page.navigate",
            serde_json::json!({ "url": format!("http://{}/", urls[n]) }),
        )
        .await;
        until("the new primary's page, live", async || {
            (page
                .eval("document.getElementById('conn').textContent")
                .await
                == "live")
                .then_some(())
        })
        .await;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({ "width": 390, "height": 960, "deviceScaleFactor": 2, "mobile": true }),
        )
        .await;
        let shot = page
            .call(
                "Page.captureScreenshot",
                serde_json::json!({ "format": "png" }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(&path, png).unwrap();
        println!("screenshot written to {}", PathBuf::from(path).display());
    }
    for a in agents.iter_mut().filter_map(Option::as_mut) {
        let _ = a.kill().await;
    }
}
