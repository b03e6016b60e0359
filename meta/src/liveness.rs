//! Broker liveness: the active controller's soft state about which brokers are heartbeating.
//!
//! As in KRaft, heartbeats never go into the metadata log. A broker is *fenced* until it has
//! heartbeated with the epoch of its newest registration, and again once it misses its session;
//! fencing and unfencing are what make the controller propose leadership changes
//! ([`crate::placement`]). A new active controller gives every registered broker a fresh
//! session ([`Liveness::seed`]), so a broker that died during the failover is fenced one session
//! after the failover and live ones are never disturbed by it. Time is passed in, so the rules
//! are tested without clocks.
//!
//! **Controlled shutdown** is soft state here too, as fencing is: a broker that asks for it is
//! marked for the rest of its registration ([`BrokerStatus::ShuttingDown`]) and keeps its
//! session while it heartbeats. Its next registration (a restart) clears the mark. A new active
//! controller does not know it, which is why a broker repeats its request until it leads
//! nothing (as Kafka brokers repeat `want_shutdown` in every heartbeat).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::election::BrokerStatus;
use crate::image::MetadataImage;
use crate::types::BrokerId;

/// What the controller tells a heartbeating broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The broker is (now) unfenced; `newly` says it was fenced before this heartbeat.
    Alive {
        /// True when this heartbeat unfenced it.
        newly: bool,
        /// True when this heartbeat reported its storage failed where the one before did not,
        /// or the other way round.
        storage_changed: bool,
    },
    /// The broker's epoch is not that of its newest registration (or it never registered): it
    /// must register again.
    StaleEpoch,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    epoch: u64,
    expires: Instant,
    /// When it last heartbeated to this controller (`None`: not in this term yet).
    heard: Option<Instant>,
    fenced: bool,
    /// In controlled shutdown (for this registration).
    shutting_down: bool,
    /// Its last heartbeat said its storage failed.
    storage_failed: bool,
}

