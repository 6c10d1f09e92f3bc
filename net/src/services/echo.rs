//! The echo service (RFC 862) on port 7: everything received is sent back.
//!
//! Bytes move from the receive buffer to the transmit buffer through the
//! vCPU's scratch buffer, as many as the transmit buffer has room for; the
//! rest wait where they are, so nothing is dropped or reordered and a client
//! that does not read its echo is slowed down by our receive window. When
//! the client has closed its side and everything has been echoed, we close
//! ours.

use alloc::boxed::Box;

use smoltcp::socket::tcp;

use super::{close_after_peer, relay, Connection, TcpService};

/// The echo service.
pub struct Echo;

impl Echo {
    /// The well-known port (RFC 862).
    pub const PORT: u16 = 7;
}

impl TcpService for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn port(&self) -> u16 {
        Echo::PORT
    }

    fn accept(&mut self) -> Box<dyn Connection> {
        Box::new(EchoConnection)
    }
}

/// One echo connection: no state beyond its socket.
pub struct EchoConnection;

impl Connection for EchoConnection {
    fn serve(&mut self, socket: &mut tcp::Socket, scratch: &mut [u8]) -> bool {
        let moved = relay(socket, scratch, |_| {});
        let closed = close_after_peer(socket);
        moved > 0 || closed
    }
}
