//! A host client's byte stream: seeded pseudo-random bytes sent on a
//! smoltcp TCP socket, and whatever comes back checked against the same
//! stream.

use smoltcp::socket::tcp;

/// splitmix64: a seeded source of pseudo-random numbers.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A reproducible stream of pseudo-random bytes.
pub struct Stream {
    rng: Rng,
    word: u64,
    left: u8,
}

impl Stream {
    pub fn new(seed: u64) -> Stream {
        Stream { rng: Rng(seed), word: 0, left: 0 }
    }

    pub fn byte(&mut self) -> u8 {
        if self.left == 0 {
            self.word = self.rng.next();
            self.left = 8;
        }
        self.left -= 1;
        let b = self.word as u8;
        self.word >>= 8;
        b
    }
}

/// One client's side of a connection: sends `total` bytes of the stream
/// `Stream::new(seed)`, closes once they are all acknowledged, and checks
/// that what it reads is that same stream (an echo of it).
pub struct StreamCheck {
    pub total: usize,
    out: Stream,
    expect: Stream,
    pub sent: usize,
    pub received: usize,
    /// Where what came back first differed from what was sent.
    pub first_wrong_byte: Option<usize>,
    closed: bool,
}

impl StreamCheck {
    pub fn new(total: usize, seed: u64) -> StreamCheck {
        StreamCheck {
            total,
            out: Stream::new(seed),
            expect: Stream::new(seed),
            sent: 0,
            received: 0,
            first_wrong_byte: None,
            closed: false,
        }
    }

    /// Sends what fits, reads at most `read_limit` bytes of what is there
    /// (0: none; a client that stops reading closes its receive window).
    pub fn pump(&mut self, socket: &mut tcp::Socket<'_>, read_limit: usize) {
        let StreamCheck { out, expect, first_wrong_byte, .. } = self;
        while self.sent < self.total && socket.can_send() {
            let left = self.total - self.sent;
            let n = socket
                .send(|buf| {
                    let n = buf.len().min(left);
                    buf[..n].iter_mut().for_each(|b| *b = out.byte());
                    (n, n)
                })
                .unwrap();
            if n == 0 {
                break;
            }
            self.sent += n;
        }
        // Like the services (see `close_after_peer`), close only once
        // everything sent is acknowledged, so that the FIN never follows
        // unacknowledged data.
        if self.sent == self.total && socket.send_queue() == 0 && !self.closed && socket.may_send() {
            socket.close();
            self.closed = true;
        }
        let mut budget = read_limit;
        while budget > 0 && socket.can_recv() {
            let base = self.received;
            let n = socket
                .recv(|buf| {
                    let n = buf.len().min(budget);
                    for (i, &b) in buf[..n].iter().enumerate() {
                        if b != expect.byte() && first_wrong_byte.is_none() {
                            *first_wrong_byte = Some(base + i);
                        }
                    }
                    (n, n)
                })
                .unwrap();
            budget -= n;
            self.received += n;
        }
    }
}
