//! The ingress's records in the coordination store, all under `quorate/telegram/<role>/` and
//! all written under the role's fencing token: `fence` holds the highest token that took the
//! ingress over (8 bytes, big-endian, so that byte order is numeric order); every later write
//! is a transaction comparing `fence` with the writer's token, so a holder whose term has
//! ended (a lower token) changes nothing once its successor took over.
//!
//! - `offset`: the next `update_id` to ask Telegram for, and how many updates were processed.
//! - `inflight/<update_id>`: an operating command claimed but not answered yet.
//! - `outbox/<id>`: a message to send (a reply, or an alert), with the chats still owed it.

use std::sync::Arc;

use quorate_coord_api::{
    Compare, CompareOp, CompareTarget, Consistency, Coord, KeyValue, RangeRequest, Txn, TxnOp,
    TxnOpResult,
};
use quorate_types::FencingToken;
use serde::{Deserialize, Serialize};

use crate::error::TelegramError;

/// Where the ingress keeps its state.
#[derive(Clone)]
pub(crate) struct Store {
    coord: Arc<dyn Coord>,
    prefix: String,
}

/// The last processed position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OffsetRecord {
    /// The next `update_id` to ask for (`getUpdates` `offset`).
    pub(crate) next: i64,
    /// Updates processed so far, in all terms.
    pub(crate) processed: u64,
}

/// What kind of message an outbox entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EntryKind {
    /// The answer to one update: sent alone, in order.
    Reply,
    /// An alert: coalesced with other alerts to the same chat.
    Alert,
}

/// One message to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutboxEntry {
    pub(crate) kind: EntryKind,
    /// Chats still owed this message.
    pub(crate) chats: Vec<i64>,
    /// The text (a reply), or one alert line.
    pub(crate) text: String,
    /// Alerts with the same group are similar: coalesced into one line with a count.
    pub(crate) group: String,
    /// How many alerts this entry stands for (coalesced when the outbox was full).
    #[serde(default = "one")]
    pub(crate) count: u32,
    /// Chats with a send under way: written before the call, removed with its outcome. A
    /// successor that finds a chat here does not know whether Telegram got the message, so it
    /// sends it again marked as a possible repeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) sending: Vec<i64>,
    /// Buttons under the message (an alert that asks the operators something, e.g. to
    /// approve a failback): such an entry is sent alone, never coalesced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) buttons: Vec<Button>,
}

/// A button under a message: pressing it runs `data` as a command from the message's chat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Button {
    /// Its label.
    pub(crate) text: String,
    /// The command it runs (Telegram allows 1-64 bytes).
    pub(crate) data: String,
}

fn one() -> u32 {
    1
}

/// An outbox entry as read, with its key and creation revision (the delivery order).
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) key: String,
    pub(crate) created: u64,
    pub(crate) entry: OutboxEntry,
}

/// An operating command claimed by a holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Inflight {
    pub(crate) chat: i64,
    pub(crate) command: String,
}

/// How a takeover went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Takeover {
    /// The fence now holds this token.
    Taken,
    /// A higher token already took over: this term is stale.
    Stale(u64),
}

pub(crate) fn token_bytes(t: FencingToken) -> Vec<u8> {
    t.0.to_be_bytes().to_vec()
}

fn token_of(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if bytes.len() == 8 {
        b.copy_from_slice(bytes);
    }
    u64::from_be_bytes(b)
}

