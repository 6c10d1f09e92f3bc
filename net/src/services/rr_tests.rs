//! The request/response service ([`Rr`]) as host clients see it over the
//! in-memory link of the services' tests: transactions one at a time and
//! pipelined, the smallest and largest sizes, slow readers, refused
//! headers, and clients that leave mid-request.

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Duration;

use super::super::rr::{response_byte, Rr};
use super::super::{ConnCounters, TcpConfig};
use super::World;

/// The header that asks for `request`-byte requests and `response`-byte
/// responses.
fn header(request: u32, response: u32) -> Vec<u8> {
    [request.to_be_bytes(), response.to_be_bytes()].concat()
}

/// A host client running transactions against the guest's RR service.
struct RrClient {
    handle: SocketHandle,
    /// What it sends first (normally [`header`]).
    header: Vec<u8>,
    request: u64,
    response: u64,
    /// Requests to send in all.
    total: u64,
    /// Requests it may have sent ahead of the responses it has read (1: one
    /// transaction at a time).
    depth: u64,
    /// Bytes of a request sent after the last whole one, before closing.
    tail: u64,
    /// Most response bytes read per step.
    read_limit: usize,
    /// Bytes sent: header, requests, tail.
    sent: u64,
    /// Response bytes read, and the first that was wrong.
    received: u64,
    first_wrong_byte: Option<u64>,
    closed: bool,
}

impl RrClient {
    fn new(world: &mut World, local_port: u16, request: u32, response: u32, total: u64, depth: u64) -> RrClient {
        RrClient {
            handle: world.client(Rr::PORT, local_port),
            header: header(request, response),
            request: request.into(),
            response: response.into(),
            total,
            depth,
            tail: 0,
            read_limit: usize::MAX,
            sent: 0,
            received: 0,
            first_wrong_byte: None,
            closed: false,
        }
    }

    /// Every byte it is to send.
    fn to_send(&self) -> u64 {
        self.header.len() as u64 + self.total * self.request + self.tail
    }

    /// Responses read in full.
    fn answered(&self) -> u64 {
        self.received / self.response
    }

    /// Sends what the pipeline depth allows, reads and checks what came
    /// back, and closes once everything is sent and acknowledged.
    fn pump(&mut self, sockets: &mut SocketSet<'static>) {
        let socket = sockets.get_mut::<tcp::Socket>(self.handle);
        let head = self.header.len() as u64;
        // Bytes it may have sent by now: the header, the requests the
        // depth allows, and the tail once every request is out.
        let requests = self.answered().saturating_add(self.depth).min(self.total);
        let mut allowed = head + requests * self.request;
        if requests == self.total {
            allowed += self.tail;
        }
        while self.sent < allowed && socket.can_send() {
            let (sent, header) = (self.sent, &self.header);
            let n = socket
                .send(|buf| {
                    let n = buf.len().min((allowed - sent) as usize);
                    for (i, b) in buf[..n].iter_mut().enumerate() {
                        let at = sent + i as u64;
                        // Requests hold anything: here, their offset.
                        *b = if at < head { header[at as usize] } else { at as u8 };
                    }
                    (n, n)
                })
                .unwrap();
            if n == 0 {
                break;
            }
            self.sent += n as u64;
        }
        if self.sent == self.to_send() && socket.send_queue() == 0 && !self.closed && socket.may_send() {
            socket.close();
            self.closed = true;
        }
        let mut budget = self.read_limit;
        while budget > 0 && socket.can_recv() {
            let (base, response, wrong) = (self.received, self.response, &mut self.first_wrong_byte);
            let n = socket
                .recv(|buf| {
                    let n = buf.len().min(budget);
                    for (i, &b) in buf[..n].iter().enumerate() {
                        let at = base + i as u64;
                        if b != response_byte(at / response, (at % response) as u32) && wrong.is_none() {
                            *wrong = Some(at);
                        }
                    }
                    (n, n)
                })
                .unwrap();
            budget -= n;
            self.received += n as u64;
        }
    }

