//! The iperf3 server against recorded iperf3 3.12 messages and a scripted
//! client that speaks the protocol byte by byte, over the in-memory link of
//! the services' tests (one vCPU; tests/sim.rs spreads a test over several).

use alloc::vec;
use std::vec::Vec;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::Duration;

use super::proto::{self, errno, state, Error, JsonReader, Params, Results, StreamResult};
use super::{Hub, Iperf, PORT};
use crate::cpu::Wake;
use crate::services::tests::World;
use crate::services::TcpConfig;

/// What iperf3 3.12 sent for `-c ... -t 1 -P 2 -l 512 -R -O 1` (captured
/// with `-d`; JSON_write sends it unformatted).
const RECORDED_PARAMS: &[u8] = br#"{"tcp":true,"omit":1,"time":1,"num":0,"blockcount":0,"parallel":2,"reverse":true,"len":512,"pacing_timer":1000,"client_version":"3.12"}"#;

/// The results that client sent back (a receiver: cJSON prints its -1s as
/// 2^64 - 1).
const RECORDED_RESULTS: &[u8] = br#"{"cpu_util_total":47.789221909586935,"cpu_util_user":3.43660578901496,"cpu_util_system":44.352616120571973,"sender_has_retransmits":18446744073709551615,"congestion_used":"bbr","streams":[{"id":1,"bytes":62654464,"retransmits":18446744073709551615,"jitter":0,"errors":0,"packets":0,"start_time":0,"end_time":0.99997},{"id":3,"bytes":62654464,"retransmits":18446744073709551615,"jitter":0,"errors":0,"packets":0,"start_time":0,"end_time":0.999981}]}"#;

