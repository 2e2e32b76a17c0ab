//! The seam to the Bot API: the only module that uses teloxide. Every call is bounded by a
//! timeout given by the caller (teloxide itself waits 10 s after a 5xx before reading the
//! body; the bound cuts that short), and every error is sorted into what the loops act on:
//! a 409 conflict, a flood-control wait, or a failed call.

use std::time::Duration;

use teloxide::payloads::{
    AnswerCallbackQuerySetters as _, GetUpdatesSetters as _, SendMessageSetters as _,
    SetWebhookSetters as _,
};
use teloxide::prelude::Requester;
use teloxide::types::{
    CallbackQueryId, ChatId, InlineKeyboardButton, InlineKeyboardMarkup, Update, UpdateKind,
};
use teloxide::{ApiError, Bot, RequestError};

use crate::error::TelegramError;
use crate::store::Button;

/// An incoming message, as the commands see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// Telegram's `update_id`.
    pub(crate) id: i64,
    /// The chat it came from, when it is a message.
    pub(crate) chat: Option<i64>,
    /// Its text, when it has one; for a press of one of the bot's buttons, the button's
    /// data (a command).
    pub(crate) text: Option<String>,
    /// For a button press: the callback query's id, to answer it.
    pub(crate) callback: Option<String>,
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CallError {
    /// HTTP 409: another `getUpdates` (another poller with this token) or an active webhook.
    Conflict(String),
    /// HTTP 429: flood control; wait this long.
    RetryAfter(Duration),
    /// No answer within the bound (teloxide waits 10 s after a 5xx, so a 5xx ends here too).
    Timeout,
    /// A network failure or an unknown error: try again later.
    Transient(String),
    /// Telegram refused the request for good (chat not found, bot blocked, bad request).
    Permanent(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Conflict(d) => write!(f, "409 conflict: {d}"),
            CallError::RetryAfter(d) => write!(f, "429 flood control: retry after {d:?}"),
            CallError::Timeout => f.write_str("no answer in time"),
            CallError::Transient(d) | CallError::Permanent(d) => f.write_str(d),
        }
    }
}

fn classify(e: RequestError) -> CallError {
    match e {
        RequestError::RetryAfter(s) => CallError::RetryAfter(s.duration()),
        RequestError::Api(ApiError::TerminatedByOtherGetUpdates) => {
            CallError::Conflict("terminated by other getUpdates request".into())
        }
        RequestError::Api(ApiError::Unknown(d)) if d.starts_with("Conflict") => {
            CallError::Conflict(d)
        }
        RequestError::Network(n) if n.is_timeout() => CallError::Timeout,
        RequestError::Api(ApiError::Unknown(d)) => CallError::Transient(d),
        e @ (RequestError::Api(_) | RequestError::MigrateToChatId(_)) => {
            CallError::Permanent(e.to_string())
        }
        other => CallError::Transient(other.to_string()),
    }
}

/// A bot client.
#[derive(Clone)]
pub(crate) struct BotApi {
    bot: Bot,
}

impl BotApi {
    /// A client for `token` at `api_url` (Telegram's when `None`); `agent` names this node in
    /// the User-Agent header.
    pub(crate) fn new(
        token: &str,
        api_url: Option<&str>,
        agent: &str,
    ) -> Result<BotApi, TelegramError> {
        let client = teloxide::net::default_reqwest_settings()
            .user_agent(agent)
            .build()
            .map_err(|e| TelegramError::Config(format!("building the HTTP client: {e}")))?;
        let mut bot = Bot::with_client(token, client);
        if let Some(u) = api_url {
            let url = reqwest::Url::parse(u)
                .map_err(|e| TelegramError::Config(format!("api_url {u:?}: {e}")))?;
            bot = bot.set_api_url(url);
        }
        Ok(BotApi { bot })
    }