    /// Every response read, and the guest has closed too.
    fn finished(&self, sockets: &SocketSet<'static>) -> bool {
        self.answered() == self.total && !sockets.get::<tcp::Socket>(self.handle).is_open()
    }

    /// Every response came back whole and right, and no more.
    fn check(&self, name: &str) {
        assert_eq!(self.first_wrong_byte, None, "{name}: a wrong byte");
        assert_eq!(self.received, self.total * self.response, "{name}: exactly one response per request");
    }
}

/// A guest that runs the RR service alone.
fn rr_world() -> World {
    World::new(TcpConfig::default(), vec![Box::new(Rr)])
}

/// Runs `clients` to the end, within `limit` of virtual time, then waits
/// for the guest to be left with its listeners only.
fn run(world: &mut World, clients: &mut [RrClient], limit: Duration) -> Duration {
    world.drive(limit, |w| {
        clients.iter_mut().for_each(|c| c.pump(&mut w.host.sockets));
        clients.iter().all(|c| c.finished(&w.host.sockets)) && w.guest_sockets() == w.idle_guest_sockets()
    })
}

/// `n` connections, all closed in order.
fn closed(n: u64) -> ConnCounters {
    ConnCounters { accepted: n, closed: n, ..ConnCounters::default() }
}

#[test]
fn a_thousand_one_byte_transactions_one_at_a_time() {
    let mut world = rr_world();
    let mut clients = [RrClient::new(&mut world, 54_000, 1, 1, 1000, 1)];
    let mut most_in_flight = 0;
    world.drive(Duration::from_secs(60), |w| {
        let c = &mut clients[0];
        c.pump(&mut w.host.sockets);
        let requests = (c.sent.saturating_sub(8)).min(c.total);
        most_in_flight = most_in_flight.max(requests - c.answered());
        c.finished(&w.host.sockets) && w.guest_sockets() == w.idle_guest_sockets()
    });
    clients[0].check("1/1");
    assert_eq!(most_in_flight, 1, "one transaction at a time");
    assert_eq!(world.services.counters(), closed(1));
    assert_eq!(world.services.bytes_received_by(Rr::PORT), 8 + 1000);
    assert_eq!(world.services.bytes_sent_by(Rr::PORT), 1000);
}

#[test]
fn the_largest_and_smallest_sizes_both_ways() {
    let mut world = rr_world();
    let mut clients = [
        RrClient::new(&mut world, 54_100, 65536, 65536, 20, 1),
        RrClient::new(&mut world, 54_101, 1, 65536, 20, 1),
        RrClient::new(&mut world, 54_102, 65536, 1, 20, 1),
    ];
    run(&mut world, &mut clients, Duration::from_secs(60));
    for (c, name) in clients.iter().zip(["64K/64K", "1/64K", "64K/1"]) {
        c.check(name);
    }
    assert_eq!(world.services.counters(), closed(3));
    assert_eq!(world.services.bytes_received_by(Rr::PORT), 3 * 8 + 20 * (65536 + 1 + 65536));
    assert_eq!(world.services.bytes_sent_by(Rr::PORT), 20 * (65536 + 65536 + 1));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut world = rr_world();
    // Four clients at once, each with up to 16 requests in flight; two
    // read slowly, so the guest's transmit buffer fills and requests wait
    // in its receive buffer.
    let mut clients: Vec<RrClient> = (0..4)
        .map(|i| {
            let mut c = RrClient::new(&mut world, 54_200 + i, 100, 3000, 500, 16);
            if i % 2 == 1 {
                c.read_limit = 4096;
            }
            c
        })
        .collect();
    // A fifth sends every request at once and reads 1 KiB a step.
    let mut greedy = RrClient::new(&mut world, 54_210, 1000, 1000, 2000, u64::MAX);
    greedy.read_limit = 1024;
    clients.push(greedy);
    let mut most_in_flight = 0;
    world.drive(Duration::from_secs(120), |w| {
        for c in clients.iter_mut() {
            c.pump(&mut w.host.sockets);
            let requests = (c.sent.saturating_sub(8) / c.request).min(c.total);
            most_in_flight = most_in_flight.max(requests - c.answered());
        }
        clients.iter().all(|c| c.finished(&w.host.sockets)) && w.guest_sockets() == w.idle_guest_sockets()
    });
    for c in &clients {
        c.check("pipelined");
    }
    assert!(most_in_flight > 16, "requests did pile up: {most_in_flight} in flight at most");
    assert_eq!(world.services.counters(), closed(5));
    assert_eq!(world.services.bytes_sent_by(Rr::PORT), 4 * 500 * 3000 + 2000 * 1000);
}