#[test]
fn the_recorded_parameters_parse_as_iperf3_reads_them() {
    let p = Params::parse(RECORDED_PARAMS).unwrap();
    assert_eq!(
        p,
        Params {
            parallel: 2,
            reverse: true,
            len: 512,
            time: 1,
            omit: 1,
            client_version: Some("3.12".into()),
            ..Params::default()
        }
    );
    assert_eq!(p.streams(), 2);
    assert!(p.server_sends(0) && p.server_sends(1));
    // Defaults when the client leaves fields out (no -l: 128 KiB blocks).
    let p = Params::parse(br#"{"tcp":true,"parallel":1}"#).unwrap();
    assert_eq!((p.len, p.reverse, p.bidirectional), (proto::DEFAULT_BLOCK, false, false));
    // With --bidir the first `parallel` streams are the client's senders.
    let p = Params::parse(br#"{"tcp":true,"parallel":3,"bidirectional":true}"#).unwrap();
    assert_eq!(p.streams(), 6);
    assert_eq!((0..6).map(|i| p.server_sends(i)).collect::<Vec<_>>(), [false, false, false, true, true, true]);
    // Our own client's message reads back the same.
    let ours = Params { parallel: 4, len: 1, time: 3, bidirectional: true, ..Params::default() };
    assert_eq!(Params::parse(&ours.to_json()).unwrap(), Params { client_version: Some("3.12".into()), ..ours });
}

#[test]
fn bad_parameters_are_refused_with_the_field_named() {
    let cases: [(&[u8], Error); 11] = [
        (b"", Error::Json),
        (b"{\"tcp\":true", Error::Json),
        (b"[1,2]", Error::Json),
        (b"{\"udp\":true,\"parallel\":1}", Error::Protocol),
        (b"{\"parallel\":1}", Error::Protocol),
        (b"{\"tcp\":true,\"parallel\":0}", Error::Field("parallel")),
        (b"{\"tcp\":true,\"parallel\":129}", Error::Field("parallel")),
        (b"{\"tcp\":true,\"len\":0}", Error::Field("len")),
        (b"{\"tcp\":true,\"len\":1048577}", Error::Field("len")),
        (b"{\"tcp\":true,\"time\":-1}", Error::Field("time")),
        (b"{\"tcp\":true,\"parallel\":\"4\"}", Error::Field("parallel")),
    ];
    for (json, want) in cases {
        assert_eq!(Params::parse(json), Err(want.clone()), "{}", String::from_utf8_lossy(json));
    }
    // Limits that are fine: 128 streams, 1 MiB and 1-byte blocks.
    assert!(Params::parse(br#"{"tcp":true,"parallel":128,"len":1048576}"#).is_ok());
    assert!(Params::parse(br#"{"tcp":true,"len":1}"#).is_ok());
    assert_eq!(Error::Protocol.params_errno(), errno::PROTOCOL);
    assert_eq!(Error::Json.params_errno(), errno::RECV_PARAMS);
}

#[test]
fn results_carry_what_the_real_client_requires_and_the_recorded_ones_parse() {
    let r = Results::parse(RECORDED_RESULTS).unwrap();
    assert_eq!(r.streams.len(), 2);
    assert_eq!((r.streams[0].id, r.streams[0].bytes, r.streams[1].id), (1, 62_654_464, 3));
    assert!((r.streams[1].end_time - 0.999981).abs() < 1e-9);
    // Ours, read by the rules of iperf3's get_results (every required
    // field), and back.
    let ours = Results {
        cpu_util_total: 12.5,
        cpu_util_user: 0.0,
        cpu_util_system: 12.5,
        sender_has_retransmits: -1,
        streams: vec![
            StreamResult { id: 1, bytes: 1 << 40, retransmits: -1, end_time: 2.0 },
            StreamResult { id: 3, bytes: 0, retransmits: -1, end_time: f64::NAN },
        ],
    };
    let json = ours.to_json();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    for k in ["cpu_util_total", "cpu_util_user", "cpu_util_system", "sender_has_retransmits"] {
        assert!(v[k].is_number(), "{k}");
    }
    for s in v["streams"].as_array().unwrap() {
        for k in ["id", "bytes", "retransmits", "jitter", "errors", "packets", "start_time", "end_time"] {
            assert!(s[k].is_number(), "{k} in {s}");
        }
    }
    let back = Results::parse(&json).unwrap();
    assert_eq!(back.streams[0], ours.streams[0]);
    assert_eq!(back.streams[1].end_time, 0.0, "NaN is not JSON: sent as 0");
    // A results message without a required field is refused.
    let missing = br#"{"cpu_util_total":1,"cpu_util_user":1,"cpu_util_system":1,"streams":[]}"#;
    assert_eq!(Results::parse(missing), Err(Error::Field("sender_has_retransmits")));
    let stream_missing = br#"{"cpu_util_total":1,"cpu_util_user":1,"cpu_util_system":1,"sender_has_retransmits":0,"streams":[{"id":1,"bytes":5}]}"#;
    assert!(Results::parse(stream_missing).is_err());
    assert_eq!((proto::stream_id(0), proto::stream_id(1), proto::stream_id(2)), (1, 3, 4));
}

#[test]
fn json_messages_are_read_in_any_pieces_and_bad_lengths_are_refused_early() {
    let mut framed = Vec::new();
    proto::frame_json(RECORDED_PARAMS, &mut framed);
    framed.extend_from_slice(b"tail");
    let mut r = JsonReader::default();
    let mut got = None;
    let mut used = 0;
    for chunk in framed.chunks(1) {
        let (n, msg) = r.feed(chunk);
        used += n;
        if let Some(m) = msg {
            got = Some(m);
            break;
        }
    }
    assert_eq!(got, Some(Ok(RECORDED_PARAMS.to_vec())));
    assert_eq!(used, 4 + RECORDED_PARAMS.len(), "nothing of the next message taken");
    // All at once: only the message is used.
    let (n, msg) = JsonReader::default().feed(&framed);
    assert_eq!((n, msg), (4 + RECORDED_PARAMS.len(), Some(Ok(RECORDED_PARAMS.to_vec()))));
    // An oversized or empty length prefix: an error as soon as the prefix
    // is in, with nothing allocated for the body.
    assert_eq!(JsonReader::default().feed(&0x7fff_ffffu32.to_be_bytes()).1, Some(Err(Error::Length(0x7fff_ffff))));
    assert_eq!(JsonReader::default().feed(&[0, 0, 0, 0]).1, Some(Err(Error::Length(0))));
    assert_eq!(JsonReader::default().feed(&(proto::MAX_JSON as u32).to_be_bytes()).1, None);
}

struct NoWake;

impl Wake for NoWake {
    fn wake(&self, _: u16) {}
}

fn hub() -> &'static Hub {
    Box::leak(Box::new(Hub::new(1, Box::new(NoWake), None)))
}

fn world(hub: &'static Hub) -> World {
    World::new(TcpConfig::default(), vec![Box::new(Iperf::new(hub, 0))])
}

const SEC: Duration = Duration::from_secs(1);

fn cookie(c: u8) -> Vec<u8> {
    let mut v = vec![c; 36];
    v.push(0);
    v
}

fn framed(json: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    proto::frame_json(json, &mut v);
    v
}

fn connect(w: &mut World, local_port: u16) -> SocketHandle {
    let h = w.client(PORT, local_port);
    w.drive(SEC, |w| w.host_state(h) == tcp::State::Established);
    h
}

fn send(w: &mut World, h: SocketHandle, data: &[u8]) {
    let mut off = 0;
    w.drive(SEC * 5, |w| {
        off += w.host_socket(h).send_slice(&data[off..]).unwrap_or(0);
        off == data.len()
    });
}

/// Reads exactly `n` bytes (waits up to `limit`).
fn read(w: &mut World, h: SocketHandle, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    w.drive(SEC * 20, |w| {
        let mut buf = [0u8; 4096];
        while got.len() < n {
            let want = (n - got.len()).min(buf.len());
            match w.host_socket(h).recv_slice(&mut buf[..want]) {
                Ok(k @ 1..) => got.extend_from_slice(&buf[..k]),
                _ => break,
            }
        }
        got.len() == n
    });
    got
}

/// Everything until the guest closes its side.
fn read_to_close(w: &mut World, h: SocketHandle) -> Vec<u8> {
    let mut got = Vec::new();
    w.drive(SEC * 30, |w| {
        let s = w.host_socket(h);
        let mut buf = [0u8; 4096];
        while let Ok(k @ 1..) = s.recv_slice(&mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
        !s.may_recv()
    });
    got
}

fn server_error(errno: i32) -> Vec<u8> {
    let mut v = Vec::new();
    proto::server_error(errno, &mut v);
    v
}

/// What the scripted client saw of a whole test.
struct Outcome {
    results: Results,
    /// Bytes the client sent, and received, per stream (in the order it
    /// opened them).
    sent: Vec<u64>,
    received: Vec<u64>,
}

/// Runs one test as iperf3's client does: cookie, parameters, streams
/// (one after another, each with the cookie), `run` of virtual time
/// moving data, TEST_END, results both ways, IPERF_DONE.
fn run_test(w: &mut World, c: u8, params: &Params, run: Duration, first_port: u16) -> Outcome {
    let ctl = connect(w, first_port);
    send(w, ctl, &cookie(c));
    assert_eq!(read(w, ctl, 1), [state::PARAM_EXCHANGE as u8]);
    send(w, ctl, &framed(&params.to_json()));
    assert_eq!(read(w, ctl, 1), [state::CREATE_STREAMS as u8]);
    let n = params.streams() as usize;
    let streams: Vec<SocketHandle> = (0..n)
        .map(|i| {
            let h = connect(w, first_port + 1 + i as u16);
            send(w, h, &cookie(c));
            h
        })
        .collect();
    assert_eq!(read(w, ctl, 2), [state::TEST_START as u8, state::TEST_RUNNING as u8]);
    let (mut sent, mut received) = (vec![0u64; n], vec![0u64; n]);
    let client_sends = |i: usize| !params.server_sends(i as u32);
    let end = w.now + run;
    let zeros = vec![0u8; 64 * 1024];
    w.drive(run + SEC, |w| {
        for (i, &h) in streams.iter().enumerate() {
            let s = w.host_socket(h);
            if client_sends(i) {
                sent[i] += s.send_slice(&zeros).unwrap_or(0) as u64;
            }
            while let Ok(k @ 1..) = s.recv(|b| (b.len(), b.len())) {
                received[i] += k as u64;
            }
        }
        w.now >= end
    });
    // Let the sent bytes arrive, so that both sides' counts compare.
    w.drive(SEC * 5, |w| streams.iter().all(|&h| w.host_socket(h).send_queue() == 0));
    send(w, ctl, &[state::TEST_END as u8]);
    // The streams keep draining until EXCHANGE_RESULTS, as iperf3's does.
    let mut got13 = false;
    w.drive(SEC * 5, |w| {
        for (i, &h) in streams.iter().enumerate() {
            while let Ok(k @ 1..) = w.host_socket(h).recv(|b| (b.len(), b.len())) {
                received[i] += k as u64;
            }
        }
        let mut b = [0u8];
        got13 = w.host_socket(ctl).recv_slice(&mut b) == Ok(1);
        got13
    });
    let mine = Results {
        cpu_util_total: 1.0,
        cpu_util_user: 0.5,
        cpu_util_system: 0.5,
        sender_has_retransmits: 1,
        streams: (0..n)
            .map(|i| StreamResult {
                id: proto::stream_id(i as u32),
                bytes: sent[i].max(received[i]),
                retransmits: 0,
                end_time: run.total_millis() as f64 / 1e3,
            })
            .collect(),
    };
    send(w, ctl, &framed(&mine.to_json()));
    let len = u32::from_be_bytes(read(w, ctl, 4).try_into().unwrap()) as usize;
    let results = Results::parse(&read(w, ctl, len)).expect("the server's results parse");
    assert_eq!(read(w, ctl, 1), [state::DISPLAY_RESULTS as u8]);
    send(w, ctl, &[state::IPERF_DONE as u8]);
    assert_eq!(read_to_close(w, ctl), b"", "the server closes after IPERF_DONE");
    for &h in streams.iter().chain([&ctl]) {
        w.host_socket(h).close();
    }
    w.drive(SEC * 10, |w| w.services.counters().active == 0);
    Outcome { results, sent, received }
}

#[test]
fn a_normal_test_counts_every_byte_each_stream_sent() {
    let hub = hub();
    let mut w = world(hub);
    let params = Params { parallel: 2, time: 1, ..Params::default() };
    let o = run_test(&mut w, b'a', &params, Duration::from_millis(100), 40000);
    let ids: Vec<u32> = o.results.streams.iter().map(|s| s.id).collect();
    assert_eq!(ids, [1, 3]);
    for (i, s) in o.results.streams.iter().enumerate() {
        assert!(o.sent[i] > 300_000, "stream {i} moved data: {}", o.sent[i]);
        assert_eq!(s.bytes, o.sent[i], "stream {} counted every byte", s.id);
        assert!(s.end_time > 0.08, "{}", s.end_time);
    }
    assert_eq!(o.results.sender_has_retransmits, -1, "a receiving server says so");
    assert!(!hub.busy());
    assert_eq!(hub.stats.completed.load(core::sync::atomic::Ordering::Relaxed), 1);
    // The next test runs on the same server.
    run_test(&mut w, b'b', &params, Duration::from_millis(50), 41000);
    assert_eq!(hub.stats.completed.load(core::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn a_reverse_test_sends_and_reports_what_it_sent() {
    let hub = hub();
    let mut w = world(hub);
    let params = Params { parallel: 3, reverse: true, len: 512, time: 1, ..Params::default() };
    let o = run_test(&mut w, b'r', &params, Duration::from_millis(100), 40000);
    assert_eq!(o.results.streams.len(), 3);
    for (i, s) in o.results.streams.iter().enumerate() {
        assert!(o.received[i] > 300_000, "stream {i} received {}", o.received[i]);
        // The server counts what it queued; all of it reached the client,
        // which drained its streams until EXCHANGE_RESULTS.
        assert!(s.bytes >= o.received[i] && s.bytes - o.received[i] <= 256 * 1024, "{} vs {}", s.bytes, o.received[i]);
        assert_eq!(o.sent[i], 0);
    }
    assert_eq!(o.results.sender_has_retransmits, 0, "a sending server that does not count retransmissions");
}

#[test]
fn a_bidirectional_test_receives_on_the_first_half_and_sends_on_the_second() {
    let hub = hub();
    let mut w = world(hub);
    let params = Params { parallel: 2, bidirectional: true, time: 1, ..Params::default() };
    let o = run_test(&mut w, b'd', &params, Duration::from_millis(100), 40000);
    assert_eq!(o.results.streams.iter().map(|s| s.id).collect::<Vec<_>>(), [1, 3, 4, 5]);
    for i in 0..2 {
        assert!(o.sent[i] > 0 && o.received[i] == 0);
        assert_eq!(o.results.streams[i].bytes, o.sent[i]);
    }
    for i in 2..4 {
        assert!(o.sent[i] == 0 && o.received[i] > 0);
    }
}

#[test]
fn omitted_seconds_are_not_counted() {
    let hub = hub();
    let mut w = world(hub);
    let params = Params { parallel: 1, omit: 1, time: 1, ..Params::default() };
    let o = run_test(&mut w, b'o', &params, Duration::from_millis(1500), 40000);
    let s = &o.results.streams[0];
    assert!(s.bytes > 0 && s.bytes < o.sent[0] * 3 / 4, "{} of {} counted", s.bytes, o.sent[0]);
    assert!((0.3..0.7).contains(&s.end_time), "measured for {} s", s.end_time);
}

#[test]
fn a_second_client_is_told_busy_and_a_wrong_cookie_is_refused() {
    let hub = hub();
    let mut w = world(hub);
    let ctl = connect(&mut w, 40000);
    send(&mut w, ctl, &cookie(b'a'));
    assert_eq!(read(&mut w, ctl, 1), [state::PARAM_EXCHANGE as u8]);
    // Another client's control connection: ACCESS_DENIED, closed.
    let other = connect(&mut w, 40100);
    send(&mut w, other, &cookie(b'z'));
    assert_eq!(read_to_close(&mut w, other), [state::ACCESS_DENIED as u8]);
    w.host_socket(other).close();
    send(&mut w, ctl, &framed(&Params { parallel: 1, ..Params::default() }.to_json()));
    assert_eq!(read(&mut w, ctl, 1), [state::CREATE_STREAMS as u8]);
    // A stream with another cookie while streams are being made: refused.
    let stray = connect(&mut w, 40101);
    send(&mut w, stray, &cookie(b'q'));
    assert_eq!(read_to_close(&mut w, stray), [state::ACCESS_DENIED as u8]);
    w.host_socket(stray).close();
    // The real stream gets the test going.
    let s = connect(&mut w, 40001);
    send(&mut w, s, &cookie(b'a'));
    assert_eq!(read(&mut w, ctl, 2), [1, 2]);
    assert_eq!(hub.stats.denied.load(core::sync::atomic::Ordering::Relaxed), 2);
    // The client gives up (CLIENT_TERMINATE): the server is free again.
    send(&mut w, ctl, &[state::CLIENT_TERMINATE as u8]);
    read_to_close(&mut w, ctl);
    assert!(!hub.busy());
    w.drive(SEC * 5, |w| !w.host_socket(s).may_recv());
    for h in [ctl, s] {
        w.host_socket(h).close();
    }
    run_test(&mut w, b'n', &Params { parallel: 1, time: 1, ..Params::default() }, Duration::from_millis(20), 42000);
}

/// Starts a test up to PARAM_EXCHANGE, sends `bytes`, and returns what the
/// server answers until it closes.
fn after_params(w: &mut World, port: u16, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let ctl = connect(w, port);
    send(w, ctl, &cookie(b'm'));
    assert_eq!(read(w, ctl, 1), [state::PARAM_EXCHANGE as u8]);
    send(w, ctl, bytes);
    if half_close {
        w.host_socket(ctl).close();
    }
    let answer = read_to_close(w, ctl);
    w.host_socket(ctl).close();
    answer
}

#[test]
fn malformed_control_messages_get_an_error_and_the_next_client_is_served() {
    let hub = hub();
    let mut w = world(hub);
    let oversized = after_params(&mut w, 40000, &0x7fff_fff0u32.to_be_bytes(), false);
    assert_eq!(oversized, server_error(errno::RECV_PARAMS));
    let garbage = after_params(&mut w, 40001, &framed(b"{not json"), false);
    assert_eq!(garbage, server_error(errno::RECV_PARAMS));
    let udp = after_params(&mut w, 40002, &framed(br#"{"udp":true,"parallel":1}"#), false);
    assert_eq!(udp, server_error(errno::PROTOCOL));
    let too_many = after_params(&mut w, 40003, &framed(br#"{"tcp":true,"parallel":1000}"#), false);
    assert_eq!(too_many, server_error(errno::RECV_PARAMS));
    // Truncated: the length promises more than the client sends before it
    // closes. Nothing to answer; the connection ends and the server is free.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(br#"{"tcp":true"#);
    assert_eq!(after_params(&mut w, 40004, &truncated, true), b"");
    assert!(!hub.busy());
    // A client that connects and says nothing is dropped after the setup
    // timeout.
    let mute = connect(&mut w, 40005);
    w.wait(Duration::from_secs(11));
    assert_eq!(w.host_state(mute), tcp::State::Closed, "reset by the server");
    assert!(hub.stats.failed.load(core::sync::atomic::Ordering::Relaxed) >= 4);
    assert!(!hub.busy());
    run_test(&mut w, b'k', &Params { parallel: 2, time: 1, ..Params::default() }, Duration::from_millis(20), 43000);
}

/// A one-stream test up to TEST_RUNNING: (control, stream).
fn running(w: &mut World, port: u16, c: u8) -> (SocketHandle, SocketHandle) {
    let ctl = connect(w, port);
    send(w, ctl, &cookie(c));
    assert_eq!(read(w, ctl, 1), [state::PARAM_EXCHANGE as u8]);
    send(w, ctl, &framed(&Params { parallel: 1, ..Params::default() }.to_json()));
    assert_eq!(read(w, ctl, 1), [state::CREATE_STREAMS as u8]);
    let s = connect(w, port + 1);
    send(w, s, &cookie(c));
    assert_eq!(read(w, ctl, 2), [1, 2]);
    (ctl, s)
}

/// After the server ended the test on an error: the stream closed by the
/// server too, the server free; the client closes both.
fn ended(w: &mut World, hub: &Hub, ctl: SocketHandle, s: SocketHandle) {
    w.drive(SEC * 5, |w| !w.host_socket(s).may_recv());
    assert!(!hub.busy());
    for h in [ctl, s] {
        w.host_socket(h).close();
    }
}

#[test]
fn bad_messages_late_in_the_test_end_it_with_an_error() {
    let hub = hub();
    let mut w = world(hub);
    // An unknown state byte while running.
    let (ctl, s) = running(&mut w, 40000, b'u');
    send(&mut w, ctl, &[77]);
    assert_eq!(read_to_close(&mut w, ctl), server_error(errno::MESSAGE));
    ended(&mut w, hub, ctl, s);
    // Bad results JSON from the client.
    let (ctl, s) = running(&mut w, 41000, b'v');
    send(&mut w, ctl, &[state::TEST_END as u8]);
    assert_eq!(read(&mut w, ctl, 1), [state::EXCHANGE_RESULTS as u8]);
    send(&mut w, ctl, &framed(br#"{"streams":[]}"#));
    assert_eq!(read_to_close(&mut w, ctl), server_error(errno::RECV_RESULTS));
    ended(&mut w, hub, ctl, s);
    // A control connection that is reset mid-test frees the server.
    let ctl = connect(&mut w, 42000);
    send(&mut w, ctl, &cookie(b'w'));
    read(&mut w, ctl, 1);
    w.host_socket(ctl).abort();
    w.drive(SEC * 5, |_| !hub.busy());
    assert!(!hub.busy());
    run_test(&mut w, b'x', &Params { parallel: 1, time: 1, ..Params::default() }, Duration::from_millis(20), 43000);
}

#[test]
fn client_cookies_look_like_iperf3s_and_differ_by_seed() {
    let a = super::client::make_cookie(1);
    let b = super::client::make_cookie(2);
    assert_ne!(a, b);
    assert_eq!(a[proto::COOKIE_LEN - 1], 0);
    assert!(a[..proto::COOKIE_LEN - 1].iter().all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(c)));
}

#[test]
fn a_client_outcome_rates_what_the_receiving_sides_got() {
    let o = super::ClientOutcome {
        config: super::ClientConfig { server: [10, 99, 0, 1], port: 5201, params: Params::default() },
        error: None,
        sent: 1_000_000,
        received: 250_000,
        server_received: 750_000,
        server_sent: 300_000,
        seconds: 2.0,
        cpu_util: 10.0,
        stream_cpus: vec![0, 1],
    };
    // What the server received of ours plus what we received of its.
    assert_eq!(o.bits_per_second(), 4_000_000.0);
    assert_eq!(super::ClientOutcome { seconds: 0.0, ..o }.bits_per_second(), 0.0);
}
