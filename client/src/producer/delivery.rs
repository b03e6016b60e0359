//! Per-batch completion: one shared state per batch, one small future per record.
//!
//! Every record of a batch gets its result at the same moment (the batch is appended, or fails,
//! as a whole), so the state lives once per batch: a [`Completion`] holding the batch's base
//! offset or error and the wakers of the futures waiting on it. A record's [`DeliveryFuture`]
//! is that `Arc` plus the record's index in the batch: creating one costs a reference-count
//! increment, not an allocation or a channel per record, and a future that is never awaited
//! costs nothing more.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};
use crate::record::RecordMetadata;

#[derive(Debug, Default)]
struct State {
    /// The batch's base offset (-1 when unknown), or why it failed.
    result: Option<Result<i64>>,
    /// Futures waiting for the result; each remembers its slot.
    wakers: Vec<Waker>,
}

/// The shared result of one batch.
#[derive(Debug)]
pub(crate) struct Completion {
    topic: Arc<str>,
    partition: i32,
    state: Mutex<State>,
}

impl Completion {
    pub(crate) fn new(topic: Arc<str>, partition: i32) -> Arc<Self> {
        Arc::new(Self {
            topic,
            partition,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written (every write is
        // one assignment), so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the result (the first one wins) and wakes every waiting future.
    pub(crate) fn complete(&self, result: Result<i64>) {
        let wakers = {
            let mut s = self.lock();
            if s.result.is_some() {
                return;
            }
            s.result = Some(result);
            std::mem::take(&mut s.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Whether the result is set.
    pub(crate) fn is_done(&self) -> bool {
        self.lock().result.is_some()
    }

    fn poll_result(&self, cx: &mut Context<'_>, slot: &mut Option<usize>) -> Poll<Result<i64>> {
        let mut s = self.lock();
        if let Some(r) = &s.result {
            return Poll::Ready(r.clone());
        }
        match *slot {
            Some(i) if i < s.wakers.len() => {
                if !s.wakers[i].will_wake(cx.waker()) {
                    s.wakers[i] = cx.waker().clone();
                }
            }
            _ => {
                s.wakers.push(cx.waker().clone());
                *slot = Some(s.wakers.len() - 1);
            }
        }
        Poll::Pending
    }

    /// A future that resolves when the batch is complete (for `flush`).
    pub(crate) fn done(self: &Arc<Self>) -> Done {
        Done {
            completion: self.clone(),
            slot: None,
        }
    }
}

/// Resolves when a batch is complete, whatever its result.
#[derive(Debug)]
pub(crate) struct Done {
    completion: Arc<Completion>,
    slot: Option<usize>,
}

impl Future for Done {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.completion.poll_result(cx, &mut this.slot).map(|_| ())
    }
}

/// The acknowledgement of one sent record: resolves to where it was written, or why it could
/// not be (after the producer's retries). Dropping it does not cancel the record.
///
/// ```no_run
/// # async fn run(producer: strom_client::Producer) -> Result<(), strom_client::Error> {
/// // Queue many records first (each `send` waits only for buffer space), then await them.
/// let mut pending = Vec::new();
/// for i in 0..1000 {
///     let key = format!("order-{i}");
///     pending.push(producer.send("orders", Some(key.as_bytes()), Some(b"placed"), &[]).await?);
/// }
/// for delivery in pending {
///     let meta = delivery.await?;
///     assert!(meta.offset >= 0);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a DeliveryFuture reports whether the record was written; await it or drop it on purpose"]
pub struct DeliveryFuture {
    completion: Arc<Completion>,
    index: i32,
    timestamp: i64,
    slot: Option<usize>,
}

impl DeliveryFuture {
    pub(crate) fn new(completion: Arc<Completion>, index: i32, timestamp: i64) -> Self {
        Self {
            completion,
            index,
            timestamp,
            slot: None,
        }
    }

    /// The partition the record was assigned to (known before it is acknowledged).
    pub fn partition(&self) -> i32 {
        self.completion.partition
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.completion.poll_result(cx, &mut this.slot).map(|r| {
            r.map(|base| RecordMetadata {
                topic: this.completion.topic.clone(),
                partition: this.completion.partition,
                offset: if base < 0 {
                    -1
                } else {
                    base + i64::from(this.index)
                },
                timestamp: this.timestamp,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_record_of_a_batch_gets_its_offset() {
        let c = Completion::new("t".into(), 2);
        let futures: Vec<_> = (0..3)
            .map(|i| DeliveryFuture::new(c.clone(), i, 10))
            .collect();
        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            for f in futures {
                out.push(f.await.unwrap());
            }
            out
        });
        tokio::task::yield_now().await;
        c.complete(Ok(100));
        c.complete(Ok(5)); // ignored: the first result wins
        let metas = waiter.await.unwrap();
        assert_eq!(
            metas.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![100, 101, 102]
        );
        assert!(metas.iter().all(|m| m.partition == 2 && &*m.topic == "t"));
        c.done().await;
    }

    #[tokio::test]
    async fn errors_and_unknown_offsets() {
        let c = Completion::new("t".into(), 0);
        c.complete(Err(Error::Closed));
        assert!(matches!(
            DeliveryFuture::new(c, 0, 0).await,
            Err(Error::Closed)
        ));
        let c = Completion::new("t".into(), 0);
        c.complete(Ok(-1));
        assert_eq!(DeliveryFuture::new(c, 7, 0).await.unwrap().offset, -1);
    }
}
