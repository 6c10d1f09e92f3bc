//! A bounded, lock-free inbox of Ethernet frames, one per vCPU.
//!
//! The device spreads received frames over its queues by its own hash (or not
//! at all, before RSS is configured), so a frame can arrive on one vCPU's
//! queue and belong to a flow that another vCPU's stack owns. The receiving
//! vCPU pushes it into the owner's inbox, and the owner pops it in its poll
//! loop and hands it to its stack as if its own queue had received it. The
//! same type serves as an outbox: a vCPU without a transmit queue of its own
//! pushes its frames to the vCPU that owns one.
//!
//! Any number of vCPUs push; one pops. Nothing on that per-packet path takes
//! a lock that another vCPU can hold: a producer claims a slot with one
//! compare-and-swap and never waits for another producer or for the
//! consumer. A full inbox is a drop (counted in [`InboxStats`]), as a full
//! receive ring would be, rather than a stall of the vCPU that found it full.
//! The consumer never waits either: a slot that a producer has claimed but
//! not finished filling reads as "nothing yet", and [`Inbox::pop`] returns.
//!
//! The crate denies `unsafe`, so the slots are not `UnsafeCell` byte arrays
//! but arrays of `AtomicU64` words, written and read with relaxed 8-byte
//! stores and loads. On x86_64 those compile to the same plain `mov`s that a
//! `memcpy` would use; the only synchronising accesses are one
//! release/acquire pair on each slot's sequence number and the CAS on the
//! position counters.
//!
//! A frame is copied twice, into the slot and out of it. That is acceptable
//! because the inbox is the slow path: with steering in place, a frame lands
//! here only when the device's choice of queue and the flow's owner disagree,
//! which is mostly the first packets of a flow (before the flow is known, or
//! when the device has no RSS) and traffic to a vCPU without a queue.
//!
//! The ring is Dmitry Vyukov's bounded MPMC queue: every slot carries a
//! sequence number that says whose turn it is. For the slot at position
//! `pos` (index `pos % capacity`), `seq == pos` means "empty, the producer of
//! `pos` may fill it", and `seq == pos + 1` means "full, the consumer of
//! `pos` may read it"; after reading, the consumer sets `seq = pos +
//! capacity`, which hands the slot to the producer one lap later.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The largest frame an inbox carries: a 1514-byte Ethernet frame with room
/// to spare (a VLAN tag, a few bytes of padding). Longer frames are refused.
pub const SLOT_BYTES: usize = 2048;
const SLOT_WORDS: usize = SLOT_BYTES / 8;
const _: () = assert!(SLOT_BYTES.is_multiple_of(8), "slots are whole words");

/// Why [`Inbox::push`] refused a frame. Either way the frame was not queued
/// and the drop was counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// Every slot holds a frame the consumer has not popped yet.
    Full,
    /// The frame is longer than [`SLOT_BYTES`].
    TooLong,
}

/// What an inbox has seen since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboxStats {
    /// Frames accepted by `push` (including one still being copied in).
    pub pushed: u64,
    /// Frames handed out by `pop`.
    pub popped: u64,
    /// Frames refused because the inbox was full.
    pub dropped_full: u64,
    /// Frames refused because they were longer than [`SLOT_BYTES`].
    pub dropped_too_long: u64,
}

impl InboxStats {
    /// Frames refused, for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_full + self.dropped_too_long
    }
}

/// Keeps what it holds on cache lines of its own, so that producers bumping
/// the tail do not keep stealing the line the consumer bumps the head on
/// (false sharing). 128 rather than 64 bytes: x86 cores prefetch lines in
/// adjacent pairs, which makes neighbouring lines contend too.
#[repr(align(128))]
struct CacheLines<T>(T);

/// What the producers write: the next position to claim, and the drops
/// (counted only on the refusal path, so they cost nothing otherwise).
struct ProducerSide {
    tail: AtomicUsize,
    dropped_full: AtomicU64,
    dropped_too_long: AtomicU64,
}

