//! The series a scrape is built from, in the shapes `prometheus-client` encodes: label sets
//! that share their text ([`Labels`]), series kept in the order they were gathered
//! ([`Series`]), and latency histograms read from the data path's atomic counters
//! ([`Histograms`]). `metrics` decides what goes in them.

use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder, LabelValueEncoder,
    MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::stats::LatencySnapshot;

/// A label's value: shared or static text, or a number, so that building the thousands of
/// series of a scrape allocates once per label set, not once per label.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Static(&'static str),
    Shared(Arc<str>),
    Int(i64),
}

impl EncodeLabelValue for Value {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self {
            Value::Static(s) => EncodeLabelValue::encode(s, encoder),
            Value::Shared(s) => EncodeLabelValue::encode(&&**s, encoder),
            Value::Int(n) => EncodeLabelValue::encode(n, encoder),
        }
    }
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Static(s)
    }
}

impl From<&Arc<str>> for Value {
    fn from(s: &Arc<str>) -> Self {
        Value::Shared(s.clone())
    }
}

impl From<i32> for Value {
    fn from(n: i32) -> Self {
        Value::Int(n.into())
    }
}

/// A label set, shared by the families that show the same thing (a group-partition's committed
/// offset, lag and lag in seconds).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Labels(Arc<[(&'static str, Value)]>);

impl Labels {
    pub fn none() -> Self {
        Labels(Arc::from([]))
    }

    pub fn of(name: &'static str, value: impl Into<Value>) -> Self {
        Labels(Arc::from([(name, value.into())]))
    }

    /// These labels and one more.
    pub fn and(&self, name: &'static str, value: impl Into<Value>) -> Self {
        let mut all = Vec::with_capacity(self.0.len() + 1);
        all.extend(self.0.iter().cloned());
        all.push((name, value.into()));
        Labels(all.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelSet::encode(&&*self.0, encoder)
    }
}

/// Text shared by many label sets.
pub(super) fn shared(s: &str) -> Value {
    Value::Shared(Arc::from(s))
}

/// A metric's series, in the order they were added.
#[derive(Debug)]
pub(super) struct Series<V> {
    kind: MetricType,
    rows: Vec<(Labels, V)>,
}

impl<V: Copy + std::ops::AddAssign> Series<V> {
    pub fn gauge() -> Self {
        Self {
            kind: MetricType::Gauge,
            rows: Vec::new(),
        }
    }

    pub fn counter() -> Self {
        Self {
            kind: MetricType::Counter,
            rows: Vec::new(),
        }
    }

    /// Adds a series, or adds `v` to the last one when it has the same labels (partitions of a
    /// topic summed when their label is dropped).
    pub fn add(&mut self, labels: Labels, v: V) {
        match self.rows.last_mut() {
            Some((last, sum)) if *last == labels => *sum += v,
            _ => self.rows.push((labels, v)),
        }
    }
}

/// A series value: counters are `u64` or `f64`, gauges any of `i64`, `u64`, `f64`.
pub(super) trait Sample {
    fn encode(&self, e: &mut MetricEncoder<'_>, kind: MetricType) -> Result<(), std::fmt::Error>;
}

impl Sample for i64 {
    fn encode(&self, e: &mut MetricEncoder<'_>, _: MetricType) -> Result<(), std::fmt::Error> {
        e.encode_gauge(self)
    }
}

macro_rules! counter_or_gauge {
    ($($t:ty),*) => {$(
        impl Sample for $t {
            fn encode(
                &self,
                e: &mut MetricEncoder<'_>,
                kind: MetricType,
            ) -> Result<(), std::fmt::Error> {
                match kind {
                    MetricType::Counter => e.encode_counter::<NoLabelSet, _, u64>(self, None),
                    _ => e.encode_gauge(self),
                }
            }
        }
    )*};
}
counter_or_gauge!(u64, f64);

impl<V: Sample + std::fmt::Debug> EncodeMetric for Series<V> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (labels, v) in &self.rows {
            if labels.is_empty() {
                v.encode(&mut encoder, self.kind)?;
            } else {
                v.encode(&mut encoder.encode_family(labels)?, self.kind)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

impl<V> TypedMetric for Series<V> {}

/// Latency histograms, one per label set.
#[derive(Debug, Default)]
pub(super) struct Histograms(pub Vec<(Labels, LatencySnapshot)>);

impl EncodeMetric for Histograms {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (labels, h) in &self.0 {
            encoder
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl TypedMetric for Histograms {}
