//! Request/response transactions for latency measurements, in the style of
//! netperf's TCP_RR, on port 5202 (`services=rr`).
//!
//! The client chooses the sizes, like netperf's `-r request,response`:
//!
//! 1. Its first 8 bytes on a connection are the request size and the
//!    response size, each a big-endian `u32` from 1 to 65536
//!    ([`Rr::MAX_SIZE`]). Anything else is refused: the connection is
//!    aborted (an RST), which the services count as a reset.
//! 2. From then on every complete request of `request` bytes (whatever they
//!    hold) is answered by exactly `response` bytes. Byte `i` of the
//!    connection's `n`th response (both from 0) is `(n + i) mod 256`
//!    ([`response_byte`]), so a client can check that every reply is
//!    complete, in order, and answers the transaction it waits for.
//! 3. A client may send several requests before reading (pipelining): they
//!    are answered in order. A request is read only once every earlier
//!    response is queued for sending, so a client that sends without
//!    reading is slowed down by our receive window, never buffered without
//!    bound.
//! 4. When the client closes its side, every complete request is still
//!    answered; a partial request (or header) is dropped unanswered, and we
//!    close once all we sent is acknowledged.
//!
//! Nothing is allocated or logged per packet: a connection is a few
//! counters, requests are dropped from the receive buffer where they lie,
//! and responses are written straight into the transmit buffer.

use alloc::boxed::Box;

use smoltcp::socket::tcp;

use super::{close_after_peer, Connection, TcpService};

/// The request/response service.
pub struct Rr;

impl Rr {
    /// Its port: next to iperf3's 5201.
    pub const PORT: u16 = 5202;
    /// The header's length: request size, response size.
    pub const HEADER: usize = 8;
    /// The largest request, and the largest response: 64 KiB.
    pub const MAX_SIZE: u32 = 64 * 1024;
}

impl TcpService for Rr {
    fn name(&self) -> &'static str {
        "rr"
    }

    fn port(&self) -> u16 {
        Rr::PORT
    }

    fn accept(&mut self) -> Box<dyn Connection> {
        Box::new(RrConnection::default())
    }
}

/// The sizes a header asks for, `(request, response)`, if both are in
/// 1..=[`Rr::MAX_SIZE`].
pub fn parse_header(header: [u8; Rr::HEADER]) -> Option<(u32, u32)> {
    let [a, b, c, d, e, f, g, h] = header;
    let (request, response) = (u32::from_be_bytes([a, b, c, d]), u32::from_be_bytes([e, f, g, h]));
    let valid = |size: u32| (1..=Rr::MAX_SIZE).contains(&size);
    (valid(request) && valid(response)).then_some((request, response))
}

/// Byte `i` of response `n` on a connection (both counted from 0).
pub fn response_byte(n: u64, i: u32) -> u8 {
    (n as u8).wrapping_add(i as u8)
}

/// One connection: where it is in the header, the request being read and
/// the response being written.
#[derive(Debug, Default)]
pub struct RrConnection {
    header: [u8; Rr::HEADER],
    /// Header bytes received so far.
    header_len: usize,
    /// `(request, response)` sizes, once the header is in.
    sizes: Option<(u32, u32)>,
    /// Bytes of the current request still to come.
    request_left: u32,
    /// Bytes of the current response not yet queued for sending.
    owed: u32,
    /// Responses completed (queued in full): the number of the current one.
    responses: u64,
}

impl RrConnection {
    /// Responses queued in full so far.
    pub fn responses(&self) -> u64 {
        self.responses
    }

    /// Queues as much of the current response as the transmit buffer takes;
    /// returns how many bytes.
    fn write(&mut self, socket: &mut tcp::Socket, response: u32) -> usize {
        let mut written = 0;
        while self.owed > 0 {
            let (n, at, owed) = (self.responses, response - self.owed, self.owed as usize);
            // The transmit buffer is a ring: its free space comes in at most
            // two contiguous pieces, each filled in place.
            let queued = socket.send(|buf| {
                let k = buf.len().min(owed);
                let mut byte = response_byte(n, at);
                for b in &mut buf[..k] {
                    *b = byte;
                    byte = byte.wrapping_add(1);
                }
                (k, k)
            });
            match queued {
                Ok(k @ 1..) => {
                    self.owed -= k as u32;
                    written += k;
                }
                _ => break,
            }
        }
        if self.owed == 0 {
            self.responses += 1;
        }
        written
    }