#[test]
fn a_header_out_of_range_is_refused_with_a_reset() {
    let mut world = rr_world();
    let bad = [header(0, 1), header(1, 0), header(65537, 1), header(1, 65537), vec![0xff; 8]];
    let mut clients: Vec<RrClient> = bad
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut c = RrClient::new(&mut world, 54_300 + i as u16, 1, 1, 3, 1);
            c.header = h.clone();
            c
        })
        .collect();
    world.drive(Duration::from_secs(5), |w| {
        clients.iter_mut().for_each(|c| c.pump(&mut w.host.sockets));
        clients.iter().all(|c| w.host_state(c.handle) == tcp::State::Closed) && w.services.counters().active == 0
    });
    assert!(clients.iter().all(|c| c.received == 0), "nothing answered");
    let expected = ConnCounters { accepted: 5, reset: 5, ..ConnCounters::default() };
    assert_eq!(world.services.counters(), expected, "every refusal counted as a reset");
    world.drive(Duration::from_secs(1), |w| w.guest_sockets() == w.idle_guest_sockets());
    assert_eq!(world.services.bytes_sent_by(Rr::PORT), 0);
    // The service still works for the next client.
    let mut good = [RrClient::new(&mut world, 54_310, 10, 20, 50, 1)];
    run(&mut world, &mut good, Duration::from_secs(10));
    good[0].check("after the refusals");
    assert_eq!(world.services.counters().closed, 1);
}

#[test]
fn a_client_that_closes_mid_request_gets_its_whole_answers_and_a_clean_close() {
    let mut world = rr_world();
    // Three requests of 500 bytes and 200 bytes of a fourth, all sent at
    // once, then the client closes its side.
    let mut mid_request = RrClient::new(&mut world, 54_400, 500, 700, 3, u64::MAX);
    mid_request.tail = 200;
    // One that closes halfway through its header.
    let mut mid_header = RrClient::new(&mut world, 54_401, 500, 700, 0, 1);
    mid_header.header.truncate(5);
    // And one that says nothing at all.
    let mut silent = RrClient::new(&mut world, 54_402, 1, 1, 0, 1);
    silent.header.clear();
    let mut clients = [mid_request, mid_header, silent];
    run(&mut world, &mut clients, Duration::from_secs(10));
    clients[0].check("mid-request");
    assert_eq!(clients[0].received, 3 * 700, "the partial request is not answered");
    assert!(clients[1..].iter().all(|c| c.received == 0));
    assert_eq!(world.services.counters(), closed(3), "closed in order, not reset");
    assert_eq!(world.services.bytes_received_by(Rr::PORT), 8 + 3 * 500 + 200 + 5);
    assert_eq!(world.services.bytes_sent_by(Rr::PORT), 3 * 700);
}

#[test]
fn a_client_that_resets_mid_transaction_is_counted_and_its_socket_removed() {
    let mut world = rr_world();
    let mut clients = [RrClient::new(&mut world, 54_500, 65536, 65536, 1000, 4)];
    world.drive(Duration::from_secs(30), |w| {
        clients[0].pump(&mut w.host.sockets);
        clients[0].answered() >= 10
    });
    world.host_socket(clients[0].handle).abort();
    world.drive(Duration::from_secs(1), |w| w.services.counters().active == 0);
    let expected = ConnCounters { accepted: 1, reset: 1, ..ConnCounters::default() };
    assert_eq!(world.services.counters(), expected);
    world.drive(Duration::from_secs(1), |w| w.guest_sockets() == w.idle_guest_sockets());
}
