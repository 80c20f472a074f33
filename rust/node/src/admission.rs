//! The bookkeeping of unknown connections (PROTOCOL.md §9.1), generic over the connection
//! handle so that it is tested without a network: slots, eviction of the oldest idle one, the
//! start deadline, promotion, and closing them all when the last offer ends.

use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug)]
struct Entry<C> {
    conn: C,
    accepted: Instant,
    /// Its `pair2` first frame arrived.
    started: bool,
    /// A handshake past its Hello runs on it (not idle).
    active: bool,
}

/// The outcome of admitting a newcomer.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<C> {
    /// Not hosting, or every slot holds an active handshake.
    Refused,
    /// Admitted; `evicted` (the oldest idle connection) is to be closed with NOT_PAIRED.
    Admitted { evicted: Option<C> },
}

#[derive(Debug)]
pub struct Slots<C> {
    max: usize,
    entries: HashMap<usize, Entry<C>>,
}

impl<C: Clone> Slots<C> {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            entries: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Admits connection `id` while `hosting`: a free slot, or the oldest idle one's.
    pub fn admit(&mut self, id: usize, conn: C, now: Instant, hosting: bool) -> Admit<C> {
        if !hosting || self.max == 0 {
            return Admit::Refused;
        }
        let mut evicted = None;
        if self.entries.len() >= self.max {
            let oldest = self
                .entries
                .iter()
                .filter(|(_, e)| !e.active)
                .min_by_key(|(_, e)| e.accepted)
                .map(|(id, _)| *id);
            let Some(old) = oldest else {
                return Admit::Refused;
            };
            evicted = self.entries.remove(&old).map(|e| e.conn);
        }
        self.entries.insert(
            id,
            Entry {
                conn,
                accepted: now,
                started: false,
                active: false,
            },
        );
        Admit::Admitted { evicted }
    }

    /// Its `pair2` first frame arrived.
    pub fn started(&mut self, id: usize) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.started = true;
        }
    }

    /// Whether a handshake past its Hello runs on it.
    pub fn set_active(&mut self, id: usize, active: bool) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.active = active;
        }
    }

    /// At the start deadline: removes and returns the connection if it has not started.
    pub fn start_deadline(&mut self, id: usize) -> Option<C> {
        if self.entries.get(&id).is_some_and(|e| !e.started) {
            return self.entries.remove(&id).map(|e| e.conn);
        }
        None
    }

    /// Removes `id` (closed, failed, or promoted once paired); true if it was unknown.
    pub fn remove(&mut self, id: usize) -> bool {
        self.entries.remove(&id).is_some()
    }

    /// When no offer is live: every unknown connection, to be closed.
    pub fn drain_unless_hosting(&mut self, hosting: bool) -> Vec<C> {
        if hosting {
            return Vec::new();
        }
        self.entries.drain().map(|(_, e)| e.conn).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn only_while_hosting() {
        let mut s = Slots::new(4);
        assert_eq!(s.admit(1, "a", Instant::now(), false), Admit::Refused);
        assert_eq!(s.len(), 0);
        assert_eq!(
            s.admit(1, "a", Instant::now(), true),
            Admit::Admitted { evicted: None }
        );
    }

    #[test]
    fn full_slots_evict_the_oldest_idle_one() {
        let t = Instant::now();
        let mut s = Slots::new(4);
        for i in 0..4 {
            assert_eq!(
                s.admit(i, i, at(t, i as u64), true),
                Admit::Admitted { evicted: None }
            );
        }
        // the oldest (0) is in a handshake: the oldest idle one is 1
        s.started(0);
        s.set_active(0, true);
        assert_eq!(
            s.admit(10, 10, at(t, 10), true),
            Admit::Admitted { evicted: Some(1) }
        );
        assert_eq!(
            s.admit(11, 11, at(t, 11), true),
            Admit::Admitted { evicted: Some(2) }
        );
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn a_newcomer_is_refused_only_when_every_slot_is_active() {
        let t = Instant::now();
        let mut s = Slots::new(2);
        for i in 0..2 {
            s.admit(i, i, at(t, i as u64), true);
            s.set_active(i, true);
        }
        assert_eq!(s.admit(5, 5, at(t, 5), true), Admit::Refused);
        // a handshake that ended is idle again
        s.set_active(1, false);
        assert_eq!(
            s.admit(5, 5, at(t, 5), true),
            Admit::Admitted { evicted: Some(1) }
        );
    }

    #[test]
    fn the_start_deadline_closes_only_connections_that_did_not_start() {
        let mut s = Slots::new(4);
        s.admit(1, "idle", Instant::now(), true);
        s.admit(2, "pairing", Instant::now(), true);
        s.started(2);
        assert_eq!(s.start_deadline(1), Some("idle"));
        assert_eq!(s.start_deadline(2), None);
        assert_eq!(s.start_deadline(3), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn promotion_frees_the_slot() {
        let t = Instant::now();
        let mut s = Slots::new(1);
        s.admit(1, 1, t, true);
        s.set_active(1, true);
        assert_eq!(s.admit(2, 2, at(t, 1), true), Admit::Refused);
        assert!(s.remove(1));
        assert!(!s.remove(1));
        assert_eq!(
            s.admit(2, 2, at(t, 2), true),
            Admit::Admitted { evicted: None }
        );
    }

    #[test]
    fn all_are_closed_when_the_last_offer_ends() {
        let mut s = Slots::new(4);
        for i in 0..3 {
            s.admit(i, i, Instant::now(), true);
        }
        assert!(s.drain_unless_hosting(true).is_empty());
        assert_eq!(s.len(), 3);
        let mut closed = s.drain_unless_hosting(false);
        closed.sort();
        assert_eq!(closed, vec![0, 1, 2]);
        assert_eq!(s.len(), 0);
    }
}
