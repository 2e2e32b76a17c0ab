//! An in-process fake of the Telegram Bot API (axum on loopback), reached through the bot's
//! `api_url`. It serves `getUpdates` (held long polls, Telegram's confirm-by-offset rule, and
//! Telegram's conflict rule: a `getUpdates` arriving while another is open ends the open one
//! with 409), `sendMessage` (logged; a 429 `retry_after` it gave is enforced), `setWebhook`
//! and `deleteWebhook`; faults can be queued per method (409, 429 with `retry_after`, a
//! timeout, a 5xx). Once a webhook is set, it posts each queued update to the webhook's URL,
//! one at a time and in order, with the secret header, and keeps one until it is answered 2xx
//! (as Telegram does; a `getUpdates` meanwhile gets Telegram's 409). It logs every poll (who, when, how it ended) so that a test can check
//! that no two pollers overlapped. Method names match case-insensitively (teloxide sends
//! `GetUpdates`). Used by quorate-telegram's tests (in-process nodes) and by the binary's
//! real-process Telegram chaos test (agents in network namespaces).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A fault to answer the next call of a method with.
#[derive(Clone, Debug)]
pub enum Fault {
    /// 409 Conflict (as if another poller were there).
    Conflict,
    /// 429 with this `retry_after` (seconds).
    RetryAfter(u32),
    /// No answer for this long (the client's timeout fires first).
    Hang(Duration),
    /// 502 Bad Gateway.
    ServerError,
}

/// One `getUpdates` as the fake saw it.
#[derive(Clone, Debug)]
pub struct Poll {
    /// The caller's User-Agent (quorate names its node there).
    pub agent: String,
    /// When it arrived.
    pub start: Instant,
    /// When it ended.
    pub end: Instant,
    /// Its `offset`.
    pub offset: i64,
    /// Updates it returned.
    pub returned: usize,
    /// How it ended (`ok`, `409-superseded`, `dropped-by-client`, `injected-...`).
    pub outcome: &'static str,
}

/// One webhook delivery attempt: the update, where it went, the HTTP status (0: no answer).
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The update's id.
    pub id: i64,
    /// The webhook URL it was posted to.
    pub url: String,
    /// The HTTP status answered (0: no answer).
    pub status: u16,
    /// When it was answered.
    pub at: Instant,
}

/// One `sendMessage`.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The chat.
    pub chat: i64,
    /// The text.
    pub text: String,
    /// When it arrived.
    pub at: Instant,
    /// The sender's User-Agent.
    pub agent: String,
    /// Its inline keyboard's buttons, in order: (label, callback data).
    pub buttons: Vec<(String, String)>,
}

#[derive(Default)]
struct Inner {
    next_id: i64,
    /// Updates not yet confirmed, by id.
    queue: BTreeMap<i64, Value>,
    /// When each update was pushed.
    pushed: BTreeMap<i64, Instant>,
    /// The open getUpdates: its generation, and until when Telegram would hold it.
    open: Option<(u64, Instant)>,
    generation: u64,
    /// Conflicts the fake answered because two polls overlapped.
    overlaps: u64,
    polls: Vec<Poll>,
    sent: Vec<Sent>,
    faults: BTreeMap<String, VecDeque<Fault>>,
    /// A chat told to wait (429) until then.
    blocked: BTreeMap<i64, Instant>,
    /// Sends that came before the `retry_after` the fake asked for.
    early: u64,
    webhook: Option<(String, Option<String>)>,
    webhook_calls: Vec<String>,
    deliveries: Vec<Delivery>,
    message_id: i64,
    /// `answerCallbackQuery` calls: (callback query id, text).
    answered: Vec<(String, String)>,
}

/// The fake server.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
    /// Cancels an open poll when another one arrives.
    superseded: Arc<Notify>,
    /// Its base URL (`http://addr:port`), for the bot's `api_url`.
    pub url: String,
    /// The longest the fake holds an empty poll, whatever its `timeout`.
    hold_max: Duration,
}