    /// `getUpdates` from `offset`, held up to `wait` (whole seconds) by the server; the whole
    /// call bounded by `bound`.
    pub(crate) async fn get_updates(
        &self,
        offset: i64,
        wait_s: u32,
        limit: u8,
        bound: Duration,
    ) -> Result<Vec<Incoming>, CallError> {
        let offset = i32::try_from(offset).unwrap_or(i32::MAX);
        let req = self
            .bot
            .get_updates()
            .offset(offset)
            .timeout(wait_s)
            .limit(limit);
        let updates = match tokio::time::timeout(bound, async { req.await }).await {
            Err(_) => return Err(CallError::Timeout),
            Ok(r) => r.map_err(classify)?,
        };
        Ok(updates.iter().map(incoming).collect())
    }

    /// `setWebhook`: Telegram posts updates to `url` with `secret` in the
    /// `X-Telegram-Bot-Api-Secret-Token` header, one at a time (`max_connections` 1, so in
    /// order), pending updates kept; bounded by `bound`.
    pub(crate) async fn set_webhook(
        &self,
        url: &str,
        secret: &str,
        bound: Duration,
    ) -> Result<(), CallError> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| CallError::Permanent(format!("webhook_url {url:?}: {e}")))?;
        let req = self
            .bot
            .set_webhook(url)
            .secret_token(secret)
            .max_connections(1)
            .drop_pending_updates(false);
        match tokio::time::timeout(bound, async { req.await }).await {
            Err(_) => Err(CallError::Timeout),
            Ok(r) => r.map(|_| ()).map_err(classify),
        }
    }

    /// `sendMessage` of plain `text` to `chat`, with `buttons` (an inline keyboard, one row)
    /// when there are some, bounded by `bound`.
    pub(crate) async fn send(
        &self,
        chat: i64,
        text: &str,
        buttons: &[Button],
        bound: Duration,
    ) -> Result<(), CallError> {
        let mut req = self.bot.send_message(ChatId(chat), text);
        if !buttons.is_empty() {
            req = req.reply_markup(InlineKeyboardMarkup::new([buttons
                .iter()
                .map(|b| InlineKeyboardButton::callback(b.text.clone(), b.data.clone()))
                .collect::<Vec<_>>()]));
        }
        match tokio::time::timeout(bound, async { req.await }).await {
            Err(_) => Err(CallError::Timeout),
            Ok(r) => r.map(|_| ()).map_err(classify),
        }
    }

    /// `answerCallbackQuery`: ends the button's spinner in the operator's app, with `text` as
    /// a short notice; bounded by `bound`.
    pub(crate) async fn answer_callback(
        &self,
        id: &str,
        text: &str,
        bound: Duration,
    ) -> Result<(), CallError> {
        let req = self
            .bot
            .answer_callback_query(CallbackQueryId(id.to_owned()))
            .text(text);
        match tokio::time::timeout(bound, async { req.await }).await {
            Err(_) => Err(CallError::Timeout),
            Ok(r) => r.map(|_| ()).map_err(classify),
        }
    }
}

/// What the commands see of an update.
pub(crate) fn incoming(u: &Update) -> Incoming {
    let (chat, text, callback) = match &u.kind {
        UpdateKind::Message(m) => (Some(m.chat.id.0), m.text().map(str::to_owned), None),
        // A press of a button under one of the bot's messages: its data is a command, run
        // for the chat the message is in (and so under that chat's authorisation).
        UpdateKind::CallbackQuery(q) => (
            q.message.as_ref().map(|m| m.chat().id.0),
            q.data.clone(),
            Some(q.id.0.clone()),
        ),
        _ => (None, None, None),
    };
    Incoming {
        id: i64::from(u.id.0),
        chat,
        text,
        callback,
    }
}

/// An update as Telegram posts it to a webhook (JSON); `None` if it is not one.
pub(crate) fn parse_update(body: &[u8]) -> Option<Incoming> {
    serde_json::from_slice::<Update>(body)
        .ok()
        .map(|u| incoming(&u))
}