impl Store {
    pub(crate) fn new(coord: Arc<dyn Coord>, role: &str) -> Store {
        Store {
            coord,
            prefix: format!("quorate/telegram/{role}/"),
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    pub(crate) fn outbox_prefix(&self) -> String {
        self.key("outbox/")
    }

    pub(crate) fn outbox_key(&self, id: &str) -> String {
        self.key(&format!("outbox/{id}"))
    }

    pub(crate) fn inflight_key(&self, update: i64) -> String {
        self.key(&format!("inflight/{update:012}"))
    }

    pub(crate) fn offset_key(&self) -> String {
        self.key("offset")
    }

    /// Raises the fence to `token` unless a higher token holds it.
    pub(crate) async fn takeover(&self, token: FencingToken) -> Result<Takeover, TelegramError> {
        let fence = self.key("fence");
        let mine = token_bytes(token);
        let r = within(
            "a transaction",
            self.coord.txn(Txn {
                compares: vec![Compare {
                    key: fence.clone(),
                    op: CompareOp::Less,
                    target: CompareTarget::Value(mine.clone()),
                }],
                success: vec![put(&fence, mine.clone())],
                failure: vec![TxnOp::Get { key: fence.clone() }],
            }),
        )
        .await?;
        if r.succeeded {
            return Ok(Takeover::Taken);
        }
        let held = match r.results.first() {
            Some(TxnOpResult::Get(Some(kv))) => Some(token_of(&kv.value)),
            _ => None,
        };
        match held {
            Some(t) if t == token.0 => Ok(Takeover::Taken),
            Some(t) => Ok(Takeover::Stale(t)),
            None => {
                let r = within(
                    "a transaction",
                    self.coord.txn(Txn {
                        compares: vec![Compare::absent(fence.clone())],
                        success: vec![put(&fence, mine)],
                        failure: vec![TxnOp::Get { key: fence }],
                    }),
                )
                .await?;
                if r.succeeded {
                    return Ok(Takeover::Taken);
                }
                match r.results.first() {
                    Some(TxnOpResult::Get(Some(kv))) if token_of(&kv.value) == token.0 => {
                        Ok(Takeover::Taken)
                    }
                    Some(TxnOpResult::Get(Some(kv))) => Ok(Takeover::Stale(token_of(&kv.value))),
                    _ => Err(TelegramError::Store {
                        what: "taking the ingress over".into(),
                        reason: "the fence key vanished during the takeover".into(),
                    }),
                }
            }
        }
    }

    /// Runs `ops` if the fence still holds `token`; [`TelegramError::Fenced`] otherwise.
    pub(crate) async fn commit(
        &self,
        token: FencingToken,
        ops: Vec<TxnOp>,
    ) -> Result<(), TelegramError> {
        if ops.is_empty() {
            return Ok(());
        }
        let r = within(
            "a transaction",
            self.coord.txn(Txn {
                compares: vec![Compare::value_eq(self.key("fence"), token_bytes(token))],
                success: ops,
                failure: vec![],
            }),
        )
        .await?;
        if r.succeeded {
            Ok(())
        } else {
            Err(TelegramError::Fenced { token: token.0 })
        }
    }

    /// Writes `entry` under `outbox/<id>` unless an entry with that id exists (alerts are
    /// keyed by their event, so every node may report one event and it is queued once).
    /// Returns whether it was written.
    pub(crate) async fn put_if_absent(
        &self,
        id: &str,
        entry: &OutboxEntry,
    ) -> Result<bool, TelegramError> {
        let key = self.outbox_key(id);
        let r = within(
            "a transaction",
            self.coord.txn(Txn {
                compares: vec![Compare::absent(key.clone())],
                success: vec![put(&key, encode(entry))],
                failure: vec![],
            }),
        )
        .await?;
        Ok(r.succeeded)
    }

    pub(crate) async fn offset(&self) -> Result<OffsetRecord, TelegramError> {
        let r = within(
            "reading the offset",
            self.coord
                .get(&self.offset_key(), Consistency::Linearizable),
        )
        .await?;
        Ok(r.kv
            .and_then(|kv| serde_json::from_slice(&kv.value).ok())
            .unwrap_or_default())
    }

    async fn range(&self, prefix: String, limit: u32) -> Result<Vec<KeyValue>, TelegramError> {
        let mut req = RangeRequest::prefix(prefix);
        req.limit = Some(limit);
        Ok(within("reading a range", self.coord.range(req)).await?.kvs)
    }

    /// The outbox, oldest first (at most `limit` entries).
    pub(crate) async fn outbox(&self, limit: u32) -> Result<Vec<Stored>, TelegramError> {
        let mut out: Vec<Stored> = self
            .range(self.outbox_prefix(), limit)
            .await?
            .into_iter()
            .filter_map(|kv| {
                let entry = serde_json::from_slice(&kv.value).ok()?;
                Some(Stored {
                    key: kv.key,
                    created: kv.create_revision.0,
                    entry,
                })
            })
            .collect();
        out.sort_by_key(|s| s.created);
        Ok(out)
    }

    /// The claimed but unanswered operating commands.
    pub(crate) async fn inflight(&self) -> Result<Vec<(String, Inflight)>, TelegramError> {
        Ok(self
            .range(self.key("inflight/"), 1000)
            .await?
            .into_iter()
            .filter_map(|kv| Some((kv.key, serde_json::from_slice(&kv.value).ok()?)))
            .collect())
    }
}

/// The longest one store call may take before the caller treats it as failed (outcome
/// unknown for a write) and retries.
pub(crate) const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

async fn within<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, quorate_coord_api::CoordError>>,
) -> Result<T, TelegramError> {
    match tokio::time::timeout(STORE_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(TelegramError::Store {
            what: what.to_owned(),
            reason: format!(
                "no answer within {STORE_TIMEOUT:?} (a write may or may not have happened)"
            ),
        }),
    }
}

pub(crate) fn put(key: &str, value: Vec<u8>) -> TxnOp {
    TxnOp::Put {
        key: key.to_owned(),
        value,
        lease: None,
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}
