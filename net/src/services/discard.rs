//! The discard service (RFC 863) on port 9: everything received is read and
//! dropped, which makes it a sink for measuring receive throughput. We close
//! when the client does.
//!
//! The bytes sunk are counted by [`Services`](super::Services) for every
//! service alike: `services.bytes_received_by(Discard::PORT)`.

use alloc::boxed::Box;

use smoltcp::socket::tcp;

use super::{close_after_peer, Connection, TcpService};

/// The discard service.
pub struct Discard;

impl Discard {
    /// The well-known port (RFC 863).
    pub const PORT: u16 = 9;
}

impl TcpService for Discard {
    fn name(&self) -> &'static str {
        "discard"
    }

    fn port(&self) -> u16 {
        Discard::PORT
    }

    fn accept(&mut self) -> Box<dyn Connection> {
        Box::new(DiscardConnection)
    }
}

/// One discard connection.
pub struct DiscardConnection;

impl Connection for DiscardConnection {
    fn serve(&mut self, socket: &mut tcp::Socket, _scratch: &mut [u8]) -> bool {
        let mut dropped = 0;
        // Received data sits in a ring: at most two contiguous pieces, each
        // dequeued without being copied anywhere.
        while let Ok(n @ 1..) = socket.recv(|bytes| (bytes.len(), bytes.len())) {
            dropped += n;
        }
        let closed = close_after_peer(socket);
        dropped > 0 || closed
    }
}