impl Session {
    /// A session of the registration with `epoch` that has not heartbeated yet.
    fn fenced(epoch: u64, expires: Instant) -> Self {
        Self {
            epoch,
            expires,
            heard: None,
            fenced: true,
            shutting_down: false,
            storage_failed: false,
        }
    }
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
                    fenced: false,
                    ..Session::fenced(registration.epoch, now + self.timeout)
                };
                (*broker, session)
            })
            .collect();
    }

    /// Records a heartbeat from `broker` at `now`, checking its epoch against the image;
    /// `storage_failed` is what the broker says of its storage (each heartbeat replaces the
    /// last one's word: a new controller learns it from the next).
    pub fn heartbeat(
        &mut self,
        image: &MetadataImage,
        broker: BrokerId,
        epoch: u64,
        storage_failed: bool,
        now: Instant,
    ) -> Heartbeat {
        match image.brokers.get(&broker) {
            Some(registration) if registration.epoch == epoch => {}
            _ => return Heartbeat::StaleEpoch,
        }
        let expires = now + self.timeout;
        let session = self
            .sessions
            .entry(broker)
            .or_insert(Session::fenced(epoch, expires));
        if session.epoch != epoch {
            // A newer registration: the old process's session is over.
            *session = Session::fenced(epoch, expires);
        }
        session.expires = expires;
        session.heard = Some(now);
        let newly = session.fenced;
        session.fenced = false;
        let storage_changed =
            std::mem::replace(&mut session.storage_failed, storage_failed) != storage_failed;
        Heartbeat::Alive {
            newly,
            storage_changed,
        }
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

    /// The connection `broker` heartbeated on with `epoch` closed at `now`: a process that
    /// dies closes its sockets, so its session ends now rather than a whole session later
    /// (the next [`Liveness::expire`] fences it). A broker closes that connection itself only
    /// when a heartbeat failed, by when its session is about over anyway; it dials again and
    /// its next heartbeat unfences it. True when a live session was cut short.
    pub fn connection_closed(&mut self, broker: BrokerId, epoch: u64, now: Instant) -> bool {
        match self.sessions.get_mut(&broker) {
            Some(session) if session.epoch == epoch && !session.fenced => {
                session.expires = session.expires.min(now);
                true
            }
            _ => false,
        }
    }

    /// This controller's connection to `broker`'s controller listener was refused at `now`:
    /// nothing listens there, so the process is gone (a broker's controller listener lives as
    /// long as the broker). Its session ends now unless it heartbeated within `recent` (a
    /// refusal that raced its restart). This is what finds a broker that died with the active
    /// controller: the new controller starts every session afresh, and the dead one's would
    /// otherwise run a whole session first. True when a live session was cut short.
    pub fn refused(&mut self, broker: BrokerId, now: Instant, recent: Duration) -> bool {
        match self.sessions.get_mut(&broker) {
            Some(session)
                if !session.fenced
                    && session
                        .heard
                        .is_none_or(|h| now.saturating_duration_since(h) > recent) =>
            {
                session.expires = session.expires.min(now);
                true
            }
            _ => false,
        }
    }

    /// A registration of `broker` with `epoch` committed at `now`. A new epoch is a new process:
    /// the old one's session ends at once (fenced, its controlled shutdown forgotten) and the new
    /// one is unfenced by its first heartbeat. The same epoch again (a retried registration)
    /// changes nothing.
    pub fn registered(&mut self, broker: BrokerId, epoch: u64, now: Instant) {
        let fresh = Session::fenced(epoch, now + self.timeout);
        let session = self.sessions.entry(broker).or_insert(fresh);
        if session.epoch != epoch {
            *session = fresh;
        }
    }

    /// `broker`, registered with `epoch` (the caller checked it is its newest registration),
    /// asks for controlled shutdown; true the first time. It stays up while it heartbeats.
    pub fn begin_shutdown(&mut self, broker: BrokerId, epoch: u64, now: Instant) -> bool {
        let fresh = Session::fenced(epoch, now + self.timeout);
        let session = self.sessions.entry(broker).or_insert(fresh);
        if session.epoch != epoch {
            *session = fresh;
        }
        !std::mem::replace(&mut session.shutting_down, true)
    }

    /// `broker`'s session, if it belongs to the registration `image` holds now. The image moves
    /// on before this table hears of a new registration (the table learns it when the Register
    /// call returns, or at the next [`Liveness::expire`]), and a session of the process before
    /// must count for nothing in between: not alive, not shutting down.
    fn current(&self, image: &MetadataImage, broker: BrokerId) -> Option<&Session> {
        let epoch = image.brokers.get(&broker)?.epoch;
        self.sessions.get(&broker).filter(|s| s.epoch == epoch)
    }

    /// Whether `broker`'s current registration last said its storage failed.
    pub fn is_storage_failed(&self, image: &MetadataImage, broker: BrokerId) -> bool {
        self.current(image, broker)
            .is_some_and(|s| s.storage_failed)
    }

    /// Whether `broker` asked for controlled shutdown in its current registration (fenced or
    /// not).
    pub fn is_shutting_down(&self, image: &MetadataImage, broker: BrokerId) -> bool {
        self.current(image, broker).is_some_and(|s| s.shutting_down)
    }

    /// What elections and ISR changes make of `broker` now, given the registrations in `image`.
    pub fn status(&self, image: &MetadataImage, broker: BrokerId) -> BrokerStatus {
        match self.current(image, broker) {
            Some(s) if !s.fenced && s.shutting_down => BrokerStatus::ShuttingDown,
            Some(s) if !s.fenced && s.storage_failed => BrokerStatus::StorageFailed,
            Some(s) if !s.fenced => BrokerStatus::Alive,
            _ => BrokerStatus::Fenced,
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
            table.heartbeat(&image, 1, 5, false, t0),
            Heartbeat::Alive {
                newly: true,
                storage_changed: false
            }
        );
        assert_eq!(
            table.heartbeat(&image, 1, 5, false, t0 + Duration::from_secs(2)),
            Heartbeat::Alive {
                newly: false,
                storage_changed: false
            }
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
            table.heartbeat(&image, 1, 5, false, t0 + Duration::from_secs(13)),
            Heartbeat::Alive {
                newly: true,
                storage_changed: false
            }
        );
    }

    #[test]
    fn a_closed_heartbeat_connection_ends_the_session_at_once() {
        let mut image = MetadataImage::default();
        register(&mut image, 5, 1, 11);
        let mut table = Liveness::new(Duration::from_secs(9));
        let t0 = Instant::now();
        table.heartbeat(&image, 1, 5, false, t0);
        // The connection of an older epoch (a process before this one) changes nothing.
        assert!(!table.connection_closed(1, 4, t0));
        assert!(table.expire(&image, t0).is_empty());
        // Its own: fenced at the next check, not 9 s later.
        let t1 = t0 + Duration::from_millis(300);
        assert!(table.connection_closed(1, 5, t1));
        assert_eq!(table.expire(&image, t1), vec![1]);
        assert!(!table.connection_closed(1, 5, t1), "fenced already");
        // A broker that only lost the connection heartbeats again on a new one.
        assert_eq!(
            table.heartbeat(&image, 1, 5, false, t1 + Duration::from_millis(250)),
            Heartbeat::Alive {
                newly: true,
                storage_changed: false
            }
        );
    }

    #[test]
    fn a_refused_connection_ends_a_session_not_heard_from_lately() {
        let mut image = MetadataImage::default();
        register(&mut image, 5, 1, 11);
        register(&mut image, 6, 2, 12);
        let mut table = Liveness::new(Duration::from_secs(9));
        let t0 = Instant::now();
        // A new controller: sessions start afresh, nobody heard from yet.
        table.seed(&image, t0);
        table.heartbeat(&image, 2, 6, false, t0 + Duration::from_millis(100));
        let recent = Duration::from_secs(1);
        let t1 = t0 + Duration::from_millis(300);
        // Broker 2 heartbeated 200 ms ago: a refusal then raced its restart.
        assert!(!table.refused(2, t1, recent));
        // Broker 1 never heartbeated to this controller: fenced at the next check.
        assert!(table.refused(1, t1, recent));
        assert_eq!(table.expire(&image, t1), vec![1]);
        assert!(!table.refused(1, t1, recent), "fenced already");
        // Broker 2 silent for longer than `recent`: its refusal counts.
        let t2 = t0 + Duration::from_millis(1500);
        assert!(table.refused(2, t2, recent));
        assert_eq!(table.expire(&image, t2), vec![2]);
    }

    #[test]
    fn an_old_epoch_is_refused_and_a_reregistration_fences_the_old_session() {
        let mut image = MetadataImage::default();
        register(&mut image, 5, 1, 11);
        let mut table = Liveness::new(Duration::from_secs(9));
        let t0 = Instant::now();
        assert_eq!(
            table.heartbeat(&image, 2, 5, false, t0),
            Heartbeat::StaleEpoch,
            "never registered"
        );
        assert_eq!(
            table.heartbeat(&image, 1, 4, false, t0),
            Heartbeat::StaleEpoch
        );
        assert_eq!(
            table.heartbeat(&image, 1, 5, false, t0),
            Heartbeat::Alive {
                newly: true,
                storage_changed: false
            }
        );
        register(&mut image, 9, 1, 12);
        assert_eq!(
            table.expire(&image, t0),
            vec![1],
            "the old process is fenced at once"
        );
        assert_eq!(
            table.heartbeat(&image, 1, 5, false, t0),
            Heartbeat::StaleEpoch
        );
        assert_eq!(
            table.heartbeat(&image, 1, 9, false, t0),
            Heartbeat::Alive {
                newly: true,
                storage_changed: false
            }
        );
        assert_eq!(table.alive().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_controlled_shutdown_lasts_until_the_next_registration() {
        let mut image = MetadataImage::default();
        register(&mut image, 5, 1, 11);
        let mut table = Liveness::new(Duration::from_secs(9));
        let t0 = Instant::now();
        assert_eq!(table.status(&image, 1), BrokerStatus::Fenced);
        table.heartbeat(&image, 1, 5, false, t0);
        assert_eq!(table.status(&image, 1), BrokerStatus::Alive);
        assert!(table.begin_shutdown(1, 5, t0));
        assert!(!table.begin_shutdown(1, 5, t0), "once");
        assert_eq!(table.status(&image, 1), BrokerStatus::ShuttingDown);
        assert!(table.is_alive(1), "it still serves");
        assert_eq!(
            table.heartbeat(&image, 1, 5, false, t0 + Duration::from_secs(5)),
            Heartbeat::Alive {
                newly: false,
                storage_changed: false
            }
        );
        assert_eq!(
            table.status(&image, 1),
            BrokerStatus::ShuttingDown,
            "heartbeats keep it"
        );
        // It exits: fenced, still marked, until it registers again.
        assert_eq!(table.expire(&image, t0 + Duration::from_secs(15)), vec![1]);
        assert_eq!(table.status(&image, 1), BrokerStatus::Fenced);
        assert!(table.is_shutting_down(&image, 1));
        // A retried registration of the same process changes nothing; a restart clears it.
        table.registered(1, 5, t0 + Duration::from_secs(16));
        assert!(table.is_shutting_down(&image, 1));
        register(&mut image, 20, 1, 12);
        assert!(
            !table.is_shutting_down(&image, 1),
            "the old process's mark is gone with its registration, before the table hears"
        );
        table.registered(1, 20, t0 + Duration::from_secs(16));
        assert!(!table.is_shutting_down(&image, 1));
        assert_eq!(
            table.status(&image, 1),
            BrokerStatus::Fenced,
            "until it heartbeats"
        );
        assert_eq!(
            table.heartbeat(&image, 1, 20, false, t0 + Duration::from_secs(17)),
            Heartbeat::Alive {
                newly: true,
                storage_changed: false
            }
        );
        assert_eq!(table.status(&image, 1), BrokerStatus::Alive);
    }

    #[test]
    fn failed_storage_lasts_while_the_heartbeats_say_so() {
        let mut image = MetadataImage::default();
        register(&mut image, 5, 1, 11);
        let mut table = Liveness::new(Duration::from_secs(9));
        let t0 = Instant::now();
        table.heartbeat(&image, 1, 5, false, t0);
        assert_eq!(
            table.heartbeat(&image, 1, 5, true, t0),
            Heartbeat::Alive {
                newly: false,
                storage_changed: true
            }
        );
        assert_eq!(table.status(&image, 1), BrokerStatus::StorageFailed);
        assert!(table.is_storage_failed(&image, 1));
        assert!(
            table.is_alive(1),
            "it still heartbeats and serves what it can"
        );
        assert_eq!(
            table.heartbeat(&image, 1, 5, true, t0 + Duration::from_secs(1)),
            Heartbeat::Alive {
                newly: false,
                storage_changed: false
            }
        );
        // Shutting down outranks it; a heartbeat saying the disk works clears it.
        table.begin_shutdown(1, 5, t0);
        assert_eq!(table.status(&image, 1), BrokerStatus::ShuttingDown);
        let mut fresh = Liveness::new(Duration::from_secs(9));
        fresh.heartbeat(&image, 1, 5, true, t0);
        assert_eq!(fresh.status(&image, 1), BrokerStatus::StorageFailed);
        assert_eq!(
            fresh.heartbeat(&image, 1, 5, false, t0 + Duration::from_secs(2)),
            Heartbeat::Alive {
                newly: false,
                storage_changed: true
            }
        );
        assert_eq!(fresh.status(&image, 1), BrokerStatus::Alive);
        // A new registration starts with working storage until its heartbeats say otherwise.
        fresh.heartbeat(&image, 1, 5, true, t0 + Duration::from_secs(3));
        register(&mut image, 7, 1, 12);
        fresh.registered(1, 7, t0 + Duration::from_secs(3));
        fresh.heartbeat(&image, 1, 7, false, t0 + Duration::from_secs(3));
        assert_eq!(fresh.status(&image, 1), BrokerStatus::Alive);
    }

    #[test]
    fn a_registration_ends_the_old_process_s_session_at_once() {
        let mut image = MetadataImage::default();
        register(&mut image, 5, 1, 11);
        let mut table = Liveness::new(Duration::from_secs(9));
        let t0 = Instant::now();
        table.heartbeat(&image, 1, 5, false, t0);
        table.begin_shutdown(1, 5, t0);
        table.registered(1, 5, t0);
        assert_eq!(
            table.status(&image, 1),
            BrokerStatus::ShuttingDown,
            "a retry"
        );
        register(&mut image, 9, 1, 12);
        assert_eq!(
            table.status(&image, 1),
            BrokerStatus::Fenced,
            "the old process counts for nothing once the image has the new one"
        );
        table.registered(1, 9, t0);
        assert_eq!(table.status(&image, 1), BrokerStatus::Fenced);
        assert!(table.expire(&image, t0).is_empty(), "already fenced");
    }
}