impl FakeApi {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::start_on(listener)
    }

    /// Starts the fake on `listener` (e.g. one bound inside a network namespace).
    pub fn start_on(listener: tokio::net::TcpListener) -> FakeApi {
        let addr = listener.local_addr().expect("addr");
        let fake = FakeApi {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 1000,
                ..Inner::default()
            })),
            arrived: Arc::new(Notify::new()),
            superseded: Arc::new(Notify::new()),
            url: format!("http://{addr}"),
            hold_max: Duration::from_secs(60),
        };
        let app = Router::new()
            .route("/{bot}/{method}", post(handle))
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        tokio::spawn(deliver(fake.clone()));
        fake
    }

    /// The webhook calls (`set URL`, `delete`) in order.
    pub fn webhook_calls(&self) -> Vec<String> {
        self.lock().webhook_calls.clone()
    }

    /// Every webhook delivery attempt.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.lock().deliveries.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a text message from `chat`; returns its update id.
    pub fn push_text(&self, chat: i64, text: &str) -> i64 {
        self.push(chat, |id, chat_json| {
            json!({
                "message": {
                    "message_id": id,
                    "date": 1_700_000_000,
                    "chat": chat_json,
                    "from": {"id": chat.abs(), "is_bot": false, "first_name": "op"},
                    "text": text,
                }
            })
        })
    }

    /// Queues a press of a button (callback `data`) under a message of the bot in `chat`;
    /// returns its update id.
    pub fn push_press(&self, chat: i64, data: &str) -> i64 {
        self.push(chat, |id, chat_json| {
            json!({
                "callback_query": {
                    "id": format!("cb-{id}"),
                    "from": {"id": chat.abs(), "is_bot": false, "first_name": "op"},
                    "chat_instance": "ci",
                    "data": data,
                    "message": {
                        "message_id": 1,
                        "date": 1_700_000_000,
                        "chat": chat_json,
                        "from": {"id": 1, "is_bot": true, "first_name": "quorate"},
                        "text": "a message with buttons",
                    },
                }
            })
        })
    }

    /// Queues the update `body(id, chat)` makes (its `update_id` added) from `chat`.
    fn push(&self, chat: i64, body: impl FnOnce(i64, Value) -> Value) -> i64 {
        let id = {
            let mut g = self.lock();
            g.next_id += 1;
            let id = g.next_id;
            let chat_json = if chat < 0 {
                json!({"id": chat, "type": "supergroup", "title": "ops"})
            } else {
                json!({"id": chat, "type": "private", "first_name": "op"})
            };
            let mut update = body(id, chat_json);
            update["update_id"] = json!(id);
            g.queue.insert(id, update);
            g.pushed.insert(id, Instant::now());
            id
        };
        self.arrived.notify_waiters();
        id
    }

    /// The `answerCallbackQuery` calls: (callback query id, text).
    pub fn answered(&self) -> Vec<(String, String)> {
        self.lock().answered.clone()
    }

    /// Answers the next call of `method` (lowercase, e.g. `getupdates`) with `fault`.
    pub fn inject(&self, method: &str, fault: Fault) {
        self.lock()
            .faults
            .entry(method.to_ascii_lowercase())
            .or_default()
            .push_back(fault);
    }

    /// Every `getUpdates` so far.
    pub fn polls(&self) -> Vec<Poll> {
        self.lock().polls.clone()
    }

    /// Every `sendMessage` so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.lock().sent.clone()
    }

    /// When update `id` was queued.
    pub fn pushed_at(&self, id: i64) -> Option<Instant> {
        self.lock().pushed.get(&id).copied()
    }

    /// Conflicts the fake gave because a poll arrived while another was open.
    pub fn overlaps(&self) -> u64 {
        self.lock().overlaps
    }

    /// Sends that ignored a `retry_after`.
    pub fn early_sends(&self) -> u64 {
        self.lock().early
    }

    /// Updates not confirmed yet.
    pub fn unconfirmed(&self) -> usize {
        self.lock().queue.len()
    }

    /// Waits (polling the log) until `f` holds, up to `limit`.
    pub async fn until(&self, what: &str, limit: Duration, mut f: impl FnMut(&FakeApi) -> bool) {
        let deadline = Instant::now() + limit;
        while !f(self) {
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Messages sent to `chat`.
    pub fn sent_to(&self, chat: i64) -> Vec<String> {
        self.sent()
            .into_iter()
            .filter(|s| s.chat == chat)
            .map(|s| s.text)
            .collect()
    }
}

fn ok(result: Value) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({"ok": true, "result": result})),
    )
        .into_response()
}

fn err(status: StatusCode, description: &str, extra: Option<Value>) -> Response {
    let mut body = json!({"ok": false, "error_code": status.as_u16(), "description": description});
    if let Some(p) = extra {
        body["parameters"] = p;
    }
    (status, axum::Json(body)).into_response()
}

