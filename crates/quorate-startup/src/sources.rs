//! Metrics of the node's plug-ins: a plug-in (e.g. the replication stage) registers a
//! [`MetricSource`] in [`NodeContext::metric_sources`](crate::NodeContext); the node's metrics
//! exporter (quorate-api's `/metrics`) reads every source at each scrape. No metrics library
//! is linked here: a sample is plain data.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

/// One sample: a family (its name without the `quorate_` prefix, and for a counter without
/// `_total`), its help text and kind, the labels of this series and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSample {
    /// The family, e.g. `replication_conflicts`.
    pub family: &'static str,
    /// One line of help (the same for every sample of a family).
    pub help: &'static str,
    /// A counter (only grows) or a gauge.
    pub kind: MetricKind,
    /// The series' labels (bounded: names from the config or fixed sets).
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

/// A sample's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows (exported with `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl MetricSample {
    /// A counter sample.
    pub fn counter(
        family: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: u64,
    ) -> Self {
        Self {
            family,
            help,
            kind: MetricKind::Counter,
            labels,
            value: value as f64,
        }
    }

    /// A gauge sample.
    pub fn gauge(
        family: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) -> Self {
        Self {
            family,
            help,
            kind: MetricKind::Gauge,
            labels,
            value,
        }
    }
}

/// Something that reports samples when the exporter asks.
#[async_trait]
pub trait MetricSource: Send + Sync {
    /// The samples now (read from the component; nothing is cached here).
    async fn samples(&self) -> Vec<MetricSample>;
}

/// A registered source and its name.
type Named = (String, Arc<dyn MetricSource>);

/// The node's registered sources, by name. Cheap to clone; clones share the list.
#[derive(Clone, Default)]
pub struct MetricSources(Arc<Mutex<Vec<Named>>>);

impl std::fmt::Debug for MetricSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.list().into_iter().map(|(n, _)| n).collect();
        f.debug_tuple("MetricSources").field(&names).finish()
    }
}

impl MetricSources {
    /// Registers `source` under `name`, replacing one of that name (a plug-in started again).
    pub fn register(&self, name: &str, source: Arc<dyn MetricSource>) {
        let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        l.retain(|(n, _)| n != name);
        l.push((name.to_owned(), source));
    }

    fn list(&self) -> Vec<Named> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every source's samples, in registration order.
    pub async fn collect(&self) -> Vec<MetricSample> {
        let mut out = Vec::new();
        for (_, s) in self.list() {
            out.extend(s.samples().await);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u64);

    #[async_trait]
    impl MetricSource for Fixed {
        async fn samples(&self) -> Vec<MetricSample> {
            vec![MetricSample::counter("x", "x", vec![], self.0)]
        }
    }

    #[tokio::test]
    async fn a_source_registered_again_replaces_the_first() {
        let s = MetricSources::default();
        s.register("a", Arc::new(Fixed(1)));
        s.register("b", Arc::new(Fixed(2)));
        s.register("a", Arc::new(Fixed(3)));
        let values: Vec<f64> = s.collect().await.iter().map(|m| m.value).collect();
        assert_eq!(values, vec![2.0, 3.0]);
    }
}