/// One frame's worth of room. Aligned so that one slot's sequence number,
/// which producers and the consumer both touch, does not share a line with
/// the end of the slot before it.
#[repr(align(64))]
struct Slot {
    /// Whose turn it is (see the module docs).
    seq: AtomicUsize,
    /// The frame's length in bytes.
    len: AtomicUsize,
    /// The frame's bytes, eight to a word, little-endian, the last word
    /// zero-padded.
    words: [AtomicU64; SLOT_WORDS],
}

impl Slot {
    fn new(seq: usize) -> Slot {
        Slot { seq: AtomicUsize::new(seq), len: AtomicUsize::new(0), words: [const { AtomicU64::new(0) }; SLOT_WORDS] }
    }

    /// Copies `frame` (at most `SLOT_BYTES` long) in. Relaxed: the caller
    /// publishes it with a release store of `seq`.
    fn write(&self, frame: &[u8]) {
        let (whole, rest) = frame.as_chunks::<8>();
        for (word, bytes) in self.words.iter().zip(whole) {
            word.store(u64::from_le_bytes(*bytes), Ordering::Relaxed);
        }
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.words[whole.len()].store(u64::from_le_bytes(last), Ordering::Relaxed);
        }
        self.len.store(frame.len(), Ordering::Relaxed);
    }

    /// Copies the frame out into `out`, as much of it as fits; returns the
    /// bytes copied. Relaxed: the caller has acquired `seq` first.
    fn read(&self, out: &mut [u8]) -> usize {
        let n = self.len.load(Ordering::Relaxed).min(out.len());
        let (whole, rest) = out[..n].as_chunks_mut::<8>();
        for (bytes, word) in whole.iter_mut().zip(&self.words) {
            *bytes = word.load(Ordering::Relaxed).to_le_bytes();
        }
        if !rest.is_empty() {
            let last = self.words[whole.len()].load(Ordering::Relaxed).to_le_bytes();
            rest.copy_from_slice(&last[..rest.len()]);
        }
        n
    }
}

/// A bounded multi-producer queue of frames; see the module docs.
///
/// Positions are `usize` counters that only grow (on x86_64 they would take
/// centuries to wrap, and the arithmetic wraps correctly anyway), so the
/// pushed and popped counts are the tail and head themselves and a push
/// costs no counter update besides its claim.
pub struct Inbox {
    /// Written only in `new`, read by everyone.
    slots: Box<[Slot]>,
    mask: usize,
    producers: CacheLines<ProducerSide>,
    /// The next position to pop; written by the consumer only.
    head: CacheLines<AtomicUsize>,
}

impl Inbox {
    /// An inbox of `slots` frames, rounded up to a power of two (at least
    /// two) so that a position maps to its slot with a mask. This is the only
    /// allocation: `SLOT_BYTES` and a little more per slot.
    pub fn new(slots: usize) -> Inbox {
        let capacity = slots.max(2).next_power_of_two();
        let slots: Vec<Slot> = (0..capacity).map(Slot::new).collect();
        Inbox {
            slots: slots.into_boxed_slice(),
            mask: capacity - 1,
            producers: CacheLines(ProducerSide {
                tail: AtomicUsize::new(0),
                dropped_full: AtomicU64::new(0),
                dropped_too_long: AtomicU64::new(0),
            }),
            head: CacheLines(AtomicUsize::new(0)),
        }
    }