const CONFLICT: &str = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";

async fn fault(f: Fault) -> Response {
    match f {
        Fault::Conflict => err(StatusCode::CONFLICT, CONFLICT, None),
        Fault::RetryAfter(s) => err(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too Many Requests: retry after {s}"),
            Some(json!({"retry_after": s})),
        ),
        Fault::Hang(d) => {
            tokio::time::sleep(d).await;
            err(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout", None)
        }
        Fault::ServerError => err(StatusCode::BAD_GATEWAY, "Bad Gateway", None),
    }
}

async fn handle(
    State(fake): State<FakeApi>,
    Path((_bot, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let method = method.to_ascii_lowercase();
    let agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let args: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let injected = fake
        .lock()
        .faults
        .get_mut(&method)
        .and_then(VecDeque::pop_front);
    match method.as_str() {
        "getupdates" if fake.lock().webhook.is_some() => err(
            StatusCode::CONFLICT,
            "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
            None,
        ),
        "getupdates" => get_updates(fake, agent, args, injected).await,
        "sendmessage" => {
            if let Some(f) = injected {
                // A 429 binds: a send to that chat before retry_after is early.
                if let (Fault::RetryAfter(s), Some(chat)) = (&f, args["chat_id"].as_i64()) {
                    block(&fake, chat, *s);
                }
                return fault(f).await;
            }
            send_message(&fake, agent, &args)
        }
        "setwebhook" => {
            // teloxide sends setWebhook as multipart/form-data.
            let url = args["url"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| form_field(&body, "url"))
                .unwrap_or_default();
            let secret = args["secret_token"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| form_field(&body, "secret_token"));
            let mut g = fake.lock();
            g.webhook_calls.push(format!("set {url}"));
            g.webhook = Some((url, secret));
            ok(json!(true))
        }
        "answercallbackquery" => {
            let id = args["callback_query_id"].as_str().unwrap_or("").to_owned();
            let text = args["text"].as_str().unwrap_or("").to_owned();
            fake.lock().answered.push((id, text));
            ok(json!(true))
        }
        "deletewebhook" => {
            let mut g = fake.lock();
            g.webhook_calls.push("delete".into());
            g.webhook = None;
            ok(json!(true))
        }
        "getme" => {
            ok(json!({"id": 1, "is_bot": true, "first_name": "quorate", "username": "quorate_bot"}))
        }
        _ => err(StatusCode::NOT_FOUND, "Not Found: method not found", None),
    }
}

fn send_message(fake: &FakeApi, agent: String, args: &Value) -> Response {
    let chat = args["chat_id"].as_i64().unwrap_or(0);
    let text = args["text"].as_str().unwrap_or("").to_owned();
    let now = Instant::now();
    let mut g = fake.lock();
    if let Some(until) = g.blocked.get(&chat).copied()
        && now < until
    {
        g.early += 1;
        let left = (until - now).as_secs().max(1);
        return err(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests: retry later",
            Some(json!({"retry_after": left})),
        );
    }
    g.message_id += 1;
    let id = g.message_id;
    let buttons = args["reply_markup"]["inline_keyboard"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .map(|b| {
            (
                b["text"].as_str().unwrap_or("").to_owned(),
                b["callback_data"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    g.sent.push(Sent {
        chat,
        text: text.clone(),
        at: now,
        agent,
        buttons,
    });
    ok(json!({
        "message_id": id,
        "date": 1_700_000_000,
        "chat": if chat < 0 { json!({"id": chat, "type": "supergroup", "title": "ops"}) } else { json!({"id": chat, "type": "private", "first_name": "op"}) },
        "text": text,
    }))
}

/// Blocks `chat` for `secs` (as a 429 would) so that sends before then count as early.
pub fn block(fake: &FakeApi, chat: i64, secs: u32) {
    fake.lock()
        .blocked
        .insert(chat, Instant::now() + Duration::from_secs(u64::from(secs)));
}

/// Logs a poll when it ends, or when the client drops it (then, like Telegram, the fake
/// still counts it open until its timeout).
struct PollGuard {
    fake: FakeApi,
    agent: String,
    start: Instant,
    offset: i64,
    generation: u64,
    done: bool,
}

impl PollGuard {
    fn finish(&mut self, outcome: &'static str, returned: usize) {
        self.done = true;
        let mut g = self.fake.lock();
        if g.open.is_some_and(|(gen_, _)| gen_ == self.generation) {
            g.open = None;
        }
        g.polls.push(Poll {
            agent: self.agent.clone(),
            start: self.start,
            end: Instant::now(),
            offset: self.offset,
            returned,
            outcome,
        });
    }
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        if !self.done {
            let mut g = self.fake.lock();
            g.polls.push(Poll {
                agent: self.agent.clone(),
                start: self.start,
                end: Instant::now(),
                offset: self.offset,
                returned: 0,
                outcome: "dropped-by-client",
            });
        }
    }
}

async fn get_updates(
    fake: FakeApi,
    agent: String,
    args: Value,
    injected: Option<Fault>,
) -> Response {
    let start = Instant::now();
    let offset = args["offset"].as_i64().unwrap_or(0);
    let limit = usize::try_from(args["limit"].as_u64().unwrap_or(100)).unwrap_or(100);
    let timeout = Duration::from_secs(args["timeout"].as_u64().unwrap_or(0)).min(fake.hold_max);
    let deadline = start + timeout;
    // Telegram's rule: a new getUpdates ends an open one with 409.
    let generation = {
        let mut g = fake.lock();
        if g.open.is_some_and(|(_, until)| start < until) {
            g.overlaps += 1;
        }
        g.generation += 1;
        let gen_ = g.generation;
        g.open = Some((gen_, deadline.max(start + Duration::from_millis(1))));
        gen_
    };
    fake.superseded.notify_waiters();
    let mut guard = PollGuard {
        fake: fake.clone(),
        agent,
        start,
        offset,
        generation,
        done: false,
    };
    if let Some(f) = injected {
        let r = fault(f.clone()).await;
        guard.finish(
            match f {
                Fault::Conflict => "injected-409",
                Fault::RetryAfter(_) => "injected-429",
                Fault::Hang(_) => "injected-hang",
                Fault::ServerError => "injected-5xx",
            },
            0,
        );
        return r;
    }
    loop {
        let arrived = fake.arrived.notified();
        let superseded = fake.superseded.notified();
        tokio::pin!(arrived, superseded);
        arrived.as_mut().enable();
        superseded.as_mut().enable();
        {
            let mut g = fake.lock();
            if g.open.is_none_or(|(gen_, _)| gen_ != generation) {
                drop(g);
                guard.finish("409-superseded", 0);
                return err(StatusCode::CONFLICT, CONFLICT, None);
            }
            // Confirm everything below the offset.
            let below: Vec<i64> = g.queue.range(..offset).map(|(k, _)| *k).collect();
            for k in below {
                g.queue.remove(&k);
            }
            let batch: Vec<Value> = g.queue.values().take(limit).cloned().collect();
            if !batch.is_empty() || Instant::now() >= deadline {
                let n = batch.len();
                drop(g);
                guard.finish("ok", n);
                return ok(Value::Array(batch));
            }
        }
        tokio::select! {
            () = &mut arrived => {}
            () = &mut superseded => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// One field of a multipart/form-data body (enough for setWebhook's text fields).
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let at = text.find(&format!("name=\"{name}\""))?;
    let rest = &text[at..];
    let start = rest.find("\r\n\r\n")? + 4;
    let end = rest[start..].find("\r\n--")?;
    Some(rest[start..start + end].to_owned())
}

/// Posts queued updates to the webhook, as Telegram does: one at a time, the oldest first,
/// kept until answered 2xx, retried after a pause otherwise.
async fn deliver(fake: FakeApi) {
    let client = reqwest::Client::new();
    loop {
        let next = {
            let g = fake.lock();
            g.webhook.as_ref().and_then(|(url, secret)| {
                g.queue
                    .iter()
                    .next()
                    .map(|(id, v)| (*id, v.clone(), url.clone(), secret.clone()))
            })
        };
        let Some((id, update, url, secret)) = next else {
            tokio::select! {
                () = fake.arrived.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            continue;
        };
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&update).unwrap_or_default())
            .timeout(Duration::from_secs(5));
        if let Some(s) = secret {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
        }
        let status = match req.send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        let ok = (200..300).contains(&status);
        {
            let mut g = fake.lock();
            g.deliveries.push(Delivery {
                id,
                url,
                status,
                at: Instant::now(),
            });
            if ok {
                g.queue.remove(&id);
            }
        }
        if !ok {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
