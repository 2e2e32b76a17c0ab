//! `/metrics`: one prometheus-client registry per API (no globals), OpenMetrics text. Gauges
//! are refreshed from the node's components at each scrape; counters and histograms grow from
//! the tracker (coordination leader changes, committed entries), the roles' histories
//! (failover durations) and the admin calls. Labels are bounded: role names, check ids, member
//! states and admin operations, all from the config or fixed sets.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use quorate_health_api::HealthStatus;
use quorate_membership_api::{MemberState, SplitBrainStatus};
use quorate_startup::NodeContext;
use quorate_startup::sources::{MetricKind, MetricSample};
use quorate_types::latency::LatencySnapshot;

/// A role label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RoleLabel {
    pub(crate) role: String,
}

/// A health check and one of its possible statuses.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CheckLabel {
    pub(crate) check: String,
    pub(crate) status: String,
}

/// A member state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub(crate) state: String,
}

/// An admin operation and its HTTP status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AdminLabel {
    pub(crate) op: String,
    pub(crate) code: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// Fixed-bucket latencies kept by the node (the roles' lease renewals, the store's requests per
/// operation), encoded as a histogram and a failure counter with one label; filled at each
/// scrape before encoding.
#[derive(Debug)]
struct LatencyCollector {
    name: &'static str,
    help: &'static str,
    failures: &'static str,
    failures_help: &'static str,
    label: &'static str,
    series: Mutex<Vec<(String, LatencySnapshot)>>,
}

impl LatencyCollector {
    fn new(
        name: &'static str,
        help: &'static str,
        (failures, failures_help): (&'static str, &'static str),
        label: &'static str,
    ) -> Self {
        Self {
            name,
            help,
            failures,
            failures_help,
            label,
            series: Mutex::new(Vec::new()),
        }
    }

    fn set(&self, series: Vec<(String, LatencySnapshot)>) {
        *self.series.lock().unwrap_or_else(|e| e.into_inner()) = series;
    }
}

impl Collector for LatencyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let series = self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut m = encoder.encode_descriptor(
            self.name,
            self.help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (value, snap) in &series {
            // prometheus-client takes per-bucket counts, with f64::MAX for +Inf.
            let mut prev = 0;
            let buckets: Vec<(f64, u64)> = snap
                .buckets
                .iter()
                .map(|(bound, cum)| {
                    let n = cum.saturating_sub(prev);
                    prev = *cum;
                    (if bound.is_finite() { *bound } else { f64::MAX }, n)
                })
                .collect();
            let label = [(self.label, value.as_str())];
            m.encode_family(&label)?.encode_histogram::<NoLabelSet>(
                snap.sum_seconds,
                snap.count,
                &buckets,
                None,
            )?;
        }
        let mut f = encoder.encode_descriptor(
            self.failures,
            self.failures_help,
            None,
            MetricType::Counter,
        )?;
        for (value, snap) in &series {
            let label = [(self.label, value.as_str())];
            ConstCounter::new(snap.failed).encode(f.encode_family(&label)?)?;
        }
        Ok(())
    }
}

/// Counters kept by a component (atomics it owns), copied in at each scrape and encoded as
/// one counter family with one label.
#[derive(Debug)]
struct CountCollector {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    series: Mutex<Vec<(&'static str, u64)>>,
}

impl CountCollector {
    fn set(&self, series: Vec<(&'static str, u64)>) {
        *self.series.lock().unwrap_or_else(|e| e.into_inner()) = series;
    }
}

impl Collector for CountCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let series = self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut f = encoder.encode_descriptor(self.name, self.help, None, MetricType::Counter)?;
        for (value, n) in &series {
            let label = [(self.label, *value)];
            ConstCounter::new(*n).encode(f.encode_family(&label)?)?;
        }
        Ok(())
    }
}