    /// Reads header bytes; aborts the connection on a header it refuses.
    /// Returns whether it read anything.
    fn read_header(&mut self, socket: &mut tcp::Socket) -> bool {
        let (header, have) = (&mut self.header, &mut self.header_len);
        let got = socket.recv(|bytes| {
            let k = bytes.len().min(Rr::HEADER - *have);
            header[*have..*have + k].copy_from_slice(&bytes[..k]);
            *have += k;
            (k, k)
        });
        if !matches!(got, Ok(1..)) {
            return false;
        }
        if self.header_len == Rr::HEADER {
            match parse_header(self.header) {
                Some((request, response)) => {
                    self.sizes = Some((request, response));
                    self.request_left = request;
                }
                None => socket.abort(),
            }
        }
        true
    }

    /// Drops up to the rest of the current request from the receive buffer;
    /// a request complete means a response owed. Returns whether it read
    /// anything.
    fn read_request(&mut self, socket: &mut tcp::Socket, request: u32, response: u32) -> bool {
        let left = self.request_left as usize;
        let Ok(k @ 1..) = socket.recv(|bytes| {
            let k = bytes.len().min(left);
            (k, k)
        }) else {
            return false;
        };
        self.request_left -= k as u32;
        if self.request_left == 0 {
            self.request_left = request;
            self.owed = response;
        }
        true
    }
}

impl Connection for RrConnection {
    fn serve(&mut self, socket: &mut tcp::Socket, _scratch: &mut [u8]) -> bool {
        let mut progress = false;
        loop {
            let Some((request, response)) = self.sizes else {
                // The header first; nothing is written before it is in.
                if !self.read_header(socket) {
                    break;
                }
                progress = true;
                if !socket.is_open() {
                    // Refused, and aborted.
                    return true;
                }
                continue;
            };
            if self.owed > 0 {
                progress |= self.write(socket, response) > 0;
                if self.owed > 0 {
                    // The transmit buffer is full: the next request waits.
                    break;
                }
            }
            if !self.read_request(socket, request, response) {
                break;
            }
            progress = true;
        }
        // A partial request left by a peer that closed its side is dropped
        // (read above, never answered). A response still owed means a full
        // transmit buffer, which keeps us from closing yet.
        if close_after_peer(socket) {
            progress = true;
        }
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_in_range_are_taken_and_others_refused() {
        let header = |request: u32, response: u32| {
            let mut h = [0u8; Rr::HEADER];
            h[..4].copy_from_slice(&request.to_be_bytes());
            h[4..].copy_from_slice(&response.to_be_bytes());
            parse_header(h)
        };
        assert_eq!(header(1, 1), Some((1, 1)));
        assert_eq!(header(65536, 1), Some((65536, 1)));
        assert_eq!(header(100, 65536), Some((100, 65536)));
        assert_eq!(parse_header([0, 0, 1, 0, 0, 0, 0, 2]), Some((256, 2)), "big-endian");
        for (request, response) in [(0, 1), (1, 0), (65537, 1), (1, 65537), (u32::MAX, u32::MAX), (0, 0)] {
            assert_eq!(header(request, response), None, "{request}, {response}");
        }
        // Little-endian 1 and 1 is 16 MiB each: refused.
        assert_eq!(parse_header([1, 0, 0, 0, 1, 0, 0, 0]), None);
    }

    #[test]
    fn responses_count_up_from_their_number() {
        assert_eq!(response_byte(0, 0), 0);
        assert_eq!(response_byte(0, 255), 255);
        assert_eq!(response_byte(0, 256), 0);
        assert_eq!(response_byte(7, 3), 10);
        assert_eq!(response_byte(256 + 7, 65535), 6);
    }
}
