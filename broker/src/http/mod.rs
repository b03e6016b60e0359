//! The HTTP listener (`http_listen`, default `127.0.0.1:9644`; docs/http.md): `/metrics` in the
//! Prometheus (OpenMetrics) text format, served by axum on the broker's tokio runtime.
//!
//! What it serves is read when asked, from the core's own state (topics, groups, queue groups),
//! never counted on the data path; a scrape takes each lock only as long as it copies what it
//! shows. This module owns the listener's routes and its shutdown; [`metrics`] owns what a
//! scrape shows.

mod metrics;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::core::Core;

/// What the handlers share.
#[derive(Debug, Clone)]
struct Http {
    core: Arc<Core>,
    started: Instant,
}

/// Serves the HTTP routes on `listener` until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, core: Arc<Core>, shutdown: CancellationToken) {
    let state = Http {
        core,
        started: Instant::now(),
    };
    let app = Router::new()
        .route("/metrics", get(scrape))
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
    let body = metrics::render(&http.core, http.started).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
