//! Alerts, as pure functions of their inputs: which node events become alerts
//! ([`AlertMapper`]), how fast messages may go out ([`Throttle`], Telegram's limits: about one
//! message a second per chat, 20 a minute per group, 30 a second in all, and any
//! `retry_after` Telegram asks for), and how pending alerts to one chat are coalesced into one
//! message ([`compose`]). Time comes in as a `Duration` since an arbitrary start.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use quorate_startup::NodeEvent;

use crate::store::{Button, EntryKind, OutboxEntry, Stored};

/// Telegram's limit on a button's callback data.
const CALLBACK_DATA_BYTES_MAX: usize = 64;

/// Telegram's message size limit is 4096 characters; stay below it.
pub(crate) const MESSAGE_CHARS_MAX: usize = 4000;

/// An alert to queue: its outbox id (the same on every node that reports the same event, so
/// it is queued once) and its entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Draft {
    pub(crate) id: String,
    pub(crate) entry: OutboxEntry,
}

/// Turns this node's events into alerts.
#[derive(Clone, Debug)]
pub(crate) struct AlertMapper {
    node: String,
    incarnation: u64,
    seq: u64,
    chats: Vec<i64>,
    quorum_lost_at: Option<Duration>,
}

/// `HH:MM:SS UTC` of a Unix time in milliseconds.
pub(crate) fn clock(unix_ms: u64) -> String {
    let s = (unix_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, (s / 60) % 60, s % 60)
}

impl AlertMapper {
    /// For `node` (this incarnation: a random number drawn at start, so that a restarted node
    /// does not reuse ids), alerting `chats`.
    pub(crate) fn new(node: String, incarnation: u64, chats: Vec<i64>) -> AlertMapper {
        AlertMapper {
            node,
            incarnation,
            seq: 0,
            chats,
            quorum_lost_at: None,
        }
    }

    fn local(&mut self, kind: &str, group: String, text: String) -> Draft {
        self.seq += 1;
        Draft {
            id: format!(
                "a-{kind}-{}-{:016x}-{:08}",
                self.node, self.incarnation, self.seq
            ),
            entry: self.entry(group, text),
        }
    }

    fn entry(&self, group: String, text: String) -> OutboxEntry {
        OutboxEntry {
            kind: EntryKind::Alert,
            chats: self.chats.clone(),
            text,
            group,
            count: 1,
            sending: Vec::new(),
            buttons: Vec::new(),
        }
    }

