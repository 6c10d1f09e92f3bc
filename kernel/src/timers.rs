//! A per-CPU timer queue keyed by TSC deadlines.
//!
//! Fixed capacity (no allocation after set-up), owned by one CPU, so it
//! needs no lock. Periodic timers re-arm from their previous deadline, not
//! from when they ran, so they do not drift; if a CPU falls behind by whole
//! periods, the missed firings are skipped (and counted), not replayed in a
//! burst.

/// Identifies a timer to its owner.
pub type TimerId = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    deadline: u64,
    /// 0 for one-shot.
    period: u64,
    id: TimerId,
}

/// A timer that has expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired {
    pub id: TimerId,
    /// The deadline it was due at.
    pub deadline: u64,
    /// Whole periods skipped because the CPU was late.
    pub missed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull;

pub struct TimerQueue<const N: usize> {
    entries: [Entry; N],
    len: usize,
}

impl<const N: usize> Default for TimerQueue<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> TimerQueue<N> {
    pub const fn new() -> Self {
        TimerQueue { entries: [Entry { deadline: 0, period: 0, id: 0 }; N], len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a timer due at `deadline`, repeating every `period` ticks (0: once).
    pub fn add(&mut self, id: TimerId, deadline: u64, period: u64) -> Result<(), QueueFull> {
        if self.len == N {
            return Err(QueueFull);
        }
        self.entries[self.len] = Entry { deadline, period, id };
        self.len += 1;
        Ok(())
    }

    /// Removes every timer with `id`; returns how many there were.
    pub fn cancel(&mut self, id: TimerId) -> usize {
        let before = self.len;
        let mut i = 0;
        while i < self.len {
            if self.entries[i].id == id {
                self.len -= 1;
                self.entries[i] = self.entries[self.len];
            } else {
                i += 1;
            }
        }
        before - self.len
    }

    /// The earliest deadline, to program the local APIC timer with.
    pub fn next_deadline(&self) -> Option<u64> {
        self.entries[..self.len].iter().map(|e| e.deadline).min()
    }

    /// Takes one timer whose deadline is at or before `now`, re-arming it
    /// when periodic. Call until `None`.
    pub fn pop_expired(&mut self, now: u64) -> Option<Expired> {
        let (i, e) = self.entries[..self.len]
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, e)| e.deadline <= now)
            .min_by_key(|(_, e)| e.deadline)?;
        // A period of 0 (one-shot) has no quotient.
        let missed = match (now - e.deadline).checked_div(e.period) {
            None => {
                self.len -= 1;
                self.entries[i] = self.entries[self.len];
                0
            }
            Some(behind) => {
                self.entries[i].deadline = e.deadline + (behind + 1) * e.period;
                behind
            }
        };
        Some(Expired { id: e.id, deadline: e.deadline, missed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shot_timers_fire_once_in_deadline_order() {
        let mut q = TimerQueue::<4>::new();
        q.add(1, 300, 0).unwrap();
        q.add(2, 100, 0).unwrap();
        q.add(3, 200, 0).unwrap();
        assert_eq!(q.next_deadline(), Some(100));
        assert_eq!(q.pop_expired(50), None);
        let fired: Vec<_> = std::iter::from_fn(|| q.pop_expired(250)).map(|e| e.id).collect();
        assert_eq!(fired, [2, 3]);
        assert_eq!(q.next_deadline(), Some(300));
        assert_eq!(q.pop_expired(300).map(|e| e.id), Some(1));
        assert!(q.is_empty() && q.next_deadline().is_none());
    }

    #[test]
    fn periodic_timers_do_not_drift() {
        let mut q = TimerQueue::<2>::new();
        q.add(7, 1000, 1000).unwrap();
        // Serviced 30 ticks late each time: deadlines stay on the 1000 grid.
        for k in 1..=5u64 {
            let e = q.pop_expired(k * 1000 + 30).unwrap();
            assert_eq!((e.id, e.deadline, e.missed), (7, k * 1000, 0));
            assert_eq!(q.next_deadline(), Some((k + 1) * 1000));
        }
    }

    #[test]
    fn a_late_cpu_skips_missed_periods_instead_of_bursting() {
        let mut q = TimerQueue::<2>::new();
        q.add(1, 100, 100).unwrap();
        let e = q.pop_expired(455).unwrap();
        assert_eq!((e.deadline, e.missed), (100, 3));
        assert_eq!(q.pop_expired(455), None, "one firing, not four");
        assert_eq!(q.next_deadline(), Some(500));
    }

    #[test]
    fn capacity_and_cancel() {
        let mut q = TimerQueue::<2>::new();
        q.add(1, 10, 0).unwrap();
        q.add(2, 20, 5).unwrap();
        assert_eq!(q.add(3, 30, 0), Err(QueueFull));
        assert_eq!(q.cancel(2), 1);
        assert_eq!(q.cancel(2), 0);
        assert_eq!(q.len(), 1);
        q.add(3, 5, 0).unwrap();
        assert_eq!(q.next_deadline(), Some(5));
    }
}
