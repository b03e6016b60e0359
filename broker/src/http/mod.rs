//! The HTTP listener (`http_listen`, default `127.0.0.1:9644`; docs/http.md): `/metrics` in the
//! Prometheus (OpenMetrics) text format, the JSON API under `/api/`, and the console at `/`,
//! served by axum on the broker's tokio runtime.
//!
//! What it serves is read when asked, from the core's own state (topics, groups, queue groups)
//! and the data path's atomic counters (`crate::stats`); a request takes each lock only as long
//! as it copies what it shows, and every answer is bounded (records per page, bytes per
//! payload). This module owns the routes, what the handlers share and the shutdown;
//! [`metrics`] owns what a scrape shows ([`series`] the shapes it is encoded from), [`api`] the JSON API ([`records`] its pages of records), [`history`] the samples behind
//! the console's plots, and `console/` the page itself (embedded in the binary).

mod api;
mod error;
mod history;
mod metrics;
mod records;
mod series;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::net::Net;

/// What the handlers share.
#[derive(Debug, Clone)]
struct Http {
    core: Arc<Core>,
    net: Arc<Net>,
    started: Instant,
    history: Arc<history::History>,
    /// Bytes of the last `/metrics` answer.
    metrics_size: Arc<AtomicUsize>,
    /// What the last scrape learnt of lagging offsets' timestamps.
    lag_times: Arc<Mutex<metrics::LagTimes>>,
}

/// Serves the HTTP routes on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    core: Arc<Core>,
    net: Arc<Net>,
    shutdown: CancellationToken,
) {
    let state = Http {
        core: core.clone(),
        net,
        started: Instant::now(),
        history: Arc::new(history::History::default()),
        metrics_size: Arc::new(AtomicUsize::new(0)),
        lag_times: Arc::default(),
    };
    tokio::spawn(history::sample(
        core,
        state.history.clone(),
        shutdown.clone(),
    ));
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(console_page))
        .route("/console.js", get(console_js))
        .route("/console.css", get(console_css))
        .nest("/api", api::routes())
        .with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the HTTP listener stopped");
    }
}

/// `GET /metrics`.
async fn scrape(State(http): State<Http>) -> impl IntoResponse {
    let body = metrics::render(http).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// The console's files, embedded at build time: no build step, nothing fetched from elsewhere.
const CONSOLE_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

async fn console_page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", CONSOLE_HTML)
}

async fn console_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

async fn console_css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            // The page talks to its own origin only.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The timestamp of the batch holding `offset` of a partition (its first record's): how old the
/// oldest record a consumer has not passed is, to the batch. Read from the batch's header alone
/// (no CRC check: a scrape with 10,000 lagging group-partitions must not checksum 10,000
/// batches). `None` past the end or when the record is gone.
fn batch_timestamp(core: &Core, topic: &str, partition: i32, offset: i64) -> Option<i64> {
    let t = core.topics.get(topic)?;
    let p = t.partition(partition)?;
    let h = p.reader().batch_header(offset).ok()??;
    Some(h.base_timestamp)
}

/// Every consumer group as described (offsets with the partitions' ends now), by name.
fn consumer_group_views(core: &Core) -> Vec<crate::core::groups::view::GroupView> {
    core.groups
        .list()
        .into_iter()
        .filter_map(|g| core.groups.describe(&core.topics, &g.name))
        .collect()
}

/// Total lag of a described consumer group: records after its committed offsets.
fn total_lag(v: &crate::core::groups::view::GroupView) -> i64 {
    v.offsets.iter().map(|o| o.lag().max(0)).sum()
}

/// Every queue group as described, by name.
async fn queue_views(core: &Core) -> Vec<crate::core::queues::GroupView> {
    let mut views: Vec<_> = core
        .queue_describe(&[])
        .await
        .into_iter()
        .flatten()
        .collect();
    views.sort_by(|a, b| a.group.cmp(&b.group));
    views
}