    /// The alert for `event` seen at `now` (monotonic) and `unix_ms` (wall clock, shown).
    pub(crate) fn map(&mut self, event: &NodeEvent, now: Duration, unix_ms: u64) -> Option<Draft> {
        let at = clock(unix_ms);
        let node = self.node.clone();
        match event {
            NodeEvent::RoleChange(c) => {
                // The new primary reports a promotion (it measured it, and it can write: it
                // holds a lease, so it sees a majority); the old one reports a lapse with no
                // successor.
                match (&c.new_primary, c.token) {
                    (Some(p), Some(t)) if *p == node => {
                        let mut text = format!(
                            "🔁 {}: {} → {p} ({}) at {at}",
                            c.role,
                            c.old_primary.as_deref().unwrap_or("none"),
                            c.cause
                        );
                        let total = c.detection_ms.unwrap_or(0) + c.promotion_ms.unwrap_or(0);
                        if c.detection_ms.is_some() || c.promotion_ms.is_some() {
                            let _ = write!(
                                text,
                                "; failover took {total} ms (detection {} ms, promotion {} ms)",
                                c.detection_ms.unwrap_or(0),
                                c.promotion_ms.unwrap_or(0)
                            );
                        }
                        Some(Draft {
                            id: format!("a-role-{}-{t:020}", c.role),
                            entry: self.entry(format!("role-{}", c.role), text),
                        })
                    }
                    (None, _) if c.old_primary.as_deref() == Some(node.as_str()) => {
                        let text = format!(
                            "⚠️ {}: {node} stopped acting as primary ({}) at {at}; no successor yet",
                            c.role, c.cause
                        );
                        Some(self.local("role", format!("role-{}", c.role), text))
                    }
                    _ => None,
                }
            }
            NodeEvent::Quorum {
                has_majority: false,
                voters_reachable,
            } => {
                self.quorum_lost_at.get_or_insert(now);
                let text = format!(
                    "⚠️ {node} lost the majority at {at}: it reaches {voters_reachable} voter(s); it gives up its roles until the majority is back"
                );
                Some(self.local("quorum", format!("quorum-{node}"), text))
            }
            NodeEvent::Quorum {
                has_majority: true, ..
            } => {
                let lost = self.quorum_lost_at.take()?;
                let text = format!(
                    "✅ {node} sees a majority again at {at} (after {:.1} s)",
                    now.saturating_sub(lost).as_secs_f64()
                );
                Some(self.local("quorum", format!("quorum-{node}"), text))
            }
            NodeEvent::Health { check, from, to } if to == "critical" || from == "critical" => {
                let text = if to == "critical" {
                    format!("🚨 {node}: check {check} is critical (was {from}) at {at}")
                } else {
                    format!("✅ {node}: check {check} is {to} again (was critical) at {at}")
                };
                Some(self.local("health", format!("health-{node}-{check}"), text))
            }
            NodeEvent::FailbackAwaitingApproval {
                role, primary, to, ..
            } if *primary == node => {
                // Only the primary reports it (once per wait), so a local id queues it once.
                let approve = format!("/failback {role} {to}");
                let postpone = format!("/postpone {role} 1h");
                let fits = |d: &str| !d.is_empty() && d.len() <= CALLBACK_DATA_BYTES_MAX;
                let mut draft = self.local(
                    "approval",
                    format!("approval-{role}"),
                    format!(
                        "🔔 {role}: failback from {primary} to {to} is due and waits for an operator's approval ({at}). Approve to hand the role to {to} now, or postpone automatic failbacks for an hour."
                    ),
                );
                if fits(&approve) && fits(&postpone) {
                    draft.entry.buttons = vec![
                        Button {
                            text: format!("✅ Approve failback to {to}"),
                            data: approve,
                        },
                        Button {
                            text: "⏸ Postpone 1 h".to_owned(),
                            data: postpone,
                        },
                    ];
                } else {
                    draft.entry.text.push_str(&format!(
                        " (names too long for buttons: send {approve} or {postpone})"
                    ));
                }
                Some(draft)
            }
            NodeEvent::ComponentFailed { component, reason } => {
                let text =
                    format!("🚨 {node}: {component} stopped ({reason}) at {at}; the node stops");
                Some(self.local("component", format!("component-{node}"), text))
            }
            _ => None,
        }
    }

    /// The alert for a 409 Conflict answered to this node's `getUpdates`: another process
    /// polls the bot's token (`conflicts` so far on this node).
    pub(crate) fn conflict(&mut self, detail: &str, conflicts: u64, unix_ms: u64) -> Draft {
        let node = self.node.clone();
        let text = format!(
            "🚨 split-brain suspicion: Telegram answered {node}'s getUpdates with 409 ({detail}) at {}: another process polls this bot's token ({conflicts} conflict(s) seen by {node})",
            clock(unix_ms)
        );
        self.local("conflict", format!("conflict-{node}"), text)
    }
}

/// Telegram's sending limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Shortest gap between two messages to one chat.
    pub(crate) chat_interval: Duration,
    /// Messages per minute to one group (a chat with a negative id).
    pub(crate) group_per_minute: u32,
    /// Messages per second in all.
    pub(crate) global_per_second: u32,
}