    /// How many frames it holds when full.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Queues a copy of `frame`, from any vCPU. Frames from one producer are
    /// popped in the order it pushed them. An empty frame is carried like any
    /// other (the inbox moves bytes and does not judge them; the stack will
    /// drop it); a longer one than [`SLOT_BYTES`] is refused.
    ///
    /// Never waits: it fails at once when the inbox is full, and its only
    /// loop retries a claim that another producer won, which means that one
    /// made progress.
    pub fn push(&self, frame: &[u8]) -> Result<(), PushError> {
        let side = &self.producers.0;
        if frame.len() > SLOT_BYTES {
            side.dropped_too_long.fetch_add(1, Ordering::Relaxed);
            return Err(PushError::TooLong);
        }
        let mut pos = side.tail.load(Ordering::Relaxed);
        let slot = loop {
            let slot = &self.slots[pos & self.mask];
            // Acquire pairs with the consumer's release in `pop`: if we see
            // the slot handed to position `pos`, the consumer's loads of the
            // frame it held one lap ago happened before, so our stores below
            // cannot be seen by them (the frame it read is not torn).
            let seq = slot.seq.load(Ordering::Acquire);
            // Signed distance, so that it stays right if the counters wrap.
            let ahead = seq.wrapping_sub(pos) as isize;
            if ahead == 0 {
                // The slot is free for `pos`: claim `pos`. Relaxed is
                // enough: the CAS only decides which producer owns the
                // position; the slot's contents are ordered by `seq`. It
                // succeeds only if nobody claimed `pos` since we read it.
                match side.tail.compare_exchange_weak(pos, pos.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => break slot,
                    Err(now) => pos = now,
                }
            } else if ahead < 0 {
                // The slot still holds the frame of `pos - capacity`: the
                // consumer is a whole lap behind, so every slot is taken.
                side.dropped_full.fetch_add(1, Ordering::Relaxed);
                return Err(PushError::Full);
            } else {
                // Another producer claimed `pos` (and maybe filled it)
                // after we read the tail: start again from the new tail.
                pos = side.tail.load(Ordering::Relaxed);
            }
        };
        slot.write(frame);
        // Release publishes the relaxed word and length stores above: a
        // consumer that acquires `pos + 1` from `seq` sees all of them. No
        // other producer touches the slot until the consumer hands it on.
        slot.seq.store(pos.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Copies the oldest frame into `out` and returns its length, or `None`
    /// when there is no frame ready (including the moment a producer is
    /// still copying the oldest one in: it will be ready at the next poll).
    ///
    /// `out` must hold [`SLOT_BYTES`] (checked in debug builds, before
    /// anything is consumed). In release builds a shorter `out` gets the
    /// frame's first `out.len()` bytes and the rest is lost; the returned
    /// length is then what was copied, so `&out[..n]` is always valid.
    ///
    /// Meant for the one vCPU that owns the inbox; should two ever pop at
    /// once, each frame still goes to exactly one of them.
    pub fn pop(&self, out: &mut [u8]) -> Option<usize> {
        debug_assert!(out.len() >= SLOT_BYTES, "an inbox pop needs a {SLOT_BYTES}-byte buffer, got {}", out.len());
        let head = &self.head.0;
        let mut pos = head.load(Ordering::Relaxed);
        let slot = loop {
            let slot = &self.slots[pos & self.mask];
            // Acquire pairs with the producer's release in `push`: seeing
            // `pos + 1` means every word of the frame is visible.
            let seq = slot.seq.load(Ordering::Acquire);
            let ahead = seq.wrapping_sub(pos.wrapping_add(1)) as isize;
            if ahead == 0 {
                // Release on success so that `stats`, acquiring the head,
                // also sees a tail at least as far (see there). On x86 every
                // CAS is a full barrier, so this costs nothing.
                match head.compare_exchange_weak(pos, pos.wrapping_add(1), Ordering::Release, Ordering::Relaxed) {
                    Ok(_) => break slot,
                    Err(now) => pos = now,
                }
            } else if ahead < 0 {
                // Not filled yet for this lap: empty, or its producer is
                // still copying. Either way there is nothing to wait for.
                return None;
            } else {
                // Another consumer took `pos`.
                pos = head.load(Ordering::Relaxed);
            }
        };
        let n = slot.read(out);
        // Release orders our loads of the frame before the next producer's
        // stores (it acquires this value before writing): hand the slot on
        // to position `pos + capacity`.
        slot.seq.store(pos.wrapping_add(self.capacity()), Ordering::Release);
        Some(n)
    }

    /// Whether no frame is queued or being queued: two relaxed loads, for the
    /// consumer's "anything left before I idle?" test. Right after a push has
    /// claimed its slot this is already `false` while `pop` may still say
    /// `None` for a moment; poll again rather than sleep.
    pub fn is_empty(&self) -> bool {
        let head = self.head.0.load(Ordering::Relaxed);
        let tail = self.producers.0.tail.load(Ordering::Relaxed);
        // Signed: another vCPU's stale view of the tail could trail the head.
        tail.wrapping_sub(head) as isize <= 0
    }

    /// The counts so far. Each is read on its own, so under traffic they are
    /// a little apart in time, but `popped <= pushed` always holds.
    pub fn stats(&self) -> InboxStats {
        // The head first, with acquire: the consumer advanced it to `h` after
        // acquiring a slot that a producer released after claiming position
        // `h - 1`, so a tail of at least `h` happened before, and the tail
        // read below cannot be older than that.
        let popped = self.head.0.load(Ordering::Acquire);
        let side = &self.producers.0;
        let pushed = side.tail.load(Ordering::Relaxed);
        InboxStats {
            pushed: pushed as u64,
            popped: popped as u64,
            dropped_full: side.dropped_full.load(Ordering::Relaxed),
            dropped_too_long: side.dropped_too_long.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;
    use std::vec;
    use std::vec::Vec;

    /// A recognisable frame of `len` bytes, different for each `tag`.
    fn frame(tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| tag.wrapping_mul(31).wrapping_add(i as u8)).collect()
    }

    fn pop_vec(inbox: &Inbox) -> Option<Vec<u8>> {
        let mut out = [0u8; SLOT_BYTES];
        inbox.pop(&mut out).map(|n| out[..n].to_vec())
    }

    #[test]
    fn inbox_is_shareable_between_vcpus() {
        fn sync_and_send<T: Sync + Send>() {}
        sync_and_send::<Inbox>();
    }

    #[test]
    fn capacity_is_a_power_of_two_of_at_least_two() {
        assert_eq!(Inbox::new(0).capacity(), 2);
        assert_eq!(Inbox::new(1).capacity(), 2);
        assert_eq!(Inbox::new(2).capacity(), 2);
        assert_eq!(Inbox::new(3).capacity(), 4);
        assert_eq!(Inbox::new(64).capacity(), 64);
        assert_eq!(Inbox::new(65).capacity(), 128);
    }

    #[test]
    fn frames_come_out_in_order_with_exact_bytes() {
        let lengths = [1, 7, 8, 9, 60, 1514, SLOT_BYTES];
        let inbox = Inbox::new(lengths.len());
        assert!(inbox.is_empty());
        assert_eq!(pop_vec(&inbox), None);
        for (tag, &len) in lengths.iter().enumerate() {
            inbox.push(&frame(tag as u8, len)).unwrap();
        }
        assert!(!inbox.is_empty());
        for (tag, &len) in lengths.iter().enumerate() {
            assert_eq!(pop_vec(&inbox), Some(frame(tag as u8, len)), "frame {tag} of {len} bytes");
        }
        assert!(inbox.is_empty());
        assert_eq!(pop_vec(&inbox), None);
        let n = lengths.len() as u64;
        assert_eq!(inbox.stats(), InboxStats { pushed: n, popped: n, ..InboxStats::default() });
    }

    #[test]
    fn a_short_frame_does_not_bring_back_an_older_ones_bytes() {
        let inbox = Inbox::new(2);
        let mut out = [0u8; SLOT_BYTES];
        for _ in 0..2 {
            inbox.push(&[0xaa; 1514]).unwrap();
            assert_eq!(inbox.pop(&mut out), Some(1514));
        }
        // Same slot as the first long frame, now with a partial last word.
        inbox.push(&[1, 2, 3]).unwrap();
        out.fill(0);
        assert_eq!(inbox.pop(&mut out), Some(3));
        assert_eq!(out[..8], [1, 2, 3, 0, 0, 0, 0, 0], "nothing past the frame is written");
    }

    #[test]
    fn full_after_capacity_and_free_again_after_pops() {
        let inbox = Inbox::new(4);
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        // Fill, overflow, drain some, refill: many laps round the ring, with
        // the fill level (and so the wrap point) moving each time.
        for round in 0..100 {
            while inbox.push(&frame(next_in as u8, 1 + next_in as usize % 100)).is_ok() {
                next_in += 1;
            }
            assert_eq!(inbox.push(&[0; 60]), Err(PushError::Full), "round {round}");
            assert_eq!((next_in - next_out) as usize, inbox.capacity(), "full means every slot taken");
            for _ in 0..1 + round % inbox.capacity() {
                assert_eq!(pop_vec(&inbox), Some(frame(next_out as u8, 1 + next_out as usize % 100)));
                next_out += 1;
            }
        }
        while let Some(got) = pop_vec(&inbox) {
            assert_eq!(got, frame(next_out as u8, 1 + next_out as usize % 100));
            next_out += 1;
        }
        assert_eq!(next_out, next_in);
        assert!(inbox.is_empty());
        let stats = inbox.stats();
        assert_eq!(
            stats,
            InboxStats { pushed: next_in.into(), popped: next_in.into(), dropped_full: 200, dropped_too_long: 0 }
        );
    }

    #[test]
    fn a_frame_longer_than_a_slot_is_refused_and_counted() {
        let inbox = Inbox::new(4);
        assert_eq!(inbox.push(&[0; SLOT_BYTES + 1]), Err(PushError::TooLong));
        assert_eq!(inbox.push(&[0; 9000]), Err(PushError::TooLong));
        assert!(inbox.is_empty(), "nothing was queued");
        inbox.push(&[7; SLOT_BYTES]).unwrap();
        assert_eq!(pop_vec(&inbox), Some(vec![7; SLOT_BYTES]));
        assert_eq!(inbox.stats(), InboxStats { pushed: 1, popped: 1, dropped_full: 0, dropped_too_long: 2 });
    }

    #[test]
    fn an_empty_frame_is_carried() {
        let inbox = Inbox::new(2);
        inbox.push(&[]).unwrap();
        assert!(!inbox.is_empty());
        assert_eq!(pop_vec(&inbox), Some(Vec::new()), "a zero-length frame, not an empty inbox");
        assert_eq!(pop_vec(&inbox), None);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "byte buffer")]
    fn popping_into_a_short_buffer_is_a_bug() {
        let inbox = Inbox::new(2);
        inbox.push(&[1; 60]).unwrap();
        inbox.pop(&mut [0u8; 1514]);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn a_short_buffer_gets_the_start_of_the_frame() {
        let inbox = Inbox::new(2);
        inbox.push(&frame(3, 1514)).unwrap();
        let mut out = [0u8; 100];
        assert_eq!(inbox.pop(&mut out), Some(100), "the length copied, so the slice is valid");
        assert_eq!(out[..], frame(3, 1514)[..100]);
        assert!(inbox.is_empty(), "the frame was consumed");
    }

    /// The frame producer `id` sends as its `seq`th: its length and every
    /// byte derive from both, so a torn or misdelivered frame shows.
    fn tagged(id: u8, seq: u32) -> Vec<u8> {
        // Mostly small (the test must stay quick in debug builds), sometimes
        // a full slot, never shorter than the tag.
        let len = if seq % 1000 == 999 { SLOT_BYTES } else { 5 + (seq as usize * 37 + usize::from(id) * 11) % 200 };
        let mut f = vec![0u8; len];
        f[0] = id;
        f[1..5].copy_from_slice(&seq.to_le_bytes());
        for (i, b) in f.iter_mut().enumerate().skip(5) {
            *b = (seq as u8).wrapping_mul(13) ^ id.wrapping_mul(101) ^ (i as u8);
        }
        f
    }

    #[test]
    fn concurrent_producers_lose_nothing_but_counted_drops() {
        const PRODUCERS: usize = 4;
        const PER_PRODUCER: u32 = 50_000;
        let started = Instant::now();
        let inbox = Inbox::new(64);
        let producers_done = AtomicUsize::new(0);
        let go = AtomicBool::new(false);

        let (drops, received) = std::thread::scope(|s| {
            let producers: Vec<_> = (0..PRODUCERS as u8)
                .map(|id| {
                    let (inbox, producers_done, go) = (&inbox, &producers_done, &go);
                    s.spawn(move || {
                        while !go.load(Ordering::Acquire) {
                            std::hint::spin_loop();
                        }
                        assert_eq!(inbox.push(&[id; SLOT_BYTES + 1]), Err(PushError::TooLong));
                        let mut dropped = 0u64;
                        for seq in 0..PER_PRODUCER {
                            match inbox.push(&tagged(id, seq)) {
                                Ok(()) => {}
                                Err(PushError::Full) => {
                                    dropped += 1;
                                    // Two cores, five threads: let the
                                    // consumer run rather than spin on drops.
                                    std::thread::yield_now();
                                }
                                Err(PushError::TooLong) => panic!("frame {seq} fits"),
                            }
                        }
                        // Release: the consumer that sees the count sees
                        // every frame this producer queued.
                        producers_done.fetch_add(1, Ordering::Release);
                        dropped
                    })
                })
                .collect();

            let consumer = s.spawn(|| {
                let mut received = [0u64; PRODUCERS];
                let mut last_seq: [Option<u32>; PRODUCERS] = [None; PRODUCERS];
                let mut out = vec![0u8; SLOT_BYTES];
                let mut check = |n: usize, out: &[u8]| {
                    assert!(n >= 5, "a frame of {n} bytes lost its tag");
                    let id = out[0];
                    let seq = u32::from_le_bytes(out[1..5].try_into().unwrap());
                    assert!(usize::from(id) < PRODUCERS, "no producer {id}");
                    assert!(out[..n] == tagged(id, seq)[..], "frame {seq} of producer {id} damaged");
                    let p = usize::from(id);
                    assert!(last_seq[p].is_none_or(|last| seq > last), "producer {id}: {seq} after {:?}", last_seq[p]);
                    last_seq[p] = Some(seq);
                    received[p] += 1;
                };
                go.store(true, Ordering::Release);
                loop {
                    if let Some(n) = inbox.pop(&mut out) {
                        check(n, &out);
                    } else if producers_done.load(Ordering::Acquire) == PRODUCERS {
                        // Everything queued is visible now: drain it.
                        while let Some(n) = inbox.pop(&mut out) {
                            check(n, &out);
                        }
                        break;
                    } else {
                        std::thread::yield_now();
                    }
                }
                assert!(inbox.is_empty());
                received
            });

            let drops: Vec<u64> = producers.into_iter().map(|p| p.join().unwrap()).collect();
            (drops, consumer.join().unwrap())
        });

        for p in 0..PRODUCERS {
            assert_eq!(
                received[p] + drops[p],
                u64::from(PER_PRODUCER),
                "producer {p}: every frame arrived or was dropped"
            );
            assert!(received[p] > 0, "producer {p} got nothing through");
        }
        let total_received: u64 = received.iter().sum();
        let stats = inbox.stats();
        assert_eq!(
            stats,
            InboxStats {
                pushed: total_received,
                popped: total_received,
                dropped_full: drops.iter().sum(),
                dropped_too_long: PRODUCERS as u64,
            }
        );
        std::eprintln!(
            "inbox stress: {total_received} frames through, {} dropped full, {:?}",
            stats.dropped_full,
            started.elapsed()
        );
    }
}
