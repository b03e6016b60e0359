//! Broker liveness: the active controller's soft state about which brokers are heartbeating.
//!
//! As in KRaft, heartbeats never go into the metadata log. A broker is *fenced* until it has
//! heartbeated with the epoch of its newest registration, and again once it misses its session;
//! fencing and unfencing are what make the controller propose leadership changes
//! ([`crate::placement`]). A new active controller gives every registered broker a fresh
//! session ([`Liveness::seed`]), so a broker that died during the failover is fenced one session
//! after the failover and live ones are never disturbed by it. Time is passed in, so the rules
//! are tested without clocks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::image::MetadataImage;
use crate::types::BrokerId;

/// What the controller tells a heartbeating broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The broker is (now) unfenced; `newly` says it was fenced before this heartbeat.
    Alive {
        /// True when this heartbeat unfenced it.
        newly: bool,
    },
    /// The broker's epoch is not that of its newest registration (or it never registered): it
    /// must register again.
    StaleEpoch,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    epoch: u64,
    expires: Instant,
    fenced: bool,
}

/// The heartbeat table of the active controller.
#[derive(Debug)]
pub struct Liveness {
    timeout: Duration,
    sessions: BTreeMap<BrokerId, Session>,
}

impl Liveness {
    /// A table whose sessions last `timeout` after each heartbeat.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            sessions: BTreeMap::new(),
        }
    }

    /// Starts a new term of office: every registered broker gets a fresh session, as if it had
    /// just heartbeated, so one that died during the failover is fenced one session later and
    /// the live ones are not disturbed.
    pub fn seed(&mut self, image: &MetadataImage, now: Instant) {
        self.sessions = image
            .brokers
            .iter()
            .map(|(broker, registration)| {
                let session = Session {
                    epoch: registration.epoch,
                    expires: now + self.timeout,
                    fenced: false,
                };
                (*broker, session)
            })
            .collect();
    }

    /// Records a heartbeat from `broker` at `now`, checking its epoch against the image.
    pub fn heartbeat(
        &mut self,
        image: &MetadataImage,
        broker: BrokerId,
        epoch: u64,
        now: Instant,
    ) -> Heartbeat {
        match image.brokers.get(&broker) {
            Some(registration) if registration.epoch == epoch => {}
            _ => return Heartbeat::StaleEpoch,
        }
        let expires = now + self.timeout;
        let session = self.sessions.entry(broker).or_insert(Session {
            epoch,
            expires,
            fenced: true,
        });
        if session.epoch != epoch {
            // A newer registration: the old process's session is over.
            *session = Session {
                epoch,
                expires,
                fenced: true,
            };
        }
        session.expires = expires;
        let newly = session.fenced;
        session.fenced = false;
        Heartbeat::Alive { newly }
    }

    /// Fences every unfenced broker whose session ran out by `now`, and every one whose
    /// registration the image has since replaced; returns them, in id order.
    pub fn expire(&mut self, image: &MetadataImage, now: Instant) -> Vec<BrokerId> {
        let mut fenced = Vec::new();
        for (broker, session) in &mut self.sessions {
            let current = image.brokers.get(broker).map(|r| r.epoch) == Some(session.epoch);
            if !session.fenced && (now >= session.expires || !current) {
                session.fenced = true;
                fenced.push(*broker);
            }
        }
        fenced
    }

    /// Whether `broker` is alive (unfenced) right now.
    pub fn is_alive(&self, broker: BrokerId) -> bool {
        self.sessions.get(&broker).is_some_and(|s| !s.fenced)
    }

    /// Fences a broker at once (its controlled shutdown finished, or it registered again).
    pub fn fence(&mut self, broker: BrokerId) -> bool {
        match self.sessions.get_mut(&broker) {
            Some(session) if !session.fenced => {
                session.fenced = true;
                true
            }
            _ => false,
        }
    }

    /// The unfenced brokers, in id order.
    pub fn alive(&self) -> impl Iterator<Item = BrokerId> + '_ {
        self.sessions
            .iter()
            .filter(|(_, s)| !s.fenced)
            .map(|(b, _)| *b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Endpoints, MetaCommand};

    fn register(image: &mut MetadataImage, index: u64, broker: BrokerId, incarnation: u128) {
        image.apply(
            index,
            &MetaCommand::RegisterBroker {
                broker,
                incarnation,
                endpoints: Endpoints::default(),
                rack: None,
            },
        );
    }

    #[test]
    fn a_session_fences_after_its_timeout_and_unfences_on_the_next_heartbeat() {
        let mut image = MetadataImage::default();
        register(&mut image, 5, 1, 11);
        let mut table = Liveness::new(Duration::from_secs(9));
        let t0 = Instant::now();
        assert!(!table.is_alive(1));
        assert_eq!(
            table.heartbeat(&image, 1, 5, t0),
            Heartbeat::Alive { newly: true }
        );
        assert_eq!(
            table.heartbeat(&image, 1, 5, t0 + Duration::from_secs(2)),
            Heartbeat::Alive { newly: false }
        );
        assert!(
            table
                .expire(&image, t0 + Duration::from_secs(10))
                .is_empty()
        );
        assert_eq!(table.expire(&image, t0 + Duration::from_secs(11)), vec![1]);
        assert!(!table.is_alive(1));
        assert!(
            table
                .expire(&image, t0 + Duration::from_secs(12))
                .is_empty(),
            "fenced once"
        );
        assert_eq!(
            table.heartbeat(&image, 1, 5, t0 + Duration::from_secs(13)),
            Heartbeat::Alive { newly: true }
        );
    }

    #[test]
    fn an_old_epoch_is_refused_and_a_reregistration_fences_the_old_session() {
        let mut image = MetadataImage::default();
        register(&mut image, 5, 1, 11);
        let mut table = Liveness::new(Duration::from_secs(9));
        let t0 = Instant::now();
        assert_eq!(
            table.heartbeat(&image, 2, 5, t0),
            Heartbeat::StaleEpoch,
            "never registered"
        );
        assert_eq!(table.heartbeat(&image, 1, 4, t0), Heartbeat::StaleEpoch);
        assert_eq!(
            table.heartbeat(&image, 1, 5, t0),
            Heartbeat::Alive { newly: true }
        );
        register(&mut image, 9, 1, 12);
        assert_eq!(
            table.expire(&image, t0),
            vec![1],
            "the old process is fenced at once"
        );
        assert_eq!(table.heartbeat(&image, 1, 5, t0), Heartbeat::StaleEpoch);
        assert_eq!(
            table.heartbeat(&image, 1, 9, t0),
            Heartbeat::Alive { newly: true }
        );
        assert_eq!(table.alive().collect::<Vec<_>>(), vec![1]);
    }
}