/// When the next message to a chat may go out.
#[derive(Clone, Debug)]
pub(crate) struct Throttle {
    limits: Limits,
    last: BTreeMap<i64, Duration>,
    group: BTreeMap<i64, VecDeque<Duration>>,
    global: VecDeque<Duration>,
    blocked: BTreeMap<i64, Duration>,
}

const MINUTE: Duration = Duration::from_secs(60);
const SECOND: Duration = Duration::from_secs(1);

impl Throttle {
    pub(crate) fn new(limits: Limits) -> Throttle {
        Throttle {
            limits,
            last: BTreeMap::new(),
            group: BTreeMap::new(),
            global: VecDeque::new(),
            blocked: BTreeMap::new(),
        }
    }

    /// The earliest time (>= `now`) a message to `chat` may be sent.
    pub(crate) fn ready_at(&self, chat: i64, now: Duration) -> Duration {
        let mut t = now;
        if let Some(last) = self.last.get(&chat) {
            t = t.max(*last + self.limits.chat_interval);
        }
        if let Some(b) = self.blocked.get(&chat) {
            t = t.max(*b);
        }
        if chat < 0
            && let Some(q) = self.group.get(&chat)
        {
            let in_window: Vec<&Duration> = q.iter().filter(|s| **s + MINUTE > now).collect();
            let max = self.limits.group_per_minute as usize;
            if in_window.len() >= max
                && let Some(oldest) = in_window.get(in_window.len() - max)
            {
                t = t.max(**oldest + MINUTE);
            }
        }
        let in_second: Vec<&Duration> = self.global.iter().filter(|s| **s + SECOND > now).collect();
        let max = self.limits.global_per_second as usize;
        if in_second.len() >= max
            && let Some(oldest) = in_second.get(in_second.len() - max)
        {
            t = t.max(**oldest + SECOND);
        }
        t
    }

    /// A message to `chat` went out at `now`.
    pub(crate) fn sent(&mut self, chat: i64, now: Duration) {
        self.last.insert(chat, now);
        self.global.push_back(now);
        while self.global.front().is_some_and(|s| *s + SECOND <= now) {
            self.global.pop_front();
        }
        if chat < 0 {
            let q = self.group.entry(chat).or_default();
            q.push_back(now);
            while q.front().is_some_and(|s| *s + MINUTE <= now) {
                q.pop_front();
            }
        }
    }

    /// Telegram asked to wait `d` before the next message to `chat` (429 `retry_after`).
    pub(crate) fn retry_after(&mut self, chat: i64, now: Duration, d: Duration) {
        let until = now + d;
        let b = self.blocked.entry(chat).or_insert(until);
        *b = (*b).max(until);
    }
}

