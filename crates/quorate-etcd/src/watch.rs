//! Watches: one etcd watch stream per [`Watcher`], re-opened on another endpoint from the
//! next revision when its stream breaks (at most `watch_reconnects_max` times in a row), and
//! ended with `Compacted` when etcd says the revision asked for is gone.
//!
//! The stream handed to users is pull-based: nothing is buffered beyond one etcd watch
//! response, and gRPC flow control holds etcd back while the user does not read (etcd then
//! keeps the watcher "unsynced" and catches it up from its history later).

use std::collections::VecDeque;
use std::sync::Arc;

use etcd_client::WatchOptions;
use futures::StreamExt;
use quorate_coord_api::{CoordError, Revision, WatchEvent, WatchStream};

use crate::convert::{self, prefix_end, prefix_start};
use crate::pool::{Pool, Repeat};

/// A watch of one key prefix from a known revision on.
pub(crate) struct Watcher {
    pool: Arc<Pool>,
    start: Vec<u8>,
    end: Vec<u8>,
    /// The revision the next event will have at least.
    next_rev: Revision,
    stream: Option<etcd_client::WatchStream>,
    reconnects_left: u32,
}

impl Watcher {
    /// Opens a watch of `prefix`: from `from` (replaying history), or from just after the
    /// current revision. Returns once etcd confirmed the watch, so every later change is
    /// delivered.
    pub(crate) async fn open(
        pool: Arc<Pool>,
        prefix: &str,
        from: Option<Revision>,
    ) -> Result<Watcher, CoordError> {
        let mut w = Watcher {
            reconnects_left: pool.config().watch_reconnects_max,
            pool,
            start: prefix_start(prefix),
            end: prefix_end(prefix.as_bytes()),
            next_rev: from.map_or(Revision(0), |r| r.max(Revision(1))),
            stream: None,
        };
        w.connect().await?;
        Ok(w)
    }

    async fn connect(&mut self) -> Result<(), CoordError> {
        let (start, end, from) = (self.start.clone(), self.end.clone(), self.next_rev);
        let (stream, created_rev) = self
            .pool
            .call("watch", Repeat::Safe, |mut c| {
                let (start, end) = (start.clone(), end.clone());
                async move {
                    let mut opts = WatchOptions::new().with_range(end);
                    if from.0 > 0 {
                        opts = opts.with_start_revision(convert::rev_i64(from));
                    }
                    let mut stream = c.watch(start, Some(opts)).await?;
                    // Wait for etcd to confirm the watch (its header is the revision then).
                    let created = stream.message().await?.ok_or_else(|| {
                        etcd_client::Error::WatchError("watch stream closed at creation".into())
                    })?;
                    if created.canceled() {
                        return Err(etcd_client::Error::WatchError(format!(
                            "watch canceled at creation: {}",
                            created.cancel_reason()
                        )));
                    }
                    Ok((stream, convert::header_rev(created.header())))
                }
            })
            .await?;
        self.stream = Some(stream);
        if self.next_rev.0 == 0 {
            self.next_rev = created_rev.next();
        } else if self.next_rev <= created_rev {
            // Replaying history: make sure it is still there, so the caller learns about
            // compaction now rather than from the first item.
            self.check_not_compacted().await?;
        }
        Ok(())
    }

    /// Fails with `Compacted` if `next_rev` is no longer in etcd's history.
    async fn check_not_compacted(&mut self) -> Result<(), CoordError> {
        let (start, end, at) = (self.start.clone(), self.end.clone(), self.next_rev);
        let probe = self
            .pool
            .call("watch history check", Repeat::Safe, |mut c| {
                let (start, end) = (start.clone(), end.clone());
                async move {
                    let opts = etcd_client::GetOptions::new()
                        .with_range(end)
                        .with_count_only()
                        .with_revision(convert::rev_i64(at));
                    c.get(start, Some(opts)).await
                }
            })
            .await;
        match probe {
            Err(CoordError::Compacted { .. }) => Err(self.compacted_error().await),
            _ => Ok(()),
        }
    }

    /// The `Compacted` error for `next_rev`, with etcd's compaction revision when it can be
    /// learned (a watch from a compacted revision is cancelled with it).
    async fn compacted_error(&mut self) -> CoordError {
        let requested = self.next_rev;
        let wait = self.pool.config().request_timeout;
        if let Some(stream) = self.stream.as_mut()
            && let Ok(Ok(Some(resp))) = tokio::time::timeout(wait, stream.message()).await
            && resp.compact_revision() > 0
        {
            return CoordError::Compacted {
                requested,
                compacted: Revision(convert::rev(resp.compact_revision()).0.saturating_sub(1)),
            };
        }
        // etcd did not say how far: at least the revision asked for is gone.
        CoordError::Compacted {
            requested,
            compacted: requested,
        }
    }

    /// The next changes (all of one etcd response, in revision order). Re-opens the watch on
    /// another endpoint if its stream broke.
    pub(crate) async fn next_batch(&mut self) -> Result<Vec<WatchEvent>, CoordError> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                self.reconnect().await?;
                continue;
            };
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        return Err(CoordError::Compacted {
                            requested: self.next_rev,
                            compacted: Revision(
                                convert::rev(resp.compact_revision()).0.saturating_sub(1),
                            ),
                        });
                    }
                    if resp.canceled() {
                        tracing::debug!(reason = resp.cancel_reason(), "etcd cancelled a watch");
                        self.stream = None;
                        continue;
                    }
                    if resp.events().is_empty() {
                        continue;
                    }
                    let batch = resp
                        .events()
                        .iter()
                        .map(convert::event)
                        .collect::<Result<Vec<_>, _>>()?;
                    if let Some(last) = batch.last() {
                        self.next_rev = last.revision().next();
                    }
                    self.reconnects_left = self.pool.config().watch_reconnects_max;
                    return Ok(batch);
                }
                Ok(None) | Err(_) => {
                    self.stream = None;
                }
            }
        }
    }

    async fn reconnect(&mut self) -> Result<(), CoordError> {
        if self.reconnects_left == 0 {
            return Err(CoordError::Unavailable {
                reason: format!(
                    "the watch broke {} times in a row (last at {}): check etcd, then watch again from that revision",
                    self.pool.config().watch_reconnects_max,
                    self.next_rev
                ),
            });
        }
        self.reconnects_left -= 1;
        tokio::time::sleep(self.pool.config().retry_backoff).await;
        self.connect().await
    }

    /// The watch as the contract's stream: events one by one; an error ends it.
    pub(crate) fn into_stream(self) -> WatchStream {
        struct State {
            watcher: Watcher,
            pending: VecDeque<WatchEvent>,
            done: bool,
        }
        let state = State {
            watcher: self,
            pending: VecDeque::new(),
            done: false,
        };
        futures::stream::unfold(state, |mut s| async move {
            if s.done {
                return None;
            }
            loop {
                if let Some(ev) = s.pending.pop_front() {
                    return Some((Ok(ev), s));
                }
                match s.watcher.next_batch().await {
                    Ok(batch) => s.pending.extend(batch),
                    Err(e) => {
                        s.done = true;
                        return Some((Err(e), s));
                    }
                }
            }
        })
        .boxed()
    }
}