/// The plug-ins' samples (`NodeContext::metric_sources`), copied in at each scrape and encoded
/// one family at a time (help and kind from its first sample).
#[derive(Debug, Default)]
struct SourceCollector {
    samples: Mutex<Vec<MetricSample>>,
}

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut families: BTreeMap<&'static str, Vec<&MetricSample>> = BTreeMap::new();
        for s in &samples {
            families.entry(s.family).or_default().push(s);
        }
        for (family, series) in families {
            let Some(first) = series.first() else {
                continue;
            };
            let kind = first.kind;
            let mt = match kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
            };
            let mut f = encoder.encode_descriptor(family, first.help, None, mt)?;
            for s in series.iter().filter(|s| s.kind == kind) {
                let labels: Vec<(&str, &str)> =
                    s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let e = f.encode_family(&labels)?;
                match kind {
                    MetricKind::Counter => ConstCounter::new(s.value as u64).encode(e)?,
                    MetricKind::Gauge => ConstGauge::new(s.value).encode(e)?,
                }
            }
        }
        Ok(())
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
    ])
}

/// The API's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    has_leader: Gauge,
    is_leader: Gauge,
    term: Gauge,
    pub(crate) leader_changes: Counter,
    pub(crate) committed: Counter,
    quorum_contact_age: FGauge,
    role_primary: Family<RoleLabel, Gauge>,
    role_has_primary: Family<RoleLabel, Gauge>,
    role_token: Family<RoleLabel, Gauge>,
    role_lease_remaining: Family<RoleLabel, FGauge>,
    role_lease_ttl: Family<RoleLabel, FGauge>,
    role_changes: Family<RoleLabel, Counter>,
    role_lag: Family<RoleLabel, Gauge>,
    failover_duration: Family<RoleLabel, Histogram>,
    health_check: Family<CheckLabel, Gauge>,
    health_healthy: Gauge,
    members: Family<StateLabel, Gauge>,
    has_majority: Gauge,
    voters_reachable: Gauge,
    voters: Gauge,
    split_brain: Gauge,
    ready: Gauge,
    pub(crate) admin_requests: Family<AdminLabel, Counter>,
    renews: Arc<LatencyCollector>,
    requests: Arc<LatencyCollector>,
    raft_inbound: Arc<CountCollector>,
    raft_elections: Arc<CountCollector>,
    sources: Arc<SourceCollector>,
    /// Per role: the `at` of the last history entry counted.
    history_cursor: Mutex<BTreeMap<String, Option<std::time::Duration>>>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("quorate");
        let m = Metrics {
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            term: Gauge::default(),
            leader_changes: Counter::default(),
            committed: Counter::default(),
            quorum_contact_age: FGauge::default(),
            role_primary: Family::default(),
            role_has_primary: Family::default(),
            role_token: Family::default(),
            role_lease_remaining: Family::default(),
            role_lease_ttl: Family::default(),
            role_changes: Family::default(),
            role_lag: Family::default(),
            failover_duration: Family::new_with_constructor(duration_histogram),
            health_check: Family::default(),
            health_healthy: Gauge::default(),
            members: Family::default(),
            has_majority: Gauge::default(),
            voters_reachable: Gauge::default(),
            voters: Gauge::default(),
            split_brain: Gauge::default(),
            ready: Gauge::default(),
            admin_requests: Family::default(),
            history_cursor: Mutex::new(BTreeMap::new()),
            renews: Arc::new(LatencyCollector::new(
                "role_lease_renew_latency",
                "Round trip of each acknowledged lease renewal while this node holds the role",
                (
                    "role_lease_renew_failures",
                    "Lease renewals that failed or timed out while this node held the role",
                ),
                "role",
            )),
            sources: Arc::new(SourceCollector::default()),
            raft_inbound: Arc::new(CountCollector {
                name: "raft_inbound_events",
                help: "This node's Raft port: connections accepted, refused (per address, full), \
                       evicted, timed out before authenticating or sending; frames rejected; \
                       client-key messages refused; client requests; warning lines written and \
                       suppressed",
                label: "event",
                series: Mutex::new(Vec::new()),
            }),
            raft_elections: Arc::new(CountCollector {
                name: "raft_election_events",
                help: "This node's Raft elector: pre-vote rounds started and won, elections \
                       started, peers' pre-votes granted and refused",
                label: "event",
                series: Mutex::new(Vec::new()),
            }),
            requests: Arc::new(LatencyCollector::new(
                "coordination_request_duration",
                "This node's answered requests to its coordination store, by operation \
                 (for writes: proposal to applied answer, the commit latency it sees; lock \
                 and campaign include the wait in the queue)",
                (
                    "coordination_request_failures",
                    "This node's requests to its coordination store that failed, by operation",
                ),
                "op",
            )),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "coordination_has_leader",
            "1 when this node knows a coordination (Raft) leader",
            m.has_leader.clone(),
        );
        r.register(
            "coordination_is_leader",
            "1 when this node is the coordination (Raft) leader",
            m.is_leader.clone(),
        );
        r.register(
            "coordination_term",
            "The coordination (Raft) term",
            m.term.clone(),
        );
        r.register(
            "coordination_leader_changes_seen",
            "Coordination leader changes this node has seen",
            m.leader_changes.clone(),
        );
        r.register(
            "coordination_committed_entries",
            "Log entries committed (proposals that reached a majority) as this node saw them",
            m.committed.clone(),
        );
        r.register_with_unit(
            "coordination_quorum_contact_age",
            "On the leader: time since a quorum last acknowledged it",
            Unit::Seconds,
            m.quorum_contact_age.clone(),
        );
        r.register(
            "role_primary",
            "1 when this node acts as primary of the role (lease valid)",
            m.role_primary.clone(),
        );
        r.register(
            "role_has_primary",
            "1 when this node sees a primary for the role",
            m.role_has_primary.clone(),
        );
        r.register(
            "role_fencing_token",
            "The fencing token of this node's term, while it acts as primary",
            m.role_token.clone(),
        );
        r.register_with_unit(
            "role_lease_remaining",
            "While this node acts as primary: lease validity left on its own clock",
            Unit::Seconds,
            m.role_lease_remaining.clone(),
        );
        r.register_with_unit(
            "role_lease_ttl",
            "The role's lease TTL",
            Unit::Seconds,
            m.role_lease_ttl.clone(),
        );
        r.register(
            "role_changes",
            "Primary changes of the role recorded by this node",
            m.role_changes.clone(),
        );
        r.register(
            "role_replication_lag",
            "This node's replication lag behind the role's primary, in its lag source's unit \
             (Redis: replication offset bytes; leader-mode keyspaces: entries); only for roles \
             with a lag source, and only while the lag is known",
            m.role_lag.clone(),
        );
        r.register_with_unit(
            "role_failover_duration",
            "Detection plus promotion of each change this node was promoted in",
            Unit::Seconds,
            m.failover_duration.clone(),
        );
        r.register(
            "health_check_status",
            "1 for the current status of each health check (passing, warning, unknown, critical)",
            m.health_check.clone(),
        );
        r.register(
            "health_healthy",
            "1 when this node's aggregated health is passing or warning",
            m.health_healthy.clone(),
        );
        r.register(
            "membership_members",
            "Members this node knows, by state",
            m.members.clone(),
        );
        r.register(
            "membership_has_majority",
            "1 when this node sees a majority of the voters",
            m.has_majority.clone(),
        );
        r.register(
            "membership_voters_reachable",
            "Voters this node reaches (itself included)",
            m.voters_reachable.clone(),
        );
        r.register("membership_voters", "Voters configured", m.voters.clone());
        r.register(
            "membership_split_brain",
            "1 when this node is in a minority or sees conflicting majority claims",
            m.split_brain.clone(),
        );
        r.register(
            "node_ready",
            "1 when every startup stage is ready",
            m.ready.clone(),
        );
        r.register(
            "api_admin_requests",
            "Admin calls over HTTP, by operation and status code",
            m.admin_requests.clone(),
        );
        r.register_collector(Box::new(Arc::clone(&m.renews)));
        r.register_collector(Box::new(Arc::clone(&m.requests)));
        r.register_collector(Box::new(Arc::clone(&m.raft_inbound)));
        r.register_collector(Box::new(Arc::clone(&m.raft_elections)));
        r.register_collector(Box::new(Arc::clone(&m.sources)));
        Metrics { registry, ..m }
    }

    /// Refreshes the gauges from the node and encodes everything.
    pub(crate) async fn render(&self, ctx: &NodeContext) -> Result<String, std::fmt::Error> {
        self.refresh(ctx).await;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// [`Metrics::render`] in the Prometheus text format 0.0.4, for scrapers that do not ask
    /// for OpenMetrics (`promtool check metrics`, curl): counters' `HELP` and `TYPE` name the
    /// `_total` series, and the `UNIT` and `EOF` lines go.
    pub(crate) async fn render_prometheus(
        &self,
        ctx: &NodeContext,
    ) -> Result<String, std::fmt::Error> {
        Ok(to_prometheus_text(&self.render(ctx).await?))
    }

    async fn refresh(&self, ctx: &NodeContext) {
        let b = |x: bool| i64::from(x);
        let as_i64 = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        if let Ok(c) = ctx.coord.status().await {
            self.has_leader.set(b(c.leader.is_some()));
            self.is_leader.set(b(c.is_leader()));
            self.term.set(as_i64(c.term));
            self.quorum_contact_age
                .set(c.quorum_contact_age.map_or(0.0, |d| d.as_secs_f64()));
        } else {
            self.has_leader.set(0);
            self.is_leader.set(0);
        }
        let wan = ctx.config.profile.is_wan();
        for (section, role) in ctx.config.raw.roles.iter().zip(&ctx.config.roles) {
            let l = RoleLabel {
                role: role.to_string(),
            };
            self.role_lease_ttl
                .get_or_create(&l)
                .set(section.role_config(wan).lease.ttl.as_secs_f64());
            let status = ctx.failover.status(role).map(|s| s.borrow().clone());
            let primary = ctx.failover.primary(role).map(|p| p.borrow().clone());
            let acting = match &primary {
                Ok(Some(p)) if p.is_valid() => Some(p.clone()),
                _ => None,
            };
            self.role_primary.get_or_create(&l).set(b(acting.is_some()));
            self.role_has_primary
                .get_or_create(&l)
                .set(b(status.as_ref().is_ok_and(|s| s.primary.is_some())));
            self.role_token
                .get_or_create(&l)
                .set(acting.as_ref().map_or(0, |p| as_i64(p.token().0)));
            self.role_lease_remaining
                .get_or_create(&l)
                .set(acting.as_ref().map_or(0.0, |p| {
                    p.valid_until().saturating_sub(p.now()).as_secs_f64()
                }));
            // The lag as the failover policy sees it (what decides candidacy).
            let explained = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                ctx.failover.explain(role),
            )
            .await;
            let lag = match explained {
                Ok(Ok(e)) => e
                    .nodes
                    .iter()
                    .find(|n| n.id == ctx.config.node_id)
                    .and_then(|n| n.lag),
                _ => None,
            };
            match lag {
                Some(lag) => {
                    self.role_lag.get_or_create(&l).set(as_i64(lag));
                }
                None => {
                    self.role_lag.remove(&l);
                }
            }
            if let Ok(h) = ctx.failover.history(role) {
                let mut cursors = self
                    .history_cursor
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let cursor = cursors.entry(role.to_string()).or_insert(None);
                for c in h.iter() {
                    if cursor.is_some_and(|at| c.at <= at) {
                        continue;
                    }
                    self.role_changes.get_or_create(&l).inc();
                    if let (Some(d), Some(p)) = (c.detection, c.promotion) {
                        self.failover_duration
                            .get_or_create(&l)
                            .observe(d.saturating_add(p).as_secs_f64());
                    }
                    *cursor = Some(c.at);
                }
            }
        }
        let renews = ctx
            .config
            .roles
            .iter()
            .filter_map(|r| Some((r.to_string(), ctx.failover.renew_stats(r).ok()?)))
            .collect();
        self.renews.set(renews);
        self.raft_inbound.set(ctx.raft_inbound.counts().to_vec());
        self.raft_elections
            .set(ctx.raft_elections.counts().to_vec());
        let samples = ctx.metric_sources.collect().await;
        *self
            .sources
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = samples;
        self.requests.set(
            ctx.coord_stats
                .snapshot()
                .into_iter()
                .map(|(op, snap)| (op.to_owned(), snap))
                .collect(),
        );
        let h = ctx.health.snapshot();
        self.health_healthy.set(b(matches!(
            h.status,
            HealthStatus::Passing | HealthStatus::Warning
        )));
        for (id, c) in &h.checks {
            for s in HealthStatus::ALL {
                self.health_check
                    .get_or_create(&CheckLabel {
                        check: id.to_string(),
                        status: s.as_str().to_owned(),
                    })
                    .set(b(c.status == s));
            }
        }
        let m = ctx.membership.snapshot();
        for (state, name) in [
            (MemberState::Alive, "alive"),
            (MemberState::Suspect, "suspect"),
            (MemberState::Down, "down"),
            (MemberState::Left, "left"),
        ] {
            let n = m.members.iter().filter(|x| x.state == state).count();
            self.members
                .get_or_create(&StateLabel {
                    state: name.to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.has_majority.set(b(m.quorum.has_majority));
        self.voters_reachable
            .set(i64::try_from(m.quorum.voters_reachable).unwrap_or(i64::MAX));
        self.voters
            .set(i64::try_from(m.quorum.voters_known).unwrap_or(i64::MAX));
        self.split_brain.set(b(matches!(
            m.split_brain,
            SplitBrainStatus::InMinority { .. } | SplitBrainStatus::ConflictingViews { .. }
        )));
        self.ready.set(b(*ctx.ready.borrow()));
    }
}

/// OpenMetrics text (as prometheus-client writes it) to the Prometheus text format 0.0.4.
pub(crate) fn to_prometheus_text(om: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    /// Plug-ins' samples come out one family each, with their labels, counters as `_total`.
    #[test]
    fn plugin_samples_are_encoded_by_family() {
        let c = SourceCollector::default();
        let ks = |n: &str| vec![("keyspace", n.to_owned())];
        *c.samples.lock().unwrap() = vec![
            MetricSample::counter("replication_local_writes", "Writes", ks("a"), 3),
            MetricSample::gauge("replication_keys", "Keys", ks("a"), 2.0),
            MetricSample::counter("replication_local_writes", "Writes", ks("b"), 5),
        ];
        let mut r = Registry::with_prefix("quorate");
        r.register_collector(Box::new(c));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for line in [
            "# TYPE quorate_replication_local_writes counter",
            "quorate_replication_local_writes_total{keyspace=\"a\"} 3",
            "quorate_replication_local_writes_total{keyspace=\"b\"} 5",
            "# TYPE quorate_replication_keys gauge",
            "quorate_replication_keys{keyspace=\"a\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE quorate_replication_local_writes")
                .count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let om = "# HELP x_changes Changes.\n# TYPE x_changes counter\nx_changes_total 3\n\
                  # HELP x_age_seconds Age.\n# TYPE x_age_seconds gauge\n# UNIT x_age_seconds seconds\n\
                  x_age_seconds 0.5\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP x_changes_total Changes.\n# TYPE x_changes_total counter\nx_changes_total 3\n\
             # HELP x_age_seconds Age.\n# TYPE x_age_seconds gauge\nx_age_seconds 0.5\n"
        );
    }
}