/// The next message to `chat` from `pending` (oldest first): the oldest reply (or message with
/// buttons) alone, or else
/// every pending alert, similar ones (same group) coalesced into one line with a count, up to
/// [`MESSAGE_CHARS_MAX`] and at most `entries_max` entries. Returns the text and the keys of
/// the entries it covers; `None` when nothing is owed to `chat` or `entries_max` is 0.
pub(crate) fn compose(
    chat: i64,
    pending: &[Stored],
    entries_max: usize,
) -> Option<(String, Vec<String>)> {
    if entries_max == 0 {
        return None;
    }
    let owed: Vec<&Stored> = pending
        .iter()
        .filter(|s| s.entry.chats.contains(&chat))
        .collect();
    let first = owed.first()?;
    let mark = |s: &Stored| {
        if s.entry.sending.contains(&chat) {
            "(this may repeat a message sent just before a failover of the bot)\n"
        } else {
            ""
        }
    };
    if first.entry.kind == EntryKind::Reply || !first.entry.buttons.is_empty() {
        let text: String = format!("{}{}", mark(first), first.entry.text)
            .chars()
            .take(MESSAGE_CHARS_MAX)
            .collect();
        return Some((text, vec![first.key.clone()]));
    }
    // Alerts, up to the next reply (a reply keeps its place in the order).
    let alerts: Vec<&Stored> = owed
        .iter()
        .take_while(|s| s.entry.kind == EntryKind::Alert && s.entry.buttons.is_empty())
        .take(entries_max)
        .copied()
        .collect();
    let mut groups: Vec<(&str, Vec<&Stored>)> = Vec::new();
    for a in &alerts {
        match groups.iter_mut().find(|(g, _)| *g == a.entry.group) {
            Some((_, v)) => v.push(a),
            None => groups.push((a.entry.group.as_str(), vec![a])),
        }
    }
    let mut text = String::new();
    let mut keys = Vec::new();
    let mut repeat = false;
    for (_, members) in groups {
        let count: u32 = members.iter().map(|m| m.entry.count).sum();
        let Some(last) = members.last() else {
            continue;
        };
        let line = if count > 1 {
            format!("{} (and {} similar before it)", last.entry.text, count - 1)
        } else {
            last.entry.text.clone()
        };
        let line: String = line.chars().take(MESSAGE_CHARS_MAX / 2).collect();
        if !text.is_empty()
            && text.chars().count() + line.chars().count() + 1 > MESSAGE_CHARS_MAX - 80
        {
            break;
        }
        repeat |= members.iter().any(|m| !mark(m).is_empty());
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&line);
        keys.extend(members.iter().map(|m| m.key.clone()));
    }
    if repeat {
        text.insert_str(
            0,
            "(this may repeat a message sent just before a failover of the bot)\n",
        );
    }
    Some((text, keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_startup::report::RoleChangeEvent;

    fn limits() -> Limits {
        Limits {
            chat_interval: SECOND,
            group_per_minute: 20,
            global_per_second: 30,
        }
    }

    fn alert(key: &str, group: &str, chats: Vec<i64>, created: u64) -> Stored {
        Stored {
            key: key.into(),
            created,
            entry: OutboxEntry {
                kind: EntryKind::Alert,
                chats,
                text: format!("alert {key}"),
                group: group.into(),
                count: 1,
                sending: Vec::new(),
                buttons: Vec::new(),
            },
        }
    }

    /// A burst of 100 alerts to one private chat and one group, sent by a loop that obeys the
    /// throttle on virtual time: every alert is delivered to both chats (each message's keys
    /// are acknowledged for that chat), no two messages to a chat are closer than the chat
    /// interval, a group never gets more than 20 in any minute, and coalescing keeps the
    /// message count far below the alert count.
    #[test]
    fn a_burst_of_100_alerts_is_delivered_within_the_limits_and_nothing_is_lost() {
        let chats = [7_i64, -1005];
        let mut pending: Vec<Stored> = Vec::new();
        let mut t = Throttle::new(limits());
        let mut sent: Vec<(i64, Duration, Vec<String>)> = Vec::new();
        let mut now = Duration::ZERO;
        let mut next_alert = 0u64;
        // 100 alerts arrive 10 ms apart, in 7 groups; the loop runs every 10 ms of virtual time.
        while next_alert < 100 || !pending.is_empty() {
            if next_alert < 100 {
                let g = format!("g{}", next_alert % 7);
                pending.push(alert(
                    &format!("k{next_alert:03}"),
                    &g,
                    chats.to_vec(),
                    next_alert,
                ));
                next_alert += 1;
            }
            for chat in chats {
                if t.ready_at(chat, now) <= now
                    && let Some((_, keys)) = compose(chat, &pending, usize::MAX)
                {
                    t.sent(chat, now);
                    for s in pending.iter_mut().filter(|s| keys.contains(&s.key)) {
                        s.entry.chats.retain(|c| *c != chat);
                    }
                    pending.retain(|s| !s.entry.chats.is_empty());
                    sent.push((chat, now, keys));
                }
            }
            now += Duration::from_millis(10);
            assert!(now < Duration::from_secs(600), "the burst never drained");
        }
        for chat in chats {
            let mine: Vec<_> = sent.iter().filter(|(c, _, _)| *c == chat).collect();
            let mut keys: Vec<&String> = mine.iter().flat_map(|(_, _, k)| k).collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), 100, "chat {chat}: every alert delivered once");
            let delivered: usize = mine.iter().map(|(_, _, k)| k.len()).sum();
            assert_eq!(delivered, 100, "chat {chat}: no alert delivered twice");
            for w in mine.windows(2) {
                assert!(
                    w[1].1 - w[0].1 >= SECOND,
                    "chat {chat}: {:?}",
                    (w[0].1, w[1].1)
                );
            }
            if chat < 0 {
                for (i, m) in mine.iter().enumerate() {
                    let in_minute = mine[i..].iter().filter(|x| x.1 < m.1 + MINUTE).count();
                    assert!(in_minute <= 20, "group: {in_minute} in a minute");
                }
            }
            assert!(
                mine.len() < 10,
                "chat {chat}: {} messages: not coalesced",
                mine.len()
            );
        }
    }

    #[test]
    fn retry_after_and_group_limits_push_the_next_send_back() {
        let mut t = Throttle::new(Limits {
            chat_interval: Duration::from_millis(10),
            group_per_minute: 3,
            global_per_second: 30,
        });
        let g = -42;
        for i in 0..3 {
            let now = Duration::from_secs(i);
            assert_eq!(t.ready_at(g, now), now);
            t.sent(g, now);
        }
        // The fourth message in the minute waits for the first to leave the window.
        assert_eq!(
            t.ready_at(g, Duration::from_secs(3)),
            Duration::from_secs(60)
        );
        // A private chat is not limited per minute, but honours retry_after.
        t.retry_after(5, Duration::from_secs(3), Duration::from_secs(7));
        assert_eq!(
            t.ready_at(5, Duration::from_secs(4)),
            Duration::from_secs(10)
        );
        // Global: 30 a second.
        let mut t = Throttle::new(limits());
        for c in 0..30 {
            t.sent(c, Duration::ZERO);
        }
        assert_eq!(t.ready_at(99, Duration::from_millis(500)), SECOND);
    }

    #[test]
    fn a_reply_goes_alone_and_alerts_coalesce_by_group() {
        let mut reply = alert("r1", "", vec![1], 5);
        reply.entry.kind = EntryKind::Reply;
        reply.entry.text = "pong".into();
        let pending = vec![
            alert("a1", "health-n1-db", vec![1], 1),
            alert("a2", "health-n1-db", vec![1], 2),
            alert("a3", "role-app", vec![1, 2], 3),
            reply,
        ];
        let (text, keys) = compose(1, &pending, usize::MAX).expect("owed");
        assert_eq!(keys, vec!["a1", "a2", "a3"]);
        assert!(
            text.contains("alert a2 (and 1 similar before it)"),
            "{text}"
        );
        assert!(text.contains("alert a3"), "{text}");
        let (text, keys) = compose(1, &pending[3..], usize::MAX).expect("owed");
        assert_eq!((text.as_str(), keys), ("pong", vec!["r1".to_owned()]));
        assert_eq!(compose(3, &pending, usize::MAX), None);
        // A transaction's size bounds how many entries one message covers.
        let (_, keys) = compose(1, &pending, 2).expect("owed");
        assert_eq!(keys, vec!["a1", "a2"]);
    }

    #[test]
    fn events_map_to_alerts_once_per_event() {
        let mut m = AlertMapper::new("n2".into(), 9, vec![1]);
        let change = NodeEvent::RoleChange(RoleChangeEvent {
            role: "app".into(),
            old_primary: Some("n1".into()),
            new_primary: Some("n2".into()),
            cause: "primary lease expired".into(),
            token: Some(41),
            detection_ms: Some(600),
            promotion_ms: Some(20),
            at_ms: 0,
        });
        let d = m.map(&change, Duration::ZERO, 3_600_000).expect("alert");
        assert_eq!(d.id, "a-role-app-00000000000000000041");
        assert!(d.entry.text.contains("n1 → n2"), "{}", d.entry.text);
        assert!(
            d.entry.text.contains("failover took 620 ms"),
            "{}",
            d.entry.text
        );
        assert!(d.entry.text.contains("01:00:00 UTC"), "{}", d.entry.text);
        // Another node's promotion is reported by that node, not this one.
        let mut other = AlertMapper::new("n3".into(), 1, vec![1]);
        assert_eq!(other.map(&change, Duration::ZERO, 0), None);
        let lost = NodeEvent::Quorum {
            has_majority: false,
            voters_reachable: 1,
        };
        let back = NodeEvent::Quorum {
            has_majority: true,
            voters_reachable: 3,
        };
        assert!(m.map(&lost, Duration::from_secs(1), 0).is_some());
        let d = m.map(&back, Duration::from_secs(13), 0).expect("regained");
        assert!(d.entry.text.contains("after 12.0 s"), "{}", d.entry.text);
        // Regained without a loss seen: nothing to say.
        assert_eq!(m.map(&back, Duration::from_secs(14), 0), None);
        let crit = NodeEvent::Health {
            check: "db".into(),
            from: "passing".into(),
            to: "critical".into(),
        };
        let warn = NodeEvent::Health {
            check: "db".into(),
            from: "passing".into(),
            to: "warning".into(),
        };
        assert!(m.map(&crit, Duration::ZERO, 0).is_some());
        assert_eq!(m.map(&warn, Duration::ZERO, 0), None);
        let a = m.map(&crit, Duration::ZERO, 0).expect("alert");
        let b = m.map(&crit, Duration::ZERO, 0).expect("alert");
        assert_ne!(a.id, b.id, "each local event gets its own id");
        assert_eq!(a.entry.group, b.entry.group);
    }

    #[test]
    fn a_failback_awaiting_approval_asks_with_buttons_and_goes_alone() {
        let waiting = |role: &str, primary: &str| NodeEvent::FailbackAwaitingApproval {
            role: role.into(),
            primary: primary.into(),
            to: "n1".into(),
            token: Some(7),
        };
        let mut m = AlertMapper::new("n2".into(), 9, vec![1]);
        // Only the primary asks.
        assert_eq!(m.map(&waiting("app", "n3"), Duration::ZERO, 0), None);
        let d = m
            .map(&waiting("app", "n2"), Duration::ZERO, 0)
            .expect("prompt");
        assert!(
            d.entry.text.contains("failback from n2 to n1"),
            "{}",
            d.entry.text
        );
        let data: Vec<&str> = d.entry.buttons.iter().map(|b| b.data.as_str()).collect();
        assert_eq!(data, ["/failback app n1", "/postpone app 1h"]);
        // Each button runs a command the bot understands.
        for b in &d.entry.buttons {
            assert!(crate::commands::parse(&b.data).is_ok(), "{}", b.data);
        }
        // It is never coalesced with the alerts around it.
        let prompt = Stored {
            key: "p".into(),
            created: 2,
            entry: d.entry.clone(),
        };
        let pending = vec![
            alert("a1", "g", vec![1], 1),
            prompt,
            alert("a2", "g", vec![1], 3),
        ];
        assert_eq!(compose(1, &pending, usize::MAX).expect("owed").1, ["a1"]);
        assert_eq!(
            compose(1, &pending[1..], usize::MAX).expect("owed").1,
            ["p"]
        );
        // Names too long for Telegram's 64-byte callback data: no buttons, the commands
        // are spelt out instead.
        let long = "r".repeat(60);
        let d = m
            .map(&waiting(&long, "n2"), Duration::ZERO, 0)
            .expect("prompt");
        assert!(d.entry.buttons.is_empty());
        assert!(
            d.entry.text.contains(&format!("/failback {long} n1")),
            "{}",
            d.entry.text
        );
    }
}
